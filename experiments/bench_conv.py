r"""Quick measurement: vectorised zoo step against a per-model loop, per conv formulation.

  python experiments/bench_conv.py --num_models=32 --impls=im2col,lax --steps=16

For each conv formulation: model-steps/s of one compiled program training N models in lockstep
(one batch size, so one group), and of a plain loop that trains each model alone with the same
jitted single-model program, the same steps and the same data. Compile time is excluded (each
program runs once before timing). Prints one JSON line per formulation.
"""

import dataclasses
import json
import time

from absl import app
from absl import flags
import jax
import numpy as np

from nws_jax import datasets
from nws_jax import input_pipeline
from nws_jax import space
from nws_jax import trainer as trainer_lib

_NUM_MODELS = flags.DEFINE_integer('num_models', 32, 'Models in the zoo.')
_IMPLS = flags.DEFINE_list('impls', ['im2col', 'lax'], 'Conv formulations to measure.')
_STEPS = flags.DEFINE_integer('steps', 16, 'Training steps timed per program call.')
_BATCH = flags.DEFINE_integer('batch_size', 64, 'Batch size of every model.')
_CHUNKS = flags.DEFINE_list('models_per_chunk', ['0'], 'Models vmapped at once (0: all).')
_LOOP_MODELS = flags.DEFINE_integer('loop_models', 8,
                                    'Models timed in the per-model loop (rate extrapolates).')


def _time_epoch(trainer, state, repeats=2):
  active = np.ones(trainer.num_models, bool)
  state, _ = trainer.run_epoch(state, 1, active)  # Compiles (or hits the cache).
  jax.block_until_ready(state)
  t0 = time.perf_counter()
  for r in range(repeats):
    state, _ = trainer.run_epoch(state, 2 + r, active)
  jax.block_until_ready(state)
  return (time.perf_counter() - t0) / repeats


def main(_):
  n_train = int(_STEPS.value * _BATCH.value / 0.9 * 1.15) + 20
  data_sets = [datasets.load('gratings', num_train=n_train, num_test=100, seed=0)]
  sizes = [input_pipeline.balanced_size(d.train_labels) for d in data_sets]
  data = input_pipeline.stack(data_sets)
  steps = sizes[0] // _BATCH.value
  configs = [dataclasses.replace(c, dataset='gratings', batch_size=_BATCH.value)
             for c in space.sample_zoo(0, _NUM_MODELS.value, ['gratings'])]
  for impl, chunk in [(i, int(c)) for i in _IMPLS.value for c in _CHUNKS.value]:
    chunk = chunk or len(configs)
    cfg = trainer_lib.TrainConfig(conv_impl=impl, steps_per_call=steps,
                                  train_models_per_chunk=chunk)
    zoo = trainer_lib.ZooTrainer(configs, range(len(configs)), data, ['gratings'], sizes, cfg)
    t_zoo = _time_epoch(zoo, zoo.init_state())
    n_loop = min(_LOOP_MODELS.value, len(configs))
    t_loop = 0.0
    for i in range(n_loop):
      single = trainer_lib.ZooTrainer([configs[i]], [i], data, ['gratings'], sizes, cfg)
      t_loop += _time_epoch(single, single.init_state())
    vec = len(configs) * steps / t_zoo
    loop = n_loop * steps / t_loop
    print(json.dumps({'impl': impl, 'models_per_chunk': chunk, 'n_models': len(configs), 'batch_size': _BATCH.value,
                      'steps': steps, 'vectorised_model_steps_per_s': round(vec, 2),
                      'loop_model_steps_per_s': round(loop, 2), 'ratio': round(vec / loop, 3),
                      'images_per_s': round(vec * _BATCH.value, 1),
                      'device': jax.devices()[0].device_kind, 'backend': jax.default_backend(),
                      'jax': jax.__version__}), flush=True)


if __name__ == '__main__':
  app.run(main)
