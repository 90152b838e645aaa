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

Beside the chunks, `snapshots/checksums.json` holds one CRC-32 per model, of its [20, n_i] float32
weights then its 20 int32 export numbers (little-endian bytes), written atomically before each
chunk is saved, so a finished chunk always has its checksums. `load_snapshots` recomputes them and
raises ChecksumError naming the first damaged model: Orbax's compressed data can decode to wrong
weights after a flipped byte, with no error of its own. Snapshots written before the checksums
existed (no file) load unverified, with a warning.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import shutil
import zlib
from typing import Sequence

import numpy as np
import orbax.checkpoint as ocp

from nws_jax import files

NUM_SNAPSHOTS = 20
CHECKSUMS_FILE = 'checksums.json'
# CRC-32 (zlib) finds every flipped bit or byte and any error burst of up to 32 bits; measured at
# 4.2 GB/s against sha256's 1.8 GB/s on this project's 2-core CPU (BENCHMARKS.md).
CHECKSUM_ALGORITHM = 'crc32'


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


class ChecksumError(ValueError):
  """Snapshots that do not match their saved checksums (damaged on disk).

  models: 0-based indices (in snapshot order) of the models whose checksum differs.
  """

  def __init__(self, directory: str, models: Sequence[int]):
    self.models = [int(m) for m in models]
    more = f' (and {len(self.models) - 1} more models)' if len(self.models) > 1 else ''
    super().__init__(f'{directory}: snapshots of model {self.models[0]} do not match their '
                     f'checksum{more}: the file is damaged')


def _crc32(parts: Sequence[np.ndarray]) -> str:
  crc = 0
  for part in parts:
    crc = zlib.crc32(part, crc)
  return f'{crc:08x}'


def _sha256(parts: Sequence[np.ndarray]) -> str:
  digest = hashlib.sha256()
  for part in parts:
    digest.update(part)
  return digest.hexdigest()


_CHECKSUMS = {'crc32': _crc32, 'sha256': _sha256}


def model_checksum(weights: np.ndarray, export_numbers: np.ndarray,
                   algorithm: str = CHECKSUM_ALGORITHM) -> str:
  """Hex checksum of one model: its float32 [S, n] weights, then its int [S] export numbers, as
  little-endian row-major bytes (float32 and int32, as saved)."""
  parts = (np.ascontiguousarray(weights, '<f4').reshape(-1),
           np.ascontiguousarray(export_numbers, '<i4').reshape(-1))
  return _CHECKSUMS[algorithm](parts)


def checksums(snapshots: Snapshots, export_numbers: np.ndarray,
              algorithm: str = CHECKSUM_ALGORITHM) -> list[str]:
  """One `model_checksum` per model of `snapshots` (export_numbers: int [models, S])."""
  return [model_checksum(snapshots[i], export_numbers[i], algorithm)
          for i in range(len(snapshots))]


def write_checksums(directory: str, models: Sequence[str],
                    algorithm: str = CHECKSUM_ALGORITHM) -> None:
  """Writes `directory`/checksums.json atomically: {'algorithm', 'models': [hex per model]}."""
  record = {'algorithm': algorithm, 'models': list(models)}
  files.write_atomic(os.path.join(directory, CHECKSUMS_FILE),
                     lambda f: json.dump(record, f), mode='w')


def read_checksums(directory: str) -> dict | None:
  """{'algorithm', 'models'} of `directory`/checksums.json, or None when there is none (written
  before checksums existed). Raises ValueError naming the file when it is damaged."""
  path = os.path.join(directory, CHECKSUMS_FILE)
  if not os.path.exists(path):
    return None
  try:
    with open(path, 'rb') as f:
      record = json.loads(f.read().decode('utf-8'))
  except (ValueError, UnicodeDecodeError) as e:
    raise ValueError(f'{path} is damaged (not valid JSON)') from e
  ok = (isinstance(record, dict) and record.get('algorithm') in _CHECKSUMS
        and isinstance(record.get('models'), list)
        and all(isinstance(c, str) for c in record['models']))
  if not ok:
    raise ValueError(f'{path} is damaged (not a list of {"/".join(_CHECKSUMS)} checksums)')
  return record


_warned_unverified = set()


def verify_checksums(directory: str, snapshots: Snapshots, export_numbers: np.ndarray) -> bool:
  """Checks `snapshots` and export numbers [models, S] read from `directory` against its
  checksums.json. Returns False (and warns once per directory) when there is no such file;
  raises ChecksumError naming the damaged models, ValueError when the file is damaged or lists
  another number of models."""
  record = read_checksums(directory)
  if record is None:
    if directory not in _warned_unverified:
      _warned_unverified.add(directory)
      logging.warning('%s has no %s (written before snapshots had checksums): its snapshots are '
                      'not verified', directory, CHECKSUMS_FILE)
    return False
  expected = record['models']
  if len(expected) != len(snapshots):
    raise ValueError(f'{os.path.join(directory, CHECKSUMS_FILE)} lists {len(expected)} models, '
                     f'the snapshots hold {len(snapshots)}: the snapshots are damaged')
  actual = checksums(snapshots, export_numbers, record['algorithm'])
  bad = [i for i, (a, e) in enumerate(zip(actual, expected)) if a != e]
  if bad:
    raise ChecksumError(directory, bad)
  return True


class ChunkWriter:
  """Writes the kept snapshots chunk by chunk (consecutive models), each an atomic Orbax step,
  and the checksums of every model written (checksums.json, rewritten before each chunk)."""

  def __init__(self, directory: str):
    self._directory = directory
    self._manager = _manager(directory, async_save=False)
    self._step = 0
    self._checksums = []

  def append(self, snapshots, export_numbers: np.ndarray) -> None:
    """snapshots: a Snapshots or [k, S, n]; export_numbers: int [k, S]."""
    snaps = as_snapshots(snapshots)
    numbers = np.asarray(export_numbers, np.int32)
    if numbers.shape != (len(snaps), snaps.num_snapshots):
      raise ValueError(f'export_numbers {numbers.shape} do not match '
                       f'{len(snaps)} models × {snaps.num_snapshots} snapshots')
    # Before the chunk: a finished chunk always has its checksums (a crash in between leaves
    # checksums of more models than the chunks hold, which loading reports as damage). Every
    # process of a multi-process zoo writes the same file.
    self._checksums += checksums(snaps, numbers)
    os.makedirs(self._directory, exist_ok=True)
    write_checksums(self._directory, self._checksums)
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


def load_snapshots(directory: str, verify: bool = True) -> tuple[Snapshots, np.ndarray]:
  """Reads (Snapshots, export numbers int [models, S]) from `directory`, every chunk in order.

  Raises FileNotFoundError when `directory` holds no finished chunk, ValueError when a chunk is
  missing (chunks are steps 0, 1, … with none left out) or does not hold a [k, S] export_numbers,
  k lengths and their weights; Orbax's own errors for a chunk it cannot read (a truncated or
  overwritten file). With `verify`, ChecksumError for damage inside the compressed weights that
  still decodes (`verify_checksums`; snapshots saved before checksums existed are not verified).
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
  snaps = Snapshots(flat, lengths, numbers.shape[1])
  if verify:
    verify_checksums(directory, snaps, numbers)
  return snaps, numbers


def remove_exports(directory: str) -> None:
  shutil.rmtree(directory, ignore_errors=True)
