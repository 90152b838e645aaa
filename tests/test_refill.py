"""Continuous refill (issue 7 point 3): a group trains `slots_per_group` models at a time, and a
slot whose model stopped takes the next one of the queue. Each model's result must not depend on
the slot, the round or the slot count that ran it."""

import dataclasses

import numpy as np
import pytest

from nws_jax import early_stopping
from nws_jax import input_pipeline
from nws_jax import snapshots
from nws_jax import space
from nws_jax import trainer as trainer_lib

NAMES = ('gratings', 'shapes')
BASE = space.ModelConfig(dataset='gratings', lrate=0.004, batch_size=64, batch_norm=True,
                         augmentation=False, optimizer=1, activation=0, initialization=2,
                         filter_size=5, depth_conv=3, depth_fc=2, width_conv=8, width_fc=128)
# One group of four; patience 1 makes models stop at different epochs (at most 4).
CONFIGS = [BASE,
           dataclasses.replace(BASE, optimizer=2, dataset='shapes', activation=3),
           dataclasses.replace(BASE, optimizer=0, augmentation=True, lrate=0.001),
           dataclasses.replace(BASE, optimizer=1, dataset='shapes', initialization=3)]
RULES = early_stopping.StoppingRules(min_epochs=1, max_epochs=4, patience_fall=1,
                                     patience_same=1, patience_below=2)


class _MemoryWriter:
  """What `snapshots.gather_snapshots` reads: the arrays of each export number."""

  def __init__(self):
    self.saved = {}

  def save(self, number, arrays):
    self.saved[number] = [np.asarray(a) for a in arrays]

  def read(self, number):
    return self.saved[number]


def _run(tiny_datasets, slots, compact=False):
  data = input_pipeline.stack(tiny_datasets)
  sizes = [input_pipeline.balanced_size(d.train_labels) for d in tiny_datasets]
  # One model per vmapped chunk: every slot count runs the same per-model computation, so the
  # results can be compared bit for bit.
  cfg = trainer_lib.TrainConfig(seed=2, rules=RULES, slots_per_group=slots, compact=compact,
                                train_models_per_chunk=1, eval_models_per_chunk=1)
  trainer = trainer_lib.ZooTrainer(CONFIGS, [0, 1, 2, 3], data, NAMES, sizes, cfg)
  writer = _MemoryWriter()
  rounds = []
  result = trainer_lib.train(trainer, on_export=writer.save,
                             on_epoch=lambda r, res: rounds.append(trainer.slot_models[0].copy()))
  snaps, numbers = snapshots.gather_snapshots(writer, result.stopping.epochs, result.exports,
                                              4, trainer.lengths)
  return trainer, result, snaps, numbers, rounds


@pytest.fixture(scope='module')
def runs(tiny_datasets):
  return {None: _run(tiny_datasets, None), 1: _run(tiny_datasets, 1),
          'compact': _run(tiny_datasets, None, compact=True)}


def test_models_stop_at_different_epochs_and_all_finish(runs):
  _, result, *_ = runs[None]
  epochs = result.stopping.epochs
  assert len(set(epochs.tolist())) > 1, epochs
  assert (result.stopping.status != early_stopping.RUNNING).all()
  assert result.rounds == epochs.max()


def test_one_slot_runs_the_models_one_after_another(runs):
  trainer, result, _, _, rounds = runs[1]
  assert trainer.groups[0].num_slots == 1
  # The slot holds model 0 for its epochs, then 1, 2, 3; empty (-1) at the end.
  occupants = [int(r[0]) for r in rounds]
  epochs = result.stopping.epochs
  expected = sum(([m] * int(epochs[m]) for m in range(1, 4)), [0] * (int(epochs[0]) - 1))
  assert occupants == expected + [-1]
  assert result.rounds == epochs.sum()


@pytest.mark.parametrize('other', [1, 'compact'])
def test_each_models_result_does_not_depend_on_its_slot(runs, other):
  _, together, snaps_a, numbers_a, _ = runs[None]
  _, alone, snaps_b, numbers_b, _ = runs[other]
  for field in ('epochs', 'status', 'n_fall', 'n_same', 'n_below'):
    np.testing.assert_array_equal(getattr(together.stopping, field),
                                  getattr(alone.stopping, field))
  np.testing.assert_array_equal(together.curves, alone.curves)
  np.testing.assert_array_equal(together.losses, alone.losses)
  np.testing.assert_array_equal(numbers_a, numbers_b)
  for m in range(4):
    np.testing.assert_array_equal(snaps_a[m], snaps_b[m])
    assert not np.array_equal(snaps_a[m][0], snaps_a[m][-1])


def test_compaction_moves_the_running_models_into_fewer_slots(runs):
  _, result, _, _, rounds = runs['compact']
  # After round r the models with more than r epochs still run; a group whose busy slots are
  # at most half of its slots shrinks to the next power of two of them (at least 1).
  expected, size = [], 4
  for r in range(1, len(rounds) + 1):
    busy = int((result.stopping.epochs > r).sum())
    if size > 1 and 2 * busy <= size:
      size = 1 << int(np.ceil(np.log2(max(busy, 1))))
    expected.append(size)
  assert [len(r) for r in rounds] == expected
  assert min(expected) < 4


def test_refilled_model_starts_fresh_with_its_own_initialisation(runs, tiny_datasets):
  # Model 3's first export (taken when it entered the slot after three others) is its own
  # initialisation: that of a trainer holding model 3 alone.
  _, _, snaps, _, _ = runs[1]
  data = input_pipeline.stack(tiny_datasets)
  sizes = [input_pipeline.balanced_size(d.train_labels) for d in tiny_datasets]
  alone = trainer_lib.ZooTrainer(CONFIGS[3:], [3], data, NAMES, sizes,
                                 trainer_lib.TrainConfig(seed=2, rules=RULES))
  (initial,) = alone.export(alone.init_state())
  np.testing.assert_array_equal(snaps[3][0], np.asarray(initial[0]))


def test_slots_per_group_must_be_positive(tiny_datasets):
  data = input_pipeline.stack(tiny_datasets)
  with pytest.raises(ValueError, match='slots_per_group'):
    trainer_lib.ZooTrainer(CONFIGS, [0, 1, 2, 3], data, NAMES, [250, 250],
                           trainer_lib.TrainConfig(slots_per_group=0))
