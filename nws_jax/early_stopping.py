"""Per-model early stopping of PROTOCOL §3, vectorised over a zoo's models axis.

Judged once per epoch on validation accuracy: stop after `patience_fall` (5) consecutive epochs
of falling accuracy, or once accuracy has been below its running value (smoothed 0.5/0.5
exponentially) in `patience_below` (30) epochs, or after `patience_same` (30) consecutive epochs
of unchanged accuracy. Training also ends at `max_epochs`. The "below its running value" count
is cumulative (the original code never resets it). Two readings (`StoppingRules.reading`):

- 'original' (default): what the code that made the release did (classifier.py, the block after
  each export). The initialisation's validation accuracy is the first value of the sequence
  (`observe_initial`; export 1), so epoch 1 is already compared with it. An epoch whose accuracy
  is unchanged (|difference| < 1e-8) counts towards `patience_same` and leaves the count of
  consecutive falls as it was (only a rise resets it). "Below" compares the accuracy with the
  smoothed value after this epoch entered it, as written there. The rules are judged once
  `min_epochs` exports exist (`ii >= 20` there: the initialisation and 19 epochs).
- 'protocol': PROTOCOL §3's words as this project first read them: counters run from epoch 1
  (the initialisation is not compared), an unchanged epoch resets the fall count, "below"
  compares with the smoothed value before this epoch, judged once `min_epochs` epochs trained.

A model whose loss or weights turned non-finite during an epoch (the trainer freezes it at its
last finite state) stops with status DIVERGED at that epoch: `update(..., diverged=)`. Its
epochs count the epoch it diverged in (trained in part), and no later update changes it.

All functions are pure numpy/jax-agnostic array code over [models] arrays.
"""

from __future__ import annotations

import dataclasses
from typing import NamedTuple

import numpy as np

RUNNING, EARLY_STOPPED, EPOCH_CAP, DIVERGED = 0, 1, 2, 3
READINGS = ('original', 'protocol')
SAME_TOLERANCE = 1e-8  # the original's |difference| below which accuracy is unchanged
STATUS_NAMES = ('running', 'early_stopped', 'epoch_cap', 'diverged')


@dataclasses.dataclass(frozen=True)
class StoppingRules:
  min_epochs: int = 20
  max_epochs: int = 1000
  patience_fall: int = 5
  patience_below: int = 30
  patience_same: int = 30
  smoothing: float = 0.5
  reading: str = 'original'

  def __post_init__(self):
    if self.reading not in READINGS:
      raise ValueError(f'unknown early-stopping reading {self.reading!r}; choose from: '
                       + ', '.join(READINGS))
    if self.max_epochs < 1:
      raise ValueError(f'max_epochs must be at least 1, got {self.max_epochs}')
    if self.min_epochs < 0 or self.min_epochs > self.max_epochs:
      raise ValueError(f'min_epochs must be in [0, max_epochs={self.max_epochs}], '
                       f'got {self.min_epochs}')


class StoppingState(NamedTuple):
  """Per-model counters, each an array [models]."""
  previous: np.ndarray   # float64, last epoch's validation accuracy (NaN before the first)
  smoothed: np.ndarray   # float64, running smoothed accuracy (NaN before the first)
  n_fall: np.ndarray     # int, consecutive epochs of falling accuracy
  n_below: np.ndarray    # int, epochs with accuracy below the smoothed value
  n_same: np.ndarray     # int, consecutive epochs of unchanged accuracy
  status: np.ndarray     # int, RUNNING / EARLY_STOPPED / EPOCH_CAP / DIVERGED
  epochs: np.ndarray     # int, epochs trained


def initial_state(num_models: int) -> StoppingState:
  nan = np.full(num_models, np.nan)
  zeros = np.zeros(num_models, np.int64)
  return StoppingState(nan, nan.copy(), zeros, zeros.copy(), zeros.copy(), zeros.copy(),
                       zeros.copy())


def observe_initial(state: StoppingState, valid_accuracy: np.ndarray, models: np.ndarray,
                    rules: StoppingRules) -> StoppingState:
  """Enters the initialisation's validation accuracy [models] (export 1) of the models with
  models[model] True as the first value of their sequences, under the 'original' reading (the
  'protocol' reading starts at epoch 1: the state is returned unchanged). Epochs stay 0."""
  if rules.reading != 'original':
    return state
  acc = np.asarray(valid_accuracy, np.float64)
  return state._replace(previous=np.where(models, acc, state.previous),
                        smoothed=np.where(models, acc, state.smoothed))


def update(state: StoppingState, valid_accuracy: np.ndarray, rules: StoppingRules,
           trained: np.ndarray | None = None,
           diverged: np.ndarray | None = None) -> StoppingState:
  """Takes one finished epoch's validation accuracies [models] (fractions).

  Models already stopped, and those with trained[model] False (waiting for a slot), are left
  exactly as they were; `epochs` counts the epochs each running model has now trained.
  diverged[model] True (a running model that diverged in this epoch) stops it with status
  DIVERGED, whatever the rules say; its counters are updated as for any epoch.
  """
  acc = np.asarray(valid_accuracy, np.float64)
  running = state.status == RUNNING
  if trained is not None:
    running = running & trained
  epochs = state.epochs + running
  first = np.isnan(state.previous)
  fell = ~first & (acc < state.previous)
  smoothed = np.where(first, acc, rules.smoothing * state.smoothed + (1 - rules.smoothing) * acc)
  if rules.reading == 'original':
    same = ~first & ~fell & (np.abs(acc - state.previous) < SAME_TOLERANCE)
    n_fall = np.where(fell, state.n_fall + 1, np.where(same, state.n_fall, 0))
    below = ~first & (acc < smoothed)
    judged = epochs + 1 >= rules.min_epochs  # exports: the initialisation is export 1
  else:
    same = ~first & (acc == state.previous)
    n_fall = np.where(fell, state.n_fall + 1, 0)
    below = ~first & (acc < state.smoothed)
    judged = epochs >= rules.min_epochs
  n_same = np.where(same, state.n_same + 1, 0)
  n_below = state.n_below + below
  stop = judged & ((n_fall >= rules.patience_fall) | (n_below >= rules.patience_below)
                   | (n_same >= rules.patience_same))
  status = np.where(stop, EARLY_STOPPED, np.where(epochs >= rules.max_epochs, EPOCH_CAP, RUNNING))
  if diverged is not None:
    status = np.where(diverged, DIVERGED, status)
  new = StoppingState(acc, smoothed, n_fall, n_below, n_same, status, epochs)
  return StoppingState(*(np.where(running, n, o) for n, o in zip(new, state)))
