"""The PNG figures of the evaluations: one function per CSV file of `evaluate` (and `baseline`).

Every `plot_*` function takes the DataFrame in the layout of its CSV file and returns one
`matplotlib.figure.Figure` (a notebook shows it inline); `save(fig, path)` writes it as a PNG
through a temporary file in the same folder (a reader never sees half a file). Figures are built
with the Agg canvas (`figure`), so no pyplot state is touched and nothing needs a display.

Metrics: 'accuracy' is a fraction (higher is better; chance is the best constant guess). 'mae' is
the mean absolute error in the property's own units (lower is better; chance is the MAE of always
predicting the meta-training mean). An MAE is never drawn on an accuracy axis: 'mae' rows are
drawn as the ratio value / chance on a panel of their own, where 1 is chance.

A frame that is empty, lacks a column of its layout, or names another metric raises ValueError.
"""

from __future__ import annotations

import os
from typing import Sequence

import matplotlib
import matplotlib.backends.backend_agg as backend_agg
import matplotlib.figure
import matplotlib.lines
import matplotlib.patches
import numpy as np
import pandas as pd

from nws_jax import files
from nws_jax.meta import targets as targets_lib

ACCURACY_COLUMNS = ('property', 'metric', 'value', 'chance', 'n_test_models')
BASELINE_COLUMNS = ('property', 'method', 'metric', 'value', 'chance', 'n_test_models')
ENSEMBLE_COLUMNS = ('property', 'metric', 'single', 'majority', 'mean_prob', 'chance',
                    'n_test_models', 'slices_per_snapshot')
POSITION_COLUMNS = ('property', 'metric', 'position', 'offset', 'fraction', 'value', 'chance')
SNAPSHOT_COLUMNS = ('property', 'metric', 'snapshot', 'value', 'chance', 'trained')
PART_COLUMNS = ('property', 'metric', 'part', 'value', 'chance')
HISTORY_COLUMNS = ('epoch', 'property', 'train_loss', 'valid_score')
PER_NET_COLUMNS = ('property', 'metric', 'model', 'snapshot', 'value')

METRICS = ('accuracy', 'mae')
ACCURACY_LABEL = 'accuracy (higher is better)'
RATIO_LABEL = 'MAE / MAE of predicting the mean (lower is better)'
_RATIO_LABEL_WRAPPED = RATIO_LABEL.replace(' the mean', '\nthe mean')  # fits a short panel
DPI = 120
WIDTH, HEIGHT = 8.0, 4.5
_MAX_VALUE_LABELS = 30  # bars beyond this many are left without their value printed on top


# ------------------------------------------------------------------------------------------------
# Checks and shared helpers


def check(frame, columns: Sequence[str], name: str, *, metric: bool = True) -> None:
  """ValueError unless `frame` is a non-empty DataFrame with `columns` and known metrics."""
  if not isinstance(frame, pd.DataFrame):
    raise ValueError(f'{name}: expected a pandas DataFrame, got {type(frame).__name__}')
  missing = [c for c in columns if c not in frame.columns]
  if missing:
    raise ValueError(f'{name}: missing columns {missing} (expected {list(columns)})')
  if frame.empty:
    raise ValueError(f'{name}: empty frame, nothing to plot')
  if metric:
    unknown = sorted(set(frame['metric'].astype(str)) - set(METRICS))
    if unknown:
      raise ValueError(f'{name}: unknown metric(s) {unknown} (expected one of {list(METRICS)})')


def properties(*frames: pd.DataFrame | None) -> list[str]:
  """Property names in order of first appearance over `frames`."""
  names = []
  for frame in frames:
    if frame is not None:
      names.extend(frame['property'].astype(str))
  return list(dict.fromkeys(names))


def metric_of(frame: pd.DataFrame) -> dict[str, str]:
  """property -> metric (the first row's, per property)."""
  first = frame.drop_duplicates('property')
  return dict(zip(first['property'].astype(str), first['metric'].astype(str)))


def _ratio(value, chance):
  """value / chance (NaN where chance is not positive): an MAE relative to predicting the mean."""
  value = np.asarray(value, np.float64)
  chance = np.asarray(chance, np.float64)
  with np.errstate(divide='ignore', invalid='ignore'):
    return np.where(chance > 0, value / np.where(chance > 0, chance, 1.0), np.nan)


