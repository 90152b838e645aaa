"""Early stopping rules of PROTOCOL §3 in both readings, each on a hand-made accuracy sequence."""

import numpy as np
import pytest

from nws_jax import early_stopping as es


def run(sequences, rules, initial=None):
  """Feeds accuracy sequences [models][epochs]; returns the final state. initial: the
  initialisation's accuracy per model (export 1), entered first."""
  seqs = np.asarray(sequences, float)
  state = es.initial_state(len(seqs))
  if initial is not None:
    state = es.observe_initial(state, np.asarray(initial, float), np.ones(len(seqs), bool), rules)
  for e in range(seqs.shape[1]):
    state = es.update(state, seqs[:, e], rules)
  return state


def test_five_consecutive_falls_stop_but_not_before_min_epochs():
  rules = es.StoppingRules(reading='protocol', min_epochs=20, max_epochs=100)
  rising = list(np.linspace(0.1, 0.5, 12))
  falling = [0.5 - 0.01 * i for i in range(1, 7)]  # Falls at epochs 13..18.
  state = run([rising + falling], rules)
  assert state.status[0] == es.RUNNING  # 5 falls reached at epoch 17 < 20.
  more = [0.4 - 0.01 * i for i in range(1, 4)]  # Still falling at 19, 20.
  state = run([rising + falling + more], rules)
  assert state.status[0] == es.EARLY_STOPPED and state.epochs[0] == 20


def test_four_falls_then_a_rise_resets_the_count():
  rules = es.StoppingRules(reading='protocol', min_epochs=0, max_epochs=100)
  seq = [0.5, 0.49, 0.48, 0.47, 0.46, 0.47, 0.46, 0.45, 0.44]
  state = run([seq], rules)
  assert state.status[0] == es.RUNNING and state.n_fall[0] == 3


def test_thirty_unchanged_epochs_stop():
  rules = es.StoppingRules(reading='protocol', min_epochs=0, max_epochs=100)
  state = run([[0.3] * 30], rules)
  assert state.status[0] == es.RUNNING  # 29 repeats after the first epoch.
  state = run([[0.3] * 31], rules)
  assert state.status[0] == es.EARLY_STOPPED and state.epochs[0] == 31


def test_thirty_epochs_below_the_smoothed_value_stop_even_when_not_consecutive():
  rules = es.StoppingRules(reading='protocol', min_epochs=0, max_epochs=200)
  # Alternate a high and a low value: the low one is always below the running mean, the high
  # one never; falls never run 5 deep and values never repeat twice in a row.
  seq = []
  for i in range(40):
    seq += [0.6 + 0.001 * i, 0.2 + 0.001 * i]
  state = run([seq[:59]], rules)  # Lows at epochs 2, 4, …, 58: 29 of them.
  assert state.status[0] == es.RUNNING and state.n_below[0] == 29
  state = run([seq[:62]], rules)
  assert state.status[0] == es.EARLY_STOPPED and state.epochs[0] == 60


def test_epoch_cap_stops_and_stopped_models_are_frozen():
  rules = es.StoppingRules(reading='protocol', min_epochs=0, max_epochs=5)
  state = run([[0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7], [0.5] * 7], rules)
  assert list(state.status) == [es.EPOCH_CAP, es.EPOCH_CAP]
  assert list(state.epochs) == [5, 5]
  assert state.previous[0] == 0.5  # Epochs after the cap did not enter the state.


def test_models_are_judged_independently():
  rules = es.StoppingRules(reading='protocol', min_epochs=0, max_epochs=100)
  state = run([[0.3] * 31, list(np.linspace(0.1, 0.9, 31))], rules)
  assert list(state.status) == [es.EARLY_STOPPED, es.RUNNING]


