"""The seeded split of a zoo's models into meta-train, validation and meta-test.

The split is by model, so that no model has snapshots on two sides: a meta-classifier is judged on
models it never saw. PROTOCOL §5 holds out a tenth of the training *snapshots* for validation;
here the validation share is taken by model too (stricter: validation then measures the same
thing as the test). The split is saved as split.json in the meta workdir.

The evaluations judge each categorical property on a class-balanced part of the test side
(`balance_test`, as the original's test set was built); that part is derived again from the split
when a run is evaluated, not saved.
"""

from __future__ import annotations

import dataclasses
import json

import numpy as np

from nws_jax import files


class SplitError(ValueError):
  """A split that leaves a side empty."""


@dataclasses.dataclass(frozen=True)
class ModelSplit:
  """Model indices (rows of models.csv), each sorted ascending; the three sides are disjoint."""
  train: np.ndarray
  valid: np.ndarray
  test: np.ndarray

  def to_json(self) -> dict:
    return {k: [int(i) for i in getattr(self, k)] for k in ('train', 'valid', 'test')}

  @classmethod
  def from_json(cls, d: dict) -> 'ModelSplit':
    return cls(*(np.asarray(d[k], np.int64) for k in ('train', 'valid', 'test')))


def make_split(model_ids: np.ndarray, seed: int, test_fraction: float = 0.2,
               valid_fraction: float = 0.1) -> ModelSplit:
  """Shuffles `model_ids` with `seed`; the first round(test_fraction·n) are the test models, then
  round(valid_fraction·rest) validation models; the others train. Raises SplitError when the
  test or training side would be empty (validation may be empty)."""
  model_ids = np.asarray(model_ids, np.int64)
  _check_seed(seed)
  if not 0 < test_fraction < 1:
    raise SplitError(f'test_fraction must be in (0, 1), got {test_fraction}')
  if not 0 <= valid_fraction < 1:
    raise SplitError(f'valid_fraction must be in [0, 1), got {valid_fraction}')
  order = np.random.default_rng([seed, 0x5B17]).permutation(model_ids)
  n_test = int(round(test_fraction * len(order)))
  n_valid = int(round(valid_fraction * (len(order) - n_test)))
  if n_test < 1 or len(order) - n_test - n_valid < 1:
    raise SplitError(f'{len(order)} models cannot be split into meta-train and meta-test '
                     f'(test_fraction {test_fraction}, valid_fraction {valid_fraction})')
  test, valid, train = np.split(order, [n_test, n_test + n_valid])
  return ModelSplit(np.sort(train), np.sort(valid), np.sort(test))


def split_with_test(train_ids: np.ndarray, test_ids: np.ndarray, seed: int,
                    valid_fraction: float = 0.1) -> ModelSplit:
  """A split whose meta-test side is given (the release's test CSV): a seeded valid_fraction of
  `train_ids` validates, the rest trains. Raises SplitError for an empty or overlapping side."""
  train_ids, test_ids = np.asarray(train_ids, np.int64), np.asarray(test_ids, np.int64)
  _check_seed(seed)
  if not 0 <= valid_fraction < 1:
    raise SplitError(f'valid_fraction must be in [0, 1), got {valid_fraction}')
  if np.intersect1d(train_ids, test_ids).size:
    raise SplitError('a model is on both the training and the test side')
  order = np.random.default_rng([seed, 0x5B17]).permutation(train_ids)
  n_valid = int(round(valid_fraction * len(order)))
  if len(test_ids) < 1 or len(order) - n_valid < 1:
    raise SplitError(f'{len(train_ids)} training and {len(test_ids)} test models cannot be split '
                     f'(valid_fraction {valid_fraction})')
  return ModelSplit(np.sort(order[n_valid:]), np.sort(order[:n_valid]), np.sort(test_ids))


def balance_test(test_models: np.ndarray, labels: np.ndarray,
                 seed: int | None = None) -> np.ndarray:
  """The class-balanced meta-test side of one categorical property (PROTOCOL §7), sorted.

  As the original built its test set (util.import_weights with un=True): every class is cut to
  the size of the rarest. seed None takes the first models of each class in row order, which is
  the file order of a release's test CSV, as the original did; a seed takes a seeded choice (for
  a split of our own, whose row order says nothing). labels: each test model's class, aligned
  with `test_models`. Only the classes present on the test side count: the original cut to the
  rarest of all the property's values, so a value missing from its test CSV emptied the test
  set; here it leaves the others as they are. Regression properties are not balanced (don't
  call this for them).
  """
  test_models, labels = np.asarray(test_models, np.int64), np.asarray(labels)
  if test_models.shape != labels.shape:
    raise ValueError(f'{len(test_models)} test models but {len(labels)} labels')
  if not len(test_models):
    return test_models
  order = np.argsort(test_models, kind='stable')
  test_models, labels = test_models[order], labels[order]
  classes, counts = np.unique(labels, return_counts=True)
  rarest = int(counts.min())
  rng = None if seed is None else np.random.default_rng([int(seed), 0xBA1A])
  kept = []
  for c in classes:
    members = test_models[labels == c]
    kept.append(members[:rarest] if rng is None else rng.choice(members, rarest, replace=False))
  return np.sort(np.concatenate(kept))


def _check_seed(seed) -> None:
  if not isinstance(seed, (int, np.integer)) or seed < 0:
    raise SplitError(f'seed must be a non-negative integer, got {seed}')


def check_split(split: ModelSplit, num_models: int, where: str = 'the split') -> None:
  """Raises SplitError unless every side holds distinct row indices in 0..num_models-1, no model
  is on two sides, and the training and test sides are not empty."""
  sides = [np.asarray(getattr(split, k)) for k in ('train', 'valid', 'test')]
  everything = np.concatenate(sides)
  outside = everything[(everything < 0) | (everything >= num_models)]
  if outside.size:
    raise SplitError(f'{where} names model {int(outside[0])}, but the nets are rows '
                     f'0..{num_models - 1}')
  if len(np.unique(everything)) != everything.size:
    raise SplitError(f'{where} puts a model twice (on one side or on two)')
  if not len(split.train) or not len(split.test):
    raise SplitError(f'{where} has no {"training" if not len(split.train) else "test"} models')


def save_split(path: str, split: ModelSplit) -> None:
  files.write_json_atomic(split.to_json(), path)


def load_split(path: str) -> ModelSplit:
  """Reads split.json; raises SplitError naming the file when it is damaged (not JSON, a side
  missing, or indices that are not non-negative integers, distinct and on one side each)."""
  try:
    with open(path, 'rb') as f:
      saved = json.loads(f.read().decode('utf-8'))
  except (ValueError, UnicodeDecodeError) as e:
    raise SplitError(f'{path} is damaged (not valid JSON: {files.short_error(e, 80)})') from e
  if not isinstance(saved, dict) or any(k not in saved for k in ('train', 'valid', 'test')):
    raise SplitError(f'{path} is damaged (it must hold the train, valid and test sides)')
  sides = [saved[k] for k in ('train', 'valid', 'test')]
  if not all(isinstance(side, list) and all(isinstance(i, int) and not isinstance(i, bool)
                                            and i >= 0 for i in side) for side in sides):
    raise SplitError(f'{path} is damaged (its sides must be lists of model indices)')
  split = ModelSplit.from_json(saved)
  check_split(split, max([i + 1 for side in sides for i in side], default=0), path)
  return split
