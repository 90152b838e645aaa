"""Shared fixtures: tiny offline datasets, built once per session."""

import pytest

from nws_jax import datasets


@pytest.fixture(scope='session')
def tiny_datasets():
  """Two offline datasets of 300 training (270 after the validation split) and 100 test images."""
  return [datasets.load(name, num_train=300, num_test=100, seed=0)
          for name in ('gratings', 'shapes')]
