"""The three optimizers of the study, chosen per model as data (PROTOCOL §1 property 5, §3).

One `(init, update)` pair holds the state of all three (Adam moments, RMSProp's mean square,
the momentum trace) and selects the update by a traced index, so a vmapped zoo runs every model's
own optimizer inside one program. The learning rate is a per-model traced scalar, constant over
training: the reference code's ×0.96 staircase decay never advanced (PROTOCOL §3).

Defaults follow TensorFlow 1, which trained the released nets: Adam (0.9, 0.999, eps 1e-8),
RMSProp (decay 0.9, no momentum, eps 1e-10 inside the square root, mean square starting at 1),
momentum SGD (0.95, `accum = 0.95 accum + g; w -= lr accum`). One difference remains: optax
adds Adam's epsilon to the bias-corrected sqrt(v̂), TensorFlow 1 to the uncorrected sqrt(v)
(its "epsilon hat"); they differ only where sqrt(v) is near 1e-8.

Adam's step is written here (state as optax's `ScaleByAdamState`) rather than taken from optax:
optax divides every moment by a per-model bias correction, and XLA rewrites such a division
(into a multiplication by the reciprocal, or merges it with the next one) in some compiled
programs and not in others; the zoo's one-device and many-device programs then differ in the
last bits. Multiplying by the reciprocal of the correction, explicitly, leaves nothing to
rewrite.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax

ADAM, RMSPROP, MOMENTUM = 0, 1, 2
MOMENTUM_DECAY = 0.95

ADAM_B1, ADAM_B2, ADAM_EPS = 0.9, 0.999, 1e-8
_adam = optax.scale_by_adam(b1=ADAM_B1, b2=ADAM_B2, eps=ADAM_EPS)  # its init only
_rms = optax.scale_by_rms(decay=0.9, eps=1e-10, initial_scale=1.0)
_momentum = optax.trace(decay=MOMENTUM_DECAY, nesterov=False)


class OptState(NamedTuple):
  adam: optax.OptState
  rms: optax.OptState
  momentum: optax.OptState


def init(params) -> OptState:
  """Optimizer state for one model's params pytree (about 4× the parameters)."""
  return OptState(_adam.init(params), _rms.init(params), _momentum.init(params))


def update(grads, state: OptState, params, optimizer: jax.Array, lrate: jax.Array):
  """Returns (new params, new state) after one step of optimizer `optimizer` (traced int).

  Only the chosen optimizer's state advances, so a model's trajectory is exactly that of
  training with its optimizer alone.
  """
  upd_adam, s_adam = _adam_update(grads, state.adam)
  upd_rms, s_rms = _rms.update(grads, state.rms)
  upd_mom, s_mom = _momentum.update(grads, state.momentum)

  def pick(i, new, old):
    return jax.tree.map(lambda n, o: jnp.where(optimizer == i, n, o), new, old)

  direction = jax.tree.map(
      lambda a, r, m: jnp.select([optimizer == ADAM, optimizer == RMSPROP], [a, r], m),
      upd_adam, upd_rms, upd_mom)
  new_params = jax.tree.map(lambda p, d: p - lrate * d, params, direction)
  new_state = OptState(pick(ADAM, s_adam, state.adam), pick(RMSPROP, s_rms, state.rms),
                       pick(MOMENTUM, s_mom, state.momentum))
  return new_params, new_state


def _adam_update(grads, state: optax.ScaleByAdamState):
  """optax's `scale_by_adam` step (same state, same values up to rounding), bias corrections
  applied as multiplications by their reciprocals (see the module's docstring)."""
  mu = jax.tree.map(lambda g, m: (1 - ADAM_B1) * g + ADAM_B1 * m, grads, state.mu)
  nu = jax.tree.map(lambda g, v: (1 - ADAM_B2) * (g * g) + ADAM_B2 * v, grads, state.nu)
  count = optax.safe_increment(state.count)
  t = count.astype(jnp.float32)
  inv1, inv2 = 1 / (1 - ADAM_B1 ** t), 1 / (1 - ADAM_B2 ** t)
  updates = jax.tree.map(lambda m, v: (m * inv1) / (jnp.sqrt(v * inv2) + ADAM_EPS), mu, nu)
  return updates, optax.ScaleByAdamState(count=count, mu=mu, nu=nu)
