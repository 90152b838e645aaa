"""The experiments/ entry points (issue 9): each study runs at tiny scale against one shared tiny
zoo and writes its CSVs, PNGs and summary; a resumed study reuses its finished runs; bad input
exits 2 with one line and touches nothing."""

import gc
import json
import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pandas as pd
import pytest

from helpers import file_state
from helpers import occupied_folder

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PNG_SIGNATURE = b'\x89PNG\r\n\x1a\n'
# Tiny scale with the meta-classifiers cut to what CI affords (every knob is a flag). Every run
# below reads 40-model zoos of the same shape with slices of 40 weights and 10 snapshots, so
# they share compiled programs through the session's persistent compilation cache.
FAST = ['--scale=tiny', '--slice_length=40', '--conv_widths=8,8', '--dense_widths=32',
        '--meta_epochs=2', '--ensemble_slices=3', '--positions=6', '--snapshot_slices=2',
        '--progress=false']


def run_experiment(name, *args):
  return subprocess.run([sys.executable, os.path.join(ROOT, 'experiments', f'{name}.py'),
                         *map(str, args)], capture_output=True, text=True, timeout=900)


def assert_refused(result, name, message):
  assert result.returncode == 2, result.stdout + result.stderr
  lines = [l for l in result.stderr.splitlines() if l.startswith(f'{name}: error:')]
  assert len(lines) == 1, result.stderr
  assert message in lines[0], lines[0]


def assert_png(path):
  with open(path, 'rb') as f:
    assert f.read(8) == PNG_SIGNATURE, path


@pytest.fixture(scope='module')
def second_zoo(tmp_path_factory):
  """Another synthetic zoo of the shape of conftest's (other weights and properties), standing
  in for the mixed-architecture zoo: the experiments read both kinds alike."""
  from conftest import write_synthetic_zoo
  path = str(tmp_path_factory.mktemp('second') / 'zoo')
  write_synthetic_zoo(path, seed=1)
  return path


def test_property_table_scores_both_zoos(synthetic_zoo_dir, second_zoo, tmp_path):
  workdir = tmp_path / 'table'
  result = run_experiment('property_table', f'--workdir={workdir}',
                          f'--fixed_zoo={synthetic_zoo_dir}', f'--mixed_zoo={second_zoo}', *FAST)
  assert result.returncode == 0, result.stderr
  table = pd.read_csv(workdir / 'table.csv')
  assert set(table['zoo']) == {'fixed', 'mixed'}
  for column in ('property', 'metric', 'chance', 'meta', 'meta_vote', 'gbt_slice'):
    assert table[column].notna().all(), column
  # Each zoo scores exactly the properties that vary in it.
  varying = ['dataset', 'lrate', 'augmentation', 'optimizer', 'initialization']
  for kind in ('fixed', 'mixed'):
    assert sorted(table[table['zoo'] == kind]['property']) == sorted(varying)
    assert_png(workdir / f'table_{kind}.png')
    assert (workdir / 'meta' / f'table_{kind}' / 'accuracy.csv').exists()
  accuracy = table[table['metric'] == 'accuracy']
  assert accuracy[['meta', 'meta_vote', 'chance']].stack().between(0, 1).all()
  summary = (workdir / 'summary.md').read_text()
  assert 'experiments/property_table.py' in summary and '| initialization |' in summary
  assert '## The mixed-architecture zoo' in summary


def test_when_scores_every_snapshot_for_each_range(synthetic_zoo_dir, tmp_path):
  workdir = tmp_path / 'when'
  result = run_experiment('when', f'--workdir={workdir}', f'--fixed_zoo={synthetic_zoo_dir}',
                          *FAST, '--ranges=early:1-10,late:11-20')
  assert result.returncode == 0, result.stderr
  curve = pd.read_csv(workdir / 'when.csv')
  assert set(curve['trained_on']) == {'early (1-10)', 'late (11-20)'}
  for label, group in curve.groupby('trained_on'):
    assert sorted(set(group['snapshot'])) == list(range(1, 21))
    trained = sorted(set(group[group['trained']]['snapshot']))
    assert trained == list(range(1, 11) if label.startswith('early') else range(11, 21))
  own = pd.read_csv(workdir / 'when_trained.csv')
  assert len(own) == 2 * curve['property'].nunique()
  assert_png(workdir / 'when.png')
  assert '| property | metric | chance | early (1-10) | late (11-20) |' in (
      workdir / 'summary.md').read_text()


