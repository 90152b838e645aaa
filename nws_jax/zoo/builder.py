"""Builds a zoo in a workdir: sample, load data, train, export snapshots, write the tables.

`build_zoo(config, workdir)` is everything `python -m nws_jax.train_zoo` does, callable from a
test or a notebook. A workdir is created fresh, resumed from its last checkpoint, or (only
when asked, and only a zoo this project wrote) replaced: the new zoo is built in a hidden sibling
and renamed into place once complete, so an interrupted overwrite leaves the old zoo whole (and
`--resume` continues the replacement). A non-empty workdir is otherwise refused before anything
is touched.

The whole training state is checkpointed with Orbax every `checkpoint_every` rounds
(asynchronously, after that round's exports are on disk) and when the process gets SIGTERM
(`Preempted` is raised once that checkpoint is written); a resume continues bit for bit. With
several processes (`distributed`), every process runs this same function.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import shutil
import signal
import threading
import time
from typing import Sequence

import jax
import numpy as np
import orbax.checkpoint as ocp
import pandas as pd

import nws_jax
from nws_jax import cnn
from nws_jax import datasets as datasets_lib
from nws_jax import distributed
from nws_jax import early_stopping
from nws_jax import files
from nws_jax import input_pipeline
from nws_jax import sharding
from nws_jax import snapshots as snapshots_lib
from nws_jax import space
from nws_jax import workdir_lock
from nws_jax import zoo as zoo_lib
from nws_jax.configs import zoo as zoo_config
from nws_jax.zoo import loop
from nws_jax.zoo import schedule as schedule_lib
from nws_jax.zoo import trainer as trainer_lib

# Test accuracy below which a model counts as failed to train (the release left such nets out);
# a model that diverged counts as failed too.
FAILED_BELOW = 0.15
# The zoo's configuration is declared (knob by knob, with flags and validation) in configs/zoo.py.
ZooConfig = zoo_config.ZooConfig
SEEDS = zoo_config.SEEDS


def smallest_vector(architecture: str) -> int:
  """Weights per snapshot of the smallest net an `architecture` mode can draw."""
  archs = ([space.FIXED_ARCHITECTURE] if architecture == 'fixed' else
           [dict(zip(('filter_size', 'depth_conv', 'depth_fc', 'width_conv', 'width_fc'), a))
            for a in itertools.product(space.FILTER_SIZES, space.DEPTHS_CONV, space.DEPTHS_FC,
                                       space.WIDTHS_CONV, space.WIDTHS_FC)])
  return min(sum(cnn.weight_counts(cnn.Architecture(**a))) for a in archs)


def check_fits(config: ZooConfig, memory_bytes: int | None = None) -> None:
  """Raises ValueError, before anything is sampled or allocated, for a zoo whose kept snapshots
  alone (float32, gathered in host memory at the end) exceed this machine's memory
  (`memory_bytes`, default: its physical memory)."""
  if memory_bytes is None:
    memory_bytes = os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES')
  smallest = smallest_vector(config.architecture)
  needed = config.num_models * config.num_snapshots * smallest * 4
  if needed > memory_bytes:
    raise ValueError(f'num_models={config.num_models} cannot fit: its snapshots alone need at '
                     f'least {needed / 2**30:,.0f} GiB of host memory ({config.num_snapshots} '
                     f'float32 vectors of at least {smallest:,} weights per model), this '
                     f'machine has {memory_bytes / 2**30:,.0f} GiB')


class WorkdirError(RuntimeError):
  """The workdir cannot be used as asked (not empty, nothing to resume, other config)."""


class Preempted(RuntimeError):
  """Training stopped on SIGTERM after checkpointing; `--resume` continues it."""


def load_config(workdir: str) -> ZooConfig:
  """The config a zoo workdir was started with (WorkdirError if it is not a zoo's)."""
  path = os.path.join(workdir, zoo_lib.CONFIG_FILE)
  if not os.path.isdir(workdir):
    raise WorkdirError(f'cannot resume {workdir}: no such directory')
  if not os.path.exists(path):
    raise WorkdirError(f'cannot resume {workdir}: no {zoo_lib.CONFIG_FILE}, not a zoo workdir')
  try:
    with open(path) as f:
      saved = json.load(f)['zoo']
    saved['datasets'] = tuple(saved['datasets'])
    # Zoos saved before these options existed were trained the other way.
    saved.setdefault('bn_eval', 'moving')
    saved.setdefault('early_stopping', 'protocol')
    return ZooConfig(**saved)
  except (ValueError, KeyError, TypeError) as e:
    raise WorkdirError(f'cannot resume {workdir}: {path} is not a zoo config ({e})') from None


def replacement_folder(workdir: str) -> str:
  """Where `--overwrite` builds the zoo that replaces `workdir`: a hidden sibling
  (`.<name>.replacing`), renamed into place once the new zoo is complete. A fixed name, so that
  every process of a run, and a later `--resume`, finds it."""
  parent, name = os.path.split(os.path.abspath(workdir))
  return os.path.join(parent, f'.{name}.replacing')


def resume_folder(workdir: str) -> str:
  """The folder a `--resume` of `workdir` continues: a replacement that `--overwrite` started
  and that was stopped before it was complete, else `workdir` itself."""
  pending = replacement_folder(workdir)
  if files.marked_kind(pending) == 'zoo' and os.path.isfile(
      os.path.join(pending, zoo_lib.CONFIG_FILE)):
    return pending
  return workdir


def _check_resumable(folder: str, config: ZooConfig) -> None:
  if load_config(folder) != config:
    raise WorkdirError(f'cannot resume {folder}: it was built with other options '
                       f'(see {os.path.join(folder, zoo_lib.CONFIG_FILE)})')
  if snapshots_lib.is_complete(os.path.join(folder, zoo_lib.SNAPSHOTS_DIR)):
    raise WorkdirError(f'cannot resume {folder}: the zoo is already finished')


def check_workdir(workdir: str, config: ZooConfig, *, resume: bool, overwrite: bool) -> str:
  """What to do with the workdir, touching nothing: 'create', 'overwrite' (build the new zoo in
  `replacement_folder(workdir)`, then swap it in) or 'resume' (continue `resume_folder`)."""
  if resume and overwrite:
    raise WorkdirError('choose one of resume and overwrite')
  if os.path.exists(workdir) and not os.path.isdir(workdir):
    raise WorkdirError(f'workdir {workdir} exists and is not a directory')
  exists = os.path.isdir(workdir) and os.listdir(workdir)
  pending = resume_folder(workdir) if resume else workdir
  if pending != workdir:
    _check_resumable(pending, config)
    return 'resume'
  if exists and overwrite:
    refusal = files.replace_refusal(workdir, 'zoo', 'train_zoo')
    if refusal is None and config.data_dir:
      refusal = files.input_clash(workdir, [config.data_dir])
    if refusal:
      raise WorkdirError(f'workdir {workdir} {refusal}')
    pending = replacement_folder(workdir)
    if os.path.lexists(pending) and files.marked_kind(pending) != 'zoo':
      raise WorkdirError(f'{pending}, where train_zoo builds the replacement of {workdir}, '
                         'exists and was not written by train_zoo: move it away')
    return 'overwrite'
  if exists and resume:
    _check_resumable(workdir, config)
    return 'resume'
  if exists:
    raise WorkdirError(f'workdir {workdir} is not empty; pass --resume to continue it or '
                       '--overwrite to replace it')
  return 'create'


def prepare_workdir(workdir: str, config: ZooConfig, *, resume: bool, overwrite: bool
                    ) -> tuple[str, bool]:
  """Checks the workdir and makes ready the folder to build in; returns (that folder, resuming).
  The folder is `workdir`, or with overwrite (and a resume of an overwrite) its hidden
  replacement: the old zoo stays whole until the new one is complete. With several processes,
  process 0 changes the disk and the others wait for it."""
  action = check_workdir(workdir, config, resume=resume, overwrite=overwrite)
  folder = (replacement_folder(workdir) if action == 'overwrite' else
            resume_folder(workdir) if action == 'resume' else workdir)
  if distributed.is_primary():
    if action == 'overwrite' and os.path.lexists(folder):
      shutil.rmtree(folder)  # an earlier replacement, stopped before it was complete
    if action == 'resume':
      # A snapshots save that crashed half-way.
      shutil.rmtree(os.path.join(folder, zoo_lib.SNAPSHOTS_DIR), ignore_errors=True)
    else:
      os.makedirs(folder, exist_ok=True)
  distributed.barrier('prepare_workdir')
  return folder, action == 'resume'


def _replace_workdir(folder: str, workdir: str) -> None:
  """Moves the finished zoo in `folder` to `workdir`, replacing the old zoo there only if it is
  still one that train_zoo wrote (it might have been swapped for something else meanwhile)."""
  if folder == workdir:
    return
  if os.path.isdir(workdir) and os.listdir(workdir):
    refusal = files.replace_refusal(workdir, 'zoo', 'train_zoo')
    if refusal:
      raise WorkdirError(f'the new zoo is complete in {folder}, but {workdir} {refusal}')
  files.move_into_place(folder, workdir)


def load_datasets(config: ZooConfig) -> list[datasets_lib.Dataset]:
  return [datasets_lib.load(name, num_train=config.num_train, num_test=config.num_test,
                            seed=config.seed, data_dir=config.data_dir)
          for name in config.datasets]


def make_trainer(config: ZooConfig, configs: Sequence[space.ModelConfig] | None = None,
                 model_ids: Sequence[int] | None = None,
                 datasets: Sequence[datasets_lib.Dataset] | None = None,
                 mesh: jax.sharding.Mesh | None = None) -> trainer_lib.ZooTrainer:
  """A trainer for the zoo of `config`, or for a subset of its models (configs, model_ids)."""
  if configs is None:
    configs = space.sample_zoo(config.seed, config.num_models, config.datasets,
                               config.architecture)
    model_ids = range(len(configs))
  datasets = datasets if datasets is not None else load_datasets(config)
  data = input_pipeline.stack(datasets, config.eval_size)
  cfg = trainer_lib.TrainConfig(
      seed=config.seed,
      rules=config.stopping_rules(),
      conv_impl=config.conv_impl, steps_per_call=config.steps_per_call, packing=config.packing,
      slots_per_group=config.slots_per_group, compact=config.compact,
      max_programs=config.max_programs, bn_eval=config.bn_eval)
  sizes = [input_pipeline.balanced_size(d.train_labels) for d in datasets]
  return trainer_lib.ZooTrainer(configs, list(model_ids), data, config.datasets, sizes, cfg,
                                mesh=mesh)


def model_table(trainer: trainer_lib.ZooTrainer, result: loop.TrainResult) -> pd.DataFrame:
  """The models.csv rows of a trained zoo.

  Every model keeps its row. `status` is one of `early_stopping.STATUS_NAMES`: 'diverged' marks
  a model whose loss or weights turned non-finite; its `epochs` is the epoch it diverged in
  (trained up to its last finite step, at which it was frozen), and its accuracies, curves and
  snapshots are of that frozen, finite state. No separate diverged-epoch column: status and
  epochs say it, and the table keeps the columns an imported release has. `failed` stays the
  test-accuracy threshold for every status.
  """
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
               failed=bool(test_acc < FAILED_BELOW
                           or result.stopping.status[pos] == early_stopping.DIVERGED),
               steps_per_epoch=int(trainer.steps_per_epoch[pos]))
    rows.append(row)
  return pd.DataFrame(rows, columns=list(space.PROPERTY_NAMES) + list(space.TABLE_COLUMNS)
                      + ['failed', 'steps_per_epoch'])


