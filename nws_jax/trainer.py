"""The vectorised zoo trainer: every model of a zoo advances in lockstep in compiled programs.

The single-model functions (`init_model`, `train_steps`, `evaluate_model`) are written for one
model and lifted with `jax.vmap` over a leading models axis. Every per-model choice that keeps
shapes equal (dataset, learning rate, optimizer, activation, initialisation, augmentation, RNG)
is data on that axis. Architectures are packed (`packing`): under the default 'depth' packing
the models of one layer structure (conv and dense depth) run at the largest filter size and
widths among them, masked, so a random-architecture zoo has at most 9 padded architectures;
'conv' pads only dense widths and 'exact' gives each architecture its own. A padded
architecture and a batch size make a group, one compiled training program, `lax.scan` over
`steps_per_call` steps, called a few times per epoch by a thin host loop. A group trains
`slots_per_group` models at a time and a model that stops hands its slot to the next of the
group's queue (`ZooTrainer.refill`). Initialisation and snapshot export run once per padded
architecture over all of its groups; evaluation too under bn_eval='moving', once per group under
'original' (whose passes are in the group's batch size).

A model's randomness derives from (seed, model_id) alone, and a model that needs fewer steps
than its group's longest in an epoch, or has stopped, is masked (its state is left exactly as
it was), so a model trains identically alone or inside any zoo.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import functools
import math
import os
import time
from typing import Callable, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from nws_jax import augment
from nws_jax import cnn
from nws_jax import early_stopping
from nws_jax import input_pipeline
from nws_jax import optim
from nws_jax import packing as packing_lib
from nws_jax import sharding
from nws_jax import space
from nws_jax.zoo import schedule as schedule_lib


@dataclasses.dataclass(frozen=True)
class TrainConfig:
  """How a zoo trains (the per-model variations live in `space.ModelConfig`).

  seed: the zoo's seed (model keys fold in the model id).
  rules: early stopping and the epoch cap/minimum (PROTOCOL §3).
  conv_impl: 'im2col', 'lax' or 'auto' (the measured best for the backend, see BENCHMARKS.md).
  steps_per_call: training steps per compiled call (host round trips per epoch ~ steps / this).
  eval_batch_size: examples per evaluation chunk.
  eval_models_per_chunk: models evaluated at once (bounds evaluation memory).
  train_models_per_chunk: models of a group vmapped at once in training, the chunks run in
    sequence (None: the measured best for the backend, `default_models_per_chunk`).
  packing: 'depth' (architectures of one conv and dense depth share a program, padded and
    masked), 'conv' (only dense widths padded) or 'exact' (one program per architecture); see
    `packing` and BENCHMARKS.md.
  slots_per_group: models of a group trained at once; the others queue and take the slot of a
    model that stopped (None: all of them at once).
  compact: once a group's queue is empty and at most half of its slots are busy, move its
    busy models into a program of fewer slots (a power of two; one more compile per size).
  max_programs: training programs alive at once: groups run in waves of this many, and a
    wave's compiled programs are released before the next (None: `default_max_programs`).
  bn_eval: how accuracies are measured (`BN_EVALS`). 'original' (the code that made the
    release, classifier.py): with the training graph, i.e. batch statistics, dropout off, and
    augmented inputs for augmented models, every pass updating the batch-norm moving averages.
    Each training step first evaluates its batch so (the epoch's training accuracy is the mean
    of those), and each export evaluates the next epoch's first batch, then whole batches (of
    the model's batch size) of the validation and test sets, so an export's moving statistics
    are shaped by the passes just before it. 'moving': moving averages on clean images, the
    training accuracy on a training subset the size of the validation set, no state change.
  """
  seed: int = 0
  rules: early_stopping.StoppingRules = early_stopping.StoppingRules()
  conv_impl: str = 'auto'
  steps_per_call: int = 64
  eval_batch_size: int = 250
  train_models_per_chunk: int | None = None
  eval_models_per_chunk: int = 32
  augment: augment.AugmentConfig = augment.AugmentConfig()
  packing: str = 'depth'
  slots_per_group: int | None = None
  compact: bool = False
  max_programs: int | None = None
  bn_eval: str = 'original'


BN_EVALS = ('original', 'moving')
# Key streams under a step's key: the original evaluation pass draws its own augmentation.
_EVAL_STREAM = 2
_EXPORT_EVAL_STREAM = 3


def default_conv_impl() -> str:
  """The convolution formulation measured fastest under vmap on `backend` (BENCHMARKS.md).

  im2col won on both backends measured: the 2-core CPU (about 10× over lax.conv inside the
  scanned step) and an H200 (1.35-1.4× over lax.conv at 32 and 256 models). Other backends
  (TPU) are unmeasured and get im2col too until a benchmark says otherwise.
  """
  return 'im2col'


def default_models_per_chunk(backend: str | None = None) -> int:
  """Models vmapped at once in a training program (BENCHMARKS.md): the CPU is memory-bound and
  runs small chunks best; a GPU wants every model of a group in one vmap."""
  backend = backend or jax.default_backend()
  return MODELS_PER_CHUNK_CPU if backend == 'cpu' else schedule_lib.UNBOUNDED


MODELS_PER_CHUNK_CPU = 8


def default_max_programs(backend: str | None = None) -> int:
  """Training programs alive at once. XLA:CPU maps about 1,500 memory regions per compiled
  training program, and Linux allows a process 65,530 (vm.max_map_count): a random zoo's 36
  programs crashed compiling (BENCHMARKS.md). Other backends keep every group in one wave."""
  backend = backend or jax.default_backend()
  return MAX_PROGRAMS_CPU if backend == 'cpu' else 1 << 30


MAX_PROGRAMS_CPU = 16


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


def _stack_trees(trees):
  return jax.tree.map(lambda *xs: jnp.stack(xs), *trees)


def _concat_trees(trees):
  return jax.tree.map(lambda *xs: jnp.concatenate(xs), *trees)


# Compiled programs are built once per static signature and shared by all trainers of a process,
# so that JAX's compilation cache serves every zoo (and every single-model run) with that shape.

@functools.lru_cache(maxsize=None)
def _train_program(arch, batch_size, num_steps, conv_impl, augment_config, models_per_chunk,
                   masked, mesh, bn_eval='original'):
  """The group's training program: `train_steps` over the models axis, `models_per_chunk`
  models vmapped at a time (lax.map runs the chunks in sequence; None: all at once), each
  device of `mesh` running its own slots."""
  step_fn = functools.partial(train_steps, arch=arch, batch_size=batch_size,
                              num_steps=num_steps, conv_impl=conv_impl,
                              augment_config=augment_config, masked=masked, bn_eval=bn_eval)

  def program(state, hyper, order, active, epoch, start_step, data):
    return jax.lax.map(lambda a: step_fn(*a, start_step, data),
                       (state, hyper, order, active, epoch), batch_size=models_per_chunk)

  return num_steps, sharding.compile_per_device(program, mesh, 'MMMMMRR', 'M', donate=(0,))


@functools.lru_cache(maxsize=None)
def _init_program(arch, num_groups, mesh):
  init_group = jax.vmap(functools.partial(init_model, arch=arch))
  init = sharding.compile_per_device(lambda *hypers: [init_group(h) for h in hypers], mesh,
                                     'M' * num_groups, 'M')
  return lambda hypers: init(*hypers)


@functools.lru_cache(maxsize=None)
def _refill_program(arch, mesh):
  init_group = jax.vmap(functools.partial(init_model, arch=arch))

  def refill(state, hyper, fresh):
    """State of a group's slots where fresh [slots] slots hold a new model's initial state."""
    new = init_group(hyper)
    return jax.tree.map(
        lambda n, o: jnp.where(fresh.reshape((-1,) + (1,) * (n.ndim - 1)), n, o), new, state)

  return sharding.compile_per_device(refill, mesh, 'MMM', 'M', donate=(0,))


@functools.lru_cache(maxsize=None)
def _take_program(mesh):
  """Rows `index` of every leaf of a models-sharded tree, sharded again (compaction)."""
  return jax.jit(lambda tree, index: jax.tree.map(lambda x: x[index], tree),
                 out_shardings=sharding.model_sharding(mesh))


@functools.lru_cache(maxsize=None)
def _eval_program(arch, batch_size, conv_impl, models_per_chunk, mesh):
  eval_one = functools.partial(evaluate_model, arch=arch, batch_size=batch_size,
                               conv_impl=conv_impl)

  def eval_all(states, hypers, data):
    """Accuracy [slots, 3] of the models in these groups' slots (all of architecture `arch`),
    in the order of their concatenation (per device: `ZooTrainer._device_major`).

    Models are vmapped `models_per_chunk` at a time (lax.map), which bounds the memory of the
    im2col patches ([chunk, batch, 32, 32, k·k·3] float32) whatever the zoo size.
    """
    state, hyper = _concat_trees(states), _concat_trees(hypers)

    def one(args):
      s, h = args
      return jnp.stack([eval_one(s, h, data, k)
                        for k in range(len(input_pipeline.EVAL_SETS))])

    return jax.lax.map(one, (state, hyper), batch_size=models_per_chunk)

  return sharding.compile_per_device(eval_all, mesh, 'MMR', 'M')


@functools.lru_cache(maxsize=None)
def _graph_eval_program(arch, batch_size, conv_impl, augment_config, masked, models_per_chunk,
                        mesh):
  """A group's export evaluation under bn_eval='original': `graph_eval_export` over its slots
  (`models_per_chunk` vmapped at a time). (state, hyper, epoch [slots], update [slots] bool,
  data) -> (results [slots, 3], state with statistics updated where `update`)."""
  one = functools.partial(graph_eval_export, arch=arch, batch_size=batch_size,
                          conv_impl=conv_impl, augment_config=augment_config, masked=masked)

  def program(state, hyper, epoch, update, data):
    results, new = jax.lax.map(lambda a: one(a[0], a[1], a[2], data), (state, hyper, epoch),
                               batch_size=models_per_chunk)
    stats = jax.tree.map(
        lambda n, o: jnp.where(update.reshape((-1,) + (1,) * (n.ndim - 1)), n, o),
        new.stats, state.stats)
    return results, state._replace(stats=stats)

  return sharding.compile_per_device(program, mesh, 'MMMMR', ('M', 'M'))


@functools.lru_cache(maxsize=None)
def _flatten_program(arch, mesh):
  def flatten_all(states, hypers):
    """Snapshot vectors [slots, n] of the models in these groups' slots (all padded to `arch`;
    a model's own vector first, zeros after its length), in the order of their concatenation
    (per device: `ZooTrainer._device_major`)."""
    state, hyper = _concat_trees(states), _concat_trees(hypers)
    return jax.vmap(lambda s, h: packing_lib.flatten(s.params, s.stats, h.layout, arch))(
        state, hyper)

  return sharding.compile_per_device(flatten_all, mesh, 'MM', 'M')


@functools.lru_cache(maxsize=None)
def _order_program(mesh):
  return sharding.compile_per_device(jax.vmap(epoch_order, in_axes=(0, 0, None)), mesh, 'MMR',
                                     'M')


@dataclasses.dataclass
class Group:
  """Models sharing one compiled training program: same padded architecture and batch size.

  The program trains the models in the group's slots at a time; the group's other members
  queue, and a slot whose model stopped takes the next one (`ZooTrainer.refill`; the slots are
  `schedule.GroupSlots`).
  """
  arch: cnn.Architecture    # the padded architecture (`packing.bucket_arch`)
  batch_size: int
  members: np.ndarray       # int [Mg], positions in the zoo, in queue order
  hyper: Hyper              # arrays [Mg, ...]
  max_steps: int            # the longest epoch of a member, in steps
  masked: bool = True       # some member is smaller than `arch` (padded); False: none is


def _divisor_at_most(n: int, most: int) -> int:
  """The largest divisor of n that is at most `most` (at least 1)."""
  return max(d for d in range(1, min(n, max(most, 1)) + 1) if n % d == 0)


class ZooTrainer:
  """Trains the models `configs` (ids `model_ids`) of a zoo on `data` in lockstep.

  Each group trains the models in its slots: the state of a zoo is a list with one
  `ModelState` per group (leading axis: the group's slots). Which model is in which slot is
  `self.schedule` (a `schedule.Schedule` over `self.plan`, changed only by the pure functions
  of `nws_jax.zoo.schedule`); this object runs the device side of it. `slot_models[g]` are the
  zoo positions of group g's slots (-1: empty, its queue done). `run_epoch`, `evaluate` and
  `export` take and return the state list.
  """

  def __init__(self, configs: Sequence[space.ModelConfig], model_ids: Sequence[int],
               data: input_pipeline.ZooData, dataset_names: Sequence[str],
               balanced_sizes: Sequence[int], cfg: TrainConfig,
               mesh: jax.sharding.Mesh | None = None):
    if len(configs) != len(model_ids):
      raise ValueError('configs and model_ids differ in length')
    if cfg.slots_per_group is not None and cfg.slots_per_group < 1:
      raise ValueError(f'slots_per_group must be at least 1, got {cfg.slots_per_group}')
    if cfg.max_programs is not None and cfg.max_programs < 1:
      raise ValueError(f'max_programs must be at least 1, got {cfg.max_programs}')
    self.configs = list(configs)
    self.model_ids = np.asarray(model_ids)
    self.mesh = sharding.model_mesh() if mesh is None else mesh
    self.data = sharding.put_replicated(data, self.mesh)
    self.cfg = cfg
    self.conv_impl = default_conv_impl() if cfg.conv_impl == 'auto' else cfg.conv_impl
    if self.conv_impl not in cnn.CONV_IMPLS:
      raise ValueError(f'unknown conv_impl {cfg.conv_impl!r}')
    if cfg.packing not in packing_lib.PACKINGS:
      raise ValueError(f'unknown packing {cfg.packing!r}; choose from: '
                       + ', '.join(packing_lib.PACKINGS))
    if cfg.packing != 'exact':
      packing_lib.check_random_draws()
    if cfg.bn_eval not in BN_EVALS:
      raise ValueError(f'unknown bn_eval {cfg.bn_eval!r}; choose from: ' + ', '.join(BN_EVALS))
    index = {name: i for i, name in enumerate(dataset_names)}
    own = [cnn.Architecture(*c.architecture) for c in self.configs]
    buckets = {}
    for a in own:
      buckets.setdefault(packing_lib.bucket_key(a, cfg.packing), []).append(a)
    padded = {key: packing_lib.bucket_arch(archs) for key, archs in buckets.items()}
    keys = {}
    self.steps_per_epoch = np.zeros(len(self.configs), np.int64)  # per model, zoo order
    for pos, c in enumerate(self.configs):
      if c.dataset not in index:
        raise ValueError(f'model {model_ids[pos]} uses dataset {c.dataset!r}, not in the zoo data')
      arch = padded[packing_lib.bucket_key(own[pos], cfg.packing)]
      keys.setdefault((arch, c.batch_size), []).append(pos)
    self.groups = []
    for (arch, batch_size), members in sorted(keys.items(), key=lambda kv: kv[0][1]):
      hyper = []
      for pos in members:
        c = self.configs[pos]
        steps = balanced_sizes[index[c.dataset]] // batch_size
        if steps < 1:
          raise ValueError(f'dataset {c.dataset!r} has {balanced_sizes[index[c.dataset]]} '
                           f'class-balanced training examples, fewer than batch size '
                           f'{batch_size}; use more training examples (--num_train)')
        self.steps_per_epoch[pos] = steps
        hyper.append(Hyper(
            key=model_key(cfg.seed, int(self.model_ids[pos])),
            dataset=jnp.int32(index[c.dataset]), lrate=jnp.float32(c.lrate),
            optimizer=jnp.int32(c.optimizer), activation=jnp.int32(c.activation),
            initialization=jnp.int32(c.initialization),
            augmentation=jnp.bool_(c.augmentation), steps_per_epoch=jnp.int32(steps),
            layout=jax.tree.map(jnp.asarray, packing_lib.model_layout(own[pos], arch))))
      hyper = _stack_trees(hyper)
      self.groups.append(Group(arch, batch_size, np.asarray(members), hyper,
                               int(hyper.steps_per_epoch.max()),
                               masked=any(own[pos] != arch for pos in members)))
    per_wave = cfg.max_programs or default_max_programs()
    self.plan = schedule_lib.Plan(
        tuple(g.members for g in self.groups),
        np.arange(len(self.groups)) // per_wave,  # groups run in waves, in order
        self.mesh.size, cfg.train_models_per_chunk or default_models_per_chunk(),
        cfg.slots_per_group)
    self.archs = sorted({g.arch for g in self.groups}, key=dataclasses.astuple)
    self.weight_counts = [cnn.weight_counts(a) for a in own]
    # Snapshot length per model (its exported rows carry zeros after it).
    self.lengths = np.array([sum(w) for w in self.weight_counts], np.int64)
    self.reset_slots()

  @property
  def num_models(self) -> int:
    return len(self.configs)

  @property
  def num_waves(self) -> int:
    return self.plan.num_waves

  @property
  def wave(self) -> int:
    return self.schedule.wave

  @property
  def slot_models(self) -> list[np.ndarray]:
    """Per group, the zoo position in each slot (-1: empty)."""
    return [g.models for g in self.schedule.groups]

  def open_groups(self) -> list[int]:
    """Indices of the groups of the current wave."""
    return schedule_lib.open_groups(self.plan, self.schedule)

  def train_program(self, i: int):
    """(steps per call, compiled training program) of open group i: the program takes (state,
    hyper, order, active, epoch, start step, data) and returns (state, metrics)."""
    return self._train[i]

  def _compile(self):
    cfg = self.cfg
    slots = self.schedule.groups
    open_ = self.open_groups()
    self._train = {i: _train_program(
        self.groups[i].arch, self.groups[i].batch_size,
        min(cfg.steps_per_call, self.groups[i].max_steps), self.conv_impl, cfg.augment,
        slots[i].chunk, self.groups[i].masked, self.mesh, cfg.bn_eval)
        for i in open_}
    # Programs that read every model's parameters (init, evaluation, export) run once per
    # padded architecture over its open groups (batch size does not change parameter shapes).
    self._arch_groups = [idx for idx in ([i for i in open_ if self.groups[i].arch == a]
                                         for a in self.archs) if idx]
    archs = [self.groups[idx[0]].arch for idx in self._arch_groups]
    self._init = [_init_program(a, len(idx), self.mesh)
                  for a, idx in zip(archs, self._arch_groups)]
    self._eval_all = [_eval_program(a, cfg.eval_batch_size, self.conv_impl, self._eval_chunk(idx),
                                    self.mesh)
                      for a, idx in zip(archs, self._arch_groups)]
    self._flatten_all = [_flatten_program(a, self.mesh) for a in archs]

  def _eval_chunk(self, groups: Sequence[int]) -> int:
    """A chunk dividing every group's share of slots on a device, whatever the device count."""
    return _divisor_at_most(math.gcd(*(self.schedule.groups[i].chunk for i in groups)),
                            self.cfg.eval_models_per_chunk)

  def next_wave(self, state: list[ModelState]) -> list[ModelState]:
    """Closes the current wave (its states dropped, every compiled program released: XLA frees
    their memory maps) and opens the next; returns the state with the new wave's models
    initialised. The models of the closed wave must have stopped."""
    next_schedule = schedule_lib.next_wave(self.plan, self.schedule)
    del state  # The closed wave's arrays: freed with the caller's reference.
    self._train = {}
    for program in (_train_program, _init_program, _refill_program, _eval_program,
                    _graph_eval_program, _flatten_program, _order_program, _take_program):
      program.cache_clear()
    jax.clear_caches()
    self.schedule = next_schedule
    self._compile()
    return self.init_state()

  # --- Slots and the queue -------------------------------------------------------------------

  def reset_slots(self) -> None:
    """Opens the first wave with each group's first members in its slots
    (`schedule.start`)."""
    self.restore_schedule(schedule_lib.start(self.plan))

  def _gather_hyper(self, i: int) -> Hyper:
    rows = self.schedule.groups[i].rows
    return sharding.put_models(jax.tree.map(lambda x: np.asarray(x)[rows], self.groups[i].hyper),
                               self.mesh)

  def _device_major(self, parts: Sequence[np.ndarray]) -> np.ndarray:
    return schedule_lib.device_major(parts, self.mesh.size)

  def restore_schedule(self, schedule: schedule_lib.Schedule) -> None:
    """Lays the slots out as `schedule` has them (a fresh start, or a checkpoint's)."""
    if len(schedule.groups) != len(self.groups):
      raise ValueError('the saved schedule does not match this zoo\'s groups')
    self.schedule = schedule
    self._compile()
    self._slot_hyper = [self._gather_hyper(i) for i in range(len(self.groups))]

  def in_slots(self) -> np.ndarray:
    """bool [models]: the models now in a slot of the current wave."""
    return schedule_lib.in_slots(self.plan, self.schedule)

  def queued(self) -> int:
    """Models still waiting for a slot (in this wave's queues or in later waves)."""
    return schedule_lib.queued(self.plan, self.schedule)

  def refill(self, state: list[ModelState], stopped: np.ndarray):
    """Hands each slot whose model has stopped (stopped [models] bool) to the next member of
    its group's queue (`schedule.refill`), with a fresh state (its own initial weights,
    optimizer state, keys). Returns (state, zoo positions of the models that entered a slot)."""
    self.schedule, entered, fresh = schedule_lib.refill(self.plan, self.schedule, stopped)
    state = list(state)
    for i, slots in fresh.items():
      self._slot_hyper[i] = self._gather_hyper(i)
      state[i] = _refill_program(self.groups[i].arch, self.mesh)(
          state[i], self._slot_hyper[i], sharding.put_models(slots, self.mesh))
    return state, entered

  def compact(self, state: list[ModelState], running: np.ndarray) -> list[ModelState]:
    """Shrinks the groups that `schedule.compact` shrinks (running [models] bool); returns the
    state in the new slot layout (unchanged groups as they were)."""
    self.schedule, keeps = schedule_lib.compact(self.plan, self.schedule, running)
    state = list(state)
    for i, keep in keeps.items():
      state[i] = _take_program(self.mesh)(state[i], sharding.put_replicated(keep, self.mesh))
      self._slot_hyper[i] = self._gather_hyper(i)
    if keeps:
      self._compile()
    return state

  # --- Programs ------------------------------------------------------------------------------

  def init_state(self) -> list[ModelState]:
    """Fresh states of the models in the slots, one `ModelState` per group of the current
    wave, None for the others (one compiled program per padded architecture)."""
    state = [None] * len(self.groups)
    for init, idx in zip(self._init, self._arch_groups):
      for i, s in zip(idx, init([self._slot_hyper[i] for i in idx])):
        state[i] = s
    return state

  def warm_up(self, state: list[ModelState]) -> float:
    """Compiles every group's training program concurrently (XLA compiles one program per
    thread); returns the seconds it took. Optional: the first epoch compiles otherwise."""
    t0 = time.time()

    def compile_group(i, g, s):
      _, train = self._train[i]
      n = self.schedule.groups[i].num_slots
      lowered = train.lower(
          s, self._slot_hyper[i],
          sharding.abstract_models((n,) + self.data.train_labels.shape[1:], jnp.int32, self.mesh),
          sharding.abstract_models((n,), jnp.bool_, self.mesh),
          sharding.abstract_models((n,), jnp.int32, self.mesh), np.int32(0), self.data)
      lowered.compile()  # Fills JAX's compilation cache; later calls of `train` hit it.

    open_ = self.open_groups()
    with concurrent.futures.ThreadPoolExecutor(max(1, os.cpu_count() or 1)) as pool:
      list(pool.map(lambda i: compile_group(i, self.groups[i], state[i]), open_))
    return time.time() - t0

  def calls_per_epoch(self) -> int:
    """Compiled training calls in one epoch, over the wave's groups (what `on_chunk` counts)."""
    return sum(-(-self.groups[i].max_steps // self._train[i][0])
               for i in self.open_groups())

  def run_epoch(self, state: list[ModelState], epoch, active: np.ndarray,
                on_chunk: Callable[[], None] | None = None):
    """Trains one epoch of the models in the slots with active[zoo position] True.

    epoch: the epoch (1-based) each model trains, an int for all or an int array [models].
    Returns (state, train metrics [models, 6]: summed batch loss, correct, applied steps,
    diverged (1.0 for a model whose loss or weights turned non-finite this epoch: it stays at
    its last finite state, `train_steps`), and under bn_eval='original' the correct
    predictions and batches of the steps' evaluation passes; zero for models not trained).
    """
    epochs = np.broadcast_to(np.asarray(epoch, np.int64), (self.num_models,))
    new_state, metrics = list(state), np.zeros((self.num_models, 6))
    for i in self.open_groups():
      g, s = self.groups[i], state[i]
      models = self.slot_models[i]
      live = models >= 0
      busy = live & active[np.maximum(models, 0)]
      if not busy.any():
        continue  # Every slot idle: nothing to run.
      num_steps, train = self._train[i]
      hyper = self._slot_hyper[i]
      ep = sharding.put_models(np.where(live, epochs[np.maximum(models, 0)], 1).astype(np.int32),
                               self.mesh)
      order = _order_program(self.mesh)(hyper, ep, self.data)
      act = sharding.put_models(busy, self.mesh)
      sums = []
      for start in range(0, g.max_steps, num_steps):
        s, m = train(s, hyper, order, act, ep, np.int32(start), self.data)
        sums.append(m)
        if start + num_steps < g.max_steps:
          # A model that diverged sits out the epoch's later calls (on the device: no sync).
          act = jax.device_put(act & (m[3] == 0), act.sharding)
        if on_chunk is not None:
          on_chunk()
      summed = np.sum([np.stack([sharding.to_host(x) for x in m], axis=1) for m in sums], axis=0)
      metrics[models[live]] = summed[live]
      new_state[i] = s
    return new_state, metrics

  def evaluate(self, state: list[ModelState], epochs: np.ndarray | None = None,
               update: np.ndarray | None = None, train_counts: np.ndarray | None = None
               ) -> tuple[np.ndarray, list[ModelState]]:
    """Accuracy [models, 3] on the training data, validation and test sets (fractions) of the
    models in the slots (NaN for the others), and the state after the evaluation.

    bn_eval='moving': the training subset, moving averages, clean images; the state is
    unchanged and the other arguments unused. bn_eval='original' (`graph_eval_export`):
    epochs [models] says after how many epochs each model is exported (default 0); models with
    update[model] True (default: every model in a slot) keep the statistics the passes left;
    the training accuracy is that of the steps' evaluation passes, train_counts [models, 2]
    (correct, batches: `run_epoch`'s last two metrics; default none), and of the next epoch's
    first batch, evaluated here.
    """
    out = np.full((self.num_models, 3), np.nan)
    if self.cfg.bn_eval == 'moving':
      for eval_all, idx in zip(self._eval_all, self._arch_groups):
        acc = sharding.to_host(eval_all([state[i] for i in idx],
                                        [self._slot_hyper[i] for i in idx], self.data))
        models = self._device_major([self.slot_models[i] for i in idx])
        out[models[models >= 0]] = acc[models >= 0]
      return out, state
    epochs = np.zeros(self.num_models, np.int64) if epochs is None else np.asarray(epochs)
    update = self.in_slots() if update is None else np.asarray(update, bool)
    counts = (np.zeros((self.num_models, 2)) if train_counts is None
              else np.asarray(train_counts, np.float64))
    state = list(state)
    for i in self.open_groups():
      g, models = self.groups[i], self.slot_models[i]
      live = models >= 0
      pos = np.maximum(models, 0)
      program = _graph_eval_program(g.arch, g.batch_size, self.conv_impl, self.cfg.augment,
                                    g.masked, self._eval_chunk([i]), self.mesh)
      results, state[i] = program(
          state[i], self._slot_hyper[i],
          sharding.put_models(np.where(live, epochs[pos], 0).astype(np.int32), self.mesh),
          sharding.put_models(live & update[pos], self.mesh), self.data)
      results = sharding.to_host(results).astype(np.float64)
      m = models[live]
      correct = counts[m, 0] + results[live, 0]
      out[m, 0] = correct / ((counts[m, 1] + 1) * g.batch_size)
      out[m, 1:] = results[live, 1:]
    return out, state

  def export(self, state: list[ModelState]) -> tuple[jax.Array, ...]:
    """Snapshot vectors of the models in the slots, one float32 [slots of arch a, n_a] array per
    padded architecture a of the current wave; row j holds the model at zoo position
    m = `self.export_rows()[a][j]` (none if -1), its own vector in its first `self.lengths[m]`
    entries."""
    return tuple(flatten([state[i] for i in idx], [self._slot_hyper[i] for i in idx])
                 for flatten, idx in zip(self._flatten_all, self._arch_groups))

  def export_rows(self) -> list[np.ndarray]:
    """Per array of `export`, the zoo positions of its rows now (-1: empty slot)."""
    return [self._device_major([self.slot_models[i] for i in idx]) for idx in self._arch_groups]


class TrainResult(NamedTuple):
  state: list            # final ModelState per group (its slots)
  stopping: early_stopping.StoppingState  # per model: status, epochs, …
  curves: np.ndarray     # [models, max_epochs + 1, 3] accuracy (train, valid, test), NaN after stop
  losses: np.ndarray     # [models, max_epochs + 1] mean training loss per epoch (NaN at 0)
  seconds: float
  exports: np.ndarray | None = None  # int [models, max_epochs + 1, 3]: where model m's export
  #   of epoch e is: (export number, padded architecture, row) of on_export's arrays; -1: none
  schedule: schedule_lib.Schedule | None = None  # the slots and queues (`ZooTrainer.schedule`)
  rounds: int = 0                    # epochs of the slots run so far


def train(trainer: ZooTrainer, *, resume: TrainResult | None = None,
          on_export: Callable[[int, tuple], None] | None = None,
          on_epoch: Callable[[int, TrainResult], None] | None = None,
          progress: bool = False) -> TrainResult:
  """The host loop: rounds (one epoch of every slot) until every model stopped.

  A model's epochs are the rounds it spends in a slot; when it stops, its slot takes the next
  model of its group's queue (`ZooTrainer.refill`), so models of a zoo start at different
  rounds. A model's result does not depend on when or in which slot it ran.
  on_export(number, weights) receives `ZooTrainer.export`'s arrays (one per padded
  architecture) after the initialisation and after every round, numbered 0, 1, …; the result's
  `exports` says which row of which export holds each model's epoch. on_epoch(round, result so
  far) is called after each round (checkpointing); `train(resume=that result)` continues it.
  progress: a tqdm bar over models finished, showing the wave, the programs (groups) of the
  wave busy, slots busy, models queued, the round and the step inside it, and the mean
  validation accuracy of the models training. Groups run in waves of at most
  `TrainConfig.max_programs` programs; a wave whose models have all stopped gives way to the
  next (`ZooTrainer.next_wave`).
  """
  rules = trainer.cfg.rules
  m = trainer.num_models
  t0 = time.time()
  if resume is None:
    trainer.reset_slots()
    stopping = early_stopping.initial_state(m)
    curves = np.full((m, rules.max_epochs + 1, 3), np.nan)
    losses = np.full((m, rules.max_epochs + 1), np.nan)
    exports = np.full((m, rules.max_epochs + 1, 3), -1, np.int64)
    rounds, saved = 0, 0
  else:
    trainer.restore_schedule(resume.schedule)
    stopping, curves, losses = resume.stopping, resume.curves.copy(), resume.losses.copy()
    exports, rounds = resume.exports.copy(), resume.rounds
    saved = int(exports[..., 0].max()) + 1
  bar = None
  if progress:
    from tqdm import tqdm
    bar = tqdm(total=m, initial=int((stopping.status != early_stopping.RUNNING).sum()),
               unit='model', dynamic_ncols=True)
    bar.set_postfix_str(f'compiling {len(trainer.groups)} training programs '
                        f'({len(trainer.archs)} padded architectures)')

  def export(state, models):
    """Saves the slots' weights; records them as the current epoch of `models`."""
    nonlocal saved
    if on_export is not None:
      on_export(saved, trainer.export(state))
    for a, rows in enumerate(trainer.export_rows()):
      for row, pos in enumerate(rows):
        if pos >= 0 and models[pos]:
          exports[pos, stopping.epochs[pos]] = (saved, a, row)
    saved += 1

  def start(state, models):
    """Evaluates and exports the models just put in slots (their epoch 0); returns the state."""
    nonlocal stopping
    acc, state = trainer.evaluate(state, np.zeros(m, np.int64), models)
    curves[models, 0] = acc[models]
    stopping = early_stopping.observe_initial(stopping, acc[:, 1], models, rules)
    export(state, models)
    return state

  try:
    if resume is None:
      state = trainer.init_state()
      trainer.warm_up(state)
      state = start(state, trainer.in_slots())
    else:
      state = resume.state
      trainer.warm_up(state)
    status = ''
    while (stopping.status == early_stopping.RUNNING).any():
      rounds += 1
      active = trainer.in_slots() & (stopping.status == early_stopping.RUNNING)
      epochs = stopping.epochs + 1
      chunks = [0]
      total_chunks = trainer.calls_per_epoch()

      def on_chunk():
        chunks[0] += 1
        if bar is not None:
          bar.set_postfix_str(f'{status}round {rounds} {100 * chunks[0] // total_chunks}%')

      state, metrics = trainer.run_epoch(state, epochs, active, on_chunk)
      acc, state = trainer.evaluate(state, epochs, active, metrics[:, 4:6])
      curves[active, epochs[active]] = acc[active]
      # A model that diverged trained this epoch up to its last finite step (frozen there: its
      # curves and export are of that state); it stops as DIVERGED and its slot is refilled.
      # Its loss is the mean over the steps it applied (NaN if none).
      seen = metrics[active, 2]
      losses[active, epochs[active]] = np.where(
          seen > 0, metrics[active, 0] / np.maximum(seen, 1), np.nan)
      stopping = early_stopping.update(stopping, np.where(active, acc[:, 1], np.nan), rules,
                                       trained=active, diverged=active & (metrics[:, 3] > 0))
      export(state, active)
      finished = active & (stopping.status != early_stopping.RUNNING)
      state, entered = trainer.refill(state, finished)
      if len(entered):
        state = start(state, np.isin(np.arange(m), entered))
      if trainer.cfg.compact:
        state = trainer.compact(state, stopping.status == early_stopping.RUNNING)
      running = stopping.status == early_stopping.RUNNING
      if running.any() and not (running & trainer.in_slots()).any():
        state = trainer.next_wave(state)  # This wave is done: release it, start the next.
        trainer.warm_up(state)
        state = start(state, trainer.in_slots())
      result = TrainResult(state, stopping, curves, losses, time.time() - t0, exports,
                           trainer.schedule, rounds)
      if on_epoch is not None:
        on_epoch(rounds, result)
      if bar is not None:
        training = trainer.in_slots() & (stopping.status == early_stopping.RUNNING)
        busy = sum(bool(training[trainer.slot_models[i][trainer.slot_models[i] >= 0]].any())
                   for i in trainer.open_groups())
        slots = sum(trainer.schedule.groups[i].num_slots for i in trainer.open_groups())
        status = (f'wave {trainer.wave + 1}/{trainer.num_waves}, programs {busy}/'
                  f'{len(trainer.open_groups())}, slots busy {int(training.sum())}/{slots}, '
                  f'queued {trainer.queued()}, ')
        if active.any():
          status += f'valid acc {np.mean(acc[active, 1]):.3f}, '
        bar.set_postfix_str(status.rstrip(', '))
        bar.update(int(finished.sum()))
  finally:
    if bar is not None:
      bar.close()
  return TrainResult(state, stopping, curves, losses, time.time() - t0, exports,
                     trainer.schedule, rounds)
