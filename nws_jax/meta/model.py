"""The meta-classifier of PROTOCOL §5 and §7: the study's 1D CNN over a slice of consecutive
weights, as the original's model.py (github:gabrieleilertsen/nws) built it.

Two variants, chosen by slice length as the original's meta_classifier.py did:

- `cnn1D_small` (slices of up to 40,000 weights): 12 conv layers, widths 8, 16, 32, 64, 128, 256,
  then six of 256; a 2× max pool after the 1st, the 2nd and the 4th conv; each of the six convs
  of 256 preceded by a pool while the length is above 50; then a final pool.
- `cnn1D` (over 40,000): 15 conv layers, 8 pool, 16 pool, 32 pool, 64 pool, 128 pool, then
  four of 128 each followed by a pool, then 128, 256, pool, 256, 256, pool, 256, 256, pool.

Every conv layer: kernel 5, stride 1, SAME padding, conv + bias, ReLU, then batch norm. Every
pool: 2× max, VALID padding (a length L becomes floor(L/2)). Then (both variants) flatten; dense
layers 1024, 1024, 1024, 1024, 64, each matmul + bias, ReLU, batch norm, dropout 0.5; then the
output layer (matmul + bias, no batch norm). Weights Glorot normal as TF1 drew them (truncated
normal, fan_avg, scale 1; a conv kernel [5, in, out] has fans 5·in and 5·out), biases zero.
Batch norm is TensorLayer 1.x's BatchNormLayer (`BatchNorm` below). At 5,000-weight slices a
meta-classifier has 10,407,360 + 65·C variables (C outputs), parameters and batch-norm moving
statistics counted, as the original printed its "Model size" (`variable_count`).

Custom conv widths (`--conv_widths`, for small CPU runs): any number n ≥ 1 of widths builds the
small variant's layout: pools after the 1st, 2nd and 4th conv where they exist, a pool before
each conv beyond the 6th while the length is above 50, and the final pool. The deep variant
takes exactly its 15 widths (anything else is refused).

Batch norm at evaluation (`bn_eval`): the original built the net in training mode for testing
too, so evaluation normalised by the statistics of the evaluated batch ('batch', the default;
outputs then depend on which slices share a batch, see train.outputs_at); 'moving' uses the
moving averages. Dropout is off at evaluation either way. (One exception in the original:
meta_classifier.py built `cnn1D` with `training=FLAGS.training`, so its evaluation-only runs of
slices over 40,000 weights, per-net, positional and test, used the moving averages; its
validation during training used batch statistics. Here bn_eval applies to both variants.)

`legacy_6layer` is the network before issue 'meta-classifier = the study's network' (conv →
ReLU → batch norm → SAME 2× pool per conv width, dense layers without batch norm, LeCun-normal
init, moving statistics at evaluation); it is kept only so that runs saved before then read
back (their run.json names no variant) and for the benchmark's comparison.

One output head serves every property: `num_outputs` logits, of which a property with K classes
uses the first K (the others are masked to -inf in the loss), and a regressed property uses the
first. So meta-classifiers of different properties have the same shapes and can be stacked.

The convolution is written as im2col (5 shifted copies, one matmul): under vmap over stacked
meta-classifiers it becomes one batched matmul, where XLA:CPU's batched convolution is slow.
"""

from __future__ import annotations

import dataclasses
from typing import Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from nws_jax import cnn
from nws_jax.configs import meta as meta_config

SMALL = 'cnn1D_small'
DEEP = 'cnn1D'
LEGACY = 'legacy_6layer'
VARIANTS = (SMALL, DEEP, LEGACY)
BN_EVAL_MODES = meta_config.BN_EVAL_MODES