def curves_table(trainer: trainer_lib.ZooTrainer, result: loop.TrainResult) -> pd.DataFrame:
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


def started_with(config: ZooConfig, trainer: trainer_lib.ZooTrainer) -> np.ndarray:
  """uint8 [32]: SHA-256 of the zoo config and every model's id and 13 properties. A checkpoint
  carries the value of the run that wrote it, and a resume whose config.json (or sampling) gives
  another value is refused: it would label old weights with new properties."""
  models = [[int(i), *c.as_row().values()] for i, c in zip(trainer.model_ids, trainer.configs)]
  text = json.dumps({'zoo': config.to_json(), 'models': models}, sort_keys=True)
  return np.frombuffer(hashlib.sha256(text.encode()).digest(), np.uint8).copy()


class StateCheckpointer:
  """Saves the whole training state after a round (async), for --resume: every model's
  parameters, optimizer and batch-norm state (their RNG keys derive from the seed, model id and
  epoch, and the data order from those too, so the epoch is the position in the data), the
  early-stopping counters, curves, where each export went, and the slots and queues. The
  exports themselves are their own Orbax steps, already on disk. A save that fails (a full
  disk) leaves the last finished checkpoint in place: Orbax finalises a step by a rename, and
  only then deletes the older one."""

  def __init__(self, directory: str, digest: np.ndarray | None = None):
    self._directory = directory
    self._digest = digest
    self._manager = ocp.CheckpointManager(
        os.path.abspath(directory),
        options=ocp.CheckpointManagerOptions(max_to_keep=1, enable_async_checkpointing=True,
                                             create=True))

  def save(self, rounds: int, result: loop.TrainResult) -> None:
    tree = {'state': [sharding.to_host(x) for x in jax.tree.leaves(result.state)],
            'stopping': {k: np.asarray(v) for k, v in result.stopping._asdict().items()},
            'curves': result.curves, 'losses': result.losses, 'epoch': np.int64(rounds),
            'seconds': np.float64(result.seconds), 'exports': result.exports,
            'schedule': schedule_lib.to_arrays(result.schedule)}
    if self._digest is not None:
      tree['started_with'] = self._digest
    self._manager.save(rounds, args=ocp.args.StandardSave(tree))

  def restore(self, trainer: trainer_lib.ZooTrainer) -> loop.TrainResult | None:
    """The last saved round's result (its state in the trainer's slot layout), or None.
    Raises WorkdirError for a checkpoint that cannot be read or does not fit the zoo."""
    step = self._manager.latest_step()
    if step is None:
      return None
    try:
      tree = self._manager.restore(step, args=ocp.args.StandardRestore())
      # Checkpoints written before the digest existed have none, and are trusted.
      if ('started_with' in tree and self._digest is not None
          and not np.array_equal(tree['started_with'], self._digest)):
        folder = os.path.dirname(os.path.abspath(self._directory))
        raise WorkdirError(f'cannot resume {folder}: its checkpoint was started with other '
                           f'options or model properties than {zoo_lib.CONFIG_FILE} now gives '
                           '(was it edited?); restore it, or start again with --overwrite')
      schedule = schedule_lib.from_arrays(
          trainer.plan, {k: np.asarray(v) for k, v in tree['schedule'].items()})
      trainer.restore_schedule(schedule)
      _, treedef = jax.tree.flatten(trainer.init_state())
      leaves = [np.asarray(x) for x in tree['state']]
      if treedef.num_leaves != len(leaves):
        raise ValueError(f'{len(leaves)} state arrays, the zoo has {treedef.num_leaves}')
      state = jax.tree.unflatten(treedef, sharding.put_models(leaves, trainer.mesh))
      stopping = early_stopping.StoppingState(**{k: np.asarray(v)
                                                 for k, v in tree['stopping'].items()})
      result = loop.TrainResult(state, stopping, np.asarray(tree['curves']),
                                       np.asarray(tree['losses']), float(tree['seconds']),
                                       np.asarray(tree['exports']), schedule, int(tree['epoch']))
    except (ValueError, KeyError, TypeError, OSError) as e:
      message = str(e).splitlines()[0] if str(e) else type(e).__name__
      raise WorkdirError(f'cannot resume: the checkpoint {self._directory}/{step} is unreadable '
                         f'or does not fit this zoo ({message})') from None
    if result.curves.shape[0] != trainer.num_models:
      raise WorkdirError(f'cannot resume: the checkpoint {self._directory}/{step} holds '
                         f'{result.curves.shape[0]} models, the zoo {trainer.num_models}')
    return result

  def wait(self):
    self._manager.wait_until_finished()

  def close(self):
    self._manager.wait_until_finished()
    self._manager.close()


