"""Tests of nws_jax.datasets: offline sets, preprocessing, and the TFDS path on mock data."""

import contextlib
from unittest import mock

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import tensorflow_datasets as tfds
from sklearn.datasets import load_digits
from tensorflow_datasets.testing import mocking

from nws_jax import datasets
from nws_jax.datasets import preprocess

GENERATED = ('shapes', 'gratings')
SMALL = dict(num_train=1000, num_test=200)  # generated sets: 900 train / 100 valid / 200 test


def _small(name, seed=0):
  return datasets.load(name, seed=seed, **({} if name == 'digits' else SMALL))


def _arrays(d):
  return (d.train_images, d.train_labels, d.valid_images, d.valid_labels, d.test_images,
          d.test_labels)


def _all_labels(d):
  return np.concatenate([d.train_labels, d.valid_labels, d.test_labels])


# ---------------------------------------------------------------------------------------------
# API


def test_public_names():
  assert datasets.OFFLINE_NAMES == ('digits', 'shapes', 'gratings')
  assert datasets.TFDS_NAMES == {'mnist': 'mnist', 'fashion': 'fashion_mnist',
                                 'cifar10': 'cifar10', 'svhn': 'svhn_cropped', 'stl10': 'stl10'}
  assert datasets.ALL_NAMES == datasets.OFFLINE_NAMES + tuple(datasets.TFDS_NAMES)
  assert issubclass(datasets.DatasetError, ValueError)


def test_unknown_name_raises_dataset_error_listing_the_names():
  with pytest.raises(datasets.DatasetError, match=r"unknown dataset 'foo'; choose from: "
                     r"digits, shapes, gratings, mnist, fashion, cifar10, svhn, stl10$"):
    datasets.load('foo')


def test_non_positive_num_train_is_rejected():
  with pytest.raises(ValueError, match='num_train'):
    datasets.load('shapes', num_train=0)


def test_dataset_is_frozen():
  d = _small('shapes')
  with pytest.raises(AttributeError):
    d.name = 'other'


# ---------------------------------------------------------------------------------------------
# offline sets


@pytest.mark.parametrize('name', datasets.OFFLINE_NAMES)
def test_offline_images_are_uint8_32x32x3_and_labels_int32(name):
  d = _small(name)
  assert d.name == name
  for images, labels in ((d.train_images, d.train_labels), (d.valid_images, d.valid_labels),
                         (d.test_images, d.test_labels)):
    assert images.dtype == np.uint8 and images.shape == (len(labels), 32, 32, 3)
    assert labels.dtype == np.int32 and labels.ndim == 1


@pytest.mark.parametrize('name', datasets.OFFLINE_NAMES)
def test_offline_labels_cover_exactly_classes_0_to_9_in_every_split(name):
  d = _small(name)
  for labels in (d.train_labels, d.valid_labels, d.test_labels):
    assert set(np.unique(labels)) == set(range(10))


@pytest.mark.parametrize('name', GENERATED)
def test_generated_split_sizes_are_90_10_of_num_train(name):
  d = datasets.load(name, num_train=1000, num_test=200)
  assert (len(d.train_labels), len(d.valid_labels), len(d.test_labels)) == (900, 100, 200)


@pytest.mark.parametrize('name', GENERATED)
def test_generated_default_sizes_are_6000_train_and_1000_test(name):
  d = datasets.load(name)
  assert (len(d.train_labels), len(d.valid_labels), len(d.test_labels)) == (5400, 600, 1000)


@pytest.mark.parametrize('name', GENERATED)
def test_generated_classes_are_balanced(name):
  d = datasets.load(name, num_train=1000, num_test=200)
  train_pool = np.concatenate([d.train_labels, d.valid_labels])
  assert np.all(np.bincount(train_pool, minlength=10) == 100)
  assert np.all(np.bincount(d.test_labels, minlength=10) == 20)


@pytest.mark.parametrize('name', datasets.OFFLINE_NAMES)
def test_offline_same_seed_gives_bit_identical_arrays(name):
  for a, b in zip(_arrays(_small(name, seed=3)), _arrays(_small(name, seed=3))):
    np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize('name', datasets.OFFLINE_NAMES)
def test_offline_different_seed_gives_different_arrays(name):
  a, b = _small(name, seed=0), _small(name, seed=1)
  assert not np.array_equal(a.train_images, b.train_images)
  assert not np.array_equal(a.valid_images, b.valid_images)
  assert not np.array_equal(a.test_images, b.test_images)


@pytest.mark.parametrize('name', GENERATED)
def test_generated_train_images_do_not_depend_on_num_test(name):
  a = datasets.load(name, num_train=500, num_test=100)
  b = datasets.load(name, num_train=500, num_test=300)
  np.testing.assert_array_equal(a.train_images, b.train_images)


