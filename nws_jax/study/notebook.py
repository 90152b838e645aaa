"""What the notebooks in experiments/notebooks call: the runs to show, tables and figures.

`zoo_path()` and `meta_path(zoo)` name the runs: the workdirs in the environment variables
`NWS_ZOO` (a finished zoo) and `NWS_META` (a finished train_meta run), or else a tiny zoo and a
tiny meta-classifier run built once per process into fresh temporary folders (a few minutes on
a 2-core CPU, mostly XLA compiling). The figure functions return `matplotlib.figure.Figure`s on
the Agg canvas (no pyplot state), which a notebook shows inline; `meta_figure` draws
nws_jax.meta.plots' PNGs and returns them as IPython images.

Accuracies are fractions (0..1); the zoos' datasets have 10 classes, so chance is 0.1.
"""

from __future__ import annotations

import math
import os
import tempfile
import time

import matplotlib
import matplotlib.figure
import numpy as np
import pandas as pd

from nws_jax import space
from nws_jax import zoo as zoo_lib
from nws_jax.meta import plots
from nws_jax.meta import slices as slices_lib
from nws_jax.meta import targets

ZOO_VARIABLE = 'NWS_ZOO'
META_VARIABLE = 'NWS_META'
CHANCE = 0.1  # 10 classes in every dataset
LRATE_BINS = 4
META_KINDS = ('accuracy', 'ensemble', 'position', 'snapshot', 'part', 'history')

# Names of the categorical properties stored as indices in models.csv.
_NAMES = {'optimizer': space.OPTIMIZERS, 'activation': space.ACTIVATIONS,
          'initialization': space.INITIALIZATIONS}
_COLUMNS = 4
_PANEL_WIDTH, _PANEL_HEIGHT = 2.9, 2.5

# The tiny runs built when no variable names one, once per process (zoo path -> run path).
_tiny_zoo: str | None = None
_tiny_meta: dict[str, str] = {}


def tiny_zoo_config():
  """The tiny zoo: 8 models of 3 epochs on the offline datasets (`configs.presets.NOTEBOOK`)."""
  from nws_jax.configs import presets
  return presets.NOTEBOOK


def tiny_meta_config():
  """(MetaConfig, EvalOptions) of the tiny meta-classifier run (`configs.presets.NOTEBOOK_META`):
  200-weight slices of all 20 snapshots, 3 epochs, a small network, failed models kept."""
  from nws_jax.configs import presets
  return presets.NOTEBOOK_META


def zoo_path() -> str:
  """The zoo to show: `NWS_ZOO` if set (ValueError unless it holds a finished zoo's
  models.csv), else a tiny zoo built once per process into a fresh temporary folder."""
  global _tiny_zoo
  path = os.environ.get(ZOO_VARIABLE)
  if path:
    if not os.path.isfile(os.path.join(path, zoo_lib.MODELS_FILE)):
      raise ValueError(f'{ZOO_VARIABLE}={path} is not a finished zoo (no '
                       f'{zoo_lib.MODELS_FILE}); point it at a train_zoo workdir or unset it')
    print(f'zoo: {path} (from {ZOO_VARIABLE})')
    return path
  if _tiny_zoo is None:
    from nws_jax.zoo import builder as zoo_builder
    path = tempfile.mkdtemp(prefix='nws_tiny_zoo_')
    t0 = time.time()
    zoo_builder.build_zoo(tiny_zoo_config(), path)
    _tiny_zoo = path
    print(f'{ZOO_VARIABLE} is not set: built a tiny zoo in {path} ({time.time() - t0:.0f} s)')
  else:
    print(f'{ZOO_VARIABLE} is not set: the tiny zoo built before, {_tiny_zoo}')
  return _tiny_zoo


