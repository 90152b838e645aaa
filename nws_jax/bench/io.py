"""IO suite: snapshot saving (and how much it stalls training) and slice-read throughput.

Sizes: a model's weights are the fixed architecture's n float32 weights (PROTOCOL §1, nws_fixed);
a per-epoch export of N models is [N, n] (N from `config.sizes()`, at most MAX_SAVE_MODELS);
the snapshot array of the slice reads is [M, 20, n] with M = `config.meta_num_models`. Files go
to a fresh directory inside `config.workdir` (or a temporary directory when it is None), removed
at the end. Timings are means of `config.repeats` calls after an untimed one. Rows
(`suite='io'`, a `measure`, `common.device_fields()`); seconds `*_s`, bytes `bytes`, rates
`*_per_s`:

- `measure='save'`, per N: `snapshots.ExportWriter.save` of an [N, n] device array, as
  training saves each epoch's export. `save_call_s`: the time the caller is blocked in `save()`
  (the device-to-host copy and Orbax's bookkeeping; the write itself is asynchronous);
  `save_total_s`: from the call until `wait()` returns (the data is on disk); `save_bytes_per_s`
  = bytes / save_total_s.
- `measure='training_stall'`, per N: a jitted compute loop (float32 [512, 512] matmuls in a
  `fori_loop`, sized to last about as long as a save, at least STALL_MIN_COMPUTE_S) standing in
  for a training call, timed alone (`compute_s`) and right after a `save()` of the export,
  from the `save()` call until the loop is done (`compute_with_save_s`), as the training loop
  does it (export, then the next epoch). `training_stall_fraction` = compute_with_save_s /
  compute_s − 1: the share of training time lost to saving (can be slightly negative: noise).
- `measure='device_slices'`: `slices.random_slices` of `meta_slice_length` weights, batch_size
  per step at random (model, snapshot, offset), gathered from the [M, 20, n] array on the device
  in one jitted `fori_loop` of SLICE_READ_STEPS steps (each slice summed, so it is read);
  `slices_per_s`, `bytes_per_s` (slice bytes gathered per second).
- `measure='disk_load'`: the [M, 20, n] snapshots written with `snapshots.save_snapshots`
  (`save_s`, synchronous, with their checksums) and read back with `snapshots.load_snapshots`
  (`load_s`, checksums verified, as `load_zoo` reads; `bytes_per_s` = bytes / load_s), and
  without verifying (`load_unverified_s`); `verify_s`: `snapshots.verify_checksums` alone on the
  loaded snapshots, `checksum_bytes_per_s` = bytes / verify_s. The file system's cache is not
  dropped: right after the write the read is likely served from memory, so this is Orbax's
  restore path more than the disk.

A size that runs out of device memory gives a row with `error='out of memory'`.
"""

from __future__ import annotations

import functools
import math
import os
import shutil
import time
from typing import Callable, Iterator

import jax
import jax.numpy as jnp
import numpy as np

from nws_jax import snapshots as snapshots_lib
from nws_jax.bench import common
from nws_jax.bench import meta as meta_bench
from nws_jax.meta import slices as slices_lib

SUITE = 'io'
MAX_SAVE_MODELS = 1024       # exports of more models are not measured (≈ 380 MB at n = 92,868)
SLICE_READ_STEPS = 256       # steps of batch_size slices per timed device call
STALL_MATMUL = 512           # side of the compute loop's square matmuls
STALL_MIN_COMPUTE_S = 0.1    # the compute loop lasts at least this long
STALL_MAX_ITERS = 1_000_000
BYTES_PER_WEIGHT = 4


def scratch_directory(workdir: str | None):
  """A fresh directory inside `workdir`, or a temporary one when None; removed on exit."""
  return common.scratch_directory(workdir, SUITE)


def save_sizes(config: common.BenchConfig) -> tuple[int, ...]:
  """The export sizes N measured: config.sizes() capped at MAX_SAVE_MODELS, each once."""
  return tuple(dict.fromkeys(min(n, MAX_SAVE_MODELS) for n in config.sizes()))


