"""The release benchmark suite on a tiny configuration (its rows and fields, no speed
assertions), and a reader under RLIMIT_AS reading slices of a sparse release larger than its
limit: memory follows the batch, not the dataset."""

import json
import os
import subprocess
import sys

import pytest

from nws_jax import release as release_lib
from nws_jax.bench import common
from nws_jax.bench import release as release_bench

from helpers import positive

MACHINE = ('device', 'backend', 'num_devices', 'jax', 'date')
LIMIT = 3 * 2**30


def tiny(**kwargs):
  options = dict(repeats=1, batch_size=8, release_num_models=4, release_weights=2000,
                 release_slice_length=100, release_batches=3, release_rss_num_models=4,
                 release_rss_weights=25_000_000, release_rss_batches=5)
  return common.BenchConfig(**{**options, **kwargs})



def test_release_rows(tmp_path):
  workdir = tmp_path / 'work'
  rows = list(release_bench.run(tiny(workdir=str(workdir))))
  for r in rows:
    assert r['suite'] == 'release' and all(r[k] is not None for k in MACHINE), r
    assert 'error' not in r, r
  keys = [(r['measure'], r.get('cache')) for r in rows]
  assert keys == [('release_read', 'warm'), ('release_read', 'cold'), ('release_open', 'warm'),
                  ('release_open', 'cold'), ('release_rss', None)]
  # 4 nets, two architectures in turn: 2000 and 1500 weights, 20 float64 snapshots each.
  data = 20 * 8 * (2000 + 1500 + 2000 + 1500)
  (warm, cold, open_warm, open_cold, rss) = rows
  for r in (warm, cold):
    assert r['nets'] == 4 and r['batch'] == 8 and r['slice_length'] == 100
    assert r['dataset_bytes'] == data
    positive(r, 'slices_per_s', 'bytes_per_s', 'seconds')
    assert r['bytes_per_s'] == pytest.approx(r['slices_per_s'] * 100 * 8)
    assert r['slices_per_s'] == pytest.approx(3 * 8 / r['seconds'])
  assert cold['cold_method'] == release_bench.COLD_METHOD  # Linux: posix_fadvise works
  assert cold['resident_after_drop'] is None or 0 <= cold['resident_after_drop'] <= 1
  for r in (open_warm, open_cold):
    assert r['nets'] == 4 and r['dataset_bytes'] == data
    positive(r, 'check_s_per_net', 'scan_nans_s_per_net')
  assert rss['ok'] is True and rss['limit_enforced'] is True and rss['jax_imported'] is False
  assert rss['limit_bytes'] == LIMIT and rss['dataset_bytes'] > rss['limit_bytes']
  assert rss['dataset_bytes'] == 20 * 8 * 2 * (25_000_000 + 18_750_000)
  assert rss['slices_read'] == 5 * 8 and rss['batches'] == 5
  positive(rss, 'peak_rss_bytes', 'vm_peak_bytes')
  assert rss['peak_rss_bytes'] < rss['limit_bytes'] and rss['vm_peak_bytes'] <= rss['limit_bytes']
  assert os.listdir(workdir) == []  # the scratch directory is removed


def test_release_written_is_readable(tmp_path):
  csv = release_bench.write_release(str(tmp_path), 3, 500, seed=1)
  release = release_lib.open_release([csv], scan_nans=True)
  assert release.lengths.tolist() == [500, 375, 500]
  assert release.table['weightn_conv'].tolist() == [100, 75, 100]
  assert release.table['filter_size'].tolist() == [5, 3, 5]
  vector = release_lib.read_vector(release.table['path'][1], 20, 375)
  assert release.read([1], [19], [10], 20)[0] == pytest.approx(vector[10:30].astype('float32'))


def test_sizes_are_checked():
  with pytest.raises(ValueError, match='release_slice_length 1600 is longer'):
    release_bench.check_sizes(tiny(release_slice_length=1600))
  with pytest.raises(ValueError, match='must be larger than release_rss_limit_mb'):
    release_bench.check_sizes(tiny(release_rss_weights=1_000_000))
  with pytest.raises(ValueError, match='release_batches must be at least 1'):
    release_bench.check_sizes(tiny(release_batches=0))


_READER = r'''
import json, resource, sys
import numpy as np
from nws_jax import release as release_lib
csv, dataset = sys.argv[1], int(sys.argv[2])
try:
  np.empty(dataset, np.uint8)
  loads_whole = True
except MemoryError:
  loads_whole = False
release = release_lib.open_release([csv])
rng = np.random.default_rng(0)
sums = []
for _ in range(20):
  models = rng.integers(0, len(release), 16)
  offsets = rng.integers(0, release.lengths[models] - 4000 + 1)
  out = release.read(models, rng.integers(0, 20, 16), offsets, 4000)
  sums.append(float(np.abs(out).sum()))
print(json.dumps(dict(limit=resource.getrlimit(resource.RLIMIT_AS)[0], loads_whole=loads_whole,
                      shape=out.shape, sums=sums, jax='jax' in sys.modules)))
'''


def test_reader_under_address_space_limit_reads_a_larger_sparse_release(tmp_path):
  """The dataset (sparse: 22.4 GB 'on disk', no blocks) is ~7× the limit the reader runs under,
  so it can neither load it nor map it; it reads slices all the same."""
  nets, weights = 4, 40_000_000
  csv = release_bench.write_release(str(tmp_path), nets, weights, sparse=True)
  dataset = release_bench.dataset_bytes(nets, weights)
  assert dataset > 5 * LIMIT
  used = sum(os.stat(os.path.join(d, f)).st_blocks * 512
             for d, _, names in os.walk(tmp_path) for f in names)
  assert used < 10 * 2**20  # sparse: the weight files take no disk
  command = release_bench.limited_command(LIMIT, ['-c', _READER, csv, str(dataset)])
  result = subprocess.run(command, capture_output=True, text=True, timeout=120,
                          env=release_bench._child_env())  # pylint: disable=protected-access
  assert result.returncode == 0, result.stderr
  out = json.loads(result.stdout.strip().splitlines()[-1])
  assert out['limit'] == LIMIT
  assert out['loads_whole'] is False  # the limit bites: the dataset does not fit
  assert out['shape'] == [16, 4000] and out['sums'] == [0.0] * 20 and out['jax'] is False


def test_cli_rejects_release_sizes_with_exit_2():
  result = subprocess.run([sys.executable, '-m', 'nws_jax.bench', '--suite=release',
                           '--release_slice_length=80000'], capture_output=True, text=True,
                          timeout=300)
  assert result.returncode == 2
  lines = [l for l in result.stderr.splitlines() if l.startswith('bench: error:')]
  assert len(lines) == 1 and 'release_slice_length 80000 is longer' in lines[0], result.stderr
