"""The statistics baseline: slice and layer features, and gradient-boosted trees on synthetic zoos."""

import functools
import math

import numpy as np
import pandas as pd
import pytest
import scipy.stats

from nws_jax import cnn, space
from nws_jax.meta import baseline
from nws_jax.meta import slices as slices_lib
from nws_jax.meta import split as split_lib
from nws_jax.meta import targets as targets_lib

FIXED = cnn.Architecture(**space.FIXED_ARCHITECTURE)
# One OpenMP thread: on a machine whose 2 cores are busy, threads spin-waiting made fits ~50× slower.
run_baseline = functools.partial(baseline.run_baseline, n_threads=1)
SCALES = (0.05, 0.3, 1.0)  # weight std per initialization class in the synthetic zoos


def _feature(features, name):
  return features[:, baseline.SLICE_FEATURES.index(name)]


def _expected_slice_features(x):
  """Reference values for one slice, written out with numpy and scipy."""
  x = np.asarray(x, np.float64)
  q = np.percentile(x, [5, 25, 50, 75, 95])
  return dict(mean=x.mean(), std=x.std(), min=x.min(), max=x.max(), q05=q[0], q25=q[1],
              q50=q[2], q75=q[3], q95=q[4], mean_abs=np.linalg.norm(x, 1) / len(x),
              rms=np.linalg.norm(x) / math.sqrt(len(x)), skewness=scipy.stats.skew(x),
              kurtosis=scipy.stats.kurtosis(x, fisher=True),
              frac_small=np.count_nonzero(np.abs(x) < 1e-3) / len(x))


def test_slice_features_match_direct_numpy_computation():
  slices = np.array([[0.0005, -0.0002, 0.5, -2.0, 3.0, 0.002, 7.5, -0.25],
                     [1.0, 2.0, 3.0, 4.0, 10.0, -1.0, 0.0, 0.5]], np.float32)
  features = baseline.slice_features(slices)
  assert features.shape == (2, len(baseline.SLICE_FEATURES)) and features.dtype == np.float64
  for row in range(2):
    expected = _expected_slice_features(slices[row])
    got = dict(zip(baseline.SLICE_FEATURES, features[row]))
    assert set(got) == set(expected)
    for name in expected:
      np.testing.assert_allclose(got[name], expected[name], rtol=1e-9, atol=1e-12, err_msg=name)


def test_constant_slice_gives_zero_spread_and_no_nan():
  features = baseline.slice_features(np.full((1, 50), 0.25, np.float32))
  assert np.isfinite(features).all()
  for name in ('std', 'skewness', 'kurtosis', 'frac_small'):
    assert _feature(features, name)[0] == 0.0, name
  for name in ('mean', 'min', 'max', 'q05', 'q50', 'q95', 'mean_abs', 'rms'):
    assert _feature(features, name)[0] == pytest.approx(0.25), name


def test_slice_features_same_when_computed_in_row_chunks(monkeypatch):
  slices = np.random.default_rng(0).standard_normal((37, 100)).astype(np.float32)
  whole = baseline.slice_features(slices)
  monkeypatch.setattr(baseline, '_CHUNK_ELEMENTS', 300)  # 3 rows per chunk
  np.testing.assert_array_equal(baseline.slice_features(slices), whole)


def _hand_made_vectors():
  """Two fixed-architecture vectors built from PROTOCOL §4 directly: per layer kernel, bias, then
  (batch norm) beta, gamma, moving mean, moving variance, each segment one constant."""
  constants = {}
  pieces = []
  for i, spec in enumerate(cnn.layer_specs(FIXED)):
    c = dict(kernel=10.0 * (i + 1), bias=-(i + 1.0), beta=0.5 + i, gamma=100.0 + i,
             mean=-50.0 - i, var=1000.0 + i)
    constants[spec.name] = c
    pieces.append(np.full(math.prod(spec.kernel_shape), c['kernel']))
    pieces.append(np.full(spec.kernel_shape[-1], c['bias']))
    if spec.batch_norm:
      for seg in ('beta', 'gamma', 'mean', 'var'):
        pieces.append(np.full(spec.kernel_shape[-1], c[seg]))
  row = np.concatenate(pieces)
  assert len(row) == sum(cnn.weight_counts(FIXED))
  return np.stack([row, 2.0 * row]).astype(np.float32), constants