def test_where_scores_positions_and_parts(synthetic_zoo_dir, tmp_path):
  workdir = tmp_path / 'where'
  result = run_experiment('where', f'--workdir={workdir}', f'--fixed_zoo={synthetic_zoo_dir}',
                          *FAST, '--baseline=false')
  assert result.returncode == 0, result.stderr
  position = pd.read_csv(workdir / 'where_position.csv')
  assert sorted(set(position['position'])) == list(range(6))
  parts = pd.read_csv(workdir / 'where_parts.csv')
  pairs = set(zip(parts['trained_on'], parts['read_from']))
  assert pairs == {('all', 'all'), ('all', 'conv'), ('all', 'dense'), ('conv', 'conv'),
                   ('dense', 'dense')}
  assert parts['value'].notna().all()
  for name in ('where_position.png', 'where_parts.png'):
    assert_png(workdir / name)


def test_slice_length_sweeps_lengths_up_to_the_whole_vector(synthetic_zoo_dir, tmp_path):
  # The synthetic zoo's vectors are 200 weights long, so 'whole' is cheap here.
  workdir = tmp_path / 'length'
  result = run_experiment('slice_length', f'--workdir={workdir}',
                          f'--fixed_zoo={synthetic_zoo_dir}', *FAST, '--baseline=false',
                          '--slice_lengths=40,whole,400')
  assert result.returncode == 0, result.stderr
  frame = pd.read_csv(workdir / 'slice_length.csv')
  assert sorted(set(frame['slice_length'])) == [40, 200]
  assert frame[frame['slice_length'] == 200]['whole'].all()
  assert 'longer than the shortest vector (200), not run' in (workdir / 'summary.md').read_text()
  assert_png(workdir / 'slice_length.png')


@pytest.fixture(scope='module')
def ensembles_study(synthetic_zoo_dir, tmp_path_factory):
  """(workdir, flags) of an ensembles study on the synthetic zoo."""
  workdir = tmp_path_factory.mktemp('ensembles') / 'study'
  args = [f'--workdir={workdir}', f'--fixed_zoo={synthetic_zoo_dir}', *FAST,
          '--vote_sizes=1,3,9', '--baseline=false']
  result = run_experiment('ensembles', *args)
  assert result.returncode == 0, result.stderr
  return workdir, args


def test_ensembles_votes_and_a_resumed_study_reuses_its_runs(ensembles_study):
  workdir, args = ensembles_study
  votes = pd.read_csv(workdir / 'ensembles.csv')
  assert sorted(set(votes['slices'])) == [1, 3, 9]
  accuracy = votes[votes['metric'] == 'accuracy']
  assert accuracy[['majority', 'mean_prob']].stack().between(0, 1).all()
  # 20% of the 40 models for lrate; a categorical property's class-balanced part of them.
  assert (votes.loc[votes['property'] == 'lrate', 'n_test_models'] == 8).all()
  assert votes['n_test_models'].between(1, 8).all()
  assert_png(workdir / 'ensembles.png')

  # Resumed with the same flags: the trained run is reused (not retrained), same results.
  result = run_experiment('ensembles', *args, '--resume')
  assert result.returncode == 0, result.stderr
  assert 'meta/ensembles: reused from an earlier run' in result.stdout
  pd.testing.assert_frame_equal(pd.read_csv(workdir / 'ensembles.csv'), votes)
  # The summary keeps the time the run took when it was built.
  row = [l for l in (workdir / 'summary.md').read_text().splitlines()
         if l.startswith('| meta/ensembles |')]
  assert len(row) == 1 and row[0].endswith(' s (built by an earlier run, reused) |'), row

  # Resumed with other flags: refused, nothing changed.
  state = file_state(workdir)
  result = run_experiment('ensembles', *args, '--resume', '--vote_sizes=2')
  assert_refused(result, 'ensembles', 'it was started with other settings')
  assert file_state(workdir) == state


