"""A zoo workdir on disk, and `load_zoo` to read one without knowing Orbax.

Layout of a finished zoo:
  config.json   the options that built it (and the library version)
  models.csv    one row per model: the 13 properties (PROTOCOL §1 order), then model_id,
                weightn_conv, weightn_fc, train/valid/test accuracy (fractions), epochs, status
                (early_stopped, epoch_cap, or diverged: frozen at its last finite step in that
                epoch), failed (test accuracy below 0.15, or diverged), steps_per_epoch,
                seconds (the whole zoo's wall time)
  curves.csv    one row per model and epoch (0 = initialisation): accuracies and training loss
  snapshots/    Orbax checkpoint of the kept snapshots (model i's [20, n_i] float32, n_i =
                weightn_conv + weightn_fc) and their export numbers [models, 20] (snapshots.py),
                with checksums.json: a CRC-32 per model, verified on load
  trained.json  what was trained: a digest of config.json and every model's 13 properties;
                load_zoo refuses a config.json or models.csv edited since (RECORD_FILE)
  .nws_jax.json the marker naming the folder a zoo, which --overwrite may replace
While it trains, `exports/` (per-epoch weights) and `state/` (resume checkpoints) are there too.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os

import numpy as np
import pandas as pd

from nws_jax import files
from nws_jax import snapshots as snapshots_lib
from nws_jax import space

CONFIG_FILE = 'config.json'
MODELS_FILE = 'models.csv'
CURVES_FILE = 'curves.csv'
SNAPSHOTS_DIR = 'snapshots'
EXPORTS_DIR = 'exports'
STATE_DIR = 'state'
REQUIRED_COLUMNS = space.PROPERTY_NAMES + ('weightn_conv', 'weightn_fc')
CURVE_KEYS = ('model_id', 'epoch')

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


def check_checkpoint_files(directory: str) -> None:
  """Raises ValueError naming the file when a JSON metadata file of the Orbax checkpoint in
  `directory` is not valid JSON (a truncated or overwritten copy): Orbax would fail on it with a
  message that names no file, or log an error and go on."""
  for root, _, names in os.walk(directory):
    for name in sorted(names):
      if name in ('_CHECKPOINT_METADATA', '_METADATA'):
        path = os.path.join(root, name)
        try:
          with open(path, 'rb') as f:
            json.loads(f.read().decode('utf-8'))
        except (ValueError, UnicodeDecodeError) as e:
          raise ValueError(f'{path} is damaged (not valid JSON: {files.short_error(e, 80)})') from e


def _not_a_zoo(workdir: str, name: str) -> ZooError:
  kind = files.folder_kind(workdir)
  if kind in ('meta', 'release'):
    hint = f'; it holds {files.KIND_NAMES[kind]}, not a zoo'
    if kind == 'release':
      hint += ' (read it with train_meta --nws_csv, or import it with import_nws)'
  elif os.path.exists(os.path.join(workdir, STATE_DIR)):
    hint = '; its training has not finished (continue it with train_zoo --resume)'
  else:
    hint = ''
  return ZooError(f'{workdir} is not a finished zoo: {name} is missing{hint}')


def _read_config(path: str) -> dict:
  try:
    with open(path, 'rb') as f:
      config = json.loads(f.read().decode('utf-8'))
  except (ValueError, UnicodeDecodeError) as e:
    raise ZooError(f'{path} is damaged (not valid JSON: {files.short_error(e, 80)})') from e
  if not isinstance(config, dict):
    raise ZooError(f'{path} is damaged (not a JSON object)')
  return config


def read_csv(path: str) -> pd.DataFrame:
  """A CSV of a workdir (pandas writes them with a final newline); raises ZooError naming the
  file when it is not a readable CSV or ends in an incomplete line (truncated)."""
  with open(path, 'rb') as f:
    f.seek(0, os.SEEK_END)
    if f.tell():
      f.seek(-1, os.SEEK_END)
      if f.read(1) != b'\n':
        raise ZooError(f'{path} is truncated (its last line is incomplete)')
  try:
    return pd.read_csv(path)
  except (ValueError, UnicodeDecodeError) as e:  # pandas' ParserError and EmptyDataError too
    raise ZooError(f'{path}: not a readable CSV ({files.short_error(e, 120)})') from e


def _check_models(table: pd.DataFrame, path: str) -> None:
  missing = [c for c in REQUIRED_COLUMNS if c not in table.columns]
  if missing:
    raise ZooError(f'{path} lacks column{"s" if len(missing) > 1 else ""} {", ".join(missing)}'
                   ' (not the models.csv of a zoo)')
  for name in space.PROPERTY_NAMES:
    empty = int(table[name].isna().sum())
    if empty:
      raise ZooError(f'{path}: column {name!r} has {empty} empty cells')
  for name in ('weightn_conv', 'weightn_fc'):
    values = pd.to_numeric(table[name], errors='coerce').to_numpy(np.float64)
    bad = ~(np.isfinite(values) & (values >= 0) & (values == np.round(values)))
    if bad.any():
      raise ZooError(f'{path}: column {name!r} holds {table[name][bad].iloc[0]!r}, not a '
                     'weight count')
    table[name] = values.astype(np.int64)


def _plain(value):
  return value.item() if isinstance(value, np.generic) else value


def _cell(table: pd.DataFrame, name: str, row: int):
  return _plain(table[name].iloc[row])


def _describe(table: pd.DataFrame, row: int) -> str:
  return f'model_id {_cell(table, "model_id", row)}' if 'model_id' in table else f'row {row + 2}'


def _check_properties(table: pd.DataFrame, path: str, config: dict) -> None:
  """Every property in PROTOCOL §1's domains (datasets: those the zoo was built from), model ids
  unique, and as many models as the config says; ZooError naming the first model otherwise."""
  outside = space.outside_domains(table)
  if outside:
    name, row = outside
    raise ZooError(f'{path}: {_describe(table, row)} has {name}={_cell(table, name, row)!r}; '
                   f'PROTOCOL §1 allows {", ".join(map(str, space.PROPERTY_DOMAINS[name]))}')
  lrate = pd.to_numeric(table['lrate'], errors='coerce').to_numpy(np.float64)
  bad = np.flatnonzero(~(np.isfinite(lrate) & (lrate > 0)))
  if len(bad):
    raise ZooError(f'{path}: {_describe(table, bad[0])} has lrate='
                   f'{_cell(table, "lrate", bad[0])!r}, not a positive number')
  built = config.get('zoo', {}) if isinstance(config.get('zoo'), dict) else {}
  if 'datasets' in built:
    bad = np.flatnonzero(~table['dataset'].isin(built['datasets']).to_numpy())
    if len(bad):
      raise ZooError(f'{path}: {_describe(table, bad[0])} has dataset='
                     f'{_cell(table, "dataset", bad[0])!r}, not one the zoo was built from '
                     f'({", ".join(built["datasets"])})')
  if 'model_id' in table:
    repeated = np.flatnonzero(table['model_id'].duplicated().to_numpy())
    if len(repeated):
      raise ZooError(f'{path}: model_id {_cell(table, "model_id", repeated[0])!r} is listed more '
                     'than once')
  if 'num_models' in built and built['num_models'] != len(table):
    raise ZooError(f'{path} lists {len(table)} models, but {CONFIG_FILE} says the zoo has '
                   f'{built["num_models"]}')


# What a zoo was trained (or imported) as, written once its tables are complete: a digest of
# config.json and every model's 13 properties. load_zoo refuses a config.json or models.csv
# edited since (a property changed by hand would mislabel the model's weights).
RECORD_FILE = 'trained.json'


def _config_digest(config: dict) -> str:
  return hashlib.sha256(json.dumps(config, sort_keys=True).encode()).hexdigest()


def _property_rows(table: pd.DataFrame) -> dict[str, list]:
  """{model_id (or row index) as str: its 13 properties as JSON values}."""
  ids = table['model_id'] if 'model_id' in table else pd.Series(range(len(table)))
  values = table[list(space.PROPERTY_NAMES)].astype(object).to_numpy()
  return {str(i): [_plain(v) for v in row] for i, row in zip(ids.tolist(), values)}


def write_record(folder: str) -> None:
  """Records what the zoo in `folder` was trained as (RECORD_FILE), from its config.json and
  models.csv as a reader will see them; call once both are written."""
  config = _read_config(os.path.join(folder, CONFIG_FILE))
  table = read_csv(os.path.join(folder, MODELS_FILE))
  files.write_json_atomic({'config_sha256': _config_digest(config),
                     'properties': list(space.PROPERTY_NAMES),
                     'models': _property_rows(table)}, os.path.join(folder, RECORD_FILE))


def _same_value(a, b) -> bool:
  # A learning rate may come back from a CSV rewritten by pandas one unit in the last place off.
  if isinstance(a, float) or isinstance(b, float):
    return isinstance(a, (int, float)) and isinstance(b, (int, float)) and math.isclose(
        a, b, rel_tol=1e-12)
  return a == b and type(a) is type(b)


def _check_record(workdir: str, config: dict, table: pd.DataFrame) -> None:
  """ZooError when config.json or a model's properties differ from the record (zoos written
  before records existed have none, and are not checked)."""
  path = os.path.join(workdir, RECORD_FILE)
  if not os.path.lexists(path):
    return
  record = _read_config(path)
  if not {'config_sha256', 'models'} <= set(record):
    raise ZooError(f'{path} is damaged (not the record of a zoo)')
  if record['config_sha256'] != _config_digest(config):
    raise ZooError(f'{os.path.join(workdir, CONFIG_FILE)} was changed after the zoo was trained '
                   f'(it no longer matches {RECORD_FILE}); restore it, or train a new zoo')
  trained, listed = record['models'], _property_rows(table)
  if set(trained) != set(listed):
    where = os.path.join(workdir, MODELS_FILE)
    extra = sorted(set(listed) - set(trained), key=lambda k: (len(k), k))
    if extra:
      raise ZooError(f'{where} lists model_id {extra[0]}, which the zoo did not train; the table '
                     'was edited')
    lost = sorted(set(trained) - set(listed), key=lambda k: (len(k), k))
    raise ZooError(f'{where} lacks model_id {lost[0]}, which the zoo trained ({len(lost)} '
                   'missing); the table was edited or cut')
  for model_id, values in listed.items():
    changed = [(n, a, b) for n, a, b in zip(space.PROPERTY_NAMES, trained[model_id], values)
               if not _same_value(a, b)]
    if changed:
      name, was, now = changed[0]
      raise ZooError(f'{os.path.join(workdir, MODELS_FILE)}: model_id {model_id} has '
                     f'{name}={now!r}, but it was trained with {name}={was!r}; the table was '
                     'edited (its weights would be mislabelled)')


def _checksum_error(workdir: str, table: pd.DataFrame, models: list[int]) -> ZooError:
  """The one-line error for snapshots of `models` (0-based, in models.csv order) that do not
  match their checksums, naming the first by index and model_id."""
  first = models[0]
  named = (f' (model_id {_cell(table, "model_id", first)})'
           if 'model_id' in table and first < len(table) else '')
  more = f' (and {len(models) - 1} more models)' if len(models) > 1 else ''
  return ZooError(f'{workdir}: snapshots of model {first}{named} do not match their checksum'
                  f'{more}: the file is damaged')


def load_zoo(workdir: str, verify: bool = True) -> Zoo:
  """Reads a finished zoo workdir; raises ZooError naming what is missing, damaged (a file that
  is not JSON or CSV, truncated, lacks columns; a snapshots checkpoint Orbax cannot read, or
  snapshots that do not match their checksums: checked unless `verify` is False) or inconsistent
  (snapshots that do not match models.csv)."""
  if not os.path.isdir(workdir):
    raise ZooError(f'no zoo at {workdir}: not a directory')
  for name in (CONFIG_FILE, MODELS_FILE, CURVES_FILE, SNAPSHOTS_DIR):
    if not os.path.exists(os.path.join(workdir, name)):
      raise _not_a_zoo(workdir, name)
  config = _read_config(os.path.join(workdir, CONFIG_FILE))
  table = read_csv(os.path.join(workdir, MODELS_FILE))
  _check_models(table, os.path.join(workdir, MODELS_FILE))
  _check_properties(table, os.path.join(workdir, MODELS_FILE), config)
  _check_record(workdir, config, table)
  curves = read_csv(os.path.join(workdir, CURVES_FILE))
  missing = [c for c in CURVE_KEYS if c not in curves.columns]
  if missing:
    raise ZooError(f'{os.path.join(workdir, CURVES_FILE)} lacks column {", ".join(missing)}')
  snapshots_dir = os.path.join(workdir, SNAPSHOTS_DIR)
  if not os.path.isdir(snapshots_dir):
    raise ZooError(f'{workdir}: cannot read snapshots: {snapshots_dir} is not a directory')
  try:
    check_checkpoint_files(snapshots_dir)
    snaps, numbers = snapshots_lib.load_snapshots(snapshots_dir, verify)
  except snapshots_lib.ChecksumError as e:
    raise _checksum_error(workdir, table, e.models) from e
  except Exception as e:  # Orbax raises many types for a damaged checkpoint.
    raise ZooError(f'{workdir}: cannot read snapshots: {files.short_error(e)}') from e
  n = (table['weightn_conv'] + table['weightn_fc']).to_numpy()
  if len(snaps) != len(table) or (n != snaps.lengths).any():
    raise ZooError(f'{workdir}: snapshots of {len(snaps)} models (lengths '
                   f'{sorted(set(snaps.lengths.tolist()))[:4]}) do not match models.csv '
                   f'({len(table)} models, weightn {sorted(set(n.tolist()))[:4]})')
  return Zoo(workdir, snaps, numbers, table, curves, config)
