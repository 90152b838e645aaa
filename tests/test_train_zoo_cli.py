"""The train_zoo command line: errors exit 2 with one line and touch nothing."""

import os
import subprocess
import sys

import pytest


def run_cli(*args):
  return subprocess.run([sys.executable, '-m', 'nws_jax.train_zoo', *args],
                        capture_output=True, text=True, timeout=300)


def error_line(result):
  lines = [l for l in result.stderr.splitlines() if l.startswith('train_zoo: error:')]
  assert len(lines) == 1, result.stderr
  return lines[0]


def test_unknown_dataset_exits_2_and_creates_nothing(tmp_path):
  workdir = tmp_path / 'zoo'
  result = run_cli(f'--workdir={workdir}', '--datasets=digits,imagenet')
  assert result.returncode == 2
  assert "unknown dataset 'imagenet'" in error_line(result)
  assert not workdir.exists()


def test_non_empty_workdir_is_refused_and_left_untouched(tmp_path):
  (tmp_path / 'notes.txt').write_text('keep me')
  result = run_cli(f'--workdir={tmp_path}', '--num_models=1')
  assert result.returncode == 2
  assert 'not empty' in error_line(result)
  assert os.listdir(tmp_path) == ['notes.txt']
  assert (tmp_path / 'notes.txt').read_text() == 'keep me'


def test_resume_without_a_zoo_is_refused(tmp_path):
  (tmp_path / 'notes.txt').write_text('keep me')
  result = run_cli(f'--workdir={tmp_path}', '--resume')
  assert result.returncode == 2
  assert 'cannot resume' in error_line(result)
  assert os.listdir(tmp_path) == ['notes.txt']


def test_unprepared_tfds_dataset_exits_2_naming_it(tmp_path):
  workdir = tmp_path / 'zoo'
  result = run_cli(f'--workdir={workdir}', '--datasets=svhn', f'--data_dir={tmp_path}/tfds')
  assert result.returncode == 2
  assert 'svhn' in error_line(result)
  assert not workdir.exists()


@pytest.mark.parametrize('flag,message', [
    ('--architecture=tiny', 'architecture'),
    ('--num_models=0', 'num_models'),
    ('--min_epochs=50', 'min_epochs'),
    ('--packing=tight', 'packing'),
    ('--slots_per_group=0', 'slots_per_group'),
    # JAX's key holds 32 bits of the seed: beyond, zoos would share keys, not properties.
    ('--seed=-1', 'seed must be an integer in [0, 2**32)'),
    ('--seed=4294967296', 'seed must be an integer in [0, 2**32)'),
    (f'--seed={2 ** 64 + 1}', 'seed must be an integer in [0, 2**32)'),
    ('--num_models=1000000000', 'its snapshots alone need at least'),
])
def test_bad_options_exit_2(tmp_path, flag, message):
  result = run_cli(f'--workdir={tmp_path}/zoo', flag)
  assert result.returncode == 2
  assert message in error_line(result)


def test_missing_workdir_flag_exits_2():
  result = run_cli()
  assert result.returncode == 2
  assert '--workdir' in error_line(result)


def test_malformed_flag_value_exits_2(tmp_path):
  result = run_cli(f'--workdir={tmp_path}/zoo', '--num_models=abc')
  assert result.returncode == 2
  assert 'num_models' in error_line(result)


def test_data_too_small_for_the_zoo_exits_2_before_touching_the_workdir(tmp_path):
  workdir = tmp_path / 'zoo'
  result = run_cli(f'--workdir={workdir}', '--datasets=digits', '--num_train=10',
                   '--num_models=2')
  assert result.returncode == 2
  error_line(result)
  assert not workdir.exists()


@pytest.mark.parametrize('names', [('notes.txt',), ('notes.txt', 'models.csv', 'config.json')])
def test_overwrite_refuses_a_folder_train_zoo_did_not_write(tmp_path, names):
  # A user's folder, even one holding files named as a zoo's: --overwrite never deletes it.
  for name in names:
    (tmp_path / name).write_text('keep me')
  result = run_cli(f'--workdir={tmp_path}', '--num_models=1', '--num_train=300', '--overwrite')
  assert result.returncode == 2
  assert 'was not written by train_zoo' in error_line(result)
  assert sorted(os.listdir(tmp_path)) == sorted(names)
  assert all((tmp_path / name).read_text() == 'keep me' for name in names)


def test_overwrite_accepts_only_a_marked_zoo(tmp_path):
  from nws_jax import files
  from nws_jax.zoo import builder as zoo_builder
  config = zoo_builder.ZooConfig(num_models=1)
  zoo_dir, meta_dir = tmp_path / 'zoo', tmp_path / 'meta'
  for folder, kind in ((zoo_dir, 'zoo'), (meta_dir, 'meta')):
    folder.mkdir()
    files.write_marker(str(folder), kind)
  assert zoo_builder.check_workdir(str(zoo_dir), config, resume=False, overwrite=True) == \
      'overwrite'
  with pytest.raises(zoo_builder.WorkdirError, match='holds a meta-classifier run'):
    zoo_builder.check_workdir(str(meta_dir), config, resume=False, overwrite=True)


def test_a_zoo_that_cannot_fit_is_refused_before_sampling():
  from nws_jax.zoo import builder as zoo_builder
  config = zoo_builder.ZooConfig(num_models=1000, architecture='random')
  smallest = zoo_builder.smallest_vector('random')
  assert smallest < zoo_builder.smallest_vector('fixed') == 16880 + 75988
  zoo_builder.check_fits(config, memory_bytes=1000 * 20 * smallest * 4)
  with pytest.raises(ValueError, match='num_models=1000 cannot fit'):
    zoo_builder.check_fits(config, memory_bytes=1000 * 20 * smallest * 4 - 1)

