"""Which (model, snapshot) pairs feed a meta-classifier, and the random weight slices drawn on the
device from them (PROTOCOL §5).

A slice is `length` consecutive weights of one snapshot vector, starting at a uniformly random
offset inside the chosen part of the vector: 'all' (the whole vector), 'conv' (the first
weightn_conv weights) or 'dense' (the last weightn_fc). Snapshot numbers are 1-based, as in the
release (001.bin … 020.bin); a range is inclusive.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from nws_jax.configs import meta as meta_config

PARTS = meta_config.PARTS
# random_offsets scales a float32 uniform draw: exact and uniform for spans up to 2^24 weights.
MAX_PART = 2 ** 24


class SliceError(ValueError):
  """A slice specification that this zoo cannot satisfy."""


@dataclasses.dataclass(frozen=True)
class SliceSpec:
  """length: weights per slice; part: 'all', 'conv' or 'dense'; snapshots first..last (1-based)."""
  length: int = 5000
  part: str = 'all'
  first_snapshot: int = 11
  last_snapshot: int = 20

  @property
  def snapshot_numbers(self) -> np.ndarray:
    return np.arange(self.first_snapshot, self.last_snapshot + 1)


def parse_snapshot_range(text: str) -> tuple[int, int]:
  """'11-20' -> (11, 20); '20' -> (20, 20). Raises SliceError for anything else."""
  parts = str(text).strip().split('-')
  try:
    numbers = [int(p) for p in parts]
  except ValueError:
    numbers = []
  if len(numbers) not in (1, 2):
    raise SliceError(f'snapshot range {text!r} is not FIRST-LAST or N (e.g. 11-20)')
  return numbers[0], numbers[-1]


def conv_fraction(weightn_conv, weightn_fc) -> float:
  """Where the conv part ends, as the mean over models of weightn_conv / (weightn_conv +
  weightn_fc): the conv | dense line of a position plot."""
  conv = np.asarray(weightn_conv, np.float64)
  return float((conv / (conv + np.asarray(weightn_fc, np.float64))).mean())


def part_bounds(weightn_conv: np.ndarray, weightn_fc: np.ndarray,
                part: str) -> tuple[np.ndarray, np.ndarray]:
  """Per model, the [lo, hi) range of vector indices that `part` covers (int32 [models] each)."""
  conv = np.asarray(weightn_conv, np.int64)
  total = conv + np.asarray(weightn_fc, np.int64)
  if part == 'all':
    lo, hi = np.zeros_like(conv), total
  elif part == 'conv':
    lo, hi = np.zeros_like(conv), conv
  elif part == 'dense':
    lo, hi = conv, total
  else:
    raise SliceError(f'unknown part {part!r}; choose from: ' + ', '.join(PARTS))
  return lo.astype(np.int32), hi.astype(np.int32)


def check_spec(spec: SliceSpec, weightn_conv: np.ndarray, weightn_fc: np.ndarray,
               num_snapshots: int) -> None:
  """Raises SliceError (one line) when a model's part is shorter than a slice or the snapshot
  range is empty or outside 1..num_snapshots."""
  if spec.length < 1:
    raise SliceError(f'slice_length must be at least 1, got {spec.length}')
  lo, hi = part_bounds(weightn_conv, weightn_fc, spec.part)
  if int((hi - lo).max()) > MAX_PART:
    raise SliceError(f'a part of {int((hi - lo).max())} weights is longer than the {MAX_PART} '
                     'whose slice starts float32 draws can spread uniformly')
  shortest = int((hi - lo).min())
  if spec.length > shortest:
    where = 'vector' if spec.part == 'all' else f'{spec.part} part'
    raise SliceError(f'slice_length {spec.length} is longer than the {where} of the weights '
                     f'({shortest} weights in the shortest model)')
  if spec.first_snapshot > spec.last_snapshot:
    raise SliceError(f'snapshot range {spec.first_snapshot}-{spec.last_snapshot} is empty')
  if spec.first_snapshot < 1 or spec.last_snapshot > num_snapshots:
    raise SliceError(f'snapshot range {spec.first_snapshot}-{spec.last_snapshot} is outside '
                     f'the zoo\'s snapshots 1-{num_snapshots}')


def pairs(models: np.ndarray, snapshot_numbers: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """Every (model, snapshot) pair, model-major: (model indices, 0-based snapshot indices),
  int32 [len(models) · len(snapshot_numbers)] each."""
  m, s = np.meshgrid(np.asarray(models), np.asarray(snapshot_numbers) - 1, indexing='ij')
  return m.reshape(-1).astype(np.int32), s.reshape(-1).astype(np.int32)


def random_offsets(key: jax.Array, lo: jax.Array, hi: jax.Array, length: int) -> jax.Array:
  """Uniform slice starts in [lo, hi - length] per element (int32, the shape of lo)."""
  span = (hi - lo - length + 1).astype(jnp.float32)
  u = jax.random.uniform(key, lo.shape)
  return lo + jnp.minimum(jnp.floor(u * span).astype(jnp.int32), hi - lo - length)


def gather(snapshots: jax.Array, model_idx: jax.Array, snap_idx: jax.Array, offsets: jax.Array,
           length: int) -> jax.Array:
  """Slices [B, length] from snapshots [models, S, n] at (model, snapshot, offset) triples [B]."""
  def one(m, s, o):
    return jax.lax.dynamic_slice(snapshots, (m, s, o), (1, 1, length))[0, 0]
  return jax.vmap(one)(model_idx, snap_idx, offsets)


def random_slices(key: jax.Array, snapshots: jax.Array, model_idx: jax.Array,
                  snap_idx: jax.Array, lo: jax.Array, hi: jax.Array, length: int) -> jax.Array:
  """One fresh random slice [B, length] per pair, inside its model's [lo, hi) (lo, hi: [models])."""
  offsets = random_offsets(key, lo[model_idx], hi[model_idx], length)
  return gather(snapshots, model_idx, snap_idx, offsets, length)