def test_layer_features_locate_each_layers_segments():
  vectors, constants = _hand_made_vectors()
  features = baseline.layer_features(vectors, FIXED)
  names = baseline.layer_feature_names(FIXED)
  assert features.shape == (2, len(names))
  column = {n: features[:, j] for j, n in enumerate(names)}
  for spec in cnn.layer_specs(FIXED):
    c = constants[spec.name]
    segments = {'kernel': c['kernel'], 'bias': c['bias']}
    if spec.batch_norm:
      segments.update(gamma=c['gamma'], moving_var=c['var'])
    else:
      assert f'{spec.name}/gamma/mean' not in column
    for seg, value in segments.items():
      # A segment bound off by one would mix in a neighbour's constant: std > 0, shifted mean.
      np.testing.assert_array_equal(column[f'{spec.name}/{seg}/std'], [0.0, 0.0])
      for stat in ('mean', 'q10', 'q50', 'q90'):
        np.testing.assert_allclose(column[f'{spec.name}/{seg}/{stat}'], [value, 2 * value],
                                   err_msg=f'{spec.name}/{seg}/{stat}')
      np.testing.assert_allclose(column[f'{spec.name}/{seg}/mean_abs'],
                                 [abs(value), 2 * abs(value)])


def test_layer_features_reject_a_vector_of_the_wrong_length():
  with pytest.raises(ValueError, match='needs'):
    baseline.layer_features(np.zeros((1, 1000), np.float32), FIXED)


def _zoo(num_models, num_snapshots, weightn, num_init_classes, seed=0):
  """A synthetic zoo: the initialization class scales the weights' std (SCALES), the learning
  rate shifts their mean (lrate · 200, so 0.04 to 1.0). Returns (table, snapshots)."""
  rng = np.random.default_rng(seed)
  init = np.arange(num_models) % num_init_classes
  lrate = rng.uniform(*space.LRATE_RANGE, num_models)
  table = pd.DataFrame(dict(
      dataset='gratings', lrate=lrate, batch_size=64, batch_norm=True, augmentation=False,
      optimizer=0, activation=0, initialization=init, **space.FIXED_ARCHITECTURE,
      weightn_conv=weightn[0], weightn_fc=weightn[1]))
  n = sum(weightn)
  snapshots = rng.standard_normal((num_models, num_snapshots, n), np.float32)
  snapshots *= np.asarray(SCALES, np.float32)[init][:, None, None]
  snapshots += (200.0 * lrate).astype(np.float32)[:, None, None]
  return table, snapshots


def _setup(table, split, names=('lrate', 'initialization')):
  train = np.concatenate([split.train, split.valid])
  return targets_lib.make_targets(table, names, train)


SMALL_SPEC = slices_lib.SliceSpec(length=200, part='all', first_snapshot=11, last_snapshot=20)


@pytest.fixture(scope='module')
def small_zoo():
  table, snapshots = _zoo(40, 20, (300, 700), 3)
  split = split_lib.make_split(np.arange(40), seed=0)
  targets = _setup(table, split)
  frame = run_baseline(table, snapshots, split, targets, SMALL_SPEC, max_iter=50)
  return table, snapshots, split, targets, frame


def test_result_has_exactly_the_specified_columns(small_zoo):
  *_, frame = small_zoo
  assert list(frame.columns) == ['property', 'method', 'metric', 'value', 'chance',
                                 'n_test_models']


