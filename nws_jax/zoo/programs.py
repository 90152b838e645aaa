"""The zoo's compiled programs: built per group and per padded architecture, owned explicitly.

A training wave (`schedule.Plan.wave_of`) needs, per open group, a training program and the
small programs around it (refill, compaction, epoch order, the original evaluation), and per
padded architecture the programs that read every model of its open groups at once (init,
evaluation, flatten). `build_wave` builds them as one `WavePrograms` bundle. Compiled programs
are held by a `ProgramCache` keyed by static signature: zoos (and single-model runs) of one
process with the same shapes share them, and `ProgramCache.release` drops a closed wave's. XLA
frees a program's code and memory maps once nothing refers to it (measured on this CPU: a
four-group random zoo's compiled wave took the process from 798 to 9,155 memory maps; dropping
the references brought it back to 1,585, and `jax.clear_caches()` after that to 1,561), so the
process-wide JAX caches are left alone.

Shapes: a group's arrays carry a leading slots axis, sharded over the mesh's devices
(`sharding.compile_per_device`); `data` is the replicated `input_pipeline.ZooData`.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any, Callable, Hashable, Sequence

import jax
import jax.numpy as jnp

from nws_jax import input_pipeline
from nws_jax import packing as packing_lib
from nws_jax import sharding
from nws_jax.sharding import SPLIT, WHOLE
from nws_jax.zoo import step


def _concat_trees(trees):
  return jax.tree.map(lambda *xs: jnp.concatenate(xs), *trees)


def _where_rows(rows, new, old):
  """new where rows [slots] is True, else old (leaves with a leading slots axis)."""
  return jax.tree.map(lambda n, o: jnp.where(rows.reshape((-1,) + (1,) * (n.ndim - 1)), n, o),
                      new, old)


def train_program(arch, batch_size, num_steps, conv_impl, augment_config, models_per_chunk,
                  masked, mesh, bn_eval):
  """A group's training program: `step.train_steps` over the slots axis, `models_per_chunk`
  models vmapped at a time (lax.map runs the chunks in sequence), each device of `mesh` running
  its own slots. (state, hyper, order, active, epoch, start_step, data) -> (state, metrics)."""
  step_fn = functools.partial(step.train_steps, arch=arch, batch_size=batch_size,
                              num_steps=num_steps, conv_impl=conv_impl,
                              augment_config=augment_config, masked=masked, bn_eval=bn_eval)

  def program(state, hyper, order, active, epoch, start_step, data):
    return jax.lax.map(lambda a: step_fn(*a, start_step, data),
                       (state, hyper, order, active, epoch), batch_size=models_per_chunk)

  return sharding.compile_per_device(program, mesh, (SPLIT,) * 5 + (WHOLE,) * 2, SPLIT,
                                     donate=(0,))


def init_program(arch, num_groups, mesh):
  """[hyper of each of `num_groups` groups] -> [fresh state of each] (`step.init_model`)."""
  init_group = jax.vmap(functools.partial(step.init_model, arch=arch))
  init = sharding.compile_per_device(lambda *hypers: [init_group(h) for h in hypers], mesh,
                                     (SPLIT,) * num_groups, SPLIT)
  return lambda hypers: init(*hypers)


def refill_program(arch, mesh):
  """(state, hyper, fresh [slots] bool) -> the state with fresh slots holding a new model's
  initial state."""
  init_group = jax.vmap(functools.partial(step.init_model, arch=arch))
  return sharding.compile_per_device(lambda state, hyper, fresh: _where_rows(
      fresh, init_group(hyper), state), mesh, (SPLIT,) * 3, SPLIT, donate=(0,))


def take_program(mesh):
  """Rows `index` of every leaf of a models-sharded tree, sharded again (compaction)."""
  return jax.jit(lambda tree, index: jax.tree.map(lambda x: x[index], tree),
                 out_shardings=sharding.model_sharding(mesh))


def eval_program(arch, batch_size, conv_impl, models_per_chunk, mesh):
  """([state per group], [hyper per group], data) -> accuracy [slots, 3] (train subset,
  validation, test; moving averages, `step.evaluate_model`) of the models in these groups' slots
  (all of padded architecture `arch`), in the order of their concatenation (per device:
  `schedule.device_major`). Models are vmapped `models_per_chunk` at a time (lax.map), which
  bounds the memory of the im2col patches ([chunk, batch, 32, 32, k·k·3] float32)."""
  eval_one = functools.partial(step.evaluate_model, arch=arch, batch_size=batch_size,
                               conv_impl=conv_impl)

  def eval_all(states, hypers, data):
    def one(args):
      return jnp.stack([eval_one(*args, data, k) for k in range(len(input_pipeline.EVAL_SETS))])

    return jax.lax.map(one, (_concat_trees(states), _concat_trees(hypers)),
                       batch_size=models_per_chunk)

  return sharding.compile_per_device(eval_all, mesh, (SPLIT, SPLIT, WHOLE), SPLIT)


def graph_eval_program(arch, batch_size, conv_impl, augment_config, masked, models_per_chunk,
                       mesh):
  """A group's export evaluation under bn_eval='original': `step.graph_eval_export` over its
  slots (`models_per_chunk` vmapped at a time). (state, hyper, epoch [slots], update [slots]
  bool, data) -> (results [slots, 3], state with statistics updated where `update`)."""
  one = functools.partial(step.graph_eval_export, arch=arch, batch_size=batch_size,
                          conv_impl=conv_impl, augment_config=augment_config, masked=masked)

  def program(state, hyper, epoch, update, data):
    results, new = jax.lax.map(lambda a: one(a[0], a[1], a[2], data), (state, hyper, epoch),
                               batch_size=models_per_chunk)
    return results, state._replace(stats=_where_rows(update, new.stats, state.stats))

  return sharding.compile_per_device(program, mesh, (SPLIT,) * 4 + (WHOLE,), (SPLIT, SPLIT))


def flatten_program(arch, mesh):
  """([state per group], [hyper per group]) -> snapshot vectors [slots, n] of the models in these
  groups' slots (all padded to `arch`; a model's own vector first, zeros after its length), in
  the order of their concatenation (per device: `schedule.device_major`)."""
  def flatten_all(states, hypers):
    return jax.vmap(lambda s, h: packing_lib.flatten(s.params, s.stats, h.layout, arch))(
        _concat_trees(states), _concat_trees(hypers))

  return sharding.compile_per_device(flatten_all, mesh, (SPLIT, SPLIT), SPLIT)


def order_program(mesh):
  """(hyper, epoch [slots], data) -> each slot's epoch order int32 [slots, N]
  (`step.epoch_order`)."""
  return sharding.compile_per_device(jax.vmap(step.epoch_order, in_axes=(0, 0, None)), mesh,
                                     (SPLIT, SPLIT, WHOLE), SPLIT)


class ProgramCache:
  """The owner of compiled programs: one per (builder, static arguments), built on first request
  and shared by every later request until released.

  `SHARED` is the process's, so that every zoo of a process with the same shapes compiles once
  (the tests rely on it); a trainer asked to keep its programs apart gets its own.
  """

  def __init__(self):
    self._programs: dict[tuple, Any] = {}

  def get(self, build: Callable, *args: Hashable):
    key = (build, *args)
    if key not in self._programs:
      self._programs[key] = build(*args)
    return self._programs[key]

  def keys(self) -> set[tuple]:
    return set(self._programs)

  def release(self, keys: set[tuple] | None = None) -> int:
    """Drops the programs keyed in `keys` (None: all); returns how many it held. A caller
    still holding one keeps it working; XLA frees it with the last reference."""
    dropped = [k for k in self._programs if keys is None or k in keys]
    for key in dropped:
      del self._programs[key]
    return len(dropped)

  def __len__(self) -> int:
    return len(self._programs)


SHARED = ProgramCache()


@dataclasses.dataclass(frozen=True)
class GroupPrograms:
  """A group's programs: `train` runs `steps_per_call` steps per call."""
  steps_per_call: int
  train: Callable       # (state, hyper, order, active, epoch, start_step, data) -> (state, metrics)
  refill: Callable      # (state, hyper, fresh) -> state
  order: Callable       # (hyper, epoch, data) -> order
  take: Callable        # (state, index) -> state rows `index`
  graph_eval: Callable | None  # bn_eval='original' only: (state, hyper, epoch, update, data)


