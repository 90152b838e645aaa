"""Release suite: reading the published NWS release format (`nws_jax.release`) from disk.

A release is written into a fresh directory inside `config.workdir` (or a temporary directory
when it is None), removed at the end: `config.release_num_models` nets of two architectures in
turn (mixed lengths: `release_weights` weights, then 3/4 of that), random float64 weights,
through `release.write_net` and `release.write_split_csv` (zero errors and stat). A batch is
`config.batch_size` slices of `config.release_slice_length` weights at random (net, snapshot
11-20, offset), drawn as the meta trainer draws them (`bounded_read.draw_batch`), read with
`Release.read` (one `os.pread` per slice, a thread pool). Rows (`suite='release'`, a
`measure`, `common.device_fields()`); seconds `*_s`, bytes `*_bytes`, rates `*_per_s`;
`dataset_bytes` = the release's float64 weight bytes, `nets`, `batch`, `slice_length`:

- `measure='release_read'`, `cache='warm'`: every weight file read once beforehand, so all of it
  sits in the page cache; `config.repeats` rounds of `release_batches` batches (after one
  untimed batch). `slices_per_s`, `bytes_per_s` (float64 bytes of the slices read per second).
- `measure='release_read'`, `cache='cold'`: the same number of batches, each timed alone right
  after the release's pages are dropped from the page cache: `os.sync()` once, then
  `os.posix_fadvise(fd, 0, 0, POSIX_FADV_DONTNEED)` on every weight file before each batch.
  `cold_method` says how ('posix_fadvise_dontneed', or 'unavailable (...)': then the row was
  read from a warm cache); `resident_after_drop` the fraction of the weight files' pages still
  in the page cache right after a drop (mincore; None where it cannot be asked). A cold read
  is one the disk serves (its readahead included); what that disk is (local, network, a VM's
  virtual disk backed by the host's cache) decides the figure.
- `measure='release_open'`, `cache='warm'` and `'cold'` (pages dropped before each open):
  `check_s_per_net`: `open_release` without `scan_nans` (the CSV and each net's files' sizes),
  per net; `scan_nans_s_per_net`: with `scan_nans` (every weight file read once in full).
  Warm: means of `config.repeats` opens; cold: one open each.
- `measure='release_rss'`: a second release of `release_rss_num_models` nets of
  `release_rss_weights` (and 3/4 of that) weights whose weight files are SPARSE (`os.truncate`
  to their size: no disk used, reads give zeros), larger in all than `release_rss_limit_mb`.
  A child process (`python -m nws_jax.bench.bounded_read`, which imports no JAX) runs under
  RLIMIT_AS = that limit, set before the child's interpreter starts (`limited_command`), and
  reads `release_rss_batches` batches. `limit_bytes`, `ok` (the child exited 0 having read them
  all), `limit_enforced` (the child failed to allocate dataset_bytes in one numpy array: the
  limit bites), `peak_rss_bytes` and `vm_peak_bytes` (the child's peak resident and virtual
  sizes, VmHWM and VmPeak: ru_maxrss would carry over the RSS of this process, which the
  child is forked from), `slices_read`, `jax_imported`, and `error` (the child's last stderr
  line) when not ok.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import json
import mmap
import os
import shutil
import subprocess
import sys
import time
from typing import Iterator, Sequence

import numpy as np
import pandas as pd

from nws_jax import release as release_lib
from nws_jax import space
from nws_jax.bench import bounded_read
from nws_jax.bench import common

SUITE = 'release'
BYTES_PER_WEIGHT = release_lib.DTYPE.itemsize
CHILD_TIMEOUT_S = 600
COLD_METHOD = 'posix_fadvise_dontneed'

# The two architectures of the mixed release: (property overrides, share of release_weights).
ARCHITECTURES = (
    (dict(space.FIXED_ARCHITECTURE), 1.0),
    (dict(filter_size=3, depth_conv=4, depth_fc=3, width_conv=4, width_fc=64), 0.75),
)

# Starts the interpreter named in argv[2:] under RLIMIT_AS = argv[1] bytes (exec keeps the limit).
_LAUNCH = ('import os, resource, sys; n = int(sys.argv[1]); '
           'resource.setrlimit(resource.RLIMIT_AS, (n, n)); '
           'os.execv(sys.executable, [sys.executable] + sys.argv[2:])')


def net_lengths(num_nets: int, weights: int) -> np.ndarray:
  """int64 [num_nets]: weights per net, the architectures in turn."""
  return np.array([max(1, int(weights * ARCHITECTURES[i % len(ARCHITECTURES)][1]))
                   for i in range(num_nets)], np.int64)


def dataset_bytes(num_nets: int, weights: int) -> int:
  return int(net_lengths(num_nets, weights).sum()) * release_lib.NUM_SNAPSHOTS * BYTES_PER_WEIGHT


def write_release(directory: str, num_nets: int, weights: int, seed: int = 0,
                  sparse: bool = False) -> str:
  """Writes a release of `num_nets` nets into `directory` (nets/0000 …, split.csv) and returns
  the split CSV's path. Net i has net_lengths(...)[i] weights (a fifth conv, the rest dense) of
  architecture i % 2; its weights are standard normal, or with `sparse` sparse files of zeros."""
  rng = np.random.default_rng(seed)
  rows = []
  for i, n in enumerate(net_lengths(num_nets, weights)):
    n = int(n)
    properties = space.sample_model(seed, i, ['mnist']).as_row()
    properties.update(ARCHITECTURES[i % len(ARCHITECTURES)][0])
    relative = os.path.join('nets', f'{i:04d}')
    folder = os.path.join(directory, relative)
    errors = np.zeros((1, len(release_lib.ERROR_COLUMNS)))
    stat = np.zeros(len(release_lib.STAT_FIELDS))
    if sparse:
      release_lib.write_net(folder, np.zeros((release_lib.NUM_SNAPSHOTS, 0)), properties, errors,
                            stat)
      for number in range(1, release_lib.NUM_SNAPSHOTS + 1):
        os.truncate(release_lib.weight_file(folder, number), n * BYTES_PER_WEIGHT)
    else:
      vectors = rng.standard_normal((release_lib.NUM_SNAPSHOTS, n))
      release_lib.write_net(folder, vectors, properties, errors, stat)
    rows.append(dict(properties, weightn_conv=n // 5, weightn_fc=n - n // 5, path=relative))
  csv = os.path.join(directory, 'split.csv')
  release_lib.write_split_csv(pd.DataFrame(rows), csv)
  return csv


def weight_files(release: release_lib.Release) -> list[str]:
  return [release_lib.weight_file(folder, number) for folder in release.table['path']
          for number in range(1, release.num_snapshots + 1)]


# --- the page cache -----------------------------------------------------------------------------

def drop_cache(paths: Sequence[str]) -> None:
  """Asks the kernel to drop the files' pages from the page cache (clean pages only: os.sync()
  first). Raises OSError (or AttributeError without posix_fadvise) when it cannot."""
  for path in paths:
    fd = os.open(path, os.O_RDONLY)
    try:
      os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
      os.close(fd)


def cold_method(paths: Sequence[str]) -> str:
  """COLD_METHOD when the files' pages can be dropped (and drops them), else why not."""
  try:
    os.sync()
    drop_cache(paths)
  except (OSError, AttributeError) as e:
    return f'unavailable ({type(e).__name__}: {e})'
  return COLD_METHOD