def test_fake_layout_gives_one_gbt_slice_row_per_property(small_zoo):
  table, _, split, targets, frame = small_zoo
  assert list(frame['property']) == ['lrate', 'initialization']
  assert set(frame['method']) == {'gbt_slice'}  # 300 + 700 weights: not the architecture's
  assert list(frame['metric']) == ['mae', 'accuracy']
  assert (frame['n_test_models'] == len(split.test)).all()
  train = np.concatenate([split.train, split.valid])
  for t, chance in zip(targets, frame['chance']):
    assert chance == targets_lib.chance(t, table, train, split.test)


def test_gbt_slice_recovers_an_encoded_class_well_above_chance(small_zoo):
  *_, frame = small_zoo
  row = frame[frame['property'] == 'initialization'].iloc[0]
  assert row['value'] > 0.9 > row['chance'] + 0.3


def test_gbt_slice_regresses_lrate_below_chance_in_its_units(small_zoo):
  *_, frame = small_zoo
  row = frame[frame['property'] == 'lrate'].iloc[0]
  assert row['metric'] == 'mae'
  # MAE in lrate units (the chance MAE is about 1e-3); standardised units would be far larger.
  assert row['value'] < 0.5 * row['chance'] < 1e-3


def test_same_seed_gives_the_same_frame_and_another_seed_other_slices(small_zoo):
  table, snapshots, split, targets, _ = small_zoo
  run = lambda seed: run_baseline(table, snapshots, split, targets, SMALL_SPEC,
                                           slices_per_snapshot=2, seed=seed, max_iter=20)
  first = run(0)
  pd.testing.assert_frame_equal(first, run(0))
  assert run(1)['value'].iloc[0] != first['value'].iloc[0]  # the lrate MAE


def test_a_class_missing_from_training_is_never_predicted_others_map_back(small_zoo):
  table, snapshots, _, _, _ = small_zoo
  init = table['initialization'].to_numpy()
  # Class 0 only among the test models: the trees see labels 1 and 2 and must return them as such.
  test = np.sort(np.concatenate([np.flatnonzero(init == 0), np.arange(1, 40, 5)]))
  train = np.setdiff1d(np.arange(40), test)
  split = split_lib.ModelSplit(train, np.zeros(0, np.int64), test)
  targets = _setup(table, split, ['initialization'])
  assert targets[0].classes == (0, 1, 2)
  frame = run_baseline(table, snapshots, split, targets, SMALL_SPEC, max_iter=30)
  seen = np.mean(init[test] != 0)
  assert seen - 0.1 < frame['value'].iloc[0] <= seen


LAYER_SPEC = slices_lib.SliceSpec(length=5000, part='all', first_snapshot=1, last_snapshot=2)


@pytest.fixture(scope='module')
def real_layout_zoo():
  """24 models whose vectors have the fixed architecture's true length, 2 snapshots each."""
  table, snapshots = _zoo(24, 2, cnn.weight_counts(FIXED), 2, seed=1)
  split = split_lib.make_split(np.arange(24), seed=0)
  return table, snapshots, split, _setup(table, split, ['initialization'])


def test_gbt_layers_scored_when_every_model_shares_the_architecture(real_layout_zoo):
  table, snapshots, split, targets = real_layout_zoo
  frame = run_baseline(table, snapshots, split, targets, LAYER_SPEC,
                                slices_per_snapshot=1, max_iter=20)
  assert list(frame['method']) == ['gbt_slice', 'gbt_layers']
  row = frame[frame['method'] == 'gbt_layers'].iloc[0]
  assert row['value'] == 1.0 > row['chance']
  assert row['n_test_models'] == len(split.test)


def test_mixed_architectures_give_no_gbt_layers_rows(real_layout_zoo):
  table, snapshots, split, targets = real_layout_zoo
  table = table.copy()
  table.loc[10:15, 'width_fc'] = 64  # row 0 keeps the fixed architecture
  frame = run_baseline(table, snapshots, split, targets, LAYER_SPEC,
                                slices_per_snapshot=1, max_iter=20)
  assert list(frame['method']) == ['gbt_slice']
