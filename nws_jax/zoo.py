"""A zoo workdir on disk, and `load_zoo` to read one without knowing Orbax.

Layout of a finished zoo:
  config.json   the options that built it (and the library version)
  models.csv    one row per model: the 13 properties (PROTOCOL §1 order), then model_id,
                weightn_conv, weightn_fc, train/valid/test accuracy (fractions), epochs, status,
                failed, steps_per_epoch, seconds (the whole zoo's wall time)
  curves.csv    one row per model and epoch (0 = initialisation): accuracies and training loss
  snapshots/    Orbax checkpoint of the kept snapshots (model i's [20, n_i] float32, n_i =
                weightn_conv + weightn_fc) and their export numbers [models, 20] (snapshots.py)
While it trains, `exports/` (per-epoch weights) and `state/` (resume checkpoints) are there too.
"""

from __future__ import annotations

import dataclasses
import json
import os

import numpy as np
import pandas as pd

from nws_jax import files
from nws_jax import snapshots as snapshots_lib

CONFIG_FILE = 'config.json'
MODELS_FILE = 'models.csv'
CURVES_FILE = 'curves.csv'
SNAPSHOTS_DIR = 'snapshots'
EXPORTS_DIR = 'exports'
STATE_DIR = 'state'


class ZooError(RuntimeError):
  """A workdir that is not a readable, finished zoo."""


@dataclasses.dataclass
class Zoo:
  """A loaded zoo.

  snapshots: the kept weight snapshots in release order (PROTOCOL §4): `snapshots[i]` is model
    i's float32 [20, n_i]; `snapshots.as_array()` is [models, 20, n] when all n_i are equal.
  export_numbers: int [models, 20], which export (1 = initialisation) each snapshot is (0 where
    unknown, as for nets imported from the release).
  table: the models.csv rows (pandas DataFrame, one row per model, in model order).
  curves: the curves.csv rows (model_id, epoch, train/valid/test_accuracy, train_loss).
  config: the options that built the zoo.
  """
  workdir: str
  snapshots: snapshots_lib.Snapshots
  export_numbers: np.ndarray
  table: pd.DataFrame
  curves: pd.DataFrame
  config: dict

  @property
  def num_models(self) -> int:
    return len(self.table)


def load_zoo(workdir: str) -> Zoo:
  """Reads a finished zoo workdir; raises ZooError naming what is missing or inconsistent."""
  if not os.path.isdir(workdir):
    raise ZooError(f'no zoo at {workdir}: not a directory')
  for name in (CONFIG_FILE, MODELS_FILE, CURVES_FILE, SNAPSHOTS_DIR):
    if not os.path.exists(os.path.join(workdir, name)):
      raise ZooError(f'{workdir} is not a finished zoo: {name} is missing')
  with open(os.path.join(workdir, CONFIG_FILE)) as f:
    config = json.load(f)
  table = pd.read_csv(os.path.join(workdir, MODELS_FILE))
  curves = pd.read_csv(os.path.join(workdir, CURVES_FILE))
  try:
    snaps, numbers = snapshots_lib.load_snapshots(os.path.join(workdir, SNAPSHOTS_DIR))
  except Exception as e:  # Orbax raises many types for a damaged checkpoint.
    raise ZooError(f'{workdir}: cannot read snapshots: {e}') from e
  n = (table['weightn_conv'] + table['weightn_fc']).to_numpy()
  if len(snaps) != len(table) or (n != snaps.lengths).any():
    raise ZooError(f'{workdir}: snapshots of {len(snaps)} models (lengths '
                   f'{sorted(set(snaps.lengths.tolist()))[:4]}) do not match models.csv '
                   f'({len(table)} models, weightn {sorted(set(n.tolist()))[:4]})')
  return Zoo(workdir, snaps, numbers, table, curves, config)


def write_csv_atomic(frame: pd.DataFrame, path: str) -> None:
  """Writes `frame` to `path` through a temporary file, so a reader never sees half a file."""
  files.write_atomic(path, lambda f: frame.to_csv(f, index=False), mode='w')


def write_json_atomic(obj, path: str) -> None:
  files.write_atomic(path, lambda f: json.dump(obj, f, indent=2, sort_keys=True), mode='w')
