"""Checksums of a zoo's snapshots (issue 18, point 5): a byte flipped in Orbax's data is never read
as silently wrong weights; zoos written before the checksums still load."""

import json
import logging
import os
import re
import shutil

import numpy as np
import pytest

from nws_jax.release import convert as release_convert
from nws_jax import snapshots as snapshots_lib
from nws_jax import zoo as zoo_lib

FLIPS = 8  # positions tried in the snapshots' largest data file


def copy_zoo(source, tmp_path, name='zoo'):
  path = str(tmp_path / name)
  shutil.copytree(source, path)
  return path


def largest_file(directory):
  paths = [os.path.join(root, name) for root, _, names in os.walk(directory) for name in names]
  return max(paths, key=os.path.getsize)


def flip_byte(path, position):
  """Inverts the byte at `position` of the file `path`."""
  with open(path, 'r+b') as f:
    f.seek(position)
    byte = f.read(1)
    f.seek(position)
    f.write(bytes([byte[0] ^ 0xFF]))


def checksums_path(zoo):
  return os.path.join(zoo, zoo_lib.SNAPSHOTS_DIR, snapshots_lib.CHECKSUMS_FILE)


def test_saved_zoo_has_a_checksum_per_model(synthetic_zoo_dir):
  with open(checksums_path(synthetic_zoo_dir)) as f:
    record = json.load(f)
  zoo = zoo_lib.load_zoo(synthetic_zoo_dir)
  assert record['algorithm'] == snapshots_lib.CHECKSUM_ALGORITHM
  assert record['models'] == snapshots_lib.checksums(zoo.snapshots, zoo.export_numbers)
  assert len(set(record['models'])) == zoo.num_models


def test_intact_zoo_verifies(synthetic_zoo_dir):
  directory = os.path.join(synthetic_zoo_dir, zoo_lib.SNAPSHOTS_DIR)
  snaps, numbers = snapshots_lib.load_snapshots(directory, verify=False)
  assert snapshots_lib.verify_checksums(directory, snaps, numbers)


