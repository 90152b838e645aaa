"""Tests of nws_jax.augment: on-device augmentation, 'original' (default) and 'per_image' modes."""

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from nws_jax import augment

H = W = 32
B = 8  # every batch has this shape, so one compilation (config passed traced) serves all tests

IDENTITY = augment.AugmentConfig(
    translate_px=0.0, rotate_deg=0.0, zoom=0.0, shear_deg=0.0, brightness=0.0,
    contrast=(1.0, 1.0), hue=0.0, saturation=(1.0, 1.0), noise_std_max=0.0)
PER_IMAGE = augment.PER_IMAGE_CONFIG
MODES = {'original': augment.AugmentConfig(), 'per_image': PER_IMAGE}


def only(mode: str = 'original', **kwargs) -> augment.AugmentConfig:
  """The identity config of `mode` with the given ranges switched on."""
  return dataclasses.replace(IDENTITY, mode=mode, **kwargs)


def random_images(seed: int, n: int = B, h: int = H, w: int = W) -> jax.Array:
  """Uniform [n, h, w, 3] float32 images (numpy's generator: no extra XLA compilations)."""
  return jnp.asarray(np.random.default_rng(seed).random((n, h, w, 3), np.float32))


def bright_square(h: int = H, w: int = W, top: int = 12, left: int = 13, size: int = 6):
  img = np.zeros((h, w, 3), np.float32)
  img[top:top + size, left:left + size] = 1.0
  return jnp.asarray(img)


def centre_of_mass(image: jax.Array) -> np.ndarray:
  """(row, column) centre of mass of the channel-summed intensity."""
  m = np.asarray(image).sum(-1)
  rows, cols = np.indices(m.shape)
  return np.array([(rows * m).sum(), (cols * m).sum()]) / m.sum()


_augment_batch = jax.jit(augment.augment_batch)
_maybe_augment = jax.jit(augment.maybe_augment)
_rgb_to_hsv = jax.jit(augment.rgb_to_hsv)
_hsv_to_rgb = jax.jit(augment.hsv_to_rgb)
_affine_transform = jax.jit(augment.affine_transform)


def test_default_config_is_the_original_code_s_ranges_and_mode():
  c = augment.AugmentConfig()
  assert c.mode == 'original'
  # classifier.py with sc = 3: translation ±sc px, rotation ±5·sc°, zoom ±0.033·sc, shear ±sc°.
  assert (c.translate_px, c.rotate_deg, c.zoom, c.shear_deg) == (3.0, 15.0, 0.099, 3.0)
  assert (c.brightness, c.contrast, c.hue, c.saturation, c.noise_std_max) == (
      0.2, (0.5, 1.5), 0.08, (0.3, 1.5), 0.03)


def test_per_image_config_keeps_the_former_default_ranges():
  assert PER_IMAGE == dataclasses.replace(augment.AugmentConfig(), zoom=0.1, mode='per_image')


def test_config_mode_is_static_and_the_ranges_are_leaves():
  leaves, treedef = jax.tree_util.tree_flatten(augment.AugmentConfig())
  assert 'original' not in leaves and len(leaves) == 11
  assert treedef != jax.tree_util.tree_structure(PER_IMAGE)
  assert hash(augment.AugmentConfig()) != hash(PER_IMAGE)


def test_unknown_mode_is_an_error():
  with pytest.raises(ValueError, match='mode'):
    augment.augment_batch(jax.random.PRNGKey(0), random_images(0, 1),
                          dataclasses.replace(IDENTITY, mode='per_batch'))


@pytest.mark.parametrize('mode', MODES)
def test_batch_output_keeps_shape_dtype_and_stays_in_unit_range(mode):
  images = jnp.concatenate([random_images(0, B - 2), jnp.zeros((1, H, W, 3)),
                            jnp.ones((1, H, W, 3))])
  out = _augment_batch(jax.random.PRNGKey(1), images, MODES[mode])
  assert out.shape == images.shape
  assert out.dtype == jnp.float32
  assert bool(jnp.all(jnp.isfinite(out)))
  assert float(out.min()) >= 0.0 and float(out.max()) <= 1.0


def test_non_square_image_keeps_its_shape():
  image = random_images(0, 1, 20, 28)[0]
  out = jax.jit(augment.augment_image)(jax.random.PRNGKey(1), image)
  assert out.shape == (20, 28, 3) and out.dtype == jnp.float32
  out = jax.jit(augment.augment_batch)(jax.random.PRNGKey(1), random_images(0, 2, 20, 28))
  assert out.shape == (2, 20, 28, 3) and out.dtype == jnp.float32


@pytest.mark.parametrize('mode', MODES)
def test_same_key_gives_identical_output(mode):
  images = random_images(0)
  a = _augment_batch(jax.random.PRNGKey(7), images, MODES[mode])
  b = _augment_batch(jax.random.PRNGKey(7), images, MODES[mode])
  np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


@pytest.mark.parametrize('mode', MODES)
def test_different_keys_give_different_output(mode):
  images = random_images(0)
  a = _augment_batch(jax.random.PRNGKey(7), images, MODES[mode])
  b = _augment_batch(jax.random.PRNGKey(8), images, MODES[mode])
  assert float(jnp.abs(a - b).max()) > 0.05


