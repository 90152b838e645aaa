"""The vectorised zoo trainer: every model of a zoo advances in lockstep in compiled programs.

The single-model functions (`init_model`, `train_steps`, `evaluate_model`) are written for one
model and lifted with `jax.vmap` over a leading models axis. Every per-model choice that keeps
shapes equal (dataset, learning rate, optimizer, activation, initialisation, augmentation, RNG)
is data on that axis. Architectures are packed (`packing`): under the default 'depth' packing
the models of one layer structure (conv and dense depth) run at the largest filter size and
widths among them, masked, so a random-architecture zoo has at most 9 padded architectures;
'conv' pads only dense widths and 'exact' gives each architecture its own. A padded architecture and a batch size make a group,
one compiled training program, `lax.scan` over `steps_per_call` steps, called a few times per
epoch by a thin host loop. Initialisation, evaluation and snapshot export run once per padded
architecture over all of its groups.

A model's randomness derives from (seed, model_id) alone, and a model that needs fewer steps
than its group's longest in an epoch, or has stopped, is masked (its state is left exactly as
it was), so a model trains identically alone or inside any zoo.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import functools
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
from nws_jax import space


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
  return MODELS_PER_CHUNK_CPU if backend == 'cpu' else 1 << 30


MODELS_PER_CHUNK_CPU = 8


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


def train_steps(state: ModelState, hp: Hyper, order: jax.Array, active: jax.Array,
                epoch: jax.Array, start_step: jax.Array, data: input_pipeline.ZooData, *,
                arch: cnn.Architecture, batch_size: int, num_steps: int, conv_impl: str,
                augment_config: augment.AugmentConfig, masked: bool = True):
  """Steps start_step … start_step + num_steps - 1 of one model's epoch.

  order: int32 [N] from `epoch_order`; active: bool, False for a stopped model. Steps at or past
  the model's `steps_per_epoch`, and every step of an inactive model, leave its state unchanged.
  Returns (state, metrics) with metrics = (summed batch-mean loss, correct predictions, live
  steps), float32 scalars, measured on the training batches as trained (augmented, dropout).
  `arch` is the group's padded architecture: gradients outside the model's own weights
  (hp.layout) are masked to zero, so padding stays zero. masked=False (a group whose models
  all have architecture `arch`) runs `cnn.apply` unmasked, the same model with less arithmetic.
  """
  _, step_root = epoch_keys(hp, epoch)
  masks = packing_lib.param_masks(hp.layout, arch) if masked else None

  def one_step(carry, i):
    state, loss_sum, correct, seen = carry
    step = start_step + i
    live = active & (step < hp.steps_per_epoch)
    rows = jax.lax.dynamic_slice(order, (step * batch_size,), (batch_size,))
    images = data.train_images[hp.dataset, rows].astype(jnp.float32) / 255.0
    labels = data.train_labels[hp.dataset, rows]
    aug_key, dropout_key = jax.random.split(jax.random.fold_in(step_root, step))
    images = augment.maybe_augment(aug_key, images, hp.augmentation, augment_config)

    def loss_fn(params):
      if masked:
        logits, new_stats = packing_lib.apply(params, state.stats, images, hp.activation,
                                              hp.layout, arch=arch, train=True,
                                              dropout_key=dropout_key, conv_impl=conv_impl)
      else:
        logits, new_stats = cnn.apply(params, state.stats, images, hp.activation, arch=arch,
                                      train=True, dropout_key=dropout_key, conv_impl=conv_impl)
      return cnn.cross_entropy(logits, labels), (new_stats, logits)

    (loss, (new_stats, logits)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    if masked:
      grads = jax.tree.map(jnp.multiply, grads, masks)
    new_params, new_opt = optim.update(grads, state.opt, state.params, hp.optimizer, hp.lrate)
    new_state = ModelState(new_params, new_stats, new_opt)
    state = jax.tree.map(lambda n, o: jnp.where(live, n, o), new_state, state)
    hits = (jnp.argmax(logits, axis=-1) == labels).sum()
    live_f = live.astype(jnp.float32)
    return (state, loss_sum + live_f * loss, correct + live_f * hits, seen + live_f), None

  zero = jnp.zeros((), jnp.float32)
  (state, loss_sum, correct, seen), _ = jax.lax.scan(
      one_step, (state, zero, zero, zero), jnp.arange(num_steps))
  return state, (loss_sum, correct, seen)


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


def _stack_trees(trees):
  return jax.tree.map(lambda *xs: jnp.stack(xs), *trees)


def _concat_trees(trees):
  return jax.tree.map(lambda *xs: jnp.concatenate(xs), *trees)


# Compiled programs are built once per static signature and shared by all trainers of a process,
# so that JAX's compilation cache serves every zoo (and every single-model run) with that shape.

@functools.lru_cache(maxsize=None)
def _train_program(arch, batch_size, num_steps, conv_impl, augment_config, models_per_chunk,
                   masked):
  """The group's training program: `train_steps` over the models axis, `models_per_chunk`
  models vmapped at a time (lax.map runs the chunks in sequence; None: all at once)."""
  step_fn = functools.partial(train_steps, arch=arch, batch_size=batch_size,
                              num_steps=num_steps, conv_impl=conv_impl,
                              augment_config=augment_config, masked=masked)

  def program(state, hyper, order, active, epoch, start_step, data):
    return jax.lax.map(lambda a: step_fn(*a, epoch, start_step, data),
                       (state, hyper, order, active), batch_size=models_per_chunk)

  return num_steps, jax.jit(program, donate_argnums=(0,))


@functools.lru_cache(maxsize=None)
def _init_program(arch):
  init_group = jax.vmap(functools.partial(init_model, arch=arch))
  return jax.jit(lambda hypers: [init_group(h) for h in hypers])


@functools.lru_cache(maxsize=None)
def _eval_program(arch, batch_size, conv_impl, models_per_chunk):
  eval_one = functools.partial(evaluate_model, arch=arch, batch_size=batch_size,
                               conv_impl=conv_impl)

  def eval_all(states, hypers, data):
    """Accuracy [models, 3] of the models of these groups (all of architecture `arch`), in the
    order of their concatenation.

    Models are vmapped `models_per_chunk` at a time (lax.map), which bounds the memory of the
    im2col patches ([chunk, batch, 32, 32, k·k·3] float32) whatever the zoo size.
    """
    state, hyper = _concat_trees(states), _concat_trees(hypers)

    def one(args):
      s, h = args
      return jnp.stack([eval_one(s, h, data, k)
                        for k in range(len(input_pipeline.EVAL_SETS))])

    return jax.lax.map(one, (state, hyper), batch_size=models_per_chunk)

  return jax.jit(eval_all)


@functools.lru_cache(maxsize=None)
def _flatten_program(arch):
  def flatten_all(states, hypers, unsort):
    """Snapshot vectors [models, n] of these groups' models (all padded to `arch`; model i's
    own vector first, zeros after its length), rows permuted by `unsort` (to ascending zoo
    position)."""
    state, hyper = _concat_trees(states), _concat_trees(hypers)
    return jax.vmap(lambda s, h: packing_lib.flatten(s.params, s.stats, h.layout, arch))(
        state, hyper)[unsort]

  return jax.jit(flatten_all)


_order_program = jax.jit(jax.vmap(epoch_order, in_axes=(0, None, None)))


@dataclasses.dataclass
class Group:
  """Models sharing one compiled training program: same padded architecture and batch size."""
  arch: cnn.Architecture    # the padded architecture (`packing.bucket_arch`)
  batch_size: int
  members: np.ndarray       # int [Mg], positions in the zoo
  hyper: Hyper              # arrays [Mg, ...]
  max_steps: int            # the longest epoch of a member, in steps
  masked: bool = True       # some member is smaller than `arch` (padded); False: none is


class ZooTrainer:
  """Trains the models `configs` (ids `model_ids`) of a zoo on `data` in lockstep.

  The state of a zoo is a list with one `ModelState` per group (leading axis: the group's
  members). `run_epoch`, `evaluate` and `export` take and return that list.
  """

  def __init__(self, configs: Sequence[space.ModelConfig], model_ids: Sequence[int],
               data: input_pipeline.ZooData, dataset_names: Sequence[str],
               balanced_sizes: Sequence[int], cfg: TrainConfig):
    if len(configs) != len(model_ids):
      raise ValueError('configs and model_ids differ in length')
    self.configs = list(configs)
    self.model_ids = np.asarray(model_ids)
    self.data = data
    self.cfg = cfg
    self.conv_impl = default_conv_impl() if cfg.conv_impl == 'auto' else cfg.conv_impl
    if self.conv_impl not in cnn.CONV_IMPLS:
      raise ValueError(f'unknown conv_impl {cfg.conv_impl!r}')
    if cfg.packing not in packing_lib.PACKINGS:
      raise ValueError(f'unknown packing {cfg.packing!r}; choose from: '
                       + ', '.join(packing_lib.PACKINGS))
    if cfg.packing != 'exact':
      packing_lib.check_random_draws()
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
    self.weight_counts = [cnn.weight_counts(a) for a in own]
    # Snapshot length per model (its exported rows carry zeros after it).
    self.lengths = np.array([sum(w) for w in self.weight_counts], np.int64)
    self._compile()

  @property
  def num_models(self) -> int:
    return len(self.configs)

  def _compile(self):
    cfg = self.cfg
    chunk = cfg.train_models_per_chunk or default_models_per_chunk()
    self._train = {id(g): _train_program(g.arch, g.batch_size,
                                         min(cfg.steps_per_call, g.max_steps), self.conv_impl,
                                         cfg.augment, min(chunk, len(g.members)), g.masked)
                   for g in self.groups}
    # Programs that read every model's parameters (init, evaluation, export) run once per
    # architecture over all of its groups (batch size does not change parameter shapes).
    self.archs = sorted({g.arch for g in self.groups}, key=dataclasses.astuple)
    self._arch_groups = [[i for i, g in enumerate(self.groups) if g.arch == a] for a in self.archs]
    members = [np.concatenate([self.groups[i].members for i in idx]) for idx in self._arch_groups]
    # Zoo positions of each architecture's models, ascending: the rows of `export`'s arrays.
    self.arch_members = [np.sort(m) for m in members]
    self._arch_concat = members
    self._arch_unsort = [jnp.asarray(np.argsort(m)) for m in members]
    self._init = [_init_program(a) for a in self.archs]
    self._eval_all = [_eval_program(a, cfg.eval_batch_size, self.conv_impl,
                                    min(cfg.eval_models_per_chunk, len(m)))
                      for a, m in zip(self.archs, members)]
    self._flatten_all = [_flatten_program(a) for a in self.archs]

  def init_state(self) -> list[ModelState]:
    """Fresh states of all models, one `ModelState` per group (one compiled program per
    architecture)."""
    state = [None] * len(self.groups)
    for init, idx in zip(self._init, self._arch_groups):
      for i, s in zip(idx, init([self.groups[i].hyper for i in idx])):
        state[i] = s
    return state

  def warm_up(self, state: list[ModelState]) -> float:
    """Compiles every group's training program concurrently (XLA compiles one program per
    thread); returns the seconds it took. Optional: the first epoch compiles otherwise."""
    t0 = time.time()

    def compile_group(g, s):
      _, train = self._train[id(g)]
      active = jnp.ones(len(g.members), bool)
      lowered = train.lower(s, g.hyper, jnp.zeros((len(g.members),) + self.data.train_labels.shape[1:],
                                                  jnp.int32),
                            active, jnp.int32(1), jnp.int32(0), self.data)
      lowered.compile()  # Fills JAX's compilation cache; later calls of `train` hit it.

    with concurrent.futures.ThreadPoolExecutor(max(1, os.cpu_count() or 1)) as pool:
      list(pool.map(lambda a: compile_group(*a), zip(self.groups, state)))
    return time.time() - t0

  def calls_per_epoch(self) -> int:
    """Compiled training calls in one epoch, over all groups (what `on_chunk` counts)."""
    return sum(-(-g.max_steps // self._train[id(g)][0]) for g in self.groups)

  def run_epoch(self, state: list[ModelState], epoch: int, active: np.ndarray,
                on_chunk: Callable[[], None] | None = None):
    """Trains epoch `epoch` (1-based) of the models with active[zoo position] True.

    Returns (state, train metrics [models, 3]: summed batch loss, correct, live steps).
    """
    new_state, metrics = [], np.zeros((self.num_models, 3))
    for g, s in zip(self.groups, state):
      num_steps, train = self._train[id(g)]
      order = _order_program(g.hyper, jnp.int32(epoch), self.data)
      act = jnp.asarray(active[g.members])
      sums = []
      for start in range(0, g.max_steps, num_steps):
        s, m = train(s, g.hyper, order, act, jnp.int32(epoch), jnp.int32(start), self.data)
        sums.append(m)
        if on_chunk is not None:
          on_chunk()
      metrics[g.members] = np.sum([np.stack([np.asarray(x) for x in m], axis=1) for m in sums],
                                  axis=0)
      new_state.append(s)
    return new_state, metrics

  def evaluate(self, state: list[ModelState]) -> np.ndarray:
    """Accuracy [models, 3] on the train subset, validation and test sets (fractions)."""
    out = np.zeros((self.num_models, 3))
    for eval_all, idx, members in zip(self._eval_all, self._arch_groups, self._arch_concat):
      out[members] = np.asarray(eval_all([state[i] for i in idx],
                                         [self.groups[i].hyper for i in idx], self.data))
    return out

  def export(self, state: list[ModelState]) -> tuple[jax.Array, ...]:
    """Snapshot vectors, one float32 [models of arch a, n_a] array per padded architecture a of
    `self.archs`; row j is the model at zoo position m = `self.arch_members[a][j]`, its own
    vector in its first `self.lengths[m]` entries."""
    return tuple(flatten([state[i] for i in idx], [self.groups[i].hyper for i in idx], unsort)
                 for flatten, idx, unsort in zip(self._flatten_all, self._arch_groups,
                                                 self._arch_unsort))


class TrainResult(NamedTuple):
  state: list            # final ModelState per group
  stopping: early_stopping.StoppingState  # per model: status, epochs, …
  curves: np.ndarray     # [models, max_epochs + 1, 3] accuracy (train, valid, test), NaN after stop
  losses: np.ndarray     # [models, max_epochs + 1] mean training loss per epoch (NaN at 0)
  seconds: float


def train(trainer: ZooTrainer, *, state=None, start_epoch: int = 0, stopping=None, curves=None,
          losses=None, on_export: Callable[[int, jax.Array], None] | None = None,
          on_epoch: Callable[[int, object], None] | None = None,
          progress: bool = False) -> TrainResult:
  """The host loop: epochs until every model stopped, exporting at every epoch boundary.

  on_export(step, weights) receives the initialisation's (step 0) and every epoch's weights
  (`ZooTrainer.export`'s arrays, one per architecture); on_epoch(epoch, TrainResult so far) is called after each epoch (checkpointing).
  A run resumes from (state, start_epoch, stopping, curves, losses) of an earlier on_epoch.
  progress: a tqdm bar over epochs showing the training programs still running, slots busy
  (models still training, of all the programs' slots), models finished, the step inside the
  epoch, the mean validation accuracy of the running models and the time left at the epoch cap.
  """
  rules = trainer.cfg.rules
  m = trainer.num_models
  t0 = time.time()
  bar = None
  if progress:
    from tqdm import tqdm
    bar = tqdm(total=rules.max_epochs, initial=start_epoch, unit='epoch', dynamic_ncols=True)
    bar.set_postfix_str(f'compiling {len(trainer.groups)} training programs '
                        f'({len(trainer.archs)} padded architectures)')
  try:
    if state is None:
      state = trainer.init_state()
      trainer.warm_up(state)
      stopping = early_stopping.initial_state(m)
      curves = np.full((m, rules.max_epochs + 1, 3), np.nan)
      losses = np.full((m, rules.max_epochs + 1), np.nan)
      curves[:, 0] = trainer.evaluate(state)
      if on_export is not None:
        on_export(0, trainer.export(state))
    else:
      trainer.warm_up(state)
    epoch = start_epoch
    status = ''
    while epoch < rules.max_epochs and (stopping.status == early_stopping.RUNNING).any():
      epoch += 1
      active = stopping.status == early_stopping.RUNNING
      chunks = [0]
      total_chunks = trainer.calls_per_epoch()

      def on_chunk():
        chunks[0] += 1
        if bar is not None:
          bar.set_postfix_str(f'{status}epoch {epoch} {100 * chunks[0] // total_chunks}%')

      state, metrics = trainer.run_epoch(state, epoch, active, on_chunk)
      acc = trainer.evaluate(state)
      curves[active, epoch] = acc[active]
      losses[active, epoch] = metrics[active, 0] / np.maximum(metrics[active, 2], 1)
      stopping = early_stopping.update(stopping, acc[:, 1], rules)
      if on_export is not None:
        on_export(epoch, trainer.export(state))
      if on_epoch is not None:
        on_epoch(epoch, TrainResult(state, stopping, curves, losses, time.time() - t0))
      if bar is not None:
        done = int((stopping.status != early_stopping.RUNNING).sum())
        running = stopping.status == early_stopping.RUNNING
        busy = sum(bool(running[g.members].any()) for g in trainer.groups)
        status = (f'programs {busy}/{len(trainer.groups)}, slots busy {int(running.sum())}/{m}, '
                  f'models done {done}/{m}, valid acc {np.mean(acc[active, 1]):.3f} '
                  f'(best {np.max(acc[active, 1]):.3f}), ')
        bar.set_postfix_str(status.rstrip(', '))
        bar.update(1)
        if done == m:
          bar.total = epoch
          bar.refresh()
  finally:
    if bar is not None:
      bar.close()
  return TrainResult(state, stopping, curves, losses, time.time() - t0)
