"""Per-image data augmentation on the device, in pure jax.numpy.

The reference study's protocol: "Augmentation, when on, per image: random affine transform
(translation ±3 px, rotation ±15°, zoom ±10%, shear ±3°, bilinear), brightness ±0.2, contrast
×[0.5, 1.5], hue ±0.08, saturation ×[0.3, 1.5], additive Gaussian noise of std drawn from
[0, 0.03]; clipped to [0, 1]."

Every parameter is drawn independently and uniformly per image, and applied in this fixed order:

1. Geometry: one affine map about the image centre, `forward = translate · rotate · shear ·
   zoom`, sampled bilinearly at the inverse-mapped coordinates of each output pixel. Fill mode
   is 'nearest' (edge replication, as Keras' ImageDataGenerator default): source coordinates are
   clamped to the image before interpolation. Sampling is a hand-written 4-corner gather, which
   measured faster on CPU than `jax.scipy.ndimage.map_coordinates` per channel.
2. Brightness: `x + delta`, delta ~ U(-brightness, brightness) (tf.image.adjust_brightness).
3. Contrast: `(x - mean) · f + mean` with the per-channel spatial mean, f ~ U(*contrast)
   (tf.image.adjust_contrast). The image is then clipped to [0, 1] so that HSV is well defined.
4. Hue and saturation, in one HSV round trip: `h ← (h + delta) mod 1`, delta ~ U(-hue, hue) in
   full turns (tf.image.adjust_hue), and `s ← clip(s · f, 0, 1)`, f ~ U(*saturation)
   (tf.image.adjust_saturation). Grey pixels (s = 0) stay grey.
5. Noise: `x + std · N(0, 1)`, independent per pixel and channel, std ~ U(0, noise_std_max).
   (So grey images stay grey through steps 1-4 but pick up coloured noise.)
6. Clip to [0, 1].

All random numbers of an image come from one `jax.random.uniform` draw of its key (separate
draws each add about a second of XLA compile time under vmap on CPU).

Everything is pure, jittable and vmappable with static shapes; `maybe_augment` selects with
`jnp.where` on a traced per-model flag, so it can be vmapped over a models axis.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class AugmentConfig:
  """Ranges of the random augmentation, each parameter drawn uniformly per image.

  Hashable (usable as a static argument) and also a pytree whose leaves are the range bounds,
  so it may be passed traced through `jax.jit` (one compilation serves every config) or even be
  vmapped to give models different ranges.

  Attributes:
    translate_px: shift along each axis ~ U(-t, t), in pixels.
    rotate_deg: rotation angle ~ U(-r, r), in degrees.
    zoom: isotropic scale ~ U(1 - z, 1 + z) (a fraction; > 1 magnifies the content).
    shear_deg: horizontal shear angle ~ U(-s, s), in degrees.
    brightness: additive delta ~ U(-b, b), in intensity units of [0, 1].
    contrast: multiplicative factor range (lo, hi) about the per-channel mean.
    hue: hue shift ~ U(-h, h), in fractions of a full turn.
    saturation: multiplicative saturation factor range (lo, hi).
    noise_std_max: Gaussian noise std ~ U(0, n), in intensity units of [0, 1].
  """
  translate_px: float = 3.0
  rotate_deg: float = 15.0
  zoom: float = 0.1
  shear_deg: float = 3.0
  brightness: float = 0.2
  contrast: tuple[float, float] = (0.5, 1.5)
  hue: float = 0.08
  saturation: tuple[float, float] = (0.3, 1.5)
  noise_std_max: float = 0.03


# ---------------------------------------------------------------------------------------------
# Colour space.


def rgb_to_hsv(rgb: jax.Array) -> jax.Array:
  """RGB [..., 3] -> HSV [..., 3], all channels in [0, 1] (hue in full turns), as tf.image.

  Hue and saturation are 0 where undefined (grey pixels, black pixels).
  """
  r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
  v = jnp.max(rgb, axis=-1)
  chroma = v - jnp.min(rgb, axis=-1)
  s = jnp.where(v > 0, chroma / jnp.where(v > 0, v, 1.0), 0.0)
  safe = jnp.where(chroma > 0, chroma, 1.0)
  h = jnp.where(v == r, (g - b) / safe,
                jnp.where(v == g, (b - r) / safe + 2.0, (r - g) / safe + 4.0))
  h = jnp.where(chroma > 0, jnp.mod(h / 6.0, 1.0), 0.0)
  return jnp.stack([h, s, v], axis=-1)


def hsv_to_rgb(hsv: jax.Array) -> jax.Array:
  """HSV [..., 3] (hue in full turns, any real; s, v in [0, 1]) -> RGB [..., 3] in [0, 1]."""
  h, s, v = hsv[..., 0:1], hsv[..., 1:2], hsv[..., 2:3]
  n = jnp.asarray([5.0, 3.0, 1.0], hsv.dtype)
  k = jnp.mod(n + h * 6.0, 6.0)
  return v - v * s * jnp.clip(jnp.minimum(k, 4.0 - k), 0.0, 1.0)


# ---------------------------------------------------------------------------------------------
# Geometry.


def affine_matrix(rotate_deg, shear_deg, zoom) -> jax.Array:
  """Forward 2x2 linear part `rotate · shear · zoom` acting on (x, y) = (column, row) offsets.

  Scalars: angles in degrees, positive rotation counter-clockwise as displayed (rows grow
  downward), shear `x += tan(shear) · y`; zoom is the scale factor (1 = none). Translation is
  applied separately, in pixels (`affine_transform`). Returns float32 [2, 2].
  """
  theta = jnp.deg2rad(rotate_deg)
  phi = jnp.deg2rad(shear_deg)
  c, s = jnp.cos(theta), jnp.sin(theta)
  rot = jnp.stack([jnp.stack([c, s]), jnp.stack([-s, c])])
  shear = jnp.stack([jnp.stack([jnp.ones_like(phi), jnp.tan(phi)]),
                     jnp.stack([jnp.zeros_like(phi), jnp.ones_like(phi)])])
  return rot @ shear * zoom


def _bilinear_nearest(image: jax.Array, y: jax.Array, x: jax.Array) -> jax.Array:
  """Samples image [H, W, C] at real (row, column) coordinates y, x [H', W'] -> [H', W', C].

  Bilinear with 'nearest' fill: coordinates are clamped to [0, H-1] x [0, W-1] first.
  """
  h, w, ch = image.shape
  y = jnp.clip(y, 0.0, h - 1.0)
  x = jnp.clip(x, 0.0, w - 1.0)
  y0f = jnp.floor(y)
  x0f = jnp.floor(x)
  wy = (y - y0f)[..., None]
  wx = (x - x0f)[..., None]
  y0 = y0f.astype(jnp.int32)
  x0 = x0f.astype(jnp.int32)
  y1 = jnp.minimum(y0 + 1, h - 1)
  x1 = jnp.minimum(x0 + 1, w - 1)
  flat = image.reshape(h * w, ch)
  idx = jnp.stack([y0 * w + x0, y0 * w + x1, y1 * w + x0, y1 * w + x1])  # [4, H', W']
  v = jnp.take(flat, idx, axis=0, mode='clip')  # [4, H', W', C]
  top = v[0] + wx * (v[1] - v[0])
  bottom = v[2] + wx * (v[3] - v[2])
  return top + wy * (bottom - top)


def affine_transform(image: jax.Array, linear: jax.Array, translate: jax.Array) -> jax.Array:
  """Warps image [H, W, C] by `out(c + A (p - c) + t) = in(p)` about the centre c.

  Args:
    image: float [H, W, C].
    linear: forward linear part A, [2, 2] acting on (x, y) = (column, row) offsets.
    translate: forward shift t = (tx, ty) in pixels, [2].

  Returns:
    float [H, W, C], sampled bilinearly at the inverse-mapped coordinates with 'nearest' fill.
  """
  h, w, _ = image.shape
  cx, cy = (w - 1) / 2.0, (h - 1) / 2.0
  (a, b), (c, d) = linear[0], linear[1]
  det = a * d - b * c
  ia, ib, ic, id_ = d / det, -b / det, -c / det, a / det
  rows = jnp.arange(h, dtype=jnp.float32)[:, None]
  cols = jnp.arange(w, dtype=jnp.float32)[None, :]
  ox = cols - cx - translate[0]
  oy = rows - cy - translate[1]
  x = ia * ox + ib * oy + cx
  y = ic * ox + id_ * oy + cy
  return _bilinear_nearest(image, y, x)


# ---------------------------------------------------------------------------------------------
# Augmentation.


_NUM_PARAMS = 10  # random scalars per image


def _uniform(u: jax.Array, lo, hi) -> jax.Array:
  return lo + u * (hi - lo)


def augment_image(key: jax.Array, image: jax.Array,
                  config: AugmentConfig = AugmentConfig()) -> jax.Array:
  """One random augmentation of one image (order in the module docstring).

  Args:
    key: PRNG key.
    image: float32 [H, W, 3] in [0, 1] (grey images: 3 equal channels).
    config: ranges (static, or traced scalars when passed as a pytree).

  Returns:
    float32 [H, W, 3] in [0, 1].
  """
  image = jnp.asarray(image, jnp.float32)
  # One threefry draw per image (each separate draw costs ~1 s of XLA compile time under vmap):
  # v ~ U(-1, 1) open at -1, as inside jax.random.normal. The first 10 give the parameters,
  # the rest the noise N(0, 1) = sqrt(2) erfinv(v), exactly as jax.random.normal makes it.
  lo = np.nextafter(np.float32(-1.0), np.float32(0.0))
  v = jax.random.uniform(key, (_NUM_PARAMS + image.size,), jnp.float32, lo, 1.0)
  u = (v[:_NUM_PARAMS] + 1.0) * 0.5  # U(0, 1)
  normal = np.sqrt(2.0).astype(np.float32) * jax.lax.erf_inv(v[_NUM_PARAMS:])
  tx = _uniform(u[0], -config.translate_px, config.translate_px)
  ty = _uniform(u[1], -config.translate_px, config.translate_px)
  rot = _uniform(u[2], -config.rotate_deg, config.rotate_deg)
  zoom = _uniform(u[3], 1.0 - config.zoom, 1.0 + config.zoom)
  shear = _uniform(u[4], -config.shear_deg, config.shear_deg)
  bright = _uniform(u[5], -config.brightness, config.brightness)
  contrast = _uniform(u[6], *config.contrast)
  hue = _uniform(u[7], -config.hue, config.hue)
  sat = _uniform(u[8], *config.saturation)
  noise_std = _uniform(u[9], 0.0, config.noise_std_max)

  # 1. Geometry.
  linear = affine_matrix(rot, shear, zoom)
  x = affine_transform(image, linear, jnp.stack([tx, ty]))
  # 2. Brightness; 3. contrast about the per-channel mean; clip so HSV is well defined.
  x = x + bright
  mean = jnp.mean(x, axis=(0, 1), keepdims=True)
  x = jnp.clip((x - mean) * contrast + mean, 0.0, 1.0)
  # 4. Hue and saturation in HSV.
  hsv = rgb_to_hsv(x)
  hsv = jnp.stack([hsv[..., 0] + hue, jnp.clip(hsv[..., 1] * sat, 0.0, 1.0), hsv[..., 2]],
                  axis=-1)
  x = hsv_to_rgb(hsv)
  # 5. Noise; 6. clip.
  x = x + noise_std * normal.reshape(x.shape)
  return jnp.clip(x, 0.0, 1.0)


def augment_batch(key: jax.Array, images: jax.Array,
                  config: AugmentConfig = AugmentConfig()) -> jax.Array:
  """Augments images float32 [B, H, W, 3] in [0, 1] independently -> float32 [B, H, W, 3].

  Image i uses key `jax.random.split(key, B)[i]`.
  """
  keys = jax.random.split(key, images.shape[0])
  return jax.vmap(augment_image, in_axes=(0, 0, None))(keys, images, config)


def maybe_augment(key: jax.Array, images: jax.Array, enabled: jax.Array,
                  config: AugmentConfig = AugmentConfig()) -> jax.Array:
  """`augment_batch(key, images, config)` where `enabled` else `images` unchanged.

  Args:
    key: PRNG key.
    images: float32 [B, H, W, 3] in [0, 1].
    enabled: bool scalar (may be traced, e.g. one flag per model under `jax.vmap`).
    config: ranges (static, or traced scalars when passed as a pytree).

  Returns:
    float32 [B, H, W, 3]. Selected with `jnp.where`, so no Python branch on `enabled`; both
    sides are computed.
  """
  images = jnp.asarray(images, jnp.float32)
  return jnp.where(jnp.asarray(enabled, bool), augment_batch(key, images, config), images)
