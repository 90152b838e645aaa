"""How much, where and when: the evaluations of a trained meta-classifier stack (PROTOCOL §5, §6).

All evaluations run on the meta-test models only. Each returns a DataFrame in the layout of its
CSV file; `metric` is 'accuracy' (a fraction) for a categorical property and 'mae' (mean absolute
error, in the property's own units) for lrate. `chance` is what a constant guess scores (see
`targets.chance`).

Each categorical property is scored on its class-balanced part of the meta-test side
(`split.balance_test`, as the original built its test set; `n_test_models` counts it), lrate on
every test model. Slices are fed to the meta-classifiers in batches that mix nets (a random
order), as the original's shuffled test set did, except for the per-net score, whose batches
hold one net each, as the original's did: with batch statistics in batch norm that matters.
Since the properties share their slices, a batch mixes every test model (the union of the
properties' sides), where the original's held only its property's balanced test nets; each
property is then scored on its own side's slices.

- `evaluate_slices`: random slices of each test snapshot in the trained part and range;
  single-slice accuracy (accuracy.csv) and per-snapshot votes over many slices (ensemble.csv:
  majority vote and mean-probability vote; for lrate the median and the mean prediction).
- `evaluate_per_net`: the original's per-net score (valid_avg): 64 evenly spaced slices of each
  test snapshot as one batch (per_net.csv; its mean is accuracy.csv's per_net).
- `evaluate_positions`: slices at P evenly spaced positions over the trained part (position.csv).
- `evaluate_snapshots`: random slices of each snapshot number 1..S (snapshot.csv).
- `evaluate_parts`: random slices restricted to the conv part, then the dense part (part.csv).
- `evaluate_votes`: per-model votes over growing numbers of random slices (the ensembles study).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
import pandas as pd

from nws_jax.meta import slices as slices_lib
from nws_jax.meta import source as source_lib
from nws_jax.meta import split as split_lib
from nws_jax.meta import targets as targets_lib
from nws_jax.meta import train as train_lib


@dataclasses.dataclass
class EvalContext:
  """A trained stack and the zoo it is judged on.

  snapshots: where slices are read (a `source.DeviceLayout` of a zoo, or a host reader such as a
  `Release`); num_snapshots: S; true: numpy [P, models], each property's value per model (class
  index, or the raw lrate); test_models: numpy int [T], the whole meta-test side (every
  evaluation reads them all); test_of: per property, the test models it is scored on (the
  class-balanced part of test_models for a categorical property, `split.balance_test`; all of
  them for lrate). None: all of them for every property.
  """
  run: train_lib.MetaRun
  table: pd.DataFrame
  snapshots: Any
  num_snapshots: int
  true: np.ndarray
  test_models: np.ndarray
  test_of: list[np.ndarray] | None = None

  @property
  def targets(self):
    return self.run.targets

  def bounds(self, part: str) -> tuple[np.ndarray, np.ndarray]:
    return slices_lib.part_bounds(self.table['weightn_conv'], self.table['weightn_fc'], part)

  def scored(self, p: int) -> np.ndarray:
    """The test models property p is scored on."""
    return self.test_models if self.test_of is None else self.test_of[p]

  def keep(self, p: int, models: np.ndarray) -> np.ndarray:
    """bool, the shape of `models`: which of them property p is scored on."""
    return np.isin(models, self.scored(p))

  def n_test(self, p: int) -> int:
    return len(self.scored(p))

  def chance(self, target) -> float:
    """A constant guess on the test models the target is scored on (balanced: 1/classes)."""
    p = [t.name for t in self.targets].index(target.name)
    train = np.concatenate([self.run.split.train, self.run.split.valid])
    return targets_lib.chance(target, self.table, train, self.scored(p))


def balanced_test_sides(run: train_lib.MetaRun, table: pd.DataFrame,
                        in_file_order: bool = False) -> list[np.ndarray]:
  """Per property of `run`, the test models it is scored on: the class-balanced part of the test
  side for a categorical property (the first of each class in row order when `in_file_order`, as
  the original read the release's test CSV; else a choice seeded by the run's seed), every test
  model for lrate."""
  labels, _ = targets_lib.encode(table, run.targets)
  test = np.asarray(run.split.test, np.int64)
  seed = None if in_file_order else run.config.seed
  return [test if t.is_regression else split_lib.balance_test(test, labels[p, test], seed)
          for p, t in enumerate(run.targets)]


def make_context(run: train_lib.MetaRun, table: pd.DataFrame, snapshots, *,
                 balanced: bool = True, in_file_order: bool = False) -> EvalContext:
  """snapshots: `Snapshots` or [models, S, n] (put on the device), or a `Release` (read from
  disk). balanced: score each categorical property on its class-balanced test side
  (`balanced_test_sides`; in_file_order: the release's test CSV gave the test side), as the
  original did; False scores every property on every test model."""
  reader = source_lib.as_reader(snapshots)
  source_lib.check_lengths(table, reader)
  labels, _ = targets_lib.encode(table, run.targets)
  true = labels.astype(np.float64)
  for p, t in enumerate(run.targets):
    if t.is_regression:
      true[p] = table[t.name].to_numpy(np.float64)
  test_of = balanced_test_sides(run, table, in_file_order) if balanced else None
  return EvalContext(run, table, source_lib.placed(reader), reader.num_snapshots, true,
                     np.asarray(run.split.test), test_of)


def _metric(target) -> str:
  return 'mae' if target.is_regression else 'accuracy'


def _outputs(ctx: EvalContext, models, snaps, offsets) -> np.ndarray:
  return train_lib.outputs_at(ctx.run.params, ctx.run.batch_stats, ctx.run.spec, ctx.snapshots,
                              models, snaps, offsets)


def _outputs_mixed(ctx: EvalContext, models, snaps, offsets,
                   rng: np.random.Generator) -> np.ndarray:
  """`_outputs` of the slices fed in a random order drawn from `rng`, returned in the order
  given. With batch statistics in batch norm, each batch is then a random mix of the slices
  asked for, as a batch of the original's shuffled test set was (in inference mode the order
  changes nothing)."""
  order = rng.permutation(len(models))
  out = _outputs(ctx, np.asarray(models)[order], np.asarray(snaps)[order],
                 np.asarray(offsets)[order])
  result = np.empty_like(out)
  result[:, order] = out
  return result


def _random_triples(ctx: EvalContext, models: np.ndarray, snapshot_numbers: np.ndarray,
                    part: str, per_snapshot: int, rng: np.random.Generator):
  """(models, 0-based snapshots, offsets) [T·S'·per_snapshot], pair-major."""
  lo, hi = ctx.bounds(part)
  return slices_lib.random_triples(rng, models, snapshot_numbers, lo, hi,
                                   ctx.run.spec.slice_length, per_snapshot)


def evaluate_slices(ctx: EvalContext, slices_per_snapshot: int = 20,
                    seed: int = 0) -> tuple[pd.DataFrame, pd.DataFrame]:
  """(accuracy frame, ensemble frame) from `slices_per_snapshot` random slices of every test
  snapshot in the trained range and part, fed in a random order (`_outputs_mixed`). Each
  property is scored on its test models (`EvalContext.scored`: class-balanced for a categorical
  one).

  accuracy: property, metric, value (single-slice), chance, n_test_models (per property).
  ensemble: property, metric, single, majority, mean_prob, chance, n_test_models,
    slices_per_snapshot: per test snapshot, the slices' majority class or the class of their mean
    probabilities (for lrate: the median or the mean of the slices' predictions).
  """
  spec = ctx.run.config.slice_spec
  rng = np.random.default_rng([seed, 0xE7A1])
  m, s, o = _random_triples(ctx, ctx.test_models, spec.snapshot_numbers, spec.part,
                            slices_per_snapshot, rng)
  out = _outputs_mixed(ctx, m, s, o, rng)
  acc_rows, ens_rows = [], []
  for p, t in enumerate(ctx.targets):
    keep = ctx.keep(p, m)  # whole pairs: a model is scored or not
    true = ctx.true[p, m][keep]
    pred = t.predict(out[p])[keep]
    single = targets_lib.score(t, pred, true)
    true_pairs = true.reshape(-1, slices_per_snapshot)[:, 0]
    pred_pairs = pred.reshape(-1, slices_per_snapshot)
    if t.is_regression:
      majority = targets_lib.score(t, np.median(pred_pairs, axis=1), true_pairs)
      mean_prob = targets_lib.score(t, pred_pairs.mean(axis=1), true_pairs)
    else:
      votes = np.apply_along_axis(np.bincount, 1, pred_pairs, minlength=t.num_classes)
      majority = targets_lib.score(t, votes.argmax(1), true_pairs)
      probs = t.probabilities(out[p])[keep].reshape(len(true_pairs), slices_per_snapshot, -1)
      mean_prob = targets_lib.score(t, probs.mean(1).argmax(-1), true_pairs)
    common = dict(property=t.name, metric=_metric(t))
    chance = ctx.chance(t)
    acc_rows.append(dict(common, value=single, chance=chance, n_test_models=ctx.n_test(p)))
    ens_rows.append(dict(common, single=single, majority=majority, mean_prob=mean_prob,
                         chance=chance, n_test_models=ctx.n_test(p),
                         slices_per_snapshot=slices_per_snapshot))
  return pd.DataFrame(acc_rows), pd.DataFrame(ens_rows)


def position_offsets(lo: np.ndarray, hi: np.ndarray, length: int, num_positions: int) -> np.ndarray:
  """int32 [models, P]: P evenly spaced slice starts from lo to hi - length per model, as the
  original computed them (meta_classifier.py, valid_pos and valid_avg):
  round(linspace(lo, hi - length, P)), numpy's linspace and round (half to even)."""
  lo, hi = np.asarray(lo, np.int64), np.asarray(hi, np.int64)
  # One scalar linspace per distinct (lo, hi): numpy's vector linspace rounds every row another
  # way as soon as one row's span is 0.
  bounds, inverse = np.unique(np.stack([lo, hi], axis=-1).reshape(-1, 2), axis=0,
                              return_inverse=True)
  rows = [np.round(np.linspace(int(a), int(b) - length, num_positions)) for a, b in bounds]
  table = np.asarray(rows, np.float64).reshape(len(bounds), num_positions)
  return table[inverse.reshape(-1)].reshape(*lo.shape, num_positions).astype(np.int32)


def evaluate_positions(ctx: EvalContext, num_positions: int = 100) -> tuple[pd.DataFrame, float]:
  """(position frame, conv/dense boundary as a fraction of the vector).

  Every test snapshot in the trained range is read at `num_positions` evenly spaced positions
  over the part the meta-classifiers were trained on (the whole vector, the conv part or the
  dense part), at the original's offsets (`position_offsets`, meta_classifier.py valid_pos).
  Each position is one request of every test snapshot in a random order, so that with batch
  statistics a batch holds one position of a mix of nets, as in the original. Frame: property,
  metric, position (0..P-1), offset (mean slice start), fraction (mean slice centre / length of
  the whole vector, so a conv or dense sweep sits on its side of the boundary), value, chance.
  """
  spec = ctx.run.config.slice_spec
  length = ctx.run.spec.slice_length
  lo, hi = ctx.bounds(spec.part)
  _, total = ctx.bounds('all')
  m, s = slices_lib.pairs(ctx.test_models, spec.snapshot_numbers)
  starts = position_offsets(lo[m], hi[m], length, num_positions)       # [pairs, P]
  rng = np.random.default_rng([ctx.run.config.seed, 0x9051])
  out = np.stack([_outputs_mixed(ctx, m, s, starts[:, i], rng) for i in range(num_positions)],
                 axis=2)                                               # [members, pairs, P, O]
  fractions = ((starts + length / 2) / total[m].astype(np.float64)[:, None]).mean(0)
  rows = []
  for p, t in enumerate(ctx.targets):
    keep = ctx.keep(p, m)
    pred = t.predict(out[p])[keep]
    true = ctx.true[p, m][keep]
    chance = ctx.chance(t)
    for i in range(num_positions):
      rows.append(dict(property=t.name, metric=_metric(t), position=i,
                       offset=float(starts[:, i].mean()), fraction=float(fractions[i]),
                       value=targets_lib.score(t, pred[:, i], true), chance=chance))
  test = ctx.table.iloc[ctx.test_models]
  return pd.DataFrame(rows), slices_lib.conv_fraction(test['weightn_conv'], test['weightn_fc'])


PER_NET_COLUMNS = ('property', 'metric', 'model', 'snapshot', 'true', 'value')


def evaluate_per_net(ctx: EvalContext) -> pd.DataFrame:
  """The original's per-net score (meta_classifier.py, valid_avg), per_net.csv.

  Every test model's snapshot in the trained range is read at batch_size (64) evenly spaced
  offsets over the trained part (`position_offsets`: round(linspace(lo, hi - length, 64)) with
  the original's bounds for all, conv and dense), and those slices are fed as one batch of their
  own (each (model, snapshot)'s slices consecutive, starting at a multiple of batch_size, in one
  request), so that with batch statistics in batch norm a batch holds one net's slices, as in
  the original. Its score: the fraction of the batch classified right, or for lrate the mean
  absolute error in its units.

  Frame: property, metric, model (row of models.csv), snapshot (1-based), true (the model's
  value of the property), value (its score); rows for the test models each property is scored
  on (`EvalContext.scored`). A property's mean value is accuracy.csv's per_net (`per_net_means`).
  """
  spec = ctx.run.config.slice_spec
  batch = ctx.run.config.batch_size
  length = ctx.run.spec.slice_length
  lo, hi = ctx.bounds(spec.part)
  m, s = slices_lib.pairs(ctx.test_models, spec.snapshot_numbers)
  starts = position_offsets(lo[m], hi[m], length, batch)                # [pairs, batch]
  out = _outputs(ctx, np.repeat(m, batch), np.repeat(s, batch), starts.reshape(-1))
  rows = []
  for p, t in enumerate(ctx.targets):
    pred = t.predict(out[p]).reshape(len(m), batch)
    true = ctx.true[p, m]
    if t.is_regression:
      scores = np.abs(pred - true[:, None]).mean(1)
    else:
      scores = (pred == true[:, None]).mean(1)
    values = ctx.table[t.name].to_numpy()
    for i in np.flatnonzero(ctx.keep(p, m)):
      value = values[m[i]]
      rows.append(dict(property=t.name, metric=_metric(t), model=int(m[i]),
                       snapshot=int(s[i]) + 1,
                       true=value.item() if isinstance(value, np.generic) else value,
                       value=float(scores[i])))
  return pd.DataFrame(rows, columns=list(PER_NET_COLUMNS))


def per_net_means(accuracy: pd.DataFrame, per_net: pd.DataFrame) -> pd.DataFrame:
  """accuracy.csv's frame with a column per_net after value: each property's mean per-net score
  (NaN for a property per_net has no rows of)."""
  means = per_net.groupby('property', sort=False)['value'].mean()
  at = list(accuracy.columns).index('value') + 1 if 'value' in accuracy else len(accuracy.columns)
  out = accuracy.drop(columns=['per_net'], errors='ignore')
  out.insert(min(at, len(out.columns)), 'per_net', out['property'].map(means).astype(float))
  return out


def evaluate_snapshots(ctx: EvalContext, slices_per_snapshot: int = 4,
                       seed: int = 0) -> pd.DataFrame:
  """Frame: property, metric, snapshot (1..S), value, chance, trained (in the training range);
  random slices in the trained part of every test model's snapshot of that number, each number
  one request in a random order (as the original evaluated one snapshot number at a time)."""
  spec = ctx.run.config.slice_spec
  rng = np.random.default_rng([seed, 0x5A95])
  numbers = np.arange(1, ctx.num_snapshots + 1)
  m, s, o = _random_triples(ctx, ctx.test_models, numbers, spec.part, slices_per_snapshot, rng)
  outs = []
  for number in numbers:
    at = s == number - 1
    outs.append((at, _outputs_mixed(ctx, m[at], s[at], o[at], rng)))
  rows = []
  for p, t in enumerate(ctx.targets):
    keep, chance = ctx.keep(p, m), ctx.chance(t)
    for number, (at, out) in zip(numbers, outs):
      k = keep[at]
      rows.append(dict(property=t.name, metric=_metric(t), snapshot=int(number),
                       value=targets_lib.score(t, t.predict(out[p])[k], ctx.true[p, m[at]][k]),
                       chance=chance,
                       trained=bool(spec.first_snapshot <= number <= spec.last_snapshot)))
  return pd.DataFrame(rows)


def evaluate_parts(ctx: EvalContext, slices_per_snapshot: int = 4, seed: int = 0) -> pd.DataFrame:
  """Frame: property, metric, part ('conv', 'dense'), value, chance: random slices of the test
  snapshots in the trained range, restricted to each part (value NaN where a part is shorter
  than a slice)."""
  spec = ctx.run.config.slice_spec
  rows = []
  for i, part in enumerate(('conv', 'dense')):
    lo, hi = ctx.bounds(part)
    fits = int((hi - lo)[ctx.test_models].min()) >= ctx.run.spec.slice_length
    if fits:
      rng = np.random.default_rng([seed, 0x9A47, i])
      m, s, o = _random_triples(ctx, ctx.test_models, spec.snapshot_numbers, part,
                                slices_per_snapshot, rng)
      out = _outputs_mixed(ctx, m, s, o, rng)
    for p, t in enumerate(ctx.targets):
      if fits:
        keep = ctx.keep(p, m)
        value = targets_lib.score(t, t.predict(out[p])[keep], ctx.true[p, m][keep])
      else:
        value = np.nan
      rows.append(dict(property=t.name, metric=_metric(t), part=part, value=value,
                       chance=ctx.chance(t)))
  return pd.DataFrame(rows)


def evaluate_votes(ctx: EvalContext, sizes, seed: int = 0) -> pd.DataFrame:
  """Per-model scores of votes over k random slices, for each k in `sizes`.

  Each test model gets max(sizes) random slices from its snapshots in the trained range and part
  (the same number from each snapshot, rounded up, in a random order); a vote over k of them
  takes the first k. Frame: property, metric, slices (k), majority, mean_prob, chance,
  n_test_models: the fraction of test models whose majority class (or whose mean probabilities'
  class) is right; for lrate the MAE of the slices' median and of their mean prediction. Each
  property is scored on its test models (`EvalContext.scored`; n_test_models counts them).
  """
  sizes = sorted({int(k) for k in sizes})
  if not sizes or sizes[0] < 1:
    raise ValueError(f'vote sizes must be positive integers, got {sizes}')
  spec = ctx.run.config.slice_spec
  numbers = spec.snapshot_numbers
  per_snapshot = -(-sizes[-1] // len(numbers))
  rng = np.random.default_rng([seed, 0x707E])
  m, s, o = _random_triples(ctx, ctx.test_models, numbers, spec.part, per_snapshot, rng)
  per_model = len(numbers) * per_snapshot  # pair-major, so each model's slices are contiguous
  order = np.argsort(rng.random((len(ctx.test_models), per_model)), axis=1)[:, :sizes[-1]]
  pick = (np.arange(len(ctx.test_models))[:, None] * per_model + order).reshape(-1)
  out = _outputs_mixed(ctx, m[pick], s[pick], o[pick], rng)
  models = len(ctx.test_models)
  rows = []
  for p, t in enumerate(ctx.targets):
    keep = ctx.keep(p, ctx.test_models)
    true = ctx.true[p, ctx.test_models][keep]
    pred = t.predict(out[p]).reshape(models, sizes[-1])[keep]
    if not t.is_regression:
      probs = t.probabilities(out[p]).reshape(models, sizes[-1], -1)[keep]
    for k in sizes:
      if t.is_regression:
        majority = targets_lib.score(t, np.median(pred[:, :k], axis=1), true)
        mean_prob = targets_lib.score(t, pred[:, :k].mean(axis=1), true)
      else:
        votes = np.apply_along_axis(np.bincount, 1, pred[:, :k], minlength=t.num_classes)
        majority = targets_lib.score(t, votes.argmax(1), true)
        mean_prob = targets_lib.score(t, probs[:, :k].mean(1).argmax(-1), true)
      rows.append(dict(property=t.name, metric=_metric(t), slices=k, majority=majority,
                       mean_prob=mean_prob, chance=ctx.chance(t),
                       n_test_models=int(keep.sum())))
  return pd.DataFrame(rows)
