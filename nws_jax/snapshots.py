"""Weight snapshots of a zoo (PROTOCOL §4): per-epoch exports, the 20 kept, Orbax storage.

While a zoo trains, every epoch boundary's weights of all models in the release order
(`cnn.flatten`), one float32 [models of the architecture, n] array per architecture, are saved
asynchronously with Orbax as one step of an `exports/` checkpoint directory (step e holds export
e + 1: step 0 is the initialisation). When training
ends, each model keeps the exports round(linspace(1, E, 20)) of its own E exports; these go to
the `snapshots/` checkpoint with their export numbers [models, 20], and the per-epoch exports
are deleted.

The kept snapshots are ragged: model i's are [20, n_i] (its own architecture's weight count), held
in a `Snapshots` (one flat float32 array, model after model). On disk, `snapshots/` is an Orbax
checkpoint directory whose steps are chunks of consecutive models, each {'weights': flat float32,
'lengths': int32 [k], 'export_numbers': int32 [k, 20]}: a trained zoo writes one chunk, an import
streams many (`ChunkWriter`), and `load_snapshots` concatenates them in step order.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
from typing import Sequence

import numpy as np
import orbax.checkpoint as ocp

NUM_SNAPSHOTS = 20


def select_exports(num_exports: int, num_snapshots: int = NUM_SNAPSHOTS) -> np.ndarray:
  """Export numbers (1-based) kept of `num_exports`: round(linspace(1, E, 20)), int [num_snapshots].

  Rounding is numpy's (half to even). With fewer exports than snapshots, numbers repeat.
  """
  if num_exports < 1:
    raise ValueError(f'need at least one export, got {num_exports}')
  return np.round(np.linspace(1, num_exports, num_snapshots)).astype(np.int64)


def _manager(directory: str, async_save: bool = True) -> ocp.CheckpointManager:
  return ocp.CheckpointManager(
      os.path.abspath(directory),
      options=ocp.CheckpointManagerOptions(max_to_keep=None,
                                           enable_async_checkpointing=async_save,
                                           create=True))


class ExportWriter:
  """Saves per-epoch exports (a tuple of [models_a, n_a] arrays, one per architecture) as Orbax
  steps without blocking training."""

  def __init__(self, directory: str):
    self.directory = directory
    self._manager = _manager(directory)

  def save(self, step: int, weights) -> None:
    """step: epochs trained (0 = initialisation); weights: float32 [models, n], or a tuple of
    such arrays (one per architecture)."""
    if not isinstance(weights, (tuple, list)):
      weights = (weights,)
    self._manager.save(step, args=ocp.args.StandardSave({'weights': list(weights)}))

  def steps(self) -> list[int]:
    return sorted(self._manager.all_steps())

  def delete_after(self, step: int) -> None:
    """Drops exports of steps > step (a resumed run redoes those epochs)."""
    self._manager.wait_until_finished()
    for s in self.steps():
      if s > step:
        self._manager.delete(s)

  def read(self, step: int) -> list[np.ndarray]:
    """The arrays saved at `step`, in the order given to `save`."""
    self._manager.wait_until_finished()
    tree = self._manager.restore(step, args=ocp.args.StandardRestore())['weights']
    return [np.asarray(a) for a in tree]

  def wait(self) -> None:
    self._manager.wait_until_finished()

  def close(self) -> None:
    self._manager.wait_until_finished()
    self._manager.close()


def gather_snapshots(writer: ExportWriter, epochs: np.ndarray, locations: np.ndarray,
                     num_snapshots: int = NUM_SNAPSHOTS,
                     lengths: np.ndarray | None = None) -> tuple['Snapshots', np.ndarray]:
  """Each model's kept exports: (Snapshots, export numbers int [models, num_snapshots]).

  epochs: [models] epochs each model trained, so model m has E = epochs[m] + 1 exports.
  locations: int [models, epochs + 1, 3], where model m's export of epoch e was saved: (saved
  step, index of the array in it, row) (`trainer.TrainResult.exports`).
  lengths: [models] model m's vector is the first lengths[m] entries of its row (padded
  architectures); None: whole rows. Each saved step is read at most once.
  """
  epochs = np.asarray(epochs)
  numbers = np.stack([select_exports(int(e) + 1, num_snapshots) for e in epochs])
  per_model = [None] * len(epochs)
  wanted = {}  # saved step -> [(model, columns, array index, row)]
  for m, nums in enumerate(numbers):
    for e in np.unique(nums - 1):
      step, array, row = (int(x) for x in locations[m, e])
      if step < 0:
        raise ValueError(f'model {m} has no saved export of epoch {e}')
      wanted.setdefault(step, []).append((m, np.flatnonzero(nums - 1 == e), array, row))
  for step in sorted(wanted):
    arrays = writer.read(step)
    for m, cols, array, row in wanted[step]:
      weights = arrays[array]
      n = weights.shape[1] if lengths is None else int(lengths[m])
      if per_model[m] is None:
        per_model[m] = np.empty((num_snapshots, n), np.float32)
      per_model[m][cols] = weights[row, :n]
  return Snapshots.from_list(per_model), numbers


@dataclasses.dataclass
class Snapshots:
  """Every model's kept snapshots, ragged: model i's are [num_snapshots, n_i] float32.

  flat: float32 [sum_i num_snapshots · n_i], model after model, each model's snapshots in order;
  lengths: int64 [models], n_i. `snaps[i]` is a [num_snapshots, n_i] view of model i's.
  """
  flat: np.ndarray
  lengths: np.ndarray
  num_snapshots: int = NUM_SNAPSHOTS

  def __post_init__(self):
    self.flat = np.asarray(self.flat)
    self.lengths = np.asarray(self.lengths, np.int64).reshape(-1)
    expected = int(self.lengths.sum()) * self.num_snapshots
    if self.flat.ndim != 1 or self.flat.size != expected:
      raise ValueError(f'flat snapshots of {self.flat.size} weights, expected {expected} '
                       f'({len(self.lengths)} models × {self.num_snapshots} snapshots)')
    # Computed once: indexing a model, reading slices and `vectors` all need it.
    sizes = self.lengths * self.num_snapshots
    self._starts = np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(np.int64)

  @property
  def starts(self) -> np.ndarray:
    """int64 [models]: where each model's [num_snapshots, n_i] block starts in `flat`."""
    return self._starts

  def __len__(self) -> int:
    return len(self.lengths)

  def __getitem__(self, i: int) -> np.ndarray:
    i = range(len(self))[i]
    start, n = int(self.starts[i]), int(self.lengths[i])
    return self.flat[start:start + self.num_snapshots * n].reshape(self.num_snapshots, n)

  @property
  def is_uniform(self) -> bool:
    """Whether every model has the same vector length (one architecture)."""
    return len(self) > 0 and bool((self.lengths == self.lengths[0]).all())

  def as_array(self) -> np.ndarray:
    """[models, num_snapshots, n] view; raises ValueError when the lengths differ."""
    if not self.is_uniform:
      raise ValueError('the models have vectors of different lengths '
                       f'({sorted(set(self.lengths.tolist()))[:5]}…); index model by model')
    return self.flat.reshape(len(self), self.num_snapshots, int(self.lengths[0]))

  def read(self, models: np.ndarray, snaps: np.ndarray, offsets: np.ndarray,
           length: int) -> np.ndarray:
    """float32 [N, length]: the weights offsets[j]..+length of snapshot snaps[j] (0-based) of
    model models[j]."""
    starts = (self.starts[models] + np.asarray(snaps, np.int64) * self.lengths[models]
              + np.asarray(offsets, np.int64))
    return self.flat[starts[:, None] + np.arange(length)[None, :]]

  def vectors(self, models: np.ndarray, snaps: np.ndarray) -> list[np.ndarray]:
    """float32 [n_m] whole vectors of (model, 0-based snapshot) pairs (views)."""
    return [self[int(m)][int(s)] for m, s in zip(np.asarray(models), np.asarray(snaps))]

  @classmethod
  def from_array(cls, snapshots: np.ndarray) -> 'Snapshots':
    """From a uniform [models, S, n] array."""
    snapshots = np.asarray(snapshots, np.float32)
    models, num, n = snapshots.shape
    return cls(snapshots.reshape(-1), np.full(models, n), num)

  @classmethod
  def from_list(cls, per_model: Sequence[np.ndarray]) -> 'Snapshots':
    """From one [S, n_i] array per model (all with the same S)."""
    per_model = [np.asarray(a, np.float32) for a in per_model]
    nums = {a.shape[0] for a in per_model}
    if len(nums) != 1:
      raise ValueError(f'models have different numbers of snapshots: {sorted(nums)}')
    return cls(np.concatenate([a.reshape(-1) for a in per_model]),
               np.array([a.shape[1] for a in per_model]), nums.pop())


