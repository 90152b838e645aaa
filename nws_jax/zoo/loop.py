"""The zoo's host loop: rounds (one epoch of every slot) until every model has stopped.

`train` drives a `trainer.ZooTrainer`'s programs by its schedule: train a round, evaluate,
apply the stopping rules (`early_stopping`), export, refill stopped models' slots, compact,
open the next wave. Everything it keeps between rounds is a `TrainResult` (what a checkpoint
saves and `train(resume=...)` continues from); the progress bar's text is built apart
(`progress_text`).
"""

from __future__ import annotations

import time
from typing import Callable, NamedTuple

import numpy as np

from nws_jax import early_stopping
from nws_jax.zoo import schedule as schedule_lib
from nws_jax.zoo.trainer import ZooTrainer


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


class _Loop:
  """What the host loop keeps between rounds, and the steps of a round. Arrays are per model
  (zoo position); `exports` and `saved` say where each model's exported epochs are."""

  def __init__(self, trainer: ZooTrainer, resume: TrainResult | None,
               on_export: Callable[[int, tuple], None] | None):
    self.trainer, self.on_export, self.rules = trainer, on_export, trainer.cfg.rules
    self.t0 = time.time()
    m, epochs = trainer.num_models, trainer.cfg.rules.max_epochs + 1
    if resume is None:
      trainer.reset_slots()
      self.stopping = early_stopping.initial_state(m)
      self.curves = np.full((m, epochs, 3), np.nan)
      self.losses = np.full((m, epochs), np.nan)
      self.exports = np.full((m, epochs, 3), -1, np.int64)
      self.rounds, self.saved = 0, 0
    else:
      trainer.restore_schedule(resume.schedule)
      self.stopping = resume.stopping
      self.curves, self.losses = resume.curves.copy(), resume.losses.copy()
      self.exports, self.rounds = resume.exports.copy(), resume.rounds
      self.saved = int(self.exports[..., 0].max()) + 1

  def running(self) -> np.ndarray:
    return self.stopping.status == early_stopping.RUNNING

  def result(self, state) -> TrainResult:
    return TrainResult(state, self.stopping, self.curves, self.losses, time.time() - self.t0,
                       self.exports, self.trainer.schedule, self.rounds)

  def export(self, state, models: np.ndarray) -> None:
    """Saves the slots' weights; records them as the current epoch of `models` [models] bool."""
    if self.on_export is not None:
      self.on_export(self.saved, self.trainer.export(state))
    for a, rows in enumerate(self.trainer.export_rows()):
      for row, pos in enumerate(rows):
        if pos >= 0 and models[pos]:
          self.exports[pos, self.stopping.epochs[pos]] = (self.saved, a, row)
    self.saved += 1

  def start(self, state, models: np.ndarray):
    """Evaluates and exports the models just put in slots (their epoch 0); returns the state."""
    acc, state = self.trainer.evaluate(state, np.zeros(self.trainer.num_models, np.int64),
                                       models)
    self.curves[models, 0] = acc[models]
    self.stopping = early_stopping.observe_initial(self.stopping, acc[:, 1], models, self.rules)
    self.export(state, models)
    return state

  def round(self, state, on_call: Callable[[], None] | None):
    """One epoch of every running model in a slot: train, evaluate, stop, export, then refill,
    compact and open the next wave as the schedule says. Returns (state, accuracy [models, 3],
    trained [models] bool, finished [models] bool)."""
    trainer, rules = self.trainer, self.rules
    self.rounds += 1
    active = trainer.in_slots() & self.running()
    epochs = self.stopping.epochs + 1
    state, metrics = trainer.run_epoch(state, epochs, active, on_call)
    acc, state = trainer.evaluate(state, epochs, active, metrics[:, 4:6])
    self.curves[active, epochs[active]] = acc[active]
    # A model that diverged trained this epoch up to its last finite step (frozen there: its
    # curves and export are of that state); it stops as DIVERGED and its slot is refilled.
    # Its loss is the mean over the steps it applied (NaN if none).
    seen = metrics[active, 2]
    self.losses[active, epochs[active]] = np.where(
        seen > 0, metrics[active, 0] / np.maximum(seen, 1), np.nan)
    self.stopping = early_stopping.update(
        self.stopping, np.where(active, acc[:, 1], np.nan), rules, trained=active,
        diverged=active & (metrics[:, 3] > 0))
    self.export(state, active)
    finished = active & ~self.running()
    state, entered = trainer.refill(state, finished)
    if len(entered):
      state = self.start(state, np.isin(np.arange(trainer.num_models), entered))
    if trainer.cfg.compact:
      state = trainer.compact(state, self.running())
    if self.running().any() and not (self.running() & trainer.in_slots()).any():
      state = trainer.next_wave(state)  # This wave is done: release it, start the next.
      trainer.warm_up(state)
      state = self.start(state, trainer.in_slots())
    return state, acc, active, finished


