"""A zoo workdir end to end: build, Orbax round trip, load_zoo, determinism, resume."""

import json
import os

import jax
import numpy as np
import pandas as pd
import pytest

from nws_jax import cnn
from nws_jax import snapshots
from nws_jax import space
from nws_jax import zoo as zoo_lib
from nws_jax.zoo import builder as zoo_builder
from helpers import build_crashing_after
from helpers import file_state
from helpers import occupied_folder

# Seed 5 draws batch size 256 for both models (one on each dataset, two optimizers, augmented
# and not): one group, so one training program for every zoo of this module.
CONFIG = zoo_builder.ZooConfig(num_models=2, seed=5, datasets=('gratings', 'digits'),
                               max_epochs=3, min_epochs=1, num_train=600, num_test=100)


@pytest.mark.parametrize('num_exports,expected', [
    (20, list(range(1, 21))),
    (39, list(range(1, 40, 2))),
    (1, [1] * 20),
    (5, [1, 1, 1, 2, 2, 2, 2, 2, 3, 3, 3, 3, 4, 4, 4, 4, 4, 5, 5, 5]),
])
def test_kept_exports_are_round_linspace_1_to_e(num_exports, expected):
  assert list(snapshots.select_exports(num_exports)) == expected


def test_kept_exports_of_a_long_run_start_at_init_and_end_at_the_last():
  kept = snapshots.select_exports(1000)
  assert len(kept) == 20 and kept[0] == 1 and kept[-1] == 1000
  assert np.all(np.diff(kept) > 0)


@pytest.fixture(scope='module')
def built(tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp('zoo'))
  return zoo_builder.build_zoo(CONFIG, workdir)


def test_loaded_zoo_has_snapshots_and_table(built):
  zoo = zoo_lib.load_zoo(built.workdir)
  assert zoo.snapshots.as_array().shape == (2, 20, 16880 + 75988)
  assert zoo.snapshots[1].shape == (20, 16880 + 75988)
  assert zoo.snapshots.flat.dtype == np.float32
  assert list(zoo.table.columns[:13]) == list(space.PROPERTY_NAMES)
  for column in ('weightn_conv', 'weightn_fc', 'train_accuracy', 'valid_accuracy',
                 'test_accuracy', 'epochs', 'status'):
    assert column in zoo.table.columns
  assert list(zoo.table.weightn_conv) == [16880, 16880]
  acc = zoo.table[['train_accuracy', 'valid_accuracy', 'test_accuracy']].to_numpy()
  assert np.all((acc >= 0) & (acc <= 1))
  assert list(zoo.table.epochs) == [3, 3] and list(zoo.table.status) == ['epoch_cap'] * 2
  np.testing.assert_array_equal(zoo.export_numbers, np.stack([snapshots.select_exports(4)] * 2))
  assert len(zoo.curves) == 2 * 4
  assert not os.path.exists(os.path.join(built.workdir, zoo_lib.EXPORTS_DIR))
  assert not os.path.exists(os.path.join(built.workdir, zoo_lib.STATE_DIR))


def test_table_rows_are_the_sampled_configurations(built):
  for row, config in zip(built.table.to_dict('records'),
                         space.sample_zoo(CONFIG.seed, 2, CONFIG.datasets)):
    for name, value in config.as_row().items():
      assert row[name] == pytest.approx(value), name


def test_first_snapshot_is_the_initialisation_in_release_order(built):
  trainer = zoo_builder.make_trainer(CONFIG)
  state = trainer.init_state()
  arch = cnn.Architecture()
  for g, s in zip(trainer.groups, state):
    for j, pos in enumerate(g.members):
      params, stats = jax.tree.map(lambda x, j=j: np.asarray(x[j]), (s.params, s.stats))
      # The initial weights, with the moving statistics that export 1's evaluation passes left
      # (bn_eval='original', as the release's nets): data statistics, not the initial 0 and 1.
      _, exported_stats = cnn.unflatten(built.snapshots[pos][0], arch)
      expected = np.asarray(cnn.flatten(params, exported_stats, arch))
      np.testing.assert_array_equal(built.snapshots[pos][0], expected)
      assert not np.array_equal(np.asarray(exported_stats['conv_00']['var']),
                                stats['conv_00']['var'])
  assert not np.array_equal(built.snapshots.as_array()[:, 0], built.snapshots.as_array()[:, -1])


