"""The search space of training variations (PROTOCOL §1) and seeded sampling of zoo configurations.

Each model of a zoo is one row of 13 properties, in PROTOCOL order and with its names. A zoo's
`models.csv` starts with these 13 columns; `TABLE_COLUMNS` lists what follows them.

Sampling is per model: model i of a zoo with seed s draws its row from a generator seeded by
(s, i), so the first N models of a zoo of M > N are those of the zoo of N, and a model's
configuration does not depend on the zoo it sits in.
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

import numpy as np

PROPERTY_NAMES = (
    'dataset', 'lrate', 'batch_size', 'batch_norm', 'augmentation', 'optimizer', 'activation',
    'initialization', 'filter_size', 'depth_conv', 'depth_fc', 'width_conv', 'width_fc',
)

# Encodings of the categorical properties (PROTOCOL §1).
OPTIMIZERS = ('adam', 'rmsprop', 'momentum')
ACTIVATIONS = ('relu', 'elu', 'sigmoid', 'tanh')
INITIALIZATIONS = ('constant', 'normal', 'glorot_uniform', 'glorot_normal')
LRATE_RANGE = (0.0002, 0.005)
BATCH_SIZES = (32, 64, 128, 256)
FILTER_SIZES = (3, 5, 7)
DEPTHS_CONV = (3, 4, 5)
DEPTHS_FC = (2, 3, 4)
WIDTHS_CONV = (4, 8, 12)
WIDTHS_FC = (64, 128, 192)

# The values PROTOCOL §1 allows for each property, except `dataset` (a name of nws_jax.datasets)
# and `lrate` (a positive number; the study drew it from LRATE_RANGE).
PROPERTY_DOMAINS = dict(
    batch_size=BATCH_SIZES, batch_norm=(False, True), augmentation=(False, True),
    optimizer=tuple(range(len(OPTIMIZERS))), activation=tuple(range(len(ACTIVATIONS))),
    initialization=tuple(range(len(INITIALIZATIONS))), filter_size=FILTER_SIZES,
    depth_conv=DEPTHS_CONV, depth_fc=DEPTHS_FC, width_conv=WIDTHS_CONV, width_fc=WIDTHS_FC)

def outside_domains(table) -> tuple[str, int] | None:
  """(property, row position) of the first value of a models table (pandas DataFrame with the
  PROPERTY_DOMAINS columns) that PROTOCOL §1 does not allow, in PROPERTY_DOMAINS order; None when
  every value is allowed."""
  for name, allowed in PROPERTY_DOMAINS.items():
    bad = np.flatnonzero(~table[name].isin(allowed).to_numpy())
    if len(bad):
      return name, int(bad[0])
  return None


# nws_fixed: one architecture for every model (PROTOCOL §1, fixed-architecture mode).
FIXED_ARCHITECTURE = dict(filter_size=5, depth_conv=3, depth_fc=2, width_conv=8, width_fc=128)

# 'random' (nws_main): the five architecture properties drawn per model too.
ARCHITECTURE_MODES = ('fixed', 'random')

# Columns that follow the 13 properties in models.csv.
TABLE_COLUMNS = (
    'model_id', 'weightn_conv', 'weightn_fc', 'train_accuracy', 'valid_accuracy',
    'test_accuracy', 'epochs', 'status',
)


@dataclasses.dataclass(frozen=True)
class ModelConfig:
  """The 13 training variations of one model, with PROTOCOL §1 encodings.

  `dataset` is a dataset name (see `nws_jax.datasets`); the integer codes of optimizer,
  activation and initialization index OPTIMIZERS, ACTIVATIONS and INITIALIZATIONS.
  """
  dataset: str
  lrate: float
  batch_size: int
  batch_norm: bool
  augmentation: bool
  optimizer: int
  activation: int
  initialization: int
  filter_size: int
  depth_conv: int
  depth_fc: int
  width_conv: int
  width_fc: int

  def as_row(self) -> dict:
    """The 13 properties as an ordered dict, PROTOCOL names and order."""
    return {name: getattr(self, name) for name in PROPERTY_NAMES}

  @property
  def architecture(self) -> tuple[int, int, int, int, int]:
    """(filter_size, depth_conv, depth_fc, width_conv, width_fc): what fixes the weight shapes."""
    return (self.filter_size, self.depth_conv, self.depth_fc, self.width_conv, self.width_fc)


def sample_model(seed: int, model_id: int, datasets: Sequence[str],
                 architecture: str = 'fixed') -> ModelConfig:
  """Draws model `model_id`'s configuration of a zoo with `seed`, uniformly per PROTOCOL §1.

  Args:
    seed: the zoo's seed.
    model_id: the model's index in the zoo (0-based).
    datasets: the dataset names to draw from, uniformly.
    architecture: 'fixed' (nws_fixed's architecture for every model) or 'random' (nws_main:
      filter size, conv and dense depth and widths drawn uniformly too).
  """
  if architecture not in ARCHITECTURE_MODES:
    raise ValueError(f'unknown architecture mode {architecture!r}; choose from: '
                     + ', '.join(ARCHITECTURE_MODES))
  if not datasets:
    raise ValueError('at least one dataset is needed')
  rng = np.random.default_rng([seed, model_id])
  # Every draw is made whatever the mode, so that switching mode does not shift the others.
  dataset = datasets[int(rng.integers(len(datasets)))]
  lrate = float(rng.uniform(*LRATE_RANGE))
  batch_size = BATCH_SIZES[int(rng.integers(len(BATCH_SIZES)))]
  augmentation = bool(rng.integers(2))
  optimizer = int(rng.integers(len(OPTIMIZERS)))
  activation = int(rng.integers(len(ACTIVATIONS)))
  initialization = int(rng.integers(len(INITIALIZATIONS)))
  random_arch = dict(
      filter_size=FILTER_SIZES[int(rng.integers(3))],
      depth_conv=DEPTHS_CONV[int(rng.integers(3))],
      depth_fc=DEPTHS_FC[int(rng.integers(3))],
      width_conv=WIDTHS_CONV[int(rng.integers(3))],
      width_fc=WIDTHS_FC[int(rng.integers(3))],
  )
  arch = random_arch if architecture == 'random' else FIXED_ARCHITECTURE
  return ModelConfig(
      dataset=dataset, lrate=lrate, batch_size=batch_size,
      batch_norm=True,  # Always on in the released runs (PROTOCOL §1).
      augmentation=augmentation, optimizer=optimizer, activation=activation,
      initialization=initialization, **arch)


def sample_zoo(seed: int, num_models: int, datasets: Sequence[str],
               architecture: str = 'fixed') -> list[ModelConfig]:
  """The configurations of models 0..num_models-1 of a zoo with `seed` (see `sample_model`)."""
  if num_models < 1:
    raise ValueError(f'num_models must be at least 1, got {num_models}')
  return [sample_model(seed, i, datasets, architecture) for i in range(num_models)]
