"""A mixed-architecture zoo (--architecture=random, nws_main) end to end: each model's snapshots
have its own architecture's length and release order, and meta-classifiers train on it."""

import dataclasses

import jax
import numpy as np
import pytest

from nws_jax import cnn
from nws_jax import space
from nws_jax import zoo as zoo_lib
from nws_jax.zoo import builder as zoo_builder
from nws_jax.meta import split as split_lib
from nws_jax.meta import targets as targets_lib
from nws_jax.meta import train
from nws_jax.zoo import step
from helpers import build_crashing_after

# Seed 73 draws two models of one layer structure and batch size 64 with different filter
# sizes and widths, (7, 3, 3, 4, 64) and (5, 3, 3, 8, 192): both run padded to (7, 3, 3, 8, 192)
# in one program, through one slot: model 1 starts when model 0 has finished (refill).
CONFIG = zoo_builder.ZooConfig(num_models=2, seed=73, datasets=('gratings', 'digits'),
                               architecture='random', max_epochs=2, min_epochs=1, num_train=600,
                               num_test=100, eval_size=100, slots_per_group=1)


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


def test_both_models_run_padded_in_one_program():
  trainer = zoo_builder.make_trainer(CONFIG)
  (group,) = trainer.groups
  assert group.masked and group.arch == cnn.Architecture(7, 3, 3, 8, 192)
  assert trainer.schedule.groups[0].num_slots == 1 and trainer.queued() == 1
  assert [list(x) for x in trainer.slot_models] == [[0]]


def test_first_snapshot_is_each_models_own_initialisation_in_release_order(built):
  init = jax.jit(cnn.init, static_argnums=1)
  for i, row in enumerate(built.table.to_dict('records')):
    key = jax.random.fold_in(step.model_key(CONFIG.seed, i), 0)
    params, stats = init(key, _arch(row), jax.numpy.int32(row['initialization']))
    # Export 1 holds the initial weights and, as the original's did, the moving statistics
    # that its evaluation passes left (bn_eval='original'): data statistics, not 0 and 1.
    _, exported_stats = cnn.unflatten(built.snapshots[i][0], _arch(row))
    np.testing.assert_array_equal(built.snapshots[i][0],
                                  np.asarray(cnn.flatten(params, exported_stats, _arch(row))))
    assert not np.array_equal(np.asarray(exported_stats['conv_00']['mean']),
                              np.asarray(stats['conv_00']['mean']))
    assert not np.array_equal(built.snapshots[i][0], built.snapshots[i][-1])


def test_meta_classifiers_train_on_a_mixed_zoo(built):
  table = built.table.copy()
  table['optimizer'] = [0, 1]  # whatever was drawn, a property that varies
  split = split_lib.ModelSplit(np.array([0, 1]), np.zeros(0, np.int64), np.array([0]))
  targets = targets_lib.make_targets(table, ['optimizer'], split.train)
  config = train.MetaConfig(slice_length=64, conv_widths=(4,), dense_widths=(8,), epochs=2,
                            batch_size=8, part='dense', seed=0)
  run = train.fit(config, table, built.snapshots, split, targets)
  assert np.isfinite(run.history['train_loss']).all()


def test_a_run_resumed_after_a_refill_equals_the_uninterrupted_one(built, tmp_path):
  # Round 2 ends model 0 (max_epochs=2) and hands its slot to model 1; the crash comes after
  # that round's checkpoint, so the resume restores the slot, the queue and the export places.
  workdir = str(tmp_path / 'resumed')

  def check(result):
    assert list(result.schedule.groups[0].models) == [1]

  build_crashing_after(CONFIG, workdir, 2, check)
  resumed = zoo_builder.build_zoo(CONFIG, workdir, resume=True)
  for i in range(2):
    np.testing.assert_array_equal(resumed.snapshots[i], built.snapshots[i])
  np.testing.assert_array_equal(resumed.table.test_accuracy, built.table.test_accuracy)