@pytest.mark.parametrize('name, args, message', [
    ('when', ['--ranges=early:5-1'], '--ranges early:5-1: snapshots are numbered from 1'),
    ('where', ['--parts=conv,middle'], '--parts: choose from'),
    ('slice_length', ['--slice_lengths=0'], 'expected positive integers or "whole"'),
    ('ensembles', ['--meta_epochs=0'], 'epochs must be at least 1'),
    ('where', ['--resume', '--overwrite'], 'choose one of --resume and --overwrite'),
])
def test_bad_flags_exit_2_and_create_nothing(tmp_path, synthetic_zoo_dir, name, args, message):
  workdir = tmp_path / 'study'
  result = run_experiment(name, f'--workdir={workdir}', f'--fixed_zoo={synthetic_zoo_dir}',
                          *args)
  assert_refused(result, name, message)
  assert not workdir.exists()


def test_workdirs_and_zoos_that_cannot_be_used_are_refused(tmp_path, synthetic_zoo_dir):
  from nws_jax.study import runner
  from nws_jax.configs import presets

  def refused(workdir, message, zoos=None, **flags):
    with pytest.raises(runner.StudyError, match=message):
      runner.open_study('where', presets.TINY_SCALE, str(workdir), settings={},
                        zoos=zoos or {'fixed': synthetic_zoo_dir}, **flags)

  zoo_state = file_state(synthetic_zoo_dir)
  # A non-empty folder that is not a study: refused, with or without --overwrite / --resume.
  other = tmp_path / 'other'
  other_state = occupied_folder(other)
  refused(other, 'is not empty; pass --resume')
  refused(other, 'is not a study workdir; --overwrite applies only to a study', overwrite=True)
  refused(other, 'is not a study workdir; --resume applies only to a study', resume=True)
  assert file_state(other) == other_state
  # A zoo as the workdir, a given zoo that is not a finished zoo.
  refused(synthetic_zoo_dir, 'holds a zoo', overwrite=True)
  refused(tmp_path / 'new', 'is not a finished zoo', zoos={'fixed': str(other)})
  refused(tmp_path / 'new', 'no such directory', zoos={'mixed': str(tmp_path / 'none')})
  assert not (tmp_path / 'new').exists()
  # A study workdir that holds the zoo it is given: not overwritten.
  study = tmp_path / 'study'
  study.mkdir()
  (study / 'study.json').write_text(json.dumps({'study': 'where'}))
  shutil.copytree(synthetic_zoo_dir, study / 'zoo')
  state = file_state(study)
  refused(study, 'holds the input', zoos={'fixed': str(study / 'zoo')}, overwrite=True)
  refused(study, 'cannot resume', zoos={'fixed': str(study / 'zoo')}, resume=True)
  assert file_state(study) == state
  assert file_state(synthetic_zoo_dir) == zoo_state
  # The command line says it on one line, exit 2.
  result = run_experiment('where', f'--workdir={other}', f'--fixed_zoo={synthetic_zoo_dir}')
  assert_refused(result, 'where', 'is not empty; pass --resume')
  assert file_state(other) == other_state


def test_votes_over_more_slices_use_the_first_ones(ensembles_study, synthetic_zoo_dir):
  """evaluate_votes: k = 1 scores single slices; the same seed gives the same frame."""
  from nws_jax.meta import evaluate as evaluate_lib
  from nws_jax.meta import pipeline
  from nws_jax.meta import store
  from nws_jax.study import runner

  workdir = str(ensembles_study[0] / 'meta' / 'ensembles')
  config, _ = store.read_config(workdir)
  result = runner.MetaResult('ensembles', workdir, synthetic_zoo_dir, config,
                             pipeline.read_results(workdir))
  ctx = result.context()
  votes = evaluate_lib.evaluate_votes(ctx, [4, 1, 2], seed=3)
  names = [t.name for t in ctx.targets]
  assert list(votes['slices']) == [1, 2, 4] * len(names)
  assert list(votes['property']) == [n for n in names for _ in range(3)]
  single = votes[(votes['slices'] == 1) & (votes['metric'] == 'accuracy')]
  np.testing.assert_array_equal(single['majority'], single['mean_prob'])
  assert set(votes[votes['property'] == 'lrate']['metric']) == {'mae'}
  pd.testing.assert_frame_equal(votes, evaluate_lib.evaluate_votes(ctx, [1, 2, 4], seed=3))
  other = evaluate_lib.evaluate_votes(ctx, [1, 2, 4], seed=4)
  assert not other[['majority', 'mean_prob']].equals(votes[['majority', 'mean_prob']])
  with pytest.raises(ValueError, match='positive'):
    evaluate_lib.evaluate_votes(ctx, [0, 2])