SMALL_CONV_WIDTHS = (8, 16, 32, 64, 128, 256) + (256,) * 6
DEEP_CONV_WIDTHS = (8, 16, 32, 64, 128, 128, 128, 128, 128, 128, 256, 256, 256, 256, 256)
DEEP_POOLS_AFTER = frozenset((1, 2, 3, 4, 5, 6, 7, 8, 9, 11, 13, 15))  # 1-based conv layers
SMALL_POOLS_AFTER = frozenset((1, 2, 4))
SMALL_FIXED = 6  # convs beyond the 6th are preceded by a pool while the length is above:
POOL_WHILE_ABOVE = 50
LEGACY_CONV_WIDTHS = (8, 16, 32, 64, 128, 256)
LEGACY_DEEP_EXTRA = (256, 256)  # the legacy network's two more convs for slices over 40,000
DEEP_ABOVE = 40_000
PROTOCOL_DENSE_WIDTHS = meta_config.PROTOCOL_DENSE_WIDTHS
KERNEL_SIZE = 5
DROPOUT_RATE = 0.5
BN_MOMENTUM = 0.9  # TensorLayer's decay: moving = 0.9 · moving + 0.1 · batch
BN_EPSILON = 1e-5
BN_GAMMA_STD = 0.002  # TensorLayer's gamma init: normal(mean 1, std 0.002)

# TF1's tf.glorot_normal_initializer: truncated normal (at 2 std, std corrected to the target),
# variance 2 / (fan_in + fan_out).
glorot_normal = nn.initializers.variance_scaling(1.0, 'fan_avg', 'truncated_normal')


def variant_for(slice_length: int) -> str:
  """The study's variant for a slice length (meta_classifier.py: `cnn1D` above 40,000)."""
  return DEEP if slice_length > DEEP_ABOVE else SMALL


def conv_widths_for(slice_length: int, variant: str | None = None) -> tuple[int, ...]:
  """The default conv widths of `variant` (default: the study's for the slice length)."""
  variant = variant or variant_for(slice_length)
  if variant == LEGACY:
    return LEGACY_CONV_WIDTHS + (LEGACY_DEEP_EXTRA if slice_length > DEEP_ABOVE else ())
  return DEEP_CONV_WIDTHS if variant == DEEP else SMALL_CONV_WIDTHS


def _pools_after(variant: str, n: int) -> frozenset:
  """The 1-based conv layers followed by a pool (besides the small variant's conditional ones
  and its final pool)."""
  if variant == LEGACY:
    return frozenset(range(1, n + 1))
  return SMALL_POOLS_AFTER if variant == SMALL else DEEP_POOLS_AFTER


@dataclasses.dataclass(frozen=True)
class Layer:
  """One layer of `layers()`: kind 'conv', 'pool', 'dense' or 'output'; its output width
  (channels or units; a pool keeps its input's); the length before and after (1 for dense)."""
  kind: str
  width: int
  length_in: int
  length_out: int


