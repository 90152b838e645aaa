"""The PNG figures of the evaluations: one readable PNG each, written atomically; inputs checked."""

import struct

import matplotlib.figure
import numpy as np
import pandas as pd
import pytest

from nws_jax.meta import plots

PNG_SIGNATURE = b'\x89PNG\r\n\x1a\n'
# (property, metric, chance): two categorical properties and the regressed lrate
PROPERTIES = (('optimizer', 'accuracy', 1 / 3), ('batch_size', 'accuracy', 0.25),
              ('lrate', 'mae', 0.004))


def _accuracy():
  return pd.DataFrame([dict(property=p, metric=m, value=0.7 if m == 'accuracy' else 0.003,
                            chance=c, n_test_models=12) for p, m, c in PROPERTIES])


def _baseline():
  rows = []
  for method, scale in (('gbt_slice', 0.8), ('gbt_layers', 0.9)):
    for p, m, c in PROPERTIES:
      rows.append(dict(property=p, method=method, metric=m,
                       value=0.7 * scale if m == 'accuracy' else 0.0035 * scale, chance=c,
                       n_test_models=12))
  return pd.DataFrame(rows)


def _ensemble():
  return pd.DataFrame([dict(property=p, metric=m, single=0.6 if m == 'accuracy' else 0.0035,
                            majority=0.7 if m == 'accuracy' else 0.003,
                            mean_prob=0.75 if m == 'accuracy' else 0.0028, chance=c,
                            n_test_models=12, slices_per_snapshot=20)
                       for p, m, c in PROPERTIES])


def _position(num_positions=10):
  rows = []
  for k, (p, m, c) in enumerate(PROPERTIES):
    for i in range(num_positions):
      fraction = (i + 0.5) / num_positions
      value = (0.4 + 0.04 * i + 0.02 * k) if m == 'accuracy' else 0.004 - 0.0002 * i
      rows.append(dict(property=p, metric=m, position=i, offset=100 * i, fraction=fraction,
                       value=value, chance=c))
  return pd.DataFrame(rows)


def _snapshot(num_snapshots=20):
  rows = []
  for p, m, c in PROPERTIES:
    for s in range(1, num_snapshots + 1):
      value = 0.3 + 0.02 * s if m == 'accuracy' else 0.005 - 0.0001 * s
      rows.append(dict(property=p, metric=m, snapshot=s, value=value, chance=c,
                       trained=11 <= s <= 20))
  return pd.DataFrame(rows)


def _part(with_nan=True):
  rows = []
  for p, m, c in PROPERTIES:
    for part, value in (('conv', 0.5 if m == 'accuracy' else 0.0038),
                        ('dense', np.nan if with_nan else 0.6 if m == 'accuracy' else 0.003)):
      rows.append(dict(property=p, metric=m, part=part, value=value, chance=c))
  return pd.DataFrame(rows)


def _history(epochs=5, valid=True):
  rows = []
  for e in range(1, epochs + 1):
    for p, m, _ in PROPERTIES:
      score = (0.4 + 0.05 * e if m == 'accuracy' else -0.9 + 0.05 * e) if valid else np.nan
      rows.append(dict(epoch=e, property=p, train_loss=1.5 / e, valid_score=score))
  return pd.DataFrame(rows)


CASES = {
    'accuracy': (plots.plot_accuracy, _accuracy, {}),
    'accuracy_baseline': (plots.plot_accuracy, _accuracy, dict(baseline=_baseline())),
    'ensemble': (plots.plot_ensemble, _ensemble, {}),
    'position': (plots.plot_position, _position, dict(boundary=0.3)),
    'position_no_boundary': (plots.plot_position, _position, dict(boundary=None)),
    'snapshot': (plots.plot_snapshot, _snapshot, dict(train_range=(11, 20))),
    'part': (plots.plot_part, _part, {}),
    'history': (plots.plot_history, _history, {}),
}


def _png_size(path):
  """(width, height) from the IHDR chunk, after checking the PNG signature."""
  data = path.read_bytes()
  assert data[:8] == PNG_SIGNATURE
  assert data[12:16] == b'IHDR'
  return struct.unpack('>II', data[16:24])


def _assert_png(path):
  assert path.exists()
  width, height = _png_size(path)
  assert width > 300 and height > 200
  assert path.stat().st_size > 5_000  # something was drawn, not a blank canvas


def _assert_no_temp_files(folder):
  assert sorted(p.name for p in folder.iterdir() if not p.name.endswith('.png')) == []


@pytest.mark.parametrize('name', sorted(CASES))
def test_writes_a_png(tmp_path, name):
  plot, make, kwargs = CASES[name]
  path = tmp_path / f'{name}.png'
  fig = plot(make(), **kwargs)
  assert isinstance(fig, matplotlib.figure.Figure) and fig.axes  # a figure, drawn, unsaved
  assert list(tmp_path.iterdir()) == []
  plots.save(fig, path)
  _assert_png(path)
  _assert_no_temp_files(tmp_path)


@pytest.mark.parametrize('name', sorted(CASES))
def test_missing_column_raises(name):
  plot, make, kwargs = CASES[name]
  frame = make().drop(columns=['property'])
  with pytest.raises(ValueError, match='missing columns'):
    plot(frame, **kwargs)


@pytest.mark.parametrize('name', sorted(CASES))
def test_empty_frame_raises(name):
  plot, make, kwargs = CASES[name]
  frame = make().iloc[:0]
  with pytest.raises(ValueError, match='empty'):
    plot(frame, **kwargs)


def test_unknown_metric_raises():
  frame = _accuracy().assign(metric='rmse')
  with pytest.raises(ValueError, match='unknown metric'):
    plots.plot_accuracy(frame)


def test_baseline_is_checked():
  with pytest.raises(ValueError, match='baseline: missing columns'):
    plots.plot_accuracy(_accuracy(), baseline=_baseline().drop(columns=['method']))


def test_nan_parts_do_not_crash(tmp_path):
  for name, frame in (('some_nan', _part()),
                      ('all_nan', _part().assign(value=np.nan)),
                      ('with_all', pd.concat([_part(with_nan=False),
                                              _part().assign(part='all')]))):
    path = tmp_path / f'{name}.png'
    plots.save(plots.plot_part(frame), path)
    _assert_png(path)
  _assert_no_temp_files(tmp_path)


def test_single_metric_frames(tmp_path):
  """Only accuracy rows, or only the regressed lrate: one panel, still a figure."""
  acc, mae = _position().query("metric == 'accuracy'"), _position().query("metric == 'mae'")
  plots.save(plots.plot_position(acc, 0.5), tmp_path / 'acc.png')
  plots.save(plots.plot_position(mae, 0.5), tmp_path / 'mae.png')
  plots.save(plots.plot_accuracy(_accuracy().query("metric == 'mae'")), tmp_path / 'lrate.png')
  for name in ('acc', 'mae', 'lrate'):
    _assert_png(tmp_path / f'{name}.png')
  _assert_no_temp_files(tmp_path)


def test_history_without_validation(tmp_path):
  path = tmp_path / 'history.png'
  plots.save(plots.plot_history(_history(valid=False)), path)
  _assert_png(path)


def test_snapshot_bad_train_range():
  with pytest.raises(ValueError, match='train_range'):
    plots.plot_snapshot(_snapshot(), (20, 11))


def test_overwrites_existing_file(tmp_path):
  path = tmp_path / 'accuracy.png'
  path.write_bytes(b'old')
  plots.save(plots.plot_accuracy(_accuracy()), str(path))
  _assert_png(path)
  _assert_no_temp_files(tmp_path)