def test_a_study_builds_each_zoo_once_and_continues_an_interrupted_one(tmp_path, monkeypatch):
  """Study.zoo: builds into zoo_<kind> when none is given, reuses a finished one, continues one
  that holds a zoo's config (an interrupted build) and restarts one that does not."""
  from nws_jax.zoo import builder as zoo_builder
  from nws_jax.study import runner
  from nws_jax.configs import presets

  calls = []

  def fake_build(config, path, *, resume, overwrite, progress):
    calls.append((os.path.basename(path), config.architecture, resume, overwrite))
    os.makedirs(path, exist_ok=True)
    open(os.path.join(path, 'models.csv'), 'w').close()

  monkeypatch.setattr(zoo_builder, 'build_zoo', fake_build)
  study = runner.open_study('where', presets.TINY_SCALE, str(tmp_path / 'study'), settings={},
                            progress=False)
  assert study.zoo('fixed') == str(tmp_path / 'study' / 'zoo_fixed')
  assert study.zoo('fixed') == str(tmp_path / 'study' / 'zoo_fixed')  # finished: reused
  assert calls == [('zoo_fixed', 'fixed', False, False)]
  interrupted = tmp_path / 'study' / 'zoo_mixed'
  interrupted.mkdir()
  (interrupted / 'config.json').write_text('{}')
  study.zoo('mixed')
  assert calls[-1] == ('zoo_mixed', 'random', True, False)
  study.steps.clear()
  (tmp_path / 'study' / 'zoo_fixed' / 'models.csv').unlink()
  (tmp_path / 'study' / 'zoo_fixed' / 'stray').write_text('')
  study.zoo('fixed')  # neither finished nor resumable: built again over what is there
  assert calls[-1] == ('zoo_fixed', 'fixed', False, True)
  assert [s[0] for s in study.steps] == ['zoo_fixed']


def _partial_folders(folder):
  return [n for n in os.listdir(folder) if '.partial-' in n] if os.path.isdir(folder) else []


