"""Zoo → release format → zoo: export_zoo writes PROTOCOL §4 files (checked here against values
recomputed from the zoo's own tables), import_release brings the same weights back; failed models,
refusals, atomicity and both command lines."""

import os
import shutil
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from nws_jax import files
from nws_jax import release
from nws_jax.release import convert as release_convert
from nws_jax import space
from nws_jax import zoo as zoo_lib

from helpers import file_state, occupied_folder

NUM_MODELS = 40  # the synthetic zoo (conftest.write_synthetic_zoo)




@pytest.fixture(scope='module')
def exported(synthetic_zoo_dir, tmp_path_factory):
  """(release folder, export summary, imported zoo) of the synthetic zoo, done once."""
  base = tmp_path_factory.mktemp('roundtrip')
  out = str(base / 'release')
  summary = release_convert.export_zoo(synthetic_zoo_dir, out, test_fraction=0.2, seed=3)
  imported = str(base / 'imported')
  release_convert.import_release([os.path.join(out, 'train.csv'),
                                  os.path.join(out, 'test.csv')], imported, chunk_mb=0.05)
  return out, summary, zoo_lib.load_zoo(imported)


def test_export_writes_split_csvs_by_model(exported):
  out, summary, _ = exported
  assert sorted(os.listdir(out)) == [files.MARKER_FILE, 'nets', 'test.csv', 'train.csv']
  train = pd.read_csv(os.path.join(out, 'train.csv'))
  test = pd.read_csv(os.path.join(out, 'test.csv'))
  assert list(train.columns) == list(release.SPLIT_COLUMNS)
  assert (len(train), len(test)) == (32, 8)  # round(0.2 · 40) test nets
  assert summary['nets'] == 40 and summary['train'] == 32 and summary['test'] == 8
  paths = train['path'].tolist() + test['path'].tolist()
  assert len(set(paths)) == 40
  assert sorted(paths) == [f'nets/nwsjax_{i:06d}' for i in range(40)]
  assert sorted(os.listdir(os.path.join(out, 'nets'))) == [p.split('/')[1] for p in sorted(paths)]
  assert summary['bytes'] == sum(os.path.getsize(os.path.join(r, n))
                                 for r, _, ns in os.walk(out) for n in ns)


def test_split_is_seeded(synthetic_zoo_dir, exported, tmp_path):
  out, _, _ = exported
  again = tmp_path / 'again'
  release_convert.export_zoo(synthetic_zoo_dir, str(again), seed=3)
  assert (again / 'test.csv').read_text() == open(os.path.join(out, 'test.csv')).read()
  other = tmp_path / 'other'
  release_convert.export_zoo(synthetic_zoo_dir, str(other), seed=4)
  assert (other / 'test.csv').read_text() != (again / 'test.csv').read_text()


def test_export_files_follow_the_format(synthetic_zoo_dir, exported):
  out, _, _ = exported
  zoo = zoo_lib.load_zoo(synthetic_zoo_dir)
  split = pd.concat([pd.read_csv(os.path.join(out, 'train.csv')),
                     pd.read_csv(os.path.join(out, 'test.csv'))])
  umask = os.umask(0)
  os.umask(umask)
  for i in (0, 7, 39):
    row = zoo.table.iloc[i]
    folder = os.path.join(out, 'nets', f'nwsjax_{i:06d}')
    n = int(row['weightn_conv'] + row['weightn_fc'])
    names = sorted(os.listdir(os.path.join(folder, 'weights')))
    assert names == [f'{s:03d}.bin' for s in range(1, 21)]
    for s in range(20):
      path = os.path.join(folder, 'weights', names[s])
      assert os.path.getsize(path) == 8 * n
      assert os.stat(path).st_mode & 0o777 == 0o666 & ~umask  # readable as a release should be
      values = np.fromfile(path, '<f8')
      np.testing.assert_array_equal(values, zoo.snapshots[i][s].astype(np.float64))
    meta = pd.read_csv(os.path.join(folder, 'meta.csv'))
    assert list(meta.columns) == list(space.PROPERTY_NAMES) and len(meta) == 1
    for name in space.PROPERTY_NAMES:
      assert meta[name].iloc[0] == row[name], name
    listed = split[split['path'] == f'nets/nwsjax_{i:06d}'].iloc[0]
    for name in list(space.PROPERTY_NAMES) + ['weightn_conv', 'weightn_fc']:
      assert listed[name] == row[name], name
    # error.bin: a row per epoch 0..E, recomputed from curves.csv and models.csv.
    curve = zoo.curves[zoo.curves['model_id'] == row['model_id']].sort_values('epoch')
    e, spe = int(row['epochs']), float(row['steps_per_epoch'])
    expected = []
    smoothed = None
    for _, c in curve.iterrows():
      valid = 100 * (1 - c['valid_accuracy'])
      smoothed = valid if smoothed is None else 0.5 * smoothed + 0.5 * valid
      expected.append([c['epoch'] * spe, 100 * (1 - c['train_accuracy']), valid,
                       100 * (1 - c['test_accuracy']), smoothed])
    errors = np.fromfile(os.path.join(folder, 'error.bin'), '<f8')
    assert errors.size == 5 * (e + 1)
    np.testing.assert_allclose(errors.reshape(-1, 5), expected, rtol=1e-12)
    stat = np.fromfile(os.path.join(folder, 'stat.bin'), '<f8')
    np.testing.assert_array_equal(stat, [e + 1, e * spe, e, row['seconds']])


