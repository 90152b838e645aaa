"""Diverging models (issue 8 point 4): a model whose loss or weights turn non-finite is frozen
at its last finite state, stops with status 'diverged' at the epoch it diverged in and keeps
its row and its (finite) snapshots; every other model of the zoo trains exactly as without it."""

import dataclasses

import jax
import numpy as np
import pytest

from nws_jax import early_stopping
from nws_jax import input_pipeline
from nws_jax import sharding
from nws_jax import snapshots
from nws_jax import space
from nws_jax.zoo import builder as zoo_builder
from nws_jax.zoo import loop
from nws_jax.zoo import trainer as trainer_lib
from helpers import MemoryWriter

NAMES = ('gratings', 'shapes')
BASE = space.ModelConfig(dataset='gratings', lrate=0.004, batch_size=64, batch_norm=True,
                         augmentation=False, optimizer=0, activation=0, initialization=2,
                         filter_size=3, depth_conv=3, depth_fc=2, width_conv=4, width_fc=64)
# One group (one architecture, one batch size): a single training program serves every run.
CONFIGS = [BASE,
           dataclasses.replace(BASE, optimizer=1, dataset='shapes', activation=3),
           dataclasses.replace(BASE, optimizer=2, lrate=0.002, initialization=3)]
DIVERGING = 1  # Its weights overflow within a few steps at this learning rate.
DIVERGED_CONFIGS = [dataclasses.replace(c, lrate=1e30) if i == DIVERGING else c
                    for i, c in enumerate(CONFIGS)]
RULES = early_stopping.StoppingRules(min_epochs=1, max_epochs=3)
# Two slots for three models: the diverged model's slot goes to the queued one. Three steps
# per epoch in calls of two: a model that diverges in the first call must sit out the second.
OPTIONS = dict(seed=2, rules=RULES, steps_per_call=2, slots_per_group=2,
               train_models_per_chunk=1, eval_models_per_chunk=1)


def _trainer(tiny_datasets, configs):
  data = input_pipeline.stack(tiny_datasets)
  sizes = [input_pipeline.balanced_size(d.train_labels) for d in tiny_datasets]
  return trainer_lib.ZooTrainer(configs, [0, 1, 2], data, NAMES, sizes,
                                trainer_lib.TrainConfig(**OPTIONS))


def _exports(trainer, result, writer, m):
  """Model m's exports of epochs 0 … epochs[m], float32 [epochs + 1, its length]."""
  rows = []
  for e in range(int(result.stopping.epochs[m]) + 1):
    number, array, row = result.exports[m, e]
    rows.append(writer.read(int(number))[int(array)][int(row), :trainer.lengths[m]])
  return np.stack(rows)


def _run(tiny_datasets, configs):
  trainer = _trainer(tiny_datasets, configs)
  writer = MemoryWriter()
  result = loop.train(trainer, on_export=writer.save)
  return trainer, result, writer


@pytest.fixture(scope='module')
def runs(tiny_datasets):
  return _run(tiny_datasets, CONFIGS), _run(tiny_datasets, DIVERGED_CONFIGS)


def test_the_diverged_model_stops_as_diverged_and_keeps_finite_snapshots(runs):
  (_, normal, _), (trainer, result, writer) = runs
  assert trainer.steps_per_epoch[DIVERGING] == 3  # Two calls per epoch (steps_per_call 2).
  status = [early_stopping.STATUS_NAMES[s] for s in result.stopping.status]
  assert status == ['epoch_cap', 'diverged', 'epoch_cap']
  assert result.stopping.epochs[DIVERGING] == 1  # It overflows in its first epoch.
  np.testing.assert_array_equal(normal.stopping.epochs, [3, 3, 3])
  exports = _exports(trainer, result, writer, DIVERGING)
  assert exports.shape[0] == 2 and np.isfinite(exports).all()
  assert not np.array_equal(exports[0], exports[1])  # It trained before it diverged.
  assert np.isfinite(result.curves[DIVERGING, :2]).all()
  assert np.isnan(result.curves[DIVERGING, 2:]).all()
  assert np.isfinite(result.losses[DIVERGING, 1])
  # Its slot went to the queued model one round early.
  assert (normal.rounds, result.rounds) == (6, 4)
  snaps, numbers = snapshots.gather_snapshots(writer, result.stopping.epochs, result.exports,
                                              4, trainer.lengths)
  np.testing.assert_array_equal(numbers[DIVERGING], [1, 1, 2, 2])
  assert np.isfinite(snaps[DIVERGING]).all()
  table = zoo_builder.model_table(trainer, result)
  row = table.iloc[DIVERGING]
  assert len(table) == 3 and row['status'] == 'diverged' and row['epochs'] == 1
  assert row['failed']  # Left out of a release like a model that failed to train.
  assert row['test_accuracy'] == result.curves[DIVERGING, 1, 2]
  assert list(table['status']) == status


def test_every_other_model_is_untouched(runs):
  (trainer_a, a, writer_a), (trainer_b, b, writer_b) = runs
  others = [m for m in range(3) if m != DIVERGING]
  for field in early_stopping.StoppingState._fields:
    np.testing.assert_array_equal(getattr(a.stopping, field)[others],
                                  getattr(b.stopping, field)[others], err_msg=field)
  np.testing.assert_array_equal(a.curves[others], b.curves[others])
  np.testing.assert_array_equal(a.losses[others], b.losses[others])
  for m in others:
    np.testing.assert_array_equal(_exports(trainer_a, a, writer_a, m),
                                  _exports(trainer_b, b, writer_b, m))


