"""The meta-classifier of PROTOCOL §5: a 1D CNN over a slice of consecutive weights.

Conv layers of kernel 5 (ReLU, then batch norm, then 2× max pooling), widths 8, 16, …, 256; then
dense layers 1024, 1024, 1024, 1024, 64, each with ReLU and dropout 0.5; then the outputs. Slices
longer than 40,000 weights get the deeper variant: two more conv layers of width 256.

One output head serves every property: `num_outputs` logits, of which a property with K classes
uses the first K (the others are masked to -inf in the loss), and a regressed property uses the
first. So meta-classifiers of different properties have the same shapes and can be stacked.

The convolution is written as im2col (5 shifted copies, one matmul): under vmap over stacked
meta-classifiers it becomes one batched matmul, where XLA:CPU's batched convolution is slow.
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from nws_jax import cnn

PROTOCOL_CONV_WIDTHS = (8, 16, 32, 64, 128, 256)
DEEP_EXTRA_WIDTHS = (256, 256)
DEEP_ABOVE = 40_000
PROTOCOL_DENSE_WIDTHS = (1024, 1024, 1024, 1024, 64)
KERNEL_SIZE = 5
DROPOUT_RATE = 0.5
BN_MOMENTUM = 0.9
BN_EPSILON = 1e-5


def conv_widths_for(slice_length: int) -> tuple[int, ...]:
  """PROTOCOL §5 conv widths; the deeper variant for slices over 40,000 weights."""
  if slice_length > DEEP_ABOVE:
    return PROTOCOL_CONV_WIDTHS + DEEP_EXTRA_WIDTHS
  return PROTOCOL_CONV_WIDTHS


class Conv1D(nn.Module):
  """SAME-padded stride-1 1D convolution, [B, L, C_in] -> [B, L, features], as one matmul."""
  features: int
  kernel_size: int = KERNEL_SIZE

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    k = self.kernel_size
    kernel = self.param('kernel', nn.initializers.lecun_normal(), (k, x.shape[-1], self.features))
    bias = self.param('bias', nn.initializers.zeros, (self.features,))
    left = (k - 1) // 2
    padded = jnp.pad(x, ((0, 0), (left, k - 1 - left), (0, 0)))
    length = x.shape[1]
    patches = jnp.concatenate([padded[:, i:i + length] for i in range(k)], axis=-1)
    return jnp.dot(patches, kernel.reshape(-1, self.features), precision=cnn.PRECISION) + bias


class MetaCNN(nn.Module):
  """slices [B, L] float32 -> outputs [B, num_outputs] (logits, or the regressed value in 0)."""
  conv_widths: Sequence[int]
  dense_widths: Sequence[int]
  num_outputs: int
  dropout_rate: float = DROPOUT_RATE

  @nn.compact
  def __call__(self, slices: jax.Array, train: bool) -> jax.Array:
    x = slices[..., None]
    for width in self.conv_widths:
      x = nn.relu(Conv1D(width)(x))
      x = nn.BatchNorm(use_running_average=not train, momentum=BN_MOMENTUM,
                       epsilon=BN_EPSILON)(x)
      x = nn.max_pool(x, (2,), strides=(2,), padding='SAME')
    x = x.reshape(x.shape[0], -1)
    for width in self.dense_widths:
      x = nn.relu(nn.Dense(width, precision=cnn.PRECISION)(x))
      x = nn.Dropout(self.dropout_rate, deterministic=not train)(x)
    return nn.Dense(self.num_outputs, precision=cnn.PRECISION)(x)


@dataclasses.dataclass(frozen=True)
class ModelSpec:
  """The shapes of a meta-classifier: what to build `MetaCNN` from (hashable, for jit caching)."""
  slice_length: int
  conv_widths: tuple[int, ...]
  dense_widths: tuple[int, ...]
  num_outputs: int

  def module(self) -> MetaCNN:
    return MetaCNN(self.conv_widths, self.dense_widths, self.num_outputs)
