"""Meta-classifier training: the model, all properties at once, regression, the checkpoint, and
the evaluations, on a synthetic zoo whose weights encode some properties (conftest)."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import nws_jax
from nws_jax.meta import evaluate
from nws_jax.meta import model as model_lib
from nws_jax.meta import split as split_lib
from nws_jax.meta import store
from nws_jax.meta import targets as targets_lib
from nws_jax.meta import train

SMALL = train.MetaConfig(slice_length=40, conv_widths=(4, 8), dense_widths=(16,), epochs=3,
                         batch_size=32, first_snapshot=11, last_snapshot=20, seed=0)


@pytest.fixture(scope='module')
def zoo(synthetic_zoo_dir):
  return nws_jax.load_zoo(synthetic_zoo_dir)


def _fit(zoo, config, names):
  split = split_lib.make_split(np.arange(zoo.num_models), config.seed, config.test_fraction,
                               config.valid_fraction)
  targets = targets_lib.make_targets(zoo.table, names, split.train)
  return train.fit(config, zoo.table, zoo.snapshots, split, targets)


@pytest.fixture(scope='module')
def trained(zoo):
  """Every varying property trained for long enough to learn what the synthetic zoo encodes."""
  config = dataclasses.replace(SMALL, conv_widths=(8, 16), dense_widths=(32,), epochs=40)
  return _fit(zoo, config, targets_lib.varying_properties(zoo.table))


def test_conv1d_equals_a_same_padded_convolution():
  x = jax.random.normal(jax.random.key(0), (3, 17, 2))
  conv = model_lib.Conv1D(5)
  params = conv.init(jax.random.key(1), x)
  kernel, bias = params['params']['kernel'], params['params']['bias']
  expected = jax.lax.conv_general_dilated(x, kernel, (1,), 'SAME',
                                          dimension_numbers=('NWC', 'WIO', 'NWC'),
                                          precision='highest') + bias
  np.testing.assert_allclose(conv.apply(params, x), expected, rtol=1e-5, atol=1e-5)


def test_the_spec_is_the_studys_network_for_the_slice_length(zoo):
  # The network itself is checked against the original in test_meta_model.py.
  targets = targets_lib.make_targets(zoo.table, ['optimizer'], np.arange(zoo.num_models))
  for length, variant, convs in ((5000, 'cnn1D_small', 12), (40_001, 'cnn1D', 15)):
    spec = train.model_spec(train.MetaConfig(slice_length=length, batch_size=32), targets,
                            zoo.table)
    assert (spec.variant, len(spec.conv_widths), spec.bn_eval, spec.batch_size) == (
        variant, convs, 'batch', 32)
    assert spec.dense_widths == model_lib.PROTOCOL_DENSE_WIDTHS
  spec = train.model_spec(dataclasses.replace(SMALL, bn_eval='moving'), targets, zoo.table)
  assert (spec.variant, spec.conv_widths, spec.bn_eval) == ('cnn1D_small', (4, 8), 'moving')


def test_masked_classes_get_no_probability_and_regression_reads_output_zero():
  outputs = jnp.asarray([[3.0, 1.0, 7.0, 9.0]])
  probs, value = train.predictions(outputs, False, 2)
  assert float(probs[0, 2:].sum()) == 0.0 and float(probs[0].sum()) == pytest.approx(1.0)
  loss = train.per_sample_loss(outputs, jnp.asarray([0]), jnp.asarray([2.5]), True, 0)
  assert float(loss[0]) == pytest.approx(0.5)
  ce = train.per_sample_loss(outputs, jnp.asarray([1]), jnp.asarray([0.0]), False, 2)
  assert float(ce[0]) == pytest.approx(np.log(1 + np.exp(2.0)), rel=1e-5)


def test_all_properties_at_once_equal_each_property_alone(zoo):
  # Float tolerance: a stacked program may round differently, and Adam amplifies rounding in
  # near-zero gradients; one Adam step moves a weight by ~1e-3, so a wrong slice, key or target
  # shows far above these tolerances.
  names = ['optimizer', 'lrate', 'initialization']
  together = _fit(zoo, SMALL, names)
  close = lambda p: lambda a, b: np.testing.assert_allclose(a[p], b[0], rtol=1e-3, atol=1e-4)
  for p, name in enumerate(names):
    alone = _fit(zoo, SMALL, [name])
    jax.tree.map(close(p), together.params, alone.params)
    jax.tree.map(close(p), together.batch_stats, alone.batch_stats)
    t = together.history[together.history.property == name]
    np.testing.assert_allclose(t.train_loss, alone.history.train_loss, rtol=1e-4)


def test_training_is_deterministic(zoo):
  a, b = _fit(zoo, SMALL, ['optimizer']), _fit(zoo, SMALL, ['optimizer'])
  jax.tree.map(np.testing.assert_array_equal, a.params, b.params)
  c = _fit(zoo, dataclasses.replace(SMALL, seed=1), ['optimizer'])
  assert not np.array_equal(a.params['fc1']['kernel'], c.params['fc1']['kernel'])


def test_training_reads_only_meta_training_models(zoo):
  # Poison every snapshot of the test and validation models: training must not notice.
  split = split_lib.make_split(np.arange(zoo.num_models), 0)
  poisoned = zoo.snapshots.as_array().copy()
  poisoned[np.concatenate([split.test, split.valid])] = np.nan
  targets = targets_lib.make_targets(zoo.table, ['optimizer'], split.train)
  config = dataclasses.replace(SMALL, valid_fraction=0.1)
  run = train.fit(config, zoo.table, poisoned, split, targets)
  assert np.isfinite(run.history.train_loss).all()
  assert all(np.isfinite(x).all() for x in jax.tree.leaves(run.params))


def test_meta_classifiers_learn_what_the_weights_encode(zoo, trained):
  ctx = evaluate.make_context(trained, zoo.table, zoo.snapshots)
  accuracy, ensemble = evaluate.evaluate_slices(ctx, slices_per_snapshot=8)
  assert list(accuracy.columns) == ['property', 'metric', 'value', 'chance', 'n_test_models']
  row = accuracy.set_index('property')
  for name, margin in (('initialization', 0.3), ('optimizer', 0.2)):
    assert row.loc[name, 'metric'] == 'accuracy'
    assert row.loc[name, 'value'] > row.loc[name, 'chance'] + margin, accuracy
  assert row.loc['dataset', 'value'] < row.loc['dataset', 'chance'] + 0.2  # not in the weights
  assert row.loc['lrate', 'metric'] == 'mae'
  assert row.loc['lrate', 'value'] < 0.5 * row.loc['lrate', 'chance'], accuracy
  # lrate on every test model; a categorical property on its class-balanced part of them.
  assert row.loc['lrate', 'n_test_models'] == len(trained.split.test)
  assert (row['n_test_models'] <= len(trained.split.test)).all()
  ens = ensemble.set_index('property')
  assert ens.loc['initialization', 'mean_prob'] >= ens.loc['initialization', 'single'] - 0.05


def test_regression_is_reported_in_the_propertys_units(zoo, trained):
  ctx = evaluate.make_context(trained, zoo.table, zoo.snapshots)
  accuracy, _ = evaluate.evaluate_slices(ctx, slices_per_snapshot=4)
  mae = accuracy.set_index('property').loc['lrate', 'value']
  assert 1e-5 < mae < 5e-3  # lrate lives in [2e-4, 5e-3]; standardised units would be ~0.1–1


def test_position_evaluation_finds_where_each_property_is_written(zoo, trained):
  ctx = evaluate.make_context(trained, zoo.table, zoo.snapshots)
  position, boundary = evaluate.evaluate_positions(ctx, num_positions=9)
  assert boundary == pytest.approx(80 / 200)
  init = position[position.property == 'initialization']
  assert len(init) == 9 and init.position.tolist() == list(range(9))
  np.testing.assert_allclose(init.offset, np.linspace(0, 160, 9), atol=0.5)
  # The optimizer is written in the dense part only.
  opt = position[position.property == 'optimizer']
  assert opt[opt.fraction > 0.5].value.mean() > opt[opt.fraction < 0.3].value.mean() + 0.2, opt


def test_part_evaluation_and_a_part_shorter_than_a_slice(zoo, trained):
  ctx = evaluate.make_context(trained, zoo.table, zoo.snapshots)
  part = evaluate.evaluate_parts(ctx, slices_per_snapshot=4).set_index(['property', 'part'])
  assert part.loc[('optimizer', 'dense'), 'value'] > part.loc[('optimizer', 'conv'),
                                                             'value'] + 0.2, part
  short = zoo.table.copy()
  short['weightn_conv'], short['weightn_fc'] = 30, 170
  nan_part = evaluate.evaluate_parts(evaluate.make_context(trained, short, zoo.snapshots))
  assert nan_part[nan_part.part == 'conv'].value.isna().all()
  assert nan_part[nan_part.part == 'dense'].value.notna().all()


def test_snapshot_evaluation_covers_every_snapshot(zoo, trained):
  ctx = evaluate.make_context(trained, zoo.table, zoo.snapshots)
  frame = evaluate.evaluate_snapshots(ctx, slices_per_snapshot=2)
  init = frame[frame.property == 'initialization']
  assert init.snapshot.tolist() == list(range(1, 21))
  assert init.trained.tolist() == [False] * 10 + [True] * 10
  assert ((init.value >= 0) & (init.value <= 1)).all()


def test_checkpoint_restores_the_same_predictions(tmp_path, zoo, trained, synthetic_zoo_dir):
  store.save_run(str(tmp_path), trained, {'kind': 'zoo', 'zoo': synthetic_zoo_dir})
  loaded = store.load_run(str(tmp_path))
  assert [t.to_json() for t in loaded.targets] == [t.to_json() for t in trained.targets]
  assert loaded.split.to_json() == trained.split.to_json() and loaded.spec == trained.spec
  jax.tree.map(np.testing.assert_array_equal, loaded.params, trained.params)
  a, _ = evaluate.evaluate_slices(evaluate.make_context(trained, zoo.table, zoo.snapshots), 2)
  b, _ = evaluate.evaluate_slices(evaluate.make_context(loaded, zoo.table, zoo.snapshots), 2)
  assert a.equals(b)


def test_a_damaged_checkpoint_is_a_clear_error(tmp_path, trained, synthetic_zoo_dir):
  store.save_run(str(tmp_path), trained, {'kind': 'zoo', 'zoo': synthetic_zoo_dir})
  import shutil
  shutil.rmtree(tmp_path / store.CHECKPOINT_DIR)
  (tmp_path / store.CHECKPOINT_DIR).mkdir()
  with pytest.raises(store.MetaWorkdirError, match='cannot read'):
    store.load_run(str(tmp_path))


def test_summary_shows_chance_the_baseline_and_the_mae_ratio():
  import pandas as pd
  from nws_jax.meta import pipeline
  accuracy = pd.DataFrame(dict(property=['optimizer', 'lrate'], metric=['accuracy', 'mae'],
                               value=[0.9, 0.001], per_net=[0.8, 0.0012], chance=[0.4, 0.002],
                               n_test_models=[3, 5]))
  baseline = pd.DataFrame(dict(property=['optimizer', 'lrate'], method=['gbt_slice'] * 2,
                               metric=['accuracy', 'mae'], value=[0.7, 0.0015],
                               chance=[0.4, 0.002], n_test_models=[5, 5]))
  empty = pd.DataFrame()
  text = pipeline.summary(pipeline.Results(accuracy, empty, empty, empty, empty, baseline, empty))
  lines = text.splitlines()
  assert lines[0].split() == ['property', 'metric', 'meta', 'per', 'net', 'chance', 'gbt_slice',
                              'test', 'models']
  assert lines[1].split() == ['optimizer', 'accuracy', '0.900', '0.800', '0.400', '0.700', '3']
  assert lines[2].split() == ['lrate', 'mae', '1.00e-03', '1.20e-03', '2.00e-03', '1.50e-03',
                              '5']
  # A run evaluated before per_net existed: n/a in its column.
  old = pipeline.summary(pipeline.Results(accuracy.drop(columns='per_net'), empty, empty, empty,
                                          empty, baseline, empty))
  assert old.splitlines()[1].split()[3] == 'n/a'
  assert 'lrate: MAE / MAE of predicting the training mean = 0.50' in text


def test_one_decoder_gives_training_scores_and_evaluation_predictions():
  """`PropertyTarget.predict` decodes a stack's outputs for both the training loop's scores
  (standardised lrate) and the evaluations (lrate in its own units); heads are padded."""
  cls = targets_lib.PropertyTarget('optimizer', classes=(0, 1, 2))
  reg = targets_lib.PropertyTarget('lrate', mean=0.002, std=0.001)
  outputs = np.array([[[0.1, 0.9, 0.0, 5.0], [2.0, 0.1, 0.3, 5.0], [0.0, 0.0, 1.0, 5.0]],
                      [[0.5, 7.0, 7.0, 7.0], [-1.0, 7.0, 7.0, 7.0], [2.0, 7.0, 7.0, 7.0]]])
  np.testing.assert_array_equal(cls.predict(outputs[0]), [1, 0, 2])  # the pad (5.0) ignored
  np.testing.assert_allclose(reg.predict(outputs[1], standardised=True), [0.5, -1.0, 2.0])
  np.testing.assert_allclose(reg.predict(outputs[1]), [0.0025, 0.001, 0.004])
  np.testing.assert_allclose(cls.probabilities(outputs[0]).sum(-1), 1.0)
  labels = np.array([[1, 1, 2], [0, 0, 0]])
  values = np.array([[0.0] * 3, [0.5, 0.0, 1.0]])
  np.testing.assert_allclose(train.scores(outputs, labels, values, [cls, reg]),
                             [2 / 3, -(0 + 1 + 1) / 3])
  assert targets_lib.score(reg, reg.predict(outputs[1]), np.array([0.0025, 0.001, 0.003])) \
      == pytest.approx(0.001 / 3)