def scaled(metric: str, value, chance):
  """What is drawn: accuracies as they are, MAEs as value / chance."""
  if metric == 'mae':
    return _ratio(value, chance)
  return np.asarray(value, np.float64)


def colours(names: Sequence[str]) -> dict[str, tuple]:
  cmap = matplotlib.colormaps['tab10' if len(names) <= 10 else 'tab20']
  return {name: cmap(i % cmap.N) for i, name in enumerate(names)}


def _count_text(values) -> str:
  """'12' or '10-12' for the number of test models."""
  values = pd.to_numeric(pd.Series(values), errors='coerce').dropna()
  if values.empty:
    return '?'
  lo, hi = int(values.min()), int(values.max())
  return str(lo) if lo == hi else f'{lo}-{hi}'


def figure(width: float = WIDTH, height: float = HEIGHT) -> matplotlib.figure.Figure:
  fig = matplotlib.figure.Figure(figsize=(width, height), dpi=DPI, layout='constrained')
  backend_agg.FigureCanvasAgg(fig)
  return fig


def save(fig: matplotlib.figure.Figure, path) -> None:
  """Writes `fig` (any of this module's figures) as a PNG to `path` through a temporary file in
  the same folder, then frees it."""
  try:
    files.write_atomic(os.fspath(path), lambda f: fig.savefig(f, format='png', dpi=DPI))
  finally:
    fig.clear()


def _bar_panels(fig, props: Sequence[str], metrics: dict[str, str]):
  """One axis for the accuracy properties and one for the MAE properties (only those present),
  widths in proportion to their number of properties. Returns [(axis, metric, properties)]."""
  by_metric = [(m, [p for p in props if metrics[p] == m]) for m in METRICS]
  by_metric = [(m, ps) for m, ps in by_metric if ps]
  axes = fig.subplots(1, len(by_metric), squeeze=False,
                      gridspec_kw=dict(width_ratios=[len(ps) + 0.6 for _, ps in by_metric]))[0]
  return [(ax, m, ps) for ax, (m, ps) in zip(axes, by_metric)]


def _bar_width(num_props: int, num_groups: int) -> float:
  return float(np.clip(1.2 + 0.35 * num_props * max(num_groups, 1) + 0.5 * num_props, WIDTH, 20))


def _draw_bars(ax, metric: str, props: Sequence[str], series, chance: dict[str, float],
               *, label_values: bool) -> None:
  """Grouped bars on `ax`: for each property a group with one bar per series, and the chance
  level of that property as a short black line across its group (1.0 on an MAE-ratio axis).

  series: [(label, colour, hatch, {property: value in the property's units}[, {property:
  chance}])]; an MAE is drawn as value / its own chance (the series' chance where it has one,
  else `chance`). A NaN or absent value draws no bar and writes 'n/a' where the bar would be.
  """
  n = len(series)
  width = 0.8 / max(n, 1)
  x = np.arange(len(props), dtype=np.float64)
  top = 0.0
  for i, (label, colour, hatch, values, *own) in enumerate(series):
    own = own[0] if own else {}
    pos = x - 0.4 + width * (i + 0.5)
    raw = pd.to_numeric(pd.Series([values.get(p, np.nan) for p in props]),
                        errors='coerce').to_numpy(np.float64)
    chances = np.array([own.get(p, chance.get(p, np.nan)) for p in props], np.float64)
    drawn = scaled(metric, raw, chances)
    ok = np.isfinite(drawn)
    bars = ax.bar(pos[ok], drawn[ok], width * 0.92, color=colour, hatch=hatch,
                  edgecolor='black' if hatch else None, linewidth=0.5 if hatch else 0)
    if ok.any():
      top = max(top, float(np.nanmax(drawn[ok])))
    if label_values:
      for rect, v in zip(bars, drawn[ok]):
        ax.annotate(f'{v:.2f}', (rect.get_x() + rect.get_width() / 2, rect.get_height()),
                    xytext=(0, 2), textcoords='offset points', ha='center', va='bottom',
                    fontsize=7)
    for p in pos[~ok]:
      ax.annotate('n/a', (p, 0), xytext=(0, 3), textcoords='offset points', ha='center',
                  va='bottom', fontsize=8, color='dimgray', rotation=90)
  levels = np.array([1.0 if metric == 'mae' else chance.get(p, np.nan) for p in props],
                    np.float64)
  ax.hlines(levels, x - 0.45, x + 0.45, colors='black', linewidths=2)
  if np.isfinite(levels).any():
    top = max(top, float(np.nanmax(levels)))
  ax.set_xticks(x, props, rotation=20 if len(props) > 4 else 0,
                ha='right' if len(props) > 4 else 'center')
  ax.set_xlim(-0.6, len(props) - 0.4)
  ax.set_xlabel('property')
  if metric == 'accuracy':
    ax.set_ylabel(ACCURACY_LABEL)
    ax.set_ylim(0, max(1.0, top) * 1.12)
  else:
    ax.set_ylabel(_RATIO_LABEL_WRAPPED)
    ax.set_ylim(0, max(top, 1.0) * 1.15)
  ax.grid(axis='y', alpha=0.3)
  ax.set_axisbelow(True)