def warm_cache(paths: Sequence[str]) -> None:
  """Reads every file once in full, so that its pages sit in the page cache."""
  for path in paths:
    with open(path, 'rb', buffering=0) as f:
      while f.read(1 << 24):
        pass


def resident_fraction(paths: Sequence[str]) -> float | None:
  """Fraction of the files' pages in the page cache (mincore), or None where it cannot be asked."""
  try:
    libc = ctypes.CDLL(ctypes.util.find_library('c'), use_errno=True)
    libc.mmap.restype = ctypes.c_void_p
    libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int,
                          ctypes.c_int, ctypes.c_long]
    libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
    libc.mincore.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_void_p]
  except (OSError, AttributeError, TypeError):
    return None
  resident = total = 0
  for path in paths:
    fd = os.open(path, os.O_RDONLY)
    try:
      size = os.fstat(fd).st_size
      if size == 0:
        continue
      addr = libc.mmap(None, size, mmap.PROT_READ, mmap.MAP_SHARED, fd, 0)
      if addr in (None, ctypes.c_void_p(-1).value):
        return None
      try:
        pages = (size + mmap.PAGESIZE - 1) // mmap.PAGESIZE
        vec = (ctypes.c_ubyte * pages)()
        if libc.mincore(ctypes.c_void_p(addr), size, vec) != 0:
          return None
        resident += int((np.frombuffer(vec, np.uint8) & 1).sum())
        total += pages
      finally:
        libc.munmap(ctypes.c_void_p(addr), size)
    finally:
      os.close(fd)
  return resident / total if total else None


