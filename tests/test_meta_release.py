"""Meta-classifiers on the release format read where it lies: the same slices and steps as from
device memory, the release's own test split, mixed vector lengths, damaged nets, bounded memory."""

import dataclasses
import os
import subprocess
import sys

import jax
import numpy as np
import pandas as pd
import pytest

import nws_jax
from nws_jax import release
from nws_jax import snapshots as snapshots_lib
from nws_jax import space
from nws_jax.meta import pipeline
from nws_jax.meta import source as source_lib
from nws_jax.meta import split as split_lib
from nws_jax.meta import targets as targets_lib
from nws_jax.meta import train

SMALL = train.MetaConfig(slice_length=40, conv_widths=(4, 8), dense_widths=(16,), epochs=2,
                         batch_size=32, seed=0)
TINY_FLAGS = ['--slice_length=40', '--conv_widths=4,8', '--dense_widths=16', '--epochs=2',
              '--batch_size=32', '--positions=5', '--ensemble_slices=3', '--snapshot_slices=2',
              '--progress=false', '--properties=optimizer,initialization']
NO_BASELINE = [*TINY_FLAGS, '--baseline=false']  # where the baseline is not what is tested


def write_release(table, snapshots, folder, csv_rows):
  """Writes nets (float64, PROTOCOL §4) and one split CSV per entry of csv_rows {name: rows}."""
  for name, rows in csv_rows.items():
    entries = []
    for i in rows:
      path = f'nets/net{i:03d}'
      release.write_net(os.path.join(folder, path), np.asarray(snapshots[i], np.float64),
                        table.iloc[i].to_dict(), np.zeros((1, 5)), np.zeros(4))
      entries.append(dict(table.iloc[i][list(space.PROPERTY_NAMES)].to_dict(),
                          weightn_conv=int(table['weightn_conv'].iloc[i]),
                          weightn_fc=int(table['weightn_fc'].iloc[i]), path=path))
    release.write_split_csv(pd.DataFrame(entries), os.path.join(folder, name))


@pytest.fixture(scope='module')
def zoo(synthetic_zoo_dir):
  return nws_jax.load_zoo(synthetic_zoo_dir)


@pytest.fixture(scope='module')
def release_dir(zoo, tmp_path_factory):
  folder = str(tmp_path_factory.mktemp('release'))
  write_release(zoo.table, zoo.snapshots, folder,
                {'train.csv': range(0, 30), 'test.csv': range(30, zoo.num_models)})
  return folder


def _ragged(zoo):
  """The synthetic zoo with every other model's vectors cut short by 37 dense weights."""
  table = zoo.table.copy()
  cut = np.arange(zoo.num_models) % 2 == 1
  table.loc[cut, 'weightn_fc'] -= 37
  per_model = [zoo.snapshots[i][:, :zoo.snapshots.lengths[i] - 37] if cut[i] else zoo.snapshots[i]
               for i in range(zoo.num_models)]
  return table, snapshots_lib.Snapshots.from_list(per_model)


@pytest.mark.parametrize('ragged', [False, True])
def test_device_gather_equals_host_read(zoo, ragged):
  table, snaps = _ragged(zoo) if ragged else (zoo.table, zoo.snapshots)
  layout = source_lib.device_layout(snaps)
  rng = np.random.default_rng(0)
  models = rng.integers(0, len(snaps), 50)
  steps = rng.integers(0, 20, 50)
  offsets = rng.integers(0, snaps.lengths[models] - 40)
  on_device = layout.gather(models, steps, offsets, 40)
  expected = np.stack([snaps[m][s, o:o + 40] for m, s, o in zip(models, steps, offsets)])
  np.testing.assert_array_equal(np.asarray(on_device), expected)
  np.testing.assert_array_equal(snaps.read(models, steps, offsets, 40), expected)


def _fit(config, table, reader, names=('optimizer', 'initialization', 'lrate')):
  split = split_lib.make_split(np.arange(len(table)), config.seed, config.test_fraction,
                               config.valid_fraction)
  targets = targets_lib.make_targets(table, list(names), split.train)
  return train.fit(config, table, reader, split, targets)


def _assert_same_run(a, b):
  jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, rtol=1e-4, atol=1e-5),
               a.params, b.params)
  np.testing.assert_allclose(a.history.train_loss, b.history.train_loss, rtol=1e-4)
  np.testing.assert_array_equal(a.history.valid_score, b.history.valid_score)


