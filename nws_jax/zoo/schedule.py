"""Which model trains in which slot: a zoo's host-side schedule as values and pure functions.

A zoo's models fall into groups (one compiled training program each, `trainer.ZooTrainer`);
a group trains the models in its slots at once while its other members queue, and groups run
in waves of a bounded number of programs. `Plan` is what stays fixed for a run (each group's
members in queue order, each group's wave, the device count, the vmap bound); `Schedule` is
what changes (each group's slots: who is in them, which member row each carries, how far the
queue has gone, how many slots there are; the open wave). Every function here takes values and
returns new ones, with no JAX: the device side (hyper-parameters gathered per slot, fresh
states, compacted states) follows what they return. A `Schedule` is what a checkpoint keeps
(`to_arrays`, `from_arrays`).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Sequence

import numpy as np

UNBOUNDED = 1 << 30  # a vmap bound that bounds nothing (an accelerator's default)


@dataclasses.dataclass(frozen=True, eq=False)
class Plan:
  """What a zoo's schedule runs over, fixed for the run."""
  members: tuple[np.ndarray, ...]  # per group: int [Mg] zoo positions, in queue order
  wave_of: np.ndarray              # int [groups]: the wave each group's program runs in
  devices: int                     # devices a group's slots are split over
  chunk_bound: int = UNBOUNDED     # most models vmapped at once on a device
  slots_per_group: int | None = None  # most models a group trains at once (None: all members)

  @property
  def num_groups(self) -> int:
    return len(self.members)

  @property
  def num_waves(self) -> int:
    return int(np.max(self.wave_of)) + 1 if len(self.wave_of) else 1

  @property
  def num_models(self) -> int:
    return sum(len(m) for m in self.members)


@dataclasses.dataclass(frozen=True, eq=False)
class GroupSlots:
  """One group's slots now."""
  models: np.ndarray  # int [slots]: the zoo position in each slot, -1 for an empty one
  rows: np.ndarray    # int [slots]: the member row (queue position) each slot's hyper-parameters
                      # come from; an empty slot carries row 0's, never trained
  queued: int         # members that have entered a slot so far (the queue's head)
  planned: int        # models the slots are planned for, whatever the device count
  chunk: int          # models vmapped at once on a device (`vmap_chunk` of planned)

  @property
  def num_slots(self) -> int:
    return len(self.models)


@dataclasses.dataclass(frozen=True, eq=False)
class Schedule:
  groups: tuple[GroupSlots, ...]
  wave: int = 0  # the open wave: its groups' programs are the ones compiled and run


