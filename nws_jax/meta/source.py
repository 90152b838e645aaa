"""Where a meta-classifier's weights come from: a zoo of ours held on the device, or the published
release read from disk slice by slice (PROTOCOL §4).

A `WeightSource` is a table (a row per net: the 13 properties, weightn_conv, weightn_fc) and a
reader of its snapshots, ragged (net i's vectors have n_i = weightn_conv + weightn_fc weights):
`snapshots.Snapshots` for a zoo, `release.Release` for the release. Both readers answer
`read(models, snaps, offsets, length) -> float32 [N, length]` on the host, `vectors(models,
snaps)`, `lengths` and `num_snapshots`.

A zoo is trained on from device memory: `device_layout` puts its snapshots there once, and the
jitted epoch gathers its slices on the device. The release never is: each step's slices are read
from disk with one positioned read each, so memory follows the batch, not the dataset.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd

from nws_jax import release as release_lib
from nws_jax import snapshots as snapshots_lib
from nws_jax import space
from nws_jax import zoo as zoo_lib

_INT32_LIMIT = 2 ** 31 - 1


@jax.tree_util.register_dataclass
@dataclasses.dataclass
class DeviceLayout:
  """Snapshots on the device as a 2-D array `data` [rows, width], with per net int32 [models]
  `row_base`, `row_step`, `col_base`, `col_step`: snapshot s of net m starts at row
  row_base[m] + s·row_step[m], column col_base[m] + s·col_step[m].

  A uniform zoo is [models·S, n] (row m·S + s, column 0); a ragged one is its flat array [1,
  total] (row 0, column start_m + s·n_m), which int32 indexing limits to 2^31 weights.
  """
  data: jax.Array
  row_base: jax.Array
  row_step: jax.Array
  col_base: jax.Array
  col_step: jax.Array

  def gather(self, models: jax.Array, snaps: jax.Array, offsets: jax.Array,
             length: int) -> jax.Array:
    """[B, length] slices at (net, 0-based snapshot, offset) triples [B]."""
    rows = self.row_base[models] + snaps * self.row_step[models]
    cols = self.col_base[models] + snaps * self.col_step[models] + offsets

    def one(r, c):
      return jax.lax.dynamic_slice(self.data, (r, c), (1, length))[0]
    return jax.vmap(one)(rows, cols)


def device_layout(snapshots: snapshots_lib.Snapshots) -> DeviceLayout:
  """Puts `snapshots` on the device (see DeviceLayout); raises ValueError when a ragged zoo is
  too large for int32 indexing."""
  models, num = len(snapshots), snapshots.num_snapshots
  zeros = np.zeros(models, np.int32)
  if snapshots.is_uniform:
    n = int(snapshots.lengths[0])
    data = snapshots.as_array().reshape(models * num, n)
    return DeviceLayout(jnp.asarray(data), jnp.asarray(np.arange(models, dtype=np.int32) * num),
                        jnp.ones(models, jnp.int32), jnp.asarray(zeros), jnp.asarray(zeros))
  if snapshots.flat.size > _INT32_LIMIT:
    raise ValueError(f'this mixed-architecture zoo holds {snapshots.flat.size} weights, more than '
                     'the 2^31 a device gather can index; export it (export_nws) and train on the '
                     'release format, which reads slices from disk')
  return DeviceLayout(jnp.asarray(snapshots.flat[None, :]), jnp.asarray(zeros),
                      jnp.asarray(zeros), jnp.asarray(snapshots.starts.astype(np.int32)),
                      jnp.asarray(snapshots.lengths.astype(np.int32)))


def as_reader(snapshots):
  """A `Snapshots` or `Release` as given; a uniform [models, S, n] array as `Snapshots`."""
  if hasattr(snapshots, 'read'):
    return snapshots
  return snapshots_lib.Snapshots.from_array(np.asarray(snapshots))


def check_lengths(table: pd.DataFrame, reader) -> None:
  """Raises ValueError unless the reader holds a vector of weightn_conv + weightn_fc weights for
  every row of `table` (a mismatch would read a neighbour's weights on the device)."""
  expected = (table['weightn_conv'] + table['weightn_fc']).to_numpy(np.int64)
  lengths = np.asarray(reader.lengths, np.int64)
  if lengths.shape != expected.shape or (lengths != expected).any():
    raise ValueError(f'snapshots of {len(lengths)} nets do not match the table\'s {len(expected)} '
                     'rows of weightn_conv + weightn_fc')


def placed(reader):
  """Where slices of `reader` are gathered: a zoo's `Snapshots` go to the device (DeviceLayout),
  anything else (a `Release`) is read on the host."""
  if isinstance(reader, snapshots_lib.Snapshots):
    return device_layout(reader)
  return reader


@dataclasses.dataclass
class WeightSource:
  """The nets a meta-classifier run reads.

  table: a row per net (13 properties, weightn_conv, weightn_fc, maybe `failed`); reader:
    `Snapshots` (on_device) or `Release`; test_models: row indices of the nets the release's
    split puts on the test side (None: the run makes its own split); description: JSON-able,
    how to open this source again (`open_source`).
  """
  table: pd.DataFrame
  reader: snapshots_lib.Snapshots | release_lib.Release
  description: dict
  test_models: np.ndarray | None = None

  @property
  def on_device(self) -> bool:
    return isinstance(self.reader, snapshots_lib.Snapshots)

  @property
  def num_snapshots(self) -> int:
    return self.reader.num_snapshots


def from_zoo(zoo_dir: str) -> WeightSource:
  zoo = zoo_lib.load_zoo(zoo_dir)
  return WeightSource(zoo.table, zoo.snapshots,
                      {'kind': 'zoo', 'zoo': _abs(zoo_dir), 'nets': fingerprint(zoo.table)})


def from_release(train_csvs: Sequence[str], test_csvs: Sequence[str] = (), *,
                 on_damaged: str = 'fail', scan_nans: bool = False,
                 progress: bool = False) -> WeightSource:
  """The nets of the split CSVs. With test_csvs, their nets are the meta-test side (the
  release's own split); otherwise the run splits all nets itself."""
  train_csvs, test_csvs = [_abs(p) for p in train_csvs], [_abs(p) for p in test_csvs]
  release = release_lib.open_release(train_csvs + test_csvs, on_damaged=on_damaged,
                                     scan_nans=scan_nans, progress=progress)
  test_models = None
  if test_csvs:
    test_models = np.flatnonzero(release.table['csv'].isin(test_csvs).to_numpy())
    if len(test_models) == 0 or len(test_models) == len(release):
      raise release_lib.ReleaseError('the train and test CSVs must both list usable nets')
  description = {'kind': 'release', 'train_csvs': train_csvs, 'test_csvs': test_csvs,
                 'on_damaged': on_damaged, 'scan_nans': scan_nans,
                 'nets': fingerprint(release.table)}
  return WeightSource(release.table, release, description, test_models)


def fingerprint(table: pd.DataFrame) -> str:
  """How many nets, and a digest of what a run relies on per row (properties, weight counts,
  and the net's path for a release): a run's split names nets by row."""
  columns = [c for c in (*space.PROPERTY_NAMES, 'weightn_conv', 'weightn_fc', 'path')
             if c in table]
  digest = hashlib.sha1(table[columns].to_csv(index=False).encode()).hexdigest()[:16]
  return f'{len(table)} nets, sha1 {digest}'


def open_source(description: dict, zoo_dir: str | None = None) -> WeightSource:
  """Reopens the nets a run read, from its saved `description` (or the zoo at `zoo_dir`, e.g.
  moved). Raises ReleaseError when they are no longer the nets the run read: its split would name
  other nets."""
  if zoo_dir or description.get('kind') != 'release':
    source = from_zoo(zoo_dir or description['zoo'])
  else:
    source = from_release(description['train_csvs'], description['test_csvs'],
                          on_damaged=description['on_damaged'],
                          scan_nans=description['scan_nans'])
  saved = description.get('nets')
  if saved is not None and source.description['nets'] != saved:
    raise release_lib.ReleaseError(
        f'these nets ({source.description["nets"]}) are not those the run read ({saved}): '
        'its split would name other nets')
  return source


def _abs(path: str) -> str:
  return os.path.abspath(path)