def test_a_diverged_model_sits_out_the_rest_of_its_epoch(tiny_datasets, runs):
  _, (_, result, writer) = runs
  trainer = _trainer(tiny_datasets, DIVERGED_CONFIGS)
  normal = _trainer(tiny_datasets, CONFIGS)
  # As the host loop: export 1's evaluation passes (bn_eval='original') before epoch 1.
  _, state = trainer.evaluate(trainer.init_state())
  state, metrics = trainer.run_epoch(state, 1, np.array([True, True, False]))
  _, normal_metrics = normal.run_epoch(normal.init_state(), 1, np.array([True, True, False]))
  # Diverged once, in the first call (1.0, not 2.0: the second call left it out), after one
  # applied step; the other model's metrics are those of the zoo without a diverging model.
  assert metrics[DIVERGING, 3] == 1.0 and metrics[DIVERGING, 2] == 1
  np.testing.assert_array_equal(metrics[0], normal_metrics[0])
  np.testing.assert_array_equal(metrics[2], 0)
  assert normal_metrics[0, 3] == 0 and normal_metrics[DIVERGING, 3] == 0
  # The export the host loop saved for its last epoch is this frozen state, after the export's
  # evaluation passes (bn_eval='original'), which leave a frozen model's statistics finite.
  _, state = trainer.evaluate(state, np.ones(3, np.int64), np.array([True, True, False]),
                              metrics[:, 4:6])
  (weights,) = trainer.export(state)
  row = list(trainer.export_rows()[0]).index(DIVERGING)
  np.testing.assert_array_equal(
      np.asarray(weights)[row, :trainer.lengths[DIVERGING]],
      _exports(trainer, result, writer, DIVERGING)[-1])


def test_train_steps_freezes_a_model_at_its_last_finite_step(tiny_datasets, runs):
  # `train_steps` as the group's compiled program runs it (one model per vmapped chunk): the
  # program the runs above compiled, so no second compile (minutes on a small CPU).
  trainer = _trainer(tiny_datasets, DIVERGED_CONFIGS)
  (group,) = trainer.groups
  programs = trainer.programs.groups[0]
  num_steps, program = programs.steps_per_call, programs.train
  assert num_steps == 2 and list(trainer.slot_models[0]) == [0, DIVERGING]
  hyper = trainer.slot_hyper[0]
  epoch = sharding.put_models(np.ones(2, np.int32), trainer.mesh)
  order = programs.order(hyper, epoch, trainer.data)
  initial = jax.tree.map(np.asarray, trainer.init_state()[0])

  def steps(hp, active):
    """The first `num_steps` steps of epoch 1 from the initial state: (state, metrics) of the
    diverging model's slot, on the host."""
    state, metrics = program(trainer.init_state()[0], hp, order,
                             sharding.put_models(np.asarray(active), trainer.mesh), epoch,
                             np.int32(0), trainer.data)
    return (jax.tree.map(lambda x: np.asarray(x)[1], state),
            [float(np.asarray(x)[1]) for x in metrics[:4]])

  frozen, (loss, correct, seen, diverged) = steps(hyper, [True, True])
  assert diverged == 1.0 and seen == 1 and np.isfinite(loss)
  assert all(np.isfinite(x).all() for x in jax.tree.leaves(frozen))
  # The same steps with its epoch cut to the applied ones: no divergence, the same state.
  cut_hyper = hyper._replace(steps_per_epoch=sharding.put_models(
      np.array([3, int(seen)], np.int32), trainer.mesh))
  cut, cut_metrics = steps(cut_hyper, [True, True])
  assert cut_metrics == [loss, correct, seen, 0.0]
  jax.tree.map(np.testing.assert_array_equal, cut, frozen)
  before = jax.tree.map(lambda x: x[1], initial)
  assert not np.array_equal(frozen.params['conv_00']['kernel'], before.params['conv_00']['kernel'])
  # An inactive model neither trains nor diverges.
  idle, idle_metrics = steps(hyper, [True, False])
  assert idle_metrics == [0.0, 0.0, 0.0, 0.0]
  jax.tree.map(np.testing.assert_array_equal, idle, before)


def test_update_keeps_a_diverged_status():
  rules = early_stopping.StoppingRules(min_epochs=0, max_epochs=2)
  state = early_stopping.initial_state(3)
  state = early_stopping.update(state, np.array([0.5, 0.5, 0.5]), rules,
                                diverged=np.array([False, True, False]))
  assert list(state.status) == [early_stopping.RUNNING, early_stopping.DIVERGED,
                                early_stopping.RUNNING]
  assert list(state.epochs) == [1, 1, 1]
  state = early_stopping.update(state, np.array([0.6, 0.6, 0.6]), rules,
                                trained=np.array([True, True, False]))
  assert list(state.status) == [early_stopping.EPOCH_CAP, early_stopping.DIVERGED,
                                early_stopping.RUNNING]
  assert list(state.epochs) == [2, 1, 1]
  assert early_stopping.STATUS_NAMES[early_stopping.DIVERGED] == 'diverged'
