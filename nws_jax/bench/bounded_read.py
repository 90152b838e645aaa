"""The reader process of the release suite's bounded-memory row (`measure='release_rss'`).

  python -m nws_jax.bench.bounded_read --csv=SPLIT.csv --batches=200 --batch=64 --length=5000

Opens the release of one split CSV (`nws_jax.release.open_release`, no NaN scan), tries to
allocate the dataset's size in one numpy array (which must fail when the process runs under an
address-space limit smaller than the dataset: `limit_enforced`), then reads `batches` random
batches with `Release.read`, and prints one JSON line: dataset_bytes, limit_bytes (this
process's RLIMIT_AS soft limit, or -1 for none), limit_enforced, slices_read, seconds,
peak_rss_bytes and vm_peak_bytes (/proc/self/status VmHWM and VmPeak, None where there is none)
and jax_imported (whether reading pulled JAX in; it must not, JAX alone reserves ~1.5 GB of address
space).

It imports no JAX and nothing of nws_jax.bench that does: the release suite runs it under
RLIMIT_AS (`release.limited_command`). `draw_batch` is the random (net, snapshot, offset)
draw the suite times with, shared so that both read alike.
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time

import numpy as np

# The meta trainer's default snapshots (nws_jax.meta.slices.SliceSpec: 11-20, 1-based).
FIRST_SNAPSHOT, LAST_SNAPSHOT = 11, 20


def draw_batch(rng: np.random.Generator, lengths: np.ndarray, batch: int,
               length: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """(models, snaps (0-based), offsets) of `batch` slices of `length` weights, each uniform: a
  net, a snapshot in FIRST_SNAPSHOT..LAST_SNAPSHOT, an offset in 0..len(net) - length (part
  'all', as the meta trainer draws)."""
  lengths = np.asarray(lengths, np.int64)
  models = rng.integers(0, len(lengths), batch)
  snaps = rng.integers(FIRST_SNAPSHOT - 1, LAST_SNAPSHOT, batch)
  offsets = rng.integers(0, lengths[models] - length + 1)
  return models, snaps, offsets


def _status_bytes(field: str) -> int | None:
  """A size field of /proc/self/status ('VmHWM', 'VmPeak') in bytes, or None where there is none.
  VmHWM is the peak RSS of this process image: unlike ru_maxrss, it does not carry the RSS of the
  parent it was forked from over the exec."""
  try:
    with open('/proc/self/status') as f:
      for line in f:
        if line.startswith(field + ':'):
          return int(line.split()[1]) * 1024
  except OSError:
    pass
  return None


def main(argv: list[str] | None = None) -> None:
  parser = argparse.ArgumentParser(prog='python -m nws_jax.bench.bounded_read')
  parser.add_argument('--csv', required=True)
  parser.add_argument('--batches', type=int, default=200)
  parser.add_argument('--batch', type=int, default=64)
  parser.add_argument('--length', type=int, default=5000)
  parser.add_argument('--seed', type=int, default=0)
  args = parser.parse_args(argv)

  from nws_jax import release as release_lib  # pylint: disable=import-outside-toplevel

  release = release_lib.open_release([args.csv])
  dataset_bytes = int(release.lengths.sum()) * release.num_snapshots * release_lib.DTYPE.itemsize
  try:
    whole = np.empty(dataset_bytes, np.uint8)
    del whole
    limit_enforced = False
  except MemoryError:
    limit_enforced = True
  rng = np.random.default_rng(args.seed)
  slices = 0
  t0 = time.perf_counter()
  for _ in range(args.batches):
    out = release.read(*draw_batch(rng, release.lengths, args.batch, args.length), args.length)
    slices += out.shape[0]
  seconds = time.perf_counter() - t0
  soft, _ = resource.getrlimit(resource.RLIMIT_AS)
  print(json.dumps(dict(
      dataset_bytes=dataset_bytes,
      limit_bytes=-1 if soft == resource.RLIM_INFINITY else int(soft),
      limit_enforced=limit_enforced, slices_read=slices, seconds=seconds,
      peak_rss_bytes=_status_bytes('VmHWM'), vm_peak_bytes=_status_bytes('VmPeak'),
      jax_imported='jax' in sys.modules)), flush=True)


if __name__ == '__main__':
  main()
