"""Meta evaluation as the original did it (meta_classifier.py, util.py; PROTOCOL §7): failed
models left out, the per-net score (valid_avg), the class-balanced test side and the position
sweep over the trained part. Nothing is trained: a fake stands in for the meta-classifiers."""

import types

import numpy as np
import pandas as pd
import pytest

import nws_jax
from nws_jax.meta import evaluate
from nws_jax.meta import pipeline
from nws_jax.meta import source as source_lib
from nws_jax.meta import split as split_lib
from nws_jax.meta import targets as targets_lib
from nws_jax.meta import train

LENGTH, BATCH = 40, 64
NAMES = ['optimizer', 'initialization', 'lrate']


@pytest.fixture(scope='module')
def zoo(synthetic_zoo_dir):
  return nws_jax.load_zoo(synthetic_zoo_dir)


def fake_outputs(weights, num_outputs, requests=None):
  """A stand-in for `evaluate._outputs` that reads the slices from `weights` [models, S, n] and
  normalises each block of BATCH rows by its own mean, as batch statistics in batch norm do: a
  row's outputs depend on the rows that share its batch. Output k of row r is
  sin((k + 1) · (mean of slice r − mean of its batch's slice means)) · 3, the same for every
  member. `requests` collects (models, snaps, offsets) of each call."""
  def outputs(ctx, models, snaps, offsets):
    models, snaps, offsets = (np.asarray(a) for a in (models, snaps, offsets))
    if requests is not None:
      requests.append((models, snaps, offsets))
    means = np.array([weights[m, s, o:o + LENGTH].mean()
                      for m, s, o in zip(models, snaps, offsets)])
    rows = np.arange(-(-len(means) // BATCH) * BATCH) % max(len(means), 1)
    padded = means[rows].reshape(-1, BATCH)
    centred = (padded - padded.mean(1, keepdims=True)).reshape(-1)[:len(means)]
    out = np.sin(np.arange(1, num_outputs + 1)[None, :] * centred[:, None]) * 3
    return np.broadcast_to(out, (len(ctx.targets),) + out.shape).copy()
  return outputs


def make_run(zoo, part='all', seed=0, batch_size=BATCH, names=NAMES, split=None):
  """A MetaRun with no parameters (the fake needs none) on the synthetic zoo."""
  config = train.MetaConfig(slice_length=LENGTH, part=part, batch_size=batch_size, seed=seed,
                            first_snapshot=19, last_snapshot=20)
  split = split or split_lib.make_split(np.arange(zoo.num_models), seed)
  targets = targets_lib.make_targets(zoo.table, names, split.train)
  spec = types.SimpleNamespace(slice_length=LENGTH)
  return train.MetaRun(config, targets, split, spec, None, None, pd.DataFrame())


# --- 1. failed models --------------------------------------------------------------------------

def _source(zoo, failed):
  table = zoo.table.copy()
  table['failed'] = False
  table.loc[failed, 'failed'] = True
  return source_lib.WeightSource(table, zoo.snapshots, {'kind': 'zoo', 'zoo': 'unused'})


def test_failed_models_are_left_out_by_default_and_kept_with_include_failed(zoo):
  failed = [0, 5, 17, 33]
  source = _source(zoo, failed)
  config = train.MetaConfig(slice_length=LENGTH)
  assert not config.include_failed
  split, _ = pipeline.plan(config, source)
  used = np.concatenate([split.train, split.valid, split.test])
  assert len(used) == zoo.num_models - len(failed) and not np.isin(failed, used).any()
  note = pipeline.failed_note(source.table, config.include_failed)
  assert (note['flagged'], note['dropped'], note['models']) == (4, 4, zoo.num_models)
  assert '0.15' in note['threshold']
  assert 'dropped 4' in pipeline.describe_failed(note)

  kept = train.MetaConfig(slice_length=LENGTH, include_failed=True)
  split, _ = pipeline.plan(kept, source)
  assert len(np.concatenate([split.train, split.valid, split.test])) == zoo.num_models
  assert pipeline.failed_note(source.table, True)['dropped'] == 0


def test_a_release_has_no_failed_flag_and_drops_none(zoo):
  table = zoo.table.drop(columns=['failed'])
  note = pipeline.failed_note(table, False)
  assert note['threshold'] is None and note['dropped'] == 0 and note['flagged'] == 0
  assert 'no failed flag' in pipeline.describe_failed(note)
  np.testing.assert_array_equal(train.eligible_models(table, False), np.arange(len(table)))


def test_too_few_models_after_leaving_out_the_failed_says_so(zoo):
  source = _source(zoo, list(range(zoo.num_models - 1)))
  with pytest.raises(split_lib.SplitError, match='after leaving out 39 failed models'):
    pipeline.plan(train.MetaConfig(slice_length=LENGTH), source)


def test_a_config_saved_with_drop_failed_reads_back_as_include_failed():
  saved = train.MetaConfig().to_json()
  del saved['include_failed']
  for drop, include in ((False, True), (True, False)):
    assert train.MetaConfig.from_json(dict(saved, drop_failed=drop)).include_failed is include


# --- 2. the per-net score ----------------------------------------------------------------------

def _reference_per_net(zoo, run, weights, part):
  """valid_avg from its description: per test model and snapshot in the range, one batch of
  BATCH slices at round(linspace(lo, hi - L, BATCH)) with the original's bounds (all: 0..n-L;
  conv: 0..max(0, nconv-L); dense: nconv..n-L), scored as a batch. Returns {(property, model,
  snapshot): score}, for every test model (balancing aside)."""
  conv = zoo.table['weightn_conv'].to_numpy()
  n = conv + zoo.table['weightn_fc'].to_numpy()
  out = {}
  for m in run.split.test:
    for number in (19, 20):
      if part == 'all':
        samp = np.round(np.linspace(0, n[m] - LENGTH, BATCH)).astype('int64')
      elif part == 'conv':
        samp = np.round(np.linspace(0, np.maximum(0, conv[m] - LENGTH), BATCH)).astype('int64')
      else:
        samp = np.round(np.linspace(conv[m], n[m] - LENGTH, BATCH)).astype('int64')
      means = np.array([weights[m, number - 1, o:o + LENGTH].mean() for o in samp])
      centred = means - means.mean()
      for p, t in enumerate(run.targets):
        k = np.arange(1, 5)
        logits = np.sin(k[None, :] * centred[:, None]) * 3
        if t.is_regression:
          pred = logits[:, 0] * t.std + t.mean
          score = np.mean(np.abs(pred - zoo.table[t.name][m]))
        else:
          label = list(t.classes).index(zoo.table[t.name][m])
          score = np.mean(logits[:, :t.num_classes].argmax(1) == label)
        out[(t.name, int(m), number)] = score
  return out


@pytest.mark.parametrize('part', ['all', 'conv', 'dense'])
def test_per_net_score_equals_the_originals_valid_avg(zoo, monkeypatch, part):
  weights = zoo.snapshots.as_array()
  requests = []
  monkeypatch.setattr(evaluate, '_outputs', fake_outputs(weights, 4, requests))
  run = make_run(zoo, part)
  ctx = evaluate.make_context(run, zoo.table, zoo.snapshots)
  per_net = evaluate.evaluate_per_net(ctx)
  # One request, each (model, snapshot)'s BATCH slices one aligned block of BATCH rows.
  [(models, snaps, _)] = requests
  assert len(models) == len(run.split.test) * 2 * BATCH
  for block in range(len(models) // BATCH):
    rows = slice(block * BATCH, (block + 1) * BATCH)
    assert len(set(models[rows])) == 1 and len(set(snaps[rows])) == 1
  reference = _reference_per_net(zoo, run, weights, part)
  assert list(per_net.columns) == list(evaluate.PER_NET_COLUMNS)
  for row in per_net.itertuples():
    assert row.value == pytest.approx(reference[(row.property, row.model, row.snapshot)])
  # Each property's rows are its scored test models' snapshots; the mean is accuracy's per_net.
  for p, t in enumerate(run.targets):
    rows = per_net[per_net.property == t.name]
    assert sorted(set(rows.model)) == sorted(ctx.scored(p).tolist())
    assert len(rows) == 2 * ctx.n_test(p)
    expected = np.mean([reference[(t.name, int(m), s)] for m in ctx.scored(p) for s in (19, 20)])
    accuracy = evaluate.per_net_means(
        pd.DataFrame(dict(property=[x.name for x in run.targets], metric='accuracy', value=0.5,
                          chance=0.3, n_test_models=1)), per_net)
    assert list(accuracy.columns) == ['property', 'metric', 'value', 'per_net', 'chance',
                                      'n_test_models']
    assert accuracy.set_index('property').loc[t.name, 'per_net'] == pytest.approx(expected)


def test_per_net_batch_follows_the_runs_batch_size(zoo, monkeypatch):
  requests = []
  monkeypatch.setattr(evaluate, '_outputs',
                      fake_outputs(zoo.snapshots.as_array(), 4, requests))
  ctx = evaluate.make_context(make_run(zoo, batch_size=16), zoo.table, zoo.snapshots)
  evaluate.evaluate_per_net(ctx)
  [(models, _, offsets)] = requests
  assert len(models) == len(ctx.test_models) * 2 * 16
  np.testing.assert_array_equal(offsets[:16], np.round(np.linspace(0, 200 - LENGTH, 16)))


# --- 3. the class-balanced test side -----------------------------------------------------------

def test_balance_test_cuts_every_class_to_the_rarest_in_file_order():
  models = np.array([3, 5, 8, 9, 12, 14, 20, 21])
  labels = np.array([0, 1, 0, 0, 2, 1, 2, 0])
  kept = split_lib.balance_test(models, labels)
  np.testing.assert_array_equal(kept, [3, 5, 8, 12, 14, 20])  # the first two of each class
  seeded = split_lib.balance_test(models, labels, seed=3)
  assert np.bincount(labels[np.isin(models, seeded)]).tolist() == [2, 2, 2]
  np.testing.assert_array_equal(seeded, split_lib.balance_test(models, labels, seed=3))
  draws = {tuple(split_lib.balance_test(models, labels, seed=s)) for s in range(20)}
  assert len(draws) > 1  # a seeded choice, not the first ones
  # A class absent from the test side does not empty it.
  np.testing.assert_array_equal(split_lib.balance_test(models[:3], labels[:3]), [3, 5])


def test_each_categorical_property_is_scored_on_its_balanced_test_side(zoo, monkeypatch):
  monkeypatch.setattr(evaluate, '_outputs', fake_outputs(zoo.snapshots.as_array(), 4))
  run = make_run(zoo, names=['optimizer', 'initialization', 'augmentation', 'lrate'])
  ctx = evaluate.make_context(run, zoo.table, zoo.snapshots)
  accuracy, ensemble = evaluate.evaluate_slices(ctx, slices_per_snapshot=2)
  test = run.split.test
  for p, t in enumerate(run.targets):
    row = accuracy.set_index('property').loc[t.name]
    scored = ctx.scored(p)
    assert row['n_test_models'] == len(scored)
    assert ensemble.set_index('property').loc[t.name, 'n_test_models'] == len(scored)
    if t.is_regression:  # lrate: every test model, no balancing
      np.testing.assert_array_equal(scored, test)
      continue
    counts = zoo.table[t.name].iloc[scored].value_counts()
    rarest = zoo.table[t.name].iloc[test].value_counts().min()
    assert (counts == rarest).all() and set(scored) <= set(test)
    # Chance on the balanced side: one over the classes present.
    assert row['chance'] == pytest.approx(1 / len(counts))
  # Balancing is per property: optimizer and initialization keep different test models.
  assert set(ctx.scored(0)) != set(ctx.scored(1))
  unbalanced = evaluate.make_context(run, zoo.table, zoo.snapshots, balanced=False)
  assert all(unbalanced.n_test(p) == len(test) for p in range(len(run.targets)))


def test_a_given_test_side_keeps_the_first_nets_of_each_class(zoo):
  split = split_lib.split_with_test(np.arange(30), np.arange(30, 40), seed=0)
  run = make_run(zoo, split=split)
  sides = evaluate.balanced_test_sides(run, zoo.table, in_file_order=True)
  # optimizer = row % 3 over rows 30..39: 4, 3, 3 of the classes; the first three of each.
  np.testing.assert_array_equal(sides[0], np.arange(30, 39))
  # initialization = (row // 3) % 4: classes 2 (30-32), 3 (33-35), 0 (36-38), 1 (39).
  np.testing.assert_array_equal(sides[1], [30, 33, 36, 39])
  np.testing.assert_array_equal(sides[2], np.arange(30, 40))  # lrate


# --- 4. the position sweep over the trained part -----------------------------------------------

@pytest.mark.parametrize('part, lo, hi', [('all', 0, 200), ('conv', 0, 80), ('dense', 80, 200)])
def test_positions_cover_only_the_trained_part(zoo, monkeypatch, part, lo, hi):
  requests = []
  monkeypatch.setattr(evaluate, '_outputs',
                      fake_outputs(zoo.snapshots.as_array(), 4, requests))
  ctx = evaluate.make_context(make_run(zoo, part), zoo.table, zoo.snapshots)
  position, boundary = evaluate.evaluate_positions(ctx, num_positions=7)
  expected = np.round(np.linspace(lo, hi - LENGTH, 7))
  assert len(requests) == 7  # one request per position, every test snapshot in it
  for i, (_, _, offsets) in enumerate(requests):
    assert (offsets == expected[i]).all()
  rows = position[position.property == 'optimizer']
  np.testing.assert_allclose(rows.offset, expected)
  np.testing.assert_allclose(rows.fraction, (expected + LENGTH / 2) / 200)
  assert boundary == pytest.approx(0.4)
  if part == 'conv':
    assert (rows.fraction < boundary).all()
  elif part == 'dense':
    assert (rows.fraction > boundary).all()


def test_position_offsets_match_numpys_linspace_per_model():
  lo, hi = np.array([0, 0, 80, 7]), np.array([200, 40, 200, 1000])
  starts = evaluate.position_offsets(lo, hi, 40, 9)
  for i in range(4):
    np.testing.assert_array_equal(starts[i], np.round(np.linspace(lo[i], hi[i] - 40, 9)))


def test_a_run_saved_before_the_failed_record_reads_as_none(tmp_path):
  from nws_jax.meta import store
  (tmp_path / store.RUN_FILE).write_text('{"targets": [], "spec": {}}')
  assert store.read_failed(str(tmp_path)) is None
  (tmp_path / store.RUN_FILE).write_text('{"targets": [], "failed": {"dropped": 3}}')
  assert store.read_failed(str(tmp_path)) == {'dropped': 3}


def test_per_net_batches_hold_one_net_each_with_batch_statistics(zoo):
  # A tiny real run, evaluated with batch statistics (the default): each net's per-net score
  # equals its slices evaluated as a request of their own, i.e. one batch holding that net only.
  config = train.MetaConfig(slice_length=LENGTH, conv_widths=(4, 8), dense_widths=(16,),
                            epochs=1, batch_size=16, first_snapshot=20, last_snapshot=20)
  assert config.bn_eval == 'batch'
  split = split_lib.make_split(np.arange(zoo.num_models), 0)
  targets = targets_lib.make_targets(zoo.table, ['optimizer'], split.train)
  run = train.fit(config, zoo.table, zoo.snapshots, split, targets)
  ctx = evaluate.make_context(run, zoo.table, zoo.snapshots, balanced=False)
  per_net = evaluate.evaluate_per_net(ctx).set_index('model')
  lo, hi = ctx.bounds('all')
  models = ctx.test_models[:3]
  alone = []
  for m in models:
    offsets = evaluate.position_offsets(lo[[m]], hi[[m]], LENGTH, 16)[0]
    out = evaluate._outputs(ctx, np.full(16, m), np.full(16, 19), offsets)
    alone.append(out)
    expected = np.mean(ctx.targets[0].predict(out[0]) == ctx.true[0, m])
    assert per_net.loc[m, 'value'] == pytest.approx(expected)
  # Batch statistics are in effect: the same slices beside another net's come out otherwise.
  offsets = evaluate.position_offsets(lo[models[:2]], hi[models[:2]], LENGTH, 16)[:, :8]
  mixed = evaluate._outputs(ctx, np.repeat(models[:2], 8), np.full(16, 19), offsets.reshape(-1))
  assert not np.allclose(mixed[:, :8], alone[0][:, :8], rtol=1e-3, atol=1e-4)