# The original code's reading (classifier.py, after each export), written out here as a plain
# loop over one sequence whose first value is the initialisation's (export 1).
def original_stop_export(accuracies, patience=5, min_exports=20):
  """The export number at which the original stops, or None."""
  es_, es_s, es_p = 0, 0, 0
  curr = smooth = None
  for ii, acc in enumerate(accuracies, start=1):
    if ii > 1 and acc < curr:
      es_, es_s = es_ + 1, 0
    elif ii > 1 and abs(acc - curr) < 1e-8:
      es_s += 1
    else:
      es_, es_s = 0, 0
    curr = acc
    smooth = acc if ii == 1 else 0.5 * smooth + 0.5 * acc
    if ii > 1 and curr < smooth:
      es_p += 1
    if (es_ >= patience or es_p >= 30 or es_s >= 30) and ii >= min_exports:
      return ii
  return None


def stop_export(sequence, rules):
  """Our 'original' reading over [initial, epoch 1, …]: the export (epochs + 1) it stops at."""
  state = es.initial_state(1)
  state = es.observe_initial(state, np.array([sequence[0]]), np.ones(1, bool), rules)
  for acc in sequence[1:]:
    state = es.update(state, np.array([acc]), rules)
    if state.status[0] != es.RUNNING:
      return int(state.epochs[0]) + 1
  return None


def test_original_an_unchanged_epoch_does_not_reset_the_fall_count():
  seq = [0.5, 0.49, 0.48, 0.48, 0.47, 0.46, 0.45]  # falls, one unchanged, falls: 5 falls
  original = es.StoppingRules(min_epochs=0, max_epochs=100)
  protocol = es.StoppingRules(reading='protocol', min_epochs=0, max_epochs=100)
  assert stop_export(seq, original) == original_stop_export(seq, min_exports=0) == 7
  state = run([seq[1:]], protocol, initial=None)  # the protocol reading: reset at the repeat
  assert state.status[0] == es.RUNNING and state.n_fall[0] == 3


def test_original_compares_epoch_one_with_the_initialisation():
  seq = [0.6, 0.5, 0.4, 0.3, 0.2, 0.1]  # five falls counted from the initialisation's 0.6
  original = es.StoppingRules(min_epochs=0, max_epochs=100)
  assert stop_export(seq, original) == original_stop_export(seq, min_exports=0) == 6
  protocol = es.StoppingRules(reading='protocol', min_epochs=0, max_epochs=100)
  assert run([seq[1:]], protocol).status[0] == es.RUNNING  # only four falls after epoch 1


def test_original_is_judged_from_export_twenty():
  rising = list(np.linspace(0.1, 0.5, 13))       # exports 1..13
  falling = [0.5 - 0.01 * i for i in range(1, 8)]  # exports 14..20: 5 falls reached at 18
  seq = rising + falling
  original = es.StoppingRules(min_epochs=20, max_epochs=100)
  assert stop_export(seq, original) == original_stop_export(seq) == 20
  assert stop_export(seq[:19], original) is None
  # The protocol reading needs 20 trained epochs, i.e. export 21.
  protocol = es.StoppingRules(reading='protocol', min_epochs=20, max_epochs=100)
  assert run([seq[1:]], protocol).status[0] == es.RUNNING


def test_original_thirty_unchanged_epochs_counted_with_tolerance():
  seq = [0.3 + 1e-10 * i for i in range(31)]  # rises of 1e-10: unchanged to the original
  original = es.StoppingRules(min_epochs=0, max_epochs=100)
  assert stop_export(seq, original) == original_stop_export(seq, min_exports=0) == 31
  protocol = es.StoppingRules(reading='protocol', min_epochs=0, max_epochs=100)
  assert run([seq[1:]], protocol).status[0] == es.RUNNING


def test_original_matches_the_plain_loop_on_random_sequences():
  rng = np.random.default_rng(0)
  original = es.StoppingRules(min_epochs=20, max_epochs=400)
  stops = []
  for _ in range(200):
    # Coarse accuracies (few distinct values) so that repeats, falls and rises all happen.
    seq = list(np.round(rng.uniform(0.3, 0.7) + np.cumsum(rng.normal(0, 0.02, 300)), 2))
    want = original_stop_export(seq)
    assert stop_export(seq, original) == want
    stops.append(want)
  assert len({s for s in stops if s is not None}) > 5  # the sequences stop at varied exports


def test_unknown_reading_is_refused():
  with pytest.raises(ValueError, match='reading'):
    es.StoppingRules(reading='textbook')