def meta_path(zoo: str | None = None) -> str:
  """The meta-classifier run to show: `NWS_META` if set (ValueError unless it holds a finished
  run's accuracy.csv), else a tiny run on `zoo` (None: `zoo_path()`) trained once per process
  into a fresh temporary folder."""
  path = os.environ.get(META_VARIABLE)
  if path:
    if not os.path.isfile(os.path.join(path, 'accuracy.csv')):
      raise ValueError(f'{META_VARIABLE}={path} is not a finished meta-classifier run (no '
                       'accuracy.csv); point it at a train_meta workdir or unset it')
    print(f'meta-classifier run: {path} (from {META_VARIABLE})')
    return path
  zoo = zoo or zoo_path()
  key = os.path.realpath(zoo)
  if key not in _tiny_meta:
    from nws_jax.meta import pipeline
    path = os.path.join(tempfile.mkdtemp(prefix='nws_tiny_meta_'), 'meta')
    t0 = time.time()
    config, options = tiny_meta_config()
    pipeline.train_and_evaluate(config, zoo, path, options=options)
    _tiny_meta[key] = path
    print(f'{META_VARIABLE} is not set: trained a tiny meta-classifier run in {path} '
          f'({time.time() - t0:.0f} s)')
  else:
    print(f'{META_VARIABLE} is not set: the tiny run trained before, {_tiny_meta[key]}')
  return _tiny_meta[key]


def load_zoo(path: str) -> zoo_lib.Zoo:
  """nws_jax.zoo.load_zoo: the zoo's snapshots, models.csv (.table) and curves.csv (.curves)."""
  return zoo_lib.load_zoo(path)


# ------------------------------------------------------------------------------------------------
# The zoo


def zoo_summary(table: pd.DataFrame) -> pd.DataFrame:
  """One row per dataset and a last row 'all': models, failed (below 0.15 test accuracy or
  diverged), mean train/valid/test accuracy (fractions) and mean epochs trained."""
  frame = table.assign(dataset=table['dataset'].astype(str))
  failed = frame['failed'].astype(bool) if 'failed' in frame else pd.Series(False, frame.index)
  frame = frame.assign(failed=failed)
  columns = [c for c in ('train_accuracy', 'valid_accuracy', 'test_accuracy', 'epochs')
             if c in frame]

  def row(rows):
    out = {'models': len(rows), 'failed': int(rows['failed'].sum())}
    out.update({f'mean {c}': rows[c].mean() for c in columns})
    return out

  rows = {name: row(rows) for name, rows in frame.groupby('dataset', sort=True)}
  rows['all'] = row(frame)
  summary = pd.DataFrame.from_dict(rows, orient='index')
  summary.index.name = 'dataset'
  return summary.round(3)


def property_labels(table: pd.DataFrame, prop: str) -> pd.Series:
  """Per model, the value of `prop` as a readable label (str): optimizer, activation and
  initialization by name; lrate binned into LRATE_BINS ranges of about equal counts, each
  labelled by its models' lowest and highest rate."""
  values = table[prop]
  if prop == 'lrate':
    values = values.astype(float)
    codes = pd.qcut(values, min(LRATE_BINS, values.nunique()), labels=False, duplicates='drop')
    lo, hi = values.groupby(codes).min(), values.groupby(codes).max()
    return codes.map(lambda c: f'{lo[c]:.1e}–{hi[c]:.1e}')  # each bin's own models' range
  if prop in _NAMES:
    names = _NAMES[prop]
    return values.map(lambda v: names[int(v)] if 0 <= int(v) < len(names) else str(v))
  return values.astype(str)


def _ordered(labels: pd.Series, table: pd.DataFrame, prop: str) -> list[str]:
  """The distinct labels, in the order of the values they stand for."""
  first = pd.DataFrame({'label': np.asarray(labels), 'value': table[prop].to_numpy()})
  first = first.groupby('label')['value'].min()
  try:
    return list(first.sort_values().index)
  except TypeError:  # values of mixed types
    return sorted(first.index)