def wave_text(trainer: ZooTrainer, running: np.ndarray, acc: np.ndarray,
              trained: np.ndarray) -> str:
  """The progress line after a round: the wave, its programs (groups) with a model training,
  slots busy, models queued, and the mean validation accuracy of the models just trained
  (running, trained [models] bool; acc [models, 3])."""
  training = trainer.in_slots() & running
  open_ = trainer.open_groups()
  busy = sum(bool(training[trainer.slot_models[i][trainer.slot_models[i] >= 0]].any())
             for i in open_)
  slots = sum(trainer.schedule.groups[i].num_slots for i in open_)
  parts = [f'wave {trainer.wave + 1}/{trainer.num_waves}', f'programs {busy}/{len(open_)}',
           f'slots busy {int(training.sum())}/{slots}', f'queued {trainer.queued()}']
  if trained.any():
    parts.append(f'valid acc {np.mean(acc[trained, 1]):.3f}')
  return ', '.join(parts)


def round_text(wave: str, rounds: int, calls: int, total_calls: int) -> str:
  """The progress line inside a round: `wave_text` of the last round, the round, its share done."""
  return f'{wave + ", " if wave else ""}round {rounds} {100 * calls // max(total_calls, 1)}%'


class _Progress:
  """A tqdm bar over models finished (a no-op when disabled)."""

  def __init__(self, enabled: bool, trainer: ZooTrainer, finished: int):
    self.bar, self.wave, self.calls, self.total = None, '', 0, 1
    if enabled:
      from tqdm import tqdm
      self.bar = tqdm(total=trainer.num_models, initial=finished, unit='model',
                      dynamic_ncols=True)
      self.bar.set_postfix_str(f'compiling {len(trainer.groups)} training programs '
                               f'({len(trainer.archs)} padded architectures)')

  def start_round(self, total_calls: int) -> None:
    self.calls, self.total = 0, total_calls

  def on_call(self, rounds: int) -> None:
    self.calls += 1
    if self.bar is not None:
      self.bar.set_postfix_str(round_text(self.wave, rounds, self.calls, self.total))

  def end_round(self, wave: str, finished: int) -> None:
    self.wave = wave
    if self.bar is not None:
      self.bar.set_postfix_str(wave)
      self.bar.update(finished)

  def close(self) -> None:
    if self.bar is not None:
      self.bar.close()


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
  validation accuracy of the models training (`wave_text`, `round_text`). Groups run in waves
  of at most `TrainConfig.max_programs` programs; a wave whose models have all stopped gives
  way to the next (`ZooTrainer.next_wave`).
  """
  run = _Loop(trainer, resume, on_export)
  bar = _Progress(progress, trainer, int((~run.running()).sum()))
  try:
    if resume is None:
      state = trainer.init_state()
      trainer.warm_up(state)
      state = run.start(state, trainer.in_slots())
    else:
      state = resume.state
      trainer.warm_up(state)
    while run.running().any():
      bar.start_round(trainer.calls_per_epoch())
      state, acc, trained, finished = run.round(state, lambda: bar.on_call(run.rounds))
      if on_epoch is not None:
        on_epoch(run.rounds, run.result(state))
      bar.end_round(wave_text(trainer, run.running(), acc, trained), int(finished.sum()))
  finally:
    bar.close()
  return run.result(state)
