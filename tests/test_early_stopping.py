"""Early stopping rules of PROTOCOL §3, each rule on a hand-made accuracy sequence."""

import numpy as np

from nws_jax import early_stopping as es


def run(sequences, rules):
  """Feeds accuracy sequences [models][epochs]; returns the final state."""
  seqs = np.asarray(sequences, float)
  state = es.initial_state(len(seqs))
  for e in range(seqs.shape[1]):
    state = es.update(state, seqs[:, e], rules)
  return state


def test_five_consecutive_falls_stop_but_not_before_min_epochs():
  rules = es.StoppingRules(min_epochs=20, max_epochs=100)
  rising = list(np.linspace(0.1, 0.5, 12))
  falling = [0.5 - 0.01 * i for i in range(1, 7)]  # Falls at epochs 13..18.
  state = run([rising + falling], rules)
  assert state.status[0] == es.RUNNING  # 5 falls reached at epoch 17 < 20.
  more = [0.4 - 0.01 * i for i in range(1, 4)]  # Still falling at 19, 20.
  state = run([rising + falling + more], rules)
  assert state.status[0] == es.EARLY_STOPPED and state.epochs[0] == 20


def test_four_falls_then_a_rise_resets_the_count():
  rules = es.StoppingRules(min_epochs=0, max_epochs=100)
  seq = [0.5, 0.49, 0.48, 0.47, 0.46, 0.47, 0.46, 0.45, 0.44]
  state = run([seq], rules)
  assert state.status[0] == es.RUNNING and state.n_fall[0] == 3


def test_thirty_unchanged_epochs_stop():
  rules = es.StoppingRules(min_epochs=0, max_epochs=100)
  state = run([[0.3] * 30], rules)
  assert state.status[0] == es.RUNNING  # 29 repeats after the first epoch.
  state = run([[0.3] * 31], rules)
  assert state.status[0] == es.EARLY_STOPPED and state.epochs[0] == 31


def test_thirty_epochs_below_the_smoothed_value_stop_even_when_not_consecutive():
  rules = es.StoppingRules(min_epochs=0, max_epochs=200)
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
  rules = es.StoppingRules(min_epochs=0, max_epochs=5)
  state = run([[0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7], [0.5] * 7], rules)
  assert list(state.status) == [es.EPOCH_CAP, es.EPOCH_CAP]
  assert list(state.epochs) == [5, 5]
  assert state.previous[0] == 0.5  # Epochs after the cap did not enter the state.


def test_models_are_judged_independently():
  rules = es.StoppingRules(min_epochs=0, max_epochs=100)
  state = run([[0.3] * 31, list(np.linspace(0.1, 0.9, 31))], rules)
  assert list(state.status) == [es.EARLY_STOPPED, es.RUNNING]