def test_training_from_disk_equals_training_from_device_memory(zoo, release_dir):
  src = source_lib.from_release([os.path.join(release_dir, 'train.csv'),
                                 os.path.join(release_dir, 'test.csv')])
  assert not src.on_device and len(src.table) == zoo.num_models
  _assert_same_run(_fit(SMALL, src.table, src.reader), _fit(SMALL, zoo.table, zoo.snapshots))


def test_mixed_lengths_train_alike_from_disk_and_device(zoo, tmp_path):
  table, snaps = _ragged(zoo)
  write_release(table, snaps, str(tmp_path), {'all.csv': range(len(table))})
  src = source_lib.from_release([str(tmp_path / 'all.csv')])
  np.testing.assert_array_equal(src.reader.lengths, snaps.lengths)
  config = dataclasses.replace(SMALL, part='dense')
  _assert_same_run(_fit(config, src.table, src.reader), _fit(config, table, snaps))


def test_release_test_csv_is_the_meta_test_side(release_dir):
  src = source_lib.from_release([os.path.join(release_dir, 'train.csv')],
                                [os.path.join(release_dir, 'test.csv')])
  split, _ = pipeline.plan(SMALL, src)
  np.testing.assert_array_equal(split.test, np.arange(30, 40))
  assert len(split.valid) == 3  # valid_fraction 0.1 of the 30 training nets
  assert set(split.train) | set(split.valid) == set(range(30))


def run_cli(*args, address_space_limit=None):
  """train_meta in a subprocess; with address_space_limit (bytes), a launcher sets RLIMIT_AS
  and then execs it (a preexec_fn is unsafe in a process with threads, as JAX's)."""
  command = [sys.executable, '-m', 'nws_jax.train_meta', *map(str, args)]
  if address_space_limit is not None:
    command = [sys.executable, '-c', LIMITED, str(address_space_limit), *command]
  return subprocess.run(command, capture_output=True, text=True, timeout=600)


LIMITED = ('import os, resource, sys; limit = int(sys.argv[1]); '
           'resource.setrlimit(resource.RLIMIT_AS, (limit, limit)); '
           'os.execv(sys.argv[2], sys.argv[2:])')


def test_cli_trains_and_reevaluates_on_the_release(release_dir, tmp_path):
  workdir = tmp_path / 'meta'
  csvs = [f'--nws_csv={release_dir}/train.csv', f'--nws_test_csv={release_dir}/test.csv']
  result = run_cli(*csvs, f'--workdir={workdir}', *NO_BASELINE)
  assert result.returncode == 0, result.stderr
  accuracy = pd.read_csv(workdir / 'accuracy.csv')
  assert set(accuracy['property']) == {'optimizer', 'initialization'}
  # Each property on its class-balanced test side: the first nets of each class in test.csv
  # (optimizer = row % 3 over rows 30-39: three of each; initialization: one of each of four).
  assert accuracy.set_index('property')['n_test_models'].to_dict() == {'optimizer': 9,
                                                                      'initialization': 4}
  assert 'failed models: the release\'s nets carry no failed flag' in result.stdout
  again = run_cli('--evaluate_only', f'--workdir={workdir}', '--progress=false')
  assert again.returncode == 0, again.stderr
  pd.testing.assert_frame_equal(pd.read_csv(workdir / 'accuracy.csv'), accuracy)


def test_evaluate_only_refuses_a_release_whose_nets_changed(release_dir, tmp_path):
  src = source_lib.from_release([os.path.join(release_dir, 'train.csv')])
  fewer = tmp_path / 'fewer.csv'
  pd.read_csv(os.path.join(release_dir, 'train.csv')).iloc[1:].assign(
      path=lambda t: [os.path.join(release_dir, p) for p in t['path']]).to_csv(fewer, index=False)
  changed = dict(src.description, train_csvs=[str(fewer)])
  with pytest.raises(release.ReleaseError, match='its split would name other nets'):
    source_lib.open_source(changed)
  assert len(source_lib.open_source(src.description).table) == 30


def _error(result):
  lines = [l for l in result.stderr.splitlines() if l.startswith('train_meta: error:')]
  assert result.returncode == 2 and len(lines) == 1, result.stderr
  return lines[0]