def vmap_chunk(wanted: int, most: int, devices: int) -> int:
  """Models vmapped at once, on each device, for a group that trains `wanted` models at a time.

  XLA rounds a model's computation according to how many models share its vmap, so with a
  bounded chunk (`most`, the CPU's) the chunk does not depend on the device count: the fewest
  chunks of at most `most`, made even; slots are rounded up to a multiple of devices × chunk, and
  every device count computes every model in the same context. With no bound (`UNBOUNDED`, an
  accelerator's default) each device vmaps its share."""
  if most >= UNBOUNDED:
    return -(-wanted // devices)
  return -(-wanted // -(-wanted // most))


def round_up(n: int, devices: int, chunk: int = 1) -> int:
  """The smallest multiple of devices × chunk that is at least n, and at least one multiple."""
  size = devices * chunk
  return max(1, -(-n // size)) * size


def slot_layout(plan: Plan, planned: int) -> tuple[int, int]:
  """(vmap chunk, slot count) of a group whose slots are planned for `planned` models."""
  chunk = vmap_chunk(planned, plan.chunk_bound, plan.devices)
  return chunk, round_up(planned, plan.devices, chunk)


def _planned(plan: Plan, group: int, planned: int, models, rows, queued) -> GroupSlots:
  chunk, size = slot_layout(plan, planned)
  if len(models) != size:
    raise ValueError(f'group {group}: {len(models)} slots, its plan of {planned} models lays '
                     f'out {size} over {plan.devices} devices')
  return GroupSlots(np.asarray(models, np.int64), np.asarray(rows, np.int64), int(queued),
                    planned, chunk)


def start(plan: Plan) -> Schedule:
  """The first wave open; each group's first members in its slots (as many as
  `slots_per_group`, rounded up to the device layout), the others queued; slots beyond the
  members stay empty."""
  groups = []
  for i, members in enumerate(plan.members):
    planned = min(len(members), plan.slots_per_group or len(members))
    _, size = slot_layout(plan, planned)
    taken = min(size, len(members))
    empty = size - taken
    groups.append(_planned(plan, i, planned,
                           np.concatenate([members[:taken], np.full(empty, -1)]),
                           np.concatenate([np.arange(taken), np.zeros(empty, np.int64)]), taken))
  return Schedule(tuple(groups), 0)


def open_groups(plan: Plan, schedule: Schedule) -> list[int]:
  """Indices of the groups of the open wave."""
  return [int(i) for i in np.flatnonzero(plan.wave_of == schedule.wave)]


def in_slots(plan: Plan, schedule: Schedule) -> np.ndarray:
  """bool [models]: the models now in a slot of the open wave."""
  out = np.zeros(plan.num_models, bool)
  for i in open_groups(plan, schedule):
    models = schedule.groups[i].models
    out[models[models >= 0]] = True
  return out


def queued(plan: Plan, schedule: Schedule) -> int:
  """Models still waiting for a slot (in the open wave's queues or in later waves)."""
  later = sum(len(m) for m, w in zip(plan.members, plan.wave_of) if w > schedule.wave)
  return later + sum(len(plan.members[i]) - schedule.groups[i].queued
                     for i in open_groups(plan, schedule))


def _replace(schedule: Schedule, changed: dict[int, GroupSlots]) -> Schedule:
  return dataclasses.replace(schedule, groups=tuple(changed.get(i, g)
                                                    for i, g in enumerate(schedule.groups)))


def refill(plan: Plan, schedule: Schedule, stopped: np.ndarray
           ) -> tuple[Schedule, np.ndarray, dict[int, np.ndarray]]:
  """Each slot of the open wave whose model stopped (stopped [models] bool) takes the next
  member of its group's queue; a slot with nothing left to take is emptied. Returns (schedule,
  zoo positions of the models that entered a slot, {group: fresh [slots] bool} for the groups
  where some slot needs a new model's initial state)."""
  changed, entered, fresh_by_group = {}, [], {}
  for i in open_groups(plan, schedule):
    g, members = schedule.groups[i], plan.members[i]
    models, rows, head = g.models.copy(), g.rows.copy(), g.queued
    fresh = np.zeros(g.num_slots, bool)
    for slot in np.flatnonzero((models >= 0) & stopped[np.maximum(models, 0)]):
      if head < len(members):
        models[slot], rows[slot], fresh[slot] = members[head], head, True
        entered.append(int(members[head]))
        head += 1
      else:
        models[slot] = -1
    changed[i] = dataclasses.replace(g, models=models, rows=rows, queued=head)
    if fresh.any():
      fresh_by_group[i] = fresh
  return _replace(schedule, changed), np.asarray(entered, np.int64), fresh_by_group


def compact(plan: Plan, schedule: Schedule, running: np.ndarray
            ) -> tuple[Schedule, dict[int, np.ndarray]]:
  """Shrinks each open group whose queue is empty and whose busy slots (models with
  running[model] True) fill at most half of its slots, to the next power of two of them; busy
  slots keep their order. Returns (schedule, {group: keep [new slots] int}: the old slot each
  new slot takes its state from)."""
  changed, keeps = {}, {}
  for i in open_groups(plan, schedule):
    g = schedule.groups[i]
    busy = np.flatnonzero((g.models >= 0) & running[np.maximum(g.models, 0)])
    if g.queued < len(plan.members[i]) or g.num_slots == 1 or 2 * len(busy) > g.num_slots:
      continue
    planned = 1 << max(0, math.ceil(math.log2(max(len(busy), 1))))
    chunk, size = slot_layout(plan, planned)
    if size >= g.num_slots:
      continue
    keep = np.concatenate([busy, np.setdiff1d(np.arange(g.num_slots), busy)[:size - len(busy)]])
    idle = np.zeros(size, bool)
    idle[len(busy):] = True
    changed[i] = GroupSlots(np.where(idle, -1, g.models[keep]), g.rows[keep], g.queued, planned,
                            chunk)
    keeps[i] = keep
  return _replace(schedule, changed), keeps


def next_wave(plan: Plan, schedule: Schedule) -> Schedule:
  """The next wave open (the models of the open one must have stopped)."""
  if schedule.wave + 1 >= plan.num_waves:
    raise ValueError('no wave left')
  return dataclasses.replace(schedule, wave=schedule.wave + 1)


def device_major(parts: Sequence[np.ndarray], devices: int) -> np.ndarray:
  """The concatenation of per-group slot arrays in the row order of a program over several
  groups' slots: each device concatenates its own shards, and devices follow each other."""
  return np.concatenate([np.asarray(p).reshape(devices, -1) for p in parts], axis=1).reshape(-1)


def to_arrays(schedule: Schedule) -> dict[str, np.ndarray]:
  """The schedule as flat arrays, for a checkpoint."""
  groups = schedule.groups
  return {'slot_models': np.concatenate([g.models for g in groups]),
          'slot_rows': np.concatenate([g.rows for g in groups]),
          'queued': np.asarray([g.queued for g in groups], np.int64),
          'num_slots': np.asarray([g.num_slots for g in groups], np.int64),
          'planned': np.asarray([g.planned for g in groups], np.int64),
          'wave': np.int64(schedule.wave)}


def from_arrays(plan: Plan, arrays: dict) -> Schedule:
  """What `to_arrays` gave, checked against `plan`; raises ValueError where it does not fit."""
  num_slots = np.asarray(arrays['num_slots'])
  if len(num_slots) != plan.num_groups:
    raise ValueError('the saved schedule does not match this zoo\'s groups')
  # Checkpoints from before the device-independent chunks planned their slot counts.
  planned = np.asarray(arrays.get('planned', num_slots))
  laid_out = [slot_layout(plan, int(n))[1] for n in planned]
  if not np.array_equal(laid_out, num_slots):
    raise ValueError(f'the saved run had slot counts {num_slots.tolist()}, which this zoo does '
                     f'not lay out over {plan.devices} devices; resume it on as many devices '
                     'as it ran, with the nws_jax that started it')
  bounds = np.cumsum([0] + [int(n) for n in num_slots])
  models, rows = np.asarray(arrays['slot_models']), np.asarray(arrays['slot_rows'])
  queue = np.asarray(arrays['queued'])
  if len(models) != bounds[-1] or len(rows) != bounds[-1] or len(queue) != plan.num_groups:
    raise ValueError('the saved schedule does not match this zoo\'s groups and slots')
  wave = int(arrays['wave'])
  if not 0 <= wave < plan.num_waves:
    raise ValueError(f'the saved schedule is in wave {wave}, this zoo has {plan.num_waves}')
  return Schedule(tuple(_planned(plan, i, int(planned[i]), models[a:b], rows[a:b], queue[i])
                        for i, (a, b) in enumerate(zip(bounds[:-1], bounds[1:]))), wave)