def test_round_trip_gives_the_same_zoo(synthetic_zoo_dir, exported):
  out, _, back = exported
  zoo = zoo_lib.load_zoo(synthetic_zoo_dir)
  assert back.num_models == NUM_MODELS
  # Model order follows train.csv then test.csv; map back through the folder names.
  ids = [int(os.path.basename(p).split('_')[1]) for p in back.table['source_path']]
  assert sorted(ids) == list(range(NUM_MODELS))
  test_ids = set(int(p.split('_')[1]) for p in pd.read_csv(os.path.join(out, 'test.csv'))['path'])
  assert set(ids[32:]) == test_ids
  for j, i in enumerate(ids):
    assert back.snapshots[j].dtype == np.float32
    np.testing.assert_array_equal(back.snapshots[j], zoo.snapshots[i])
    folder = back.table['source_path'].iloc[j]
    for s in (0, 19):  # the release's float64 values are the zoo's exactly
      np.testing.assert_array_equal(release.read_vector(folder, s + 1, 200),
                                    zoo.snapshots[i][s].astype(np.float64))
  zoo_rows = zoo.table.iloc[ids].reset_index(drop=True)
  for name in list(space.PROPERTY_NAMES) + ['weightn_conv', 'weightn_fc', 'epochs',
                                           'steps_per_epoch', 'seconds']:
    assert back.table[name].tolist() == zoo_rows[name].tolist(), name
  # Accuracies come back from error.bin's last row: curves.csv at the model's last epoch (the
  # synthetic zoo's models.csv accuracies do not follow its curves; a trained zoo's do).
  last = zoo.curves.set_index(['model_id', 'epoch']).loc[
      list(zip(zoo_rows['model_id'], zoo_rows['epochs']))]
  for name in ('train_accuracy', 'valid_accuracy', 'test_accuracy'):
    np.testing.assert_allclose(back.table[name], last[name], rtol=1e-12)
  np.testing.assert_array_equal(back.export_numbers, zoo.export_numbers[ids])
  assert len(back.curves) == len(zoo.curves)
  first = back.curves[back.curves['model_id'] == 0]
  source = zoo.curves[zoo.curves['model_id'] == ids[0]]
  np.testing.assert_array_equal(first['epoch'], source['epoch'])
  np.testing.assert_allclose(first['test_accuracy'], source['test_accuracy'], rtol=1e-12)


def _copy_zoo(synthetic_zoo_dir, tmp_path, edit):
  zoo = tmp_path / 'zoo'
  shutil.copytree(synthetic_zoo_dir, zoo)
  table = pd.read_csv(zoo / 'models.csv')
  edit(table)
  table.to_csv(zoo / 'models.csv', index=False)
  return str(zoo)


def test_failed_models_are_left_out_unless_included(synthetic_zoo_dir, tmp_path):
  def fail_some(table):
    table.loc[[3, 17], 'failed'] = True
  zoo = _copy_zoo(synthetic_zoo_dir, tmp_path, fail_some)
  summary = release_convert.export_zoo(zoo, str(tmp_path / 'kept'))
  assert summary['nets'] == 38 and summary['left_out_failed'] == 2
  assert summary['train'] + summary['test'] == 38
  nets = os.listdir(tmp_path / 'kept' / 'nets')
  assert len(nets) == 38 and 'nwsjax_000003' not in nets and 'nwsjax_000017' not in nets
  listed = pd.concat([pd.read_csv(tmp_path / 'kept' / n) for n in ('train.csv', 'test.csv')])
  assert len(listed) == 38 and 'nets/nwsjax_000017' not in listed['path'].tolist()
  summary = release_convert.export_zoo(zoo, str(tmp_path / 'all'), include_failed=True,
                                       prefix='mine')
  assert summary['nets'] == 40 and summary['left_out_failed'] == 0
  assert 'mine_000017' in os.listdir(tmp_path / 'all' / 'nets')


def test_zoo_without_steps_per_epoch_is_refused(synthetic_zoo_dir, tmp_path):
  zoo = _copy_zoo(synthetic_zoo_dir, tmp_path,
                  lambda t: t.pop('steps_per_epoch'))
  with pytest.raises(zoo_lib.ZooError, match='predates'):
    release_convert.export_zoo(zoo, str(tmp_path / 'out'))
  assert not (tmp_path / 'out').exists()


