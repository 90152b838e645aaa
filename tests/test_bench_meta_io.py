"""The meta and io benchmark suites on tiny configurations: their rows, fields and files (no
speed assertions)."""

import math
import os

import pytest

from nws_jax.bench import common
from nws_jax.bench import io as io_bench
from nws_jax.bench import meta as meta_bench

from helpers import positive

MACHINE = ('device', 'backend', 'num_devices', 'jax', 'date')


def tiny(**kwargs):
  options = dict(num_models=(2,), repeats=1, meta_num_models=12, meta_slice_length=64,
                 meta_conv_widths=(4, 8), meta_dense_widths=(16,), batch_size=8)
  return common.BenchConfig(**{**options, **kwargs})



def files_under(path):
  return sorted(os.path.join(d, f) for d, _, names in os.walk(path) for f in names)


@pytest.fixture
def private_tempdir(tmp_path, monkeypatch):
  """Points Python's temporary directory at an empty folder, returned."""
  path = tmp_path / 'system_tmp'
  path.mkdir()
  monkeypatch.setenv('TMPDIR', str(path))
  monkeypatch.setattr('tempfile.tempdir', str(path))
  return path


def test_meta_row():
  rows = list(meta_bench.run(tiny()))
  assert len(rows) == 1
  row = rows[0]
  assert row['suite'] == 'meta' and all(row[k] is not None for k in MACHINE)
  assert row['n_models'] == 12 and row['slice_length'] == 64 and row['batch_size'] == 8
  assert row['conv_widths'] == '4,8' and row['dense_widths'] == '16'
  assert row['variant'] == 'cnn1D_small' and row['variables_per_classifier'] > 0
  p = row['properties']
  assert isinstance(p, int) and p >= 2
  positive(row, 'steps_per_epoch', 'one_property_step_s', 'stacked_step_s', 'loop_step_s',
           'one_property_slices_per_s', 'all_properties_slices_per_s',
           'all_properties_slice_reads_per_s', 'cost_ratio', 'loop_slice_reads_per_s',
           'stacked_over_loop')
  assert row['compile_s'] >= 0
  # 12 models × snapshots 11–20 = 120 pairs in batches of 8.
  assert row['steps_per_epoch'] == 15
  b = row['batch_size']
  assert row['cost_ratio'] == pytest.approx(row['stacked_step_s'] / row['one_property_step_s'])
  assert row['cost_ratio'] == pytest.approx(row['one_property_slices_per_s']
                                            / row['all_properties_slices_per_s'])
  assert row['one_property_slices_per_s'] == pytest.approx(b / row['one_property_step_s'])
  assert row['all_properties_slices_per_s'] == pytest.approx(b / row['stacked_step_s'])
  assert row['all_properties_slice_reads_per_s'] == pytest.approx(
      p * row['all_properties_slices_per_s'])
  assert row['loop_slice_reads_per_s'] == pytest.approx(p * b / row['loop_step_s'])
  assert row['stacked_over_loop'] == pytest.approx(row['all_properties_slice_reads_per_s']
                                                   / row['loop_slice_reads_per_s'])


def test_meta_row_of_the_legacy_network_without_the_loop():
  row, = meta_bench.run(tiny(meta_variant='legacy_6layer', meta_loop=False))
  assert row['variant'] == 'legacy_6layer' and row['conv_widths'] == '4,8'
  assert 'loop_step_s' not in row and 'stacked_over_loop' not in row
  positive(row, 'one_property_step_s', 'stacked_step_s', 'cost_ratio')
  # 64 -> 32 -> 16 (SAME pools, one per conv): dense 16·8 -> 16, output; BN on convs only.
  o = row['variables_per_classifier'] - (5 * 4 + 4 + 4 * 4 + 5 * 4 * 8 + 8 + 4 * 8
                                         + 128 * 16 + 16)
  assert o % 17 == 0 and o > 0  # 16·C + C


def test_meta_rejects_a_zoo_without_varying_property():
  with pytest.raises(ValueError, match='no property varies'):
    list(meta_bench.run(tiny(meta_num_models=1)))


def check_io_rows(rows):
  by_measure = {}
  for r in rows:
    assert r['suite'] == 'io' and all(r[k] is not None for k in MACHINE), r
    assert 'error' not in r, r
    by_measure.setdefault(r['measure'], []).append(r)
  assert set(by_measure) == {'save', 'training_stall', 'device_slices', 'disk_load'}
  n = sum(meta_bench.fixed_weight_counts())
  (save,), (stall,) = by_measure['save'], by_measure['training_stall']
  assert save['n_models'] == stall['n_models'] == 2 and save['weights_per_model'] == n
  assert save['bytes'] == 2 * n * 4
  positive(save, 'save_call_s', 'save_total_s', 'save_bytes_per_s')
  assert save['save_call_s'] <= save['save_total_s']
  assert save['save_bytes_per_s'] == pytest.approx(save['bytes'] / save['save_total_s'])
  positive(stall, 'compute_s', 'compute_with_save_s')
  assert math.isfinite(stall['training_stall_fraction'])
  assert stall['training_stall_fraction'] == pytest.approx(
      stall['compute_with_save_s'] / stall['compute_s'] - 1)
  (device,), (disk,) = by_measure['device_slices'], by_measure['disk_load']
  positive(device, 'slices_per_s', 'bytes_per_s')
  assert device['bytes_per_s'] == pytest.approx(device['slices_per_s'] * 64 * 4)
  assert disk['n_models'] == 12 and disk['bytes'] == 12 * 20 * n * 4
  positive(disk, 'save_s', 'load_s', 'bytes_per_s')
  assert disk['bytes_per_s'] == pytest.approx(disk['bytes'] / disk['load_s'])


def test_io_without_workdir_leaves_no_files(private_tempdir):
  rows = list(io_bench.run(tiny()))
  check_io_rows(rows)
  assert files_under(private_tempdir) == [] and os.listdir(private_tempdir) == []


def test_io_writes_only_under_workdir(tmp_path, private_tempdir, monkeypatch):
  workdir = tmp_path / 'work' / 'io'
  seen = []
  real_writer = io_bench.snapshots_lib.ExportWriter

  def writer(directory):
    seen.append(directory)
    return real_writer(directory)

  monkeypatch.setattr(io_bench.snapshots_lib, 'ExportWriter', writer)
  real_save = io_bench.snapshots_lib.save_snapshots

  def save_snapshots(directory, *args):
    seen.append(directory)
    return real_save(directory, *args)

  monkeypatch.setattr(io_bench.snapshots_lib, 'save_snapshots', save_snapshots)
  rows = list(io_bench.run(tiny(workdir=str(workdir))))
  check_io_rows(rows)
  assert len(seen) == 2
  for directory in seen:
    assert os.path.abspath(directory).startswith(str(workdir) + os.sep), directory
  assert os.listdir(private_tempdir) == []
  assert files_under(workdir) == []  # the scratch directory inside it is removed too
  assert sorted(os.listdir(tmp_path)) == ['system_tmp', 'work']


def test_save_sizes_are_capped():
  config = common.BenchConfig(num_models=(1, 8, 4096, 8192))
  assert io_bench.save_sizes(config) == (1, 8, io_bench.MAX_SAVE_MODELS)
