"""The studies' figures beyond train_meta's own: a score against a swept knob, per property.

`plot_sweep` draws one small panel per property: its score (accuracy; for lrate the MAE relative
to predicting the mean, 1 = chance) against a numeric column (snapshot number, slice length,
slices in a vote, ...), one line per series (the snapshot range trained on, single slice or
vote, ...), with chance as a dotted black line. Same conventions as nws_jax.meta.plots.
"""

from __future__ import annotations

import math
import matplotlib
import matplotlib.lines
import matplotlib.ticker
import numpy as np
import pandas as pd

from nws_jax.meta import plots

_COLUMNS = 4
_PANEL_WIDTH, _PANEL_HEIGHT = 3.0, 2.4


def plot_sweep(frame: pd.DataFrame, *, x: str, series: str, title: str, xlabel: str,
               log_x: bool = False, shade: tuple[float, float] | None = None,
               series_labels: dict | None = None) -> matplotlib.figure.Figure:
  """frame: columns property, metric, value, chance, `x` and `series`; one row per point.

  shade: an x interval to shade (e.g. the boundary of the conv part); series_labels: legend
  text per series value."""
  plots.check(frame, ('property', 'metric', 'value', 'chance', x, series), title)
  frame = frame.assign(property=frame['property'].astype(str))
  props = plots.properties(frame)
  metrics = plots.metric_of(frame)
  names = list(dict.fromkeys(frame[series]))
  cmap = matplotlib.colormaps['tab10']
  colours = {name: cmap(i % cmap.N) for i, name in enumerate(names)}
  cols = min(_COLUMNS, len(props))
  rows = math.ceil(len(props) / cols)
  fig = plots.figure(_PANEL_WIDTH * cols + 1.8, _PANEL_HEIGHT * rows + 0.6)
  axes = fig.subplots(rows, cols, squeeze=False, sharex=True)
  for ax in axes.flat[len(props):]:
    ax.set_visible(False)
  for ax, prop in zip(axes.flat, props):
    metric = metrics[prop]
    rows_p = frame[frame['property'] == prop]
    for name in names:
      line = rows_p[rows_p[series] == name].sort_values(x)
      if line.empty:
        continue
      ys = plots.scaled(metric, line['value'], line['chance'])
      label = (series_labels or {}).get(name, str(name))
      ax.plot(line[x].to_numpy(np.float64), ys, marker='o', markersize=3, linewidth=1.4,
              color=colours[name], label=label)
    level = 1.0 if metric == 'mae' else pd.to_numeric(rows_p['chance'], errors='coerce').mean()
    if np.isfinite(level):
      ax.axhline(level, color='black', linestyle=':', linewidth=1.1)
    if shade is not None:
      ax.axvspan(*shade, color='tab:green', alpha=0.1)
    ax.set_title(prop + (' (MAE / chance)' if metric == 'mae' else ''), fontsize=9)
    if metric == 'accuracy':
      ax.set_ylim(0, 1.02)
    else:
      ax.set_ylim(bottom=0)
    if log_x:
      ax.set_xscale('log')
      ticks = np.unique(frame[x].to_numpy(np.float64))
      ax.set_xticks(ticks, [f'{t:g}' for t in ticks], minor=False)
      ax.xaxis.set_minor_locator(matplotlib.ticker.NullLocator())
    ax.grid(alpha=0.3)
    ax.tick_params(labelsize=7)
  for ax in axes[-1]:
    ax.set_xlabel(xlabel, fontsize=8)
  handles = [matplotlib.lines.Line2D([], [], color=colours[n], marker='o', markersize=3,
                                     label=(series_labels or {}).get(n, str(n))) for n in names]
  handles.append(matplotlib.lines.Line2D([], [], color='black', linestyle=':',
                                         label='chance (lrate: 1 = predicting the mean)'))
  fig.legend(handles=handles, loc='outside right upper', fontsize=8)
  fig.suptitle(title, fontsize=11)
  return fig

