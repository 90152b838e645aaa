r"""Quick measurement: meta-classifiers of all properties in one program against one at a time.

  python experiments/bench_meta.py --num_models=48 --slice_length=500 \
      --conv_widths=8,16,32,32,32,32 --dense_widths=256,64

A synthetic zoo (random snapshots, the fixed architecture's property columns, 7 varying
properties) is trained for `--epochs` timed epochs: once with every property stacked in one
program, and once per property alone (the loop; each its own program run, same steps, same
slices). Compile time is excluded (one untimed epoch first). Prints one JSON line: slices per
second (one slice read by one meta-classifier = one slice), and their ratio.
"""

import json
import time

from absl import app
from absl import flags
import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd

from nws_jax import space
from nws_jax.meta import split as split_lib
from nws_jax.meta import targets as targets_lib
from nws_jax.meta import train

_NUM_MODELS = flags.DEFINE_integer('num_models', 48, 'Models in the synthetic zoo.')
_N = flags.DEFINE_integer('weights', 20_000, 'Weights per snapshot vector.')
_SLICE = flags.DEFINE_integer('slice_length', 500, 'Weights per slice.')
_CONV = flags.DEFINE_list('conv_widths', ['8', '16', '32', '32', '32', '32'], 'Conv widths.')
_DENSE = flags.DEFINE_list('dense_widths', ['256', '64'], 'Dense widths.')
_BATCH = flags.DEFINE_integer('batch_size', 64, 'Slices per step.')
_EPOCHS = flags.DEFINE_integer('epochs', 2, 'Timed epochs.')


def _zoo(num_models, n):
  rng = np.random.default_rng(0)
  table = pd.DataFrame({name: [getattr(c, name) for c in space.sample_zoo(0, num_models,
                                                                           ('a', 'b', 'c'))]
                        for name in space.PROPERTY_NAMES})
  table['augmentation'] = rng.integers(0, 2, num_models).astype(bool)
  table['batch_norm'] = True
  table['weightn_conv'], table['weightn_fc'] = n // 5, n - n // 5
  return table, rng.normal(size=(num_models, 20, n)).astype(np.float32)


def _epoch_rate(config, table, snaps, split, targets):
  spec = train.model_spec(config, targets, table)
  data = train.prepare(config, table, snaps, split, targets)
  keys = train._member_keys(config.seed, data.codes)
  state = train.init_members(keys, spec=spec, learning_rate=config.learning_rate)
  pairs = [jnp.asarray(a) for a in data.train_pairs]

  def epoch(state, e):
    return train.train_epoch(state, jnp.int32(e), train._seed_key(config.seed), keys,
                             data.snapshots, data.lo, data.hi, data.labels, data.values,
                             data.is_regression, data.num_classes, *pairs, spec=spec,
                             learning_rate=config.learning_rate, batch_size=config.batch_size)

  state, loss = epoch(state, 0)
  jax.block_until_ready(loss)
  t0 = time.perf_counter()
  for e in range(1, 1 + _EPOCHS.value):
    state, loss = epoch(state, e)
  jax.block_until_ready(loss)
  steps = -(-len(data.train_pairs[0]) // config.batch_size) * _EPOCHS.value
  return steps * config.batch_size * len(targets) / (time.perf_counter() - t0)


def main(argv):
  del argv
  table, snaps = _zoo(_NUM_MODELS.value, _N.value)
  config = train.MetaConfig(slice_length=_SLICE.value, batch_size=_BATCH.value,
                            conv_widths=tuple(map(int, _CONV.value)),
                            dense_widths=tuple(map(int, _DENSE.value)))
  split = split_lib.make_split(np.arange(len(table)), 0)
  names = targets_lib.varying_properties(table)
  targets = targets_lib.make_targets(table, names, split.train)
  together = _epoch_rate(config, table, snaps, split, targets)
  alone_seconds = sum(1 / _epoch_rate(config, table, snaps, split, [t]) for t in targets)
  loop = len(targets) / alone_seconds
  print(json.dumps(dict(device=jax.devices()[0].device_kind, properties=len(targets),
                        slice_length=_SLICE.value, batch_size=_BATCH.value,
                        stacked_slices_per_s=round(together, 1),
                        loop_slices_per_s=round(loop, 1), ratio=round(together / loop, 2))))


if __name__ == '__main__':
  app.run(main)
