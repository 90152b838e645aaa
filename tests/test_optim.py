"""Per-model optimizer selection equals the optimizers run alone (optax references)."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from nws_jax import optim

REFERENCES = {
    optim.ADAM: lambda lr: optax.adam(lr, b1=0.9, b2=0.999, eps=1e-8),
    optim.RMSPROP: lambda lr: optax.rmsprop(lr, decay=0.9, eps=1e-10, initial_scale=1.0),
    optim.MOMENTUM: lambda lr: optax.sgd(lr, momentum=0.95),
}


def grad_fn(params):
  return jax.grad(lambda p: jnp.sum((p['w'] - 3.0) ** 2 * jnp.arange(1.0, 5.0)))(params)


@pytest.mark.parametrize('index', [optim.ADAM, optim.RMSPROP, optim.MOMENTUM])
def test_selected_optimizer_matches_its_reference(index):
  lr = 0.01
  params = {'w': jnp.zeros(4)}
  ref = REFERENCES[index](lr)
  ref_params, ref_state = params, ref.init(params)
  ours, state = params, optim.init(params)
  for _ in range(5):
    updates, ref_state = ref.update(grad_fn(ref_params), ref_state, ref_params)
    ref_params = optax.apply_updates(ref_params, updates)
    ours, state = optim.update(grad_fn(ours), state, ours, jnp.int32(index), jnp.float32(lr))
  np.testing.assert_allclose(ours['w'], ref_params['w'], rtol=1e-5)


def test_vmapped_models_each_follow_their_own_optimizer():
  params = {'w': jnp.zeros((3, 4))}
  state = jax.vmap(optim.init)(params)
  choice = jnp.array([optim.MOMENTUM, optim.ADAM, optim.RMSPROP])
  lrs = jnp.array([0.01, 0.02, 0.03])
  step = jax.jit(jax.vmap(lambda p, s, i, lr: optim.update(grad_fn(p), s, p, i, lr)))
  for _ in range(3):
    params, state = step(params, state, choice, lrs)
  for m in range(3):
    single, s = {'w': jnp.zeros(4)}, optim.init({'w': jnp.zeros(4)})
    for _ in range(3):
      single, s = optim.update(grad_fn(single), s, single, choice[m], lrs[m])
    np.testing.assert_allclose(params['w'][m], single['w'], rtol=1e-5)