def test_same_seed_and_flags_give_the_same_zoo(built, tmp_path):
  again = zoo_builder.build_zoo(CONFIG, str(tmp_path / 'again'))
  np.testing.assert_array_equal(again.snapshots.flat, built.snapshots.flat)
  pd.testing.assert_frame_equal(again.table.drop(columns='seconds'),
                                built.table.drop(columns='seconds'))


def test_resumed_zoo_equals_uninterrupted_zoo(built, tmp_path):
  workdir = str(tmp_path / 'resumed')
  build_crashing_after(CONFIG, workdir, 2)
  with pytest.raises(zoo_builder.WorkdirError, match='not empty'):
    zoo_builder.build_zoo(CONFIG, workdir)
  resumed = zoo_builder.build_zoo(CONFIG, workdir, resume=True)
  np.testing.assert_array_equal(resumed.snapshots.flat, built.snapshots.flat)
  np.testing.assert_array_equal(resumed.table.test_accuracy, built.table.test_accuracy)


def test_resume_refuses_a_finished_zoo_and_other_options(built):
  with pytest.raises(zoo_builder.WorkdirError, match='already finished'):
    zoo_builder.build_zoo(CONFIG, built.workdir, resume=True)
  other = zoo_builder.ZooConfig(**{**CONFIG.__dict__, 'seed': 1})
  with pytest.raises(zoo_builder.WorkdirError, match='other options'):
    zoo_builder.build_zoo(other, built.workdir, resume=True)


def test_load_zoo_names_what_is_missing(tmp_path):
  with pytest.raises(zoo_lib.ZooError, match='not a directory'):
    zoo_lib.load_zoo(str(tmp_path / 'nothing'))
  (tmp_path / 'config.json').write_text('{}')
  with pytest.raises(zoo_lib.ZooError, match='models.csv is missing'):
    zoo_lib.load_zoo(str(tmp_path))


def test_an_interrupted_overwrite_leaves_the_old_zoo_whole_and_resume_completes_it(built,
                                                                                   tmp_path):
  workdir = tmp_path / 'zoo'
  old = occupied_folder(workdir, kind='zoo')  # a zoo this project wrote: --overwrite may go
  build_crashing_after(CONFIG, str(workdir), 1, overwrite=True)
  assert file_state(workdir) == old
  pending = zoo_builder.replacement_folder(str(workdir))
  assert zoo_builder.resume_folder(str(workdir)) == pending
  resumed = zoo_builder.build_zoo(CONFIG, str(workdir), resume=True)
  np.testing.assert_array_equal(resumed.snapshots.flat, built.snapshots.flat)
  assert resumed.workdir == str(workdir) and not (workdir / 'keep.txt').exists()
  assert sorted(os.listdir(tmp_path)) == ['zoo']  # no replacement or old copy left beside it


def test_overwrite_refuses_a_stranger_in_the_replacement_place_or_a_data_dir_inside(tmp_path):
  workdir = tmp_path / 'zoo'
  occupied_folder(workdir, kind='zoo')
  config = zoo_builder.ZooConfig(num_models=1, data_dir=str(workdir / 'tfds'))
  with pytest.raises(zoo_builder.WorkdirError, match='holds the input'):
    zoo_builder.check_workdir(str(workdir), config, resume=False, overwrite=True)
  config = zoo_builder.ZooConfig(num_models=1)
  assert zoo_builder.check_workdir(str(workdir), config, resume=False,
                                   overwrite=True) == 'overwrite'
  pending = zoo_builder.replacement_folder(str(workdir))
  os.mkdir(pending)
  with open(os.path.join(pending, 'mine.txt'), 'w') as f:
    f.write('a file of the user')
  with pytest.raises(zoo_builder.WorkdirError, match='not written by train_zoo'):
    zoo_builder.check_workdir(str(workdir), config, resume=False, overwrite=True)


def test_resume_refuses_a_hand_edited_config(tmp_path):
  # The seed edited in config.json of a checkpointed zoo: resuming would list the new seed's
  # properties beside weights trained with the old seed's.
  workdir = str(tmp_path / 'zoo')
  build_crashing_after(CONFIG, workdir, 1)
  path = os.path.join(workdir, zoo_lib.CONFIG_FILE)
  with open(path) as f:
    saved = json.load(f)
  saved['zoo']['seed'] = 7
  with open(path, 'w') as f:
    json.dump(saved, f)
  before = file_state(workdir)
  edited = zoo_builder.load_config(workdir)
  with pytest.raises(zoo_builder.WorkdirError, match='started with other options or model '
                     'properties'):
    zoo_builder.build_zoo(edited, workdir, resume=True)
  assert file_state(workdir) == before
