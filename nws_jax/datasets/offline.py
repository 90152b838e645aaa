"""Offline datasets, built on this machine without downloads; deterministic functions of the seed.

* digits:   scikit-learn's bundled handwritten digits (1797 real 8x8 images, values 0..16),
            bilinearly upsampled to 32x32, scaled to 0..255, grey over 3 channels; a seeded,
            stratified 80/20 train/test split (1438 / 359 images: 20% of each class, rounded).
            Only real images: a larger `num_train` / `num_test` than exists gives all of them.
* shapes:   generated colour images of 10 geometric shapes (circle, square, triangle, plus,
            ring, horizontal bar, vertical bar, diamond, X, two dots) with random position,
            size, foreground / background colour and Gaussian pixel noise.
* gratings: generated sinusoidal gratings, 10 classes = 5 orientations (0, 36, ..., 144 deg,
            jittered by up to 12 deg) x 2 spatial frequencies (1.5-2.75 or 3.25-5 cycles per
            image), with random phase, mean level, contrast and colour tint, plus pixel noise.

Generated sets have `num_train` (default 6000, before the 90/10 split) and `num_test` (default
1000) images with balanced classes (counts differ by at most one); train and test images come
from independent random streams of the seed.
"""

from __future__ import annotations

import functools
from typing import Callable

import numpy as np

from nws_jax.datasets import preprocess as pp

DEFAULT_NUM_TRAIN = 6000
DEFAULT_NUM_TEST = 1000
DIGITS_TEST_FRACTION = 0.2

# Pixel grid of a 32x32 image, pixel centres at integer coordinates 0..31.
_YY, _XX = np.mgrid[0:pp.IMAGE_SIZE, 0:pp.IMAGE_SIZE].astype(np.float32)


# ----------------------------------------------------------------------------------------------
# digits


@functools.lru_cache(maxsize=1)
def _digits_32() -> tuple[np.ndarray, np.ndarray]:
  """All of sklearn's digits as uint8 [1797, 32, 32, 3] and int32 [1797] labels (cached)."""
  from sklearn.datasets import load_digits  # slow import (~2 s); only needed here
  digits = load_digits()
  grey = digits.images[..., None] * (255.0 / 16.0)  # [1797, 8, 8, 1], 0..255
  images = np.repeat(pp.to_uint8(pp.resize_float(grey, 'bilinear')), pp.NUM_CHANNELS, axis=-1)
  images.setflags(write=False)
  labels = digits.target.astype(np.int32)
  labels.setflags(write=False)
  return images, labels


def digits_test_mask(labels: np.ndarray, seed: int) -> np.ndarray:
  """Boolean [N]: the seeded stratified test part (20% of each class, rounded)."""
  rng = pp.rng_for(seed, 'digits', 'test_split')
  mask = np.zeros(len(labels), bool)
  for k in range(pp.NUM_CLASSES):
    members = np.flatnonzero(labels == k)
    n_test = int(round(DIGITS_TEST_FRACTION * len(members)))
    mask[rng.choice(members, size=n_test, replace=False)] = True
  return mask


def digits(num_train: int | None, num_test: int | None, seed: int) -> pp.Splits:
  """sklearn's digits: train (1438 by default) and test (359) images, uint8 [N, 32, 32, 3]."""
  images, labels = _digits_32()
  test = digits_test_mask(labels, seed)
  train_idx, test_idx = np.flatnonzero(~test), np.flatnonzero(test)
  train_idx = train_idx[pp.subset_indices(len(train_idx), num_train, seed, 'digits', 'train')]
  test_idx = test_idx[pp.subset_indices(len(test_idx), num_test, seed, 'digits', 'test')]
  return pp.Splits(images[train_idx], labels[train_idx], images[test_idx], labels[test_idx])


# ----------------------------------------------------------------------------------------------
# shapes: each class is a signed distance function (pixels; negative inside) of the offsets
# dx, dy [n, 32, 32] from the shape centre and its size r [n, 1, 1] (pixels).