@jax.jit
def _compute(x: jax.Array, iters: jax.Array) -> jax.Array:
  """`iters` steps of x <- tanh(x @ x) / side: a stand-in for a training call."""
  scale = 1.0 / x.shape[0]
  return jax.lax.fori_loop(0, iters, lambda i, y: jnp.tanh(y @ y) * scale + x, x)


@functools.partial(jax.jit, static_argnames=('length', 'batch', 'steps'))
def _read_slices(key: jax.Array, snapshots: jax.Array, lo: jax.Array, hi: jax.Array, *,
                 length: int, batch: int, steps: int) -> jax.Array:
  """`steps` batches of `batch` random slices from snapshots [M, S, n]; returns their sum
  [length] (so that every gathered weight is read)."""
  num_models, num_snaps = snapshots.shape[:2]

  def body(i, total):
    k_model, k_snap, k_offset = jax.random.split(jax.random.fold_in(key, i), 3)
    models = jax.random.randint(k_model, (batch,), 0, num_models)
    snaps = jax.random.randint(k_snap, (batch,), 0, num_snaps)
    batch_slices = slices_lib.random_slices(k_offset, snapshots, models, snaps, lo, hi, length)
    return total + batch_slices.sum(axis=0)

  return jax.lax.fori_loop(0, steps, body, jnp.zeros((length,), jnp.float32))


def _mean_wall(fn: Callable[[], object], repeats: int) -> float:
  """Mean wall seconds of `fn()` (host work, nothing to wait for on the device)."""
  t0 = time.perf_counter()
  for _ in range(repeats):
    fn()
  return (time.perf_counter() - t0) / repeats


def _save_rows(config: common.BenchConfig, directory: str, n: int) -> Iterator[dict]:
  repeats = config.repeats
  x = jax.random.normal(jax.random.key(config.seed + 1), (STALL_MATMUL, STALL_MATMUL))
  for size in save_sizes(config):
    base = dict(suite=SUITE, n_models=size, weights_per_model=n,
                bytes=size * n * BYTES_PER_WEIGHT)
    writer = snapshots_lib.ExportWriter(os.path.join(directory, f'exports_{size}'))
    measure = 'save'
    try:
      weights = jax.random.normal(jax.random.key(config.seed), (size, n), jnp.float32)
      jax.block_until_ready(weights)
      writer.save(0, weights)   # untimed: Orbax's first save sets up its directory and threads
      writer.wait()
      call, total = [], []
      for step in range(1, repeats + 1):
        t0 = time.perf_counter()
        writer.save(step, weights)
        t1 = time.perf_counter()
        writer.wait()
        call.append(t1 - t0)
        total.append(time.perf_counter() - t0)
        writer.delete_after(0)
      save_call_s, save_total_s = float(np.mean(call)), float(np.mean(total))
      yield dict(base, measure='save', save_call_s=save_call_s, save_total_s=save_total_s,
                 save_bytes_per_s=base['bytes'] / save_total_s, **common.device_fields())
      measure = 'training_stall'

      # The compute loop, sized to last about as long as a save (iters is traced: one compile).
      jax.block_until_ready(_compute(x, jnp.int32(1)))
      probe = 4
      per_iter = common.time_calls(lambda: _compute(x, jnp.int32(probe)), 1) / probe
      iters = int(min(max(math.ceil(max(save_total_s, STALL_MIN_COMPUTE_S) / per_iter), 1),
                      STALL_MAX_ITERS))
      iters = jnp.int32(iters)
      compute_s = common.time_calls(lambda: _compute(x, iters), repeats)
      with_save = []
      for step in range(1, repeats + 1):
        t0 = time.perf_counter()
        writer.save(step, weights)
        jax.block_until_ready(_compute(x, iters))
        with_save.append(time.perf_counter() - t0)
        writer.wait()
        writer.delete_after(0)
      compute_with_save_s = float(np.mean(with_save))
      yield dict(base, measure='training_stall', compute_s=compute_s,
                 compute_with_save_s=compute_with_save_s,
                 training_stall_fraction=compute_with_save_s / compute_s - 1.0,
                 **common.device_fields())
    except Exception as e:  # pylint: disable=broad-except
      if not common.is_out_of_memory(e):
        raise
      yield dict(base, measure=measure, error='out of memory', **common.device_fields())
    finally:
      writer.close()
      shutil.rmtree(os.path.join(directory, f'exports_{size}'), ignore_errors=True)


