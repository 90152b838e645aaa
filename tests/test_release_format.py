"""The NWS release format, read from a release built by hand here from PROTOCOL §4 alone (raw
little-endian float64 files, split CSVs), not with release.write_net or the exporter: the reader
(release.open_release, Release.read/vectors), the importer, damaged inputs, the import CLI."""

import json
import os
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from nws_jax import release
from nws_jax.release import convert as release_convert
from nws_jax import zoo as zoo_lib

from helpers import file_state, occupied_folder

PROPERTY_NAMES = ['dataset', 'lrate', 'batch_size', 'batch_norm', 'augmentation', 'optimizer',
                  'activation', 'initialization', 'filter_size', 'depth_conv', 'depth_fc',
                  'width_conv', 'width_fc']

# Four nets of different lengths (mixed architectures); a, b in train.csv, c, d in test.csv.
NETS = {
    'a': dict(props=['mnist', 0.0012345678901234567, 64, True, False, 2, 1, 3, 3, 4, 2, 8, 64],
              conv=3, fc=4),
    'b': dict(props=['cifar10', 0.004, 128, True, True, 0, 0, 2, 5, 3, 2, 8, 128],
              conv=5, fc=7),
    'c': dict(props=['svhn', 0.0002, 32, False, True, 1, 3, 0, 7, 5, 4, 12, 192],
              conv=2, fc=3),
    'd': dict(props=['fashion', 0.0031, 256, True, False, 2, 2, 1, 3, 3, 3, 4, 64],
              conv=4, fc=5),
}
ORDER = ['a', 'b', 'c', 'd']  # CSV order: train.csv then test.csv
# error.bin rows [step, train %, valid %, test %, smoothed valid %] and stat.bin of nets a and b;
# c has neither file, d only error.bin.
ERRORS = {'a': [[0, 90.0, 91.0, 92.0, 91.0], [50, 40.0, 45.0, 46.0, 68.0],
                [100, 20.0, 30.0, 31.0, 49.0]],
          'b': [[0, 88.0, 89.0, 90.0, 89.0], [10, 12.5, 25.0, 27.5, 57.0]],
          'd': [[0, 80.0, 81.0, 82.0, 81.0]]}
STATS = {'a': [3, 100, 2, 12.5], 'b': [2, 10, 1, 3.0]}


def write_f8(path, values):
  np.asarray(values, '<f8').tofile(path)


def hand_net(folder, vectors, props, errors=None, stat=None):
  os.makedirs(os.path.join(folder, 'weights'))
  for s, vector in enumerate(vectors, start=1):
    write_f8(os.path.join(folder, 'weights', f'{s:03d}.bin'), vector)
  with open(os.path.join(folder, 'meta.csv'), 'w') as f:
    f.write(','.join(PROPERTY_NAMES) + '\n' + ','.join(map(repr_cell, props)) + '\n')
  if errors is not None:
    write_f8(os.path.join(folder, 'error.bin'), errors)
  if stat is not None:
    write_f8(os.path.join(folder, 'stat.bin'), stat)


def repr_cell(value, bool_style='word'):
  if isinstance(value, bool):
    return ('1' if value else '0') if bool_style == 'digit' else str(value)
  if isinstance(value, float):
    return repr(value)
  return str(value)


def csv_text(rows, bool_style):
  lines = [','.join(PROPERTY_NAMES + ['weightn_conv', 'weightn_fc', 'path'])]
  for props, conv, fc, path in rows:
    lines.append(','.join([repr_cell(v, bool_style) for v in props] + [str(conv), str(fc), path]))
  return '\n'.join(lines) + '\n'


@pytest.fixture
def hand(tmp_path):
  """A hand-made release: root/nets/{a,b,c,d}, root/splits/train.csv (booleans 0/1, net a by a
  path relative to the CSV, net b absolute) and root/splits/test.csv (booleans True/False)."""
  root = tmp_path / 'release'
  rng = np.random.default_rng(1)
  known = {}
  for name in ORDER:
    net = NETS[name]
    n = net['conv'] + net['fc']
    # Random float64 (not float32-exact): snapshot s, offset o is known[name][s, o].
    known[name] = rng.normal(size=(20, n)) * 10.0 ** rng.integers(-3, 3, size=(20, 1))
    hand_net(str(root / 'nets' / name), known[name], net['props'], ERRORS.get(name),
             STATS.get(name))
  (root / 'splits').mkdir()
  train = [(NETS['a']['props'], NETS['a']['conv'], NETS['a']['fc'], '../nets/a'),
           (NETS['b']['props'], NETS['b']['conv'], NETS['b']['fc'], str(root / 'nets' / 'b'))]
  test = [(NETS[k]['props'], NETS[k]['conv'], NETS[k]['fc'], f'../nets/{k}') for k in 'cd']
  (root / 'splits' / 'train.csv').write_text(csv_text(train, 'digit'))
  (root / 'splits' / 'test.csv').write_text(csv_text(test, 'word'))
  return dict(root=root, train=str(root / 'splits' / 'train.csv'),
              test=str(root / 'splits' / 'test.csv'), known=known,
              folder={k: str(root / 'nets' / k) for k in ORDER})


