"""Continuous refill, compaction and waves (issue 7 points 3-4): a group trains
`slots_per_group` models at a time and a slot whose model stopped takes the next one of the
queue; `compact` shrinks a group whose queue is empty; `max_programs` runs groups in waves.
Each model's result must not depend on the slot, the round, the slot count or the wave."""

import dataclasses

import numpy as np
import pytest

from nws_jax import early_stopping
from nws_jax import input_pipeline
from nws_jax import snapshots
from nws_jax import space
from nws_jax.zoo import loop
from nws_jax.zoo import schedule as schedule_lib
from nws_jax.zoo import trainer as trainer_lib
from helpers import MemoryWriter

NAMES = ('gratings', 'shapes')
# test_diverge's architecture: with one model per vmapped chunk and two steps per call, the
# batch-64 group of two slots runs test_diverge's programs (compiled once per test session).
BASE = space.ModelConfig(dataset='gratings', lrate=0.004, batch_size=64, batch_norm=True,
                         augmentation=False, optimizer=1, activation=0, initialization=2,
                         filter_size=3, depth_conv=3, depth_fc=2, width_conv=4, width_fc=64)
# Two groups (batch sizes 64 and 128) of two; patience 1 makes models stop at different epochs.
CONFIGS = [BASE,
           dataclasses.replace(BASE, optimizer=2, dataset='shapes', activation=3),
           dataclasses.replace(BASE, optimizer=0, augmentation=True, lrate=0.001,
                               batch_size=128),
           dataclasses.replace(BASE, optimizer=1, dataset='shapes', initialization=3,
                               batch_size=128)]
RULES = early_stopping.StoppingRules(min_epochs=1, max_epochs=4, patience_fall=1,
                                     patience_same=1, patience_below=2)
VARIANTS = {'all at once': {}, 'one slot': dict(slots_per_group=1),
            'compact': dict(compact=True), 'waves': dict(max_programs=1)}
# The variants that run slots of one model train group 0 alone: its one-slot programs are
# compiled once for both, and group 1's (another 15 s of compiling) would test the same rules.
# A model's result does not depend on the other models of its zoo (test_trainer).
GROUP_0 = {'one slot', 'compact'}


def _run(tiny_datasets, num_models=4, **options):
  data = input_pipeline.stack(tiny_datasets)
  sizes = [input_pipeline.balanced_size(d.train_labels) for d in tiny_datasets]
  # One model per vmapped chunk: every slot count runs the same per-model computation, so the
  # results can be compared bit for bit.
  cfg = trainer_lib.TrainConfig(seed=2, rules=RULES, steps_per_call=2, train_models_per_chunk=1,
                                eval_models_per_chunk=1, **options)
  trainer = trainer_lib.ZooTrainer(CONFIGS[:num_models], list(range(num_models)), data, NAMES,
                                   sizes, cfg)
  writer = MemoryWriter()
  rounds = []  # after each round: (wave, each group's slot occupants)
  result = loop.train(
      trainer, on_export=writer.save,
      on_epoch=lambda r, res: rounds.append((trainer.wave,
                                             [m.copy() for m in trainer.slot_models])))
  snaps, numbers = snapshots.gather_snapshots(writer, result.stopping.epochs, result.exports,
                                              4, trainer.lengths)
  return result, snaps, numbers, rounds


@pytest.fixture(scope='module')
def runs(tiny_datasets):
  return {name: _run(tiny_datasets, num_models=2 if name in GROUP_0 else 4, **options)
          for name, options in VARIANTS.items()}


def test_models_stop_at_different_epochs_and_all_finish(runs):
  result, *_ = runs['all at once']
  epochs = result.stopping.epochs
  assert len(set(epochs.tolist())) > 1, epochs
  assert (result.stopping.status != early_stopping.RUNNING).all()
  assert result.rounds == epochs.max()


def test_one_slot_runs_a_groups_models_one_after_another(runs):
  result, _, _, rounds = runs['one slot']
  e = result.stopping.epochs
  expected = [0 if r < e[0] else 1 if r < e[0] + e[1] else -1
              for r in range(1, len(rounds) + 1)]
  assert [int(slots[0][0]) for _, slots in rounds] == expected
  assert result.rounds == e[0] + e[1]


def test_compaction_moves_the_running_models_into_fewer_slots(runs):
  result, _, _, rounds = runs['compact']
  e = result.stopping.epochs
  # After round r the models with more than r epochs still run; a group whose busy slots are
  # at most half of its slots shrinks to the next power of two of them (at least 1).
  expected, size = [], 2
  for r in range(1, len(rounds) + 1):
    busy = sum(int(e[m] > r) for m in (0, 1))
    if size > 1 and 2 * busy <= size:
      size = 1 << int(np.ceil(np.log2(max(busy, 1))))
    expected.append(size)
  assert [len(slots[0]) for _, slots in rounds] == expected
  assert min(len(slots[0]) for _, slots in rounds) == 1