def test_export_refuses_a_non_empty_out_and_leaves_it(synthetic_zoo_dir, tmp_path):
  out = tmp_path / 'out'
  before = occupied_folder(out)
  with pytest.raises(FileExistsError, match='not empty'):
    release_convert.export_zoo(synthetic_zoo_dir, str(out))
  assert file_state(out) == before and sorted(os.listdir(tmp_path)) == ['out']
  # A folder of the user's is not replaced, even with overwrite; one export_nws wrote is.
  with pytest.raises(FileExistsError, match='was not written by export_nws'):
    release_convert.export_zoo(synthetic_zoo_dir, str(out), overwrite=True)
  assert file_state(out) == before and sorted(os.listdir(tmp_path)) == ['out']
  files.write_marker(str(out), 'release')
  release_convert.export_zoo(synthetic_zoo_dir, str(out), overwrite=True)
  assert sorted(os.listdir(out)) == [files.MARKER_FILE, 'nets', 'test.csv', 'train.csv']
  assert sorted(os.listdir(tmp_path)) == ['out']
  # An empty folder may be written without overwrite.
  (tmp_path / 'empty').mkdir()
  release_convert.export_zoo(synthetic_zoo_dir, str(tmp_path / 'empty'))
  assert len(os.listdir(tmp_path / 'empty' / 'nets')) == NUM_MODELS


def test_overwrite_never_deletes_the_zoo_it_exports(synthetic_zoo_dir, tmp_path):
  zoo = _copy_zoo(synthetic_zoo_dir, tmp_path, lambda t: None)
  before = file_state(zoo)
  for out in (zoo, str(tmp_path)):
    with pytest.raises(FileExistsError, match='holds the input'):
      release_convert.export_zoo(zoo, out, overwrite=True)
  assert file_state(zoo) == before and sorted(os.listdir(tmp_path)) == ['zoo']


def test_export_crash_leaves_out_untouched(synthetic_zoo_dir, tmp_path, monkeypatch):
  written = []

  def crash_on_fifth(folder, *args):
    written.append(folder)
    if len(written) == 5:
      raise OSError('disk full')
    return real(folder, *args)

  real = release.write_net
  monkeypatch.setattr(release, 'write_net', crash_on_fifth)
  out = tmp_path / 'out'
  before = occupied_folder(out, 'old.txt', 'old release', kind='release')
  with pytest.raises(OSError, match='disk full'):
    release_convert.export_zoo(synthetic_zoo_dir, str(out), overwrite=True)
  assert file_state(out) == before and sorted(os.listdir(tmp_path)) == ['out']
  with pytest.raises(OSError, match='disk full'):
    written.clear()
    release_convert.export_zoo(synthetic_zoo_dir, str(tmp_path / 'a' / 'b'))
  assert sorted(os.listdir(tmp_path)) == ['out']  # not even the parent folders


def test_import_writes_chunks_of_bounded_size(exported, tmp_path):
  out, _, _ = exported
  summary = release_convert.import_release(os.path.join(out, 'test.csv'), str(tmp_path / 'z'),
                                           chunk_mb=2 * 20 * 200 * 4 / 2 ** 20)
  assert summary['models'] == 8 and summary['chunks'] == 4  # two nets per chunk
  steps = [d for d in os.listdir(tmp_path / 'z' / 'snapshots') if d.isdigit()]
  assert len(steps) == 4
  assert zoo_lib.load_zoo(str(tmp_path / 'z')).num_models == 8


# --- the command lines --------------------------------------------------------------------------

def run(module, *args):
  return subprocess.run([sys.executable, '-m', f'nws_jax.{module}', '--progress=false',
                         *map(str, args)], capture_output=True, text=True, timeout=300)


def test_cli_export_then_import(synthetic_zoo_dir, tmp_path):
  out = tmp_path / 'release'
  result = run('export_nws', f'--zoo={synthetic_zoo_dir}', f'--out={out}', '--test_fraction=0.25',
               '--seed=1')
  assert result.returncode == 0, result.stderr
  assert '40 nets (30 in train.csv, 10 in test.csv' in result.stdout
  result = run('export_nws', f'--zoo={synthetic_zoo_dir}', f'--out={out}')
  assert result.returncode == 2
  assert result.stderr.strip().splitlines() == [
      f'export_nws: error: {out} is not empty; choose another folder or overwrite it '
      '(--overwrite)']
  result = run('export_nws', f'--zoo={tmp_path / "nothing"}', f'--out={tmp_path / "x"}')
  assert result.returncode == 2 and len(result.stderr.strip().splitlines()) == 1
  assert 'no zoo at' in result.stderr and not (tmp_path / 'x').exists()
  imported = tmp_path / 'zoo'
  result = run('import_nws', f'--csv={out / "train.csv"},{out / "test.csv"}', f'--out={imported}',
               '--chunk_mb=0.1')
  assert result.returncode == 0, result.stderr
  assert '40 nets imported (0 damaged left out)' in result.stdout
  zoo, back = zoo_lib.load_zoo(synthetic_zoo_dir), zoo_lib.load_zoo(str(imported))
  ids = [int(os.path.basename(p).split('_')[1]) for p in back.table['source_path']]
  assert sorted(ids) == list(range(40))
  for j, i in enumerate(ids):
    np.testing.assert_array_equal(back.snapshots[j], zoo.snapshots[i])