def _bar(a, b, half_length, half_width):
  return np.maximum(np.abs(a) - half_length, np.abs(b) - half_width)


def _plus(dx, dy, r):
  return np.minimum(_bar(dx, dy, r, 0.28 * r), _bar(dy, dx, r, 0.28 * r))


def _triangle(dx, dy, r):
  big = 1.15 * r  # circumradius; apex up (image y grows downwards)
  return np.maximum(dy - big / 2, 0.866 * np.abs(dx) - 0.5 * dy - big / 2)


def _two_dots(dx, dy, r):
  radius = 0.42 * r
  return np.minimum(np.hypot(dx - 0.55 * r, dy), np.hypot(dx + 0.55 * r, dy)) - radius


_SHAPES: tuple[Callable[[np.ndarray, np.ndarray, np.ndarray], np.ndarray], ...] = (
    lambda dx, dy, r: np.hypot(dx, dy) - r,  # 0 circle
    lambda dx, dy, r: np.maximum(np.abs(dx), np.abs(dy)) - 0.85 * r,  # 1 square
    _triangle,  # 2 triangle
    _plus,  # 3 plus
    lambda dx, dy, r: np.abs(np.hypot(dx, dy) - 0.75 * r) - 0.25 * r,  # 4 ring
    lambda dx, dy, r: _bar(dx, dy, r, 0.3 * r),  # 5 horizontal bar
    lambda dx, dy, r: _bar(dy, dx, r, 0.3 * r),  # 6 vertical bar
    lambda dx, dy, r: (np.abs(dx) + np.abs(dy) - 1.2 * r) / np.sqrt(2),  # 7 diamond
    lambda dx, dy, r: _plus((dx + dy) / np.sqrt(2), (dx - dy) / np.sqrt(2), r),  # 8 X
    _two_dots,  # 9 two dots
)

SHAPES_NOISE_STD = 10.0  # grey pixel noise, 0..255 units


def balanced_labels(n: int, rng: np.random.Generator) -> np.ndarray:
  """int32 [n] labels 0..9 in random order, class counts differing by at most one."""
  return rng.permutation(np.arange(n) % pp.NUM_CLASSES).astype(np.int32)


