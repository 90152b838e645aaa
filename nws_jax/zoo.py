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
                weightn_conv + weightn_fc) and their export numbers [models, 20] (snapshots.py)
While it trains, `exports/` (per-epoch weights) and `state/` (resume checkpoints) are there too.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import tempfile
from typing import Callable

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

# What each kind of workdir holds (folder_kind): a meta-classifier run (meta/store.py's names,
# written here to keep zoo.py free of the meta package), a zoo, a release (release.py's).
_KIND_MARKERS = (('meta', ('run.json', 'split.json', 'checkpoint')),
                 ('zoo', (MODELS_FILE, SNAPSHOTS_DIR, STATE_DIR, EXPORTS_DIR)),
                 ('release', ('train.csv', 'test.csv', 'nets')),
                 ('study', ('study.json',)))
KIND_NAMES = {'meta': "a meta-classifier run (train_meta's workdir)",
              'zoo': 'a zoo (train_zoo or import_nws)',
              'release': "a release in the NWS format (export_nws's output)",
              'study': "a study (the workdir of an experiments/ script)"}


# Every folder this project writes as a whole (a zoo, a meta-classifier run, a release export)
# carries this file, naming its kind. --overwrite replaces only a folder that carries it with the
# right kind: a folder of the user's is never deleted, whatever files it holds.
MARKER_FILE = '.nws_jax.json'


def write_marker(folder: str, kind: str) -> None:
  """Marks `folder` as written by this project, as a `kind` (a key of KIND_NAMES)."""
  write_json_atomic({'kind': kind, 'written_by': 'nws_jax'}, os.path.join(folder, MARKER_FILE))


def marked_kind(folder: str) -> str | None:
  """The kind named by `folder`'s marker file, or None (no marker, or not readable as one)."""
  path = os.path.join(folder, MARKER_FILE)
  if not os.path.isfile(path) or os.path.islink(path):
    return None
  try:
    with open(path) as f:
      kind = json.load(f).get('kind')
  except (OSError, ValueError, AttributeError):
    return None
  return kind if kind in KIND_NAMES else None


def replace_refusal(folder: str, kind: str, command: str) -> str | None:
  """Why --overwrite must not replace the non-empty `folder` with a new `kind`, or None when it
  may: only a folder this project wrote as that kind (its marker file) may be replaced."""
  found = folder_kind(folder)
  marked = marked_kind(folder)
  if marked == kind:
    return None
  if marked is not None or found not in (None, kind):
    return (f'holds {KIND_NAMES[marked or found]}; --overwrite replaces only '
            f'{KIND_NAMES[kind].split(" (")[0]} (choose another folder)')
  return (f'was not written by {command} (no {MARKER_FILE} naming it '
          f'{KIND_NAMES[kind].split(" (")[0]}); --overwrite replaces only such a folder, so '
          'nothing of yours is deleted: choose another folder, or empty it yourself')


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


def folder_kind(path: str) -> str | None:
  """What the folder `path` holds, judged by the names in it: 'meta' (a train_meta workdir),
  'zoo' (a zoo, finished or still training), 'release' (split CSVs and net folders), or None
  (anything else, or not a folder). Used to refuse a workdir of the wrong kind."""
  if not os.path.isdir(path):
    return None
  names = set(os.listdir(path))
  for kind, markers in _KIND_MARKERS:
    if names.intersection(markers):
      return kind
  return None


def input_clash(folder: str, inputs) -> str | None:
  """Why replacing `folder` would harm one of `inputs` (paths read by the run): it holds one
  ('holds the input …') or lies inside one ('lies inside the input …'); None if neither."""
  def inside(path, parent):
    path, parent = os.path.realpath(path), os.path.realpath(parent)
    return os.path.commonpath([path, parent]) == parent

  for path in inputs:
    if inside(path, folder):
      return f'holds the input {path}; overwriting it would delete it'
    if inside(folder, path):
      return f'lies inside the input {path}; overwriting it would damage it'
  return None


def short_error(error: BaseException, limit: int = 400) -> str:
  """The gist of a library's error on one line. Orbax wraps TensorStore's error (kept as the
  cause) in one that points at 'full TensorStore details': then the cause is what went wrong
  (e.g. 'OUT_OF_RANGE: Error reading … Requested byte range … is not valid'). TensorStore's
  messages end in their whole spec ('[tensorstore_spec=…]'). Both tails are cut."""
  while 'See full TensorStore details' in str(error) and error.__cause__ is not None:
    error = error.__cause__
  text = ' '.join(str(error).split()) or type(error).__name__
  for marker in (' [tensorstore_spec=', ' See full TensorStore details'):
    if marker in text:
      text = text[:text.index(marker)].rstrip('.;, ')
  return text if len(text) <= limit else text[:limit - 1] + '…'


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
          raise ValueError(f'{path} is damaged (not valid JSON: {short_error(e, 80)})') from e