def test_cli_refuses_zoo_and_release_together(release_dir, synthetic_zoo_dir, tmp_path):
  result = run_cli(f'--zoo={synthetic_zoo_dir}', f'--nws_csv={release_dir}/train.csv',
                   f'--workdir={tmp_path}/meta')
  assert 'either --zoo or --nws_csv' in _error(result)
  assert not (tmp_path / 'meta').exists()


def test_cli_damaged_net_fails_or_is_skipped_as_asked(zoo, tmp_path):
  write_release(zoo.table, zoo.snapshots, str(tmp_path), {'all.csv': range(zoo.num_models)})
  bad = tmp_path / 'nets' / 'net007' / 'weights' / '013.bin'
  with open(bad, 'r+b') as f:
    f.truncate(100)
  result = run_cli(f'--nws_csv={tmp_path}/all.csv', f'--workdir={tmp_path}/meta', *NO_BASELINE)
  line = _error(result)
  assert 'net007' in line and '013.bin' in line
  assert not (tmp_path / 'meta').exists()
  result = run_cli(f'--nws_csv={tmp_path}/all.csv', f'--workdir={tmp_path}/meta',
                   '--on_damaged=skip', *NO_BASELINE)
  assert result.returncode == 0, result.stderr
  damaged = pd.read_csv(tmp_path / 'meta' / 'damaged_nets.csv')
  assert list(damaged['path']) == [str(tmp_path / 'nets' / 'net007')]


def test_nan_in_a_slice_fails_naming_the_file(zoo, tmp_path):
  write_release(zoo.table, zoo.snapshots, str(tmp_path), {'all.csv': range(zoo.num_models)})
  path = tmp_path / 'nets' / 'net004' / 'weights' / '015.bin'
  vector = np.fromfile(path, '<f8')
  vector[:] = np.nan
  vector.tofile(path)
  src = source_lib.from_release([str(tmp_path / 'all.csv')])  # no scan: slices catch it
  with pytest.raises(release.DamagedNetError, match='net004/weights/015.bin'):
    _fit(SMALL, src.table, src.reader)
  skipped = source_lib.from_release([str(tmp_path / 'all.csv')], on_damaged='skip',
                                    scan_nans=True)
  assert len(skipped.table) == zoo.num_models - 1
  assert 'non-finite' in skipped.reader.damaged['reason'].iloc[0]


