"""The study's image datasets through TFDS random-access data sources (array_record, no TensorFlow).

Datasets must already be prepared in array_record format (on a machine with internet:
`tfds.data_source(name, download=True)`); nothing is downloaded here. Images are converted by
`preprocess.to_rgb32`: mnist / fashion_mnist 28x28 grey -> bilinear 32x32, repeated over 3
channels; stl10 96x96 colour -> area (3x3 block mean) 32x32; cifar10 / svhn_cropped unchanged.
Only the 'train' and 'test' splits are read (not svhn 'extra' nor stl10 'unlabelled').
"""

from __future__ import annotations

import numpy as np

from nws_jax.datasets import DatasetError
from nws_jax.datasets import preprocess as pp

READ_CHUNK = pp.CHUNK  # records per `__getitems__` call


def _default_data_dir() -> str:
  """TFDS's default data_dir: $TFDS_DATA_DIR or ~/tensorflow_datasets."""
  from tensorflow_datasets.core import constants
  return str(constants.DATA_DIR)


def not_prepared_message(name: str, tfds_name: str, data_dir: str | None) -> str:
  """One-line message: `name` is not prepared in `data_dir` and how to prepare it."""
  where = data_dir or f'the default TFDS data_dir ({_default_data_dir()})'
  return (f"dataset '{name}' (TFDS '{tfds_name}') is not prepared in array_record format in "
          f"{where}; prepare it on a machine with internet: python -c \"import "
          f"tensorflow_datasets as tfds; tfds.data_source('{tfds_name}', download=True)\" and "
          f"copy the folder, or pass --data_dir")


def open_split(name: str, tfds_name: str, split: str, data_dir: str | None):
  """The TFDS data source of one split; DatasetError if it is not prepared locally."""
  try:
    import tensorflow_datasets as tfds  # ~0.5 s; only needed for these datasets
  except ImportError as e:
    raise DatasetError(f"dataset {name!r} needs tensorflow-datasets, which is not installed "
                       f"(pip install -r requirements.txt)") from e
  try:
    return tfds.data_source(tfds_name, split=split, data_dir=data_dir, download=False)
  except NotImplementedError as e:
    # Raised when data_dir holds no prepared copy (TFDS then assumes TFRecord files, which have
    # no random access) or holds a TFRecord-only copy.
    raise DatasetError(not_prepared_message(name, tfds_name, data_dir)) from e
  except KeyError as e:
    # Default data_dir without a prepared copy: "splits is empty ... not been generated yet".
    raise DatasetError(not_prepared_message(name, tfds_name, data_dir)) from e


def read(source, indices: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """Reads `indices` of a data source: uint8 [N, 32, 32, 3] images, int32 [N] labels.

  Records are fetched READ_CHUNK at a time with `__getitems__` (parallel reads in array_record)
  and converted to 32x32x3 chunk by chunk, so the full-size images are never all in memory.
  """
  images = np.empty((len(indices), pp.IMAGE_SIZE, pp.IMAGE_SIZE, pp.NUM_CHANNELS), np.uint8)
  labels = np.empty(len(indices), np.int32)
  for start in range(0, len(indices), READ_CHUNK):
    keys = [int(i) for i in indices[start:start + READ_CHUNK]]
    records = source.__getitems__(keys)
    chunk = np.stack([np.asarray(r['image'], np.uint8) for r in records])
    images[start:start + len(keys)] = pp.to_rgb32(chunk)
    labels[start:start + len(keys)] = [int(r['label']) for r in records]
  return images, labels


def load_splits(name: str, tfds_name: str, *, num_train: int | None, num_test: int | None,
                seed: int, data_dir: str | None) -> pp.Splits:
  """Train and test splits of a TFDS dataset, each capped to a seeded random subset if asked."""
  parts = []
  for split, wanted in (('train', num_train), ('test', num_test)):
    source = open_split(name, tfds_name, split, data_dir)
    parts += read(source, pp.subset_indices(len(source), wanted, seed, name, split))
  return pp.Splits(*parts)
