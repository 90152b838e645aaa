"""One model's training step, written for a single model and lifted with `jax.vmap` by the zoo.

`ModelState` and `Hyper` are one model's state and variations (a leading models axis when
vmapped); `init_model`, `train_steps`, `evaluate_model` and `graph_eval_export` are pure
functions of them. A model's randomness derives from its key alone (`model_key(seed,
model_id)`), and a step that is masked (past the model's epoch, a stopped or diverged model)
leaves its state exactly as it was, so a model trains identically alone or inside any zoo.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp

from nws_jax import augment
from nws_jax import cnn
from nws_jax import input_pipeline
from nws_jax import optim
from nws_jax import packing as packing_lib
from nws_jax.configs import zoo as zoo_config


BN_EVALS = zoo_config.BN_EVALS
# Key streams under a step's key: the original evaluation pass draws its own augmentation.
_EVAL_STREAM = 2
_EXPORT_EVAL_STREAM = 3



class ModelState(NamedTuple):
  """One model's training state (a leading models axis when vmapped)."""
  params: cnn.Params
  stats: cnn.Stats
  opt: optim.OptState


class Hyper(NamedTuple):
  """One model's variations as arrays (a leading models axis when vmapped)."""
  key: jax.Array            # uint32 [2], the model's root key: fold_in(PRNGKey(seed), model_id)
  dataset: jax.Array        # int32, index into the zoo's stacked datasets
  lrate: jax.Array          # float32
  optimizer: jax.Array      # int32, optim.ADAM / RMSPROP / MOMENTUM
  activation: jax.Array     # int32, index into space.ACTIVATIONS
  initialization: jax.Array  # int32, index into space.INITIALIZATIONS
  augmentation: jax.Array   # bool
  steps_per_epoch: jax.Array  # int32, balanced examples of its dataset // its batch size
  layout: packing_lib.ModelLayout  # where its own architecture sits in the group's padded one


def model_key(seed: int, model_id: int) -> jax.Array:
  return jax.random.fold_in(jax.random.PRNGKey(seed), model_id)


def init_model(hp: Hyper, arch: cnn.Architecture) -> ModelState:
  """A fresh model: weights by its initialisation scheme, zero biases, optimizer state (padded
  to `arch`, the group's architecture; `cnn.init` of its own architecture inside)."""
  params, stats = packing_lib.init(jax.random.fold_in(hp.key, 0), hp.layout, hp.initialization,
                                   arch)
  return ModelState(params, stats, optim.init(params))


def epoch_keys(hp: Hyper, epoch: jax.Array) -> tuple[jax.Array, jax.Array]:
  """(order key, per-step root key) of a model's epoch (1-based)."""
  epoch_key = jax.random.fold_in(jax.random.fold_in(hp.key, 1), epoch)
  order_key, step_root = jax.random.split(epoch_key)
  return order_key, step_root


def epoch_order(hp: Hyper, epoch: jax.Array, data: input_pipeline.ZooData) -> jax.Array:
  """A model's class-balanced shuffled order of its dataset's training rows: int32 [N]."""
  order_key, _ = epoch_keys(hp, epoch)
  return input_pipeline.balanced_order(order_key, data.train_labels[hp.dataset])


def _forward(params, stats, images, hp: Hyper, *, arch: cnn.Architecture, masked: bool,
             conv_impl: str, train: bool, dropout_key=None, dropout: bool = True):
  """One model's logits [B, 20] and new statistics: `packing.apply` (its own architecture inside
  the padded `arch`) or, unmasked, `cnn.apply`."""
  if masked:
    return packing_lib.apply(params, stats, images, hp.activation, hp.layout, arch=arch,
                             train=train, dropout_key=dropout_key, conv_impl=conv_impl,
                             dropout=dropout)
  return cnn.apply(params, stats, images, hp.activation, arch=arch, train=train,
                   dropout_key=dropout_key, conv_impl=conv_impl, dropout=dropout)


def graph_eval_batch(state: ModelState, hp: Hyper, images: jax.Array, labels: jax.Array,
                     key: jax.Array, *, arch: cnn.Architecture, masked: bool, conv_impl: str,
                     augment_config: augment.AugmentConfig) -> tuple[jax.Array, cnn.Stats]:
  """The original code's evaluation of one batch (its training graph with keep probability 1):
  images uint8 [B, 32, 32, 3], augmented with `key` if the model augments, batch statistics,
  no dropout. Returns (hits bool [B], statistics with the moving averages updated)."""
  images = augment.maybe_augment(key, images.astype(jnp.float32) / 255.0, hp.augmentation,
                                 augment_config)
  logits, stats = _forward(state.params, state.stats, images, hp, arch=arch, masked=masked,
                           conv_impl=conv_impl, train=True, dropout=False)
  return jnp.argmax(logits, axis=-1) == labels, stats


def step_key(hp: Hyper, epoch: jax.Array, step: jax.Array) -> jax.Array:
  """The key of step `step` (0-based) of a model's epoch `epoch` (1-based)."""
  return jax.random.fold_in(epoch_keys(hp, epoch)[1], step)