def csvs(hand):
  return [hand['train'], hand['test']]




# --- reading the release ------------------------------------------------------------------------

def test_open_release_reads_the_table_with_encodings_normalised(hand):
  rel = release.open_release(csvs(hand))
  t = rel.table
  assert len(rel) == 4 and rel.damaged.empty
  assert t['path'].tolist() == [hand['folder'][k] for k in ORDER]
  assert t['csv'].tolist() == [hand['train']] * 2 + [hand['test']] * 2
  for name, col in zip(PROPERTY_NAMES, range(13)):
    assert t[name].tolist() == [NETS[k]['props'][col] for k in ORDER], name
  # 0/1 in train.csv and True/False in test.csv both become booleans.
  assert t['batch_norm'].dtype == bool and t['augmentation'].dtype == bool
  assert t['batch_norm'].tolist() == [True, True, False, True]
  assert t['augmentation'].tolist() == [False, True, True, False]
  assert t['lrate'].iloc[0] == 0.0012345678901234567  # exact
  assert t['dataset'].tolist() == ['mnist', 'cifar10', 'svhn', 'fashion']
  for name in ('batch_size', 'optimizer', 'width_fc'):
    assert t[name].dtype == np.int64
  assert t['weightn_conv'].tolist() == [NETS[k]['conv'] for k in ORDER]
  assert rel.lengths.tolist() == [NETS[k]['conv'] + NETS[k]['fc'] for k in ORDER]


def test_read_split_csv_resolves_paths_relative_to_the_csv_not_the_cwd(hand, tmp_path,
                                                                      monkeypatch):
  monkeypatch.chdir(tmp_path)
  table = release.read_split_csv(os.path.relpath(hand['test'], tmp_path))
  assert table['path'].tolist() == [hand['folder']['c'], hand['folder']['d']]


def test_release_read_returns_each_slice_of_the_right_snapshot_and_offset(hand):
  rel = release.open_release(csvs(hand))
  known = [hand['known'][k] for k in ORDER]
  models = np.array([0, 1, 2, 3, 1, 0, 3])
  snaps = np.array([0, 19, 5, 10, 0, 7, 19])
  offsets = np.array([0, 8, 2, 6, 0, 4, 0])
  length = 3
  out = rel.read(models, snaps, offsets, length)
  assert out.shape == (7, 3) and out.dtype == np.float32
  for j, (m, s, o) in enumerate(zip(models, snaps, offsets)):
    np.testing.assert_array_equal(out[j], known[m][s, o:o + length].astype(np.float32))
  # Snapshot 1 is weights/001.bin: not confused with its neighbours.
  assert not np.array_equal(out[0], known[0][1, :3].astype(np.float32))


def test_release_vectors_are_whole_snapshots(hand):
  rel = release.open_release(csvs(hand))
  vectors = rel.vectors(np.array([3, 0, 2]), np.array([0, 19, 12]))
  expected = [hand['known']['d'][0], hand['known']['a'][19], hand['known']['c'][12]]
  for got, want in zip(vectors, expected):
    assert got.dtype == np.float32
    np.testing.assert_array_equal(got, want.astype(np.float32))


def test_read_helpers_follow_the_format(hand):
  folder = hand['folder']['a']
  np.testing.assert_array_equal(release.read_vector(folder, 20, 7), hand['known']['a'][19])
  np.testing.assert_array_equal(release.read_errors(folder), np.array(ERRORS['a']))
  np.testing.assert_array_equal(release.read_stat(folder), STATS['a'])
  props = release.read_properties(folder)
  assert [props[n] for n in PROPERTY_NAMES] == NETS['a']['props']


# --- the importer ------------------------------------------------------------------------------