def conv_layers(variant: str, conv_widths: Sequence[int],
                slice_length: int) -> list[Layer]:
  """The conv part, conv and pool layers in order, as `MetaCNN` builds it."""
  out, length, width = [], slice_length, 1

  def add(kind, w):
    nonlocal length, width
    new = length
    if kind == 'pool':  # VALID: floor(L/2); the legacy network's SAME pool: ceil(L/2)
      new = -(-length // 2) if variant == LEGACY else length // 2
    out.append(Layer(kind, w, length, new))
    length, width = new, w

  pools_after = _pools_after(variant, len(conv_widths))
  for i, w in enumerate(conv_widths, 1):
    if variant == SMALL and i > SMALL_FIXED and length > POOL_WHILE_ABOVE:
      add('pool', width)
    add('conv', w)
    if i in pools_after:
      add('pool', w)
  if variant == SMALL:
    add('pool', width)  # the final pool
  return out


def check_layout(variant: str, conv_widths: Sequence[int], slice_length: int) -> None:
  """Raises ValueError (one line) for a layout that cannot be built."""
  if variant not in VARIANTS:
    raise ValueError(f'unknown meta-classifier variant {variant!r}; choose from: '
                     + ', '.join(VARIANTS))
  if not conv_widths or min(conv_widths) < 1:
    raise ValueError(f'conv_widths must be positive widths, got {tuple(conv_widths)}')
  if variant == DEEP and len(conv_widths) != len(DEEP_CONV_WIDTHS):
    raise ValueError(f'the {DEEP} meta-classifier (slices over {DEEP_ABOVE:,} weights) has '
                     f'{len(DEEP_CONV_WIDTHS)} conv layers; conv_widths gives '
                     f'{len(conv_widths)}')
  final = conv_layers(variant, conv_widths, slice_length)[-1].length_out
  if final < 1:
    raise ValueError(f'slice_length {slice_length} is too short for the {variant} '
                     f'meta-classifier with {len(conv_widths)} conv layers: its pools leave no '
                     'weight')


class Conv1D(nn.Module):
  """SAME-padded stride-1 1D convolution, [B, L, C_in] -> [B, L, features], as one matmul."""
  features: int
  kernel_size: int = KERNEL_SIZE
  kernel_init: Callable = nn.initializers.lecun_normal()

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    k = self.kernel_size
    kernel = self.param('kernel', self.kernel_init, (k, x.shape[-1], self.features))
    bias = self.param('bias', nn.initializers.zeros, (self.features,))
    left = (k - 1) // 2
    padded = jnp.pad(x, ((0, 0), (left, k - 1 - left), (0, 0)))
    length = x.shape[1]
    patches = jnp.concatenate([padded[:, i:i + length] for i in range(k)], axis=-1)
    return jnp.dot(patches, kernel.reshape(-1, self.features), precision=cnn.PRECISION) + bias


def _gamma_init(key, shape, dtype=jnp.float32):
  return 1.0 + BN_GAMMA_STD * jax.random.normal(key, shape, dtype)


class BatchNorm(nn.Module):
  """TensorLayer 1.x's BatchNormLayer over the last axis: gamma ('scale') drawn from
  normal(1, 0.002), beta ('bias') 0, moving mean 0 and variance 1 ('batch_stats'), epsilon 1e-5;
  batch statistics are the mean and the biased variance over every axis but the last.

  batch_statistics: normalise by the batch's statistics (training, and bn_eval='batch'), else
  by the moving ones. update: fold the batch's statistics into the moving ones (training only;
  moving = 0.9 · moving + 0.1 · batch). TensorLayer updated them on every forward pass, also
  at evaluation; here evaluation leaves them alone (in 'batch' mode they are never read)."""

  @nn.compact
  def __call__(self, x: jax.Array, *, batch_statistics: bool, update: bool) -> jax.Array:
    features = (x.shape[-1],)
    gamma = self.param('scale', _gamma_init, features)
    beta = self.param('bias', nn.initializers.zeros, features)
    moving_mean = self.variable('batch_stats', 'mean', lambda: jnp.zeros(features, jnp.float32))
    moving_var = self.variable('batch_stats', 'var', lambda: jnp.ones(features, jnp.float32))
    if batch_statistics:
      axes = tuple(range(x.ndim - 1))
      mean = x.mean(axes)
      var = jnp.square(x - jax.lax.stop_gradient(mean)).mean(axes)  # tf.nn.moments
      if update and not self.is_initializing():
        moving_mean.value = BN_MOMENTUM * moving_mean.value + (1 - BN_MOMENTUM) * mean
        moving_var.value = BN_MOMENTUM * moving_var.value + (1 - BN_MOMENTUM) * var
    else:
      mean, var = moving_mean.value, moving_var.value
    return (x - mean) * jax.lax.rsqrt(var + BN_EPSILON) * gamma + beta


class MetaCNN(nn.Module):
  """slices [B, L] float32 -> outputs [B, num_outputs] (logits, or the regressed value in 0):
  the study's `cnn1D_small` or `cnn1D` (see the module docstring)."""
  conv_widths: Sequence[int]
  dense_widths: Sequence[int]
  num_outputs: int
  variant: str = SMALL
  bn_eval: str = 'batch'
  dropout_rate: float = DROPOUT_RATE

  @nn.compact
  def __call__(self, slices: jax.Array, train: bool) -> jax.Array:
    norm = dict(batch_statistics=train or self.bn_eval == 'batch', update=train)
    pool = lambda x: nn.max_pool(x, (2,), strides=(2,), padding='VALID')
    pools_after = _pools_after(self.variant, len(self.conv_widths))
    x = slices[..., None]
    for i, width in enumerate(self.conv_widths, 1):
      if self.variant == SMALL and i > SMALL_FIXED and x.shape[1] > POOL_WHILE_ABOVE:
        x = pool(x)
      x = nn.relu(Conv1D(width, kernel_init=glorot_normal, name=f'conv{i}')(x))
      x = BatchNorm(name=f'conv{i}_bn')(x, **norm)
      if i in pools_after:
        x = pool(x)
    if self.variant == SMALL:
      x = pool(x)  # the final pool
    x = x.reshape(x.shape[0], -1)
    for i, width in enumerate(self.dense_widths, 1):
      x = nn.relu(nn.Dense(width, kernel_init=glorot_normal, precision=cnn.PRECISION,
                           name=f'fc{i}')(x))
      x = BatchNorm(name=f'fc{i}_bn')(x, **norm)
      x = nn.Dropout(self.dropout_rate, deterministic=not train)(x)
    return nn.Dense(self.num_outputs, kernel_init=glorot_normal, precision=cnn.PRECISION,
                    name='fc_final')(x)


class LegacyMetaCNN(nn.Module):
  """The pre-issue network (`legacy_6layer`), unchanged: kept to read back runs saved before
  the study's network replaced it, and for the benchmark's comparison."""
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
  """The shapes of a meta-classifier: what to build its module from (hashable, for jit caching).

  variant: 'cnn1D_small', 'cnn1D' or 'legacy_6layer'. bn_eval: 'batch' or 'moving' (legacy:
  'moving' only). batch_size: the rows batch norm sees together: training batches and, with
  bn_eval='batch', evaluation batches (train.outputs_at).
  """
  slice_length: int
  conv_widths: tuple[int, ...]
  dense_widths: tuple[int, ...]
  num_outputs: int
  variant: str = SMALL
  bn_eval: str = 'batch'
  batch_size: int = 64

  def __post_init__(self):
    check_layout(self.variant, self.conv_widths, self.slice_length)
    if self.bn_eval not in BN_EVAL_MODES or (self.variant == LEGACY and self.bn_eval != 'moving'):
      raise ValueError(f'bn_eval {self.bn_eval!r} is not one of '
                       + ('moving' if self.variant == LEGACY else ', '.join(BN_EVAL_MODES))
                       + f' (variant {self.variant})')

  def module(self) -> nn.Module:
    if self.variant == LEGACY:
      return LegacyMetaCNN(self.conv_widths, self.dense_widths, self.num_outputs)
    return MetaCNN(self.conv_widths, self.dense_widths, self.num_outputs, self.variant,
                   self.bn_eval)

  def layers(self) -> list[Layer]:
    """Every layer in order: the conv part (`conv_layers`), the dense layers, the output."""
    conv = conv_layers(self.variant, self.conv_widths, self.slice_length)
    out = list(conv)
    for w in self.dense_widths:
      out.append(Layer('dense', w, 1, 1))
    return out + [Layer('output', self.num_outputs, 1, 1)]

  def variable_count(self) -> int:
    """Every variable of one meta-classifier: parameters and batch-norm moving statistics (the
    original's "Model size" print; optimizer state excluded). Shapes only, nothing computed."""
    shapes = jax.eval_shape(lambda: self.module().init(
        jax.random.key(0), jnp.zeros((1, self.slice_length)), train=False))
    return int(sum(np.prod(x.shape) for x in jax.tree.leaves(shapes)))