def test_per_image_batch_is_vmapped_augment_image_with_split_keys():
  images = random_images(0)
  key = jax.random.PRNGKey(3)
  out = _augment_batch(key, images, PER_IMAGE)
  keys = jax.random.split(key, B)
  one = jax.jit(augment.augment_image)
  for i in (0, B - 1):
    np.testing.assert_allclose(np.asarray(out[i]), np.asarray(one(keys[i], images[i])),
                               atol=1e-5)


@pytest.mark.parametrize('mode', MODES)
def test_identical_images_in_a_batch_get_different_augmentations(mode):
  images = jnp.broadcast_to(random_images(0, 1), (B, H, W, 3))
  out = _augment_batch(jax.random.PRNGKey(0), images, MODES[mode])
  for i in range(1, B):
    assert float(jnp.abs(out[i] - out[0]).max()) > 0.05


@pytest.mark.parametrize('mode', MODES)
def test_all_zero_ranges_are_the_identity(mode):
  images = random_images(0)
  out = _augment_batch(jax.random.PRNGKey(0), images, only(mode))
  np.testing.assert_allclose(np.asarray(out), np.asarray(images), atol=1e-5)


def test_maybe_augment_disabled_returns_the_input_exactly():
  images = random_images(0)
  out = _maybe_augment(jax.random.PRNGKey(0), images, jnp.asarray(False))
  np.testing.assert_array_equal(np.asarray(out), np.asarray(images))


def test_maybe_augment_enabled_changes_the_images():
  images = random_images(0)
  out = _maybe_augment(jax.random.PRNGKey(0), images, jnp.asarray(True))
  np.testing.assert_allclose(
      np.asarray(out), np.asarray(_augment_batch(jax.random.PRNGKey(0), images,
                                                 augment.AugmentConfig())), atol=1e-5)
  assert float(jnp.abs(out - images).max()) > 0.05


@pytest.mark.parametrize('mode', MODES)
def test_vmap_over_models_with_per_model_flags_equals_per_model_calls(mode):
  m = 4
  images = random_images(0, m * B).reshape(m, B, H, W, 3)
  keys = jnp.stack([jax.random.PRNGKey(i) for i in range(m)])
  flags = jnp.asarray([True, False, True, False])
  fn = functools.partial(augment.maybe_augment, config=MODES[mode])
  out = jax.jit(jax.vmap(fn))(keys, images, flags)
  assert out.shape == images.shape
  for i in range(m):
    expected = _maybe_augment(keys[i], images[i], flags[i], MODES[mode])
    np.testing.assert_allclose(np.asarray(out[i]), np.asarray(expected), atol=1e-5)
  np.testing.assert_array_equal(np.asarray(out[1]), np.asarray(images[1]))
  assert float(jnp.abs(out[0] - images[0]).max()) > 0.05


def test_runs_inside_lax_scan_under_jit():
  images = random_images(0)

  def step(key, _):
    key, sub = jax.random.split(key)
    return key, augment.maybe_augment(sub, images, jnp.asarray(True))

  _, outs = jax.jit(lambda k: jax.lax.scan(step, k, None, length=3))(jax.random.PRNGKey(0))
  assert outs.shape == (3, B, H, W, 3)
  assert float(jnp.abs(outs[0] - outs[1]).max()) > 0.05


def test_rgb_hsv_round_trip():
  rgb = jnp.asarray(np.random.default_rng(0).random((1000, 3), np.float32))
  rgb = jnp.concatenate([rgb, jnp.asarray([[0., 0., 0.], [1., 1., 1.], [.5, .5, .5],
                                           [1., 0., 0.], [0., 1., 0.], [0., 0., 1.]])])
  hsv = _rgb_to_hsv(rgb)
  assert float(hsv.min()) >= 0.0 and float(hsv.max()) <= 1.0
  np.testing.assert_allclose(np.asarray(_hsv_to_rgb(hsv)), np.asarray(rgb), atol=1e-6)


def test_rgb_to_hsv_of_primaries_and_grey():
  rgb = jnp.asarray([[1., 0., 0.], [0., 1., 0.], [0., 0., 1.], [1., 1., 0.], [.4, .4, .4]])
  expected = [[0., 1., 1.], [1 / 3, 1., 1.], [2 / 3, 1., 1.], [1 / 6, 1., 1.], [0., 0., .4]]
  np.testing.assert_allclose(np.asarray(_rgb_to_hsv(rgb)), expected, atol=1e-6)


def test_hue_shift_of_a_third_turns_red_into_green():
  hsv = _rgb_to_hsv(jnp.asarray([1., 0., 0.]))
  green = _hsv_to_rgb(hsv.at[0].add(1 / 3))
  np.testing.assert_allclose(np.asarray(green), [0., 1., 0.], atol=1e-6)


def test_per_image_translation_only_moves_centre_of_mass_at_most_3_px():
  config = only('per_image', translate_px=3.0)
  images = jnp.broadcast_to(bright_square(), (B, H, W, 3))
  out = _augment_batch(jax.random.PRNGKey(0), images, config)
  before = centre_of_mass(images[0])
  shifts = np.stack([centre_of_mass(o) - before for o in out])
  assert np.abs(shifts).max() <= 3.0 + 1e-3
  assert np.abs(shifts).max() > 1.0  # it does move
  # A translation (away from the border) keeps the total intensity.
  np.testing.assert_allclose(np.asarray(out.sum((1, 2, 3))), float(images[0].sum()), rtol=1e-4)


