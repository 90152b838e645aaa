"""Datasets of the zoo: the TFDS image sets of the study and offline sets built here.

Every loader returns a `Dataset` of uint8 images [N, 32, 32, 3] (PROTOCOL §2 preprocessing already
applied) and int32 labels [N] in 0..9, split into train / validation (10% of the training split,
PROTOCOL §3) / test.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from nws_jax.datasets import offline
from nws_jax.datasets import preprocess


@dataclasses.dataclass(frozen=True)
class Dataset:
  """One dataset of the zoo, preprocessed (PROTOCOL §2/§3).

  Images are uint8 [N, 32, 32, 3] (0..255); labels are int32 [N] in 0..9. The validation set is
  10% of the (possibly capped) training split, held out at random with the load seed.
  """
  name: str
  train_images: np.ndarray
  train_labels: np.ndarray
  valid_images: np.ndarray
  valid_labels: np.ndarray
  test_images: np.ndarray
  test_labels: np.ndarray


class DatasetError(ValueError):
  """A dataset that cannot be loaded (unknown name, TFDS set not prepared); one-line message."""


OFFLINE_NAMES = ('digits', 'shapes', 'gratings')
TFDS_NAMES = {'mnist': 'mnist', 'fashion': 'fashion_mnist', 'cifar10': 'cifar10',
              'svhn': 'svhn_cropped', 'stl10': 'stl10'}  # NWS name -> TFDS name
ALL_NAMES = OFFLINE_NAMES + tuple(TFDS_NAMES)


def load(name: str, *, num_train: int | None = None, num_test: int | None = None, seed: int = 0,
         data_dir: str | None = None) -> Dataset:
  """Loads dataset `name` (one of ALL_NAMES) as uint8 [N, 32, 32, 3] images, int32 labels 0..9.

  Args:
    name: a name of ALL_NAMES.
    num_train: size of the training split BEFORE the 90/10 train/validation split. None: all
      available (TFDS sets; digits: 1438) or the default (generated sets: 6000). More than
      available (TFDS, digits): all. A cap takes a seeded random subset.
    num_test: test examples kept; None: all (TFDS; digits: 359) or the default (generated: 1000).
    seed: selects generated images, subsets, the digits train/test split and the validation
      split. Same arguments -> bit-identical arrays.
    data_dir: TFDS data directory (TFDS sets only); None: the TFDS default.

  Raises:
    DatasetError: unknown name, or a TFDS dataset that is not prepared locally.
    ValueError: num_train or num_test < 1.
  """
  for arg, value in (('num_train', num_train), ('num_test', num_test)):
    if value is not None and value < 1:
      raise ValueError(f'{arg} must be >= 1 or None, got {value}')
  if name in offline.BUILDERS:
    splits = offline.BUILDERS[name](num_train, num_test, seed)
  elif name in TFDS_NAMES:
    from nws_jax.datasets import tfds_source  # imports tensorflow_datasets, only when needed
    splits = tfds_source.load_splits(name, TFDS_NAMES[name], num_train=num_train,
                                     num_test=num_test, seed=seed, data_dir=data_dir)
  else:
    raise DatasetError(f"unknown dataset {name!r}; choose from: {', '.join(ALL_NAMES)}")
  train = preprocess.split_train_valid(splits.train_images, splits.train_labels, seed, name)
  return Dataset(name, *train, splits.test_images, splits.test_labels)
