"""Converting between our zoos and the published NWS release format (PROTOCOL §4, release.py).

`export_zoo` writes a zoo workdir (zoo.py) as a release: a folder per net and the split CSVs
  out/nets/<prefix>_<model_id:06d>/   weights/001.bin … 020.bin (float64), meta.csv, error.bin,
                                      stat.bin (release.write_net)
  out/train.csv, out/test.csv         a row per net (release.SPLIT_COLUMNS), `path` relative to
                                      the CSV (nets/<prefix>_<model_id:06d>)
- Failed models (models.csv `failed`: test accuracy under the zoo's threshold) are left out by
  default, as the release left out nets that failed to train (PROTOCOL §3); include_failed keeps
  them.
- The weights are the zoo's float32 snapshots widened to float64, so they are exact.
- error.bin has a row per epoch 0..E of curves.csv (E = the model's `epochs`): step = epoch ×
  steps_per_epoch, 100·(1 − train/valid/test accuracy), and the validation error % smoothed
  0.5/0.5 as the early stopping smooths it (s_0 = v_0, s_e = 0.5·s_{e−1} + 0.5·v_e, PROTOCOL §3).
- stat.bin is [E + 1 exports, E × steps_per_epoch steps, E epochs, seconds]. Our nets train
  together, so `seconds` is the whole zoo's wall time (models.csv `seconds`), the same for every
  net, not the net's own training time as in the release.
- The split is by model (meta.split.make_split with valid_fraction 0): train.csv holds the
  training side, test.csv the test side, each in model order.

`import_release` reads release split CSVs (release.open_release) into a zoo workdir that
zoo.load_zoo reads, streaming net by net: snapshots are written as Orbax chunks of about
`chunk_mb` MiB (snapshots.ChunkWriter), so memory holds one chunk, never the release.
- Model i is the i-th usable net in CSV order (CSVs in the order given); models.csv has the 13
  properties (from the split CSV), model_id, weightn_conv, weightn_fc, train/valid/test accuracy
  (fractions, from error.bin's last row; NaN without error.bin), epochs (stat.bin; NaN without),
  status 'imported', failed False, steps_per_epoch (steps / epochs, NaN when unknown), seconds
  (stat.bin; NaN without), source_path (the net's folder) and source_csv.
- Our zoos store float32, so the release's float64 weights are rounded to float32; a zoo exported
  by `export_zoo` comes back bit-identical. A weight that is non-finite, or beyond float32's range,
  makes the net damaged: the import reads every weight anyway, so it always checks (scan_nans only
  makes the check happen up front, when the release is opened, before anything is written).
- curves.csv has a row per error.bin row (epoch = row index), train_loss NaN. The export numbers
  are snapshots.select_exports(exports of stat.bin), or 0 (unknown) without stat.bin.
- A net whose error.bin or stat.bin is present but malformed (wrong size, no rows, an export count
  that is not a whole number ≥ 1, error.bin rows other than stat.bin's exports) is damaged like
  one with a bad weight file: the import fails naming it (on_damaged='fail') or leaves it out
  (on_damaged='skip'). config.json lists every net left out, found when opening or while
  importing, with the reason.

Both write into a hidden temporary sibling of `out` (.<name>.partial-…, files.OutputFolder) and
rename it into place when complete: `out` must be absent or empty unless overwrite, and with
overwrite the old folder is removed only once the new one is complete. Overwrite replaces only a
folder this project wrote as the same kind (its marker file, files.replace_refusal: an export
replaces only an export, an import only a zoo), never a folder of the user's, nor one that holds
an input or lies inside one. An error or crash leaves `out` untouched (a crash may leave the hidden .partial- folder
behind). Both hold `out`'s lock (workdir_lock.hold) while they run: a second writer of it is
refused with workdir_lock.LockedError before it checks or writes anything.
"""

from __future__ import annotations

import os
from typing import Sequence

import numpy as np
import pandas as pd

import nws_jax
from nws_jax import files
from nws_jax import release as release_lib
from nws_jax import snapshots as snapshots_lib
from nws_jax import space
from nws_jax import workdir_lock
from nws_jax import zoo as zoo_lib
from nws_jax.meta import split as split_lib

