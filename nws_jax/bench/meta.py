"""Meta suite: meta-classifier training, one property alone against all properties in one program.

A synthetic zoo of `config.meta_num_models` fixed-architecture models (their sampled property
columns, augmentation drawn at random, random snapshot vectors [models, 20, n] of the fixed
architecture's n weights) feeds `meta/train.py`'s `train_epoch`, every model's snapshots 11–20
being training pairs. Three programs are timed, each by whole epochs (one compiled `lax.scan`
over ceil(pairs / batch_size) steps; compile excluded: one untimed epoch first; mean of
`config.repeats` epochs):

- *stacked*: the P meta-classifiers of every property that varies in the zoo in one program;
  each step draws one batch of slices that all P members read;
- *loop*: each of the P properties alone (the same program at P = 1, same steps and slices),
  one after the other: every property's timed epochs are waited for before the next one's;
  its time is the sum over the properties;
- *one property*: the first property's part of the loop (PROTOCOL order); with
  `config.meta_loop` off, the only property timed alone (the loop's fields are then absent).

The meta-classifier is the study's (`config.meta_variant` '': cnn1D_small, or cnn1D over 40,000
weights) or the pre-issue 6-layer network ('legacy_6layer'), to compare their step costs.

A slice-read is one slice through one meta-classifier (forward, backward, Adam update).

One row per run (`suite='meta'`): units are seconds (`*_s`) and per second (`*_per_s`):

  properties                        P, the number of properties stacked
  n_models, weights_per_model       the synthetic zoo: models, weights per snapshot vector
  slice_length, batch_size          weights per slice, slices per step
  variant                           the meta-classifier's layout (model.py's variant names)
  conv_widths, dense_widths         the meta-classifier's widths ('8,16,32' strings)
  variables_per_classifier          one member's parameters and batch-norm moving statistics
  steps_per_epoch                   training steps per timed epoch
  one_property_step_s               seconds per step of one meta-classifier alone
  stacked_step_s                    seconds per step of the P stacked meta-classifiers
  loop_step_s                       seconds per step of all P trained one after the other
  one_property_slices_per_s         batch_size / one_property_step_s (slice-reads of one member)
  all_properties_slices_per_s       batch_size / stacked_step_s: batch slices per second
                                    of the stack (each read by P meta-classifiers)
  all_properties_slice_reads_per_s  P · all_properties_slices_per_s
  cost_ratio                        stacked_step_s / one_property_step_s (issue 5 target: ≤ 2)
  loop_slice_reads_per_s            P · batch_size / loop_step_s
  stacked_over_loop                 all_properties_slice_reads_per_s / loop_slice_reads_per_s
  compile_s                         first stacked epoch minus a timed one (compile, about)

plus `common.device_fields()`. When the device runs out of memory the row carries
`error='out of memory'` and no timings.
"""

from __future__ import annotations

import time
from typing import Iterator

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd

from nws_jax import cnn
from nws_jax import space
from nws_jax.bench import common
from nws_jax.meta import model as model_lib
from nws_jax.meta import split as split_lib
from nws_jax.meta import targets as targets_lib
from nws_jax.meta import train

SUITE = 'meta'
NUM_SNAPSHOTS = 20
DATASETS = ('a', 'b', 'c')  # synthetic dataset names: the dataset property varies
LEGACY = model_lib.LEGACY


def fixed_weight_counts() -> tuple[int, int]:
  """(weightn_conv, weightn_fc) of the fixed architecture (PROTOCOL §1, nws_fixed)."""
  return cnn.weight_counts(cnn.Architecture(**space.FIXED_ARCHITECTURE))


def synthetic_table(num_models: int, seed: int = 0) -> pd.DataFrame:
  """The property columns of a fixed-architecture zoo of `num_models` sampled models
  (`space.sample_zoo`, datasets 'a', 'b', 'c'), augmentation drawn at random, batch norm on."""
  rng = np.random.default_rng(seed)
  zoo = space.sample_zoo(seed, num_models, DATASETS)
  table = pd.DataFrame({name: [getattr(c, name) for c in zoo] for name in space.PROPERTY_NAMES})
  table['augmentation'] = rng.integers(0, 2, num_models).astype(bool)
  table['batch_norm'] = True
  table['weightn_conv'], table['weightn_fc'] = fixed_weight_counts()
  return table


def synthetic_snapshots(num_models: int, n: int, seed: int = 0) -> jax.Array:
  """Random snapshot vectors float32 [num_models, 20, n], drawn on the device."""
  return jax.random.normal(jax.random.key(seed), (num_models, NUM_SNAPSHOTS, n), jnp.float32)


