"""How much, where and when: the evaluations of a trained meta-classifier stack (PROTOCOL §5, §6).

All evaluations run on the meta-test models only. Each returns a DataFrame in the layout of its
CSV file; `metric` is 'accuracy' (a fraction) for a categorical property and 'mae' (mean absolute
error, in the property's own units) for lrate. `chance` is what a constant guess scores (see
`targets.chance`).

- `evaluate_slices`: random slices of each test snapshot in the trained part and range;
  single-slice accuracy (accuracy.csv) and per-snapshot votes over many slices (ensemble.csv:
  majority vote and mean-probability vote; for lrate the median and the mean prediction).
- `evaluate_positions`: slices at P evenly spaced positions over the whole vector (position.csv).
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
from nws_jax.meta import targets as targets_lib
from nws_jax.meta import train as train_lib


@dataclasses.dataclass
class EvalContext:
  """A trained stack and the zoo it is judged on.

  snapshots: where slices are read (a `source.DeviceLayout` of a zoo, or a host reader such as a
  `Release`); num_snapshots: S; true: numpy [P, models], each property's value per model (class
  index, or the raw lrate); test_models: numpy int [T].
  """
  run: train_lib.MetaRun
  table: pd.DataFrame
  snapshots: Any
  num_snapshots: int
  true: np.ndarray
  test_models: np.ndarray

  @property
  def targets(self):
    return self.run.targets

  def bounds(self, part: str) -> tuple[np.ndarray, np.ndarray]:
    return slices_lib.part_bounds(self.table['weightn_conv'], self.table['weightn_fc'], part)

  def chance(self, target) -> float:
    train = np.concatenate([self.run.split.train, self.run.split.valid])
    return targets_lib.chance(target, self.table, train, self.test_models)


def make_context(run: train_lib.MetaRun, table: pd.DataFrame, snapshots) -> EvalContext:
  """snapshots: `Snapshots` or [models, S, n] (put on the device), or a `Release` (read from
  disk)."""
  reader = source_lib.as_reader(snapshots)
  source_lib.check_lengths(table, reader)
  labels, _ = targets_lib.encode(table, run.targets)
  true = labels.astype(np.float64)
  for p, t in enumerate(run.targets):
    if t.is_regression:
      true[p] = table[t.name].to_numpy(np.float64)
  return EvalContext(run, table, source_lib.placed(reader), reader.num_snapshots, true,
                     np.asarray(run.split.test))


def _metric(target) -> str:
  return 'mae' if target.is_regression else 'accuracy'


def _outputs(ctx: EvalContext, models, snaps, offsets) -> np.ndarray:
  return train_lib.outputs_at(ctx.run.params, ctx.run.batch_stats, ctx.run.spec, ctx.snapshots,
                              models, snaps, offsets)


def _predicted(ctx: EvalContext, p: int, outputs: np.ndarray) -> np.ndarray:
  """Property p's predictions [...]: class index, or lrate in its own units."""
  t = ctx.targets[p]
  if t.is_regression:
    return outputs[p, ..., 0] * t.std + t.mean
  return outputs[p, ..., :t.num_classes].argmax(-1)


def _probabilities(ctx: EvalContext, p: int, outputs: np.ndarray) -> np.ndarray:
  t = ctx.targets[p]
  logits = outputs[p, ..., :t.num_classes]
  e = np.exp(logits - logits.max(-1, keepdims=True))
  return e / e.sum(-1, keepdims=True)


def _score(target, predicted: np.ndarray, true: np.ndarray) -> float:
  if target.is_regression:
    return float(np.abs(predicted - true).mean())
  return float((predicted == true).mean())


def _random_triples(ctx: EvalContext, models: np.ndarray, snapshot_numbers: np.ndarray,
                    part: str, per_snapshot: int, rng: np.random.Generator):
  """(models, 0-based snapshots, offsets) [T·S'·per_snapshot], pair-major."""
  lo, hi = ctx.bounds(part)
  return slices_lib.random_triples(rng, models, snapshot_numbers, lo, hi,
                                   ctx.run.spec.slice_length, per_snapshot)


def evaluate_slices(ctx: EvalContext, slices_per_snapshot: int = 20,
                    seed: int = 0) -> tuple[pd.DataFrame, pd.DataFrame]:
  """(accuracy frame, ensemble frame) from `slices_per_snapshot` random slices of every test
  snapshot in the trained range and part.

  accuracy: property, metric, value (single-slice), chance, n_test_models.
  ensemble: property, metric, single, majority, mean_prob, chance, n_test_models,
    slices_per_snapshot: per test snapshot, the slices' majority class or the class of their mean
    probabilities (for lrate: the median or the mean of the slices' predictions).
  """
  spec = ctx.run.config.slice_spec
  rng = np.random.default_rng([seed, 0xE7A1])
  m, s, o = _random_triples(ctx, ctx.test_models, spec.snapshot_numbers, spec.part,
                            slices_per_snapshot, rng)
  out = _outputs(ctx, m, s, o)
  acc_rows, ens_rows = [], []
  for p, t in enumerate(ctx.targets):
    true = ctx.true[p, m]
    pred = _predicted(ctx, p, out)
    single = _score(t, pred, true)
    true_pairs = true.reshape(-1, slices_per_snapshot)[:, 0]
    pred_pairs = pred.reshape(-1, slices_per_snapshot)
    if t.is_regression:
      majority = _score(t, np.median(pred_pairs, axis=1), true_pairs)
      mean_prob = _score(t, pred_pairs.mean(axis=1), true_pairs)
    else:
      votes = np.apply_along_axis(np.bincount, 1, pred_pairs, minlength=t.num_classes)
      majority = _score(t, votes.argmax(1), true_pairs)
      probs = _probabilities(ctx, p, out).reshape(len(true_pairs), slices_per_snapshot, -1)
      mean_prob = _score(t, probs.mean(1).argmax(-1), true_pairs)
    common = dict(property=t.name, metric=_metric(t))
    chance = ctx.chance(t)
    acc_rows.append(dict(common, value=single, chance=chance,
                         n_test_models=len(ctx.test_models)))
    ens_rows.append(dict(common, single=single, majority=majority, mean_prob=mean_prob,
                         chance=chance, n_test_models=len(ctx.test_models),
                         slices_per_snapshot=slices_per_snapshot))
  return pd.DataFrame(acc_rows), pd.DataFrame(ens_rows)