def test_affine_transform_translates_by_plus_x_columns_and_plus_y_rows():
  image = bright_square()
  out = _affine_transform(image, jnp.eye(2), jnp.asarray([2.0, -1.0]))
  np.testing.assert_allclose(centre_of_mass(out) - centre_of_mass(image), [-1.0, 2.0],
                             atol=1e-4)
  np.testing.assert_allclose(np.asarray(out), np.asarray(jnp.roll(image, (-1, 2), (0, 1))),
                             atol=1e-6)


def test_positive_rotation_is_counter_clockwise_as_displayed():
  image = np.zeros((33, 33, 3), np.float32)
  image[16, 26] = 1.0  # right of the centre (16, 16)
  out = _affine_transform(jnp.asarray(image), augment.affine_matrix(90.0, 0.0, 1.0),
                          jnp.zeros(2))
  assert float(out[6, 16, 0]) == pytest.approx(1.0, abs=1e-4)  # now above the centre


@pytest.mark.parametrize('rotate, shear, zoom', [(15.0, 3.0, 1.1), (-15.0, -3.0, 0.9)])
def test_rotation_zoom_and_shear_fix_the_image_centre(rotate, shear, zoom):
  image = np.zeros((33, 33, 3), np.float32)
  image[16, 16] = 1.0
  out = _affine_transform(jnp.asarray(image), augment.affine_matrix(rotate, shear, zoom),
                          jnp.zeros(2))
  np.testing.assert_allclose(np.asarray(out[16, 16]), 1.0, atol=1e-5)


def test_per_image_rotation_zoom_and_shear_only_keep_a_centred_blob_centred():
  image = bright_square(top=13, left=13, size=6)  # centred on (15.5, 15.5)
  config = only('per_image', rotate_deg=15.0, zoom=0.1, shear_deg=3.0)
  out = _augment_batch(jax.random.PRNGKey(0), jnp.broadcast_to(image, (B, H, W, 3)), config)
  for o in out:
    np.testing.assert_allclose(centre_of_mass(o), [15.5, 15.5], atol=0.05)
  assert float(jnp.abs(out - image).max()) > 0.1


def test_geometry_fills_outside_with_nearest_edge_pixels():
  # A horizontal ramp shifted right: the uncovered left columns repeat the edge value 0.
  ramp = jnp.broadcast_to(jnp.linspace(0.0, 1.0, W)[None, :, None], (H, W, 3))
  out = _affine_transform(ramp, jnp.eye(2), jnp.asarray([3.0, 0.0]))
  np.testing.assert_allclose(np.asarray(out[:, :4]), 0.0, atol=1e-6)
  np.testing.assert_allclose(np.asarray(out[:, 3:]), np.asarray(ramp[:, :-3]), atol=1e-6)


def test_per_image_brightness_only_shifts_mid_grey_uniformly_within_0_2():
  images = jnp.full((B, H, W, 3), 0.5, jnp.float32)
  out = _augment_batch(jax.random.PRNGKey(0), images, only('per_image', brightness=0.2))
  deltas = np.asarray(out.mean((1, 2, 3))) - 0.5
  assert np.abs(deltas).max() <= 0.2 + 1e-6
  assert np.abs(deltas).max() > 0.1 and deltas.min() < 0 < deltas.max()
  out = np.asarray(out)  # a uniform shift: every pixel of an image moved alike
  np.testing.assert_allclose(out, np.broadcast_to(out[:, :1, :1, :1], out.shape), atol=1e-6)


def test_per_image_contrast_only_keeps_the_per_channel_mean_and_scales_within_range():
  images = 0.4 + 0.2 * random_images(0)  # in [0.4, 0.6]: no clipping at factors <= 1.5
  out = _augment_batch(jax.random.PRNGKey(1), images, only('per_image', contrast=(0.5, 1.5)))
  np.testing.assert_allclose(np.asarray(out.mean((1, 2))), np.asarray(images.mean((1, 2))),
                             atol=1e-5)
  ratio = out.std((1, 2)) / images.std((1, 2))
  assert float(ratio.min()) >= 0.5 - 1e-4 and float(ratio.max()) <= 1.5 + 1e-4
  assert float(ratio.max() - ratio.min()) > 0.2


def constant_colour_images(rgb) -> jax.Array:
  return jnp.broadcast_to(jnp.asarray(rgb, jnp.float32), (B, H, W, 3))


def test_per_image_hue_only_rotates_hue_within_0_08_turn_keeping_saturation_and_value():
  images = constant_colour_images([0.8, 0.5, 0.4])  # h = 1/24, s = 0.5, v = 0.8
  out = _augment_batch(jax.random.PRNGKey(3), images, only('per_image', hue=0.08))
  before = np.asarray(_rgb_to_hsv(images[:, 0, 0]))
  after = np.asarray(_rgb_to_hsv(out[:, 0, 0]))
  dh = (after[:, 0] - before[:, 0] + 0.5) % 1.0 - 0.5
  assert np.abs(dh).max() <= 0.08 + 1e-5 and np.abs(dh).max() > 0.02
  np.testing.assert_allclose(after[:, 1:], before[:, 1:], atol=1e-5)