def accuracy_by_property(table: pd.DataFrame) -> matplotlib.figure.Figure:
  """Test accuracy of the zoo's models per value of each varying property (models.csv).

  One panel per property that varies: a box per value (median, quartiles) with the models as
  jittered points over it; lrate binned into LRATE_BINS ranges; chance (0.1) dotted.
  """
  props = targets.varying_properties(table)
  if not props:
    raise ValueError('no property varies in this zoo: nothing to compare')
  cols = min(_COLUMNS, len(props))
  rows = math.ceil(len(props) / cols)
  fig = plots.figure(_PANEL_WIDTH * cols, _PANEL_HEIGHT * rows + 0.5)
  axes = fig.subplots(rows, cols, squeeze=False, sharey=True)
  for ax in axes.flat[len(props):]:
    ax.set_visible(False)
  rng = np.random.default_rng(0)
  accuracy = pd.to_numeric(table['test_accuracy'], errors='coerce')
  for ax, prop in zip(axes.flat, props):
    labels = property_labels(table, prop)
    names = _ordered(labels, table, prop)
    groups = [accuracy[(labels == name).to_numpy()].dropna().to_numpy() for name in names]
    x = np.arange(1, len(names) + 1)
    ax.boxplot(groups, positions=x, widths=0.6, showfliers=False,
               medianprops=dict(color='black'))
    for xi, values in zip(x, groups):
      ax.plot(xi + rng.uniform(-0.15, 0.15, len(values)), values, 'o', markersize=3,
              alpha=0.6, color='tab:blue')
    ax.axhline(CHANCE, color='black', linestyle=':', linewidth=1)
    long = max(len(n) for n in names) > 6
    ax.set_xticks(x, names, rotation=30 if long else 0, ha='right' if long else 'center',
                  fontsize=7)
    ax.set_title(prop, fontsize=9)
    ax.set_ylim(0, 1.02)
    ax.grid(axis='y', alpha=0.3)
    ax.tick_params(axis='y', labelsize=7)
  for ax in axes[:, 0]:
    ax.set_ylabel('test accuracy', fontsize=8)
  fig.suptitle(f'Test accuracy per property value ({len(table)} models; dotted: chance)',
               fontsize=11)
  return fig


def training_curves(curves: pd.DataFrame, table: pd.DataFrame,
                    prop: str = 'optimizer') -> matplotlib.figure.Figure:
  """Validation accuracy against epoch (0 = initialisation), from curves.csv: one thin line per
  model coloured by its value of `prop`, and the per-value mean over the models still training
  at each epoch as a thick line; chance (0.1) dotted."""
  if prop not in table:
    raise ValueError(f'unknown property {prop!r}; choose from: ' + ', '.join(space.PROPERTY_NAMES))
  ids = table['model_id'] if 'model_id' in table else pd.Series(np.arange(len(table)))
  labels = pd.Series(property_labels(table, prop).to_numpy(), index=ids.to_numpy())
  names = _ordered(labels, table, prop)
  colours = plots.colours(names)
  fig = plots.figure(plots.WIDTH, plots.HEIGHT)
  ax = fig.subplots()
  frame = curves.assign(label=curves['model_id'].map(labels)).dropna(subset=['label'])
  for _, rows in frame.groupby('model_id', sort=True):
    rows = rows.sort_values('epoch')
    ax.plot(rows['epoch'], rows['valid_accuracy'], color=colours[rows['label'].iloc[0]],
            linewidth=0.7, alpha=0.4)
  for name in names:
    mean = frame[frame['label'] == name].groupby('epoch')['valid_accuracy'].mean()
    count = int((labels == name).sum())
    ax.plot(mean.index, mean.to_numpy(), color=colours[name], linewidth=2.5,
            label=f'{name} (mean of {count})')
  ax.axhline(CHANCE, color='black', linestyle=':', linewidth=1, label='chance')
  if frame.empty:
    ax.text(0.5, 0.5, 'no training curves in this zoo', transform=ax.transAxes, ha='center',
            va='center', color='dimgray')
  ax.set_xlabel('epoch (0 = initialisation)')
  ax.set_ylabel('validation accuracy')
  ax.set_ylim(0, 1.02)
  ax.xaxis.get_major_locator().set_params(integer=True)
  ax.grid(alpha=0.3)
  ax.legend(title=prop, fontsize=8, loc='upper left', bbox_to_anchor=(1.01, 1.0))
  ax.set_title(f'Validation accuracy while training, by {prop} ({len(table)} models)',
               fontsize=11)
  return fig