def random_offsets_host(rng: np.random.Generator, lo: np.ndarray, hi: np.ndarray,
                        length: int) -> np.ndarray:
  """Host-side uniform slice starts in [lo, hi - length] per element (int32), for slices that
  must stay fixed (validation, evaluation, the baseline)."""
  return (lo + rng.integers(0, hi - lo - length + 1)).astype(np.int32)


def random_triples(rng: np.random.Generator, models: np.ndarray, snapshot_numbers: np.ndarray,
                   lo: np.ndarray, hi: np.ndarray, length: int,
                   per_snapshot: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """`per_snapshot` random slices of every (model, snapshot) pair, host-side: (model indices,
  0-based snapshot indices, slice starts), int32 [len(models) · len(snapshot_numbers) ·
  per_snapshot] each, pair-major; starts inside each model's [lo, hi) (lo, hi: [all models])."""
  m, s = pairs(models, snapshot_numbers)
  m, s = np.repeat(m, per_snapshot), np.repeat(s, per_snapshot)
  return m, s, random_offsets_host(rng, lo[m], hi[m], length)


def balance_mask(key: jax.Array, labels: jax.Array, num_classes: int) -> jax.Array:
  """float32 [K]: 1 on a random class-balanced subset of the K samples, 0 elsewhere.

  Every class present keeps as many samples as the rarest present class has (PROTOCOL §5:
  classes balanced by cutting to the rarest); which ones is drawn with `key`.
  """
  counts = jnp.bincount(labels, length=num_classes)
  rarest = jnp.min(jnp.where(counts > 0, counts, labels.shape[0]))
  order = jnp.lexsort((jax.random.uniform(key, labels.shape), labels))
  starts = jnp.cumsum(counts) - counts
  rank = jnp.arange(labels.shape[0]) - starts[labels[order]]
  return jnp.zeros(labels.shape, jnp.float32).at[order].set((rank < rarest).astype(jnp.float32))
