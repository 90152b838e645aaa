"""The properties a meta-classifier recovers, as class indices or regression targets.

A categorical property's classes are the distinct values it takes in the zoo, sorted; a model's
label is the index of its value. `lrate` is continuous and regressed (PROTOCOL §5): its target is
standardised with the meta-training models' mean and standard deviation.
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

import numpy as np
import pandas as pd

from nws_jax import space

REGRESSION_PROPERTIES = ('lrate',)


class PropertyError(ValueError):
  """A property that is unknown or that cannot be learnt from this zoo."""


@dataclasses.dataclass(frozen=True)
class PropertyTarget:
  """One property to recover.

  classes: the sorted distinct values (categorical) or () (regression).
  mean, std: of the regression target over the meta-training models (0, 1 when categorical).
  """
  name: str
  classes: tuple = ()
  mean: float = 0.0
  std: float = 1.0

  @property
  def is_regression(self) -> bool:
    return self.name in REGRESSION_PROPERTIES

  @property
  def num_classes(self) -> int:
    return len(self.classes)

  @property
  def code(self) -> int:
    """Position in PROTOCOL §1 order: seeds this property's meta-classifier, wherever it sits."""
    return space.PROPERTY_NAMES.index(self.name)

  def predict(self, outputs: np.ndarray, standardised: bool = False) -> np.ndarray:
    """Predictions [...] from this property's head outputs [..., O] (heads of a stack are padded
    to the widest, O >= num_classes): the class index, or the regression value in the
    property's own units (standardised=True: as the head gives it, the training target)."""
    if self.is_regression:
      value = outputs[..., 0]
      return value if standardised else value * self.std + self.mean
    return outputs[..., :self.num_classes].argmax(-1)

  def probabilities(self, outputs: np.ndarray) -> np.ndarray:
    """Class probabilities [..., num_classes] (softmax) from head outputs [..., O]."""
    logits = outputs[..., :self.num_classes]
    e = np.exp(logits - logits.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)

  def to_json(self) -> dict:
    return dict(name=self.name, classes=[_plain(c) for c in self.classes], mean=self.mean,
                std=self.std)

  @classmethod
  def from_json(cls, d: dict) -> 'PropertyTarget':
    return cls(d['name'], tuple(d['classes']), d['mean'], d['std'])


def score(target: PropertyTarget, predicted: np.ndarray, true: np.ndarray) -> float:
  """Accuracy (a fraction) of class predictions, or the mean absolute error of regression
  values (in the units they are given in)."""
  if target.is_regression:
    return float(np.abs(predicted - true).mean())
  return float((predicted == true).mean())


def _plain(value):
  return value.item() if isinstance(value, np.generic) else value


def varying_properties(table: pd.DataFrame) -> list[str]:
  """The properties that take more than one value in the zoo, in PROTOCOL order."""
  return [name for name in space.PROPERTY_NAMES if table[name].nunique() > 1]


def make_targets(table: pd.DataFrame, names: Sequence[str],
                 train_models: np.ndarray) -> list[PropertyTarget]:
  """Targets for `names`; raises PropertyError for an unknown or constant property."""
  targets = []
  for name in names:
    if name not in space.PROPERTY_NAMES:
      raise PropertyError(f'unknown property {name!r}; choose from: '
                          + ', '.join(space.PROPERTY_NAMES))
    if name in [t.name for t in targets]:
      raise PropertyError(f'property {name!r} is named twice')
    column = table[name]
    if column.nunique() < 2:
      raise PropertyError(f'property {name!r} does not vary in this zoo (always '
                          f'{_plain(column.iloc[0])!r}); nothing to learn')
    if name in REGRESSION_PROPERTIES:
      values = column.to_numpy(np.float64)[train_models]
      std = float(values.std()) or 1.0
      targets.append(PropertyTarget(name, (), float(values.mean()), std))
    else:
      classes = tuple(_plain(v) for v in sorted(column.unique()))
      undefined = [c for c in classes if c not in space.PROPERTY_DOMAINS.get(name, classes)]
      if undefined:
        raise PropertyError(f'{name}={undefined[0]!r} is not a class PROTOCOL §1 defines '
                            f'({", ".join(map(str, space.PROPERTY_DOMAINS[name]))})')
      targets.append(PropertyTarget(name, classes))
  return targets


def encode(table: pd.DataFrame, targets: Sequence[PropertyTarget]) -> tuple[np.ndarray, np.ndarray]:
  """Per property and model: (labels int32 [P, models], values float32 [P, models]).

  labels are class indices (0 for a regression property); values are the standardised
  regression targets (0 for a categorical property).
  """
  labels = np.zeros((len(targets), len(table)), np.int32)
  values = np.zeros((len(targets), len(table)), np.float32)
  for p, t in enumerate(targets):
    column = table[t.name].to_numpy()
    if t.is_regression:
      values[p] = (column.astype(np.float64) - t.mean) / t.std
    else:
      lookup = {c: i for i, c in enumerate(t.classes)}
      unknown = [v for v in column if _plain(v) not in lookup]
      if unknown:
        raise PropertyError(f'{t.name}={_plain(unknown[0])!r} is not one of the classes the '
                            f'meta-classifier knows ({", ".join(map(str, t.classes))})')
      labels[p] = [lookup[_plain(v)] for v in column]
  return labels, values


def chance(target: PropertyTarget, table: pd.DataFrame, train_models: np.ndarray,
           test_models: np.ndarray) -> float:
  """What a constant guess scores on the test models.

  Categorical: the accuracy of the best constant class on the test models (at least 1/K when
  the test side is balanced). Regression: the mean absolute error, in the property's units, of
  always predicting the meta-training mean.
  """
  column = table[target.name].to_numpy()
  if target.is_regression:
    train_mean = column[train_models].astype(np.float64).mean()
    return float(np.abs(column[test_models].astype(np.float64) - train_mean).mean())
  _, counts = np.unique(column[test_models], return_counts=True)
  return float(counts.max() / counts.sum())