def _not_a_zoo(workdir: str, name: str) -> ZooError:
  kind = folder_kind(workdir)
  if kind in ('meta', 'release'):
    hint = f'; it holds {KIND_NAMES[kind]}, not a zoo'
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
    raise ZooError(f'{path} is damaged (not valid JSON: {short_error(e, 80)})') from e
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
    raise ZooError(f'{path}: not a readable CSV ({short_error(e, 120)})') from e


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


def load_zoo(workdir: str) -> Zoo:
  """Reads a finished zoo workdir; raises ZooError naming what is missing, damaged (a file that
  is not JSON or CSV, truncated, lacks columns; a snapshots checkpoint Orbax cannot read) or
  inconsistent (snapshots that do not match models.csv)."""
  if not os.path.isdir(workdir):
    raise ZooError(f'no zoo at {workdir}: not a directory')
  for name in (CONFIG_FILE, MODELS_FILE, CURVES_FILE, SNAPSHOTS_DIR):
    if not os.path.exists(os.path.join(workdir, name)):
      raise _not_a_zoo(workdir, name)
  config = _read_config(os.path.join(workdir, CONFIG_FILE))
  table = read_csv(os.path.join(workdir, MODELS_FILE))
  _check_models(table, os.path.join(workdir, MODELS_FILE))
  curves = read_csv(os.path.join(workdir, CURVES_FILE))
  missing = [c for c in CURVE_KEYS if c not in curves.columns]
  if missing:
    raise ZooError(f'{os.path.join(workdir, CURVES_FILE)} lacks column {", ".join(missing)}')
  snapshots_dir = os.path.join(workdir, SNAPSHOTS_DIR)
  if not os.path.isdir(snapshots_dir):
    raise ZooError(f'{workdir}: cannot read snapshots: {snapshots_dir} is not a directory')
  try:
    check_checkpoint_files(snapshots_dir)
    snaps, numbers = snapshots_lib.load_snapshots(snapshots_dir)
  except Exception as e:  # Orbax raises many types for a damaged checkpoint.
    raise ZooError(f'{workdir}: cannot read snapshots: {short_error(e)}') from e
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


def _missing_parents(folder: str) -> list[str]:
  """The folders, deepest first, that os.makedirs(folder) would create."""
  missing = []
  while folder and not os.path.exists(folder):
    missing.append(folder)
    parent = os.path.dirname(folder)
    if parent == folder:
      break
    folder = parent
  return missing


class OutputFolder:
  """`with OutputFolder(out, check) as tmp:` — write a workdir of several files into tmp, a
  hidden sibling of out (.<name>.partial-…); on success tmp becomes out, on any error tmp (and
  any parent folder this created) is removed and out is left exactly as it was.

  check(out) is called when out, at the end, is not empty (it may have been filled meanwhile);
  it raises to refuse replacing it. A replaced out is removed only once tmp is in its place.
  """

  def __init__(self, out: str, check: Callable[[str], None]):
    self.out = os.path.abspath(out)
    self.check = check

  def __enter__(self) -> str:
    parent = os.path.dirname(self.out)
    self._created = _missing_parents(parent)
    os.makedirs(parent, exist_ok=True)
    try:
      self.tmp = tempfile.mkdtemp(dir=parent,
                                  prefix='.' + os.path.basename(self.out) + '.partial-')
      umask = os.umask(0)
      os.umask(umask)
      os.chmod(self.tmp, 0o777 & ~umask)  # mkdtemp makes it private; out should not be.
    except BaseException:
      self._remove_parents()
      raise
    return self.tmp

  def _remove_parents(self) -> None:
    for folder in self._created:
      try:
        os.rmdir(folder)
      except OSError:
        break

  def __exit__(self, kind, value, traceback) -> None:
    if kind is None:
      try:
        self._commit()
        return
      except BaseException:
        shutil.rmtree(self.tmp, ignore_errors=True)
        self._remove_parents()
        raise
    shutil.rmtree(self.tmp, ignore_errors=True)
    self._remove_parents()

  def _commit(self) -> None:
    if not _absent_or_empty(self.out):
      self.check(self.out)  # became non-empty meanwhile, or overwrite: may it be replaced?
    move_into_place(self.tmp, self.out)


def _absent_or_empty(folder: str) -> bool:
  return not os.path.lexists(folder) or (os.path.isdir(folder) and not os.listdir(folder))


def move_into_place(new: str, out: str) -> None:
  """Renames the finished folder `new` to `out` (same filesystem). An empty or absent `out` is
  replaced atomically; a non-empty one (the caller has checked that it may go) is first renamed
  aside, and removed only once `new` is in its place (put back if that rename fails)."""
  if _absent_or_empty(out):
    os.rename(new, out)
    return
  parent, name = os.path.split(os.path.abspath(out))
  old = tempfile.mkdtemp(dir=parent, prefix=f'.{name}.old-')
  os.rename(out, old)  # replaces the empty folder mkdtemp made
  try:
    os.rename(new, out)
  except BaseException:
    os.rename(old, out)
    raise
  shutil.rmtree(old, ignore_errors=True)