def test_a_study_stopped_by_sigterm_during_a_meta_run_leaves_no_hidden_folder(synthetic_zoo_dir,
                                                                             tmp_path):
  """SIGTERM once the meta run's hidden folder exists: the run unwinds, removes it (Orbax's
  writers done first) and the study exits 143, saying --resume runs it again."""
  meta = tmp_path / 'study' / 'meta'
  child = subprocess.Popen(
      [sys.executable, os.path.join(ROOT, 'experiments', 'where.py'),
       f'--workdir={tmp_path / "study"}', f'--fixed_zoo={synthetic_zoo_dir}', *FAST,
       '--baseline=false', '--parts=all'],
      stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
  try:
    deadline = time.monotonic() + 600
    while not _partial_folders(meta):
      assert child.poll() is None, 'the study ended before its meta run began'
      assert time.monotonic() < deadline, 'no meta run began'
      time.sleep(0.01)
    child.send_signal(signal.SIGTERM)
    _, stderr = child.communicate(timeout=600)
  finally:
    if child.poll() is None:
      child.kill()
      child.wait()
  assert child.returncode == 143, stderr[-3000:]
  assert 'stopped by SIGTERM during meta/where_all' in stderr, stderr[-3000:]
  assert not _partial_folders(meta)
  assert not os.path.exists(meta / 'where_all')


def test_a_sigterm_that_lands_in_a_gc_callback_still_stops_the_run():
  """Python ignores what a gc callback raises (JAX registers one): the handler sends the signal
  again, so the run unwinds with Terminated instead of going on to its end."""
  from nws_jax.study import runner
  sent = []

  def callback(phase, info):
    del info
    if phase == 'start' and not sent:
      sent.append(True)
      os.kill(os.getpid(), signal.SIGTERM)  # handled here, inside the callback

  gc.callbacks.append(callback)
  try:
    with pytest.raises(runner.Terminated, match='which kept nothing'):
      with runner._sigterm_raises('a test'):
        gc.collect()
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
          time.sleep(0.01)
  finally:
    gc.callbacks.remove(callback)
  assert sent


def test_a_sigterm_that_lands_in_a_weakref_callback_is_sent_again():
  """A weak reference's callback (JAX's caches are WeakKeyDictionaries) swallows what it raises,
  as a gc callback does: a SIGTERM handled while one runs must be delivered again."""
  import weakref
  from nws_jax.study import runner

  class Key:
    pass

  frames = []

  def profile(frame, event, arg):
    del arg
    if event == 'call' and frame.f_code.co_filename == weakref.__file__:
      frames.append(frame)

  cache, key = weakref.WeakKeyDictionary(), Key()
  cache[key] = 1
  sys.setprofile(profile)
  try:
    del key  # WeakKeyDictionary's remove() runs as the key's weakref callback
    gc.collect()
  finally:
    sys.setprofile(None)
  assert frames and not cache
  assert all(runner._swallows_exceptions(frame) for frame in frames)
  assert not runner._swallows_exceptions(sys._getframe())


def test_a_meta_run_marks_its_hidden_folder_from_the_start(synthetic_zoo_dir, tmp_path,
                                                           monkeypatch):
  """What a meta run killed while training leaves is recognisable as ours (its marker file)."""
  from nws_jax import files
  from nws_jax.meta import pipeline
  from nws_jax.meta import train as train_lib

  class Stop(Exception):
    pass

  seen = []

  def fit(*args, **kwargs):
    seen.extend(files.marked_kind(str(p)) for p in tmp_path.glob('.meta.partial-*'))
    raise Stop

  monkeypatch.setattr(train_lib, 'fit', fit)
  config = train_lib.MetaConfig(slice_length=40, conv_widths=(4,), dense_widths=(8,), epochs=1)
  with pytest.raises(Stop):
    pipeline.train_and_evaluate(config, synthetic_zoo_dir, str(tmp_path / 'meta'))
  assert seen == ['meta']
  assert not _partial_folders(tmp_path)


def test_a_resumed_study_removes_only_the_marked_hidden_folders_of_killed_meta_runs(
    synthetic_zoo_dir, tmp_path):
  from nws_jax import files
  from nws_jax.study import runner
  from nws_jax.configs import presets

  def open_study(resume):
    return runner.open_study('where', presets.TINY_SCALE, str(tmp_path / 'study'), settings={},
                             zoos={'fixed': synthetic_zoo_dir}, resume=resume, progress=False)

  open_study(resume=False)
  meta = tmp_path / 'study' / 'meta'
  meta.mkdir()
  killed = meta / '.where_all.partial-k1ll3d_0'  # a meta run killed outright (SIGKILL)
  killed.mkdir()
  files.write_marker(str(killed), 'meta')
  (killed / 'history.csv').write_text('epoch\n')
  kept = {}
  for name, marked in (('.notes.partial-abcd1234', False), ('.where_all.old-abcd1234', True),
                       ('where_dense', True)):
    kept[name] = meta / name
    kept[name].mkdir()
    (kept[name] / 'mine.txt').write_text('mine')
    if marked:
      files.write_marker(str(kept[name]), 'meta')
  (meta / '.file.partial-abcd1234').write_text('a file, not a folder')
  before = file_state(meta)
  open_study(resume=True)
  assert not killed.exists()
  assert file_state(meta) == {k: v for k, v in before.items()
                              if not k.startswith(killed.name)}
