"""The train_meta command line: errors exit 2 with one line and touch nothing; a tiny run writes
every result, re-evaluates without retraining and repeats exactly."""

import json
import os
import shutil
import subprocess
import sys

import pandas as pd
import pytest

from helpers import file_state

PNG_SIGNATURE = b'\x89PNG\r\n\x1a\n'
PROPERTIES = ['dataset', 'lrate', 'augmentation', 'optimizer', 'initialization']
EVAL_FLAGS = ['--positions=5', '--ensemble_slices=3', '--snapshot_slices=2', '--progress=false']
TINY_FLAGS = ['--slice_length=40', '--conv_widths=4,8', '--dense_widths=16', '--epochs=2',
              '--batch_size=32', *EVAL_FLAGS]


def run_cli(*args, cwd=None):
  return subprocess.run([sys.executable, '-m', 'nws_jax.train_meta', *map(str, args)],
                        capture_output=True, text=True, timeout=600, cwd=cwd)


def error_line(result):
  lines = [l for l in result.stderr.splitlines() if l.startswith('train_meta: error:')]
  assert len(lines) == 1, result.stderr
  return lines[0]


def assert_refused(result, message):
  assert result.returncode == 2, result.stderr
  assert message in error_line(result)




# Errors: exit 2, one line, no workdir.

def test_missing_zoo_directory_exits_2_and_creates_nothing(tmp_path):
  workdir = tmp_path / 'meta'
  result = run_cli(f'--zoo={tmp_path}/no_such_zoo', f'--workdir={workdir}')
  assert_refused(result, 'no zoo at')
  assert not workdir.exists()


def _remove_snapshots(zoo):
  shutil.rmtree(zoo / 'snapshots')


def _truncate_models_csv(zoo):
  header = (zoo / 'models.csv').read_text().splitlines()[0]
  (zoo / 'models.csv').write_text(header + '\n')


def _garbage_snapshots(zoo):
  shutil.rmtree(zoo / 'snapshots')
  (zoo / 'snapshots').mkdir()
  (zoo / 'snapshots' / 'junk.bin').write_bytes(b'not a checkpoint')


@pytest.mark.parametrize('damage,message', [
    (_remove_snapshots, 'snapshots is missing'),
    (_truncate_models_csv, 'lacks model_id 0, which the zoo trained'),
    (_garbage_snapshots, 'cannot read snapshots'),
], ids=['no_snapshots', 'header_only_models_csv', 'garbage_snapshots'])
def test_damaged_zoo_exits_2_and_creates_nothing(tmp_path, synthetic_zoo_dir, damage, message):
  zoo = tmp_path / 'zoo'
  shutil.copytree(synthetic_zoo_dir, zoo)
  damage(zoo)
  workdir = tmp_path / 'meta'
  result = run_cli(f'--zoo={zoo}', f'--workdir={workdir}', '--slice_length=40')
  assert_refused(result, message)
  assert not workdir.exists()


@pytest.mark.parametrize('flags,message', [
    (['--properties=colour'], "unknown property 'colour'"),
    (['--properties=activation'], "property 'activation' does not vary"),
    (['--slice_length=201'], 'slice_length 201 is longer than the vector'),
    (['--part=conv', '--slice_length=81'], 'slice_length 81 is longer than the conv part'),
    (['--slice_length=40', '--snapshots=20-11'], 'snapshot range 20-11 is empty'),
    (['--slice_length=40', '--snapshots=0-5'], 'outside the zoo\'s snapshots 1-20'),
    (['--slice_length=40', '--snapshots=abc'], "snapshot range 'abc' is not FIRST-LAST"),
    (['--slice_length=40', '--epochs=0'], 'epochs must be at least 1'),
], ids=['unknown_property', 'constant_property', 'slice_longer_than_vector',
        'slice_longer_than_conv_part', 'empty_snapshot_range', 'snapshot_range_out_of_zoo',
        'garbage_snapshot_range', 'zero_epochs'])
def test_bad_option_exits_2_and_creates_nothing(tmp_path, synthetic_zoo_dir, flags, message):
  workdir = tmp_path / 'meta'
  result = run_cli(f'--zoo={synthetic_zoo_dir}', f'--workdir={workdir}', *flags)
  assert_refused(result, message)
  assert not workdir.exists()


