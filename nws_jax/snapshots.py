"""Weight snapshots of a zoo (PROTOCOL §4): per-epoch exports, the 20 kept, Orbax storage.

While a zoo trains, every epoch boundary's weights of all models, [models, n] float32 in the
release order (`cnn.flatten`), are saved asynchronously with Orbax as one step of an `exports/`
checkpoint directory (step e holds export e + 1: step 0 is the initialisation). When training
ends, each model keeps the exports round(linspace(1, E, 20)) of its own E exports; these go to
the `snapshots/` checkpoint as [models, 20, n] with their export numbers [models, 20], and the
per-epoch exports are deleted.
"""

from __future__ import annotations

import os
import shutil

import jax
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
  """Saves per-epoch exports [models, n] as Orbax steps without blocking training."""

  def __init__(self, directory: str):
    self.directory = directory
    self._manager = _manager(directory)

  def save(self, step: int, weights: jax.Array) -> None:
    """step: epochs trained (0 = initialisation); weights: [models, n] float32."""
    self._manager.save(step, args=ocp.args.StandardSave({'weights': weights}))

  def steps(self) -> list[int]:
    return sorted(self._manager.all_steps())

  def delete_after(self, step: int) -> None:
    """Drops exports of steps > step (a resumed run redoes those epochs)."""
    self._manager.wait_until_finished()
    for s in self.steps():
      if s > step:
        self._manager.delete(s)

  def read(self, step: int) -> np.ndarray:
    self._manager.wait_until_finished()
    return np.asarray(self._manager.restore(step, args=ocp.args.StandardRestore())['weights'])

  def wait(self) -> None:
    self._manager.wait_until_finished()

  def close(self) -> None:
    self._manager.wait_until_finished()
    self._manager.close()


def gather_snapshots(writer: ExportWriter, epochs: np.ndarray,
                     num_snapshots: int = NUM_SNAPSHOTS) -> tuple[np.ndarray, np.ndarray]:
  """Each model's kept exports: ([models, num_snapshots, n] float32, export numbers [models, S]).

  epochs: [models] epochs each model trained, so model m has E = epochs[m] + 1 exports. Each
  saved export step is read at most once.
  """
  epochs = np.asarray(epochs)
  numbers = np.stack([select_exports(int(e) + 1, num_snapshots) for e in epochs])
  out = None
  for step in np.unique(numbers - 1):
    weights = writer.read(int(step))
    if out is None:
      out = np.empty((len(epochs), num_snapshots, weights.shape[1]), np.float32)
    rows, cols = np.nonzero(numbers - 1 == step)
    out[rows, cols] = weights[rows]
  return out, numbers


def save_snapshots(directory: str, snapshots: np.ndarray, export_numbers: np.ndarray) -> None:
  """Writes the kept snapshots with Orbax (atomic: a crash leaves no half-written checkpoint)."""
  manager = _manager(directory)
  manager.save(0, args=ocp.args.StandardSave(
      {'snapshots': np.asarray(snapshots, np.float32),
       'export_numbers': np.asarray(export_numbers, np.int32)}))
  manager.wait_until_finished()
  manager.close()


def is_complete(directory: str) -> bool:
  """Whether `directory` holds a finished snapshots checkpoint (Orbax finalises atomically)."""
  if not os.path.isdir(directory):
    return False
  manager = ocp.CheckpointManager(os.path.abspath(directory))
  try:
    return manager.latest_step() is not None
  finally:
    manager.close()


def load_snapshots(directory: str) -> tuple[np.ndarray, np.ndarray]:
  """Reads ([models, 20, n] float32 snapshots, [models, 20] export numbers) from `directory`."""
  manager = ocp.CheckpointManager(os.path.abspath(directory))
  step = manager.latest_step()
  if step is None:
    raise FileNotFoundError(f'no snapshots checkpoint in {directory}')
  tree = manager.restore(step, args=ocp.args.StandardRestore())
  manager.close()
  return np.asarray(tree['snapshots'], np.float32), np.asarray(tree['export_numbers'])


def remove_exports(directory: str) -> None:
  shutil.rmtree(directory, ignore_errors=True)