def test_import_gives_a_zoo_of_the_hand_made_nets(hand, tmp_path):
  out = tmp_path / 'zoo'
  summary = release_convert.import_release(csvs(hand), str(out), chunk_mb=0.0005)
  assert summary['models'] == 4 and summary['damaged'] == 0 and summary['chunks'] >= 2
  zoo = zoo_lib.load_zoo(str(out))
  assert zoo.num_models == 4
  for i, k in enumerate(ORDER):
    assert zoo.snapshots[i].dtype == np.float32
    np.testing.assert_array_equal(zoo.snapshots[i], hand['known'][k].astype(np.float32))
  t = zoo.table
  assert t['model_id'].tolist() == [0, 1, 2, 3]
  assert t.columns[:13].tolist() == PROPERTY_NAMES
  for col, name in enumerate(PROPERTY_NAMES):
    assert t[name].tolist() == [NETS[k]['props'][col] for k in ORDER], name
  assert t['weightn_conv'].tolist() == [NETS[k]['conv'] for k in ORDER]
  assert t['weightn_fc'].tolist() == [NETS[k]['fc'] for k in ORDER]
  assert t['source_path'].tolist() == [hand['folder'][k] for k in ORDER]
  assert t['source_csv'].tolist() == [hand['train']] * 2 + [hand['test']] * 2
  assert (t['status'] == 'imported').all() and not t['failed'].any()
  # Accuracies from error.bin's last row; NaN without error.bin (net c).
  np.testing.assert_allclose(t['train_accuracy'], [0.8, 0.875, np.nan, 0.2])
  np.testing.assert_allclose(t['valid_accuracy'], [0.7, 0.75, np.nan, 0.19])
  np.testing.assert_allclose(t['test_accuracy'], [0.69, 0.725, np.nan, 0.18])
  # epochs, seconds from stat.bin; steps_per_epoch = steps / epochs.
  np.testing.assert_array_equal(t['epochs'], [2, 1, np.nan, np.nan])
  np.testing.assert_array_equal(t['seconds'], [12.5, 3.0, np.nan, np.nan])
  np.testing.assert_array_equal(t['steps_per_epoch'], [50, 10, np.nan, np.nan])
  # Export numbers round(linspace(1, exports, 20)); 0 (unknown) without stat.bin.
  np.testing.assert_array_equal(zoo.export_numbers[0], np.round(np.linspace(1, 3, 20)))
  np.testing.assert_array_equal(zoo.export_numbers[1], np.round(np.linspace(1, 2, 20)))
  assert (zoo.export_numbers[2:] == 0).all()
  c = zoo.curves
  assert c['model_id'].tolist() == [0, 0, 0, 1, 1, 3]
  assert c['epoch'].tolist() == [0, 1, 2, 0, 1, 0]
  np.testing.assert_allclose(c['valid_accuracy'], [0.09, 0.55, 0.7, 0.11, 0.75, 0.19])
  assert c['train_loss'].isna().all()
  assert zoo.config['imported_from'] == csvs(hand)
  assert zoo.config['num_models'] == 4 and zoo.config['damaged'] == []
  assert zoo.config['on_damaged'] == 'fail' and zoo.config['scan_nans'] is False
  assert not [p for p in os.listdir(tmp_path) if 'partial' in p]


# --- damaged inputs ---------------------------------------------------------------------------

def _drop_column(hand):
  table = pd.read_csv(hand['test'])
  table.drop(columns=['width_fc']).to_csv(hand['test'], index=False)


def test_missing_column_is_named(hand):
  _drop_column(hand)
  with pytest.raises(release.ReleaseError, match=r'test\.csv: missing columns width_fc'):
    release.open_release(csvs(hand))


def _remove_folder(folder):
  for root, dirs, names in os.walk(folder, topdown=False):
    for n in names:
      os.remove(os.path.join(root, n))
    for d in dirs:
      os.rmdir(os.path.join(root, d))
  os.rmdir(folder)


def _remove_snapshot(folder):
  os.remove(os.path.join(folder, 'weights', '013.bin'))


def _truncate_snapshot(folder):
  path = os.path.join(folder, 'weights', '020.bin')
  data = open(path, 'rb').read()
  open(path, 'wb').write(data[:-8])


def _nan_in_snapshot(folder):
  path = os.path.join(folder, 'weights', '007.bin')
  values = np.fromfile(path, '<f8')
  values[2] = np.nan
  write_f8(path, values)


DAMAGES = [(_remove_folder, 'folder missing'), (_remove_snapshot, '013.bin missing'),
           (_truncate_snapshot, '020.bin has 88 bytes, expected 96')]