SMOOTHING = 0.5  # weight of the previous smoothed value (PROTOCOL §3's 0.5/0.5)
IMPORTED_STATUS = 'imported'
TRAIN_CSV = 'train.csv'
TEST_CSV = 'test.csv'
NETS_DIR = 'nets'
IMPORT_COLUMNS = (list(space.PROPERTY_NAMES) + list(space.TABLE_COLUMNS)
                  + ['failed', 'steps_per_epoch', 'seconds', 'source_path', 'source_csv'])
CURVE_COLUMNS = ('model_id', 'epoch', 'train_accuracy', 'valid_accuracy', 'test_accuracy',
                 'train_loss')


# --- the output folder ------------------------------------------------------------------------

def _check_out(out: str, overwrite: bool, protect: Sequence[str] = (),
               kind: str = 'release') -> None:
  """Raises FileExistsError unless `out` may be written: not inside one of the inputs in
  `protect`, and absent, an empty folder, or (with overwrite) a folder this project wrote as a
  `kind` (its marker file, files.replace_refusal: an export replaces only a release export, an
  import only a zoo) that holds none of them."""
  if not out:
    raise ValueError('no output folder given')
  inside = files.inside_input(out, protect)
  if inside:
    raise FileExistsError(f'{out} {inside}')
  if not os.path.lexists(out):
    return
  if not os.path.isdir(out) or os.path.islink(out):
    raise FileExistsError(f'{out} exists and is not a folder (or is a symbolic link)')
  if not os.listdir(out):
    return
  if not overwrite:
    raise FileExistsError(f'{out} is not empty; choose another folder or overwrite it '
                          '(--overwrite)')
  clash = files.input_clash(out, protect)
  if clash:
    raise FileExistsError(f'{out} {clash}')
  refusal = files.replace_refusal(out, kind, 'export_nws' if kind == 'release'
                                    else 'import_nws or train_zoo')
  if refusal:
    raise FileExistsError(f'{out} {refusal}')


def _release_folders(csv_paths: Sequence[str]) -> list[str]:
  """The folders of `csv_paths` that hold a release (split CSVs beside their nets/)."""
  folders = dict.fromkeys(os.path.dirname(os.path.abspath(p)) for p in csv_paths)
  return [f for f in folders if files.folder_kind(f) == 'release']


def _folder_bytes(folder: str) -> int:
  return sum(os.path.getsize(os.path.join(root, name))
             for root, _, names in os.walk(folder) for name in names)


def _progress(items, progress: bool, desc: str, unit: str = 'net'):
  if not progress:
    return items
  import tqdm
  return tqdm.tqdm(items, desc=desc, unit=unit)


# --- export -------------------------------------------------------------------------------------

def _as_bool(column: pd.Series, where: str) -> np.ndarray:
  text = column.astype(str).str.strip().str.lower()
  bad = ~text.isin({'true', 'false', '1', '0', '1.0', '0.0'})
  if bad.any():
    raise zoo_lib.ZooError(f'{where}: {column.name!r} holds {column[bad].iloc[0]!r}, '
                           'not a boolean')
  return text.isin({'true', '1', '1.0'}).to_numpy()


def net_errors(curve: pd.DataFrame, steps_per_epoch: float) -> np.ndarray:
  """float64 [E + 1, 5] error.bin rows (release.ERROR_COLUMNS) from a model's curves.csv rows of
  epochs 0..E, in epoch order."""
  epochs = curve['epoch'].to_numpy(np.float64)
  errors = np.empty((len(curve), len(release_lib.ERROR_COLUMNS)), np.float64)
  errors[:, 0] = epochs * steps_per_epoch
  for col, name in enumerate(('train_accuracy', 'valid_accuracy', 'test_accuracy'), start=1):
    errors[:, col] = 100.0 * (1.0 - curve[name].to_numpy(np.float64))
  smoothed = errors[:, 2].copy()
  for e in range(1, len(smoothed)):
    smoothed[e] = SMOOTHING * smoothed[e - 1] + (1.0 - SMOOTHING) * errors[e, 2]
  errors[:, 4] = smoothed
  return errors


