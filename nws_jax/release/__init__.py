"""The published NWS release format (PROTOCOL §4): read where it lies, check, and write.

A release is one or more split CSVs (the train and test nets), a row per net: the 13 property
columns (PROTOCOL §1 names), `weightn_conv`, `weightn_fc` and `path`, the net's folder (relative
to the CSV's folder, or absolute). Columns are found by name; others are kept but not used. A net
folder holds
  weights/001.bin … weights/020.bin   raw little-endian float64, weightn_conv + weightn_fc weights
                                      each, in the §4 order (conv part first); 001 = initialisation
  meta.csv    a header and one row: the 13 properties
  error.bin   little-endian float64, 5 per exported epoch: step, train error %, validation
              error %, test error %, smoothed validation error %
  stat.bin    little-endian float64 [4]: epochs exported, steps, epochs, seconds
PROTOCOL §4 fixes the weights' encoding; for error.bin and stat.bin it gives the fields only, and
we read and write them as float64 like the weights (a deviation only if the release differs).

Reading never loads a net whole: `Release.read` takes each slice with one positioned read
(`os.pread`) from its file, so memory follows the batch, not the dataset. Every file is checked
when the release is opened (folder, the 20 weight files, each exactly 8·(weightn_conv +
weightn_fc) bytes, meta.csv agreeing with the CSV row where present; property values in PROTOCOL
§1's domains) and, with `scan_nans` (implied by skipping), read once in full for values that are
non-finite or beyond float32; every slice and vector read is checked for them too. A damaged net
either fails the open (`on_damaged='fail'`, naming its path and what is wrong) or is left out and
listed in `Release.damaged` (`'skip'`); a non-finite value met later always fails with the path.
Every file is os.stat-ed before any open (`checked_file`): it must be a regular file (a symbolic
link to one is fine) within its size bound, so a FIFO (whose open blocks) or a link to /dev/zero
is a damaged net (a bad split CSV: ReleaseError), never a hang; nets are compared by real path,
so one listed again through a symbolic link is refused as listed more than once.
"""

from __future__ import annotations

import concurrent.futures
import csv
import dataclasses
import os
import stat as stat_lib
from typing import Sequence

import numpy as np
import pandas as pd

from nws_jax import datasets
from nws_jax import files
from nws_jax import space

NUM_SNAPSHOTS = 20
WEIGHTS_DIR = 'weights'
META_FILE = 'meta.csv'
ERROR_FILE = 'error.bin'
STAT_FILE = 'stat.bin'
SPLIT_COLUMNS = space.PROPERTY_NAMES + ('weightn_conv', 'weightn_fc', 'path')
ERROR_COLUMNS = ('step', 'train_error', 'valid_error', 'test_error', 'smoothed_valid_error')
STAT_FIELDS = ('exports', 'steps', 'epochs', 'seconds')
DTYPE = np.dtype('<f8')
ON_DAMAGED = ('fail', 'skip')

_BOOL_PROPERTIES = ('batch_norm', 'augmentation')
_FLOAT_PROPERTIES = ('lrate',)
_STR_PROPERTIES = ('dataset',)
_TRUE = {'true', '1', '1.0', 'yes'}
_FALSE = {'false', '0', '0.0', 'no'}
# Threads overlap cold reads (disk latency); warm reads are CPU-bound, so no more than the cores.
_READ_THREADS = min(8, os.cpu_count() or 1)
_FLOAT32_MAX = float(np.finfo(np.float32).max)
# Upper bounds on the files read whole (bytes), checked before they are opened.
SPLIT_CSV_LIMIT = 2 ** 30
META_LIMIT = 2 ** 20
ERROR_LIMIT = 2 ** 20  # 26,214 rows of 5 float64; PROTOCOL §3 trains at most 1000 epochs
STAT_LIMIT = len(STAT_FIELDS) * DTYPE.itemsize
# A net's other files: name -> (upper bound in bytes, role named in errors).
_SIDE_FILES = {META_FILE: (META_LIMIT, 'a meta.csv'), ERROR_FILE: (ERROR_LIMIT, 'an error.bin'),
               STAT_FILE: (STAT_LIMIT, 'a stat.bin')}