def test_memory_stays_bounded_by_the_batch_not_the_dataset(tmp_path):
  """9.6 GB of snapshots (sparse files) train under a 4 GiB address-space limit, which a
  whole-dataset load could not fit (checked in the same limit)."""
  n, nets = 1_500_000, 40
  rows = []
  base = dict(dataset='mnist', lrate=0.001, batch_size=32, batch_norm=True, augmentation=False,
              optimizer=0, activation=0, initialization=0, **space.FIXED_ARCHITECTURE)
  for i in range(nets):
    folder = tmp_path / 'nets' / f'n{i:02d}' / 'weights'
    folder.mkdir(parents=True)
    for number in range(1, 21):
      with open(folder / f'{number:03d}.bin', 'wb') as f:
        f.truncate(8 * n)  # sparse: reads give zeros, no disk used
    rows.append(dict(base, optimizer=i % 3, initialization=(i // 3) % 4,
                     weightn_conv=400_000, weightn_fc=n - 400_000, path=f'nets/n{i:02d}'))
  pd.DataFrame(rows).to_csv(tmp_path / 'train.csv', index=False)
  dataset_bytes = nets * 20 * n * 8
  limit = 4 * 2 ** 30
  assert dataset_bytes > 2 * limit
  load = subprocess.run([sys.executable, '-c', LIMITED, str(limit), sys.executable, '-c',
                         f'import numpy; numpy.ones({dataset_bytes // 8})'],
                        capture_output=True, text=True)
  assert load.returncode != 0 and 'MemoryError' in load.stderr  # the limit bites
  result = run_cli(f'--nws_csv={tmp_path}/train.csv', f'--workdir={tmp_path}/meta',
                   *TINY_FLAGS, '--slice_length=200', address_space_limit=limit)
  assert result.returncode == 0, result.stderr[-2000:]
  assert (tmp_path / 'meta' / 'accuracy.csv').exists()


def _release_copy(zoo, tmp_path):
  write_release(zoo.table, zoo.snapshots, str(tmp_path), {'all.csv': range(zoo.num_models)})
  return tmp_path / 'all.csv'


def test_whole_vectors_are_checked_for_non_finite_weights(zoo, tmp_path):
  csv = _release_copy(zoo, tmp_path)
  path = tmp_path / 'nets' / 'net002' / 'weights' / '012.bin'
  vector = np.fromfile(path, '<f8')
  vector[7] = 1e39  # finite in float64, inf in float32
  vector.tofile(path)
  src = source_lib.from_release([str(csv)])
  with pytest.raises(release.DamagedNetError, match='net002/weights/012.bin'):
    src.reader.vectors([2], [11])
  skipped = source_lib.from_release([str(csv)], on_damaged='skip')  # skip reads every file
  assert list(skipped.reader.damaged['path']) == [str(tmp_path / 'nets' / 'net002')]


def test_meta_csv_at_odds_with_the_split_csv_is_a_damaged_net(zoo, tmp_path):
  csv = _release_copy(zoo, tmp_path)
  table = pd.read_csv(csv)
  table.loc[5, 'optimizer'] = (table.loc[5, 'optimizer'] + 1) % 3  # the CSV relabels net005
  table.to_csv(csv, index=False)
  with pytest.raises(release.DamagedNetError, match=r'net005.*meta.csv says optimizer'):
    source_lib.from_release([str(csv)])


@pytest.mark.parametrize('column,value,message', [
    ('optimizer', 7, "'optimizer' holds 7"),
    ('width_fc', 100, "'width_fc' holds 100"),
    ('lrate', -0.001, 'not positive'),
])
def test_property_values_outside_the_protocol_are_refused(zoo, tmp_path, column, value, message):
  csv = _release_copy(zoo, tmp_path)
  table = pd.read_csv(csv)
  table.loc[3, column] = value
  table.to_csv(csv, index=False)
  with pytest.raises(release.ReleaseError, match=message):
    release.read_split_csv(str(csv))


def test_dataset_names_are_normalised_and_repeated_columns_refused(zoo, tmp_path):
  csv = _release_copy(zoo, tmp_path)
  table = pd.read_csv(csv)
  table['dataset'] = [f' {d.upper()} ' for d in table['dataset']]
  table.to_csv(csv, index=False)
  read = release.read_split_csv(str(csv))
  assert set(read['dataset']) == set(zoo.table['dataset'])
  text = csv.read_text().splitlines()
  csv.write_text('\n'.join([text[0] + ',optimizer'] + [l + ',0' for l in text[1:]]) + '\n')
  with pytest.raises(release.ReleaseError, match="'optimizer' appears more than once"):
    release.read_split_csv(str(csv))


def test_evaluate_only_refuses_relabelled_nets_at_the_same_paths(zoo, tmp_path):
  csv = _release_copy(zoo, tmp_path)
  src = source_lib.from_release([str(csv)])
  for i in range(zoo.num_models):  # relabel every net consistently: CSV and meta.csv agree
    (tmp_path / 'nets' / f'net{i:03d}' / 'meta.csv').unlink()
  table = pd.read_csv(csv)
  table['augmentation'] = ~table['augmentation']
  table.to_csv(csv, index=False)
  with pytest.raises(release.ReleaseError, match='not those the run read'):
    source_lib.open_source(src.description)


def test_a_class_unseen_in_training_is_a_one_line_error(zoo):
  targets = targets_lib.make_targets(zoo.table.iloc[:6], ['optimizer'], np.arange(6))
  table = zoo.table.copy()
  table.loc[0, 'optimizer'] = 9
  with pytest.raises(targets_lib.PropertyError, match='optimizer=9 is not one of the classes'):
    targets_lib.encode(table, targets)


def test_a_run_that_fails_mid_training_leaves_no_workdir(zoo, tmp_path):
  csv = _release_copy(zoo, tmp_path)
  path = tmp_path / 'nets' / 'net001' / 'weights' / '014.bin'
  np.full(zoo.snapshots.lengths[1], np.nan).tofile(path)
  result = run_cli(f'--nws_csv={csv}', f'--workdir={tmp_path}/meta', *NO_BASELINE)
  assert 'net001/weights/014.bin' in _error(result)
  assert not (tmp_path / 'meta').exists()


def test_parts_too_long_for_uniform_float32_offsets_are_refused():
  from nws_jax.meta import slices as slices_lib
  with pytest.raises(slices_lib.SliceError, match='longer than the 16777216'):
    slices_lib.check_spec(slices_lib.SliceSpec(100), np.array([2 ** 24]), np.array([5]), 20)