@pytest.mark.parametrize('flip', range(FLIPS))
def test_flipped_byte_in_snapshot_data_is_never_silent(synthetic_zoo_dir, tmp_path, flip):
  """A byte flipped in the middle half of the data file: ZooError (naming the first changed
  model when Orbax decodes wrong weights), or, for a byte Orbax does not use, the intact data."""
  intact = zoo_lib.load_zoo(synthetic_zoo_dir)
  zoo = copy_zoo(synthetic_zoo_dir, tmp_path)
  data = largest_file(os.path.join(zoo, zoo_lib.SNAPSHOTS_DIR))
  size = os.path.getsize(data)
  flip_byte(data, size // 4 + flip * (size // 2) // FLIPS)
  try:
    unverified = zoo_lib.load_zoo(zoo, verify=False)
  except zoo_lib.ZooError:
    unverified = None  # Orbax's own decode error: the same one with verification
  if unverified is not None and np.array_equal(unverified.snapshots.flat, intact.snapshots.flat):
    # A byte Orbax does not use: the verified load gives the intact weights, with no error.
    np.testing.assert_array_equal(zoo_lib.load_zoo(zoo).snapshots.flat, intact.snapshots.flat)
    return
  with pytest.raises(zoo_lib.ZooError) as error:
    zoo_lib.load_zoo(zoo)
  message = str(error.value)
  assert '\n' not in message
  if unverified is not None:
    differs = [i for i in range(len(intact.snapshots))
               if not np.array_equal(unverified.snapshots[i], intact.snapshots[i])]
    assert message.startswith(f'{zoo}: snapshots of model {differs[0]} '
                              f'(model_id {differs[0]}) do not match their checksum'), message
    assert message.endswith('the file is damaged'), message


def test_flipped_bytes_raise_zoo_error_naming_a_model(synthetic_zoo_dir, tmp_path):
  """Every flip raises ZooError, most naming a model (before the checksums, each of these loaded
  as wrong weights without an error)."""
  named = 0
  for flip in range(FLIPS):
    zoo = copy_zoo(synthetic_zoo_dir, tmp_path, f'zoo{flip}')
    data = largest_file(os.path.join(zoo, zoo_lib.SNAPSHOTS_DIR))
    size = os.path.getsize(data)
    flip_byte(data, size // 4 + flip * (size // 2) // FLIPS)
    with pytest.raises(zoo_lib.ZooError) as error:
      zoo_lib.load_zoo(zoo)
    named += bool(re.search(r'snapshots of model \d+ \(model_id \d+\) do not match',
                            str(error.value)))
  assert named >= FLIPS // 2


def test_zoo_without_checksums_loads_with_one_warning(synthetic_zoo_dir, tmp_path, caplog):
  zoo = copy_zoo(synthetic_zoo_dir, tmp_path)
  os.remove(checksums_path(zoo))
  with caplog.at_level(logging.WARNING):
    loaded = zoo_lib.load_zoo(zoo)
    again = zoo_lib.load_zoo(zoo)
  intact = zoo_lib.load_zoo(synthetic_zoo_dir)
  np.testing.assert_array_equal(loaded.snapshots.flat, intact.snapshots.flat)
  np.testing.assert_array_equal(again.export_numbers, intact.export_numbers)
  warnings = [r for r in caplog.records if snapshots_lib.CHECKSUMS_FILE in r.getMessage()]
  assert len(warnings) == 1 and 'not verified' in warnings[0].getMessage()


def test_changed_export_numbers_do_not_match(synthetic_zoo_dir, tmp_path):
  """The same weights saved with other export numbers fail the first model's checksum."""
  zoo = copy_zoo(synthetic_zoo_dir, tmp_path)
  intact = zoo_lib.load_zoo(zoo)
  directory = os.path.join(zoo, zoo_lib.SNAPSHOTS_DIR)
  with open(checksums_path(zoo)) as f:
    saved = f.read()
  shutil.rmtree(directory)
  numbers = intact.export_numbers.copy()
  numbers[0, -1] += 1
  snapshots_lib.save_snapshots(directory, intact.snapshots, numbers)
  with open(checksums_path(zoo), 'w') as f:
    f.write(saved)
  with pytest.raises(zoo_lib.ZooError, match='snapshots of model 0 .model_id 0. do not match'):
    zoo_lib.load_zoo(zoo)


@pytest.mark.parametrize('contents, match', [
    ('{"algorithm": "crc', 'checksums.json is damaged'),
    ('{"algorithm": "md4", "models": []}', 'checksums.json is damaged'),
    ('{"algorithm": "crc32", "models": ["00000000"]}', 'lists 1 models, the snapshots hold 40'),
])
def test_damaged_checksum_file_is_refused(synthetic_zoo_dir, tmp_path, contents, match):
  zoo = copy_zoo(synthetic_zoo_dir, tmp_path)
  with open(checksums_path(zoo), 'w') as f:
    f.write(contents)
  with pytest.raises(zoo_lib.ZooError, match=match):
    zoo_lib.load_zoo(zoo)


def test_chunks_are_checked_model_by_model(tmp_path):
  """ChunkWriter's checksums cover every chunk; a wrong one names its model across chunks."""
  rng = np.random.default_rng(0)
  parts = [snapshots_lib.Snapshots.from_list([rng.normal(size=(20, n)) for n in lengths])
           for lengths in ((5, 7), (3,), (6, 2, 4))]
  directory = str(tmp_path / 'snapshots')
  writer = snapshots_lib.ChunkWriter(directory)
  for part in parts:
    writer.append(part, np.tile(np.arange(1, 21), (len(part), 1)))
  writer.close()
  snaps, numbers = snapshots_lib.load_snapshots(directory)
  assert len(snaps) == 6 and list(snaps.lengths) == [5, 7, 3, 6, 2, 4]
  record = snapshots_lib.read_checksums(directory)
  assert record['models'] == snapshots_lib.checksums(snaps, numbers)
  record['models'][4] = '0' * 8
  snapshots_lib.write_checksums(directory, record['models'])
  with pytest.raises(snapshots_lib.ChecksumError, match='snapshots of model 4 do not match'):
    snapshots_lib.load_snapshots(directory)
  assert len(snapshots_lib.load_snapshots(directory, verify=False)[0]) == 6


def test_sha256_checksums_verify(tmp_path):
  snaps = snapshots_lib.Snapshots.from_array(np.ones((3, 20, 4), np.float32))
  numbers = np.tile(np.arange(1, 21), (3, 1))
  directory = str(tmp_path / 'snapshots')
  snapshots_lib.save_snapshots(directory, snaps, numbers)
  digests = snapshots_lib.checksums(snaps, numbers, 'sha256')
  assert all(len(d) == 64 for d in digests)
  snapshots_lib.write_checksums(directory, digests, 'sha256')
  assert snapshots_lib.verify_checksums(directory, *snapshots_lib.load_snapshots(directory))


def test_imported_zoo_has_checksums(synthetic_zoo_dir, tmp_path):
  """import_nws writes checksums too, over all its chunks."""
  release = str(tmp_path / 'release')
  release_convert.export_zoo(synthetic_zoo_dir, release)
  out = str(tmp_path / 'imported')
  summary = release_convert.import_release(os.path.join(release, 'train.csv'), out,
                                           chunk_mb=0.05)
  assert summary['chunks'] > 1
  zoo = zoo_lib.load_zoo(out)
  directory = os.path.join(out, zoo_lib.SNAPSHOTS_DIR)
  assert snapshots_lib.verify_checksums(directory, zoo.snapshots, zoo.export_numbers)
  assert len(snapshots_lib.read_checksums(directory)['models']) == zoo.num_models