# --- the bounded-memory child ------------------------------------------------------------------

def limited_command(limit_bytes: int, argv: Sequence[str]) -> list[str]:
  """The command line that runs `python argv...` under RLIMIT_AS = limit_bytes (soft and hard),
  set before that interpreter starts: a launcher sets the limit and execs it (no preexec_fn,
  which is unsafe in a process with threads, as JAX's)."""
  return [sys.executable, '-c', _LAUNCH, str(int(limit_bytes)), *argv]


def _child_env() -> dict:
  import nws_jax  # pylint: disable=import-outside-toplevel
  root = os.path.dirname(os.path.dirname(os.path.abspath(nws_jax.__file__)))
  env = dict(os.environ)
  env['PYTHONPATH'] = os.pathsep.join([root] + [p for p in [env.get('PYTHONPATH')] if p])
  return env


def run_bounded_read(csv: str, limit_bytes: int, batches: int, batch: int, length: int,
                     seed: int = 0, timeout_s: float = CHILD_TIMEOUT_S) -> dict:
  """Runs `python -m nws_jax.bench.bounded_read` on `csv` under RLIMIT_AS = limit_bytes; returns
  its JSON line's fields plus ok (exit 0, every slice read), returncode and error (the last
  stderr line, when not ok)."""
  command = limited_command(limit_bytes, [
      '-m', 'nws_jax.bench.bounded_read', f'--csv={csv}', f'--batches={batches}',
      f'--batch={batch}', f'--length={length}', f'--seed={seed}'])
  try:
    child = subprocess.run(command, capture_output=True, text=True, env=_child_env(),
                           timeout=timeout_s, check=False)
    returncode, stdout, stderr = child.returncode, child.stdout, child.stderr
  except subprocess.TimeoutExpired as e:
    returncode, stdout, stderr = None, '', f'timed out after {e.timeout} s'
  lines = [l for l in stdout.splitlines() if l.strip()]
  result = {}
  if lines:
    try:
      result = json.loads(lines[-1])
    except json.JSONDecodeError:
      result = {}
  ok = returncode == 0 and result.get('slices_read') == batches * batch
  result.update(ok=ok, returncode=returncode)
  if not ok:
    tail = [l for l in stderr.splitlines() if l.strip()]
    result['error'] = tail[-1] if tail else f'exit status {returncode}'
  return result


# --- the rows -----------------------------------------------------------------------------------

def _read_rows(config: common.BenchConfig, csv: str) -> Iterator[dict]:
  release = release_lib.open_release([csv])
  paths = weight_files(release)
  length, batch, batches = config.release_slice_length, config.batch_size, config.release_batches
  base = dict(suite=SUITE, measure='release_read', nets=len(release), batch=batch,
              slice_length=length,
              dataset_bytes=int(release.lengths.sum()) * release.num_snapshots * BYTES_PER_WEIGHT)
  rng = np.random.default_rng(config.seed)
  draws = [bounded_read.draw_batch(rng, release.lengths, batch, length)
           for _ in range(config.repeats * batches)]

  def rates(seconds: float) -> dict:
    slices_per_s = len(draws) * batch / seconds
    return dict(slices_per_s=slices_per_s,
                bytes_per_s=slices_per_s * length * BYTES_PER_WEIGHT, seconds=seconds)

  warm_cache(paths)
  release.read(*bounded_read.draw_batch(rng, release.lengths, batch, length), length)  # untimed
  t0 = time.perf_counter()
  for draw in draws:
    release.read(*draw, length)
  yield dict(base, cache='warm', **rates(time.perf_counter() - t0), **common.device_fields())

  method = cold_method(paths)
  resident = resident_fraction(paths) if method == COLD_METHOD else None
  seconds = 0.0
  for draw in draws:
    if method == COLD_METHOD:
      drop_cache(paths)
    t0 = time.perf_counter()
    release.read(*draw, length)
    seconds += time.perf_counter() - t0
  yield dict(base, cache='cold', cold_method=method, resident_after_drop=resident,
             **rates(seconds), **common.device_fields())


