"""A mixed-architecture zoo (--architecture=random, nws_main) end to end: each model's snapshots
have its own architecture's length and release order, and meta-classifiers train on it."""

import dataclasses

import jax
import numpy as np
import pytest

from nws_jax import cnn
from nws_jax import space
from nws_jax import zoo as zoo_lib
from nws_jax import zoo_builder
from nws_jax.meta import split as split_lib
from nws_jax.meta import targets as targets_lib
from nws_jax.meta import train

# Seed 5 draws two models of different architectures: (7, 3, 2, 8, 128) and (7, 4, 3, 8, 128).
CONFIG = zoo_builder.ZooConfig(num_models=2, seed=5, datasets=('gratings', 'digits'),
                               architecture='random', max_epochs=1, min_epochs=1, num_train=600,
                               num_test=100, eval_size=100)


@pytest.fixture(scope='module')
def built(tmp_path_factory):
  return zoo_builder.build_zoo(CONFIG, str(tmp_path_factory.mktemp('mixed')))


def _arch(row) -> cnn.Architecture:
  return cnn.Architecture(*(int(row[n]) for n in ('filter_size', 'depth_conv', 'depth_fc',
                                                   'width_conv', 'width_fc')))


def test_each_model_has_its_own_architecture_and_vector_length(built):
  zoo = zoo_lib.load_zoo(built.workdir)
  archs = [_arch(row) for row in zoo.table.to_dict('records')]
  assert len(set(archs)) == 2
  expected = [c.architecture for c in space.sample_zoo(CONFIG.seed, 2, CONFIG.datasets, 'random')]
  assert [dataclasses.astuple(a) for a in archs] == expected
  for i, arch in enumerate(archs):
    n_conv, n_fc = cnn.weight_counts(arch)
    assert (zoo.table['weightn_conv'][i], zoo.table['weightn_fc'][i]) == (n_conv, n_fc)
    assert zoo.snapshots[i].shape == (20, n_conv + n_fc)
  assert not zoo.snapshots.is_uniform


def test_first_snapshot_is_each_models_initialisation_in_release_order(built):
  trainer = zoo_builder.make_trainer(CONFIG)
  assert len(trainer.archs) == 2 and sorted(np.concatenate(trainer.arch_members)) == [0, 1]
  state = trainer.init_state()
  for g, s in zip(trainer.groups, state):
    for j, pos in enumerate(g.members):
      params, stats = jax.tree.map(lambda x, j=j: np.asarray(x[j]), (s.params, s.stats))
      expected = np.asarray(cnn.flatten(params, stats, g.arch))
      np.testing.assert_array_equal(built.snapshots[pos][0], expected)
      assert not np.array_equal(built.snapshots[pos][0], built.snapshots[pos][-1])


def test_meta_classifiers_train_on_a_mixed_zoo(built):
  table = built.table.copy()
  table['optimizer'] = [0, 1]  # whatever was drawn, a property that varies
  split = split_lib.ModelSplit(np.array([0, 1]), np.zeros(0, np.int64), np.array([0]))
  targets = targets_lib.make_targets(table, ['optimizer'], split.train)
  config = train.MetaConfig(slice_length=64, conv_widths=(4,), dense_widths=(8,), epochs=2,
                            batch_size=8, part='dense', seed=0)
  run = train.fit(config, table, built.snapshots, split, targets)
  assert np.isfinite(run.history['train_loss']).all()