@dataclasses.dataclass(frozen=True)
class ArchPrograms:
  """Programs over every open group of one padded architecture (`groups`, in this order)."""
  groups: tuple[int, ...]
  init: Callable         # [hyper per group] -> [state per group]
  flatten: Callable      # ([state], [hyper]) -> vectors [slots, n]
  evaluate: Callable | None  # bn_eval='moving' only: ([state], [hyper], data) -> [slots, 3]


@dataclasses.dataclass(frozen=True)
class WavePrograms:
  """Every program a wave runs: `groups[i]` per open group i, `archs` per padded architecture
  of the wave (in `ZooTrainer.archs` order), and the cache keys they came from."""
  groups: dict[int, GroupPrograms]
  archs: tuple[ArchPrograms, ...]
  keys: frozenset


def divisor_at_most(n: int, most: int) -> int:
  """The largest divisor of n that is at most `most` (at least 1)."""
  return max(d for d in range(1, min(n, max(most, 1)) + 1) if n % d == 0)


def build_wave(cache: ProgramCache, groups: Sequence, chunks: dict[int, int], archs: Sequence,
               cfg, conv_impl: str, mesh) -> WavePrograms:
  """The programs of the open groups `chunks` (group index -> models vmapped at once, the
  schedule's `GroupSlots.chunk`); `groups` are the trainer's `Group`s, `archs` its padded
  architectures in order, `cfg` its `TrainConfig`."""
  used = []

  def get(build, *args):
    used.append((build, *args))
    return cache.get(build, *args)

  def eval_chunk(idx):
    """A chunk dividing every group's share of slots on a device, whatever the device count."""
    return divisor_at_most(math.gcd(*(chunks[i] for i in idx)), cfg.eval_models_per_chunk)

  original = cfg.bn_eval == 'original'
  per_group = {}
  for i in sorted(chunks):
    g = groups[i]
    num_steps = min(cfg.steps_per_call, g.max_steps)
    per_group[i] = GroupPrograms(
        num_steps,
        get(train_program, g.arch, g.batch_size, num_steps, conv_impl, cfg.augment, chunks[i],
            g.masked, mesh, cfg.bn_eval),
        get(refill_program, g.arch, mesh), get(order_program, mesh), get(take_program, mesh),
        get(graph_eval_program, g.arch, g.batch_size, conv_impl, cfg.augment, g.masked,
            eval_chunk([i]), mesh) if original else None)
  per_arch = []
  for arch in archs:
    idx = tuple(i for i in sorted(chunks) if groups[i].arch == arch)
    if idx:
      per_arch.append(ArchPrograms(
          idx, get(init_program, arch, len(idx), mesh), get(flatten_program, arch, mesh),
          None if original else get(eval_program, arch, cfg.eval_batch_size, conv_impl,
                                    eval_chunk(idx), mesh)))
  return WavePrograms(per_group, tuple(per_arch), frozenset(used))