def as_snapshots(snapshots) -> Snapshots:
  return snapshots if isinstance(snapshots, Snapshots) else Snapshots.from_array(snapshots)


class ChunkWriter:
  """Writes the kept snapshots chunk by chunk (consecutive models), each an atomic Orbax step."""

  def __init__(self, directory: str):
    self._manager = _manager(directory, async_save=False)
    self._step = 0

  def append(self, snapshots, export_numbers: np.ndarray) -> None:
    """snapshots: a Snapshots or [k, S, n]; export_numbers: int [k, S]."""
    snaps = as_snapshots(snapshots)
    numbers = np.asarray(export_numbers, np.int32)
    if numbers.shape != (len(snaps), snaps.num_snapshots):
      raise ValueError(f'export_numbers {numbers.shape} do not match '
                       f'{len(snaps)} models × {snaps.num_snapshots} snapshots')
    self._manager.save(self._step, args=ocp.args.StandardSave(
        {'weights': np.asarray(snaps.flat, np.float32),
         'lengths': snaps.lengths.astype(np.int32), 'export_numbers': numbers}))
    self._manager.wait_until_finished()
    self._step += 1

  def close(self) -> None:
    self._manager.wait_until_finished()
    self._manager.close()


def save_snapshots(directory: str, snapshots, export_numbers: np.ndarray) -> None:
  """Writes the kept snapshots (a Snapshots or [models, S, n]) as one chunk (atomic: a crash
  leaves no half-written checkpoint)."""
  writer = ChunkWriter(directory)
  writer.append(snapshots, export_numbers)
  writer.close()