class ReleaseError(ValueError):
  """A split CSV or net folder that cannot be read as the release format."""


class DamagedNetError(ReleaseError):
  """A net whose files break the format (missing, wrong size, non-finite values)."""


def weight_file(folder: str, number: int) -> str:
  """Path of snapshot `number` (1-based) of the net in `folder`: weights/001.bin … 020.bin."""
  return os.path.join(folder, WEIGHTS_DIR, f'{number:03d}.bin')


_KINDS = ((stat_lib.S_ISDIR, 'a folder'), (stat_lib.S_ISFIFO, 'a FIFO'),
          (stat_lib.S_ISCHR, 'a character device'), (stat_lib.S_ISBLK, 'a block device'),
          (stat_lib.S_ISSOCK, 'a socket'))


def _size_text(size: int) -> str:
  """A byte count for people: '96 bytes', '1 MiB', '123.4 GiB'."""
  for unit, scale in (('GiB', 2 ** 30), ('MiB', 2 ** 20), ('KiB', 2 ** 10)):
    if size >= scale:
      return f'{size / scale:.4g} {unit}'
  return f'{size} bytes'


def checked_file(path: str, size: int, what: str, *, exact: bool = False,
                 error: type[ReleaseError] = DamagedNetError) -> str:
  """`path`, once os.stat (through symbolic links) shows a regular file of at most `size` bytes
  (exactly `size` with `exact`); raises `error` otherwise, one line naming the path and what it
  is. `what` names the file's role ('a meta.csv'). Never opens the file: opening a FIFO blocks,
  and a device such as /dev/zero never ends."""
  try:
    info = os.stat(path)
  except OSError as e:
    raise error(f'{path}: {e.strerror}') from e
  if not stat_lib.S_ISREG(info.st_mode):
    kind = next((name for is_kind, name in _KINDS if is_kind(info.st_mode)), 'special')
    raise error(f'{path} is {kind}, not a regular file')
  if exact and info.st_size != size:
    raise error(f'{path} has {info.st_size} bytes, expected {size} ({what})')
  if info.st_size > size:
    raise error(f'{path} is {_size_text(info.st_size)}, more than the {_size_text(size)} '
                f'{what} may hold')
  return path


# --- split CSVs -------------------------------------------------------------------------------

def _normalise(table: pd.DataFrame, where: str) -> pd.DataFrame:
  """The 13 properties in PROTOCOL encodings (booleans, ints, lrate float, dataset str) and
  checked against PROTOCOL §1's domains."""
  out = table.copy()
  for name in space.PROPERTY_NAMES:
    column = out[name]
    if column.isna().any():
      raise ReleaseError(f'{where}: column {name!r} has {int(column.isna().sum())} empty cells')
    if name in _BOOL_PROPERTIES:
      text = column.astype(str).str.strip().str.lower()
      bad = ~text.isin(_TRUE | _FALSE)
      if bad.any():
        raise ReleaseError(f'{where}: column {name!r} holds {column[bad].iloc[0]!r}, '
                           'not a boolean')
      out[name] = text.isin(_TRUE)
    elif name in _FLOAT_PROPERTIES:
      out[name] = _numeric(column, name, where).astype(np.float64)
    elif name in _STR_PROPERTIES:
      out[name] = column.astype(str).str.strip().str.lower()
    else:
      values = _numeric(column, name, where)
      if (values != np.round(values)).any():
        raise ReleaseError(f'{where}: column {name!r} holds non-integer values')
      out[name] = values.astype(np.int64)
  outside = space.outside_domains(out)
  if outside:
    name, row = outside
    raise ReleaseError(f'{where}: column {name!r} holds {out[name].iloc[row].item()!r}; '
                       f'PROTOCOL §1 allows {", ".join(map(str, space.PROPERTY_DOMAINS[name]))}')
  unknown = ~out['dataset'].isin(datasets.ALL_NAMES)
  if unknown.any():
    raise ReleaseError(f'{where}: unknown dataset {out["dataset"][unknown].iloc[0]!r}; known: '
                       + ', '.join(datasets.ALL_NAMES) + ' (PROTOCOL §1\'s five and our offline '
                       'sets)')
  if not ((out['lrate'] > 0) & np.isfinite(out['lrate'])).all():
    raise ReleaseError(f'{where}: column \'lrate\' holds a value that is not positive, or not '
                       'finite')
  return out


