"""The slice sampler, the model split and the targets of the meta-classifiers."""

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd
import pytest

from nws_jax.meta import slices
from nws_jax.meta import split as split_lib
from nws_jax.meta import targets as targets_lib


def _index_snapshots(models=3, snaps=20, n=50):
  """Snapshot [m, s, i] holds m·10000 + s·100 + i, so a slice tells where it came from."""
  m, s, i = np.meshgrid(np.arange(models), np.arange(snaps), np.arange(n), indexing='ij')
  return jnp.asarray(m * 10000 + s * 100 + i, jnp.float32)


def test_random_offsets_stay_inside_each_models_bounds():
  lo = jnp.asarray(np.repeat([0, 30, 10], 2000), jnp.int32)
  hi = jnp.asarray(np.repeat([30, 50, 12], 2000), jnp.int32)
  offsets = np.asarray(slices.random_offsets(jax.random.key(0), lo, hi, 2))
  assert (offsets >= np.asarray(lo)).all() and (offsets + 2 <= np.asarray(hi)).all()
  # Every legal start is drawn, including both ends.
  assert set(offsets[:2000]) == set(range(0, 29))
  assert set(offsets[4000:]) == {10}


@pytest.mark.parametrize('part, lo, hi', [('all', 0, 50), ('conv', 0, 20), ('dense', 20, 50)])
def test_slices_come_from_the_chosen_part_of_the_chosen_snapshot(part, lo, hi):
  snaps = _index_snapshots()
  part_lo, part_hi = slices.part_bounds([20, 20, 20], [30, 30, 30], part)
  models = jnp.asarray(np.tile([0, 1, 2], 300), jnp.int32)
  snap_idx = jnp.asarray(np.tile([4, 19, 10], 300), jnp.int32)
  out = np.asarray(slices.random_slices(jax.random.key(1), snaps, models, snap_idx,
                                        jnp.asarray(part_lo), jnp.asarray(part_hi), 7))
  assert out.shape == (900, 7)
  model, snap, index = out // 10000, out % 10000 // 100, out % 100
  assert (model == np.asarray(models)[:, None]).all()
  assert (snap == np.asarray(snap_idx)[:, None]).all()
  assert (np.diff(index, axis=1) == 1).all()  # consecutive weights
  assert index.min() == lo and index.max() == hi - 1


def test_part_bounds_split_the_vector_at_weightn_conv():
  lo, hi = slices.part_bounds([10, 20], [5, 7], 'dense')
  assert lo.tolist() == [10, 20] and hi.tolist() == [15, 27]
  with pytest.raises(slices.SliceError, match='unknown part'):
    slices.part_bounds([10], [5], 'middle')


def test_pairs_cover_the_snapshot_range_only():
  m, s = slices.pairs(np.array([3, 7]), np.arange(11, 21))
  assert len(m) == 20
  assert set(m.tolist()) == {3, 7}
  assert sorted(set(s.tolist())) == list(range(10, 20))  # 0-based snapshots 11..20


@pytest.mark.parametrize('text, expected', [('11-20', (11, 20)), ('20', (20, 20)),
                                            (' 1-20 ', (1, 20))])
def test_parse_snapshot_range(text, expected):
  assert slices.parse_snapshot_range(text) == expected


@pytest.mark.parametrize('text', ['a-b', '1-2-3', '', '11:20'])
def test_parse_snapshot_range_rejects_garbage(text):
  with pytest.raises(slices.SliceError, match='snapshot range'):
    slices.parse_snapshot_range(text)


@pytest.mark.parametrize('spec, message', [
    (slices.SliceSpec(51, 'all', 1, 20), 'longer than the vector'),
    (slices.SliceSpec(21, 'conv', 1, 20), 'longer than the conv part'),
    (slices.SliceSpec(10, 'all', 20, 11), 'is empty'),
    (slices.SliceSpec(10, 'all', 0, 5), 'outside'),
    (slices.SliceSpec(10, 'all', 15, 21), 'outside'),
])
def test_check_spec_rejects_what_the_zoo_cannot_give(spec, message):
  with pytest.raises(slices.SliceError, match=message):
    slices.check_spec(spec, np.array([20, 20]), np.array([30, 31]), 20)


def test_check_spec_accepts_a_slice_as_long_as_the_part():
  slices.check_spec(slices.SliceSpec(30, 'dense', 20, 20), np.array([20]), np.array([30]), 20)


def test_balance_mask_cuts_every_class_to_the_rarest():
  labels = jnp.asarray([0] * 10 + [1] * 3 + [3] * 6, jnp.int32)  # class 2 absent
  mask = np.asarray(slices.balance_mask(jax.random.key(0), labels, 5))
  kept = np.bincount(np.asarray(labels)[mask == 1], minlength=5)
  assert kept.tolist() == [3, 3, 0, 3, 0]
  other = np.asarray(slices.balance_mask(jax.random.key(1), labels, 5))
  assert not np.array_equal(mask, other)  # which samples are kept depends on the key