def train_steps(state: ModelState, hp: Hyper, order: jax.Array, active: jax.Array,
                epoch: jax.Array, start_step: jax.Array, data: input_pipeline.ZooData, *,
                arch: cnn.Architecture, batch_size: int, num_steps: int, conv_impl: str,
                augment_config: augment.AugmentConfig, masked: bool = True,
                bn_eval: str = 'original'):
  """Steps start_step … start_step + num_steps - 1 of one model's epoch.

  order: int32 [N] from `epoch_order`; active: bool, False for a stopped model. Steps at or past
  the model's `steps_per_epoch`, and every step of an inactive model, leave its state unchanged.
  A step whose loss or new state (parameters, batch-norm statistics, optimizer state) is not
  all finite is not applied, and the model trains no further in this call: it stays frozen at
  its last finite state (diverged; the caller keeps it inactive afterwards).
  Returns (state, metrics) with metrics = (summed batch-mean loss, correct predictions, live
  steps, diverged, evaluated correct, evaluated batches), float32 scalars, the first three over
  the applied steps, measured on the training batches as trained (augmented, dropout); diverged
  is 1.0 if the model diverged in this call, else 0.0. bn_eval='original': every applied step
  but the epoch's first (evaluated at the export before it, `graph_eval_export`) first runs
  `graph_eval_batch` on its batch (its own augmentation draw), which updates the moving
  averages; the last two metrics count its correct predictions and batches (zero otherwise).
  `arch` is the group's padded architecture: gradients outside the model's own weights
  (hp.layout) are masked to zero, so padding stays zero. masked=False (a group whose models
  all have architecture `arch`) runs `cnn.apply` unmasked, the same model with less arithmetic.
  """
  if bn_eval not in BN_EVALS:
    raise ValueError(f'unknown bn_eval {bn_eval!r}; choose from: ' + ', '.join(BN_EVALS))
  _, step_root = epoch_keys(hp, epoch)
  masks = packing_lib.param_masks(hp.layout, arch) if masked else None
  zero = jnp.zeros((), jnp.float32)

  def one_step(carry, i):
    state, ok, loss_sum, correct, seen, eval_correct, eval_seen = carry
    step = start_step + i
    live = active & (step < hp.steps_per_epoch) & ok
    rows = jax.lax.dynamic_slice(order, (step * batch_size,), (batch_size,))
    raw = data.train_images[hp.dataset, rows]
    labels = data.train_labels[hp.dataset, rows]
    key = jax.random.fold_in(step_root, step)
    aug_key, dropout_key = jax.random.split(key)
    images = augment.maybe_augment(aug_key, raw.astype(jnp.float32) / 255.0, hp.augmentation,
                                   augment_config)
    base = state
    if bn_eval == 'original':
      evaluated = step >= 1
      eval_hits, eval_stats = graph_eval_batch(
          state, hp, raw, labels, jax.random.fold_in(key, _EVAL_STREAM), arch=arch,
          masked=masked, conv_impl=conv_impl, augment_config=augment_config)
      base = state._replace(stats=jax.tree.map(lambda n, o: jnp.where(evaluated, n, o),
                                               eval_stats, state.stats))

    def loss_fn(params):
      logits, new_stats = _forward(params, base.stats, images, hp, arch=arch, masked=masked,
                                   conv_impl=conv_impl, train=True, dropout_key=dropout_key)
      return cnn.cross_entropy(logits, labels), (new_stats, logits)

    (loss, (new_stats, logits)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    if masked:
      grads = jax.tree.map(jnp.multiply, grads, masks)
    new_params, new_opt = optim.update(grads, state.opt, state.params, hp.optimizer, hp.lrate)
    new_state = ModelState(new_params, new_stats, new_opt)
    finite = jnp.isfinite(loss) & _all_finite(new_state)
    applied = live & finite
    state = jax.tree.map(lambda n, o: jnp.where(applied, n, o), new_state, state)
    hits = (jnp.argmax(logits, axis=-1) == labels).sum()
    if bn_eval == 'original':
      counted = applied & evaluated
      eval_correct = eval_correct + jnp.where(counted, eval_hits.sum().astype(jnp.float32), zero)
      eval_seen = eval_seen + counted.astype(jnp.float32)
    # Selects, not products: a skipped step's loss may be NaN or inf.
    return (state, ok & ~(live & ~finite), loss_sum + jnp.where(applied, loss, zero),
            correct + jnp.where(applied, hits.astype(jnp.float32), zero),
            seen + applied.astype(jnp.float32), eval_correct, eval_seen), None

  (state, ok, loss_sum, correct, seen, eval_correct, eval_seen), _ = jax.lax.scan(
      one_step, (state, jnp.ones((), jnp.bool_), zero, zero, zero, zero, zero),
      jnp.arange(num_steps))
  return state, (loss_sum, correct, seen, (~ok).astype(jnp.float32), eval_correct, eval_seen)


def evaluate_model(state: ModelState, hp: Hyper, data: input_pipeline.ZooData,
                   eval_set: int, *, arch: cnn.Architecture, batch_size: int,
                   conv_impl: str) -> jax.Array:
  """Accuracy (fraction) of one model on eval set `eval_set` (0 train, 1 valid, 2 test) of its
  dataset, with batch-norm moving averages and no dropout."""
  images_all = data.eval_images[eval_set]
  labels_all = data.eval_labels[eval_set]
  n = labels_all.shape[1]
  num_chunks = -(-n // batch_size)

  def chunk(correct, c):
    start = jnp.minimum(c * batch_size, n - batch_size) if n >= batch_size else 0
    size = min(batch_size, n)
    images = jax.lax.dynamic_slice(images_all, (hp.dataset, start, 0, 0, 0),
                                   (1, size) + images_all.shape[2:])[0]
    labels = jax.lax.dynamic_slice(labels_all, (hp.dataset, start), (1, size))[0]
    # The last chunk is shifted back to stay in bounds; rows already counted are masked.
    fresh = jnp.arange(size) + start >= c * batch_size
    logits, _ = cnn.apply(state.params, state.stats, images.astype(jnp.float32) / 255.0,
                          hp.activation, arch=arch, train=False, conv_impl=conv_impl)
    hits = (jnp.argmax(logits, axis=-1) == labels) & (labels >= 0) & fresh
    return correct + hits.sum(), None

  correct, _ = jax.lax.scan(chunk, jnp.zeros((), jnp.int32), jnp.arange(num_chunks))
  total = (labels_all[hp.dataset] >= 0).sum()
  return correct / jnp.maximum(total, 1)


def _all_finite(tree) -> jax.Array:
  finite = jnp.ones((), jnp.bool_)
  for leaf in jax.tree.leaves(tree):
    finite = finite & jnp.isfinite(leaf).all()
  return finite


def graph_eval_export(state: ModelState, hp: Hyper, epoch: jax.Array,
                      data: input_pipeline.ZooData, *, arch: cnn.Architecture, batch_size: int,
                      conv_impl: str, augment_config: augment.AugmentConfig,
                      masked: bool = True) -> tuple[jax.Array, ModelState]:
  """The original code's evaluation at the export after `epoch` epochs (0: the initialisation),
  in its order: the first batch of epoch + 1 (what it trains next, with step 0's evaluation
  key), then the validation and the test set in whole batches of `batch_size` (the remainder
  dropped; a set smaller than one batch is one batch that wraps around it, each example
  counted once), each pass with `graph_eval_batch`, chaining the moving averages.
  Returns ([next batch's correct count, validation accuracy, test accuracy] float32 [3], the
  state with the updated statistics). A pass whose statistics are not all finite (a diverged
  model, frozen at its last finite weights, may overflow) leaves them as they were."""
  rows = epoch_order(hp, epoch + 1, data)[:batch_size]
  key = jax.random.fold_in(step_key(hp, epoch + 1, jnp.int32(0)), _EVAL_STREAM)
  evaluate = functools.partial(graph_eval_batch, arch=arch, masked=masked, conv_impl=conv_impl,
                               augment_config=augment_config)
  hits, next_stats = evaluate(state, hp, data.train_images[hp.dataset, rows],
                              data.train_labels[hp.dataset, rows], key)
  stats = jax.tree.map(lambda a, b: jnp.where(_all_finite(next_stats), a, b), next_stats,
                       state.stats)
  out = [hits.sum().astype(jnp.float32)]
  export_key = jax.random.fold_in(jax.random.fold_in(hp.key, _EXPORT_EVAL_STREAM), epoch)
  for eval_set in (1, 2):
    images_all, labels_all = data.eval_images[eval_set], data.eval_labels[eval_set]
    n = (labels_all[hp.dataset] >= 0).sum()
    num_batches = jnp.maximum(n // batch_size, 1)
    set_key = jax.random.fold_in(export_key, eval_set)

    def one_batch(carry, j, images_all=images_all, labels_all=labels_all, n=n,
                  num_batches=num_batches, set_key=set_key):
      stats, correct, total = carry
      index = j * batch_size + jnp.arange(batch_size)
      rows = index % jnp.maximum(n, 1)
      hits, new_stats = evaluate(state._replace(stats=stats), hp,
                                 images_all[hp.dataset, rows], labels_all[hp.dataset, rows],
                                 jax.random.fold_in(set_key, j))
      used = j < num_batches
      counted = used & (index < n)
      # A frozen diverged model's huge weights may overflow here: its statistics stay finite.
      keep = used & _all_finite(new_stats)
      stats = jax.tree.map(lambda a, b: jnp.where(keep, a, b), new_stats, stats)
      return (stats, correct + (hits & counted).sum(), total + counted.sum()), None

    max_batches = max(1, labels_all.shape[1] // batch_size)
    (stats, correct, total), _ = jax.lax.scan(
        one_batch, (stats, jnp.zeros((), jnp.int32), jnp.zeros((), jnp.int32)),
        jnp.arange(max_batches))
    out.append(correct / jnp.maximum(total, 1))
  return jnp.stack(out).astype(jnp.float32), state._replace(stats=stats)