def _weight_counts(table: pd.DataFrame, where: str) -> pd.DataFrame:
  """weightn_conv and weightn_fc as non-negative int64, at least one weight per net."""
  out = table.copy()
  for name in ('weightn_conv', 'weightn_fc'):
    values = _numeric(out[name], name, where)
    if (values != np.round(values)).any() or (values < 0).any():
      raise ReleaseError(f'{where}: column {name!r} must hold non-negative integers')
    out[name] = values.astype(np.int64)
  if ((out['weightn_conv'] + out['weightn_fc']) < 1).any():
    raise ReleaseError(f'{where}: a net has weightn_conv + weightn_fc = 0')
  return out


def _numeric(column: pd.Series, name: str, where: str) -> np.ndarray:
  values = pd.to_numeric(column, errors='coerce')
  if values.isna().any():
    raise ReleaseError(f'{where}: column {name!r} holds {column[values.isna()].iloc[0]!r}, '
                       'not a number')
  return values.to_numpy(np.float64)


def read_split_csv(path: str) -> pd.DataFrame:
  """One split CSV: the 13 properties (PROTOCOL encodings), weightn_conv, weightn_fc, `path`
  (absolute) and `csv` (this file), a row per net. Raises ReleaseError naming what is wrong."""
  if not os.path.exists(path):
    raise ReleaseError(f'no split CSV at {path}')
  checked_file(path, SPLIT_CSV_LIMIT, 'a split CSV', error=ReleaseError)
  try:
    table = pd.read_csv(path, skipinitialspace=True)
  except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as e:
    raise ReleaseError(f'{path}: not a readable CSV ({str(e).splitlines()[0]})') from e
  table.columns = [str(c).strip() for c in table.columns]
  with open(path, newline='') as f:
    header = [c.strip() for c in next(csv.reader(f), [])]
  repeated = sorted({c for c in header if header.count(c) > 1})
  if repeated:
    raise ReleaseError(f'{path}: column {repeated[0]!r} appears more than once')
  missing = [c for c in SPLIT_COLUMNS if c not in table.columns]
  if missing:
    raise ReleaseError(f'{path}: missing columns {", ".join(missing)} (a split CSV needs '
                       f'{", ".join(SPLIT_COLUMNS)})')
  if table.empty:
    raise ReleaseError(f'{path}: no nets listed')
  table = _weight_counts(_normalise(table, path), path)
  base = os.path.dirname(os.path.abspath(path))
  table['path'] = [os.path.normpath(p if os.path.isabs(p) else os.path.join(base, p))
                   for p in table['path'].astype(str)]
  table['csv'] = os.path.abspath(path)
  return table


def read_split_csvs(paths: Sequence[str]) -> pd.DataFrame:
  """Several split CSVs concatenated in order; a net listed twice, by the same path or through
  a symbolic link (compared by real path), is an error (it would leak between meta-train and
  meta-test)."""
  if not paths:
    raise ReleaseError('no split CSV given')
  table = pd.concat([read_split_csv(p) for p in paths], ignore_index=True)
  real = table['path'].map(os.path.realpath)
  twice = np.flatnonzero(real.duplicated().to_numpy())
  if len(twice):
    j = int(twice[0])
    first, again = table['path'][real == real[j]].iloc[0], table['path'][j]
    alias = '' if first == again else f' (again as {again}: both lead to {real[j]})'
    raise ReleaseError(f'net {first} is listed more than once{alias} '
                       f'({len(twice)} duplicate rows in {", ".join(paths)})')
  return table


def write_split_csv(table: pd.DataFrame, path: str) -> None:
  """Writes a split CSV (SPLIT_COLUMNS, `path` as given) atomically."""
  files.write_atomic(path, lambda f: table[list(SPLIT_COLUMNS)].to_csv(f, index=False),
                mode='w')


# --- one net ----------------------------------------------------------------------------------