def test_offline_sets_have_distinct_per_channel_mean_and_std():
  stats = {}
  for name in datasets.OFFLINE_NAMES:
    x = _small(name).train_images.reshape(-1, 3).astype(np.float64)
    stats[name] = np.concatenate([x.mean(0), x.std(0)])  # 0..255 units
  names = list(stats)
  for i, a in enumerate(names):
    for b in names[i + 1:]:
      assert np.max(np.abs(stats[a] - stats[b])) > 15, (a, b, stats[a], stats[b])


def test_only_digits_is_grey():
  for name in datasets.OFFLINE_NAMES:
    x = _small(name).train_images
    grey = np.array_equal(x[..., 0], x[..., 1]) and np.array_equal(x[..., 1], x[..., 2])
    assert grey == (name == 'digits'), name


# ---------------------------------------------------------------------------------------------
# digits: real data


def test_digits_are_all_of_sklearns_digits_each_exactly_once():
  """Every image is sklearn's image (upsampled independently with jax.image.resize, L-inf <= 1)
  with its label, and train + valid + test are a partition of the 1797 digits."""
  ref = load_digits()
  ref_up = jax.image.resize(jnp.asarray(ref.images[..., None] * 255 / 16, jnp.float32),
                            (len(ref.images), 32, 32, 1), 'bilinear')
  ref_up = np.clip(np.rint(np.asarray(ref_up)), 0, 255).reshape(len(ref.images), -1)
  d = datasets.load('digits', seed=5)
  ours = np.concatenate([d.train_images, d.valid_images, d.test_images])[..., 0]
  ours = ours.reshape(len(ours), -1).astype(np.float64)
  dist = (ours ** 2).sum(1)[:, None] + (ref_up ** 2).sum(1)[None, :] - 2 * ours @ ref_up.T
  match = dist.argmin(1)
  assert len(ours) == 1797 and len(set(match)) == 1797
  assert np.abs(ours - ref_up[match]).max() <= 1
  np.testing.assert_array_equal(_all_labels(d), ref.target[match])


def test_digits_default_split_is_stratified_80_20_then_90_10():
  d = datasets.load('digits')
  counts = np.bincount(d.test_labels, minlength=10)
  ref_counts = np.bincount(load_digits().target, minlength=10)
  np.testing.assert_array_equal(counts, np.round(0.2 * ref_counts))
  n_train_pool = 1797 - len(d.test_labels)
  assert len(d.valid_labels) == preprocess.num_valid(n_train_pool) == 144
  assert len(d.train_labels) == n_train_pool - 144


def test_digits_num_train_above_available_gives_all_real_images():
  d = datasets.load('digits', num_train=100_000, num_test=100_000)
  assert len(_all_labels(d)) == 1797


def test_digits_caps_num_train_and_num_test():
  d = datasets.load('digits', num_train=500, num_test=100)
  assert (len(d.train_labels), len(d.valid_labels), len(d.test_labels)) == (450, 50, 100)


# ---------------------------------------------------------------------------------------------
# preprocessing


@pytest.mark.parametrize('in_size', [8, 28])
def test_bilinear_resize_matches_jax_image_resize(in_size):
  x = np.random.default_rng(0).integers(0, 256, (4, in_size, in_size, 1)).astype(np.uint8)
  ours = preprocess.resize_float(x, 'bilinear')
  ref = jax.image.resize(jnp.asarray(x, jnp.float32), (4, 32, 32, 1), 'bilinear')
  np.testing.assert_allclose(ours, np.asarray(ref), atol=1e-3)


def test_area_resize_96_to_32_is_3x3_block_mean():
  x = np.random.default_rng(0).integers(0, 256, (2, 96, 96, 3)).astype(np.uint8)
  block_mean = x.reshape(2, 32, 3, 32, 3, 3).mean(axis=(2, 4))
  np.testing.assert_allclose(preprocess.resize_float(x, 'area'), block_mean, atol=1e-9)


def test_to_rgb32_resizes_grey_and_repeats_it_over_3_channels():
  x = np.random.default_rng(0).integers(0, 256, (5, 28, 28, 1)).astype(np.uint8)
  out = preprocess.to_rgb32(x)
  assert out.shape == (5, 32, 32, 3) and out.dtype == np.uint8
  np.testing.assert_array_equal(out[..., 0], out[..., 2])
  expected = preprocess.to_uint8(preprocess.resize_float(x, 'bilinear'))[..., 0]
  np.testing.assert_array_equal(out[..., 1], expected)


def test_to_rgb32_keeps_32x32_colour_images_unchanged():
  x = np.random.default_rng(0).integers(0, 256, (3, 32, 32, 3)).astype(np.uint8)
  np.testing.assert_array_equal(preprocess.to_rgb32(x), x)


