"""The packing benchmark suite: its counts and arithmetic from the trainer's groups, and a timed
epoch on a tiny zoo (no speed is asserted)."""

import math

from nws_jax import cnn
from nws_jax.bench import common
from nws_jax.bench import packing
from nws_jax.bench import roofline


def test_plan_of_a_fixed_zoo_wastes_nothing():
  trainer = packing.make_trainer(16, 'fixed', 'depth', 320)
  plan = packing.plan(trainer)
  assert plan['architectures'] == 1 and plan['padded_architectures'] == 1
  assert plan['training_programs'] == len({c.batch_size for c in trainer.configs})
  assert plan['wasted_on_padding'] == 0


def test_plan_counts_padding_from_each_models_own_and_padded_flops():
  # Seed 73's first two models share conv depth 3, dense depth 3 and batch size 64:
  # (7, 3, 3, 4, 64) and (5, 3, 3, 8, 192), padded together to (7, 3, 3, 8, 192).
  trainer = packing.make_trainer(2, 'random', 'depth', 320, seed=73)
  plan = packing.plan(trainer)
  (group,) = trainer.groups
  steps = [int(s) for s in group.hyper.steps_per_epoch]
  own = [roofline.analytic_step_flops(cnn.Architecture(7, 3, 3, 4, 64), 64),
         roofline.analytic_step_flops(cnn.Architecture(5, 3, 3, 8, 192), 64)]
  padded = roofline.analytic_step_flops(cnn.Architecture(7, 3, 3, 8, 192), 64)
  idle = padded * sum(max(steps) - s for s in steps)
  total = padded * sum(steps) + idle
  assert plan['training_programs'] == 1 and plan['architectures'] == 2
  assert math.isclose(plan['epoch_tflop'], total / 1e12)
  assert math.isclose(plan['wasted_on_padding'],
                      sum((padded - o) * s for o, s in zip(own, steps)) / total)
  assert math.isclose(plan['wasted_on_masked_steps'], idle / total)
  exact = packing.plan(packing.make_trainer(2, 'random', 'exact', 320, seed=73))
  assert exact['training_programs'] == 2 and exact['wasted_on_padding'] == 0


def test_plan_only_rows_cover_every_packing_and_fewer_programs_with_more_padding():
  config = common.BenchConfig(packing_num_models=32, packing_plan_only=True)
  rows = {r['variant']: r for r in packing.run(config)}
  assert set(rows) == {'fixed', 'random depth', 'random conv', 'random exact'}
  depth, conv, exact = rows['random depth'], rows['random conv'], rows['random exact']
  assert depth['training_programs'] <= conv['training_programs'] <= exact['training_programs']
  assert depth['wasted_on_padding'] >= conv['wasted_on_padding'] >= exact['wasted_on_padding']
  assert depth['padded_architectures'] <= 9
  assert all('epoch_s' not in r for r in rows.values())


def test_measure_times_one_epoch_of_the_models_own_steps():
  trainer = packing.make_trainer(1, 'fixed', 'depth', 320)
  fields = packing.measure(trainer)
  for name in ('compile_s', 'epoch_s', 'model_steps_per_s'):
    assert fields[name] > 0 and math.isfinite(fields[name])
  steps = int(trainer.groups[0].hyper.steps_per_epoch[0])
  assert math.isclose(fields['model_steps_per_s'] * fields['epoch_s'], steps)
