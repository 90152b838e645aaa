"""Zoo suite: the vectorised zoo trainer against a plain per-model loop.

One group of N fixed-architecture models (nws_fixed: 5×5 convs 8/16/32 channels, dense 128/64,
20 logits), every model at `config.batch_size` (so one compiled training program), every other
variation sampled (optimizer, activation, initialisation, augmentation), on the offline
`gratings` set sized so that an epoch is exactly `config.steps` steps. A timed call is one such
epoch, as `ZooTrainer.run_epoch` runs it: the epoch's balanced order drawn on the device, then
one call of the group's training program (`lax.scan` over `config.steps` steps, the models
vmapped `trainer.default_models_per_chunk()` at a time). Mean of `config.repeats` calls after
one untimed call.

*Vectorised*: the zoo trainer's program on all N models at once. *Loop*: the same trainer's
program for a single model (each model alone, same steps, same data), `config.loop_models`
models one after the other; its rate is per model, so it is measured once per run and serves
every N. A model-step is one forward + backward + optimizer update of one model on one batch.

Compile time is apart: `compile_s` is tracing, lowering and XLA compilation of the vectorised
program (`jax.jit(...).lower(...).compile()`, timed alone, from cold: a fresh trace that no
in-process cache serves), `loop_compile_s` the same for the single-model program (which is
the vectorised program at N = 1: that row's compile_s is the same compile).

One row per N (`suite='zoo'`), units seconds (`*_s`) and per second (`*_per_s`):

  n_models                        N
  vectorised_model_steps_per_s    N · steps / seconds per vectorised call
  loop_model_steps_per_s          loop_models · steps / seconds of the loop's calls
  ratio                           vectorised_model_steps_per_s / loop_model_steps_per_s
  images_per_s                    vectorised_model_steps_per_s · batch_size
  compile_s, loop_compile_s       compile seconds of the vectorised / single-model program
  seconds_per_call                mean seconds of one vectorised call (N models × steps)
  batch_size, steps               images per model-step; steps per call
  conv_impl                       the convolution formulation ('auto' resolved)
  bn_eval                         the zoo's evaluation reading ('original': a pass per step)
  models_per_chunk                models vmapped at once in the vectorised program
  loop_models, repeats            models timed in the loop; timed calls per measurement

plus `common.device_fields()`. An N that runs out of device memory gives a row with
`error='out of memory'` (and n_models, batch_size, steps, conv_impl) and no larger N is tried.

Measurements are kept in-process per (config, N) (`clear_cache()` forgets them), so that the
roofline suite in the same run reuses them instead of training again.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Iterator

import jax
import jax.numpy as jnp

from nws_jax import datasets
from nws_jax import input_pipeline
from nws_jax import sharding
from nws_jax import space
from nws_jax.bench import common
from nws_jax.zoo import trainer as trainer_lib

SUITE = 'zoo'
DATASET = 'gratings'
OUT_OF_MEMORY = 'out of memory'

_cache: dict = {}


def clear_cache() -> None:
  """Forgets the measurements (and the data set) kept for reuse within this process."""
  _cache.clear()


def cached(key, compute):
  """`compute()`, once per `key` in this process (until `clear_cache()`)."""
  if key not in _cache:
    _cache[key] = compute()
  return _cache[key]


def conv_impl(config: common.BenchConfig) -> str:
  """The convolution formulation `config` trains with ('auto' resolved to the backend's)."""
  return trainer_lib.default_conv_impl() if config.conv_impl == 'auto' else config.conv_impl


def model_configs(config: common.BenchConfig, n: int) -> list[space.ModelConfig]:
  """Models 0..n-1 of the benchmark zoo: sampled variations, `gratings`, one batch size."""
  return [dataclasses.replace(c, dataset=DATASET, batch_size=config.batch_size)
          for c in space.sample_zoo(config.seed, n, [DATASET])]


def epoch_examples(config: common.BenchConfig) -> int:
  """Training examples in one benchmark epoch: steps · batch_size."""
  return config.steps * config.batch_size


def zoo_data(config: common.BenchConfig) -> input_pipeline.ZooData:
  """The `gratings` set with at least `epoch_examples(config)` class-balanced training examples
  (10% goes to validation and the class counts vary, hence the margin)."""

  def load():
    need = epoch_examples(config)
    num_train = int(need / 0.9 * 1.15) + 20
    while True:
      data = datasets.load(DATASET, num_train=num_train, num_test=20, seed=config.seed)
      if input_pipeline.balanced_size(data.train_labels) >= need:
        return input_pipeline.stack([data], eval_size=20)
      num_train = int(num_train * 1.25)

  return cached(('data', config.steps, config.batch_size, config.seed), load)


def make_trainer(config: common.BenchConfig, configs, model_ids) -> trainer_lib.ZooTrainer:
  """A trainer whose epoch is exactly `config.steps` steps, in one call per epoch."""
  cfg = trainer_lib.TrainConfig(seed=config.seed, conv_impl=config.conv_impl,
                                steps_per_call=config.steps, bn_eval=config.bn_eval)
  # The balanced size handed over makes every model's epoch steps · batch_size examples (the
  # first ones of its balanced order), whatever the data set's own balanced size.
  trainer = trainer_lib.ZooTrainer(configs, model_ids, zoo_data(config), [DATASET],
                                   [epoch_examples(config)], cfg)
  (group,) = trainer.groups
  assert group.max_steps == config.steps and trainer.calls_per_epoch() == 1
  return trainer


class _Epochs:
  """Epoch calls of a trainer's single group through an executable compiled here.

  `compile()` lowers and compiles the group's training program afresh (a new trace of the same
  function: no in-process cache serves it, so its seconds are a cold compile); calling the
  object runs one epoch as `run_epoch` does (order draw, one program call), no host work per
  model or step.
  """

  def __init__(self, trainer: trainer_lib.ZooTrainer):
    self.trainer = trainer
    (self.group,) = trainer.groups
    # The trainer's own programs: the benchmark times exactly what `run_epoch` runs.
    self.programs = trainer.programs.groups[0]
    self.program = self.programs.train
    self.active = jnp.ones(len(self.group.members), bool)
    self.state = trainer.init_state()[0]
    self.epoch = 0

  def _args(self, state, hyper, epoch):
    epochs = jnp.full(len(self.group.members), epoch, jnp.int32)  # One epoch for every slot.
    order = self.programs.order(hyper, epochs, self.trainer.data)
    return state, hyper, order, self.active, epochs, jnp.int32(0), self.trainer.data

  def compile(self):
    """Returns (compiled executable, seconds it took)."""
    jax.block_until_ready(self.state)
    args = self._args(self.state, self.group.hyper, jnp.int32(1))
    jax.block_until_ready(args)
    fn = self.program.__wrapped__
    fresh = jax.jit(lambda *a: fn(*a), donate_argnums=(0,))  # A new function: traced afresh.
    t0 = time.perf_counter()
    compiled = fresh.lower(*args).compile()
    return compiled, time.perf_counter() - t0

  def seconds_per_call(self, compiled, repeats: int) -> float:
    """Mean seconds of one epoch call, after one untimed call."""

    def call():
      self.epoch += 1
      self.state, metrics = compiled(*self._args(self.state, self.group.hyper,
                                                 jnp.int32(self.epoch)))
      return self.state, metrics

    jax.block_until_ready(call())
    return common.time_calls(call, repeats)

  def state_bytes(self) -> int:
    """Bytes of the group's training state (parameters, optimizer state, batch-norm stats)."""
    return sum(x.nbytes for x in jax.tree.leaves(self.state))


def _compile(config: common.BenchConfig, epochs: _Epochs):
  """(executable, compile seconds) of `epochs`' program. The single-model program is compiled
  once per config: the loop and the vectorised N = 1 run the very same program (same shapes)."""
  if len(epochs.group.members) != 1:
    return epochs.compile()
  return cached(('single_model_program', config), epochs.compile)


def measure_loop(config: common.BenchConfig) -> dict:
  """The per-model loop: models 0..loop_models-1 each trained alone (the single-model program,
  compiled once: every model has the same shapes). Returns loop_model_steps_per_s (model-steps
  per second) and loop_compile_s (seconds)."""

  def measure():
    configs = model_configs(config, config.loop_models)
    compiled, compile_s, seconds = None, 0.0, 0.0
    for i, c in enumerate(configs):
      epochs = _Epochs(make_trainer(config, [c], [i]))
      if compiled is None:
        compiled, compile_s = _compile(config, epochs)
      seconds += epochs.seconds_per_call(compiled, config.repeats)
      del epochs
    return dict(loop_model_steps_per_s=len(configs) * config.steps / seconds,
                loop_compile_s=compile_s)

  return dict(cached(('loop', config), measure))


def measure_vectorised(config: common.BenchConfig, n: int) -> dict:
  """All n models in the zoo trainer's one program. Returns (units in the keys): n_models,
  vectorised_model_steps_per_s, images_per_s, seconds_per_call, compile_s, models_per_chunk,
  state_bytes (the whole group's, bytes) and, where XLA reports them, program_argument_bytes,
  program_output_bytes, program_temp_bytes (the compiled program's memory analysis, bytes).
  Raises XLA's error when the device runs out of memory (`common.is_out_of_memory`)."""

  def measure():
    epochs = _Epochs(make_trainer(config, model_configs(config, n), range(n)))
    compiled, compile_s = _compile(config, epochs)
    seconds = epochs.seconds_per_call(compiled, config.repeats)
    rate = n * config.steps / seconds
    row = dict(n_models=n, vectorised_model_steps_per_s=rate,
               images_per_s=rate * config.batch_size, seconds_per_call=seconds,
               compile_s=compile_s,
               models_per_chunk=min(trainer_lib.default_models_per_chunk(), n),
               state_bytes=epochs.state_bytes())
    try:
      memory = compiled.memory_analysis()
    except (NotImplementedError, RuntimeError):
      memory = None
    if memory is not None:
      row.update(program_argument_bytes=int(memory.argument_size_in_bytes),
                 program_output_bytes=int(memory.output_size_in_bytes),
                 program_temp_bytes=int(memory.temp_size_in_bytes))
    return row

  return dict(cached(('vectorised', config, n), measure))


def _base(config: common.BenchConfig, n: int) -> dict:
  return dict(suite=SUITE, n_models=n, batch_size=config.batch_size, steps=config.steps,
              conv_impl=conv_impl(config), bn_eval=config.bn_eval)


def check_devices() -> None:
  """Raises ValueError where the suite cannot time one program over every device: several
  devices of a process on a platform where they run in turn (`sharding.InTurn`)."""
  if jax.default_backend() in sharding.IN_TURN_PLATFORMS and jax.local_device_count() > 1:
    raise ValueError(f'the zoo suite times one program over every device, and the '
                     f'{jax.local_device_count()} {jax.default_backend()} devices of this process '
                     'run in turn (docs/scale-out.md): run it on one device')


def run(config: common.BenchConfig) -> Iterator[dict]:
  """One row per N of `config.sizes()` (fields and units: the module docstring)."""
  config.validate()
  check_devices()
  loop = measure_loop(config)
  for n in config.sizes():
    try:
      vec = measure_vectorised(config, n)
    except Exception as e:  # pylint: disable=broad-except
      if not common.is_out_of_memory(e):
        raise
      vec = None  # Reported outside the handler, so that the error frees its device buffers.
    if vec is None:
      yield dict(_base(config, n), error=OUT_OF_MEMORY, **common.device_fields())
      return
    rate = vec['vectorised_model_steps_per_s']
    yield dict(
        _base(config, n),
        vectorised_model_steps_per_s=rate,
        loop_model_steps_per_s=loop['loop_model_steps_per_s'],
        ratio=rate / loop['loop_model_steps_per_s'],
        images_per_s=vec['images_per_s'],
        compile_s=vec['compile_s'],
        loop_compile_s=loop['loop_compile_s'],
        seconds_per_call=vec['seconds_per_call'],
        models_per_chunk=vec['models_per_chunk'],
        loop_models=config.loop_models,
        repeats=config.repeats,
        **common.device_fields())
