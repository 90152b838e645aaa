"""Device-resident data of a zoo and per-epoch class-balanced ordering (PROTOCOL §3).

All datasets of a zoo are stacked on a leading datasets axis and padded to the largest (padding
labels are -1), kept on the device as uint8, and indexed there: a model reads the rows of its own
dataset index. Each epoch a model's training order is a fresh shuffle cut so that every class
has as many examples as the smallest one.
"""

from __future__ import annotations

from typing import NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from nws_jax import datasets as datasets_lib

NUM_CLASSES = 10


class ZooData(NamedTuple):
  """Stacked datasets: images uint8 [D, N, 32, 32, 3], labels int32 [D, N] (-1 = padding).

  `eval_*` are the evaluation sets, padded to one common length so that one compiled program
  evaluates any of them: index 0 a training subset, 1 validation, 2 test: [3, D, Ne, ...].
  """
  train_images: jax.Array
  train_labels: jax.Array
  eval_images: jax.Array
  eval_labels: jax.Array


EVAL_SETS = ('train', 'valid', 'test')


def _pad(images: np.ndarray, labels: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
  pad = n - len(labels)
  return (np.concatenate([images, np.zeros((pad,) + images.shape[1:], images.dtype)]),
          np.concatenate([labels.astype(np.int32), np.full(pad, -1, np.int32)]))


def balanced_size(labels: np.ndarray) -> int:
  """Examples per epoch after class balancing: 10 × the smallest class count."""
  counts = np.bincount(labels[labels >= 0], minlength=NUM_CLASSES)[:NUM_CLASSES]
  return int(NUM_CLASSES * counts.min())


def stack(datasets: Sequence[datasets_lib.Dataset], eval_size: int | None = None) -> ZooData:
  """Stacks datasets on the device; eval sets are capped at `eval_size` examples (None: all).

  The training-accuracy set is the first min(len(valid), …) training examples, so the three
  curves are measured on sets of comparable size.
  """
  for d in datasets:
    if balanced_size(d.train_labels) == 0:
      raise ValueError(f'dataset {d.name!r} lacks a class in its training split')
  n_train = max(len(d.train_labels) for d in datasets)
  train = [_pad(d.train_images, d.train_labels, n_train) for d in datasets]

  def cap(images, labels):
    n = len(labels) if eval_size is None else min(eval_size, len(labels))
    return images[:n], labels[:n]

  evals = []
  for d in datasets:
    valid = cap(d.valid_images, d.valid_labels)
    evals.append((cap(d.train_images[:len(valid[1])], d.train_labels[:len(valid[1])]), valid,
                  cap(d.test_images, d.test_labels)))
  n_eval = max(len(s[1]) for e in evals for s in e)
  eval_images = np.stack([np.stack([_pad(*e[k], n_eval)[0] for e in evals]) for k in range(3)])
  eval_labels = np.stack([np.stack([_pad(*e[k], n_eval)[1] for e in evals]) for k in range(3)])
  return ZooData(
      train_images=jnp.asarray(np.stack([t[0] for t in train])),
      train_labels=jnp.asarray(np.stack([t[1] for t in train])),
      eval_images=jnp.asarray(eval_images), eval_labels=jnp.asarray(eval_labels))


def balanced_order(key: jax.Array, labels: jax.Array) -> jax.Array:
  """One epoch's order of a dataset's training rows: int32 [N].

  labels: int32 [N] with -1 for padding. A random permutation, in which each class keeps its
  first m members (m: the smallest class count); these come first, in shuffled order, followed
  by the dropped rows. The first `balanced_size(labels)` entries are the epoch.
  """
  n = labels.shape[0]
  perm = jax.random.permutation(key, n)
  shuffled = labels[perm]
  onehot = shuffled[:, None] == jnp.arange(NUM_CLASSES)
  rank = jnp.cumsum(onehot, axis=0) - 1
  smallest = onehot.sum(axis=0).min()
  rank_in_class = jnp.take_along_axis(rank, jnp.clip(shuffled, 0)[:, None], axis=1)[:, 0]
  keep = (shuffled >= 0) & (rank_in_class < smallest)
  return perm[jnp.argsort(~keep, stable=True)].astype(jnp.int32)