def test_per_image_saturation_only_scales_saturation_within_range_keeping_hue_and_value():
  images = constant_colour_images([0.8, 0.5, 0.4])  # s = 0.5: x1.5 stays below 1
  out = _augment_batch(jax.random.PRNGKey(4), images, only('per_image', saturation=(0.3, 1.5)))
  before = np.asarray(_rgb_to_hsv(images[:, 0, 0]))
  after = np.asarray(_rgb_to_hsv(out[:, 0, 0]))
  ratio = after[:, 1] / before[:, 1]
  assert ratio.min() >= 0.3 - 1e-5 and ratio.max() <= 1.5 + 1e-5
  assert ratio.max() - ratio.min() > 0.3
  np.testing.assert_allclose(after[:, [0, 2]], before[:, [0, 2]], atol=1e-5)


@pytest.mark.parametrize('mode', MODES)
def test_hue_and_saturation_only_keep_the_value_channel(mode):
  images = random_images(0)
  out = _augment_batch(jax.random.PRNGKey(2), images,
                       only(mode, hue=0.08, saturation=(0.3, 1.5)))
  np.testing.assert_allclose(np.asarray(out.max(-1)), np.asarray(images.max(-1)), atol=1e-5)
  assert float(jnp.abs(out - images).max()) > 0.05


@pytest.mark.parametrize('mode', MODES)
def test_grey_images_stay_grey_without_noise(mode):
  grey = jnp.broadcast_to(random_images(0)[..., :1], (B, H, W, 3))
  config = dataclasses.replace(MODES[mode], noise_std_max=0.0)
  out = _augment_batch(jax.random.PRNGKey(0), grey, config)
  np.testing.assert_allclose(np.asarray(out[..., 0]), np.asarray(out[..., 1]), atol=1e-6)
  np.testing.assert_allclose(np.asarray(out[..., 0]), np.asarray(out[..., 2]), atol=1e-6)
  assert float(out.min()) >= 0.0 and float(out.max()) <= 1.0


def test_per_image_noise_only_has_zero_mean_and_std_at_most_0_03():
  images = jnp.full((B, H, W, 3), 0.5, jnp.float32)
  out = _augment_batch(jax.random.PRNGKey(0), images, only('per_image', noise_std_max=0.03))
  residual = np.asarray(out - images)
  stds = residual.std((1, 2, 3))
  assert stds.max() <= 0.03 * 1.05 and stds.max() > 0.015
  assert abs(residual.mean()) < 1e-3
  assert np.abs(residual.mean((1, 2, 3))).max() < 4 * 0.03 / np.sqrt(H * W * 3)


# ---------------------------------------------------------------------------------------------
# 'original' mode: the parameter draws.

N_BATCHES = 2000
SMALL = (B, 2, 2, 3)  # parameter statistics only: keep the noise array small


@functools.partial(jax.jit, static_argnums=1)
def _draws(keys, shape, config):
  return jax.vmap(augment.draw_params, in_axes=(0, None, None))(keys, shape, config)


def many_draws(seed: int = 0, config=augment.AugmentConfig()) -> dict:
  keys = jax.random.split(jax.random.PRNGKey(seed), N_BATCHES)
  p = _draws(keys, SMALL, config)
  return {f.name: np.asarray(getattr(p, f.name)) for f in dataclasses.fields(p)}


def assert_uniform(x: np.ndarray, lo: float, hi: float):
  """x (many samples) ~ U(lo, hi): inside, reaching both ends, mean and variance right."""
  x = x.ravel()
  width = hi - lo
  assert x.min() >= lo - 1e-6 and x.max() <= hi + 1e-6
  assert x.min() < lo + 0.01 * width and x.max() > hi - 0.01 * width
  assert abs(x.mean() - (lo + hi) / 2) < 5 * width / np.sqrt(12 * x.size)
  np.testing.assert_allclose(x.var(), width ** 2 / 12, rtol=0.1)


def test_original_draw_shapes_geometry_per_image_colour_per_batch():
  p = augment.draw_params(jax.random.PRNGKey(0), (B, H, W, 3), augment.AugmentConfig())
  for name in ('tx', 'ty', 'rotate', 'zoom', 'shear_x', 'shear_y'):
    assert getattr(p, name).shape == (B,), name
  for name in ('brightness', 'contrast', 'hue', 'saturation', 'noise_std'):
    assert getattr(p, name).shape == (), name
  assert p.noise.shape == (B, H, W, 3)


def test_original_colour_parameters_are_one_per_batch_and_vary_across_batches():
  d = many_draws()
  for name in ('brightness', 'contrast', 'hue', 'saturation', 'noise_std'):
    assert d[name].shape == (N_BATCHES,), name  # one scalar per batch
  assert_uniform(d['brightness'], -0.2, 0.2)
  assert_uniform(d['contrast'], 0.5, 1.5)
  assert_uniform(d['hue'], -0.08, 0.08)
  assert_uniform(d['saturation'], 0.3, 1.5)
  assert_uniform(d['noise_std'], 0.0, 0.03)
  # Independent of each other.
  c = np.corrcoef(np.stack([d[n] for n in ('brightness', 'contrast', 'hue', 'saturation',
                                           'noise_std')]))
  assert np.abs(c - np.eye(5)).max() < 0.1