def test_to_rgb32_processes_in_chunks_like_all_at_once(monkeypatch):
  x = np.random.default_rng(0).integers(0, 256, (10, 28, 28, 1)).astype(np.uint8)
  whole = preprocess.to_rgb32(x)
  monkeypatch.setattr(preprocess, 'CHUNK', 3)
  np.testing.assert_array_equal(preprocess.to_rgb32(x), whole)


def test_split_train_valid_is_a_seeded_partition():
  labels = np.arange(95, dtype=np.int32)
  images = np.zeros((95, 32, 32, 3), np.uint8)
  _, tr, _, va = preprocess.split_train_valid(images, labels, seed=0, name='x')
  assert len(va) == 10 and sorted(np.concatenate([tr, va])) == list(range(95))
  _, tr1, _, va1 = preprocess.split_train_valid(images, labels, seed=1, name='x')
  assert not np.array_equal(va, va1)


# ---------------------------------------------------------------------------------------------
# TFDS path on mock data


def _mock_getitems(record_keys, generator, serialized=False):
  del serialized
  return [generator[k] for k in record_keys]


@contextlib.contextmanager
def mock_tfds(num_examples):
  """tfds.testing.mock_data for `tfds.data_source`, with batched reads working.

  In tfds 4.9.10 the mock sets `__getitems__` on a MagicMock instance as a plain attribute; unlike
  `__getitem__`, Python's mock does not bind it, so the mock's `_getitems(self, record_keys, ...)`
  gets no `self` and fails. The stand-in below takes no `self` (it is looked up at call time).
  """
  with tfds.testing.mock_data(num_examples=num_examples,
                              policy=tfds.testing.MockPolicy.USE_CODE), \
       mock.patch.object(mocking, '_getitems', _mock_getitems):
    yield


def _raw_split(tfds_name, split='test'):
  """The mock's raw records (inside mock_tfds): uint8 images [N, H, W, C], labels [N]."""
  source = tfds.data_source(tfds_name, split=split, download=False)
  records = [source[i] for i in range(len(source))]
  return (np.stack([r['image'] for r in records]),
          np.array([int(r['label']) for r in records]))


@pytest.mark.parametrize('name', ['mnist', 'fashion', 'cifar10', 'svhn', 'stl10'])
def test_tfds_images_are_uint8_32x32x3_with_labels_0_to_9(name):
  with mock_tfds(30):
    d = datasets.load(name)
  for images, labels in ((d.train_images, d.train_labels), (d.valid_images, d.valid_labels),
                         (d.test_images, d.test_labels)):
    assert images.dtype == np.uint8 and images.shape == (len(labels), 32, 32, 3)
    assert labels.dtype == np.int32 and labels.min() >= 0 and labels.max() <= 9


def test_tfds_split_sizes_are_90_10_of_the_train_split():
  with mock_tfds(50):
    d = datasets.load('cifar10')
  assert (len(d.train_labels), len(d.valid_labels), len(d.test_labels)) == (45, 5, 50)


def test_tfds_num_train_and_num_test_cap_the_splits():
  with mock_tfds(50):
    d = datasets.load('cifar10', num_train=20, num_test=7)
  assert (len(d.train_labels), len(d.valid_labels), len(d.test_labels)) == (18, 2, 7)


def test_tfds_mnist_grey_is_bilinear_32x32_in_3_equal_channels():
  with mock_tfds(20):
    d = datasets.load('mnist')
    raw_images, raw_labels = _raw_split('mnist')
  assert raw_images.shape == (20, 28, 28, 1)
  np.testing.assert_array_equal(d.test_images[..., 0], d.test_images[..., 1])
  np.testing.assert_array_equal(d.test_images[..., 0], d.test_images[..., 2])
  ref = jax.image.resize(jnp.asarray(raw_images, jnp.float32), (20, 32, 32, 1), 'bilinear')
  ref = np.clip(np.rint(np.asarray(ref[..., 0])), 0, 255)
  assert np.abs(d.test_images[..., 0].astype(np.float64) - ref).max() <= 1
  np.testing.assert_array_equal(d.test_labels, raw_labels)


def test_tfds_cifar10_images_are_unchanged():
  with mock_tfds(20):
    d = datasets.load('cifar10')
    raw_images, raw_labels = _raw_split('cifar10')
  np.testing.assert_array_equal(d.test_images, raw_images)
  np.testing.assert_array_equal(d.test_labels, raw_labels)


def test_tfds_stl10_96x96_is_area_resized_to_32x32():
  with mock_tfds(12):
    d = datasets.load('stl10')
    raw_images, _ = _raw_split('stl10')
  assert raw_images.shape == (12, 96, 96, 3)
  block_mean = raw_images.reshape(12, 32, 3, 32, 3, 3).mean(axis=(2, 4))
  np.testing.assert_array_equal(d.test_images, preprocess.to_uint8(block_mean))


