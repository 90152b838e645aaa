"""The statistics baseline: hand-made weight statistics fed to gradient-boosted trees.

The field's usual baseline for recovering training hyper-parameters from weights (a model's
weights summarised by a few statistics, then a tree ensemble) is reported beside the deep
meta-classifier of PROTOCOL §5 for every property, on the same models, split and snapshot range:

- `gbt_slice`: the statistics of one random slice (`slice_features`), drawn exactly as the deep
  meta-classifier's slices are (PROTOCOL §5: `spec.length` consecutive weights at a uniformly
  random offset inside the model's part of the vector). Scored single-slice, like accuracy.csv.
- `gbt_layers`: per-layer statistics of the whole snapshot vector (`layer_features`), one sample
  per (model, snapshot) pair. Only where the layout is known: every model of the zoo has the same
  architecture and its vectors are exactly that architecture's length (PROTOCOL §4); otherwise
  this method has no rows.

Classifiers are scikit-learn's `HistGradientBoostingClassifier` (classes weighted to balance, the
counterpart of PROTOCOL §5's cut to the rarest class); lrate is regressed by
`HistGradientBoostingRegressor(loss='absolute_error')` (PROTOCOL §5's L1 loss) on its standardised
value and scored in its own units. No early stopping: `max_iter` boosting rounds. The meta-training
side is split.train plus split.valid (trees need no validation models); scores are on split.test.
Leaves hold at least min(20, max(2, samples // 10)) samples (scikit-learn's 20 unless the
training set is small).
"""

from __future__ import annotations

from typing import Callable, Sequence

import numpy as np
import pandas as pd
import threadpoolctl
from sklearn.ensemble import HistGradientBoostingClassifier, HistGradientBoostingRegressor

from nws_jax import cnn
from nws_jax.meta import slices as slices_lib
from nws_jax.meta import source as source_lib
from nws_jax.meta import split as split_lib
from nws_jax.meta import targets as targets_lib

RESULT_COLUMNS = ('property', 'method', 'metric', 'value', 'chance', 'n_test_models')
METHODS = ('gbt_slice', 'gbt_layers')
ARCHITECTURE_COLUMNS = ('filter_size', 'depth_conv', 'depth_fc', 'width_conv', 'width_fc')

SLICE_QUANTILES = (0.05, 0.25, 0.5, 0.75, 0.95)
SMALL_WEIGHT = 1e-3  # |w| below this counts as (near) zero in 'frac_small'
SLICE_FEATURES = ('mean', 'std', 'min', 'max', 'q05', 'q25', 'q50', 'q75', 'q95', 'mean_abs',
                  'rms', 'skewness', 'kurtosis', 'frac_small')

LAYER_QUANTILES = (0.1, 0.5, 0.9)
LAYER_STATS = ('mean', 'std', 'mean_abs', 'q10', 'q50', 'q90')
# Segments of a layer summarised by `layer_features`; the last two only for batch-normed layers.
LAYER_SEGMENTS = ('kernel', 'bias', 'gamma', 'moving_var')

_CHUNK_ELEMENTS = 1 << 21  # float64 working set per chunk of rows (16 MiB)
_SEED_TAG = 0xBA5E


