"""Search space (PROTOCOL §1): names, ranges, seeded sampling."""

import numpy as np
import pytest

from nws_jax import space

DATASETS = ('digits', 'shapes', 'gratings')


def test_property_names_follow_protocol_order():
  assert space.PROPERTY_NAMES == (
      'dataset', 'lrate', 'batch_size', 'batch_norm', 'augmentation', 'optimizer',
      'activation', 'initialization', 'filter_size', 'depth_conv', 'depth_fc', 'width_conv',
      'width_fc')


def test_same_seed_gives_same_zoo_and_other_seed_differs():
  a = space.sample_zoo(3, 20, DATASETS)
  assert a == space.sample_zoo(3, 20, DATASETS)
  assert a != space.sample_zoo(4, 20, DATASETS)


def test_model_configuration_does_not_depend_on_zoo_size():
  assert space.sample_zoo(1, 5, DATASETS) == space.sample_zoo(1, 12, DATASETS)[:5]


def test_samples_stay_in_protocol_ranges_and_cover_every_value():
  zoo = space.sample_zoo(0, 400, DATASETS)
  lrates = np.array([c.lrate for c in zoo])
  assert lrates.min() >= 0.0002 and lrates.max() <= 0.005
  assert {c.batch_size for c in zoo} == {32, 64, 128, 256}
  assert {c.optimizer for c in zoo} == {0, 1, 2}
  assert {c.activation for c in zoo} == {0, 1, 2, 3}
  assert {c.initialization for c in zoo} == {0, 1, 2, 3}
  assert {c.augmentation for c in zoo} == {False, True}
  assert {c.dataset for c in zoo} == set(DATASETS)
  assert all(c.batch_norm for c in zoo)


def test_fixed_mode_uses_nws_fixed_architecture():
  for c in space.sample_zoo(0, 30, DATASETS):
    assert (c.filter_size, c.depth_conv, c.depth_fc, c.width_conv, c.width_fc) == (5, 3, 2, 8, 128)


def test_row_lists_the_13_properties_in_order():
  row = space.sample_model(0, 0, DATASETS).as_row()
  assert tuple(row) == space.PROPERTY_NAMES


def test_unknown_architecture_mode_is_rejected():
  with pytest.raises(ValueError, match='architecture'):
    space.sample_model(0, 0, DATASETS, architecture='tiny')


def test_random_mode_draws_every_architecture_option_and_keeps_the_other_draws():
  random = space.sample_zoo(0, 300, DATASETS, architecture='random')
  fixed = space.sample_zoo(0, 300, DATASETS)
  options = dict(filter_size=(3, 5, 7), depth_conv=(3, 4, 5), depth_fc=(2, 3, 4),
                 width_conv=(4, 8, 12), width_fc=(64, 128, 192))
  for name, values in options.items():
    assert {getattr(c, name) for c in random} == set(values), name
  assert len({c.architecture for c in random}) > 100
  # The architecture draws come after the others, so both modes agree on everything else.
  strip = lambda c: {k: v for k, v in c.as_row().items() if k not in options}
  assert [strip(c) for c in random] == [strip(c) for c in fixed]
