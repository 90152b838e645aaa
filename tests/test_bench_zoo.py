"""The zoo and roofline benchmark suites on tiny configurations (no speed is asserted)."""

import math

import pytest

from nws_jax import cnn
from nws_jax.bench import common
from nws_jax.bench import roofline
from nws_jax.bench import zoo

CONFIG = common.BenchConfig(num_models=(1, 2), steps=2, repeats=1, loop_models=1, batch_size=8)

MACHINE = ('device', 'backend', 'num_devices', 'jax', 'date')
ZOO_FIELDS = ('suite', 'n_models', 'vectorised_model_steps_per_s', 'loop_model_steps_per_s',
              'ratio', 'images_per_s', 'compile_s', 'loop_compile_s', 'batch_size', 'steps',
              'conv_impl', 'bn_eval') + MACHINE
ROOFLINE_FIELDS = ('suite', 'n_models', 'flops_per_step_analytic', 'achieved_flops_per_s',
                   'peak_matmul_flops_per_s', 'fraction_of_peak', 'bytes_per_model_state',
                   'batch_size', 'steps', 'conv_impl') + MACHINE

# PROTOCOL's fixed architecture, counted by hand: 32×32×3 input, 5×5 SAME convs of 8, 16, 32
# channels, each followed by 2×2 pooling (32 -> 16 -> 8 -> 4), then dense 4·4·32 = 512 -> 128
# -> 64 -> 20 logits. Multiply-adds count 2 FLOPs.
HAND_FORWARD_FLOPS = (2 * 32 * 32 * 5 * 5 * 3 * 8      # 1,228,800
                      + 2 * 16 * 16 * 5 * 5 * 8 * 16   # 1,638,400
                      + 2 * 8 * 8 * 5 * 5 * 16 * 32    # 1,638,400
                      + 2 * 512 * 128 + 2 * 128 * 64 + 2 * 64 * 20)


def _positive(row, field):
  value = row[field]
  assert isinstance(value, (int, float)) and math.isfinite(value) and value > 0, (field, value)


@pytest.fixture(scope='module')
def zoo_rows():
  zoo.clear_cache()
  yield list(zoo.run(CONFIG))


@pytest.fixture(scope='module')
def roofline_rows(zoo_rows):
  del zoo_rows  # Measured first, so that the roofline suite reuses its measurements.
  yield list(roofline.run(CONFIG))
  zoo.clear_cache()


def test_zoo_rows(zoo_rows):
  assert [r['n_models'] for r in zoo_rows] == [1, 2]
  for row in zoo_rows:
    for field in ZOO_FIELDS:
      assert field in row, field
    assert row['suite'] == 'zoo' and 'error' not in row
    for field in ('vectorised_model_steps_per_s', 'loop_model_steps_per_s', 'ratio',
                  'images_per_s', 'compile_s', 'loop_compile_s'):
      _positive(row, field)
    assert row['ratio'] == pytest.approx(
        row['vectorised_model_steps_per_s'] / row['loop_model_steps_per_s'], rel=1e-12)
    assert row['images_per_s'] == pytest.approx(row['vectorised_model_steps_per_s'] * 8)
    assert (row['batch_size'], row['steps'], row['conv_impl']) == (8, 2, 'im2col')
  # The loop is measured once and serves every N.
  assert len({r['loop_model_steps_per_s'] for r in zoo_rows}) == 1