def _model_curves(zoo: zoo_lib.Zoo, rows: np.ndarray) -> list[tuple[np.ndarray, np.ndarray]]:
  """(error.bin rows, stat.bin) of each model in `rows`; raises ZooError for missing epochs."""
  table, where = zoo.table, os.path.join(zoo.workdir, zoo_lib.MODELS_FILE)
  groups = {int(k): g for k, g in zoo.curves.groupby('model_id')}
  out = []
  for i in rows:
    model_id = int(table['model_id'].iloc[i])
    epochs, steps, seconds = (float(table[c].iloc[i])
                              for c in ('epochs', 'steps_per_epoch', 'seconds'))
    if not (np.isfinite(epochs) and epochs >= 0 and epochs == round(epochs)):
      raise zoo_lib.ZooError(f'{where}: model {model_id} has epochs {epochs}, not a whole number')
    if not np.isfinite(steps):
      raise zoo_lib.ZooError(f'{where}: model {model_id} has no steps_per_epoch')
    e = int(epochs)
    curve = groups.get(model_id, zoo.curves.iloc[:0])
    curve = curve[curve['epoch'] <= e].drop_duplicates('epoch').sort_values('epoch')
    if curve['epoch'].tolist() != list(range(e + 1)):
      raise zoo_lib.ZooError(
          f'{os.path.join(zoo.workdir, zoo_lib.CURVES_FILE)}: model {model_id} lacks rows of '
          f'epochs 0..{e} (has {len(curve)})')
    out.append((net_errors(curve, steps),
                np.array([e + 1, e * steps, e, seconds], np.float64)))
  return out


@workdir_lock.holding('out', 'export_nws')
def export_zoo(zoo_dir: str, out: str, *, test_fraction: float = 0.2, seed: int = 0,
               include_failed: bool = False, prefix: str = 'nwsjax', overwrite: bool = False,
               progress: bool = False) -> dict:
  """Writes the zoo in `zoo_dir` as a release in `out` (see the module docstring).

  Returns {'out', 'nets', 'train', 'test', 'left_out_failed', 'bytes'}. Raises ZooError for a
  zoo that cannot be exported, FileExistsError for an `out` that may not be written, ValueError
  (SplitError) when the nets cannot be split, workdir_lock.LockedError when another process is
  writing `out`; nothing is written then.
  """
  if not prefix or prefix in ('.', '..') or '/' in prefix or os.sep in prefix:
    raise ValueError(f'prefix {prefix!r} cannot start a folder name')
  _check_out(out, overwrite, protect=[zoo_dir], kind='release')
  zoo = zoo_lib.load_zoo(zoo_dir)
  table, where = zoo.table, os.path.join(zoo_dir, zoo_lib.MODELS_FILE)
  if 'steps_per_epoch' not in table.columns:
    raise zoo_lib.ZooError(f'{where} has no steps_per_epoch column: the zoo predates it '
                           '(retrain it with this version to export it)')
  missing = [c for c in ('model_id', 'epochs', 'failed', 'seconds') if c not in table.columns]
  if missing:
    raise zoo_lib.ZooError(f'{where} lacks column {", ".join(missing)}')
  twice = table['model_id'][table['model_id'].duplicated()]
  if len(twice):
    raise zoo_lib.ZooError(f'{where}: model_id {twice.iloc[0]} appears more than once')
  failed = _as_bool(table['failed'], where)
  rows = np.arange(len(table)) if include_failed else np.flatnonzero(~failed)
  if not len(rows):
    raise ValueError(f'no model to export: all {len(table)} failed to train (include them with '
                     '--include_failed)')
  split = split_lib.make_split(rows, seed, test_fraction, valid_fraction=0.0)
  curves = _model_curves(zoo, rows)  # checked before anything is written
  names = {int(i): f'{prefix}_{int(table["model_id"].iloc[i]):06d}' for i in rows}

  with files.OutputFolder(out, lambda o: _check_out(o, overwrite, kind='release')) as tmp:
    files.write_marker(tmp, 'release')
    for i, (errors, stat) in _progress(list(zip(rows, curves)), progress, 'exporting nets'):
      properties = table.iloc[int(i)][list(space.PROPERTY_NAMES)].to_dict()
      release_lib.write_net(os.path.join(tmp, NETS_DIR, names[int(i)]),
                            zoo.snapshots[int(i)].astype(np.float64), properties, errors, stat)
    for side, name in ((np.concatenate([split.train, split.valid]), TRAIN_CSV),
                       (split.test, TEST_CSV)):
      side = np.sort(side)
      csv = table.iloc[side][list(space.PROPERTY_NAMES) + ['weightn_conv', 'weightn_fc']].copy()
      csv['path'] = [f'{NETS_DIR}/{names[int(i)]}' for i in side]
      release_lib.write_split_csv(csv, os.path.join(tmp, name))
    total = _folder_bytes(tmp)
  return {'out': os.path.abspath(out), 'nets': len(rows),
          'train': len(split.train) + len(split.valid), 'test': len(split.test),
          'left_out_failed': 0 if include_failed else int(failed.sum()), 'bytes': total}