def is_complete(directory: str) -> bool:
  """Whether `directory` holds a finished snapshots checkpoint (Orbax finalises atomically)."""
  if not os.path.isdir(directory):
    return False
  manager = ocp.CheckpointManager(os.path.abspath(directory))
  try:
    return manager.latest_step() is not None
  finally:
    manager.close()


def load_snapshots(directory: str) -> tuple[Snapshots, np.ndarray]:
  """Reads (Snapshots, export numbers int [models, S]) from `directory`, every chunk in order.

  Raises FileNotFoundError when `directory` holds no finished chunk, ValueError when a chunk is
  missing (chunks are steps 0, 1, … with none left out) or does not hold a [k, S] export_numbers,
  k lengths and their weights; Orbax's own errors for a chunk it cannot read (a truncated or
  overwritten file). Damage inside the compressed weights that still decodes is not detected.
  """
  if not os.path.isdir(directory):
    raise FileNotFoundError(f'no snapshots checkpoint in {directory}: not a directory')
  manager = ocp.CheckpointManager(os.path.abspath(directory))
  try:
    steps = sorted(manager.all_steps())
    if not steps:
      raise FileNotFoundError(f'no snapshots checkpoint in {directory}')
    if steps != list(range(len(steps))):
      gap = min(set(range(steps[-1] + 1)) - set(steps))
      raise ValueError(f'chunk {gap} of the snapshots in {directory} is missing (chunks '
                       f'{steps[0]}..{steps[-1]}, {len(steps)} present)')
    chunks = [manager.restore(step, args=ocp.args.StandardRestore()) for step in steps]
  finally:
    manager.close()
  num_snapshots = None
  for step, c in zip(steps, chunks):
    shapes = {k: np.shape(c[k]) for k in ('weights', 'lengths', 'export_numbers') if k in c}
    ok = (len(shapes) == 3 and len(shapes['weights']) == 1 and len(shapes['lengths']) == 1
          and len(shapes['export_numbers']) == 2
          and shapes['export_numbers'][0] == shapes['lengths'][0]
          and shapes['export_numbers'][1] == (num_snapshots or shapes['export_numbers'][1]))
    if not ok:
      raise ValueError(f'chunk {step} of the snapshots in {directory} is malformed ('
                       + ', '.join(f'{k} {list(v)}' for k, v in shapes.items()) + ')')
    num_snapshots = shapes['export_numbers'][1]
  numbers = np.concatenate([np.asarray(c['export_numbers']) for c in chunks])
  lengths = np.concatenate([np.asarray(c['lengths'], np.int64) for c in chunks])
  if (lengths < 0).any():
    raise ValueError(f'the snapshots in {directory} have negative vector lengths')
  flat = (np.asarray(chunks[0]['weights'], np.float32) if len(chunks) == 1 else
          np.concatenate([np.asarray(c['weights'], np.float32) for c in chunks]))
  return Snapshots(flat, lengths, numbers.shape[1]), numbers


def remove_exports(directory: str) -> None:
  shutil.rmtree(directory, ignore_errors=True)
