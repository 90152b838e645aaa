"""The meta-classifier is the study's network (PROTOCOL §5, §7; the original's model.py).

The layouts and variable counts are derived here, independently of nws_jax/meta/model.py, by
walking the original's cnn1D_small and cnn1D as its code reads, and compared with the module's
shapes (jax.eval_shape: nothing of the 10M-variable nets is compiled or run). The rest is fast:
initialisers, batch norm, and how train.outputs_at batches its rows.
"""

import dataclasses
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd
import pytest

import nws_jax
from nws_jax.meta import model as model_lib
from nws_jax.meta import split as split_lib
from nws_jax.meta import store
from nws_jax.meta import targets as targets_lib
from nws_jax.meta import train

DENSE = (1024, 1024, 1024, 1024, 64)


# --- the original, walked in plain Python ------------------------------------------------------
# Each entry (kind, width, length in, length out); a pool is max_pooling1d(2, 2, 'VALID').

def _walk():
  layers, state = [], {'L': None, 'w': 1}

  def conv(w):
    layers.append(('conv', w, state['L'], state['L']))  # SAME, stride 1
    state['w'] = w

  def pool():
    layers.append(('pool', state['w'], state['L'], state['L'] // 2))
    state['L'] //= 2

  return layers, state, conv, pool


def original_small(length):
  """model.cnn1D_small, line by line."""
  layers, state, conv, pool = _walk()
  state['L'] = length
  conv(8); pool()                      # conv11, pool1
  conv(16); pool()                     # conv21, pool2
  conv(32); conv(64); pool()           # conv31, conv32, pool3
  conv(128); conv(256)                 # conv41, conv42
  for _ in [5, 6, 7, 8, 9, 10]:
    if state['L'] > 50:
      pool()                           # pool4 ... while sz[1] > 50
    conv(256)                          # conv51 ... conv101
  pool()                               # pool_final
  return layers


def original_deep(length):
  """model.cnn1D, line by line."""
  layers, state, conv, pool = _walk()
  state['L'] = length
  for w in (8, 16, 32, 64, 128):       # conv11..conv51, pool1..pool5
    conv(w); pool()
  for _ in range(4):                   # conv61..conv91, pool6..pool9
    conv(128); pool()
  conv(128); conv(256); pool()         # conv101, conv102, pool10
  conv(256); conv(256); pool()         # conv111, conv112, pool11
  conv(256); conv(256); pool()         # conv121, conv122, pool12
  return layers


def small_rule(length, widths):
  """The rule for any conv widths: pools after conv 1, 2, 4; before each conv past the 6th
  while the length is above 50; a final pool."""
  layers, state, conv, pool = _walk()
  state['L'] = length
  for i, w in enumerate(widths, 1):
    if i > 6 and state['L'] > 50:
      pool()
    conv(w)
    if i in (1, 2, 4):
      pool()
  pool()
  return layers


def variables_of(conv_layers, dense, outputs):
  """Parameters and batch-norm moving statistics, as TensorFlow's global variables: a conv
  kernel 5·in·out + bias; batch norm beta, gamma, moving mean, moving variance (4 per unit); a
  dense layer in·out + bias + 4 per unit; the output layer in·out + bias."""
  n, width = 0, 1
  for kind, w, _, _ in conv_layers:
    if kind == 'conv':
      n += 5 * width * w + w + 4 * w
      width = w
  flat = conv_layers[-1][3] * width
  for w in dense:
    n += flat * w + w + 4 * w
    flat = w
  return n + flat * outputs + outputs


# --- the implementation's shapes ----------------------------------------------------------------

def implementation_layers(spec):
  """(conv layers [(width, length)], flattened length) from the module's abstract shapes."""
  module = spec.module()
  x = jax.ShapeDtypeStruct((2, spec.slice_length), jnp.float32)
  variables = jax.eval_shape(lambda x: module.init(jax.random.key(0), x, train=False), x)
  _, captured = jax.eval_shape(lambda v, x: module.apply(
      v, x, train=False, capture_intermediates=True, mutable=['intermediates']), variables, x)
  inter = captured['intermediates']
  convs = []
  for i in range(1, len(spec.conv_widths) + 1):
    out = inter[f'conv{i}']['__call__'][0]
    kernel = variables['params'][f'conv{i}']['kernel']
    assert kernel.shape[0] == 5 and out.shape[-1] == kernel.shape[-1]
    convs.append((kernel.shape[-1], out.shape[1]))
  flat = variables['params']['fc1']['kernel'].shape[0]
  return convs, flat, variables


def _spec(length, outputs=7, conv=None, dense=DENSE):
  variant = model_lib.variant_for(length)
  return model_lib.ModelSpec(length, conv or model_lib.conv_widths_for(length), dense, outputs,
                             variant)


@pytest.mark.parametrize('length', [500, 5000, 40_001])
def test_layers_and_variable_count_match_the_original(length):
  expected = original_deep(length) if length > 40_000 else original_small(length)
  spec = _spec(length)
  assert spec.variant == ('cnn1D' if length > 40_000 else 'cnn1D_small')
  assert [tuple(dataclasses.astuple(l)) for l in spec.layers()] == expected + [
      ('dense', w, 1, 1) for w in DENSE] + [('output', 7, 1, 1)]
  convs, flat, variables = implementation_layers(spec)
  assert convs == [(w, lin) for kind, w, lin, _ in expected if kind == 'conv']
  assert flat == expected[-1][3] * expected[-1][1]
  assert len(convs) == (15 if length > 40_000 else 12)
  # Dense part: kernels and their batch norms.
  for i, w in enumerate(DENSE, 1):
    assert variables['params'][f'fc{i}']['kernel'].shape[-1] == w
    assert variables['batch_stats'][f'fc{i}_bn']['mean'].shape == (w,)
  assert variables['params']['fc_final']['kernel'].shape == (64, 7)
  assert 'fc_final_bn' not in variables['params']
  count = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(variables))
  assert count == spec.variable_count() == variables_of(expected, DENSE, 7)


@pytest.mark.parametrize('outputs', [1, 4, 7])
def test_5000_weight_slices_give_the_originals_model_size(outputs):
  assert _spec(5000, outputs).variable_count() == 10_407_360 + 65 * outputs


@pytest.mark.parametrize('length,widths', [(500, (8, 16, 32, 32, 32, 32)), (40, (4, 8)),
                                           (200, (8, 16, 16, 16)), (64, (4,)),
                                           (5000, (8, 16, 32, 32, 32, 32, 32, 32, 32))])
def test_custom_conv_widths_keep_the_small_variants_pooling(length, widths):
  assert small_rule(5000, model_lib.SMALL_CONV_WIDTHS) == original_small(5000)
  spec = _spec(length, conv=widths, dense=(256, 64))
  expected = small_rule(length, widths)
  convs, flat, _ = implementation_layers(spec)
  assert convs == [(w, lin) for kind, w, lin, _ in expected if kind == 'conv']
  assert flat == expected[-1][3] * widths[-1]
  assert spec.variable_count() == variables_of(expected, (256, 64), 7)


def test_layouts_that_cannot_be_built_are_refused():
  with pytest.raises(ValueError, match='cnn1D meta-classifier .* has 15 conv layers; '
                                       'conv_widths gives 6'):
    train.MetaConfig(slice_length=40_001, conv_widths=(8, 16, 32, 32, 32, 32)).validate()
  with pytest.raises(ValueError, match='too short'):
    train.MetaConfig(slice_length=15).validate()  # 4 pools: 15 -> 0
  train.MetaConfig(slice_length=16).validate()
  with pytest.raises(ValueError, match='bn_eval'):
    train.MetaConfig(bn_eval='running').validate()
  assert train.MetaConfig().variant_used == 'cnn1D_small'
  assert train.MetaConfig().bn_eval == 'batch'


def test_initialisers_are_tf1_glorot_normal_and_tensorlayer_batch_norm():
  spec = model_lib.ModelSpec(64, (8, 16, 32, 64, 128, 256), (1024, 1024), 3)
  variables = spec.module().init(jax.random.key(3), jnp.zeros((1, 64)), train=False)
  params = variables['params']
  for kernel, (fan_in, fan_out) in ((params['conv6']['kernel'], (5 * 128, 5 * 256)),
                                    (params['fc2']['kernel'], (1024, 1024))):
    target = np.sqrt(2 / (fan_in + fan_out))
    k = np.asarray(kernel)
    assert k.std() == pytest.approx(target, rel=0.02)
    assert abs(k.mean()) < target * 0.01
    bound = 2 * target / 0.87962566103423978  # truncated at 2 std of the untruncated normal
    assert np.abs(k).max() <= bound * (1 + 1e-6) and np.abs(k).max() > 0.98 * bound
  biases = [np.asarray(v['bias']) for k, v in params.items() if not k.endswith('_bn')]
  assert all((b == 0).all() for b in biases)
  gammas = np.concatenate([np.asarray(v['scale']) for k, v in params.items()
                           if k.endswith('_bn')])
  betas = np.concatenate([np.asarray(v['bias']) for k, v in params.items() if k.endswith('_bn')])
  assert gammas.size == 8 + 16 + 32 + 64 + 128 + 256 + 2048
  assert gammas.mean() == pytest.approx(1.0, abs=3e-4)
  assert gammas.std() == pytest.approx(0.002, rel=0.1)
  assert (betas == 0).all()
  stats = variables['batch_stats']
  assert all((np.asarray(v['mean']) == 0).all() and (np.asarray(v['var']) == 1).all()
             for v in stats.values())


def test_batch_norm_is_tensorlayers():
  x = jax.random.normal(jax.random.key(0), (6, 5, 3)) * 3 + 2
  bn = model_lib.BatchNorm()
  v = bn.init(jax.random.key(1), x, batch_statistics=True, update=False)
  out, new = bn.apply(v, x, batch_statistics=True, update=True, mutable=['batch_stats'])
  mean, var = x.mean((0, 1)), x.var((0, 1))  # biased
  g, b = v['params']['scale'], v['params']['bias']
  np.testing.assert_allclose(out, (x - mean) / np.sqrt(var + 1e-5) * g + b, rtol=1e-4,
                             atol=1e-5)
  np.testing.assert_allclose(new['batch_stats']['mean'], 0.1 * mean, rtol=1e-5)
  np.testing.assert_allclose(new['batch_stats']['var'], 0.9 + 0.1 * var, rtol=1e-5)
  moving = bn.apply(dict(v, **new), x, batch_statistics=False, update=False)
  m, s = new['batch_stats']['mean'], new['batch_stats']['var']
  np.testing.assert_allclose(moving, (x - m) / np.sqrt(s + 1e-5) * g + b, rtol=1e-4, atol=1e-5)


# --- evaluation batches -------------------------------------------------------------------------

class _Reader:
  """A host reader over snapshots [models, S, n] (what outputs_at calls of a Release)."""

  def __init__(self, data):
    self.data = data

  def read(self, models, snaps, offsets, length):
    return np.stack([self.data[m, s, o:o + length] for m, s, o in zip(models, snaps, offsets)])


def _small(bn_eval, batch_size=4):
  spec = model_lib.ModelSpec(40, (4, 8), (16,), 3, bn_eval=bn_eval, batch_size=batch_size)
  keys = train.member_keys_for(0, jnp.asarray([0, 5]))
  state = train.init_members(keys, spec=spec, learning_rate=1e-3)
  # Moving statistics away from 0 / 1, so that 'moving' differs from fresh batch statistics.
  stats = jax.tree.map(lambda s: s + 0.3, state['batch_stats'])
  data = np.random.default_rng(0).normal(size=(12, 2, 60)).astype(np.float32)
  return spec, state['params'], stats, _Reader(data)


def _at(spec, params, stats, reader, rows):
  rows = np.asarray(rows)
  return train.outputs_at(params, stats, spec, reader, rows, rows % 2, rows % 7)


def _direct(spec, params, stats, reader, rows):
  """Each member applied to the slices of `rows` as one batch, in the given mode."""
  rows = np.asarray(rows)
  x = jnp.asarray(reader.read(rows, rows % 2, rows % 7, spec.slice_length))
  module = spec.module()
  return np.stack([np.asarray(module.apply(
      {'params': jax.tree.map(lambda a: a[p], params),
       'batch_stats': jax.tree.map(lambda a: a[p], stats)}, x, train=False)) for p in range(2)])


def test_batch_mode_outputs_depend_on_the_batch_and_moving_mode_not():
  for mode in ('batch', 'moving'):
    spec, params, stats, reader = _small(mode)
    a = _at(spec, params, stats, reader, [0, 1, 2, 3])
    b = _at(spec, params, stats, reader, [0, 7, 8, 9])
    c = _at(spec, params, stats, reader, [5, 6, 0, 1, 2, 3])  # row 0 in another batch
    same = np.allclose(a[:, 0], b[:, 0], atol=1e-5) and np.allclose(a[:, :4], c[:, 2:], atol=1e-5)
    assert same == (mode == 'moving'), mode
    np.testing.assert_allclose(a, _direct(spec, params, stats, reader, [0, 1, 2, 3]),
                               rtol=1e-4, atol=1e-5)


def test_outputs_at_evaluates_blocks_of_batch_size_and_wraps_the_last(monkeypatch):
  monkeypatch.setattr(train, 'EVAL_CHUNK', 8)  # two batches of 4 per call: calls are padded
  spec, params, stats, reader = _small('batch')
  assert train.eval_rows_per_call(spec) == 8
  request = np.asarray([11, 3, 4, 9, 0, 2, 10, 5, 6, 1])
  np.testing.assert_array_equal(train.eval_rows(10, spec),
                                [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 0, 1])
  out = _at(spec, params, stats, reader, request)
  assert out.shape == (2, 10, 3)
  for block in ([11, 3, 4, 9], [0, 2, 10, 5]):
    i = list(request).index(block[0])
    np.testing.assert_allclose(out[:, i:i + 4], _direct(spec, params, stats, reader, block),
                               rtol=1e-4, atol=1e-5)
  # The last block: rows 8, 9 completed by rows 0, 1 of the request, whose outputs are dropped.
  last = _direct(spec, params, stats, reader, [6, 1, 11, 3])
  np.testing.assert_allclose(out[:, 8:], last[:, :2], rtol=1e-4, atol=1e-5)
  # A request shorter than a batch wraps around itself.
  short = _at(spec, params, stats, reader, [4, 9])
  np.testing.assert_allclose(short, _direct(spec, params, stats, reader, [4, 9, 4, 9])[:, :2],
                             rtol=1e-3, atol=1e-4)  # 2 distinct rows: small variances


# --- the run's description ----------------------------------------------------------------------

@pytest.fixture(scope='module')
def zoo(synthetic_zoo_dir):
  return nws_jax.load_zoo(synthetic_zoo_dir)


def _untrained_run(zoo, config):
  split = split_lib.make_split(np.arange(zoo.num_models), 0, 0.2, 0.1)
  targets = targets_lib.make_targets(zoo.table, ['optimizer', 'lrate'], split.train)
  spec = train.model_spec(config, targets, zoo.table)
  state = train.init_members(train.member_keys_for(config.seed, jnp.asarray(
      [t.code for t in targets])), spec=spec, learning_rate=config.learning_rate)
  return train.MetaRun(config, targets, split, spec, state['params'], state['batch_stats'],
                       pd.DataFrame(dict(epoch=[1], property=['optimizer'], train_loss=[1.0],
                                         valid_score=[0.5])))


def test_run_json_records_the_variant_bn_eval_and_the_variable_count(tmp_path, zoo):
  config = train.MetaConfig(slice_length=40, conv_widths=(4, 8), dense_widths=(16,),
                            batch_size=8)
  run = _untrained_run(zoo, config)
  store.save_run(str(tmp_path), run, {'kind': 'zoo', 'zoo': 'somewhere'})
  with open(tmp_path / store.RUN_FILE) as f:
    saved = json.load(f)
  assert saved['spec']['variant'] == 'cnn1D_small' and saved['spec']['bn_eval'] == 'batch'
  assert saved['spec']['batch_size'] == 8
  assert saved[store.VARIABLE_COUNT] == run.spec.variable_count()
  leaves = jax.tree.leaves((run.params, run.batch_stats))
  assert saved[store.VARIABLE_COUNT] * 2 == sum(x.size for x in leaves)  # two members
  loaded = store.load_run(str(tmp_path))
  assert loaded.spec == run.spec


def test_a_run_saved_before_the_study_network_loads_as_the_legacy_one(tmp_path, zoo):
  config = train.MetaConfig(slice_length=40, conv_widths=(4, 8), dense_widths=(16,),
                            batch_size=8, variant='legacy_6layer', bn_eval='moving')
  run = _untrained_run(zoo, config)
  store.save_run(str(tmp_path), run, {'kind': 'zoo', 'zoo': 'somewhere'})
  # As the files were written then: no bn_eval, variant, batch_size or count.
  for name, strip in ((store.CONFIG_FILE, lambda d: [d['meta'].pop(k) for k in
                                                    ('bn_eval', 'variant')]),
                      (store.RUN_FILE, lambda d: [d.pop(store.VARIABLE_COUNT)] + [
                          d['spec'].pop(k) for k in ('variant', 'bn_eval', 'batch_size')])):
    path = os.path.join(tmp_path, name)
    with open(path) as f:
      saved = json.load(f)
    strip(saved)
    with open(path, 'w') as f:
      json.dump(saved, f)
  loaded = store.load_run(str(tmp_path))
  assert loaded.spec == run.spec
  assert loaded.spec.variant == 'legacy_6layer' and loaded.spec.bn_eval == 'moving'
  assert loaded.config.bn_eval == 'moving' and loaded.config.variant == 'legacy_6layer'
  for a, b in zip(jax.tree.leaves(loaded.params), jax.tree.leaves(run.params)):
    np.testing.assert_array_equal(a, b)
