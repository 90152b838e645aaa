"""Padded packing (issue 7): a model padded into a bigger architecture of its layer structure
is the same model as run unpadded: initial weights and statistics, outputs, gradients, trained
snapshots."""

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from nws_jax import cnn
from nws_jax import input_pipeline
from nws_jax import packing
from nws_jax import space
from nws_jax.zoo import trainer as trainer_lib

# (own, padded): every padded dimension, each conv layout, a padded first dense layer.
PAIRS = [
    (cnn.Architecture(3, 3, 2, 4, 64), cnn.Architecture(7, 3, 2, 12, 192)),
    (cnn.Architecture(5, 4, 3, 8, 128), cnn.Architecture(7, 4, 3, 12, 128)),
    (cnn.Architecture(3, 5, 4, 12, 64), cnn.Architecture(5, 5, 4, 12, 192)),
]


@jax.jit
def _uniform(key):
  return jax.random.uniform(key, (8, 32, 32, 3))


def _own_init(key, arch, initialization):
  return jax.jit(cnn.init, static_argnums=1)(key, arch, jnp.int32(initialization))


def _padded_init(key, layout, initialization, arch):
  return jax.jit(packing.init, static_argnums=3)(key, layout, jnp.int32(initialization), arch)


def _flatten(params, stats, layout, arch):
  return jax.jit(packing.flatten, static_argnums=3)(params, stats, layout, arch)


def _own_flatten(params, stats, arch):
  return jax.jit(cnn.flatten, static_argnums=2)(params, stats, arch)


def _masks(layout, arch):
  return jax.jit(packing.param_masks, static_argnums=1)(layout, arch)


@pytest.mark.parametrize('own,padded', PAIRS, ids=str)
def test_padded_init_is_the_own_init_surrounded_by_zeros(own, padded):
  layout = packing.model_layout(own, padded)
  n = sum(cnn.weight_counts(own))
  assert int(layout.length) == n
  key = jax.random.PRNGKey(4)
  for initialization in range(4):
    p0, s0 = _own_init(key, own, initialization)
    p1, s1 = _padded_init(key, layout, initialization, padded)
    vector = np.asarray(_flatten(p1, s1, layout, padded))
    assert vector.shape == (sum(cnn.weight_counts(padded)),)
    np.testing.assert_array_equal(vector[:n], np.asarray(_own_flatten(p0, s0, own)))
    assert not vector[n:].any()
    # Zero outside the model's own weights: the masks cover exactly its weight count.
    masks = _masks(layout, padded)
    for name, layer in p1.items():
      for leaf, value in layer.items():
        assert not np.asarray(value)[np.asarray(masks[name][leaf]) == 0].any(), (name, leaf)
    kept = sum(int(np.asarray(m).sum()) for layer in masks.values() for m in layer.values())
    stat_count = sum(2 * s.units for s in cnn.layer_specs(own) if s.batch_norm)
    assert kept + stat_count == n


def test_a_model_in_its_own_architecture_is_bit_identical_to_cnn():
  arch = cnn.Architecture()
  layout = packing.model_layout(arch, arch)
  key = jax.random.PRNGKey(0)
  p0, s0 = _own_init(key, arch, 3)
  p1, s1 = _padded_init(key, layout, 3, arch)
  jax.tree.map(np.testing.assert_array_equal, (p0, s0), (p1, s1))
  images, drop = _uniform(jax.random.PRNGKey(1)), jax.random.PRNGKey(2)
  own = jax.jit(cnn.apply, static_argnames=('arch', 'train'))(
      p0, s0, images, jnp.int32(1), arch=arch, train=True, dropout_key=drop)
  pad = jax.jit(packing.apply, static_argnames=('arch', 'train'))(
      p1, s1, images, jnp.int32(1), layout, arch=arch, train=True, dropout_key=drop)
  jax.tree.map(np.testing.assert_array_equal, own, pad)


@functools.lru_cache(maxsize=None)
def _loss_and_grad(arch, train, padded):
  """Jitted (loss, (logits, new stats)), grads of a model of `arch` (padded: through
  `packing.apply` with a layout argument)."""

  def loss(params, stats, images, activation, key, layout):
    labels = jnp.arange(images.shape[0]) % 10
    if padded:
      logits, new = packing.apply(params, stats, images, activation, layout, arch=arch,
                                  train=train, dropout_key=key)
    else:
      logits, new = cnn.apply(params, stats, images, activation, arch=arch, train=train,
                              dropout_key=key)
    return cnn.cross_entropy(logits, labels), (logits, new)

  return jax.jit(jax.value_and_grad(loss, has_aux=True))


@pytest.mark.parametrize('own,padded,modes', [(*PAIRS[0], (True, False)),
                                              (*PAIRS[1], (True,))], ids=str)