def test_split_is_disjoint_seeded_and_covers_every_model():
  ids = np.arange(100, 150)
  split = split_lib.make_split(ids, seed=3, test_fraction=0.2, valid_fraction=0.1)
  sides = [set(split.train), set(split.valid), set(split.test)]
  assert sum(len(s) for s in sides) == 50 and set.union(*sides) == set(ids)
  assert len(split.test) == 10 and len(split.valid) == 4
  again = split_lib.make_split(ids, seed=3, test_fraction=0.2, valid_fraction=0.1)
  assert again.to_json() == split.to_json()
  assert split_lib.make_split(ids, seed=4).to_json() != split.to_json()


def test_split_round_trips_through_json(tmp_path):
  split = split_lib.make_split(np.arange(20), seed=0)
  split_lib.save_split(str(tmp_path / 'split.json'), split)
  assert split_lib.load_split(str(tmp_path / 'split.json')).to_json() == split.to_json()


def test_split_refuses_to_leave_a_side_empty():
  with pytest.raises(split_lib.SplitError, match='cannot be split'):
    split_lib.make_split(np.arange(2), seed=0, test_fraction=0.1)


def _table():
  return pd.DataFrame(dict(
      dataset=['a', 'b', 'a', 'c'], lrate=[0.001, 0.002, 0.003, 0.004], batch_size=[64] * 4,
      batch_norm=[True] * 4, augmentation=[False, True, False, True], optimizer=[0, 2, 2, 1],
      activation=[0, 0, 0, 0], initialization=[3, 1, 0, 2], filter_size=5, depth_conv=3,
      depth_fc=2, width_conv=8, width_fc=128))


def test_varying_properties_in_protocol_order():
  assert targets_lib.varying_properties(_table()) == [
      'dataset', 'lrate', 'augmentation', 'optimizer', 'initialization']


def test_targets_encode_classes_and_standardise_the_regression():
  table = _table()
  targets = targets_lib.make_targets(table, ['optimizer', 'lrate', 'dataset'], np.array([0, 1]))
  labels, values = targets_lib.encode(table, targets)
  assert targets[0].classes == (0, 1, 2) and labels[0].tolist() == [0, 2, 2, 1]
  assert targets[1].is_regression
  assert targets[1].mean == pytest.approx(0.0015) and targets[1].std == pytest.approx(0.0005)
  np.testing.assert_allclose(values[1], [-1, 1, 3, 5], rtol=1e-5)
  assert labels[2].tolist() == [0, 1, 0, 2]


@pytest.mark.parametrize('name, message', [('colour', 'unknown property'),
                                           ('activation', 'does not vary')])
def test_targets_refuse_unknown_and_constant_properties(name, message):
  with pytest.raises(targets_lib.PropertyError, match=message):
    targets_lib.make_targets(_table(), [name], np.array([0, 1]))


@pytest.mark.parametrize('name, value', [('optimizer', 7), ('batch_size', 63),
                                         ('augmentation', 2)])
def test_targets_refuse_a_class_protocol_does_not_define(name, value):
  table = _table()
  table[name] = [value] + table[name].tolist()[1:]
  with pytest.raises(targets_lib.PropertyError, match='not a class PROTOCOL §1 defines'):
    targets_lib.make_targets(table, [name], np.array([0, 1]))


def test_chance_is_the_best_constant_guess():
  table = _table()
  [opt, lrate] = targets_lib.make_targets(table, ['optimizer', 'lrate'], np.array([0, 1]))
  assert targets_lib.chance(opt, table, np.array([0]), np.array([1, 2, 3])) == pytest.approx(2 / 3)
  # Always predicting the training mean 0.0015 on test lrates 0.003, 0.004.
  assert targets_lib.chance(lrate, table, np.array([0, 1]),
                            np.array([2, 3])) == pytest.approx(0.002)


def test_random_triples_repeat_each_pair_and_stay_inside_bounds():
  lo, hi = np.array([0, 30, 10]), np.array([30, 50, 12])
  m, s, o = slices.random_triples(np.random.default_rng(0), np.array([2, 1]), np.array([19, 20]),
                                  lo, hi, 2, per_snapshot=3)
  assert m.tolist() == [2] * 6 + [1] * 6
  assert s.tolist() == [18] * 3 + [19] * 3 + [18] * 3 + [19] * 3
  assert (o >= lo[m]).all() and (o + 2 <= hi[m]).all() and o.dtype == np.int32
  again = slices.random_triples(np.random.default_rng(0), np.array([2, 1]), np.array([19, 20]),
                                lo, hi, 2, per_snapshot=3)
  assert np.array_equal(o, again[2])
