"""The packing suite: a random-architecture zoo padded into few programs against exact packing,
the fixed-architecture zoo of the same size, and a per-model loop.

`plan` counts without compiling: training programs (groups), the programs per padded
architecture (init, evaluation, export), and the arithmetic of one epoch (analytic matmul FLOPs,
`roofline.analytic_step_flops`), split into the models' own work, work on padding (padded
architecture minus own, per model-step), and work on masked steps (a model whose epoch is
shorter than its group's longest still runs the group's steps, masked). `measure` builds the
zoo's trainer, compiles its training programs (concurrently, `ZooTrainer.warm_up`) and times one
epoch after that, wave by wave: model-steps per second count the models' own steps only.
"""

from __future__ import annotations

import time
from typing import Iterator

import jax
import numpy as np

from nws_jax import cnn
from nws_jax import space
from nws_jax.zoo import builder as zoo_builder
from nws_jax.bench import common
from nws_jax.bench import roofline
from nws_jax.zoo import programs as programs_lib
from nws_jax.zoo import trainer as trainer_lib

SUITE = 'packing'
DATASETS = ('gratings', 'shapes')


def make_trainer(num_models: int, architecture: str, packing: str, num_train: int,
                 seed: int = 0, models: slice | None = None) -> trainer_lib.ZooTrainer:
  """The trainer of a zoo of `num_models` (or of its models[`models`]) on two offline datasets
  of `num_train` examples each."""
  config = zoo_builder.ZooConfig(num_models=num_models, seed=seed, datasets=DATASETS,
                                 architecture=architecture, packing=packing,
                                 num_train=num_train, num_test=100, eval_size=100)
  configs = space.sample_zoo(seed, num_models, DATASETS, architecture)
  ids = np.arange(num_models)
  if models is not None:
    configs, ids = configs[models], ids[models]
  return zoo_builder.make_trainer(config, configs, ids)


def plan(trainer: trainer_lib.ZooTrainer) -> dict:
  """Programs and one epoch's arithmetic of `trainer` (no compiling)."""
  own = padding = masked = 0.0
  steps = 0
  for g in trainer.groups:
    padded = roofline.analytic_step_flops(g.arch, g.batch_size)
    for pos, n in zip(g.members, np.asarray(g.hyper.steps_per_epoch).tolist()):
      flops = roofline.analytic_step_flops(cnn.Architecture(*trainer.configs[pos].architecture),
                                           g.batch_size)
      own += flops * n
      padding += (padded - flops) * n
      masked += padded * (g.max_steps - n)
      steps += int(n)
  total = own + padding + masked
  return dict(models=trainer.num_models, architectures=len({c.architecture
                                                            for c in trainer.configs}),
              training_programs=len(trainer.groups), padded_architectures=len(trainer.archs),
              waves=trainer.num_waves,
              model_steps_per_epoch=steps, epoch_tflop=total / 1e12,
              wasted_on_padding=padding / total, wasted_on_masked_steps=masked / total)


def measure(trainer: trainer_lib.ZooTrainer) -> dict:
  """Compile seconds of the training programs, then one timed epoch of every model, wave by
  wave (`ZooTrainer.next_wave` between them, untimed)."""
  state = trainer.init_state()
  compile_s = epoch_s = steps = 0.0
  while True:
    compile_s += trainer.warm_up(state)
    t0 = time.perf_counter()
    state, metrics = trainer.run_epoch(state, 1, np.ones(trainer.num_models, bool))
    jax.block_until_ready(state)
    epoch_s += time.perf_counter() - t0
    steps += float(metrics[:, 2].sum())
    if trainer.wave + 1 == trainer.num_waves:
      break
    state = trainer.next_wave(state)
  return dict(compile_s=compile_s, epoch_s=epoch_s, model_steps_per_s=steps / epoch_s)


def _row(config: common.BenchConfig, variant: str, **fields) -> dict:
  return dict(suite=SUITE, variant=variant, **common.device_fields(), **fields)


def run(config: common.BenchConfig) -> Iterator[dict]:
  """Rows at config.packing_num_models models: plans of the fixed zoo and of the random zoo
  under each packing; unless packing_plan_only, timings of the fixed zoo, the random zoo under
  'depth' packing, and of its first packing_loop_models models exact and one at a time (the
  per-model loop)."""
  n = config.packing_num_models
  runs = [('fixed', 'fixed', 'depth', True), ('random depth', 'random', 'depth', True),
          ('random conv', 'random', 'conv', False), ('random exact', 'random', 'exact', False)]
  for variant, architecture, packing, timed in runs:
    trainer = make_trainer(n, architecture, packing, config.packing_num_train, config.seed)
    fields = plan(trainer)
    if timed and not config.packing_plan_only:
      fields.update(measure(trainer))
    yield _row(config, variant, **fields)
  if config.packing_plan_only:
    return
  # Exact packing and the per-model loop compile one program per architecture and batch size:
  # timed on the zoo's first models, per model-step and per program.
  k = config.packing_loop_models
  exact = make_trainer(n, 'random', 'exact', config.packing_num_train, config.seed, slice(0, k))
  yield _row(config, f'random exact, first {k}', **plan(exact), **measure(exact))
  seconds = steps = compile_s = 0.0
  # The loop compiles its own programs (the exact row compiled the same ones).
  programs_lib.SHARED.release()
  jax.clear_caches()
  for m in range(k):
    alone = make_trainer(n, 'random', 'exact', config.packing_num_train, config.seed,
                         slice(m, m + 1))
    t = measure(alone)
    seconds += t['epoch_s']
    compile_s += t['compile_s']
    steps += t['model_steps_per_s'] * t['epoch_s']
  yield _row(config, f'random loop, first {k}', models=k, model_steps_per_s=steps / seconds,
             compile_s=compile_s)
