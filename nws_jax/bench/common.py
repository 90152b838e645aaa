"""What every benchmark suite shares: its options, the device description, timing.

A suite is a module with `run(config: BenchConfig) -> Iterator[dict]`: one dict (a row of the
report, a JSON line) per measurement, each carrying `suite` and the `device_fields()`.
Timings exclude compilation (each program runs once before it is timed) unless a field says
`compile_s`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import os
import shutil
import tempfile
import time
from typing import Callable, Iterator

import jax

CPU_NUM_MODELS = (1, 8, 32)
ACCELERATOR_NUM_MODELS = (1, 8, 32, 128, 256, 1024)


@dataclasses.dataclass(frozen=True)
class BenchConfig:
  """num_models: zoo sizes N to measure (None: CPU_NUM_MODELS on a CPU, else
  ACCELERATOR_NUM_MODELS); batch_size: images per model-step; steps: training steps per timed
  call; repeats: timed calls (mean); loop_models: models timed one by one for the per-model loop
  (its rate is per model, so it extrapolates); conv_impl: 'auto', 'im2col' or 'lax'; bn_eval:
  the zoo's evaluation reading ('original' adds an evaluation pass to every step);
  meta_*: the meta suite's synthetic zoo, slice length and widths (conv widths (): the
  variant's own), its meta-classifier variant ('': the study's for the slice length;
  'legacy_6layer': the pre-issue network) and whether every property is also timed alone
  (meta_loop; else the first only); release_*: the release suite's sizes (nets,
  weights per net of the longer architecture, slice length, timed batches per round; and of its
  sparse release read under an address-space limit of release_rss_limit_mb MiB); workdir: where
  the io and release suites write (None: a temporary directory); packing_*: the packing suite's
  random zoo (models, training examples per dataset, models timed exact and one at a time, and
  whether to count programs and arithmetic only)."""
  num_models: tuple[int, ...] | None = None
  batch_size: int = 64
  steps: int = 16
  repeats: int = 2
  loop_models: int = 4
  conv_impl: str = 'auto'
  bn_eval: str = 'original'
  meta_num_models: int = 48
  meta_slice_length: int = 500
  meta_conv_widths: tuple[int, ...] = (8, 16, 32, 32, 32, 32)
  meta_dense_widths: tuple[int, ...] = (256, 64)
  meta_variant: str = ''
  meta_loop: bool = True
  release_num_models: int = 64
  release_weights: int = 100_000
  release_slice_length: int = 5000
  release_batches: int = 50
  release_rss_num_models: int = 40
  release_rss_weights: int = 1_000_000
  release_rss_limit_mb: int = 3072
  release_rss_batches: int = 200
  workdir: str | None = None
  seed: int = 0
  packing_num_models: int = 256
  packing_num_train: int = 320
  packing_loop_models: int = 8
  packing_plan_only: bool = False

  def sizes(self) -> tuple[int, ...]:
    if self.num_models:
      return tuple(self.num_models)
    return CPU_NUM_MODELS if jax.default_backend() == 'cpu' else ACCELERATOR_NUM_MODELS

  def validate(self) -> None:
    """Raises ValueError (one line) for options no suite can run with."""
    for name in ('batch_size', 'steps', 'repeats', 'loop_models', 'meta_num_models',
                 'meta_slice_length', 'release_num_models', 'release_weights',
                 'release_slice_length', 'release_batches', 'release_rss_num_models',
                 'release_rss_weights', 'release_rss_limit_mb', 'release_rss_batches',
                 'packing_num_models', 'packing_loop_models'):
      if getattr(self, name) < 1:
        raise ValueError(f'{name} must be at least 1, got {getattr(self, name)}')
    if self.num_models is not None and min(self.num_models, default=1) < 1:
      raise ValueError(f'num_models must be positive, got {list(self.num_models)}')
    if self.packing_num_train < 10:
      raise ValueError(f'packing_num_train must be at least 10, got {self.packing_num_train}')
    if self.conv_impl not in ('auto', 'im2col', 'lax'):
      raise ValueError(f'unknown conv_impl {self.conv_impl!r}')


@contextlib.contextmanager
def scratch_directory(workdir: str | None, suite: str) -> Iterator[str]:
  """A fresh directory inside `workdir` (created if needed), or a temporary one when None;
  removed with everything in it on exit."""
  if workdir is None:
    path = tempfile.mkdtemp(prefix=f'nws_bench_{suite}_')
  else:
    os.makedirs(workdir, exist_ok=True)
    path = tempfile.mkdtemp(prefix=f'bench_{suite}_', dir=workdir)
  try:
    yield path
  finally:
    shutil.rmtree(path, ignore_errors=True)


def device_fields() -> dict:
  """Which machine and software measured a row."""
  device = jax.devices()[0]
  return dict(device=device.device_kind, backend=jax.default_backend(),
              num_devices=jax.device_count(), jax=jax.__version__,
              date=datetime.date.today().isoformat())


def time_calls(fn: Callable[[], object], repeats: int) -> float:
  """Mean wall seconds of `fn()` over `repeats` calls, each waited for on the device; call it
  once yourself first if its compile must be excluded."""
  t0 = time.perf_counter()
  for _ in range(repeats):
    jax.block_until_ready(fn())
  return (time.perf_counter() - t0) / repeats


def is_out_of_memory(error: BaseException) -> bool:
  """Whether `error` is XLA's out-of-memory (a suite then reports the size as too large)."""
  text = str(error)
  return 'RESOURCE_EXHAUSTED' in text or 'Out of memory' in text or 'out of memory' in text