# --- import -------------------------------------------------------------------------------------

def _read_net(folder: str, n: int, num_snapshots: int = release_lib.NUM_SNAPSHOTS):
  """(float32 [S, n] vectors, float64 [E, 5] errors or None, float64 [4] stat or None) of one
  net; raises DamagedNetError naming the file for anything malformed or non-finite."""
  try:
    vectors = np.empty((num_snapshots, n), np.float32)
    for number in range(1, num_snapshots + 1):
      vector = release_lib.read_vector(folder, number, n)
      path = release_lib.weight_file(folder, number)
      bad = int((~np.isfinite(vector)).sum())
      if bad:
        raise release_lib.DamagedNetError(f'{path}: {bad} non-finite weights')
      with np.errstate(over='ignore'):
        vectors[number - 1] = vector
      if not np.isfinite(vectors[number - 1]).all():
        raise release_lib.DamagedNetError(f'{path}: weights beyond the float32 range')
    errors = stat = None
    if os.path.exists(os.path.join(folder, release_lib.ERROR_FILE)):
      errors = release_lib.read_errors(folder)
      if not len(errors):
        raise release_lib.DamagedNetError(
            f'{os.path.join(folder, release_lib.ERROR_FILE)}: no rows')
    if os.path.exists(os.path.join(folder, release_lib.STAT_FILE)):
      stat = release_lib.read_stat(folder)
      exports = stat[0]
      if not (np.isfinite(exports) and exports >= 1 and exports == round(exports)):
        raise release_lib.DamagedNetError(
            f'{os.path.join(folder, release_lib.STAT_FILE)}: {exports} exports, not a whole '
            'number ≥ 1')
      if errors is not None and len(errors) != int(exports):
        raise release_lib.DamagedNetError(
            f'{os.path.join(folder, release_lib.ERROR_FILE)}: {len(errors)} rows, but stat.bin '
            f'counts {int(exports)} exported epochs (a row each; truncated?)')
  except OSError as e:
    raise release_lib.DamagedNetError(f'{folder}: {e}') from e
  return vectors, errors, stat


def _whole(values: list[float]) -> pd.Series:
  """int64 when every value is a whole number, else float64 (NaN = unknown)."""
  values = np.asarray(values, np.float64)
  if len(values) and np.isfinite(values).all() and (values == np.round(values)).all():
    return pd.Series(values.astype(np.int64))
  return pd.Series(values)