def test_roofline_rows(roofline_rows, zoo_rows):
  assert [r['n_models'] for r in roofline_rows] == [1, 2]
  for row, zoo_row in zip(roofline_rows, zoo_rows):
    for field in ROOFLINE_FIELDS:
      assert field in row, field
    assert row['suite'] == 'roofline' and 'error' not in row
    for field in ('flops_per_step_analytic', 'achieved_flops_per_s', 'peak_matmul_flops_per_s',
                  'fraction_of_peak', 'bytes_per_model_state'):
      _positive(row, field)
    assert 0 < row['fraction_of_peak'] < 1.5
    assert row['flops_per_step_analytic'] == 3 * HAND_FORWARD_FLOPS * 8
    assert row['achieved_flops_per_s'] == pytest.approx(
        row['vectorised_model_steps_per_s'] * row['flops_per_step_analytic'])
    assert row['vectorised_model_steps_per_s'] == zoo_row['vectorised_model_steps_per_s']
    if 'flops_per_step_xla' in row:  # XLA counts elementwise work too, but matmuls dominate.
      assert 0.9 < row['flops_per_step_xla'] / row['flops_per_step_analytic'] < 2.0
    if 'bytes_per_model_program' in row:
      _positive(row, 'bytes_per_model_program')
    # One model's state: float32 parameters + batch-norm statistics (the snapshot vector's
    # weights), plus 4 optimizer slots per parameter (Adam's two, RMSProp's, momentum's).
    snapshot = sum(cnn.weight_counts(roofline.fixed_architecture()))
    assert 4 * snapshot < row['bytes_per_model_state'] < 4 * 5 * snapshot + 64


def test_forward_flops_by_hand():
  assert HAND_FORWARD_FLOPS == 4_655_616
  assert roofline.forward_flops_per_image(roofline.fixed_architecture()) == HAND_FORWARD_FLOPS
  # depth_conv 4 adds a second 5×5 conv of 32 -> 32 channels at 8×8.
  deeper = cnn.Architecture(depth_conv=4)
  assert (roofline.forward_flops_per_image(deeper)
          == HAND_FORWARD_FLOPS + 2 * 8 * 8 * 5 * 5 * 32 * 32)


class _FakeOutOfMemory(RuntimeError):
  pass


def _fake_measurements(monkeypatch, failing=2):
  def vectorised(config, n):
    if n >= failing:
      raise _FakeOutOfMemory('RESOURCE_EXHAUSTED: Out of memory while trying to allocate')
    return dict(n_models=n, vectorised_model_steps_per_s=10.0 * n, images_per_s=80.0 * n,
                seconds_per_call=0.1, compile_s=1.0, models_per_chunk=n, state_bytes=1000 * n)

  monkeypatch.setattr(zoo, 'measure_vectorised', vectorised)
  monkeypatch.setattr(zoo, 'measure_loop',
                      lambda config: dict(loop_model_steps_per_s=5.0, loop_compile_s=1.0))
  monkeypatch.setattr(roofline, 'xla_step_flops', lambda config: None)
  monkeypatch.setattr(roofline, 'peak_matmul_flops_per_s', lambda *a, **k: 1e12)


@pytest.mark.parametrize('suite', [zoo, roofline])
def test_out_of_memory_stops_at_that_size(monkeypatch, suite):
  _fake_measurements(monkeypatch)
  rows = list(suite.run(common.BenchConfig(num_models=(1, 2, 4), batch_size=8)))
  assert [r['n_models'] for r in rows] == [1, 2]
  assert 'error' not in rows[0]
  assert rows[1]['error'] == 'out of memory' and rows[1]['suite'] == suite.SUITE
  for field in MACHINE:
    assert field in rows[1]


def test_other_errors_propagate(monkeypatch):
  _fake_measurements(monkeypatch)

  def broken(config, n):
    raise ValueError('not a memory error')

  monkeypatch.setattr(zoo, 'measure_vectorised', broken)
  with pytest.raises(ValueError, match='not a memory error'):
    list(zoo.run(common.BenchConfig(num_models=(1,), batch_size=8)))


def test_the_zoo_suite_times_the_chosen_evaluation_reading():
  for reading in ('original', 'moving'):
    config = common.BenchConfig(num_models=(1,), steps=2, batch_size=8, bn_eval=reading)
    trainer = zoo.make_trainer(config, zoo.model_configs(config, 1), [0])
    assert trainer.cfg.bn_eval == reading