def test_tfds_same_args_give_bit_identical_arrays():
  with mock_tfds(40):
    a = datasets.load('stl10', num_train=25, num_test=10, seed=2)
    b = datasets.load('stl10', num_train=25, num_test=10, seed=2)
  for x, y in zip(_arrays(a), _arrays(b)):
    np.testing.assert_array_equal(x, y)


def test_tfds_seed_changes_the_subset_and_validation_split():
  with mock_tfds(40):
    a = datasets.load('mnist', num_train=25, num_test=10, seed=0)
    b = datasets.load('mnist', num_train=25, num_test=10, seed=1)
  assert not np.array_equal(a.valid_images, b.valid_images)
  assert not np.array_equal(a.test_images, b.test_images)


def test_tfds_reads_records_in_batches_not_one_by_one():
  base = tfds.core.data_sources.base.BaseDataSource
  one_by_one = mock.patch.object(base, '__getitem__', side_effect=AssertionError('1 by 1'))
  batched = mock.patch.object(base, '__getitems__', autospec=True,
                              side_effect=base.__getitems__)
  with mock_tfds(30), one_by_one, batched as getitems:
    d = datasets.load('cifar10')
  assert len(d.test_labels) == 30
  assert getitems.call_count == 2  # one batch per split


def test_unprepared_tfds_dataset_raises_one_line_dataset_error(tmp_path):
  with pytest.raises(datasets.DatasetError) as info:
    datasets.load('svhn', data_dir=str(tmp_path))
  message = str(info.value)
  assert "'svhn'" in message and "'svhn_cropped'" in message and str(tmp_path) in message
  assert 'download=True' in message and '\n' not in message


def test_unprepared_tfds_dataset_in_default_data_dir_raises_dataset_error(tmp_path, monkeypatch):
  from tensorflow_datasets.core import constants
  monkeypatch.setattr(constants, 'DATA_DIR', str(tmp_path))
  with pytest.raises(datasets.DatasetError, match="dataset 'mnist' \\(TFDS 'mnist'\\)") as info:
    datasets.load('mnist')
  assert '\n' not in str(info.value)


# ---------------------------------------------------------------------------------------------
# TFDS path on a real (tiny) array_record dataset prepared here


class NwsTestGrey28(tfds.core.GeneratorBasedBuilder):
  """A tiny mnist-like TFDS dataset (28x28x1 uint8, 10 classes) written to array_record.

  Images are a `Tensor` feature, not `Image`: encoding PNGs while preparing needs TensorFlow.
  """
  VERSION = tfds.core.Version('1.0.0')
  SIZES = {'train': 40, 'test': 15}

  def _info(self):
    return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict({
        'image': tfds.features.Tensor(shape=(28, 28, 1), dtype=np.uint8),
        'label': tfds.features.ClassLabel(num_classes=10)}))

  def _split_generators(self, dl_manager):
    del dl_manager
    return {split: self._generate_examples(split) for split in self.SIZES}

  def _generate_examples(self, split):
    images, labels = self.examples(split)
    for i, (image, label) in enumerate(zip(images, labels)):
      yield i, {'image': image, 'label': label}

  @classmethod
  def examples(cls, split):
    rng = np.random.default_rng(len(split))
    n = cls.SIZES[split]
    return rng.integers(0, 256, (n, 28, 28, 1), dtype=np.uint8), np.arange(n) % 10


@pytest.fixture(scope='module')
def prepared_dir(tmp_path_factory):
  data_dir = tmp_path_factory.mktemp('tfds')
  NwsTestGrey28(data_dir=str(data_dir), file_format='array_record').download_and_prepare()
  return str(data_dir)


def test_prepared_array_record_dataset_loads_in_chunks(prepared_dir, monkeypatch):
  from nws_jax.datasets import tfds_source
  monkeypatch.setitem(datasets.TFDS_NAMES, 'mnist', 'nws_test_grey28')
  monkeypatch.setattr(tfds_source, 'READ_CHUNK', 7)
  d = datasets.load('mnist', data_dir=prepared_dir)
  assert (len(d.train_labels), len(d.valid_labels), len(d.test_labels)) == (36, 4, 15)
  # TFDS shuffles records while preparing: compare (image, label) pairs as sets.
  for split, parts in (('test', [(d.test_images, d.test_labels)]),
                       ('train', [(d.train_images, d.train_labels),
                                  (d.valid_images, d.valid_labels)])):
    images, labels = NwsTestGrey28.examples(split)
    expected = {(x.tobytes(), y) for x, y in zip(preprocess.to_rgb32(images), labels)}
    got = {(x.tobytes(), y) for images, labels in parts for x, y in zip(images, labels)}
    assert got == expected, split