def test_original_geometry_parameters_are_per_image_within_their_ranges():
  d = many_draws()
  deg = np.pi / 180
  ranges = {'tx': (-3, 3), 'ty': (-3, 3), 'rotate': (-15 * deg, 15 * deg),
            'zoom': (1 - 0.099, 1 + 0.099), 'shear_x': (-3 * deg, 3 * deg),
            'shear_y': (-3 * deg, 3 * deg)}
  for name, (lo, hi) in ranges.items():
    x = d[name]
    assert x.shape == (N_BATCHES, B), name
    assert_uniform(x, lo, hi)
    # Different images of a batch get different values, spread as much as across batches.
    assert np.all(x.std(axis=1) > 0), name
    np.testing.assert_allclose(x.std(axis=1).mean() ** 2 * B / (B - 1), (hi - lo) ** 2 / 12,
                               rtol=0.1)
  g = np.stack([d[n].ravel() for n in ranges])
  assert np.abs(np.corrcoef(g) - np.eye(6)).max() < 0.05  # hx and hy included: independent


def test_original_noise_is_standard_normal_and_independent_of_the_parameters():
  n = many_draws()['noise']
  assert abs(n.mean()) < 5 / np.sqrt(n.size)
  np.testing.assert_allclose(n.std(), 1.0, rtol=0.01)
  assert abs(float(np.mean(n ** 4)) - 3.0) < 0.1  # Gaussian kurtosis


def test_original_draw_ranges_follow_the_config():
  config = dataclasses.replace(augment.AugmentConfig(), translate_px=1.0, rotate_deg=5.0,
                               zoom=0.5, shear_deg=10.0, brightness=0.1, contrast=(0.9, 1.0),
                               hue=0.25, saturation=(2.0, 3.0), noise_std_max=0.5)
  d = many_draws(1, config)
  deg = np.pi / 180
  assert_uniform(d['tx'], -1, 1)
  assert_uniform(d['rotate'], -5 * deg, 5 * deg)
  assert_uniform(d['zoom'], 0.5, 1.5)
  assert_uniform(d['shear_y'], -10 * deg, 10 * deg)
  assert_uniform(d['brightness'], -0.1, 0.1)
  assert_uniform(d['contrast'], 0.9, 1.0)
  assert_uniform(d['hue'], -0.25, 0.25)
  assert_uniform(d['saturation'], 2.0, 3.0)
  assert_uniform(d['noise_std'], 0.0, 0.5)


def test_original_augment_batch_is_apply_of_draw():
  images = random_images(0)
  key = jax.random.PRNGKey(4)
  config = augment.AugmentConfig()
  expected = jax.jit(augment.apply_params)(
      images, augment.draw_params(key, images.shape, config))
  np.testing.assert_allclose(np.asarray(_augment_batch(key, images, config)),
                             np.asarray(expected), atol=1e-5)


# ---------------------------------------------------------------------------------------------
# 'original' mode: geometry against a direct evaluation of the original's formula.


def formula_transform(tx, ty, r, z, hx, hy, sx=32.0, sy=32.0) -> np.ndarray:
  """classifier.py's m1..m6 in float64, written out as in the original."""
  a, b, c, d = hx - r, np.cos(hx), hy + r, np.cos(hy)
  return np.array([
      z * np.cos(a) / b,
      z * np.sin(a) / b,
      (sx * b - sx * z * np.cos(a) + 2 * tx * z * np.cos(a) - sy * z * np.sin(a)
       + 2 * ty * z * np.sin(a)) / (2 * b),
      z * np.sin(c) / d,
      z * np.cos(c) / d,
      (sy * d - sy * z * np.cos(c) + 2 * ty * z * np.cos(c) - sx * z * np.sin(c)
       + 2 * tx * z * np.sin(c)) / (2 * d),
      0.0, 0.0])


def reference_transform(image: np.ndarray, m: np.ndarray) -> np.ndarray:
  """tf.contrib.image.transform (BILINEAR) of [H, W, C], pixel by pixel as TF's kernel does it."""
  h, w, _ = image.shape

  def read(y, x):
    return image[y, x] if 0 <= y < h and 0 <= x < w else 0.0

  out = np.zeros_like(image, dtype=np.float64)
  for y in range(h):
    for x in range(w):
      k = m[6] * x + m[7] * y + 1.0
      xi = (m[0] * x + m[1] * y + m[2]) / k
      yi = (m[3] * x + m[4] * y + m[5]) / k
      x0, y0 = int(np.floor(xi)), int(np.floor(yi))
      top = (x0 + 1 - xi) * read(y0, x0) + (xi - x0) * read(y0, x0 + 1)
      bottom = (x0 + 1 - xi) * read(y0 + 1, x0) + (xi - x0) * read(y0 + 1, x0 + 1)
      out[y, x] = (y0 + 1 - yi) * top + (yi - y0) * bottom
  return out


_transform = jax.jit(augment.projective_transform)
_original_transform = jax.jit(augment.original_transform, static_argnames=('width', 'height'))


def original_warp(image, tx=0.0, ty=0.0, r=0.0, z=1.0, hx=0.0, hy=0.0):
  m = _original_transform(*(jnp.float32(v) for v in (tx, ty, r, z, hx, hy)))
  return np.asarray(_transform(jnp.asarray(image), m))


def test_original_transform_is_the_formula():
  rng = np.random.default_rng(0)
  for _ in range(20):
    p = rng.uniform([-3, -3, -0.3, 0.9, -0.06, -0.06], [3, 3, 0.3, 1.1, 0.06, 0.06])
    got = np.asarray(_original_transform(*(jnp.float32(v) for v in p)))
    np.testing.assert_allclose(got, formula_transform(*p), atol=2e-5)
  p = (1.0, -2.0, 0.2, 1.05, 0.03, -0.04)
  got = augment.original_transform(*(jnp.float32(v) for v in p), width=40, height=24)
  np.testing.assert_allclose(np.asarray(got), formula_transform(*p, sx=40.0, sy=24.0),
                             atol=2e-5)