@pytest.mark.parametrize('damage,reason', DAMAGES,
                         ids=['missing_folder', 'missing_snapshot', 'wrong_size'])
def test_damaged_net_fails_naming_it_or_is_skipped(hand, damage, reason):
  damage(hand['folder']['b'])
  with pytest.raises(release.DamagedNetError) as e:
    release.open_release(csvs(hand))
  assert hand['folder']['b'] in str(e.value) and reason in str(e.value)
  rel = release.open_release(csvs(hand), on_damaged='skip')
  assert rel.table['path'].tolist() == [hand['folder'][k] for k in 'acd']
  assert rel.damaged['path'].tolist() == [hand['folder']['b']]
  assert reason in rel.damaged['reason'].iloc[0]
  # The remaining nets keep their own weights.
  np.testing.assert_array_equal(rel.vectors(np.array([1]), np.array([4]))[0],
                                hand['known']['c'][4].astype(np.float32))


def test_nan_with_scan_nans_fails_naming_the_net_or_is_skipped(hand):
  _nan_in_snapshot(hand['folder']['c'])
  with pytest.raises(release.DamagedNetError) as e:
    release.open_release(csvs(hand), scan_nans=True)
  assert hand['folder']['c'] in str(e.value) and '007.bin' in str(e.value)
  rel = release.open_release(csvs(hand), scan_nans=True, on_damaged='skip')
  assert len(rel) == 3 and rel.damaged['path'].tolist() == [hand['folder']['c']]
  assert '1 non-finite' in rel.damaged['reason'].iloc[0]


def test_nan_met_in_a_slice_without_scan_nans_names_the_file(hand):
  _nan_in_snapshot(hand['folder']['c'])
  rel = release.open_release(csvs(hand))  # not scanned: the net looks fine
  assert len(rel) == 4
  ok = rel.read(np.array([2]), np.array([6]), np.array([3]), 2)  # beside the NaN
  np.testing.assert_array_equal(ok[0], hand['known']['c'][6, 3:5].astype(np.float32))
  with pytest.raises(release.DamagedNetError,
                     match=os.path.join(hand['folder']['c'], 'weights', '007.bin')):
    rel.read(np.array([0, 2]), np.array([6, 6]), np.array([0, 1]), 3)


def test_net_listed_in_two_csvs_is_refused(hand):
  with open(hand['test'], 'a') as f:  # net a again, by its absolute path
    f.write(csv_text([(NETS['a']['props'], 3, 4, hand['folder']['a'])], 'word')
            .splitlines()[1] + '\n')
  with pytest.raises(release.ReleaseError, match='listed more than once'):
    release.open_release(csvs(hand))


@pytest.mark.parametrize('text,message', [('', 'not a readable CSV'),
                                          (csv_text([], 'word'), 'no nets listed')],
                         ids=['zero_bytes', 'header_only'])
def test_empty_csv_is_refused(hand, text, message):
  with open(hand['test'], 'w') as f:
    f.write(text)
  with pytest.raises(release.ReleaseError, match=message):
    release.open_release(csvs(hand))


def test_import_skips_damaged_nets_and_lists_them(hand, tmp_path):
  _truncate_snapshot(hand['folder']['a'])  # found when opening
  write_f8(os.path.join(hand['folder']['d'], 'stat.bin'), [1.0, 2.0, 3.0])  # found importing
  out = tmp_path / 'zoo'
  summary = release_convert.import_release(csvs(hand), str(out), on_damaged='skip')
  assert summary['models'] == 2 and summary['damaged'] == 2
  zoo = zoo_lib.load_zoo(str(out))
  assert zoo.table['source_path'].tolist() == [hand['folder']['b'], hand['folder']['c']]
  assert zoo.table['model_id'].tolist() == [0, 1]
  np.testing.assert_array_equal(zoo.snapshots[1], hand['known']['c'].astype(np.float32))
  damaged = zoo.config['damaged']
  assert [d['path'] for d in damaged] == [hand['folder']['a'], hand['folder']['d']]
  assert '020.bin' in damaged[0]['reason'] and 'stat.bin' in damaged[1]['reason']


