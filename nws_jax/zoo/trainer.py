"""The vectorised zoo trainer: every model of a zoo advances in lockstep in compiled programs.

The single-model functions (`step.init_model`, `step.train_steps`, `step.evaluate_model`) are
written for one model and lifted with `jax.vmap` over a leading models axis. Every per-model
choice that keeps shapes equal (dataset, learning rate, optimizer, activation, initialisation,
augmentation, RNG) is data on that axis. Architectures are packed (`packing`): under the
default 'depth' packing the models of one layer structure (conv and dense depth) run at the
largest filter size and widths among them, masked, so a random-architecture zoo has at most 9
padded architectures; 'conv' pads only dense widths and 'exact' gives each architecture its
own. A padded architecture and a batch size make a group, one compiled training program,
`lax.scan` over `steps_per_call` steps, called a few times per epoch by the host loop
(`loop.train`). A group trains `slots_per_group` models at a time and a model that stops hands
its slot to the next of the group's queue (`ZooTrainer.refill`); which model is in which slot
is a `schedule.Schedule` value, and a wave's compiled programs are a `programs.WavePrograms`
bundle. Initialisation and snapshot export run once per padded architecture over all of its
groups; evaluation too under bn_eval='moving', once per group under 'original' (whose passes
are in the group's batch size).
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import os
import time
from typing import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from nws_jax import augment
from nws_jax import cnn
from nws_jax import early_stopping
from nws_jax import input_pipeline
from nws_jax import packing as packing_lib
from nws_jax import sharding
from nws_jax import space
from nws_jax.configs import zoo as zoo_config
from nws_jax.zoo import programs as programs_lib
from nws_jax.zoo import schedule as schedule_lib
from nws_jax.zoo import step
from nws_jax.zoo.step import Hyper, ModelState


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
  bn_eval: how accuracies are measured (`step.BN_EVALS`). 'original' (the code that made the
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

  def validate(self) -> None:
    """Raises ValueError (one line) for a value the trainer cannot run: the knobs it shares with
    the zoo job are checked by their declarations there (configs/zoo.py)."""
    zoo_config.ZooConfig(**{name: getattr(self, name) for name in _ZOO_KNOBS}).validate()


# The knobs a TrainConfig shares with the zoo job's configuration (checked by its rules).
_ZOO_KNOBS = ('seed', 'conv_impl', 'steps_per_call', 'packing', 'slots_per_group', 'compact',
              'max_programs', 'bn_eval')


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


def _stack_trees(trees):
  return jax.tree.map(lambda *xs: jnp.stack(xs), *trees)


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
               mesh: jax.sharding.Mesh | None = None,
               cache: programs_lib.ProgramCache | None = None):
    """cache: the owner of the compiled programs (default: the process's `programs.SHARED`,
    which zoos of one process with equal shapes share)."""
    if len(configs) != len(model_ids):
      raise ValueError('configs and model_ids differ in length')
    cfg.validate()
    self.configs = list(configs)
    self.model_ids = np.asarray(model_ids)
    self.mesh = sharding.model_mesh() if mesh is None else mesh
    self.cache = programs_lib.SHARED if cache is None else cache
    self.data = sharding.put_replicated(data, self.mesh)
    self.cfg = cfg
    self.conv_impl = default_conv_impl() if cfg.conv_impl == 'auto' else cfg.conv_impl
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
            key=step.model_key(cfg.seed, int(self.model_ids[pos])),
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

  def _compile(self):
    """Builds (or takes from the cache) the programs of the current wave's groups."""
    self.programs = programs_lib.build_wave(
        self.cache, self.groups, {i: self.schedule.groups[i].chunk for i in self.open_groups()},
        self.archs, self.cfg, self.conv_impl, self.mesh)

  def next_wave(self, state: list[ModelState]) -> list[ModelState]:
    """Closes the current wave (its states dropped, every compiled program released: XLA frees
    their memory maps) and opens the next; returns the state with the new wave's models
    initialised. The models of the closed wave must have stopped."""
    self.schedule = schedule_lib.next_wave(self.plan, self.schedule)
    del state  # The closed wave's arrays: freed with the caller's reference.
    closed = self.programs.keys
    self._compile()
    self.cache.release(closed - self.programs.keys)
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
    self.slot_hyper = [self._gather_hyper(i) for i in range(len(self.groups))]

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
      self.slot_hyper[i] = self._gather_hyper(i)
      state[i] = self.programs.groups[i].refill(
          state[i], self.slot_hyper[i], sharding.put_models(slots, self.mesh))
    return state, entered

  def compact(self, state: list[ModelState], running: np.ndarray) -> list[ModelState]:
    """Shrinks the groups that `schedule.compact` shrinks (running [models] bool); returns the
    state in the new slot layout (unchanged groups as they were)."""
    self.schedule, keeps = schedule_lib.compact(self.plan, self.schedule, running)
    state = list(state)
    for i, keep in keeps.items():
      state[i] = self.programs.groups[i].take(state[i], sharding.put_replicated(keep, self.mesh))
      self.slot_hyper[i] = self._gather_hyper(i)
    if keeps:
      self._compile()
    return state

  # --- Programs ------------------------------------------------------------------------------

  def init_state(self) -> list[ModelState]:
    """Fresh states of the models in the slots, one `ModelState` per group of the current
    wave, None for the others (one compiled program per padded architecture)."""
    state = [None] * len(self.groups)
    for arch in self.programs.archs:
      for i, s in zip(arch.groups, arch.init([self.slot_hyper[i] for i in arch.groups])):
        state[i] = s
    return state

  def warm_up(self, state: list[ModelState]) -> float:
    """Compiles every group's training program concurrently (XLA compiles one program per
    thread); returns the seconds it took. Optional: the first epoch compiles otherwise."""
    t0 = time.time()

    def compile_group(i, g, s):
      train = self.programs.groups[i].train
      n = self.schedule.groups[i].num_slots
      lowered = train.lower(
          s, self.slot_hyper[i],
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
    return sum(-(-self.groups[i].max_steps // self.programs.groups[i].steps_per_call)
               for i in self.open_groups())

  def run_epoch(self, state: list[ModelState], epoch, active: np.ndarray,
                on_chunk: Callable[[], None] | None = None):
    """Trains one epoch of the models in the slots with active[zoo position] True.

    epoch: the epoch (1-based) each model trains, an int for all or an int array [models].
    Returns (state, train metrics [models, 6]: summed batch loss, correct, applied steps,
    diverged (1.0 for a model whose loss or weights turned non-finite this epoch: it stays at
    its last finite state, `step.train_steps`), and under bn_eval='original' the correct
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
      programs = self.programs.groups[i]
      num_steps, train, hyper = programs.steps_per_call, programs.train, self.slot_hyper[i]
      ep = sharding.put_models(np.where(live, epochs[np.maximum(models, 0)], 1).astype(np.int32),
                               self.mesh)
      order = programs.order(hyper, ep, self.data)
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
    unchanged and the other arguments unused. bn_eval='original' (`step.graph_eval_export`):
    epochs [models] says after how many epochs each model is exported (default 0); models with
    update[model] True (default: every model in a slot) keep the statistics the passes left;
    the training accuracy is that of the steps' evaluation passes, train_counts [models, 2]
    (correct, batches: `run_epoch`'s last two metrics; default none), and of the next epoch's
    first batch, evaluated here.
    """
    out = np.full((self.num_models, 3), np.nan)
    if self.cfg.bn_eval == 'moving':
      for arch in self.programs.archs:
        idx = arch.groups
        acc = sharding.to_host(arch.evaluate([state[i] for i in idx],
                                             [self.slot_hyper[i] for i in idx], self.data))
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
      results, state[i] = self.programs.groups[i].graph_eval(
          state[i], self.slot_hyper[i],
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
    return tuple(arch.flatten([state[i] for i in arch.groups],
                              [self.slot_hyper[i] for i in arch.groups])
                 for arch in self.programs.archs)

  def export_rows(self) -> list[np.ndarray]:
    """Per array of `export`, the zoo positions of its rows now (-1: empty slot)."""
    return [self._device_major([self.slot_models[i] for i in a.groups])
            for a in self.programs.archs]