def _bar_chart(props: Sequence[str], metrics: dict[str, str], series, chance: dict[str, float],
               title: str) -> matplotlib.figure.Figure:
  """Grouped bars of `series` per property on an accuracy and/or an MAE-ratio panel, with the
  chance marks, a title and one legend."""
  fig = figure(_bar_width(len(props), len(series)), HEIGHT)
  panels = _bar_panels(fig, props, metrics)
  label_values = len(props) * len(series) <= _MAX_VALUE_LABELS
  for ax, metric, ps in panels:
    _draw_bars(ax, metric, ps, series, chance, label_values=label_values)
  fig.suptitle(title, fontsize=11)
  _bar_legend(fig, series, panels)
  return fig


def _bar_legend(fig, series, panels) -> None:
  """One legend below the panels: a swatch per series (drawn or not), then the chance marks."""
  handles = [matplotlib.patches.Patch(facecolor=colour, hatch=hatch, label=label,
                                      edgecolor='black' if hatch else colour, linewidth=0.5)
             for label, colour, hatch, *_ in series]
  metrics = [metric for _, metric, _ in panels]
  if 'accuracy' in metrics:
    handles.append(matplotlib.lines.Line2D([], [], color='black', linewidth=2,
                                           label='chance (best constant guess)'))
  if 'mae' in metrics:
    handles.append(matplotlib.lines.Line2D([], [], color='black', linewidth=2,
                                           label='chance (predicting the mean)'))
  # as many columns as fit the figure's width (about 4.8 pt per character at 8 pt, plus the swatch)
  chars = fig.get_figwidth() * 72 / 4.8
  ncol = int(np.clip(chars // (max(len(h.get_label()) for h in handles) + 8), 1, 4))
  fig.legend(handles=handles, loc='outside lower center', ncol=min(len(handles), ncol),
             fontsize=8)


# ------------------------------------------------------------------------------------------------
# Figures


def plot_accuracy(accuracy: pd.DataFrame, baseline: pd.DataFrame | None = None
                  ) -> matplotlib.figure.Figure:
  """Single-slice score per property (accuracy.csv), optionally beside the baseline.

  One bar per property for the deep meta-classifier (and, when `baseline` is given, grouped with
  one bar per baseline method, e.g. 'gbt_slice', 'gbt_layers'); each property's chance level is a
  short black line across its group. Accuracy properties share an accuracy axis; 'mae'
  properties (lrate) are drawn as MAE / chance on a panel of their own. The number of meta-test
  models is in the title.
  """
  check(accuracy, ACCURACY_COLUMNS, 'accuracy')
  if baseline is not None:
    check(baseline, BASELINE_COLUMNS, 'baseline')
  acc = accuracy.assign(property=accuracy['property'].astype(str))
  props = properties(acc, baseline)
  metrics = metric_of(pd.concat([acc[['property', 'metric']]] + (
      [baseline[['property', 'metric']].astype(str)] if baseline is not None else [])))
  chance = dict(zip(acc['property'], acc['chance']))
  tab10 = matplotlib.colormaps['tab10']
  series = [('deep meta-classifier', tab10(0), None, dict(zip(acc['property'], acc['value'])),
             chance)]
  if baseline is not None:
    base = baseline.assign(property=baseline['property'].astype(str))
    for p, c in zip(base['property'], base['chance']):
      chance.setdefault(p, c)  # the chance line of a property only the baseline scored
    hatches = ['//', '..', 'xx', '\\\\', '++']
    for i, (method, rows) in enumerate(base.groupby('method', sort=False)):
      series.append((str(method), tab10(i + 1), hatches[i % len(hatches)],
                     dict(zip(rows['property'], rows['value'])),
                     dict(zip(rows['property'], rows['chance']))))
  n = _count_text(acc['n_test_models'])
  what = 'meta-classifier vs. statistics baseline' if baseline is not None else 'meta-classifier'
  return _bar_chart(props, metrics, series, chance,
                    f'Single-slice score per property, {what} (n = {n} meta-test models)')


def plot_ensemble(ensemble: pd.DataFrame) -> matplotlib.figure.Figure:
  """Single slice vs. votes over many slices per snapshot (ensemble.csv).

  Per property, three grouped bars: the single-slice score, the majority vote and the
  mean-probability vote over `slices_per_snapshot` slices of each snapshot (for the regressed
  lrate: the median and the mean of the predictions); each property's chance level is a short
  black line across its group. 'mae' properties are drawn as MAE / chance on their own panel.
  """
  check(ensemble, ENSEMBLE_COLUMNS, 'ensemble')
  ens = ensemble.assign(property=ensemble['property'].astype(str))
  props = properties(ens)
  metrics = metric_of(ens)
  chance = dict(zip(ens['property'], ens['chance']))
  tab10 = matplotlib.colormaps['tab10']
  series = [(label, tab10(i), None, dict(zip(ens['property'], ens[column])))
            for i, (column, label) in enumerate((
                ('single', 'single slice'),
                ('majority', 'majority vote (median for MAE)'),
                ('mean_prob', 'mean-probability vote (mean for MAE)')))]
  k = _count_text(ens['slices_per_snapshot'])
  n = _count_text(ens['n_test_models'])
  return _bar_chart(props, metrics, series, chance,
                    f'Ensembles: votes over {k} slices per snapshot (n = {n} meta-test models)')


def _line_panels(fig, frame: pd.DataFrame, sharex: bool = True):
  """Stacked panels for line plots: accuracy properties, then MAE properties (present ones)."""
  metrics = metric_of(frame)
  props = properties(frame)
  by_metric = [(m, [p for p in props if metrics[p] == m]) for m in METRICS]
  by_metric = [(m, ps) for m, ps in by_metric if ps]
  axes = fig.subplots(len(by_metric), 1, squeeze=False, sharex=sharex,
                      gridspec_kw=dict(height_ratios=[2 if m == 'accuracy' else 1.3
                                                      for m, _ in by_metric]))[:, 0]
  return [(ax, m, ps) for ax, (m, ps) in zip(axes, by_metric)]


def _draw_lines(ax, frame: pd.DataFrame, metric: str, props: Sequence[str], x: str,
                palette: dict, *, marker=None, filled: str | None = None) -> None:
  """value (accuracy, or MAE / chance) against column `x`, one line per property, with each
  accuracy property's chance as a dotted line in its colour (1.0, black, on an MAE-ratio axis).
  filled: a boolean column; rows where it is False get hollow markers."""
  for p in props:
    rows = frame[frame['property'] == p].sort_values(x)
    xs = rows[x].to_numpy(np.float64)
    ys = scaled(metric, rows['value'], rows['chance'])
    ax.plot(xs, ys, color=palette[p], marker=marker, markersize=4, linewidth=1.5, label=p)
    if filled is not None and marker is not None:
      hollow = ~rows[filled].astype(bool).to_numpy()
      ax.plot(xs[hollow], ys[hollow], linestyle='none', marker=marker, markersize=4,
              markerfacecolor='white', markeredgecolor=palette[p])
    if metric == 'accuracy':
      level = pd.to_numeric(rows['chance'], errors='coerce').mean()
      if np.isfinite(level):
        ax.axhline(level, color=palette[p], linestyle=':', linewidth=1.2)
  if metric == 'accuracy':
    ax.set_ylabel(ACCURACY_LABEL)
    ax.set_ylim(0, 1.02)
    ax.plot([], [], color='gray', linestyle=':', label='chance (dotted, same colour)')
  else:
    ax.axhline(1.0, color='black', linestyle=':', linewidth=1.2,
               label='chance (predicting the mean)')
    ax.set_ylabel(_RATIO_LABEL_WRAPPED)
    ax.set_ylim(bottom=0)
  ax.grid(alpha=0.3)
  ax.legend(fontsize=8, loc='upper left', bbox_to_anchor=(1.01, 1.0), borderaxespad=0)


def plot_position(position: pd.DataFrame, boundary: float | None) -> matplotlib.figure.Figure:
  """Score against where the slice is read (position.csv).

  One line per property of its score against the slice centre as a fraction of the weight vector
  (0 = start, 1 = end). Accuracy properties on the top panel, each with its chance level as a
  dotted line in the same colour; 'mae' properties on a second panel as MAE / chance (1 = chance).
  A vertical dashed line, labelled 'conv | dense', marks `boundary` (the fraction where the
  convolutional part ends and the dense part begins) when it is not None.
  """
  check(position, POSITION_COLUMNS, 'position')
  if boundary is not None:
    boundary = float(boundary)
    if not np.isfinite(boundary):
      boundary = None
  pos = position.assign(property=position['property'].astype(str))
  palette = colours(properties(pos))
  fig = figure(WIDTH, HEIGHT if pos['metric'].nunique() == 1 else 6.5)
  panels = _line_panels(fig, pos)
  for ax, metric, ps in panels:
    _draw_lines(ax, pos, metric, ps, 'fraction', palette)
    if boundary is not None:
      ax.axvline(boundary, color='black', linestyle='--', linewidth=1)
      ax.annotate('conv | dense', (boundary, 1), xycoords=('data', 'axes fraction'),
                  xytext=(0, -4), textcoords='offset points', ha='center', va='top',
                  fontsize=8, bbox=dict(boxstyle='round,pad=0.2', fc='white', ec='none'))
    ax.set_xlim(0, 1)
  panels[-1][0].set_xlabel('position in the weight vector (fraction)')
  k = int(pos.groupby('property')['position'].nunique().max())
  fig.suptitle(f'Score by slice position ({k} positions per property)', fontsize=11)
  return fig


def plot_snapshot(snapshot: pd.DataFrame, train_range: tuple[int, int]
                  ) -> matplotlib.figure.Figure:
  """Score against the snapshot read (snapshot.csv).

  One line per property of its score against the snapshot number; filled markers where the
  meta-classifier was trained on that snapshot, hollow ones elsewhere. The trained snapshot
  range `train_range` (first, last; inclusive) is shaded and labelled 'trained on'. Accuracy
  properties on the top panel, each with its chance level dotted in the same colour; 'mae'
  properties on a second panel as MAE / chance (1 = chance).
  """
  check(snapshot, SNAPSHOT_COLUMNS, 'snapshot')
  try:
    first, last = (int(v) for v in train_range)
  except (TypeError, ValueError):
    raise ValueError(f'snapshot: train_range must be (first, last), got {train_range!r}') from None
  if first > last:
    raise ValueError(f'snapshot: train_range first {first} is after last {last}')
  snap = snapshot.assign(property=snapshot['property'].astype(str))
  palette = colours(properties(snap))
  fig = figure(WIDTH, HEIGHT if snap['metric'].nunique() == 1 else 6.5)
  panels = _line_panels(fig, snap)
  for ax, metric, ps in panels:
    ax.axvspan(first - 0.5, last + 0.5, color='tab:green', alpha=0.12,
               label=f'trained on (snapshots {first}-{last})')
    ax.annotate('trained on', ((first + last) / 2, 1), xycoords=('data', 'axes fraction'),
                xytext=(0, -4), textcoords='offset points', ha='center', va='top', fontsize=8,
                color='darkgreen')
    _draw_lines(ax, snap, metric, ps, 'snapshot', palette, marker='o', filled='trained')
  numbers = pd.to_numeric(snap['snapshot'], errors='coerce')
  lo, hi = int(min(numbers.min(), first)), int(max(numbers.max(), last))
  ax_last = panels[-1][0]
  ax_last.set_xlim(lo - 0.6, hi + 0.6)
  ax_last.set_xticks(range(lo, hi + 1, max(1, (hi - lo) // 20 + 1)))
  ax_last.set_xlabel('snapshot number')
  fig.suptitle('Score by training snapshot read (hollow markers: not trained on)', fontsize=11)
  return fig


def plot_part(part: pd.DataFrame) -> matplotlib.figure.Figure:
  """Score per part of the weight vector the slices were read from (part.csv).

  Per property, grouped bars for 'conv', 'dense' (and 'all' or other parts when present); a
  NaN value (a part shorter than a slice) draws no bar and is annotated 'n/a'. Each property's
  chance level is a short black line across its group; 'mae' properties are drawn as
  MAE / chance on their own panel.
  """
  check(part, PART_COLUMNS, 'part')
  frame = part.assign(property=part['property'].astype(str), part=part['part'].astype(str))
  props = properties(frame)
  metrics = metric_of(frame)
  chance = dict(zip(frame['property'], frame['chance']))
  present = list(dict.fromkeys(frame['part']))
  parts = [p for p in ('conv', 'dense', 'all') if p in present]
  parts += [p for p in present if p not in parts]
  tab10 = matplotlib.colormaps['tab10']
  named = {'conv': 'conv part', 'dense': 'dense part', 'all': 'whole vector'}
  series = []
  for i, name in enumerate(parts):
    rows = frame[frame['part'] == name]
    series.append((named.get(name, name), tab10(i), None,
                   dict(zip(rows['property'], pd.to_numeric(rows['value'], errors='coerce')))))
  return _bar_chart(props, metrics, series, chance,
                    'Score by part of the weight vector read (n/a: part shorter than a slice)')


def plot_per_net(per_net: pd.DataFrame, chance: pd.DataFrame) -> matplotlib.figure.Figure:
  """Per-net scores (per_net.csv: the original's valid_avg, one score per test snapshot from a
  batch of its evenly spaced slices).

  Per property a box of the scores over its test snapshots (median, quartiles, whiskers at 1.5
  IQR, outliers as dots) and their mean as a diamond (accuracy.csv's per_net); the property's
  chance level, from `chance` (a frame with property and chance: accuracy.csv's), is a short
  black line. Accuracy properties share an accuracy axis; 'mae' properties (lrate) are drawn as
  MAE / chance on a panel of their own.
  """
  check(per_net, PER_NET_COLUMNS, 'per_net')
  check(chance, ('property', 'chance'), 'per_net chance', metric=False)
  frame = per_net.assign(property=per_net['property'].astype(str))
  props = properties(frame)
  metrics = metric_of(frame)
  levels = dict(zip(chance['property'].astype(str),
                    pd.to_numeric(chance['chance'], errors='coerce')))
  fig = figure(_bar_width(len(props), 1), HEIGHT)
  panels = _bar_panels(fig, props, metrics)
  for ax, metric, ps in panels:
    x = np.arange(len(ps), dtype=np.float64)
    data = []
    for p in ps:
      drawn = scaled(metric, frame.loc[frame['property'] == p, 'value'],
                      levels.get(p, np.nan))
      data.append(drawn[np.isfinite(drawn)])
    ax.boxplot([d if len(d) else [np.nan] for d in data], positions=x, widths=0.5,
               flierprops=dict(markersize=3), medianprops=dict(color='tab:blue'))
    means = np.array([d.mean() if len(d) else np.nan for d in data])
    ax.plot(x, means, linestyle='none', marker='D', markersize=5, color='tab:orange',
            label='mean (accuracy.csv per_net)')
    lv = np.array([1.0 if metric == 'mae' else levels.get(p, np.nan) for p in ps], np.float64)
    ax.hlines(lv, x - 0.45, x + 0.45, colors='black', linewidths=2,
              label='chance' if metric == 'accuracy' else 'chance (predicting the mean)')
    top = max([1.0] + [float(d.max()) for d in data if len(d)])
    ax.set_xticks(x, ps, rotation=20 if len(ps) > 4 else 0,
                  ha='right' if len(ps) > 4 else 'center')
    ax.set_xlim(-0.6, len(ps) - 0.4)
    ax.set_xlabel('property')
    ax.set_ylabel(ACCURACY_LABEL if metric == 'accuracy' else _RATIO_LABEL_WRAPPED)
    ax.set_ylim(0, top * (1.05 if metric == 'accuracy' else 1.15))
    ax.grid(axis='y', alpha=0.3)
    ax.set_axisbelow(True)
    ax.legend(fontsize=7, loc='lower right')
  counts = frame.groupby('property')['value'].size()
  fig.suptitle('Per-net score: evenly spaced slices of a test snapshot as one batch '
               f'(n = {_count_text(counts)} test snapshots per property)', fontsize=11)
  return fig


def plot_history(history: pd.DataFrame,
                 regression: Sequence[str] = targets_lib.REGRESSION_PROPERTIES
                 ) -> matplotlib.figure.Figure:
  """Meta-training curves (history.csv), one line per property, against epoch.

  Left panel: the training loss (cross-entropy; L1 on the standardised target for regressed
  properties). Right panel: the validation score, accuracy for categorical properties on the
  left axis; for the `regression` properties (lrate), whose valid_score is minus the MAE in
  standardised units, the MAE itself on a secondary axis. When valid_score is all NaN (no
  validation models) the right panel says so.
  """
  check(history, HISTORY_COLUMNS, 'history', metric=False)
  hist = history.assign(property=history['property'].astype(str),
                        epoch=pd.to_numeric(history['epoch'], errors='coerce'),
                        train_loss=pd.to_numeric(history['train_loss'], errors='coerce'),
                        valid_score=pd.to_numeric(history['valid_score'], errors='coerce'))
  props = properties(hist)
  palette = colours(props)
  regressed = set(regression)
  fig = figure(WIDTH * 1.25, HEIGHT)
  ax_loss, ax_valid = fig.subplots(1, 2)
  marker = 'o' if hist['epoch'].nunique() <= 30 else None
  for p in props:
    rows = hist[hist['property'] == p].sort_values('epoch')
    ax_loss.plot(rows['epoch'], rows['train_loss'], color=palette[p], marker=marker,
                 markersize=3, label=p)
  ax_loss.set_xlabel('epoch')
  ax_loss.set_ylabel('training loss (lower is better)')
  ax_loss.set_title('training loss')
  ax_loss.grid(alpha=0.3)
  ax_loss.legend(fontsize=8, loc='best')

  ax_valid.set_xlabel('epoch')
  ax_valid.set_title('validation score')
  ax_valid.grid(alpha=0.3)
  if hist['valid_score'].notna().any():
    twin = None
    handles = []
    for p in props:
      rows = hist[hist['property'] == p].sort_values('epoch')
      if p in regressed:
        if twin is None:
          twin = ax_valid.twinx()
          twin.set_ylabel('validation MAE, standardised units (lower is better)')
        handles += twin.plot(rows['epoch'], -rows['valid_score'], color=palette[p],
                             linestyle='--', marker=marker, markersize=3, label=f'{p} (MAE)')
      else:
        handles += ax_valid.plot(rows['epoch'], rows['valid_score'], color=palette[p],
                                 marker=marker, markersize=3, label=p)
    if any(p not in regressed for p in props):
      ax_valid.set_ylabel(ACCURACY_LABEL)
      ax_valid.set_ylim(0, 1.02)
    else:
      ax_valid.set_yticks([])
    if twin is not None:
      twin.set_ylim(bottom=0)
    ax_valid.legend(handles, [h.get_label() for h in handles], fontsize=8, loc='best')
  else:
    ax_valid.set_yticks([])
    ax_valid.text(0.5, 0.5, 'no validation scores\n(no validation models)',
                  transform=ax_valid.transAxes, ha='center', va='center', color='dimgray')
  for ax in (ax_loss, ax_valid):
    ax.xaxis.get_major_locator().set_params(integer=True)
  fig.suptitle(f'Meta-training history ({len(props)} properties)', fontsize=11)
  return fig
