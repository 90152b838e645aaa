"""Roofline suite: achieved FLOP/s of the zoo's training step against the device's matmul peak,
and device memory per model.

The training step is the zoo suite's (`zoo.measure_vectorised`: N fixed-architecture models in
one program, `config.steps` steps per call, batch `config.batch_size`; a measurement the zoo
suite already made in this process is reused). Its FLOPs are counted two ways:

- analytic, from `cnn.layer_specs`: per image forward, 2·H·W·k²·Cin·Cout per SAME stride-1
  conv (H×W its input's size) and 2·in·out per dense layer (matmuls only: bias, batch norm,
  activations, pooling and the optimizer are left out); a training step is taken as 3× the
  forward (backward ≈ 2× forward), times the batch;
- XLA's, `cost_analysis()['flops']` of one model's one training step compiled alone
  (`trainer.train_steps` with num_steps=1, no vmap): everything XLA counts, elementwise work
  and all three optimizers' updates included.

The peak is a jitted float32 matmul at precision HIGHEST (the CNN's precision) of n×n, n = 2048
on a CPU and 8192 otherwise, 2·n³ FLOPs per call, measured in the same run on the same device.

One row per N (`suite='roofline'`), units FLOPs, FLOP/s, bytes, seconds:

  n_models                      N
  flops_per_step_analytic       FLOPs of one model-step (one model, one batch), analytic
  flops_per_step_xla            the same by XLA's cost analysis (absent where unavailable)
  vectorised_model_steps_per_s  model-steps per second of the vectorised program
  achieved_flops_per_s          vectorised_model_steps_per_s · flops_per_step_analytic
  achieved_flops_per_s_xla      vectorised_model_steps_per_s · flops_per_step_xla
  peak_matmul_flops_per_s       the matmul's FLOP/s
  peak_matmul_size              its n
  fraction_of_peak              achieved_flops_per_s / peak_matmul_flops_per_s
  bytes_per_model_state         bytes of one model's parameters + optimizer state (all three
                                optimizers' slots) + batch-norm statistics
  bytes_per_model_program       (argument + temp bytes of the compiled vectorised program) / N,
                                where XLA's memory analysis is available
  program_argument_bytes, program_temp_bytes, program_output_bytes   the same, whole program
  batch_size, steps, conv_impl, models_per_chunk   as in the zoo suite

plus `common.device_fields()`. An N that runs out of device memory gives a row with
`error='out of memory'` and no larger N is tried.
"""

from __future__ import annotations

import functools
from typing import Iterator

import jax
import jax.numpy as jnp

from nws_jax import cnn
from nws_jax import space
from nws_jax.bench import common
from nws_jax.bench import zoo
from nws_jax.zoo import step

SUITE = 'roofline'
TRAIN_OVER_FORWARD = 3  # forward + backward (≈ 2× forward, input and weight gradients)


def fixed_architecture() -> cnn.Architecture:
  return cnn.Architecture(**space.FIXED_ARCHITECTURE)


def forward_flops_per_image(arch: cnn.Architecture) -> int:
  """Matmul FLOPs of one image's forward pass (FLOPs): 2·H·W·k²·Cin·Cout per conv, 2·in·out
  per dense layer."""
  flops, size = 0, cnn.IMAGE_SHAPE[0]
  for spec in cnn.layer_specs(arch):
    if spec.kind == 'conv':
      k, _, c_in, c_out = spec.kernel_shape
      flops += 2 * size * size * k * k * c_in * c_out
      if spec.pool_after:
        size //= 2
    else:
      n_in, n_out = spec.kernel_shape
      flops += 2 * n_in * n_out
  return flops


def analytic_step_flops(arch: cnn.Architecture, batch_size: int) -> int:
  """FLOPs of one model-step: 3 × forward × batch_size."""
  return TRAIN_OVER_FORWARD * forward_flops_per_image(arch) * batch_size


def _flops_of(compiled) -> float | None:
  try:
    analysis = compiled.cost_analysis()
  except (NotImplementedError, RuntimeError):
    return None
  if isinstance(analysis, (list, tuple)):  # Older JAX: one dict per device program.
    analysis = analysis[0] if analysis else None
  flops = (analysis or {}).get('flops')
  return float(flops) if flops is not None and flops > 0 else None