def check_net(folder: str, n: int, num_snapshots: int = NUM_SNAPSHOTS) -> str | None:
  """What is wrong with the net in `folder` whose vectors have n weights, from the file system
  alone, or None: a missing folder or weight file, a weight file of the wrong size, or a file
  (weights, or meta.csv, error.bin, stat.bin where present) that is not a regular file or is
  larger than its role allows (checked_file)."""
  if not os.path.isdir(folder):
    return 'folder missing'
  try:
    for number in range(1, num_snapshots + 1):
      path = weight_file(folder, number)
      if not os.path.exists(path):
        return f'snapshot {number:03d}.bin missing'
      checked_file(path, n * DTYPE.itemsize, _weights_text(n), exact=True)
    for name, (limit, what) in _SIDE_FILES.items():
      if os.path.exists(os.path.join(folder, name)):
        checked_file(os.path.join(folder, name), limit, what)
  except DamagedNetError as e:
    return str(e)
  return None


def _weights_text(n: int) -> str:
  return f'{n} float64 weights = weightn_conv + weightn_fc'


def unusable(values: np.ndarray) -> np.ndarray:
  """bool, per value: non-finite, or beyond float32's range (the meta-classifiers read float32)."""
  return ~(np.abs(values) <= _FLOAT32_MAX)


def nonfinite_counts(folder: str, n: int, num_snapshots: int = NUM_SNAPSHOTS) -> np.ndarray:
  """int [num_snapshots]: weights per snapshot that are non-finite or beyond float32's range,
  reading one file at a time."""
  return np.array([int(unusable(read_vector(folder, s, n)).sum())
                   for s in range(1, num_snapshots + 1)])


def read_vector(folder: str, number: int, n: int) -> np.ndarray:
  """float64 [n]: snapshot `number` (1-based) of the net in `folder`."""
  path = checked_file(weight_file(folder, number), n * DTYPE.itemsize, _weights_text(n),
                      exact=True)
  vector = np.fromfile(path, dtype=DTYPE, count=n + 1)  # bounded if it grew since
  if vector.size != n:
    raise DamagedNetError(f'{path}: {vector.size} weights, expected {n}')
  return vector


def read_properties(folder: str) -> dict:
  """meta.csv of a net: the 13 properties (PROTOCOL encodings)."""
  path = checked_file(os.path.join(folder, META_FILE), *_SIDE_FILES[META_FILE])
  try:
    table = pd.read_csv(path, skipinitialspace=True)
  except (OSError, pd.errors.ParserError, pd.errors.EmptyDataError) as e:
    raise DamagedNetError(f'{path}: unreadable ({str(e).splitlines()[0]})') from e
  missing = [c for c in space.PROPERTY_NAMES if c not in table.columns]
  if missing or len(table) != 1:
    raise DamagedNetError(f'{path}: expected one row of the 13 properties'
                          + (f', missing {", ".join(missing)}' if missing else ''))
  return _normalise(table, path)[list(space.PROPERTY_NAMES)].iloc[0].to_dict()