@workdir_lock.holding('out', 'import_nws')
def import_release(csv_paths: Sequence[str] | str, out: str, *, on_damaged: str = 'fail',
                   scan_nans: bool = False, chunk_mb: float = 256, overwrite: bool = False,
                   progress: bool = False) -> dict:
  """Imports the nets of the split CSVs into a zoo workdir `out` (see the module docstring).

  Returns {'out', 'models', 'damaged', 'chunks', 'bytes'} (bytes: the float32 snapshots). Raises
  ReleaseError (DamagedNetError for a damaged net with on_damaged='fail'), FileExistsError for an
  `out` that may not be written, ValueError for bad options, workdir_lock.LockedError when another
  process is writing `out`; nothing is written then.
  """
  if isinstance(csv_paths, str):
    csv_paths = [csv_paths]
  csv_paths = [os.path.abspath(p) for p in csv_paths]
  if not chunk_mb > 0:
    raise ValueError(f'chunk_mb must be positive, got {chunk_mb}')
  if on_damaged not in release_lib.ON_DAMAGED:
    raise ValueError(f'unknown on_damaged {on_damaged!r}; choose from: '
                     + ', '.join(release_lib.ON_DAMAGED))
  # The CSVs, and the release folder holding them: a zoo written inside it would change it.
  _check_out(out, overwrite, protect=csv_paths + _release_folders(csv_paths), kind='zoo')
  release = release_lib.open_release(csv_paths, on_damaged=on_damaged, scan_nans=scan_nans,
                                     progress=progress)
  _check_out(out, overwrite, protect=release.table['path'].tolist(), kind='zoo')
  damaged = [dict(path=r.path, reason=r.reason) for r in release.damaged.itertuples()]
  chunk_bytes = chunk_mb * 2 ** 20
  rows, curves = [], []
  pending, pending_numbers, pending_bytes, chunks, total = [], [], 0, 0, 0

  with files.OutputFolder(out, lambda o: _check_out(o, overwrite, kind='zoo')) as tmp:
    files.write_marker(tmp, 'zoo')
    writer = snapshots_lib.ChunkWriter(os.path.join(tmp, zoo_lib.SNAPSHOTS_DIR))

    def flush():
      nonlocal pending, pending_numbers, pending_bytes, chunks
      if pending:
        writer.append(snapshots_lib.Snapshots.from_list(pending), np.stack(pending_numbers))
        pending, pending_numbers, pending_bytes, chunks = [], [], 0, chunks + 1

    try:
      table = release.table
      for j in _progress(range(len(table)), progress, 'importing nets'):
        net = table.iloc[j]
        folder, n = net['path'], int(release.lengths[j])
        try:
          vectors, errors, stat = _read_net(folder, n, release.num_snapshots)
        except release_lib.DamagedNetError as e:
          if on_damaged == 'fail':
            raise release_lib.DamagedNetError(
                f'damaged net {folder} (listed in {net["csv"]}): {e}; --on_damaged=skip leaves '
                'such nets out') from e
          damaged.append(dict(path=folder, reason=str(e)))
          continue
        model_id = len(rows)
        row = {name: net[name] for name in space.PROPERTY_NAMES}
        row.update(model_id=model_id, weightn_conv=int(net['weightn_conv']),
                   weightn_fc=int(net['weightn_fc']))
        if errors is not None:
          acc = 1.0 - errors[:, 1:4] / 100.0
          row.update(train_accuracy=acc[-1, 0], valid_accuracy=acc[-1, 1],
                     test_accuracy=acc[-1, 2])
          curves.append((np.full(len(acc), model_id), np.arange(len(acc)), acc))
        else:
          row.update(train_accuracy=np.nan, valid_accuracy=np.nan, test_accuracy=np.nan)
        if stat is not None:
          _, steps, epochs, seconds = (float(v) for v in stat)
          numbers = snapshots_lib.select_exports(int(stat[0]), release.num_snapshots)
        else:
          steps = epochs = seconds = np.nan
          numbers = np.zeros(release.num_snapshots, np.int64)
        known = np.isfinite(steps) and np.isfinite(epochs) and epochs > 0
        row.update(epochs=epochs, status=IMPORTED_STATUS, failed=False,
                   steps_per_epoch=steps / epochs if known else np.nan, seconds=seconds,
                   source_path=folder, source_csv=net['csv'])
        rows.append(row)
        pending.append(vectors)
        pending_numbers.append(numbers)
        pending_bytes += vectors.nbytes
        total += vectors.nbytes
        if pending_bytes >= chunk_bytes:
          flush()
      flush()
    finally:
      writer.close()
    if not rows:
      raise release_lib.DamagedNetError(f'all {len(table)} nets are damaged; the first: '
                                        f'{damaged[0]["path"]}: {damaged[0]["reason"]}')
    models = pd.DataFrame(rows, columns=IMPORT_COLUMNS)
    for name in ('epochs', 'steps_per_epoch'):
      models[name] = _whole(models[name].tolist())
    files.write_csv_atomic(models, os.path.join(tmp, zoo_lib.MODELS_FILE))
    if curves:
      ids, epochs, acc = (np.concatenate(parts) for parts in zip(*curves))
    else:
      ids, epochs, acc = np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros((0, 3))
    files.write_csv_atomic(pd.DataFrame({
        'model_id': ids, 'epoch': epochs, 'train_accuracy': acc[:, 0],
        'valid_accuracy': acc[:, 1], 'test_accuracy': acc[:, 2],
        'train_loss': np.full(len(ids), np.nan)}, columns=list(CURVE_COLUMNS)),
        os.path.join(tmp, zoo_lib.CURVES_FILE))
    files.write_json_atomic({'imported_from': csv_paths, 'on_damaged': on_damaged,
                               'scan_nans': bool(scan_nans), 'damaged': damaged,
                               'num_models': len(rows), 'nws_jax': nws_jax.__version__},
                              os.path.join(tmp, zoo_lib.CONFIG_FILE))
    zoo_lib.write_record(tmp)
  return {'out': os.path.abspath(out), 'models': len(rows), 'damaged': len(damaged),
          'chunks': chunks, 'bytes': total}