def test_original_transform_of_neutral_parameters_is_the_identity():
  m = np.asarray(_original_transform(*(jnp.float32(v) for v in (0, 0, 0, 1, 0, 0))))
  np.testing.assert_array_equal(m, [1, 0, 0, 0, 1, 0, 0, 0])
  image = np.asarray(random_images(0, 1)[0])
  np.testing.assert_array_equal(original_warp(image), image)


def test_original_translation_tx_1_moves_content_one_column_left_with_zero_fill():
  image = np.asarray(random_images(0, 1)[0])
  out = original_warp(image, tx=1.0)  # output (x, y) reads input (x + 1, y)
  np.testing.assert_allclose(out[:, :-1], image[:, 1:], atol=1e-6)
  np.testing.assert_array_equal(out[:, -1], 0.0)
  out = original_warp(image, ty=-2.0)  # output (x, y) reads input (x, y - 2): down 2 rows
  np.testing.assert_allclose(out[2:], image[:-2], atol=1e-6)
  np.testing.assert_array_equal(out[:2], 0.0)


def test_original_half_pixel_translation_blends_with_the_zero_fill_at_the_border():
  image = np.asarray(random_images(0, 1)[0])
  out = original_warp(image, tx=0.5)
  np.testing.assert_allclose(out[:, :-1], 0.5 * (image[:, :-1] + image[:, 1:]), atol=1e-6)
  np.testing.assert_allclose(out[:, -1], 0.5 * image[:, -1], atol=1e-6)


def test_original_rotation_of_90_degrees_about_pixel_16_16():
  image = np.asarray(random_images(0, 1)[0])
  out = original_warp(image, r=np.pi / 2)  # output (x, y) reads input (32 - y, x)
  rows, cols = np.indices((H, W))
  expected = np.where((32 - rows < W)[..., None], image[cols, np.minimum(32 - rows, W - 1)],
                      0.0)
  np.testing.assert_allclose(out, expected, atol=1e-5)


@pytest.mark.parametrize('r, z, hx, hy', [(0.26, 1.099, 0.05, -0.05), (-0.26, 0.901, -0.05, 0.02)])
def test_original_rotation_zoom_and_shear_fix_pixel_16_16_not_15_5(r, z, hx, hy):
  image = np.zeros((H, W, 3), np.float32)
  image[16, 16] = 1.0
  out = original_warp(image, r=r, z=z, hx=hx, hy=hy)
  np.testing.assert_allclose(out[16, 16], 1.0, atol=1e-5)


def test_original_translation_shifts_the_output_by_minus_t_whatever_the_rest():
  # input = M (out - c + t) + c: out(p) = ref(p + t), ref the same map without translation.
  image = np.asarray(random_images(0, 1)[0])
  out = original_warp(image, tx=2.0, ty=-1.0, r=0.2, z=1.05, hx=0.04, hy=-0.03)
  ref = original_warp(image, r=0.2, z=1.05, hx=0.04, hy=-0.03)
  np.testing.assert_allclose(out[1:, :-2], ref[:-1, 2:], atol=1e-5)


def test_original_geometry_matches_a_pixel_by_pixel_evaluation_of_the_formula():
  rng = np.random.default_rng(1)
  image = np.asarray(random_images(3, 1)[0])
  for _ in range(3):
    p = rng.uniform([-3, -3, -0.26, 0.901, -0.052, -0.052], [3, 3, 0.26, 1.099, 0.052, 0.052])
    np.testing.assert_allclose(original_warp(image, *p),
                               reference_transform(image, formula_transform(*p)), atol=2e-5)


def test_projective_transform_divides_by_k_as_tf():
  image = np.asarray(random_images(0, 1, 8, 8)[0])
  m = np.array([0.9, 0.1, 0.5, -0.05, 1.1, 0.3, 0.01, -0.02])
  np.testing.assert_allclose(np.asarray(_transform(jnp.asarray(image), jnp.asarray(m))),
                             reference_transform(image, m), atol=2e-5)


# ---------------------------------------------------------------------------------------------
# 'original' mode: colour as TF's kernels, and the whole pipeline.


def tf_rgb_to_hsv(rgb: np.ndarray):
  """TF's AdjustSaturation kernel's rgb_to_hsv, vectorised."""
  r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
  vv = rgb.max(-1)
  rng = vv - rgb.min(-1)
  s = np.where(vv > 0, rng / np.where(vv > 0, vv, 1.0), 0.0)
  with np.errstate(divide='ignore', invalid='ignore'):
    norm = 1.0 / (6.0 * rng)
    hh = np.where(r == vv, norm * (g - b),
                  np.where(g == vv, norm * (b - r) + 2 / 6, norm * (r - g) + 4 / 6))
  hh = np.where(rng <= 0, 0.0, hh)
  return np.where(hh < 0, hh + 1, hh), s, vv