def test_waves_run_one_group_after_the_other(runs):
  result, _, _, rounds = runs['waves']
  e = result.stopping.epochs
  first = max(e[0], e[1])  # The first wave ends when its last model stops.
  assert [wave for wave, _ in rounds] == [0] * (first - 1) + [1] * (len(rounds) - first + 1)
  assert result.rounds == first + max(e[2], e[3])


@pytest.mark.parametrize('other', ['one slot', 'compact', 'waves'])
def test_each_models_result_does_not_depend_on_its_slot_or_wave(runs, other):
  together, snaps_a, numbers_a, _ = runs['all at once']
  alone, snaps_b, numbers_b, _ = runs[other]
  n = len(numbers_b)  # the models of `other`: the first n of 'all at once'
  for field in ('epochs', 'status', 'n_fall', 'n_same', 'n_below'):
    np.testing.assert_array_equal(getattr(together.stopping, field)[:n],
                                  getattr(alone.stopping, field))
  np.testing.assert_array_equal(together.curves[:n], alone.curves)
  np.testing.assert_array_equal(together.losses[:n], alone.losses)
  np.testing.assert_array_equal(numbers_a[:n], numbers_b)
  for m in range(n):
    np.testing.assert_array_equal(snaps_a[m], snaps_b[m])
    assert not np.array_equal(snaps_a[m][0], snaps_a[m][-1])


def test_a_refilled_model_starts_from_its_own_initialisation(runs, tiny_datasets):
  # Model 1 entered group 0's slot after model 0 stopped; its first export is the initial state
  # of a trainer holding model 1 alone.
  _, snaps, _, _ = runs['one slot']
  data = input_pipeline.stack(tiny_datasets)
  sizes = [input_pipeline.balanced_size(d.train_labels) for d in tiny_datasets]
  alone = trainer_lib.ZooTrainer(CONFIGS[1:2], [1], data, NAMES, sizes,
                                 trainer_lib.TrainConfig(seed=2, rules=RULES))
  state = alone.init_state()
  # Its export 1 is that state after export 1's evaluation passes (bn_eval='original'), which
  # update only the batch-norm moving statistics.
  _, state = alone.evaluate(state)
  (initial,) = alone.export(state)
  np.testing.assert_array_equal(snaps[1][0], np.asarray(initial[0]))


@pytest.mark.parametrize('option', ['slots_per_group', 'max_programs'])
def test_slot_and_program_counts_must_be_positive(tiny_datasets, option):
  data = input_pipeline.stack(tiny_datasets)
  with pytest.raises(ValueError, match=option):
    trainer_lib.ZooTrainer(CONFIGS, [0, 1, 2, 3], data, NAMES, [250, 250],
                           trainer_lib.TrainConfig(**{option: 0}))


def test_compaction_shrinks_the_vmap_chunk_and_a_resume_lays_it_out_again(tiny_datasets):
  # With the CPU's default chunk (up to 8 models vmapped), a group of two vmaps both; compacted
  # to its one running model it vmaps one, so a straggler does not pay for idle slots. The
  # schedule carries the planned counts, and a resumed trainer lays out the same slots.
  data = input_pipeline.stack(tiny_datasets)
  sizes = [input_pipeline.balanced_size(d.train_labels) for d in tiny_datasets]

  def make():
    cfg = trainer_lib.TrainConfig(seed=2, rules=RULES, compact=True)
    return trainer_lib.ZooTrainer(CONFIGS, [0, 1, 2, 3], data, NAMES, sizes, cfg)

  def layout(t):
    return [(g.planned, g.chunk, g.num_slots) for g in t.schedule.groups]

  trainer = make()
  assert layout(trainer) == [(2, 2, 2)] * 2
  state = trainer.compact(trainer.init_state(), np.array([False, True, True, True]))
  assert layout(trainer) == [(1, 1, 1), (2, 2, 2)]
  assert [m.tolist() for m in trainer.slot_models] == [[1], [2, 3]]
  assert [s.params['logits']['bias'].shape[0] for s in state] == [1, 2]

  resumed = make()
  resumed.restore_schedule(schedule_lib.from_arrays(resumed.plan,
                                                    schedule_lib.to_arrays(trainer.schedule)))
  assert layout(resumed) == layout(trainer)