def test_missing_workdir_flag_exits_2_and_creates_nothing(tmp_path, synthetic_zoo_dir):
  result = run_cli(f'--zoo={synthetic_zoo_dir}', cwd=tmp_path)
  assert_refused(result, '--workdir is required')
  assert os.listdir(tmp_path) == []


def test_missing_zoo_flag_exits_2_and_creates_nothing(tmp_path):
  workdir = tmp_path / 'meta'
  result = run_cli(f'--workdir={workdir}', cwd=tmp_path)
  assert_refused(result, '--zoo or --nws_csv is required')
  assert os.listdir(tmp_path) == []


def test_non_empty_workdir_is_refused_and_left_untouched(tmp_path, synthetic_zoo_dir):
  (tmp_path / 'notes.txt').write_text('keep me')
  before = file_state(tmp_path)
  result = run_cli(f'--zoo={synthetic_zoo_dir}', f'--workdir={tmp_path}', *TINY_FLAGS)
  assert_refused(result, 'not empty')
  assert os.listdir(tmp_path) == ['notes.txt']
  assert file_state(tmp_path) == before


@pytest.mark.parametrize('kind', ['empty', 'not_a_run', 'absent'])
def test_evaluate_only_without_a_run_exits_2(tmp_path, kind):
  workdir = tmp_path / 'meta'
  if kind != 'absent':
    workdir.mkdir()
  if kind == 'not_a_run':
    (workdir / 'notes.txt').write_text('keep me')
  result = run_cli('--evaluate_only', f'--workdir={workdir}')
  assert_refused(result, 'holds no meta-classifier run')
  assert workdir.exists() == (kind != 'absent')
  if kind == 'not_a_run':
    assert os.listdir(workdir) == ['notes.txt']


# A tiny run, trained twice (into two workdirs) for the whole module.

@pytest.fixture(scope='module')
def tiny_runs(tmp_path_factory, synthetic_zoo_dir):
  """Two identical tiny runs: [(workdir, CompletedProcess, accuracy.csv bytes)] * 2."""
  runs = []
  for name in ('run_a', 'run_b'):
    workdir = tmp_path_factory.mktemp('meta') / name
    result = run_cli(f'--zoo={synthetic_zoo_dir}', f'--workdir={workdir}', *TINY_FLAGS)
    assert result.returncode == 0, result.stderr
    runs.append((workdir, result, (workdir / 'accuracy.csv').read_bytes()))
  return runs


def test_tiny_run_writes_every_result(tiny_runs):
  workdir, result, _ = tiny_runs[0]
  assert result.returncode == 0
  for name in ('accuracy', 'per_net', 'ensemble', 'position', 'snapshot', 'part', 'baseline',
               'history'):
    assert (workdir / f'{name}.csv').is_file(), name
  for name in ('split.json', 'config.json', 'run.json'):
    assert (workdir / name).is_file(), name
  assert (workdir / 'checkpoint').is_dir()
  assert os.listdir(workdir / 'checkpoint')
  for name in ('accuracy', 'per_net', 'ensemble', 'position', 'snapshot', 'part', 'history'):
    assert (workdir / f'{name}.png').read_bytes().startswith(PNG_SIGNATURE), name


def test_tiny_run_accuracy_table_has_one_row_per_varying_property(tiny_runs):
  workdir, _, _ = tiny_runs[0]
  accuracy = pd.read_csv(workdir / 'accuracy.csv')
  assert list(accuracy.columns) == ['property', 'metric', 'value', 'per_net', 'chance',
                                    'n_test_models']
  assert list(accuracy['property']) == PROPERTIES
  assert list(accuracy['metric']) == ['mae' if p == 'lrate' else 'accuracy' for p in PROPERTIES]
  scores = accuracy[accuracy['metric'] == 'accuracy']
  assert scores['value'].between(0, 1).all()
  assert scores['chance'].between(0, 1).all()
  with open(workdir / 'split.json') as f:
    test_models = json.load(f)['test']
  # lrate on every test model, each categorical property on its class-balanced part of them
  # (every class cut to the rarest on the test side), as the original's test set.
  zoo = json.loads((workdir / 'config.json').read_text())['source']['zoo']
  table = pd.read_csv(os.path.join(zoo, 'models.csv'))
  for row in accuracy.itertuples():
    rarest = table[row.property].iloc[test_models].value_counts()
    expected = len(test_models) if row.property == 'lrate' else rarest.min() * len(rarest)
    assert row.n_test_models == expected, row
  per_net = pd.read_csv(workdir / 'per_net.csv')
  means = per_net.groupby('property')['value'].mean()
  for row in accuracy.itertuples():
    assert row.per_net == pytest.approx(means[row.property])
    assert per_net[per_net.property == row.property]['model'].nunique() == row.n_test_models