class _Members:
  """Some of the stacked meta-classifiers with their own state; `epoch()` trains one epoch."""

  def __init__(self, data: train.MetaData, which: slice, spec, meta_config: train.MetaConfig,
               state: dict):
    self._data, self._spec, self._config = data, spec, meta_config
    self._labels, self._values = data.labels[which], data.values[which]
    self._is_regression, self._num_classes = data.is_regression[which], data.num_classes[which]
    self._keys = train.member_keys_for(meta_config.seed, data.codes[which])
    self._seed_key = train.seed_key_for(meta_config.seed)
    self._pairs = [jnp.asarray(a) for a in data.train_pairs]
    self._state = state
    self._epoch = 0

  def epoch(self) -> jax.Array:
    """Dispatches one training epoch; returns the members' mean losses [P] (not waited for)."""
    d, c = self._data, self._config
    self._state, losses = train.train_epoch(
        self._state, jnp.int32(self._epoch), self._seed_key, self._keys, d.snapshots, d.lo, d.hi,
        self._labels, self._values, self._is_regression, self._num_classes, *self._pairs,
        spec=self._spec, learning_rate=c.learning_rate, batch_size=c.batch_size)
    self._epoch += 1
    return losses


def _widths(widths) -> str:
  return ','.join(str(w) for w in widths)


def run(config: common.BenchConfig) -> Iterator[dict]:
  """Yields one row (see the module docstring); raises ValueError when the synthetic zoo has no
  varying property (too few models) or the slice is longer than the weight vector."""
  config.validate()
  weightn_conv, weightn_fc = fixed_weight_counts()
  n = weightn_conv + weightn_fc
  if config.meta_slice_length > n:
    raise ValueError(f'meta_slice_length {config.meta_slice_length} is longer than the fixed '
                     f'architecture\'s {n} weights')
  table = synthetic_table(config.meta_num_models, config.seed)
  names = targets_lib.varying_properties(table)
  if not names:
    raise ValueError(f'meta_num_models={config.meta_num_models}: no property varies in the '
                     'synthetic zoo; use more models')
  models = np.arange(len(table))
  split = split_lib.ModelSplit(models, models[:0], models[:0])  # every model trains
  targets = targets_lib.make_targets(table, names, split.train)
  meta_config = train.MetaConfig(slice_length=config.meta_slice_length,
                                 batch_size=config.batch_size,
                                 conv_widths=tuple(config.meta_conv_widths) or None,
                                 dense_widths=tuple(config.meta_dense_widths), seed=config.seed,
                                 variant=config.meta_variant or None,
                                 bn_eval='moving' if config.meta_variant == LEGACY else 'batch')
  meta_config.validate()
  spec = train.model_spec(meta_config, targets, table)
  p, b = len(targets), config.batch_size
  row = dict(suite=SUITE, properties=p, n_models=len(table), weights_per_model=n,
             slice_length=config.meta_slice_length, batch_size=b, variant=spec.variant,
             conv_widths=_widths(spec.conv_widths), dense_widths=_widths(spec.dense_widths),
             variables_per_classifier=spec.variable_count())
  try:
    data = train.prepare(meta_config, table, synthetic_snapshots(len(table), n, config.seed),
                         split, targets)
    steps = -(-len(data.train_pairs[0]) // b)

    # Each member initialised alone (one P = 1 program); the stack is their concatenation,
    # the same state init_members would give it, without compiling a second initialiser.
    keys = train.member_keys_for(meta_config.seed, data.codes)
    singles = [train.init_members(keys[i:i + 1], spec=spec,
                                  learning_rate=meta_config.learning_rate) for i in range(p)]
    stacked = _Members(data, slice(0, p), spec, meta_config,
                       jax.tree.map(lambda *xs: jnp.concatenate(xs), *singles))
    t0 = time.perf_counter()
    jax.block_until_ready(stacked.epoch())
    first = time.perf_counter() - t0
    stacked_s = common.time_calls(stacked.epoch, config.repeats)

    timed_alone = p if config.meta_loop else 1
    alone = [_Members(data, slice(i, i + 1), spec, meta_config, singles[i])
             for i in range(timed_alone)]
    jax.block_until_ready([m.epoch() for m in alone])  # compiles the P = 1 program once
    # One after the other: each property's epochs waited for before the next property's (as
    # separate training runs would be), so that XLA cannot overlap independent programs.
    alone_s = [common.time_calls(m.epoch, config.repeats) for m in alone]
    one_s, loop_s = alone_s[0], sum(alone_s)
  except Exception as e:  # pylint: disable=broad-except
    if not common.is_out_of_memory(e):
      raise
    yield dict(row, error='out of memory', **common.device_fields())
    return

  stacked_step, one_step, loop_step = stacked_s / steps, one_s / steps, loop_s / steps
  loop = dict(loop_step_s=loop_step, loop_slice_reads_per_s=p * b / loop_step,
              stacked_over_loop=loop_step / stacked_step) if config.meta_loop else {}
  yield dict(
      row, steps_per_epoch=steps,
      one_property_step_s=one_step, stacked_step_s=stacked_step,
      one_property_slices_per_s=b / one_step,
      all_properties_slices_per_s=b / stacked_step,
      all_properties_slice_reads_per_s=p * b / stacked_step,
      cost_ratio=stacked_step / one_step, **loop,
      compile_s=max(first - stacked_s, 0.0),
      **common.device_fields())
