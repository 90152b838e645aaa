"""Shared preprocessing (PROTOCOL §2/§3): resize to uint8 [N, 32, 32, 3] and the 90/10 split.

Resizing is separable and linear: each image is multiplied by a (out x in) weight matrix along
height and width, in float64 on the CPU with numpy, a chunk of images at a time.

* 'bilinear' (for upsampling, e.g. 28 -> 32 or 8 -> 32): half-pixel centres, edges clamped; this
  is the same map as `jax.image.resize(..., method='bilinear')` when upsampling.
* 'area' (for downsampling, e.g. stl10 96 -> 32): each output pixel is the mean of the input
  area it covers (an exact 3x3 block mean for 96 -> 32).
"""

from __future__ import annotations

import zlib
from typing import NamedTuple

import numpy as np

IMAGE_SIZE = 32
NUM_CHANNELS = 3
NUM_CLASSES = 10
VALID_FRACTION_TENTHS = 1  # the validation set is 1/10 of the training split
CHUNK = 2048  # images per resize chunk: bounds the float64 scratch memory (96x96x3: ~450 MB)


def rng_for(seed: int, *stream: str) -> np.random.Generator:
  """A numpy Generator for `seed` and a named stream (e.g. 'digits', 'split').

  Streams are independent, so e.g. changing `num_test` does not change the training images.
  """
  return np.random.default_rng([seed] + [zlib.crc32(s.encode()) for s in stream])


def resize_weights(in_size: int, out_size: int, method: str) -> np.ndarray:
  """Weight matrix float64 [out_size, in_size] of a 1-D resize; rows sum to 1."""
  if method == 'bilinear':
    return _bilinear_weights(in_size, out_size)
  if method == 'area':
    return _area_weights(in_size, out_size)
  raise ValueError(f"unknown resize method {method!r}; choose 'bilinear' or 'area'")


def _bilinear_weights(in_size: int, out_size: int) -> np.ndarray:
  centres = (np.arange(out_size) + 0.5) * (in_size / out_size) - 0.5
  centres = np.clip(centres, 0.0, in_size - 1)
  lo = np.floor(centres).astype(np.int64)
  hi = np.minimum(lo + 1, in_size - 1)
  frac = centres - lo
  w = np.zeros((out_size, in_size))
  rows = np.arange(out_size)
  np.add.at(w, (rows, lo), 1.0 - frac)
  np.add.at(w, (rows, hi), frac)
  return w


def _area_weights(in_size: int, out_size: int) -> np.ndarray:
  scale = in_size / out_size
  out_lo = np.arange(out_size)[:, None] * scale
  in_lo = np.arange(in_size)[None, :]
  overlap = np.minimum(out_lo + scale, in_lo + 1) - np.maximum(out_lo, in_lo)
  return np.clip(overlap, 0.0, None) / scale


def default_method(in_size: int, out_size: int = IMAGE_SIZE) -> str:
  """'bilinear' when upsampling (or same size), 'area' when downsampling."""
  return 'area' if in_size > out_size else 'bilinear'


def resize_float(images: np.ndarray, method: str, size: int = IMAGE_SIZE) -> np.ndarray:
  """Resizes float/uint images [N, H, W, C] to float64 [N, size, size, C] (no rounding)."""
  _, h, w, _ = images.shape
  wh = resize_weights(h, size, method)
  ww = resize_weights(w, size, method)
  x = np.tensordot(images.astype(np.float64), wh, axes=([1], [1]))  # [N, W, C, size]
  x = np.tensordot(x, ww, axes=([1], [1]))  # [N, C, size, size]
  return x.transpose(0, 2, 3, 1)


def to_uint8(x: np.ndarray) -> np.ndarray:
  """Rounds to nearest and clips to 0..255, as uint8."""
  return np.clip(np.rint(x), 0, 255).astype(np.uint8)


def to_rgb32(images: np.ndarray, method: str | None = None) -> np.ndarray:
  """uint8 [N, H, W, C] (C = 1 or 3) -> uint8 [N, 32, 32, 3].

  Square images are resized with `method` (default: `default_method(H)`) in chunks of CHUNK
  images; 1-channel images are repeated over 3 channels after resizing. 32x32 inputs are copied
  unchanged.
  """
  if images.ndim != 4 or images.shape[-1] not in (1, 3) or images.shape[1] != images.shape[2]:
    raise ValueError(f'expected square images [N, H, H, 1 or 3], got shape {images.shape}')
  n, h, _, c = images.shape
  method = method or default_method(h)
  out = np.empty((n, IMAGE_SIZE, IMAGE_SIZE, c), np.uint8)
  for start in range(0, n, CHUNK):
    chunk = images[start:start + CHUNK]
    if h == IMAGE_SIZE:
      out[start:start + CHUNK] = chunk
    else:
      out[start:start + CHUNK] = to_uint8(resize_float(chunk, method))
  if c == 1:
    out = np.repeat(out, NUM_CHANNELS, axis=-1)
  return out


def num_valid(num_train: int) -> int:
  """Validation examples held out of a training split of `num_train`: 10%, rounded half up."""
  return (num_train * VALID_FRACTION_TENTHS + 5) // 10


def split_train_valid(images: np.ndarray, labels: np.ndarray, seed: int, name: str):
  """Randomly holds out 10% of a training split for validation (PROTOCOL §3).

  Returns (train_images, train_labels, valid_images, valid_labels), both parts in a seeded random
  order; the permutation depends on `seed` and `name` only (and on the split size).
  """
  perm = rng_for(seed, name, 'split').permutation(len(labels))
  n_valid = num_valid(len(labels))
  valid, train = perm[:n_valid], perm[n_valid:]
  return images[train], labels[train], images[valid], labels[valid]


def subset_indices(available: int, wanted: int | None, seed: int, *stream: str) -> np.ndarray:
  """Sorted indices of a seeded random subset of `wanted` out of `available` (None or more: all)."""
  if wanted is None or wanted >= available:
    return np.arange(available)
  chosen = rng_for(seed, *stream).choice(available, size=wanted, replace=False)
  return np.sort(chosen)


class Splits(NamedTuple):
  """A dataset before the validation split: uint8 [N, 32, 32, 3] images and int32 [N] labels."""
  train_images: np.ndarray
  train_labels: np.ndarray
  test_images: np.ndarray
  test_labels: np.ndarray
