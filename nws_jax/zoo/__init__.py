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
import errno
import hashlib
import json
import math
import os
import re
import shutil
import tempfile
import time
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


def _inside(path: str, parent: str) -> bool:
  path, parent = os.path.realpath(path), os.path.realpath(parent)
  return os.path.commonpath([path, parent]) == parent


def inside_input(folder: str, inputs) -> str | None:
  """Why `folder` may not be written at all, even when it does not exist yet: it lies inside
  one of `inputs` (paths read by the run: 'lies inside the input …'); or None. (A folder that is
  an input holds it: `input_clash`.)"""
  for path in inputs:
    if _inside(folder, path) and not _inside(path, folder):
      return f'lies inside the input {path}; writing there would damage it'
  return None


def input_clash(folder: str, inputs) -> str | None:
  """Why replacing `folder` would harm one of `inputs` (paths read by the run): it holds one
  ('holds the input …') or lies inside one ('lies inside the input …'); None if neither."""
  for path in inputs:
    if _inside(path, folder):
      return f'holds the input {path}; overwriting it would delete it'
  return inside_input(folder, inputs)


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
  write_json_atomic({'config_sha256': _config_digest(config),
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


# The errno of a write that failed for lack of room: a full disk, a quota, or a file-size limit
# (RLIMIT_FSIZE; the tests simulate a full disk with it).
_NO_SPACE = {errno.ENOSPC: 'ENOSPC', errno.EDQUOT: 'EDQUOT', errno.EFBIG: 'EFBIG'}


class NoSpaceError(OSError):
  """A write that failed for lack of room, as one line naming the file or folder written."""


def _no_space_errno(error: BaseException | None) -> tuple[int, BaseException] | None:
  """(errno, the error carrying it) when `error`, or one it was raised from or while handling,
  is a write that failed for lack of room; None otherwise. TensorStore's errors (through Orbax)
  carry it only in their text: "… File too large [os_error_code='27']"."""
  seen = set()
  while error is not None and id(error) not in seen:
    seen.add(id(error))
    if isinstance(error, OSError) and error.errno in _NO_SPACE:
      return error.errno, error
    for code in _NO_SPACE:
      if f"os_error_code='{code}'" in str(error):
        return code, error
    error = error.__cause__ or error.__context__
  return None


def no_space_error(error: BaseException, out: str,
                   tmp: str | None = None) -> NoSpaceError | None:
  """`cannot write PATH: No space left on device (ERRNO…)` when `error` is a write that failed
  for lack of room (ENOSPC, EDQUOT, or EFBIG, a file-size limit, told alike), or None. PATH: the
  file written (its OSError.filename; under `tmp`, the hidden folder of an OutputFolder, named
  where it was to end up under `out`), else the output folder `out`."""
  if isinstance(error, NoSpaceError):
    return error
  found = _no_space_errno(error)
  if found is None:
    return None
  code, cause = found
  path = getattr(cause, 'filename', None)
  path = os.path.abspath(os.fspath(path)) if isinstance(path, (str, os.PathLike)) else out
  if tmp is not None and _inside(path, tmp):
    path = os.path.normpath(os.path.join(out, os.path.relpath(path, tmp)))
  detail = _NO_SPACE[code] + ('' if code == errno.ENOSPC else f': {os.strerror(code)}')
  result = NoSpaceError(f'cannot write {path}: No space left on device ({detail})')
  result.errno = code
  return result


_PARTIAL_NAME = re.compile(r'\..+\.partial-[a-z0-9_]+')  # OutputFolder's hidden folders


def remove_folder(folder: str, attempts: int = 5) -> None:
  """Removes the tree `folder`, checking it is gone: a writer not quite finished (a library's
  background thread) may add a file while it is being removed. Errors are ignored."""
  for attempt in range(attempts):
    shutil.rmtree(folder, ignore_errors=True)
    if not os.path.lexists(folder):
      return
    time.sleep(0.05 * (attempt + 1))


def remove_partial_folders(parent: str) -> list[str]:
  """Removes from `parent` the hidden folders of OutputFolders whose process was killed while
  writing (.<name>.partial-…) — only those that carry this project's marker file (MARKER_FILE),
  nothing else. The caller makes sure no writer of `parent` is running (its lock). Returns the
  paths removed."""
  removed = []
  names = sorted(os.listdir(parent)) if os.path.isdir(parent) else []
  for name in names:
    path = os.path.join(parent, name)
    if (_PARTIAL_NAME.fullmatch(name) and os.path.isdir(path) and not os.path.islink(path)
        and marked_kind(path) is not None):
      remove_folder(path)
      removed.append(path)
  return removed


class OutputFolder:
  """`with OutputFolder(out, check) as tmp:` — write a workdir of several files into tmp, a
  hidden sibling of out (.<name>.partial-…); on success tmp becomes out, on any error tmp (and
  any parent folder this created) is removed and out is left exactly as it was. A write that
  fails for lack of room is raised as a NoSpaceError naming what was written (`no_space_error`).

  check(out) is called when out, at the end, is not empty (it may have been filled meanwhile);
  it raises to refuse replacing it. A replaced out is removed only once tmp is in its place.
  """

  def __init__(self, out: str, check: Callable[[str], None]):
    self.out = os.path.abspath(out)
    self.check = check

  def __enter__(self) -> str:
    parent = os.path.dirname(self.out)
    self._created = files.missing_parents(parent)
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
      except Exception as e:
        self._discard()
        error = no_space_error(e, self.out, self.tmp)
        if error is None:
          raise
        raise error from e
      except BaseException:
        self._discard()
        raise
    self._discard()
    error = no_space_error(value, self.out, self.tmp) if isinstance(value, Exception) else None
    if error is not None:
      raise error from value  # out of room: one line naming what was written

  def _discard(self) -> None:
    remove_folder(self.tmp)
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