def position_offsets(lo: np.ndarray, hi: np.ndarray, length: int, num_positions: int) -> np.ndarray:
  """int32 [models, P]: P evenly spaced slice starts from lo to hi - length per model."""
  t = np.linspace(0.0, 1.0, num_positions)
  return np.round(lo[:, None] + t[None, :] * (hi - lo - length)[:, None]).astype(np.int32)


def evaluate_positions(ctx: EvalContext, num_positions: int = 100) -> tuple[pd.DataFrame, float]:
  """(position frame, conv/dense boundary as a fraction of the vector).

  Every test snapshot in the trained range is read at `num_positions` evenly spaced positions
  over its whole vector. Frame: property, metric, position (0..P-1), offset (mean slice start),
  fraction (mean slice centre / vector length), value, chance.
  """
  spec = ctx.run.config.slice_spec
  length = ctx.run.spec.slice_length
  lo, hi = ctx.bounds('all')
  m, s = slices_lib.pairs(ctx.test_models, spec.snapshot_numbers)
  starts = position_offsets(lo[m], hi[m], length, num_positions)       # [pairs, P]
  out = _outputs(ctx, np.repeat(m, num_positions), np.repeat(s, num_positions),
                 starts.reshape(-1))
  n = (hi - lo)[m].astype(np.float64)
  fractions = ((starts + length / 2) / n[:, None]).mean(0)
  rows = []
  for p, t in enumerate(ctx.targets):
    pred = _predicted(ctx, p, out).reshape(len(m), num_positions)
    true = ctx.true[p, m]
    chance = ctx.chance(t)
    for i in range(num_positions):
      rows.append(dict(property=t.name, metric=_metric(t), position=i,
                       offset=float(starts[:, i].mean()), fraction=float(fractions[i]),
                       value=_score(t, pred[:, i], true), chance=chance))
  test = ctx.table.iloc[ctx.test_models]
  return pd.DataFrame(rows), slices_lib.conv_fraction(test['weightn_conv'], test['weightn_fc'])


def evaluate_snapshots(ctx: EvalContext, slices_per_snapshot: int = 4,
                       seed: int = 0) -> pd.DataFrame:
  """Frame: property, metric, snapshot (1..S), value, chance, trained (in the training range);
  random slices in the trained part of every test model's snapshot of that number."""
  spec = ctx.run.config.slice_spec
  rng = np.random.default_rng([seed, 0x5A95])
  numbers = np.arange(1, ctx.num_snapshots + 1)
  m, s, o = _random_triples(ctx, ctx.test_models, numbers, spec.part, slices_per_snapshot, rng)
  out = _outputs(ctx, m, s, o)
  rows = []
  for p, t in enumerate(ctx.targets):
    pred, true, chance = _predicted(ctx, p, out), ctx.true[p, m], ctx.chance(t)
    for number in numbers:
      at = s == number - 1
      rows.append(dict(property=t.name, metric=_metric(t), snapshot=int(number),
                       value=_score(t, pred[at], true[at]), chance=chance,
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
      out = _outputs(ctx, m, s, o)
    for p, t in enumerate(ctx.targets):
      value = _score(t, _predicted(ctx, p, out), ctx.true[p, m]) if fits else np.nan
      rows.append(dict(property=t.name, metric=_metric(t), part=part, value=value,
                       chance=ctx.chance(t)))
  return pd.DataFrame(rows)


def evaluate_votes(ctx: EvalContext, sizes, seed: int = 0) -> pd.DataFrame:
  """Per-model scores of votes over k random slices, for each k in `sizes`.

  Each test model gets max(sizes) random slices from its snapshots in the trained range and part
  (the same number from each snapshot, rounded up, in a random order); a vote over k of them
  takes the first k. Frame: property, metric, slices (k), majority, mean_prob, chance,
  n_test_models: the fraction of test models whose majority class (or whose mean probabilities'
  class) is right; for lrate the MAE of the slices' median and of their mean prediction.
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
  out = _outputs(ctx, m[pick], s[pick], o[pick])
  models = len(ctx.test_models)
  rows = []
  for p, t in enumerate(ctx.targets):
    true = ctx.true[p, ctx.test_models]
    pred = _predicted(ctx, p, out).reshape(models, sizes[-1])
    if not t.is_regression:
      probs = _probabilities(ctx, p, out).reshape(models, sizes[-1], -1)
    for k in sizes:
      if t.is_regression:
        majority = _score(t, np.median(pred[:, :k], axis=1), true)
        mean_prob = _score(t, pred[:, :k].mean(axis=1), true)
      else:
        votes = np.apply_along_axis(np.bincount, 1, pred[:, :k], minlength=t.num_classes)
        majority = _score(t, votes.argmax(1), true)
        mean_prob = _score(t, probs[:, :k].mean(1).argmax(-1), true)
      rows.append(dict(property=t.name, metric=_metric(t), slices=k, majority=majority,
                       mean_prob=mean_prob, chance=ctx.chance(t), n_test_models=models))
  return pd.DataFrame(rows)