class _Sigterm:
  """Notes a SIGTERM (a preemption notice) instead of dying; restores the old handler on exit.
  Only the main thread can install handlers: elsewhere this watches nothing."""

  def __init__(self):
    self.received = False
    self._previous = None

  def __enter__(self):
    if threading.current_thread() is threading.main_thread():
      self._previous = signal.signal(signal.SIGTERM, self._note)
    return self

  def _note(self, signum, frame):
    del signum, frame
    self.received = True

  def __exit__(self, *exc):
    if self._previous is not None:
      signal.signal(signal.SIGTERM, self._previous)


def build_zoo(config: ZooConfig, workdir: str, **options) -> zoo_lib.Zoo:
  """Trains the zoo of `config` into `workdir` and returns it loaded (`_build_zoo`'s options),
  holding the workdir's lock (`workdir_lock`) throughout: a second writer of the same workdir
  raises workdir_lock.LockedError at once, before anything is checked or written. With several
  processes, process 0 holds it for all of them."""
  if not distributed.is_primary():
    return _build_zoo(config, workdir, **options)
  with workdir_lock.hold(workdir, 'train_zoo'):
    return _build_zoo(config, workdir, **options)


def _build_zoo(config: ZooConfig, workdir: str, *, resume: bool = False, overwrite: bool = False,
               progress: bool = False, checkpoint_every: int = 1,
               mesh: jax.sharding.Mesh | None = None) -> zoo_lib.Zoo:
  """Trains the zoo of `config` into `workdir` and returns it loaded.

  checkpoint_every: rounds (epochs of the slots) between checkpoints of the training state.
  mesh: the devices to shard the models over (default: every device of every process).
  Raises ValueError for a bad config and WorkdirError for a workdir that cannot be used; both
  before anything in the workdir is touched. Raises Preempted after a SIGTERM, once the round
  under way is checkpointed.
  """
  config.validate()
  check_fits(config)
  if checkpoint_every < 1:
    raise ValueError(f'checkpoint_every must be at least 1, got {checkpoint_every}')
  # Everything that can reject the config (unprepared dataset, too few examples for a batch
  # size, a class missing) runs before the workdir is created, cleared or written.
  datasets = load_datasets(config)
  trainer = make_trainer(config, datasets=datasets, mesh=mesh)
  folder, resuming = prepare_workdir(workdir, config, resume=resume, overwrite=overwrite)
  primary = distributed.is_primary()
  if not resuming and primary:
    files.write_marker(folder, 'zoo')
    files.write_json_atomic({'zoo': config.to_json(), 'nws_jax': nws_jax.__version__,
                               'jax': jax.__version__, 'backend': jax.default_backend(),
                               'devices': jax.device_count(),
                               'processes': jax.process_count()},
                              os.path.join(folder, zoo_lib.CONFIG_FILE))
  exports = snapshots_lib.ExportWriter(os.path.join(folder, zoo_lib.EXPORTS_DIR))
  checkpointer = StateCheckpointer(os.path.join(folder, zoo_lib.STATE_DIR),
                                    started_with(config, trainer))
  try:
    restored = checkpointer.restore(trainer) if resuming else None
  except WorkdirError:
    checkpointer.close()
    exports.close()
    raise
  if restored is not None:
    exports.delete_after(int(restored.exports[..., 0].max()))
  elif resuming:
    exports.delete_after(-1)
  t0 = time.time() - (restored.seconds if restored is not None else 0.0)

  with _Sigterm() as sigterm:

    def checkpoint(rounds, result):
      preempted = distributed.any_process(sigterm.received)
      if rounds % checkpoint_every and not preempted:
        return
      # The state of a round may only exist once its exports are on disk: a resume from it
      # never re-exports earlier rounds.
      exports.wait()
      checkpointer.save(rounds, result._replace(seconds=time.time() - t0))
      if preempted:
        where = workdir if folder == workdir else (
            f'{folder} (the zoo in {workdir} stays as it was until the new one is complete)')
        raise Preempted(f'stopped by SIGTERM after round {rounds}; its checkpoint is saved '
                        f'in {where}: continue with --resume')

    def save_export(number, arrays):
      exports.save(number, tuple(sharding.to_host(a) for a in arrays))

    try:
      result = loop.train(trainer, resume=restored, on_export=save_export,
                                 on_epoch=checkpoint, progress=progress and primary)
    except BaseException:
      # Saves in flight finish (an unfinished async save would hang the interpreter's exit).
      checkpointer.close()
      exports.close()
      raise
  checkpointer.close()
  snaps, numbers = snapshots_lib.gather_snapshots(exports, result.stopping.epochs,
                                                  result.exports, config.num_snapshots,
                                                  trainer.lengths)
  exports.close()
  table = model_table(trainer, result)
  table['seconds'] = time.time() - t0
  if primary:
    files.write_csv_atomic(curves_table(trainer, result),
                             os.path.join(folder, zoo_lib.CURVES_FILE))
    files.write_csv_atomic(table, os.path.join(folder, zoo_lib.MODELS_FILE))
    zoo_lib.write_record(folder)
  snapshots_lib.save_snapshots(os.path.join(folder, zoo_lib.SNAPSHOTS_DIR), snaps, numbers)
  distributed.barrier('zoo_written')
  if primary:
    shutil.rmtree(os.path.join(folder, zoo_lib.EXPORTS_DIR), ignore_errors=True)
    shutil.rmtree(os.path.join(folder, zoo_lib.STATE_DIR), ignore_errors=True)
    _replace_workdir(folder, workdir)
  distributed.barrier('zoo_cleaned')
  return zoo_lib.load_zoo(workdir)