def xla_step_flops(config: common.BenchConfig) -> float | None:
  """XLA's count of one model-step's FLOPs (one model, one step, compiled alone), or None."""

  def compute():
    trainer = zoo.make_trainer(config, zoo.model_configs(config, 1), [0])
    (group,) = trainer.groups

    def first(tree):
      return jax.tree.map(lambda x: x[0], tree)

    state, hyper = first(trainer.init_state()[0]), first(group.hyper)
    order = step.epoch_order(hyper, jnp.int32(1), trainer.data)
    one_step = functools.partial(step.train_steps, arch=group.arch,
                             batch_size=group.batch_size, num_steps=1,
                             conv_impl=trainer.conv_impl, augment_config=trainer.cfg.augment,
                             masked=group.masked, bn_eval=trainer.cfg.bn_eval)
    compiled = jax.jit(one_step).lower(state, hyper, order, jnp.bool_(True), jnp.int32(1),
                                       jnp.int32(0), trainer.data).compile()
    return _flops_of(compiled)

  return zoo.cached(('xla_step_flops', config.batch_size, config.conv_impl, config.bn_eval,
                     config.seed),
                    compute)


def peak_matmul_size() -> int:
  return 2048 if jax.default_backend() == 'cpu' else 8192


def peak_matmul_flops_per_s(repeats: int = 3, size: int | None = None) -> float:
  """FLOP/s of a jitted n×n float32 matmul at precision HIGHEST (2·n³ FLOPs per call), mean of
  `repeats` calls after one untimed call."""
  n = size or peak_matmul_size()
  ka, kb = jax.random.split(jax.random.PRNGKey(0))
  a = jax.random.normal(ka, (n, n), jnp.float32)
  b = jax.random.normal(kb, (n, n), jnp.float32)
  matmul = jax.jit(lambda x, y: jnp.matmul(x, y, precision=jax.lax.Precision.HIGHEST))
  jax.block_until_ready(matmul(a, b))
  seconds = common.time_calls(lambda: matmul(a, b), repeats)
  return 2.0 * n**3 / seconds


def run(config: common.BenchConfig) -> Iterator[dict]:
  """One row per N of `config.sizes()` (fields and units: the module docstring)."""
  config.validate()
  arch = fixed_architecture()
  flops_analytic = analytic_step_flops(arch, config.batch_size)
  flops_xla = xla_step_flops(config)
  size = peak_matmul_size()
  peak = peak_matmul_flops_per_s(max(3, config.repeats), size)
  for n in config.sizes():
    base = dict(suite=SUITE, n_models=n, batch_size=config.batch_size, steps=config.steps,
                conv_impl=zoo.conv_impl(config))
    try:
      vec = zoo.measure_vectorised(config, n)
    except Exception as e:  # pylint: disable=broad-except
      if not common.is_out_of_memory(e):
        raise
      vec = None  # Reported outside the handler, so that the error frees its device buffers.
    if vec is None:
      yield dict(base, error=zoo.OUT_OF_MEMORY, **common.device_fields())
      return
    rate = vec['vectorised_model_steps_per_s']
    achieved = rate * flops_analytic
    row = dict(base, flops_per_step_analytic=flops_analytic)
    if flops_xla is not None:
      row['flops_per_step_xla'] = flops_xla
    row.update(vectorised_model_steps_per_s=rate, achieved_flops_per_s=achieved)
    if flops_xla is not None:
      row['achieved_flops_per_s_xla'] = rate * flops_xla
    row.update(peak_matmul_flops_per_s=peak, peak_matmul_size=size,
               fraction_of_peak=achieved / peak,
               bytes_per_model_state=vec['state_bytes'] // n)
    if 'program_temp_bytes' in vec:
      row.update(bytes_per_model_program=(vec['program_argument_bytes']
                                          + vec['program_temp_bytes']) / n,
                 program_argument_bytes=vec['program_argument_bytes'],
                 program_temp_bytes=vec['program_temp_bytes'],
                 program_output_bytes=vec['program_output_bytes'])
    row.update(models_per_chunk=vec['models_per_chunk'], **common.device_fields())
    yield row
