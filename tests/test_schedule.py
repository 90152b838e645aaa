"""The zoo's host-side schedule (`nws_jax.zoo.schedule`) as pure functions: slots and queues at
the start, refill, compaction, waves, device rounding and a checkpoint's round trip, over many
synthetic zoos and hundreds of rounds, with no device program."""

import numpy as np
import pytest

from nws_jax.zoo import schedule as sl


def make_plan(group_sizes, devices=1, bound=8, slots_per_group=None, per_wave=None):
  bounds = np.cumsum([0] + list(group_sizes))
  members = tuple(np.arange(a, b) for a, b in zip(bounds[:-1], bounds[1:]))
  waves = np.arange(len(group_sizes)) // (per_wave or len(group_sizes))
  return sl.Plan(members, waves, devices, bound, slots_per_group)


@pytest.mark.parametrize('wanted', [1, 3, 8, 9, 16, 20, 33])
def test_vmap_chunk_does_not_depend_on_the_device_count_on_the_cpu(wanted):
  chunks = {sl.vmap_chunk(wanted, 8, devices) for devices in (1, 2, 4, 8)}
  assert len(chunks) == 1
  chunk = chunks.pop()
  assert 1 <= chunk <= 8 and -(-wanted // chunk) == -(-wanted // 8)  # the fewest chunks
  # Unbounded (an accelerator's default): each device vmaps its share.
  assert sl.vmap_chunk(wanted, sl.UNBOUNDED, 4) == -(-wanted // 4)


@pytest.mark.parametrize('n,devices,chunk,want', [
    (0, 1, 1, 1), (1, 4, 1, 4), (5, 4, 1, 8), (8, 4, 2, 8), (9, 4, 2, 16), (3, 1, 3, 3)])
def test_round_up(n, devices, chunk, want):
  assert sl.round_up(n, devices, chunk) == want


def test_start_fills_slots_from_the_queue_head_and_rounds_up_to_the_devices():
  plan = make_plan([5, 2, 1], devices=4, bound=1, slots_per_group=3)
  s = sl.start(plan)
  assert [g.models.tolist() for g in s.groups] == [
      [0, 1, 2, 3], [5, 6, -1, -1], [7, -1, -1, -1]]
  # A slot count rounds up the plan: group 0 planned 3, laid out 4, so it takes 4 members.
  assert [(g.planned, g.chunk, g.num_slots, g.queued) for g in s.groups] == [
      (3, 1, 4, 4), (2, 1, 4, 2), (1, 1, 4, 1)]
  assert [g.rows.tolist() for g in s.groups] == [[0, 1, 2, 3], [0, 1, 0, 0], [0, 0, 0, 0]]
  assert sl.queued(plan, s) == 1 and sl.in_slots(plan, s).sum() == 7
  # With the CPU's bound of 8, each device vmaps the 3 planned models: 12 slots.
  plan = make_plan([5], devices=4, bound=8, slots_per_group=3)
  (g,) = sl.start(plan).groups
  assert (g.planned, g.chunk, g.num_slots, g.queued) == (3, 3, 12, 5)
  assert g.models.tolist() == [0, 1, 2, 3, 4] + [-1] * 7


def test_waves_open_one_group_set_at_a_time():
  plan = make_plan([2, 3, 1], per_wave=2)
  s = sl.start(plan)
  assert plan.num_waves == 2 and sl.open_groups(plan, s) == [0, 1]
  assert sl.in_slots(plan, s).tolist() == [True] * 5 + [False]
  assert sl.queued(plan, s) == 1  # group 2 waits for its wave
  # A model of a closed wave stopping changes nothing.
  stopped = np.zeros(6, bool)
  stopped[5] = True
  same, entered, fresh = sl.refill(plan, s, stopped)
  assert len(entered) == 0 and not fresh
  s = sl.next_wave(plan, s)
  assert sl.open_groups(plan, s) == [2] and sl.in_slots(plan, s).tolist() == [False] * 5 + [True]
  with pytest.raises(ValueError, match='no wave left'):
    sl.next_wave(plan, s)


@pytest.mark.parametrize('seed', range(20))
def test_refill_over_a_whole_run(seed):
  """Random zoos, random stopping: every member enters once, in queue order, into a slot of its
  own group; slots never hold a model twice; the run ends with every slot empty."""
  rng = np.random.default_rng(seed)
  sizes = rng.integers(1, 12, rng.integers(1, 5))
  plan = make_plan(sizes, devices=int(rng.choice([1, 2, 4])),
                   slots_per_group=int(rng.integers(1, 6)), per_wave=int(rng.integers(1, 4)))
  s = sl.start(plan)
  m = plan.num_models
  stopped = np.zeros(m, bool)
  entered_order = [[] for _ in sizes]
  for i in sl.open_groups(plan, s):
    entered_order[i] += [x for x in s.groups[i].models if x >= 0]
  for _ in range(500):
    live = sl.in_slots(plan, s) & ~stopped
    if not live.any():
      if sl.queued(plan, s) == 0:
        break
      s = sl.next_wave(plan, s)
      for i in sl.open_groups(plan, s):
        entered_order[i] += [x for x in s.groups[i].models if x >= 0]
      continue
    stopping = live & (rng.random(m) < 0.3)
    stopped |= stopping
    before = s
    s, entered, fresh = sl.refill(plan, s, stopping)
    for i, g in enumerate(s.groups):
      occupied = g.models[g.models >= 0]
      assert len(set(occupied)) == len(occupied)
      assert set(occupied) <= set(plan.members[i])
      assert not stopped[occupied].any()
      assert np.array_equal(plan.members[i][g.rows[g.models >= 0]], occupied)
      changed = g.models != before.groups[i].models
      assert np.array_equal(fresh.get(i, np.zeros(g.num_slots, bool)), changed & (g.models >= 0))
      entered_order[i] += list(g.models[fresh.get(i, np.zeros(g.num_slots, bool))])
    assert sorted(entered) == sorted(x for i in fresh for x in s.groups[i].models[fresh[i]])
  else:
    raise AssertionError('the run did not end')
  assert stopped.all()
  for i, order in enumerate(entered_order):
    assert order == list(plan.members[i])  # each once, in queue order
  assert all((g.models == -1).all() for i, g in enumerate(s.groups)
             if i in sl.open_groups(plan, s))


def test_compaction_shrinks_to_a_power_of_two_keeping_busy_slots_in_order():
  plan = make_plan([8])
  s = sl.start(plan)
  running = np.zeros(8, bool)
  running[[5, 2, 6]] = True
  small, keeps = sl.compact(plan, s, running)
  (g,) = small.groups
  assert (g.planned, g.chunk, g.num_slots) == (4, 4, 4)
  assert g.models.tolist() == [2, 5, 6, -1] and keeps[0].tolist() == [2, 5, 6, 0]
  assert g.rows.tolist() == [2, 5, 6, 0]


@pytest.mark.parametrize('case,running', [
    ('queue not empty', [0, 1]), ('more than half busy', [0, 1, 2]), ('one slot', [])])
def test_compaction_leaves_a_group_alone(case, running):
  plan = {'queue not empty': make_plan([6], slots_per_group=4),
          'more than half busy': make_plan([4]), 'one slot': make_plan([1])}[case]
  s = sl.start(plan)
  mask = np.zeros(plan.num_models, bool)
  mask[running] = True
  same, keeps = sl.compact(plan, s, mask)
  assert not keeps and same.groups[0].models.tolist() == s.groups[0].models.tolist()


def test_compaction_on_several_devices_keeps_a_multiple_of_them():
  plan = make_plan([16], devices=4)
  s = sl.start(plan)
  running = np.zeros(16, bool)
  running[3] = True
  small, keeps = sl.compact(plan, s, running)
  (g,) = small.groups
  assert (g.planned, g.num_slots) == (1, 4) and g.models.tolist() == [3, -1, -1, -1]
  # Already as small as the devices allow: no change.
  again, keeps = sl.compact(plan, small, running)
  assert not keeps and again.groups[0].num_slots == 4


@pytest.mark.parametrize('seed', range(10))
def test_a_checkpointed_schedule_comes_back_as_it_was(seed):
  rng = np.random.default_rng(seed)
  plan = make_plan(rng.integers(1, 10, 3), devices=2, slots_per_group=3)
  s = sl.start(plan)
  stopped = sl.in_slots(plan, s) & (rng.random(plan.num_models) < 0.5)
  s, _, _ = sl.refill(plan, s, stopped)
  s, _ = sl.compact(plan, s, sl.in_slots(plan, s) & ~stopped)
  back = sl.from_arrays(plan, sl.to_arrays(s))
  assert sl.to_arrays(back).keys() == sl.to_arrays(s).keys()
  for k, v in sl.to_arrays(s).items():
    np.testing.assert_array_equal(sl.to_arrays(back)[k], v)
  assert [(g.planned, g.chunk) for g in back.groups] == [(g.planned, g.chunk) for g in s.groups]


def test_a_checkpoint_from_before_planned_counts_lays_its_slot_counts_out_as_they_were():
  plan = make_plan([1, 2])
  arrays = sl.to_arrays(sl.start(plan))
  del arrays['planned']
  assert [g.num_slots for g in sl.from_arrays(plan, arrays).groups] == [1, 2]


def test_a_checkpoint_that_does_not_fit_is_refused():
  arrays = sl.to_arrays(sl.start(make_plan([3, 3])))
  with pytest.raises(ValueError, match='does not lay out over 4 devices'):
    sl.from_arrays(make_plan([3, 3], devices=4), arrays)
  with pytest.raises(ValueError, match="does not match this zoo's groups"):
    sl.from_arrays(make_plan([3, 3, 1]), arrays)
  with pytest.raises(ValueError, match='in wave 1, this zoo has 1'):
    sl.from_arrays(make_plan([3, 3]), dict(arrays, wave=np.int64(1)))