def read_errors(folder: str) -> np.ndarray:
  """float64 [epochs, 5] of error.bin (ERROR_COLUMNS)."""
  path = checked_file(os.path.join(folder, ERROR_FILE), *_SIDE_FILES[ERROR_FILE])
  values = np.fromfile(path, dtype=DTYPE, count=ERROR_LIMIT // DTYPE.itemsize)
  if values.size % len(ERROR_COLUMNS):
    raise DamagedNetError(f'{path}: {values.size} values, not rows of {len(ERROR_COLUMNS)}')
  return values.reshape(-1, len(ERROR_COLUMNS))


def read_stat(folder: str) -> np.ndarray:
  """float64 [4] of stat.bin (STAT_FIELDS)."""
  path = checked_file(os.path.join(folder, STAT_FILE), *_SIDE_FILES[STAT_FILE])
  values = np.fromfile(path, dtype=DTYPE, count=len(STAT_FIELDS) + 1)
  if values.size != len(STAT_FIELDS):
    raise DamagedNetError(f'{path}: {values.size} values, expected {len(STAT_FIELDS)}')
  return values


def write_net(folder: str, vectors: np.ndarray, properties: dict, errors: np.ndarray,
              stat: np.ndarray) -> None:
  """Writes one net folder: vectors [S, n] as weights/001.bin…, meta.csv, error.bin [E, 5],
  stat.bin [4]. Each file is written atomically; `folder` must not hold a net yet."""
  vectors = np.asarray(vectors)
  if vectors.ndim != 2:
    raise ValueError(f'vectors must be [snapshots, n], got {vectors.shape}')
  errors = np.asarray(errors, DTYPE)
  if errors.ndim != 2 or errors.shape[1] != len(ERROR_COLUMNS):
    raise ValueError(f'errors must be [epochs, {len(ERROR_COLUMNS)}], got {errors.shape}')
  os.makedirs(os.path.join(folder, WEIGHTS_DIR), exist_ok=True)
  for number, vector in enumerate(vectors, start=1):
    data = np.ascontiguousarray(vector, DTYPE).tobytes()
    files.write_atomic(weight_file(folder, number), lambda f, d=data: f.write(d))
  row = pd.DataFrame([{name: properties[name] for name in space.PROPERTY_NAMES}])
  files.write_atomic(os.path.join(folder, META_FILE), lambda f: row.to_csv(f, index=False), mode='w')
  files.write_atomic(os.path.join(folder, ERROR_FILE), lambda f: f.write(errors.tobytes()))
  stat = np.asarray(stat, DTYPE).reshape(len(STAT_FIELDS))
  files.write_atomic(os.path.join(folder, STAT_FILE), lambda f: f.write(stat.tobytes()))


_SCAN_HINT = ('rerun with --on_damaged=skip (which reads every file first) to find and leave out '
              'such nets')


# --- a whole release ----------------------------------------------------------------------------

@dataclasses.dataclass
class Release:
  """The usable nets of one or more split CSVs, read lazily.

  table: a row per usable net (the 13 properties, weightn_conv, weightn_fc, path, csv), in CSV
    order; damaged: path, csv, reason of each net left out (on_damaged='skip').
  """
  table: pd.DataFrame
  damaged: pd.DataFrame
  num_snapshots: int = NUM_SNAPSHOTS

  def __post_init__(self):
    self._paths = self.table['path'].tolist()
    self.lengths = (self.table['weightn_conv'] + self.table['weightn_fc']).to_numpy(np.int64)
    self._pool = None

  def __len__(self) -> int:
    return len(self.table)

  def _read_one(self, model: int, snap: int, offset: int, length: int) -> np.ndarray:
    n = int(self.lengths[model])
    path = checked_file(weight_file(self._paths[model], snap + 1), n * DTYPE.itemsize,
                        _weights_text(n), exact=True)
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)  # not blocked by a FIFO swapped in since
    try:
      data = os.pread(fd, length * DTYPE.itemsize, int(offset) * DTYPE.itemsize)
    finally:
      os.close(fd)
    if len(data) != length * DTYPE.itemsize:
      raise DamagedNetError(f'{path}: ended before weights {offset}..{offset + length} '
                            '(truncated since it was checked?)')
    return np.frombuffer(data, DTYPE)

  def read(self, models: np.ndarray, snaps: np.ndarray, offsets: np.ndarray,
           length: int) -> np.ndarray:
    """float32 [N, length]: weights offsets[j]..+length of snapshot snaps[j] (0-based) of net
    models[j], one positioned read each (threads overlap them). Raises DamagedNetError naming the
    file when a slice holds a non-finite value."""
    if self._pool is None and _READ_THREADS > 1:
      self._pool = concurrent.futures.ThreadPoolExecutor(_READ_THREADS)
    models, snaps, offsets = (np.asarray(a).reshape(-1) for a in (models, snaps, offsets))
    outside = np.flatnonzero((offsets < 0) | (offsets + length > self.lengths[models]))
    if len(outside):
      j = int(outside[0])
      raise ValueError(f'slice {offsets[j]}..{offsets[j] + length} lies outside the '
                       f'{self.lengths[models[j]]} weights of {self._paths[models[j]]}')
    out = np.empty((len(models), length), np.float32)

    def fill(rows):
      for j in rows:
        out[j] = self._read_one(int(models[j]), int(snaps[j]), int(offsets[j]), length)

    # A few contiguous runs per thread: one task per slice costs more than a warm read.
    runs = np.array_split(np.arange(len(models)), _READ_THREADS)
    if _READ_THREADS == 1:
      fill(runs[0])
    else:
      list(self._pool.map(fill, runs))
    bad = ~np.isfinite(out).all(axis=1)
    if bad.any():
      j = int(np.flatnonzero(bad)[0])
      raise DamagedNetError(
          f'{weight_file(self._paths[models[j]], snaps[j] + 1)}: non-finite weights in '
          f'{offsets[j]}..{offsets[j] + length}; ' + _SCAN_HINT)
    return out

  def vectors(self, models: np.ndarray, snaps: np.ndarray) -> list[np.ndarray]:
    """float32 [n_m] whole vectors of (net, 0-based snapshot) pairs; a non-finite weight raises
    DamagedNetError naming the file, as in `read`."""
    out = []
    for m, s in zip(np.asarray(models), np.asarray(snaps)):
      vector = read_vector(self._paths[m], int(s) + 1, int(self.lengths[m]))
      if unusable(vector).any():
        raise DamagedNetError(f'{weight_file(self._paths[m], int(s) + 1)}: non-finite weights; '
                              + _SCAN_HINT)
      out.append(vector.astype(np.float32))
    return out


