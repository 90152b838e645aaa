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