def _open_rows(config: common.BenchConfig, csv: str) -> Iterator[dict]:
  release = release_lib.open_release([csv])
  paths, nets = weight_files(release), len(release)
  base = dict(suite=SUITE, measure='release_open', nets=nets,
              dataset_bytes=int(release.lengths.sum()) * release.num_snapshots * BYTES_PER_WEIGHT)

  def seconds(scan_nans: bool, repeats: int, cold: bool) -> float:
    total = 0.0
    for _ in range(repeats):
      if cold:
        drop_cache(paths)
      t0 = time.perf_counter()
      release_lib.open_release([csv], scan_nans=scan_nans)
      total += time.perf_counter() - t0
    return total / repeats

  warm_cache(paths)
  yield dict(base, cache='warm', check_s_per_net=seconds(False, config.repeats, False) / nets,
             scan_nans_s_per_net=seconds(True, config.repeats, False) / nets,
             **common.device_fields())
  method = cold_method(paths)
  if method == COLD_METHOD:
    yield dict(base, cache='cold', cold_method=method,
               check_s_per_net=seconds(False, 1, True) / nets,
               scan_nans_s_per_net=seconds(True, 1, True) / nets, **common.device_fields())


def _rss_row(config: common.BenchConfig, directory: str) -> dict:
  nets, weights = config.release_rss_num_models, config.release_rss_weights
  limit = config.release_rss_limit_mb * 2**20
  csv = write_release(directory, nets, weights, config.seed, sparse=True)
  child = run_bounded_read(csv, limit, config.release_rss_batches, config.batch_size,
                           config.release_slice_length, config.seed)
  row = dict(suite=SUITE, measure='release_rss', nets=nets, batch=config.batch_size,
             slice_length=config.release_slice_length, batches=config.release_rss_batches,
             dataset_bytes=dataset_bytes(nets, weights), limit_bytes=limit, ok=child['ok'],
             limit_enforced=child.get('limit_enforced'), peak_rss_bytes=child.get('peak_rss_bytes'),
             vm_peak_bytes=child.get('vm_peak_bytes'), slices_read=child.get('slices_read'),
             jax_imported=child.get('jax_imported'))
  if 'error' in child:
    row['error'] = child['error']
  return dict(row, **common.device_fields())


def check_sizes(config: common.BenchConfig) -> None:
  """Raises ValueError (one line) for release sizes the suite cannot run with."""
  config.validate()
  length = config.release_slice_length
  for name in ('release_weights', 'release_rss_weights'):
    shortest = int(net_lengths(2, getattr(config, name)).min())
    if length > shortest:
      raise ValueError(f'release_slice_length {length} is longer than the shorter architecture '
                       f'of {name}={getattr(config, name)} ({shortest} weights)')
  data, limit = (dataset_bytes(config.release_rss_num_models, config.release_rss_weights),
                 config.release_rss_limit_mb * 2**20)
  if data <= limit:
    raise ValueError(f'the sparse release ({data} bytes) must be larger than '
                     f'release_rss_limit_mb ({limit} bytes), or the limit proves nothing')


def run(config: common.BenchConfig) -> Iterator[dict]:
  """Yields the rows of the module docstring: release_read warm and cold, release_open warm
  and cold, release_rss."""
  check_sizes(config)
  with common.scratch_directory(config.workdir, SUITE) as directory:
    dense = os.path.join(directory, 'dense')
    os.makedirs(dense)
    csv = write_release(dense, config.release_num_models, config.release_weights, config.seed)
    yield from _read_rows(config, csv)
    yield from _open_rows(config, csv)
    shutil.rmtree(dense, ignore_errors=True)
    sparse = os.path.join(directory, 'sparse')
    os.makedirs(sparse)
    yield _rss_row(config, sparse)