def weight_features(zoo: zoo_lib.Zoo, snapshot: int = -1) -> tuple[np.ndarray, str]:
  """(features [models, F] float64, what they are) of each model's snapshot `snapshot` (index
  into its 20, -1 = the last): the weight vector itself (F = n) when every model has the same
  length, else the whole vector's statistics (nws_jax.meta.baseline.slice_features, F = 14),
  each standardised over the models since their units differ."""
  from nws_jax.meta import baseline
  if zoo.snapshots.is_uniform:
    return np.asarray(zoo.snapshots.as_array()[:, snapshot], np.float64), 'weights'
  feats = np.concatenate([baseline.slice_features(zoo.snapshots[i][snapshot][None])
                          for i in range(len(zoo.snapshots))])
  std = feats.std(0)
  feats = (feats - feats.mean(0)) / np.where(std > 0, std, 1.0)
  return feats, 'weight statistics'


def pca_2d(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """(coordinates [N, 2], explained-variance fraction [2]) of the rows of x [N, F] on their
  first two principal components (numpy SVD of the centred rows; zeros where N or F < 2)."""
  x = np.asarray(x, np.float64)
  centred = x - x.mean(0)
  u, s, _ = np.linalg.svd(centred, full_matrices=False)
  coords = np.zeros((len(x), 2))
  fraction = np.zeros(2)
  k = min(2, len(s))
  coords[:, :k] = u[:, :k] * s[:k]
  total = float((s ** 2).sum())
  if total > 0:
    fraction[:k] = s[:k] ** 2 / total
  return coords, fraction


def _draw_projection(fig, ax, coords: np.ndarray, fraction: np.ndarray, table: pd.DataFrame,
                     prop: str) -> None:
  """Scatter of coords [models, 2] coloured by `prop`: a colour bar for lrate, a legend
  otherwise."""
  if prop == 'lrate':
    points = ax.scatter(coords[:, 0], coords[:, 1], c=table['lrate'].astype(float), s=18,
                        cmap='viridis')
    bar = fig.colorbar(points, ax=ax)
    bar.set_label('lrate', fontsize=8)
    bar.ax.tick_params(labelsize=7)
  else:
    labels = property_labels(table, prop).to_numpy()
    names = _ordered(pd.Series(labels), table, prop)
    colours = plots.colours(names)
    for name in names:
      mine = labels == name
      ax.scatter(coords[mine, 0], coords[mine, 1], s=18, color=colours[name], label=name)
    ax.legend(title=prop, fontsize=7, title_fontsize=8, loc='best')
  ax.set_xlabel(f'PC 1 ({fraction[0]:.0%} of the variance)', fontsize=8)
  ax.set_ylabel(f'PC 2 ({fraction[1]:.0%} of the variance)', fontsize=8)
  ax.tick_params(labelsize=7)
  ax.grid(alpha=0.3)


def projection(zoo: zoo_lib.Zoo, prop: str, snapshot: int = -1) -> matplotlib.figure.Figure:
  """The models' weights at snapshot index `snapshot` (-1 = the last) on their first two
  principal components (see weight_features), coloured by `prop`."""
  return projection_grid(zoo, [prop], snapshot)


def projection_grid(zoo: zoo_lib.Zoo, props, snapshot: int = -1) -> matplotlib.figure.Figure:
  """projection's scatter once per property in `props`, side by side (one PCA)."""
  props = list(props)
  unknown = [p for p in props if p not in zoo.table]
  if not props or unknown:
    raise ValueError(f'unknown properties {unknown or props}; choose from: '
                     + ', '.join(space.PROPERTY_NAMES))
  feats, what = weight_features(zoo, snapshot)
  coords, fraction = pca_2d(feats)
  fig = plots.figure(3.9 * len(props) + 0.4, 3.6)
  for ax, prop in zip(fig.subplots(1, len(props), squeeze=False)[0], props):
    _draw_projection(fig, ax, coords, fraction, zoo.table, prop)
    ax.set_title(f'coloured by {prop}', fontsize=9)
  count = zoo.snapshots.num_snapshots
  fig.suptitle(f'2-D PCA of the {what} ({zoo.num_models} models; snapshot '
               f'{range(1, count + 1)[snapshot]} of {count})', fontsize=11)
  return fig


# ------------------------------------------------------------------------------------------------
# A meta-classifier run


def meta_results(path: str):
  """The evaluations of a finished train_meta run (nws_jax.meta.pipeline.Results)."""
  from nws_jax.meta import pipeline
  return pipeline.read_results(path)


def meta_table(results) -> pd.DataFrame:
  """Per property: metric ('accuracy' or 'mae' for lrate), the single-slice score of the deep
  meta-classifier ('meta'), the original's per-net score ('per net', when the run has it),
  'chance', one column per baseline method (gbt_slice, gbt_layers) and the number of meta-test
  models the property is scored on; indexed by property."""
  acc = results.accuracy
  columns = {'metric': acc['metric'].to_numpy(), 'meta': acc['value'].to_numpy()}
  if 'per_net' in acc:  # absent from runs evaluated before it
    columns['per net'] = acc['per_net'].to_numpy()
  table = pd.DataFrame(dict(columns, chance=acc['chance'].to_numpy()),
                       index=pd.Index(acc['property'].astype(str), name='property'))
  if results.baseline is not None:
    base = results.baseline.assign(property=results.baseline['property'].astype(str))
    for method, rows in base.groupby('method', sort=False):
      table[str(method)] = rows.set_index('property')['value'].reindex(table.index)
  table['test models'] = acc['n_test_models'].to_numpy()
  return table


def _boundary(source: dict, zoo: str | None) -> float | None:
  """Mean fraction of the vector in the conv part over the run's zoo (None: not readable)."""
  folder = zoo or (source.get('zoo') if source.get('kind', 'zoo') == 'zoo' else None)
  if not folder:
    return None
  try:
    table = zoo_lib.read_csv(os.path.join(folder, zoo_lib.MODELS_FILE))
  except (zoo_lib.ZooError, OSError):
    return None
  return slices_lib.conv_fraction(table['weightn_conv'], table['weightn_fc'])


def meta_figure(kind: str, results, path: str, zoo: str | None = None):
  """IPython image of one of the run's figures (nws_jax.meta.plots), `kind` in META_KINDS.

  path: the run's workdir (its config gives the trained snapshot range and the zoo, whose
  models.csv gives the conv | dense boundary of 'position'; `zoo` overrides a moved zoo).
  """
  from IPython import display
  from nws_jax.meta import store
  if kind not in META_KINDS:
    raise ValueError(f'unknown figure {kind!r}; choose from: ' + ', '.join(META_KINDS))
  if kind == 'accuracy':
    fig = plots.plot_accuracy(results.accuracy, baseline=results.baseline)
  elif kind == 'ensemble':
    fig = plots.plot_ensemble(results.ensemble)
  elif kind == 'position':
    _, source = store.read_config(path)
    fig = plots.plot_position(results.position, _boundary(source, zoo))
  elif kind == 'snapshot':
    config, _ = store.read_config(path)
    fig = plots.plot_snapshot(results.snapshot, (config.first_snapshot, config.last_snapshot))
  elif kind == 'part':
    fig = plots.plot_part(results.part)
  else:
    fig = plots.plot_history(results.history)
  with tempfile.TemporaryDirectory(prefix='nws_meta_figure_') as folder:
    png = os.path.join(folder, f'{kind}.png')
    plots.save(fig, png)
    return display.Image(filename=png)  # reads the file now
