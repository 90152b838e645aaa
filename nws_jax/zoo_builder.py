"""Builds a zoo in a workdir: sample, load data, train, export snapshots, write the tables.

`build_zoo(config, workdir)` is everything `python -m nws_jax.train_zoo` does, callable from a
test or a notebook. A workdir is created fresh, resumed from its last finished epoch, or (only
when asked) overwritten; a non-empty workdir is otherwise refused before anything is touched.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import time
from typing import Sequence

import jax
import numpy as np
import orbax.checkpoint as ocp
import pandas as pd

import nws_jax
from nws_jax import cnn
from nws_jax import datasets as datasets_lib
from nws_jax import early_stopping
from nws_jax import input_pipeline
from nws_jax import packing as packing_lib
from nws_jax import snapshots as snapshots_lib
from nws_jax import space
from nws_jax import trainer as trainer_lib
from nws_jax import zoo as zoo_lib

# Test accuracy below which a model counts as failed to train (the release left such nets out).
FAILED_BELOW = 0.15


@dataclasses.dataclass(frozen=True)
class ZooConfig:
  """Everything that determines a zoo (same config -> same zoo).

  num_train / num_test: examples per dataset (None: the dataset's default); num_train counts
  the training split before 10% of it is held out for validation. eval_size caps the
  validation, test and training-accuracy sets (None: whole sets).
  """
  num_models: int = 8
  seed: int = 0
  datasets: tuple[str, ...] = datasets_lib.OFFLINE_NAMES
  architecture: str = 'fixed'
  max_epochs: int = 1000
  min_epochs: int = 20
  num_train: int | None = None
  num_test: int | None = None
  eval_size: int | None = None
  num_snapshots: int = snapshots_lib.NUM_SNAPSHOTS
  conv_impl: str = 'auto'
  steps_per_call: int = 64
  data_dir: str | None = None
  packing: str = 'depth'
  slots_per_group: int | None = None
  compact: bool = False
  max_programs: int | None = None

  def validate(self) -> None:
    """Raises ValueError with a one-line message for a config that cannot run."""
    if self.num_models < 1:
      raise ValueError(f'num_models must be at least 1, got {self.num_models}')
    if not self.datasets:
      raise ValueError('datasets must name at least one dataset')
    unknown = [d for d in self.datasets if d not in datasets_lib.ALL_NAMES]
    if unknown:
      raise ValueError(f'unknown dataset {unknown[0]!r}; choose from: '
                       + ', '.join(datasets_lib.ALL_NAMES))
    if len(set(self.datasets)) != len(self.datasets):
      raise ValueError(f'datasets repeat a name: {",".join(self.datasets)}')
    if self.architecture not in space.ARCHITECTURE_MODES:
      raise ValueError(f'unknown architecture {self.architecture!r}; this version supports: '
                       + ', '.join(space.ARCHITECTURE_MODES))
    if self.packing not in packing_lib.PACKINGS:
      raise ValueError(f'unknown packing {self.packing!r}; choose from: '
                       + ', '.join(packing_lib.PACKINGS))
    if self.slots_per_group is not None and self.slots_per_group < 1:
      raise ValueError(f'slots_per_group must be at least 1, got {self.slots_per_group}')
    if self.max_programs is not None and self.max_programs < 1:
      raise ValueError(f'max_programs must be at least 1, got {self.max_programs}')
    if self.steps_per_call < 1:
      raise ValueError(f'steps_per_call must be at least 1, got {self.steps_per_call}')
    if self.num_snapshots < 1:
      raise ValueError(f'num_snapshots must be at least 1, got {self.num_snapshots}')
    if self.conv_impl not in ('auto',) + cnn.CONV_IMPLS:
      raise ValueError(f'unknown conv_impl {self.conv_impl!r}')
    for name in ('num_train', 'num_test', 'eval_size'):
      value = getattr(self, name)
      if value is not None and value < 10:
        raise ValueError(f'{name} must be at least 10, got {value}')
    early_stopping.StoppingRules(min_epochs=self.min_epochs, max_epochs=self.max_epochs)

  def to_json(self) -> dict:
    d = dataclasses.asdict(self)
    d['datasets'] = list(self.datasets)
    return d


class WorkdirError(RuntimeError):
  """The workdir cannot be used as asked (not empty, nothing to resume, other config)."""


def prepare_workdir(workdir: str, config: ZooConfig, *, resume: bool, overwrite: bool) -> bool:
  """Checks (and, with overwrite, clears) the workdir; returns True when resuming."""
  if resume and overwrite:
    raise WorkdirError('choose one of resume and overwrite')
  exists = os.path.isdir(workdir) and os.listdir(workdir)
  if os.path.exists(workdir) and not os.path.isdir(workdir):
    raise WorkdirError(f'workdir {workdir} exists and is not a directory')
  if exists and overwrite:
    shutil.rmtree(workdir)
  elif exists and resume:
    path = os.path.join(workdir, zoo_lib.CONFIG_FILE)
    if not os.path.exists(path):
      raise WorkdirError(f'cannot resume {workdir}: no {zoo_lib.CONFIG_FILE}')
    with open(path) as f:
      saved = json.load(f)
    if saved.get('zoo') != config.to_json():
      raise WorkdirError(f'cannot resume {workdir}: it was built with other options '
                         f'(see {path})')
    snapshots_dir = os.path.join(workdir, zoo_lib.SNAPSHOTS_DIR)
    if snapshots_lib.is_complete(snapshots_dir):
      raise WorkdirError(f'cannot resume {workdir}: the zoo is already finished')
    shutil.rmtree(snapshots_dir, ignore_errors=True)  # A save that crashed half-way.
    return True
  elif exists:
    raise WorkdirError(f'workdir {workdir} is not empty; pass --resume to continue it or '
                       '--overwrite to replace it')
  os.makedirs(workdir, exist_ok=True)
  return False


def load_datasets(config: ZooConfig) -> list[datasets_lib.Dataset]:
  return [datasets_lib.load(name, num_train=config.num_train, num_test=config.num_test,
                            seed=config.seed, data_dir=config.data_dir)
          for name in config.datasets]


def make_trainer(config: ZooConfig, configs: Sequence[space.ModelConfig] | None = None,
                 model_ids: Sequence[int] | None = None,
                 datasets: Sequence[datasets_lib.Dataset] | None = None
                 ) -> trainer_lib.ZooTrainer:
  """A trainer for the zoo of `config`, or for a subset of its models (configs, model_ids)."""
  if configs is None:
    configs = space.sample_zoo(config.seed, config.num_models, config.datasets,
                               config.architecture)
    model_ids = range(len(configs))
  datasets = datasets if datasets is not None else load_datasets(config)
  data = input_pipeline.stack(datasets, config.eval_size)
  cfg = trainer_lib.TrainConfig(
      seed=config.seed,
      rules=early_stopping.StoppingRules(min_epochs=config.min_epochs,
                                         max_epochs=config.max_epochs),
      conv_impl=config.conv_impl, steps_per_call=config.steps_per_call, packing=config.packing,
      slots_per_group=config.slots_per_group, compact=config.compact,
      max_programs=config.max_programs)
  sizes = [input_pipeline.balanced_size(d.train_labels) for d in datasets]
  return trainer_lib.ZooTrainer(configs, list(model_ids), data, config.datasets, sizes, cfg)


def model_table(trainer: trainer_lib.ZooTrainer, result: trainer_lib.TrainResult) -> pd.DataFrame:
  """The models.csv rows of a trained zoo."""
  rows = []
  epochs = result.stopping.epochs
  for pos, c in enumerate(trainer.configs):
    e = int(epochs[pos])
    train_acc, valid_acc, test_acc = result.curves[pos, e]
    row = c.as_row()
    n_conv, n_fc = trainer.weight_counts[pos]
    row.update(model_id=int(trainer.model_ids[pos]), weightn_conv=n_conv, weightn_fc=n_fc,
               train_accuracy=float(train_acc), valid_accuracy=float(valid_acc),
               test_accuracy=float(test_acc), epochs=e,
               status=early_stopping.STATUS_NAMES[int(result.stopping.status[pos])],
               failed=bool(test_acc < FAILED_BELOW),
               steps_per_epoch=int(trainer.steps_per_epoch[pos]))
    rows.append(row)
  return pd.DataFrame(rows, columns=list(space.PROPERTY_NAMES) + list(space.TABLE_COLUMNS)
                      + ['failed', 'steps_per_epoch'])


def curves_table(trainer: trainer_lib.ZooTrainer, result: trainer_lib.TrainResult) -> pd.DataFrame:
  """The curves.csv rows: one per model and epoch 0..epochs (0 = initialisation)."""
  parts = []
  for pos in range(trainer.num_models):
    e = int(result.stopping.epochs[pos])
    parts.append(pd.DataFrame({
        'model_id': int(trainer.model_ids[pos]), 'epoch': np.arange(e + 1),
        'train_accuracy': result.curves[pos, :e + 1, 0],
        'valid_accuracy': result.curves[pos, :e + 1, 1],
        'test_accuracy': result.curves[pos, :e + 1, 2],
        'train_loss': result.losses[pos, :e + 1]}))
  return pd.concat(parts, ignore_index=True)


class _StateCheckpointer:
  """Saves the whole training state after each epoch (async), for --resume."""

  def __init__(self, directory: str):
    self._manager = ocp.CheckpointManager(
        os.path.abspath(directory),
        options=ocp.CheckpointManagerOptions(max_to_keep=1, enable_async_checkpointing=True,
                                             create=True))

  def save(self, epoch: int, result: trainer_lib.TrainResult) -> None:
    tree = {'state': jax.tree.leaves(result.state),
            'stopping': {k: np.asarray(v) for k, v in result.stopping._asdict().items()},
            'curves': result.curves, 'losses': result.losses, 'epoch': np.int64(epoch),
            'seconds': np.float64(result.seconds), 'exports': result.exports,
            'schedule': {k: np.asarray(v) for k, v in result.schedule.items()}}
    self._manager.save(epoch, args=ocp.args.StandardSave(tree))

  def restore(self, trainer: trainer_lib.ZooTrainer) -> trainer_lib.TrainResult | None:
    """The last saved round's result (its state in the trainer's slot layout), or None."""
    step = self._manager.latest_step()
    if step is None:
      return None
    tree = self._manager.restore(step, args=ocp.args.StandardRestore())
    schedule = {k: np.asarray(v) for k, v in tree['schedule'].items()}
    trainer.restore_schedule(schedule)
    _, treedef = jax.tree.flatten(trainer.init_state())
    state = jax.tree.unflatten(treedef, [jax.numpy.asarray(x) for x in tree['state']])
    stopping = early_stopping.StoppingState(**{k: np.asarray(v)
                                               for k, v in tree['stopping'].items()})
    return trainer_lib.TrainResult(state, stopping, np.asarray(tree['curves']),
                                   np.asarray(tree['losses']), float(tree['seconds']),
                                   np.asarray(tree['exports']), schedule, int(tree['epoch']))

  def close(self):
    self._manager.wait_until_finished()
    self._manager.close()


def build_zoo(config: ZooConfig, workdir: str, *, resume: bool = False, overwrite: bool = False,
              progress: bool = False) -> zoo_lib.Zoo:
  """Trains the zoo of `config` into `workdir` and returns it loaded.

  Raises ValueError for a bad config and WorkdirError for a workdir that cannot be used; both
  before anything in the workdir is touched.
  """
  config.validate()
  # Everything that can reject the config (unprepared dataset, too few examples for a batch
  # size, a class missing) runs before the workdir is created, cleared or written.
  datasets = load_datasets(config)
  trainer = make_trainer(config, datasets=datasets)
  resuming = prepare_workdir(workdir, config, resume=resume, overwrite=overwrite)
  if not resuming:
    zoo_lib.write_json_atomic({'zoo': config.to_json(), 'nws_jax': nws_jax.__version__,
                               'jax': jax.__version__, 'backend': jax.default_backend()},
                              os.path.join(workdir, zoo_lib.CONFIG_FILE))
  exports = snapshots_lib.ExportWriter(os.path.join(workdir, zoo_lib.EXPORTS_DIR))
  checkpointer = _StateCheckpointer(os.path.join(workdir, zoo_lib.STATE_DIR))
  restored = checkpointer.restore(trainer) if resuming else None
  if restored is not None:
    exports.delete_after(int(restored.exports[..., 0].max()))
  elif resuming:
    exports.delete_after(-1)
  t0 = time.time() - (restored.seconds if restored is not None else 0.0)

  def checkpoint(rounds, result):
    # The state of a round may only exist once its exports are on disk: a resume from it never
    # re-exports earlier rounds.
    exports.wait()
    checkpointer.save(rounds, result._replace(seconds=time.time() - t0))

  result = trainer_lib.train(trainer, resume=restored, on_export=exports.save,
                             on_epoch=checkpoint, progress=progress)
  checkpointer.close()
  snaps, numbers = snapshots_lib.gather_snapshots(exports, result.stopping.epochs,
                                                  result.exports, config.num_snapshots,
                                                  trainer.lengths)
  exports.close()
  table = model_table(trainer, result)
  table['seconds'] = time.time() - t0
  zoo_lib.write_csv_atomic(curves_table(trainer, result),
                           os.path.join(workdir, zoo_lib.CURVES_FILE))
  zoo_lib.write_csv_atomic(table, os.path.join(workdir, zoo_lib.MODELS_FILE))
  snapshots_lib.save_snapshots(os.path.join(workdir, zoo_lib.SNAPSHOTS_DIR), snaps, numbers)
  shutil.rmtree(os.path.join(workdir, zoo_lib.EXPORTS_DIR), ignore_errors=True)
  shutil.rmtree(os.path.join(workdir, zoo_lib.STATE_DIR), ignore_errors=True)
  return zoo_lib.load_zoo(workdir)