def _shape_colours(n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
  """Background and foreground RGB [n, 3] in 0..255: a dark background, a bright shape.

  Random colours with either polarity made the set too slow to learn for a zoo that trains a
  few hundred steps on a CPU; a bright-on-dark shape keeps colour variety and position/size
  variation while leaving the shape itself as what to learn.
  """
  bg = rng.uniform(0, 100, (n, 3))
  fg = rng.uniform(150, 255, (n, 3))
  return bg.astype(np.float32), fg.astype(np.float32)


def _render_shapes(labels: np.ndarray, rng: np.random.Generator) -> np.ndarray:
  n = len(labels)
  r = rng.uniform(7.0, 11.0, (n, 1, 1)).astype(np.float32)
  lo, hi = r + 1.0, (pp.IMAGE_SIZE - 2.0) - r
  cx = lo + rng.uniform(0, 1, (n, 1, 1)).astype(np.float32) * (hi - lo)
  cy = lo + rng.uniform(0, 1, (n, 1, 1)).astype(np.float32) * (hi - lo)
  dist = np.empty((n, pp.IMAGE_SIZE, pp.IMAGE_SIZE), np.float32)
  for k, sdf in enumerate(_SHAPES):
    m = labels == k
    dist[m] = sdf(_XX - cx[m], _YY - cy[m], r[m])
  alpha = np.clip(0.5 - dist, 0.0, 1.0).reshape(n, 1, -1)  # anti-aliased edge, one pixel wide
  bg, fg = _shape_colours(n, rng)
  img = bg[:, :, None] + alpha * (fg - bg)[:, :, None]  # [n, 3, 1024]
  return _add_noise_to_uint8(img, SHAPES_NOISE_STD, rng)


def _add_noise_to_uint8(img: np.ndarray, noise_std: float, rng: np.random.Generator):
  """float32 [n, 3, H*W] + grey Gaussian noise -> uint8 [n, H, W, 3] (in place on `img`).

  Channel-first so that numpy's inner loops run over pixels, not over 3 channels (~5x faster);
  one noise value per pixel, shared by the channels (3x fewer random numbers).
  """
  n = img.shape[0]
  noise = rng.standard_normal((n, 1, img.shape[-1]), dtype=np.float32)
  noise *= noise_std
  noise += 0.5  # with the truncating cast below: round half up
  img += noise
  np.clip(img, 0, 255, out=img)
  out = np.empty((n, pp.IMAGE_SIZE, pp.IMAGE_SIZE, pp.NUM_CHANNELS), np.uint8)
  np.copyto(out.transpose(0, 3, 1, 2), img.reshape(n, pp.NUM_CHANNELS, pp.IMAGE_SIZE, -1),
            casting='unsafe')
  return out


def _generate(render, name: str, n: int, rng_stream: str, seed: int):
  rng = pp.rng_for(seed, name, rng_stream)
  labels = balanced_labels(n, rng)
  return render(labels, rng), labels


def _generated(render, name: str, num_train: int | None, num_test: int | None, seed: int):
  """Train and test images of a generated set, from independent streams of the seed."""
  num_train = DEFAULT_NUM_TRAIN if num_train is None else num_train
  num_test = DEFAULT_NUM_TEST if num_test is None else num_test
  train = _generate(render, name, num_train, 'train', seed)
  test = _generate(render, name, num_test, 'test', seed)
  return pp.Splits(*train, *test)


def shapes(num_train: int | None, num_test: int | None, seed: int) -> pp.Splits:
  """Generated geometric shapes: uint8 [N, 32, 32, 3] (default 6000 train, 1000 test)."""
  return _generated(_render_shapes, 'shapes', num_train, num_test, seed)


# ----------------------------------------------------------------------------------------------
# gratings

GRATING_ORIENTATIONS_DEG = (0.0, 36.0, 72.0, 108.0, 144.0)
GRATING_CYCLES = ((1.5, 2.75), (3.25, 5.0))  # (low, high) cycles per 32 px, uniform in each range
GRATING_JITTER_DEG = 12.0
GRATINGS_NOISE_STD = 16.0  # grey pixel noise, 0..255 units


def _render_gratings(labels: np.ndarray, rng: np.random.Generator) -> np.ndarray:
  """Label k = 2 * orientation index + frequency index."""
  n = len(labels)
  orient = np.asarray(GRATING_ORIENTATIONS_DEG)[labels // 2]
  theta = np.deg2rad(orient + rng.uniform(-GRATING_JITTER_DEG, GRATING_JITTER_DEG, n))
  cycles_range = np.asarray(GRATING_CYCLES)[labels % 2]  # [n, 2]
  cycles = rng.uniform(cycles_range[:, 0], cycles_range[:, 1])
  phase = rng.uniform(0, 2 * np.pi, n)
  c = lambda v: v.astype(np.float32)[:, None, None]
  position = _XX * c(np.cos(theta)) + _YY * c(np.sin(theta))
  wave = np.sin(c(2 * np.pi * cycles / pp.IMAGE_SIZE) * position + c(phase))
  level = rng.uniform(80, 170, n)
  amplitude = rng.uniform(0.2, 0.5, n) * np.minimum(level, 255 - level)
  grey = (c(level) + c(amplitude) * wave).reshape(n, 1, -1)
  tint = rng.uniform(0.55, 1.0, (n, 3, 1)).astype(np.float32)
  return _add_noise_to_uint8(grey * tint, GRATINGS_NOISE_STD, rng)


def gratings(num_train: int | None, num_test: int | None, seed: int) -> pp.Splits:
  """Generated oriented gratings: uint8 [N, 32, 32, 3] (default 6000 train, 1000 test)."""
  return _generated(_render_gratings, 'gratings', num_train, num_test, seed)


BUILDERS: dict[str, Callable[[int | None, int | None, int], pp.Splits]] = {
    'digits': digits,
    'shapes': shapes,
    'gratings': gratings,
}