def tf_hsv_to_rgb(h, s, v) -> np.ndarray:
  """TF's AdjustSaturation kernel's hsv_to_rgb (category switch), vectorised."""
  c = s * v
  m = v - c
  dh = h * 6
  cat = np.trunc(dh).astype(int)
  x = c * (1 - np.abs(np.mod(dh, 2.0) - 1))
  zero = np.zeros_like(c)
  table = {0: (c, x, zero), 1: (x, c, zero), 2: (zero, c, x), 3: (zero, x, c),
           4: (x, zero, c), 5: (c, zero, x)}
  rgb = [np.select([cat == k for k in table], [table[k][i] for k in table], 0.0)
         for i in range(3)]
  return np.stack(rgb, -1) + m[..., None]


def tf_adjust_hue_cpu(rgb: np.ndarray, delta: float) -> np.ndarray:
  """TF's AdjustHue CPU kernel: hue in [0, 6) with the pixel's min and max kept."""
  r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
  conds = [(r < g) & (b < r), (r < g) & (b > g), r < g, b < g, b > r, np.ones_like(r, bool)]
  cats = [1, 3, 2, 0, 4, 5]
  vmax = np.select(conds, [g, b, g, r, b, r])
  vmid = np.select(conds, [r, g, b, g, r, b])
  vmin = np.select(conds, [b, r, r, b, g, g])
  cat = np.select(conds, cats)
  with np.errstate(divide='ignore', invalid='ignore'):
    ratio = (vmid - vmin) / (vmax - vmin)
  h = np.where(vmax == vmin, 0.0, cat + np.where(cat % 2 == 0, ratio, 1 - ratio))
  h = np.mod(h + delta * 6, 6.0)
  cat = h.astype(int)
  ratio = h - cat
  ratio = np.where(cat % 2 == 0, ratio, 1 - ratio)
  vmid = vmin + ratio * (vmax - vmin)
  table = {0: (vmax, vmid, vmin), 1: (vmid, vmax, vmin), 2: (vmin, vmax, vmid),
           3: (vmin, vmid, vmax), 4: (vmid, vmin, vmax), 5: (vmax, vmin, vmid)}
  return np.stack([np.select([cat == k for k in table], [table[k][i] for k in table])
                   for i in range(3)], -1)


def tf_adjust_hue_gpu(rgb: np.ndarray, delta: float) -> np.ndarray:
  """TF's GPU AdjustHue (adjust_hsv_gpu.cu.h): through HSV, s = 0 where max <= 0."""
  h, s, v = tf_rgb_to_hsv(rgb)
  return tf_hsv_to_rgb(np.mod(h + delta, 1.0), s, v)


def tf_adjust_saturation(rgb: np.ndarray, factor: float) -> np.ndarray:
  h, s, v = tf_rgb_to_hsv(rgb)
  return tf_hsv_to_rgb(h, np.clip(s * factor, 0.0, 1.0), v)


_hue_saturation = jax.jit(augment._hue_saturation)


def test_hue_of_values_outside_the_unit_range_as_tf_documents_it():
  # tf.image.adjust_hue's documented example: [1, 2, 3] shifted by 0.2 -> [2.4, 1, 3].
  out = _hue_saturation(jnp.asarray([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]]), 0.2, 1.0)
  np.testing.assert_allclose(np.asarray(out), [[2.4, 1.0, 3.0], [5.4, 4.0, 6.0]], atol=1e-5)


@pytest.mark.parametrize('tf_hue', [tf_adjust_hue_cpu, tf_adjust_hue_gpu])
def test_one_hsv_round_trip_equals_tf_hue_then_tf_saturation_on_any_floats(tf_hue):
  rng = np.random.default_rng(0)
  rgb = rng.uniform(-0.6, 1.6, (4000, 3)).astype(np.float32)
  rgb[:200] = rng.uniform(-0.6, 0.0, (200, 3))  # max <= 0
  rgb[200:300, 1] = rgb[200:300, 0]  # ties
  rgb[300:400] = rgb[300:400, :1]  # grey
  for delta, factor in [(0.07, 1.4), (-0.08, 0.3), (0.0, 1.0), (0.03, 0.8)]:
    expected = tf_adjust_saturation(tf_hue(rgb.astype(np.float64), delta), factor)
    got = np.asarray(_hue_saturation(jnp.asarray(rgb), delta, factor))
    np.testing.assert_allclose(got, expected, atol=2e-5)


def reference_original(images: np.ndarray, p: augment.BatchParams) -> np.ndarray:
  """classifier.py's augmentation in numpy float64, step by step as TF does it."""
  p = jax.tree_util.tree_map(lambda a: np.asarray(a, np.float64), p)
  x = np.stack([reference_transform(
      img, formula_transform(p.tx[i], p.ty[i], p.rotate[i], p.zoom[i], p.shear_x[i],
                             p.shear_y[i])) for i, img in enumerate(images)])
  x = x + p.brightness  # random_brightness
  mean = x.mean(axis=(1, 2), keepdims=True)
  x = (x - mean) * p.contrast + mean  # random_contrast
  x = tf_adjust_hue_cpu(x, p.hue)  # random_hue
  x = tf_adjust_saturation(x, p.saturation)  # random_saturation
  x = x + p.noise_std * p.noise
  return np.clip(x, 0.0, 1.0)


_apply_params = jax.jit(augment.apply_params)