def _meta_mismatch(folder: str, row: pd.Series) -> str | None:
  """Where the net's meta.csv (when present) disagrees with its split-CSV row, or None."""
  if not os.path.exists(os.path.join(folder, META_FILE)):
    return None
  try:
    meta = read_properties(folder)
  except ReleaseError as e:
    return str(e)
  for name in space.PROPERTY_NAMES:
    a, b = meta[name], row[name]
    same = np.isclose(a, b, rtol=1e-9, atol=0) if name in _FLOAT_PROPERTIES else a == b
    if not same:
      return f'meta.csv says {name}={a!r}, the split CSV {b!r}'
  return None


def open_release(csv_paths: Sequence[str], *, on_damaged: str = 'fail', scan_nans: bool = False,
                 progress: bool = False) -> Release:
  """Reads the split CSVs and checks every listed net (see the module docstring).

  A net's meta.csv, when present, must agree with its row. on_damaged='skip' implies scan_nans:
  leaving out damaged nets needs them found before the run, not in the middle of it.
  Raises ReleaseError for a bad CSV, DamagedNetError for a damaged net with on_damaged='fail'
  (or when no net is left), both with one line naming the file.
  """
  if on_damaged not in ON_DAMAGED:
    raise ReleaseError(f'unknown on_damaged {on_damaged!r}; choose from: ' + ', '.join(ON_DAMAGED))
  scan_nans = scan_nans or on_damaged == 'skip'
  table = read_split_csvs(csv_paths)
  lengths = (table['weightn_conv'] + table['weightn_fc']).to_numpy(np.int64)
  rows = range(len(table))
  if progress:
    import tqdm
    rows = tqdm.tqdm(rows, desc='checking nets' + (' (full read)' if scan_nans else ''),
                     unit='net')
  damaged = []
  for i in rows:
    folder, n = table['path'].iloc[i], int(lengths[i])
    reason = check_net(folder, n) or _meta_mismatch(folder, table.iloc[i])
    if reason is None and scan_nans:
      counts = nonfinite_counts(folder, n)
      if counts.any():
        first = int(np.flatnonzero(counts)[0]) + 1
        reason = (f'{int(counts.sum())} non-finite weights (first in snapshot {first:03d}.bin)')
    if reason is not None:
      if on_damaged == 'fail':
        raise DamagedNetError(f'damaged net {folder} (listed in {table["csv"].iloc[i]}): {reason}'
                              '; --on_damaged=skip leaves such nets out')
      damaged.append(dict(path=folder, csv=table['csv'].iloc[i], reason=reason))
  damaged = pd.DataFrame(damaged, columns=['path', 'csv', 'reason'])
  usable = table[~table['path'].isin(damaged['path'])].reset_index(drop=True)
  if usable.empty:
    raise DamagedNetError(f'all {len(table)} nets are damaged; the first: '
                          f'{damaged["path"].iloc[0]}: {damaged["reason"].iloc[0]}')
  return Release(usable, damaged)