def _slice_rows(config: common.BenchConfig, directory: str, n: int) -> Iterator[dict]:
  m, length, batch = config.meta_num_models, config.meta_slice_length, config.batch_size
  total_bytes = m * meta_bench.NUM_SNAPSHOTS * n * BYTES_PER_WEIGHT
  base = dict(suite=SUITE, n_models=m, weights_per_model=n)
  try:
    snaps = meta_bench.synthetic_snapshots(m, n, config.seed)
    lo, hi = jnp.zeros((m,), jnp.int32), jnp.full((m,), n, jnp.int32)
    read = functools.partial(_read_slices, snapshots=snaps, lo=lo, hi=hi, length=length,
                             batch=batch, steps=SLICE_READ_STEPS)
    calls = [0]

    def call():
      calls[0] += 1
      return read(jax.random.key(calls[0]))

    jax.block_until_ready(call())
    seconds = common.time_calls(call, config.repeats)
    slices_per_s = SLICE_READ_STEPS * batch / seconds
    yield dict(base, measure='device_slices', slice_length=length, batch_size=batch,
               slices_per_s=slices_per_s, bytes_per_s=slices_per_s * length * BYTES_PER_WEIGHT,
               **common.device_fields())
    host = np.asarray(snaps)
  except Exception as e:  # pylint: disable=broad-except
    if not common.is_out_of_memory(e):
      raise
    yield dict(base, measure='device_slices', error='out of memory', **common.device_fields())
    return
  del snaps
  path = os.path.join(directory, 'snapshots')
  numbers = np.tile(np.arange(1, meta_bench.NUM_SNAPSHOTS + 1, dtype=np.int32), (m, 1))
  t0 = time.perf_counter()
  snapshots_lib.save_snapshots(path, host, numbers)
  save_s = time.perf_counter() - t0
  del host
  loaded = snapshots_lib.load_snapshots(path)  # untimed: Orbax's first restore
  load_s = _mean_wall(lambda: snapshots_lib.load_snapshots(path), config.repeats)
  load_unverified_s = _mean_wall(lambda: snapshots_lib.load_snapshots(path, verify=False),
                                 config.repeats)
  verify_s = _mean_wall(lambda: snapshots_lib.verify_checksums(path, *loaded), config.repeats)
  shutil.rmtree(path, ignore_errors=True)
  yield dict(base, measure='disk_load', bytes=total_bytes, save_s=save_s, load_s=load_s,
             bytes_per_s=total_bytes / load_s, load_unverified_s=load_unverified_s,
             verify_s=verify_s, checksum_bytes_per_s=total_bytes / verify_s,
             **common.device_fields())


def run(config: common.BenchConfig) -> Iterator[dict]:
  """Yields the rows of the module docstring: per export size a 'save' and a
  'training_stall' row, then 'device_slices' and 'disk_load'."""
  config.validate()
  weightn_conv, weightn_fc = meta_bench.fixed_weight_counts()
  n = weightn_conv + weightn_fc
  if config.meta_slice_length > n:
    raise ValueError(f'meta_slice_length {config.meta_slice_length} is longer than the fixed '
                     f'architecture\'s {n} weights')
  with scratch_directory(config.workdir) as directory:
    yield from _save_rows(config, directory, n)
    yield from _slice_rows(config, directory, n)