def test_original_pipeline_matches_tf_step_by_step_including_out_of_range_values():
  images = np.asarray(random_images(5, 3))
  key = jax.random.PRNGKey(2)
  p = augment.draw_params(key, images.shape, augment.AugmentConfig())
  # Strong colour changes that push values outside [0, 1] before the HSV steps.
  p = dataclasses.replace(p, brightness=jnp.float32(-0.19), contrast=jnp.float32(1.45),
                          hue=jnp.float32(0.07), saturation=jnp.float32(1.3),
                          noise_std=jnp.float32(0.02))
  got = np.asarray(_apply_params(jnp.asarray(images), p))
  np.testing.assert_allclose(got, reference_original(images, p), atol=5e-5)
  # With other draws as they come.
  p = augment.draw_params(jax.random.PRNGKey(3), images.shape, augment.AugmentConfig())
  np.testing.assert_allclose(np.asarray(_apply_params(jnp.asarray(images), p)),
                             reference_original(images, p), atol=5e-5)


def test_original_does_not_clip_between_contrast_and_hue():
  # (0.1, 0.3, 0.5) - 0.2 = (-0.1, 0.1, 0.3): v = 0.3, s = 4/3, hue halfway from blue to cyan.
  # TF's saturation step (factor 1) clips s to 1, keeping hue and v: (0, 0.15, 0.3). Clipping
  # to [0, 1] before HSV would give (0, 0.1, 0.3) instead.
  images = jnp.broadcast_to(jnp.asarray([0.1, 0.3, 0.5], jnp.float32), (1, H, W, 3))
  p = augment.draw_params(jax.random.PRNGKey(0), images.shape, IDENTITY)
  p = dataclasses.replace(p, brightness=jnp.float32(-0.2))
  out = np.asarray(_apply_params(images, p))[0, 5, 5]
  np.testing.assert_allclose(out, [0.0, 0.15, 0.3], atol=1e-6)
  tf = tf_adjust_saturation(tf_adjust_hue_cpu(np.asarray([[-0.1, 0.1, 0.3]]), 0.0), 1.0)
  np.testing.assert_allclose(tf[0], [0.0, 0.15, 0.3], atol=1e-12)


def test_original_output_is_clipped_to_the_unit_range():
  images = jnp.concatenate([jnp.full((1, H, W, 3), 0.9), jnp.full((1, H, W, 3), 0.05)])
  p = augment.draw_params(jax.random.PRNGKey(0), images.shape, IDENTITY)
  up = np.asarray(_apply_params(images, dataclasses.replace(p, brightness=jnp.float32(0.2))))
  np.testing.assert_array_equal(up[0], 1.0)
  np.testing.assert_allclose(up[1], 0.25, atol=1e-6)
  down = np.asarray(_apply_params(images, dataclasses.replace(p, brightness=jnp.float32(-0.2))))
  np.testing.assert_array_equal(down[1], 0.0)
  noisy = np.asarray(_apply_params(images, dataclasses.replace(p, noise_std=jnp.float32(0.5))))
  assert noisy.min() == 0.0 and noisy.max() == 1.0


# ---------------------------------------------------------------------------------------------
# 'original' mode: per-batch colour and noise seen in the output.


def test_original_colour_only_treats_every_image_of_a_batch_alike():
  images = jnp.broadcast_to(random_images(0, 1), (B, H, W, 3))
  config = only(brightness=0.2, contrast=(0.5, 1.5), hue=0.08, saturation=(0.3, 1.5))
  a = np.asarray(_augment_batch(jax.random.PRNGKey(0), images, config))
  np.testing.assert_allclose(a, np.broadcast_to(a[:1], a.shape), atol=1e-6)
  b = np.asarray(_augment_batch(jax.random.PRNGKey(1), images, config))
  assert np.abs(a - b).max() > 0.05  # another batch, other parameters


def test_original_geometry_only_differs_between_images_of_a_batch():
  images = jnp.broadcast_to(random_images(0, 1), (B, H, W, 3))
  out = np.asarray(_augment_batch(jax.random.PRNGKey(0), images,
                                  only(translate_px=3.0, rotate_deg=15.0, zoom=0.099,
                                       shear_deg=3.0)))
  for i in range(1, B):
    assert np.abs(out[i] - out[0]).max() > 0.05


def test_original_brightness_only_shifts_a_whole_batch_by_one_delta():
  images = jnp.full((B, H, W, 3), 0.5, jnp.float32)
  deltas = []
  for seed in range(6):
    out = np.asarray(_augment_batch(jax.random.PRNGKey(seed), images, only(brightness=0.2)))
    np.testing.assert_allclose(out, out[0, 0, 0, 0], atol=1e-6)
    deltas.append(out[0, 0, 0, 0] - 0.5)
  assert max(np.abs(deltas)) <= 0.2 + 1e-6 and np.ptp(deltas) > 0.05


def test_original_noise_only_has_one_std_per_batch():
  images = jnp.full((B, H, W, 3), 0.5, jnp.float32)
  stds = []
  for seed in range(6):
    residual = np.asarray(_augment_batch(jax.random.PRNGKey(seed), images,
                                         only(noise_std_max=0.03))) - 0.5
    per_image = residual.std((1, 2, 3))
    # One std: the images' sample stds agree to sampling error (H·W·3 = 3072 values each).
    np.testing.assert_allclose(per_image, per_image.mean(), rtol=6 / np.sqrt(2 * H * W * 3))
    assert abs(residual.mean()) < 1e-3
    stds.append(per_image.mean())
  assert max(stds) <= 0.03 * 1.05 and np.ptp(stds) > 0.005