def test_tiny_run_prints_the_final_table(tiny_runs):
  _, result, _ = tiny_runs[0]
  header = next(l for l in result.stdout.splitlines() if l.startswith('property'))
  assert 'chance' in header
  for name in PROPERTIES:
    assert any(l.startswith(name) for l in result.stdout.splitlines()), name


def test_same_command_twice_gives_identical_accuracy(tiny_runs):
  (_, _, first), (_, _, second) = tiny_runs
  assert first == second


def test_evaluate_only_reproduces_accuracy_without_retraining(tiny_runs):
  workdir, _, accuracy_before = tiny_runs[1]
  checkpoint_before = file_state(workdir / 'checkpoint')
  assert checkpoint_before
  saved = {name: (workdir / name).read_bytes()
           for name in ('history.csv', 'config.json', 'run.json', 'split.json')}
  accuracy_mtime = (workdir / 'accuracy.csv').stat().st_mtime_ns
  # No evaluation flags: the run's saved evaluation options are reused.
  result = run_cli('--evaluate_only', f'--workdir={workdir}', '--progress=false')
  assert result.returncode == 0, result.stderr
  assert (workdir / 'accuracy.csv').stat().st_mtime_ns != accuracy_mtime  # rewritten ...
  assert (workdir / 'accuracy.csv').read_bytes() == accuracy_before  # ... with the same numbers
  assert file_state(workdir / 'checkpoint') == checkpoint_before
  for name, content in saved.items():
    assert (workdir / name).read_bytes() == content, name


def test_evaluate_only_without_baseline_removes_the_stale_baseline(tiny_runs, tmp_path):
  workdir = tmp_path / 'copy'
  shutil.copytree(tiny_runs[0][0], workdir)
  assert (workdir / 'baseline.csv').exists()
  result = run_cli('--evaluate_only', f'--workdir={workdir}', '--nobaseline')
  assert result.returncode == 0, result.stderr
  assert not (workdir / 'baseline.csv').exists()
  assert 'gbt_slice' not in result.stdout


# Failed models (models.csv `failed`): left out by default, as the release did.

@pytest.mark.parametrize('include', [False, True], ids=['default', 'include_failed'])
def test_failed_models_are_left_out_unless_include_failed(tmp_path, synthetic_zoo_dir, include):
  failed = [1, 4, 9, 16, 25]
  zoo = tmp_path / 'zoo'
  shutil.copytree(synthetic_zoo_dir, zoo)
  table = pd.read_csv(zoo / 'models.csv')
  table['failed'] = table.index.isin(failed)
  table.to_csv(zoo / 'models.csv', index=False)
  workdir = tmp_path / 'meta'
  result = run_cli(f'--zoo={zoo}', f'--workdir={workdir}', *TINY_FLAGS, '--epochs=1',
                   '--nobaseline', *(['--include_failed'] if include else []))
  assert result.returncode == 0, result.stderr
  note = json.loads((workdir / 'run.json').read_text())['failed']
  assert (note['flagged'], note['dropped'], note['models']) == (5, 0 if include else 5, 40)
  assert note['include_failed'] is include and '0.15' in note['threshold']
  split = json.loads((workdir / 'split.json').read_text())
  used = set(split['train']) | set(split['valid']) | set(split['test'])
  assert len(used) == (40 if include else 35)
  assert bool(used & set(failed)) is include
  line = next(l for l in result.stdout.splitlines() if l.startswith('failed models'))
  assert '0.15' in line and f'5 of 40 flagged, dropped {note["dropped"]}' in line