@pytest.mark.parametrize('damage,file', [
    (lambda f: write_f8(os.path.join(f, 'error.bin'), np.arange(7.0)), 'error.bin'),
    (lambda f: write_f8(os.path.join(f, 'stat.bin'), np.arange(5.0)), 'stat.bin'),
    (_nan_in_snapshot, '007.bin'),
], ids=['error_bin_size', 'stat_bin_size', 'nan_not_scanned'])
def test_import_fails_on_a_net_damaged_inside_and_writes_nothing(hand, tmp_path, damage, file):
  damage(hand['folder']['b'])
  out = tmp_path / 'zoo'
  with pytest.raises(release.DamagedNetError) as e:
    release_convert.import_release(csvs(hand), str(out), chunk_mb=0.0005)
  assert hand['folder']['b'] in str(e.value) and file in str(e.value)
  assert not out.exists()
  assert sorted(os.listdir(tmp_path)) == ['release']


def test_import_refuses_a_non_empty_out_and_leaves_it(hand, tmp_path):
  out = tmp_path / 'zoo'
  before = occupied_folder(out)
  with pytest.raises(FileExistsError, match='not empty'):
    release_convert.import_release(csvs(hand), str(out))
  assert file_state(out) == before


def test_import_overwrite_replaces_only_once_complete(hand, tmp_path):
  out = tmp_path / 'zoo'
  before = occupied_folder(out, kind='zoo')  # a zoo this project wrote, and a file in it
  _nan_in_snapshot(hand['folder']['d'])  # the last net: found after chunks were written
  with pytest.raises(release.DamagedNetError):
    release_convert.import_release(csvs(hand), str(out), overwrite=True, chunk_mb=0.0005)
  assert file_state(out) == before
  release_convert.import_release(csvs(hand), str(out), overwrite=True, on_damaged='skip')
  assert not (out / 'keep.txt').exists() and zoo_lib.load_zoo(str(out)).num_models == 3
  assert sorted(os.listdir(tmp_path)) == ['release', 'zoo']


# --- the command line ---------------------------------------------------------------------------

def run_cli(*args, cwd=None):
  return subprocess.run([sys.executable, '-m', 'nws_jax.import_nws', '--progress=false',
                         *map(str, args)], capture_output=True, text=True, timeout=300, cwd=cwd)


def assert_refused(result, message):
  assert result.returncode == 2, result.stderr
  lines = result.stderr.strip().splitlines()
  assert len(lines) == 1 and lines[0].startswith('import_nws: error:'), result.stderr
  assert message in lines[0], lines[0]


def test_cli_bad_csv_exits_2_and_writes_nothing(hand, tmp_path):
  _drop_column(hand)
  out = tmp_path / 'out' / 'zoo'
  assert_refused(run_cli(f'--csv={hand["train"]},{hand["test"]}', f'--out={out}'),
                 'missing columns width_fc')
  assert not (tmp_path / 'out').exists()


def test_cli_damaged_net_exits_2_and_writes_nothing(hand, tmp_path):
  _truncate_snapshot(hand['folder']['c'])
  out = tmp_path / 'zoo'
  assert_refused(run_cli(f'--csv={hand["train"]},{hand["test"]}', f'--out={out}'),
                 f'damaged net {hand["folder"]["c"]}')
  assert sorted(os.listdir(tmp_path)) == ['release']


def test_cli_missing_flag_exits_2(hand, tmp_path):
  assert_refused(run_cli(f'--csv={hand["train"]}', cwd=tmp_path), '--out is required')
  assert_refused(run_cli(f'--csv={hand["train"]}', f'--out={tmp_path / "z"}',
                         '--on_damaged=ignore'), 'on_damaged')
  assert sorted(os.listdir(tmp_path)) == ['release']


def test_cli_refuses_a_non_empty_out_then_imports_with_skip(hand, tmp_path):
  out = tmp_path / 'zoo'
  before = occupied_folder(out)
  assert_refused(run_cli(f'--csv={hand["train"]},{hand["test"]}', f'--out={out}'), 'not empty')
  assert file_state(out) == before
  _remove_snapshot(hand['folder']['a'])
  fresh = tmp_path / 'fresh'
  result = run_cli(f'--csv={hand["train"]},{hand["test"]}', f'--out={fresh}',
                   '--on_damaged=skip')
  assert result.returncode == 0, result.stderr
  assert '3 nets imported (1 damaged left out)' in result.stdout
  with open(fresh / 'config.json') as f:
    config = json.load(f)
  assert [d['path'] for d in config['damaged']] == [hand['folder']['a']]
  zoo = zoo_lib.load_zoo(str(fresh))
  np.testing.assert_array_equal(zoo.snapshots[0], hand['known']['b'].astype(np.float32))