def test_padded_outputs_gradients_and_statistics_equal_the_unpadded_model(own, padded, modes):
  layout = packing.model_layout(own, padded)
  key = jax.random.PRNGKey(7)
  p0, s0 = _own_init(key, own, 2)
  p1, s1 = _padded_init(key, layout, 2, padded)
  images, drop = _uniform(jax.random.PRNGKey(8)), jax.random.PRNGKey(9)
  masks = _masks(layout, padded)
  for train in modes:
    for activation in range(4):
      act = jnp.int32(activation)
      (l0, (logits0, new0)), g0 = _loss_and_grad(own, train, False)(p0, s0, images, act, drop,
                                                                    None)
      (l1, (logits1, new1)), g1 = _loss_and_grad(padded, train, True)(p1, s1, images, act,
                                                                      drop, layout)
      scale = float(jnp.abs(logits0).max())
      np.testing.assert_allclose(logits1, logits0, rtol=0, atol=2e-5 * scale)
      np.testing.assert_allclose(l1, l0, rtol=1e-5)
      # Gradients and new statistics, written in the snapshot layout (the gradient pytree in
      # the place of the parameters).
      g1 = jax.tree.map(jnp.multiply, g1, masks)
      v0 = np.asarray(_own_flatten(g0, new0, own))
      v1 = np.asarray(_flatten(g1, new1, layout, padded))
      np.testing.assert_allclose(v1[:v0.size], v0, rtol=0, atol=1e-4 * np.abs(v0).max())
      assert not v1[v0.size:].any()


def test_layout_refuses_an_architecture_that_does_not_fit():
  with pytest.raises(ValueError, match='does not fit'):
    packing.model_layout(cnn.Architecture(7, 3, 2, 8, 128), cnn.Architecture(5, 3, 2, 8, 128))
  with pytest.raises(ValueError, match='does not fit'):
    packing.model_layout(cnn.Architecture(5, 4, 2, 8, 128), cnn.Architecture(5, 3, 2, 8, 128))
  with pytest.raises(ValueError, match='one conv depth'):
    packing.bucket_arch([cnn.Architecture(5, 4, 2, 8, 128), cnn.Architecture(5, 3, 2, 8, 128)])
  with pytest.raises(ValueError, match='unknown packing'):
    packing.bucket_key(cnn.Architecture(), 'tight')


def test_bucket_is_the_largest_of_each_padded_dimension():
  archs = [cnn.Architecture(3, 4, 3, 12, 64), cnn.Architecture(7, 4, 3, 4, 128),
           cnn.Architecture(5, 4, 3, 8, 192)]
  assert packing.bucket_arch(archs) == cnn.Architecture(7, 4, 3, 12, 192)
  assert len({packing.bucket_key(a, 'depth') for a in archs}) == 1
  assert len({packing.bucket_key(a, 'conv') for a in archs}) == 3
  assert len({packing.bucket_key(a, 'exact') for a in archs}) == 3
  assert packing.bucket_key(archs[0], 'conv') == packing.bucket_key(
      dataclasses.replace(archs[0], width_fc=192), 'conv')


def test_padded_packing_needs_position_wise_random_draws():
  previous = jax.config.jax_threefry_partitionable
  jax.config.update('jax_threefry_partitionable', False)
  try:
    with pytest.raises(RuntimeError, match='partitionable'):
      packing.check_random_draws()
  finally:
    jax.config.update('jax_threefry_partitionable', previous)
  packing.check_random_draws()


BASE = space.ModelConfig(dataset='gratings', lrate=0.002, batch_size=32, batch_norm=True,
                         augmentation=False, optimizer=1, activation=2, initialization=2,
                         filter_size=3, depth_conv=3, depth_fc=2, width_conv=12, width_fc=64)
# One layer structure, padded to (7, 3, 2, 12, 192) together: RMSProp with sigmoid (padded
# units are 0.5 after it) and momentum with ELU and augmentation.
CONFIGS = [BASE, dataclasses.replace(BASE, optimizer=2, activation=1, augmentation=True,
                                     dataset='shapes', filter_size=7, width_conv=4,
                                     width_fc=192, initialization=3)]


def test_a_padded_zoo_trains_each_model_as_its_own_architecture(tiny_datasets):
  data = input_pipeline.stack(tiny_datasets)
  sizes = [input_pipeline.balanced_size(d.train_labels) for d in tiny_datasets]
  runs = {}
  for pack in ('depth', 'exact'):
    cfg = trainer_lib.TrainConfig(seed=3, packing=pack)
    trainer = trainer_lib.ZooTrainer(CONFIGS, [0, 1], data, ('gratings', 'shapes'), sizes, cfg)
    state = trainer.init_state()
    initial = trainer.export(state)
    state, _ = trainer.run_epoch(state, 1, np.ones(2, bool))
    runs[pack] = (trainer, initial, trainer.export(state), trainer.evaluate(state)[0])
  padded, exact = runs['depth'], runs['exact']
  assert len(padded[0].groups) == 1 and len(exact[0].groups) == 2
  assert padded[0].groups[0].arch == cnn.Architecture(7, 3, 2, 12, 192)

  def vectors(run):
    trainer, *exports = run[:3]
    out = []
    for export in exports:
      rows = {}
      for weights, members in zip(export, trainer.export_rows()):
        for row, m in enumerate(members):
          rows[m] = np.asarray(weights[row, :trainer.lengths[m]])
      out.append([rows[m] for m in range(2)])
    return out

  (init_p, final_p), (init_e, final_e) = vectors(padded), vectors(exact)
  for m in range(2):
    np.testing.assert_array_equal(init_p[m], init_e[m])
    assert not np.array_equal(final_e[m], init_e[m])
    np.testing.assert_allclose(final_p[m], final_e[m], rtol=0,
                               atol=1e-4 * np.abs(final_e[m]).max())
  np.testing.assert_allclose(padded[3], exact[3], atol=0.02)