def _by_row_chunks(fn: Callable[[np.ndarray], np.ndarray], x: np.ndarray,
                   num_features: int) -> np.ndarray:
  """fn applied to chunks of rows of x [N, L] (so that float64 copies stay small): [N, F]."""
  rows = max(1, _CHUNK_ELEMENTS // max(1, x.shape[1]))
  out = np.empty((x.shape[0], num_features), np.float64)
  for start in range(0, x.shape[0], rows):
    out[start:start + rows] = fn(x[start:start + rows])
  return out


def _slice_features(x: np.ndarray) -> np.ndarray:
  x = np.asarray(x, np.float64)
  n = x.shape[1]
  mean = x.mean(axis=1)
  centred = x - mean[:, None]
  var = (centred**2).mean(axis=1)
  std = np.sqrt(var)
  safe = np.where(std > 0, std, 1.0)
  skew = np.where(std > 0, (centred**3).mean(axis=1) / safe**3, 0.0)
  kurt = np.where(std > 0, (centred**4).mean(axis=1) / safe**4 - 3.0, 0.0)
  quantiles = np.quantile(x, SLICE_QUANTILES, axis=1)  # [Q, N]
  absx = np.abs(x)
  return np.column_stack([
      mean, std, x.min(axis=1), x.max(axis=1), *quantiles,
      absx.sum(axis=1) / n, np.sqrt((x * x).sum(axis=1) / n), skew, kurt,
      (absx < SMALL_WEIGHT).mean(axis=1),
  ])


def slice_features(slices: np.ndarray) -> np.ndarray:
  """Summary statistics of each slice: float64 [N, len(SLICE_FEATURES)] from slices [N, L].

  Per slice, in SLICE_FEATURES order and in the weights' units unless said otherwise: mean;
  standard deviation (population, ddof 0); min; max; the 0.05, 0.25, 0.5, 0.75, 0.95 quantiles
  (numpy's linear interpolation); mean |w| (L1 norm / L); RMS (L2 norm / sqrt(L)); skewness
  (third standardised moment) and excess kurtosis (fourth standardised moment - 3), both unitless
  and 0 for a constant slice; the fraction (0..1) of weights with |w| < 1e-3.
  """
  slices = np.asarray(slices)
  if slices.ndim != 2 or slices.shape[1] < 1:
    raise ValueError(f'slices must be [N, L] with L >= 1, got shape {slices.shape}')
  return _by_row_chunks(_slice_features, slices, len(SLICE_FEATURES))


def _layer_segments(arch: cnn.Architecture) -> list[tuple[str, str, int, int]]:
  """(layer name, segment, lo, hi) of each summarised segment, [lo, hi) in the vector (§4)."""
  segments, pos = [], 0
  for spec in cnn.layer_specs(arch):
    kernel = int(np.prod(spec.kernel_shape))
    starts = {'kernel': (pos, kernel), 'bias': (pos + kernel, spec.units)}
    if spec.batch_norm:
      # Per layer: kernel, bias, beta, gamma, moving mean, moving variance (PROTOCOL §4).
      starts['gamma'] = (pos + kernel + 2 * spec.units, spec.units)
      starts['moving_var'] = (pos + kernel + 4 * spec.units, spec.units)
    for name in LAYER_SEGMENTS:
      if name in starts:
        lo, size = starts[name]
        segments.append((spec.name, name, lo, lo + size))
    pos += spec.num_weights
  return segments


def layer_feature_names(arch: cnn.Architecture) -> tuple[str, ...]:
  """Names of `layer_features`' columns: 'LAYER/SEGMENT/STAT', e.g. 'conv_00/kernel/std'."""
  return tuple(f'{layer}/{segment}/{stat}' for layer, segment, _, _ in _layer_segments(arch)
               for stat in LAYER_STATS)


def _segment_stats(x: np.ndarray) -> np.ndarray:
  x = np.asarray(x, np.float64)
  return np.column_stack([x.mean(axis=1), x.std(axis=1), np.abs(x).mean(axis=1),
                          *np.quantile(x, LAYER_QUANTILES, axis=1)])


def layer_features(vectors: np.ndarray, arch: cnn.Architecture) -> np.ndarray:
  """Per-layer statistics of whole snapshot vectors: float64 [N, F2] from vectors [N, n].

  n must be sum(cnn.weight_counts(arch)). For each layer of `cnn.layer_specs(arch)`, in network
  order, the segments kernel and bias, and for a batch-normed layer gamma and moving variance,
  each located by the PROTOCOL §4 layout (kernel, bias, beta, gamma, moving mean, moving
  variance). Per segment, in LAYER_STATS order: mean, standard deviation (ddof 0), mean |w| (in
  the weights' units) and the 0.1, 0.5, 0.9 quantiles. Column names: `layer_feature_names(arch)`.
  """
  vectors = np.asarray(vectors)
  expected = sum(cnn.weight_counts(arch))
  if vectors.ndim != 2 or vectors.shape[1] != expected:
    raise ValueError(f'vectors have shape {vectors.shape}; architecture {arch} needs '
                     f'[N, {expected}]')
  segments = _layer_segments(arch)
  k = len(LAYER_STATS)

  def features(rows: np.ndarray) -> np.ndarray:
    out = np.empty((rows.shape[0], k * len(segments)), np.float64)
    for i, (_, _, lo, hi) in enumerate(segments):
      out[:, i * k:(i + 1) * k] = _segment_stats(rows[:, lo:hi])
    return out

  return _by_row_chunks(features, vectors, k * len(segments))


def common_architecture(table: pd.DataFrame, vector_length: int) -> cnn.Architecture | None:
  """The zoo's one architecture when every model shares it and the snapshot vectors are exactly
  its length (weightn_conv, weightn_fc match too); otherwise None (layout unknown)."""
  values = {}
  for name in ARCHITECTURE_COLUMNS:
    column = table[name]
    if column.nunique() != 1:
      return None
    values[name] = int(column.iloc[0])
  try:
    arch = cnn.Architecture(**values)
  except ValueError:
    return None
  n_conv, n_fc = cnn.weight_counts(arch)
  if (n_conv + n_fc != vector_length
      or not (table['weightn_conv'].to_numpy() == n_conv).all()
      or not (table['weightn_fc'].to_numpy() == n_fc).all()):
    return None
  return arch


def _gather_slice_features(reader, models: np.ndarray, snaps: np.ndarray, offsets: np.ndarray,
                           length: int) -> np.ndarray:
  """slice_features of the slices at (model, snapshot, offset) triples, read chunk by chunk."""
  rows = max(1, _CHUNK_ELEMENTS // length)
  out = np.empty((len(models), len(SLICE_FEATURES)), np.float64)
  for start in range(0, len(models), rows):
    sl = slice(start, start + rows)
    out[sl] = _slice_features(reader.read(models[sl], snaps[sl], offsets[sl], length))
  return out


def _gather_layer_features(reader, models: np.ndarray, snaps: np.ndarray,
                           arch: cnn.Architecture) -> np.ndarray:
  """layer_features of the whole vectors of (model, snapshot) pairs, read chunk by chunk."""
  n_conv, n_fc = cnn.weight_counts(arch)
  rows = max(1, _CHUNK_ELEMENTS // (n_conv + n_fc))
  parts = [layer_features(np.stack(reader.vectors(models[i:i + rows], snaps[i:i + rows])), arch)
           for i in range(0, len(models), rows)]
  return np.concatenate(parts) if parts else np.zeros((0, len(layer_feature_names(arch))))


def _min_samples_leaf(num_samples: int) -> int:
  """scikit-learn's default leaf size (20), smaller for small training sets: a split needs two
  leaves, so the default leaves fewer than 40 samples unsplittable (a constant guess)."""
  return int(min(20, max(2, num_samples // 10)))


def _fit_and_score(target: targets_lib.PropertyTarget, x_train: np.ndarray, y_train: np.ndarray,
                   x_test: np.ndarray, y_test: np.ndarray, seed: int, max_iter: int) -> float:
  """Accuracy (a fraction) or, for regression, MAE in the property's units.

  y_* are class indices (categorical) or standardised values (regression)."""
  common = dict(max_iter=max_iter, early_stopping=False, random_state=seed,
                min_samples_leaf=_min_samples_leaf(len(x_train)))
  if target.is_regression:
    model = HistGradientBoostingRegressor(loss='absolute_error', **common)
    model.fit(x_train, y_train)
    return float(np.abs(model.predict(x_test) - y_test).mean() * target.std)
  present = np.unique(y_train)
  if len(present) == 1:  # Nothing to separate: the one class seen is the prediction.
    predicted = np.full(len(x_test), present[0])
  else:
    model = HistGradientBoostingClassifier(class_weight='balanced', **common)
    model.fit(x_train, y_train)
    predicted = model.predict(x_test)  # labels from model.classes_: the encoded class indices
  return float((predicted == y_test).mean())


def run_baseline(table: pd.DataFrame, snapshots, split: split_lib.ModelSplit,
                 targets: Sequence[targets_lib.PropertyTarget], spec: slices_lib.SliceSpec, *,
                 slices_per_snapshot: int = 4, seed: int = 0,
                 max_iter: int = 200, n_threads: int | None = None,
                 test_of: Sequence[np.ndarray] | None = None) -> pd.DataFrame:
  """The baseline's scores on the meta-test models, one row per property and method.

  Args:
    table: the zoo's models.csv rows (the property columns, weightn_conv, weightn_fc and the
      architecture columns); row i describes snapshots[i].
    snapshots: every snapshot of every model: a `Snapshots` (ragged, in memory), a `Release`
      (read from disk) or a uniform float32 [models, S, n] array; slices are read in chunks.
    split: the models of the meta-training side (train + valid) and of the test side.
    targets: the properties to recover (`targets.make_targets`).
    spec: slice length, part and snapshot range, as for the deep meta-classifier. For
      gbt_layers, part 'conv' or 'dense' keeps only the features of that part's layers.
    slices_per_snapshot: random slices per (model, snapshot) pair, on each side (gbt_slice).
    seed: seeds the slice positions and the scikit-learn models; same seed, same frame.
    max_iter: boosting rounds of each tree ensemble.
    n_threads: OpenMP threads for the tree fits; None keeps scikit-learn's default (every core).
      On a machine whose cores are busy with other work, 1 can be many times faster (OpenMP
      threads spin-waiting for a core).
    test_of: per target, the test models it is scored on (the deep meta-classifier's
      class-balanced sides, `evaluate.EvalContext.test_of`); None: all of split.test.

  Returns:
    A DataFrame with columns RESULT_COLUMNS: property; method ('gbt_slice', then 'gbt_layers'
    where the layout is known, see `common_architecture`); metric ('accuracy', a fraction, or
    'mae' for lrate, in its own units); value; chance (`targets.chance`); n_test_models.
  """
  reader = source_lib.as_reader(snapshots)
  source_lib.check_lengths(table, reader)
  if slices_per_snapshot < 1:
    raise ValueError(f'slices_per_snapshot must be at least 1, got {slices_per_snapshot}')
  weightn_conv, weightn_fc = table['weightn_conv'].to_numpy(), table['weightn_fc'].to_numpy()
  slices_lib.check_spec(spec, weightn_conv, weightn_fc, reader.num_snapshots)
  train_models = np.sort(np.concatenate([split.train, split.valid])).astype(np.int64)
  test_models = np.asarray(split.test, np.int64)
  labels, values = targets_lib.encode(table, targets)
  lo, hi = slices_lib.part_bounds(weightn_conv, weightn_fc, spec.part)
  numbers = spec.snapshot_numbers

  def draw(models: np.ndarray, stream: int):
    rng = np.random.default_rng([seed, _SEED_TAG, stream])
    m, s, offsets = slices_lib.random_triples(rng, models, numbers, lo, hi, spec.length,
                                              slices_per_snapshot)
    return m, _gather_slice_features(reader, m, s, offsets, spec.length)

  features = {'gbt_slice': (draw(train_models, 0), draw(test_models, 1))}
  arch = common_architecture(table, int(reader.lengths.max()))
  if arch is not None:
    names = layer_feature_names(arch)
    kinds = {s.name: s.kind for s in cnn.layer_specs(arch)}
    keep = np.array([spec.part == 'all' or kinds[n.split('/')[0]] == spec.part for n in names])
    sides = []
    for models in (train_models, test_models):
      m, s = slices_lib.pairs(models, numbers)
      sides.append((m, _gather_layer_features(reader, m, s, arch)[:, keep]))
    features['gbt_layers'] = tuple(sides)

  rows = []
  for p, target in enumerate(targets):
    y = values[p] if target.is_regression else labels[p]
    scored = test_models if test_of is None else np.asarray(test_of[p], np.int64)
    chance = targets_lib.chance(target, table, train_models, scored)
    for method, ((m_train, x_train), (m_test, x_test)) in features.items():
      keep = np.isin(m_test, scored)
      with threadpoolctl.threadpool_limits(limits=n_threads, user_api='openmp'):
        value = _fit_and_score(target, x_train, y[m_train], x_test[keep], y[m_test][keep], seed,
                               max_iter)
      rows.append(dict(property=target.name, method=method,
                       metric='mae' if target.is_regression else 'accuracy', value=value,
                       chance=chance, n_test_models=len(scored)))
  return pd.DataFrame(rows, columns=list(RESULT_COLUMNS))
