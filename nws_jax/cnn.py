"""The CNN family of the study (PROTOCOL §2) as pure functions over parameter pytrees.

One model: `init` builds its parameters and batch-norm statistics, `apply` runs it, `flatten`
writes its variables as one snapshot vector in the order of the published release (PROTOCOL §4)
and `unflatten` reads one back. Per-model choices that do not change shapes (activation,
initialisation) are traced integers, so a zoo is `jax.vmap` of these functions over a leading
models axis; what fixes the shapes (the architecture) is a static `Architecture`.

Parameters: {layer_name: {'kernel', 'bias', 'beta', 'gamma'}} (the final 'logits' layer has no
batch norm); statistics: {layer_name: {'mean', 'var'}}. Layer names sort in network order:
'conv_00', 'conv_01', …, 'dense_00', …, 'logits'.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any

import jax
import jax.scipy.special
import jax.numpy as jnp
import numpy as np

from nws_jax.configs import zoo as zoo_config

Params = dict[str, dict[str, jax.Array]]
Stats = dict[str, dict[str, jax.Array]]

IMAGE_SHAPE = (32, 32, 3)
NUM_LOGITS = 20  # The reference nets have 20 outputs although labels are 0..9 (PROTOCOL §2).
NUM_CLASSES = 10
BN_DECAY = 0.9
BN_EPSILON = 1e-5
BN_GAMMA_STD = 0.002
DROPOUT_KEEP = 0.5
CONV_IMPLS = zoo_config.CONV_IMPLS
# Full float32 matmuls and convolutions on every backend. XLA's default on recent GPUs is TF32
# (a 10-bit mantissa), which made the same model differ between a zoo and a single run by ~1e-2
# in its probabilities on an H200; the study's TensorFlow 1 nets trained in float32.
PRECISION = jax.lax.Precision.HIGHEST

# Conv layers per block for each conv depth (PROTOCOL §2).
_CONV_LAYOUT = {3: (1, 1, 1), 4: (1, 1, 2), 5: (1, 2, 2)}


@dataclasses.dataclass(frozen=True)
class Architecture:
  """What fixes a model's weight shapes (PROTOCOL §1 properties 8-12)."""
  filter_size: int = 5
  depth_conv: int = 3
  depth_fc: int = 2
  width_conv: int = 8
  width_fc: int = 128

  def __post_init__(self):
    if self.depth_conv not in _CONV_LAYOUT:
      raise ValueError(f'depth_conv must be one of {sorted(_CONV_LAYOUT)}, got {self.depth_conv}')
    if self.filter_size % 2 != 1:
      raise ValueError(f'filter_size must be odd, got {self.filter_size}')


@dataclasses.dataclass(frozen=True)
class LayerSpec:
  """One weight layer: kind 'conv' (kernel [k, k, in, out]) or 'dense' (kernel [in, out])."""
  name: str
  kind: str
  kernel_shape: tuple[int, ...]
  batch_norm: bool
  pool_after: bool = False  # 2×2 max pooling after the activation (last conv of a block).

  @property
  def units(self) -> int:
    return self.kernel_shape[-1]

  @property
  def num_weights(self) -> int:
    """Kernel + bias + (beta, gamma, moving mean, moving variance) when batch-normed."""
    return math.prod(self.kernel_shape) + self.units * (5 if self.batch_norm else 1)


def layer_specs(arch: Architecture) -> tuple[LayerSpec, ...]:
  """The weight layers of `arch` in network order (PROTOCOL §2)."""
  specs = []
  k, channels, size = arch.filter_size, IMAGE_SHAPE[2], IMAGE_SHAPE[0]
  for block, n_layers in enumerate(_CONV_LAYOUT[arch.depth_conv]):
    out = arch.width_conv * 2**block
    for j in range(n_layers):
      specs.append(LayerSpec(f'conv_{len(specs):02d}', 'conv', (k, k, channels, out), True,
                             pool_after=(j == n_layers - 1)))
      channels = out
    size //= 2
  features = size * size * channels
  for i in range(arch.depth_fc):
    units = arch.width_fc // 2**i
    specs.append(LayerSpec(f'dense_{i:02d}', 'dense', (features, units), True))
    features = units
  specs.append(LayerSpec('logits', 'dense', (features, NUM_LOGITS), False))
  return tuple(specs)


def weight_counts(arch: Architecture) -> tuple[int, int]:
  """(weightn_conv, weightn_fc): lengths of the conv and dense parts of a snapshot vector."""
  specs = layer_specs(arch)
  n_conv = sum(s.num_weights for s in specs if s.kind == 'conv')
  n_fc = sum(s.num_weights for s in specs if s.kind == 'dense')
  return n_conv, n_fc


def _fans(shape: tuple[int, ...]) -> tuple[int, int]:
  receptive = math.prod(shape[:-2])
  return shape[-2] * receptive, shape[-1] * receptive


def _std_normal(u: jax.Array) -> jax.Array:
  """Standard normal quantile of u in (0, 1)."""
  return math.sqrt(2.0) * jax.scipy.special.erfinv(2.0 * u - 1.0)


def init_constants(shape: tuple[int, ...]) -> tuple[float, float]:
  """(Glorot uniform limit, truncated-normal std) of a kernel of `shape`, fans counting the
  receptive field as TensorFlow does."""
  fan_in, fan_out = _fans(shape)
  return (math.sqrt(6.0 / (fan_in + fan_out)),
          math.sqrt(2.0 / (fan_in + fan_out)) / 0.87962566103423978)


def kernel_values(u: jax.Array, limit, trunc_std, initialization: jax.Array) -> jax.Array:
  """Kernel weights from uniform draws u in (0, 1) by scheme `initialization` (traced int,
  PROTOCOL §1 property 7), through inverse CDFs so that one random draw serves all schemes
  (random draws dominate the compile time of a vmapped init).

  0: constant 0.1; 1: normal(0, 1); 2: Glorot uniform in ±limit; 3: Glorot normal (a normal
  truncated at 2 std, scaled by trunc_std so that its std is sqrt(2 / (fan_in + fan_out)), as
  TensorFlow 1 draws it). limit and trunc_std: `init_constants`, floats or float32 scalars.
  """
  lo = 0.5 * math.erfc(2.0 / math.sqrt(2.0))  # Φ(-2)
  candidates = jnp.stack([
      jnp.full(u.shape, 0.1, jnp.float32),
      _std_normal(u),
      limit * (2.0 * u - 1.0),
      trunc_std * _std_normal(lo + u * (1.0 - 2.0 * lo)),
  ])
  return candidates[initialization]


def init_kernel(u: jax.Array, shape: tuple[int, ...], initialization: jax.Array) -> jax.Array:
  """A kernel of `shape` drawn by scheme `initialization` from uniform draws u (`kernel_values`)."""
  return kernel_values(u, *init_constants(shape), initialization)


def init_draw_sizes(specs) -> list[int]:
  """Lengths of the consecutive parts of `init`'s one uniform draw: per layer the kernel, then
  the gamma when batch-normed."""
  sizes = []
  for spec in specs:
    sizes += [math.prod(spec.kernel_shape)] + ([spec.units] if spec.batch_norm else [])
  return sizes


def init(key: jax.Array, arch: Architecture, initialization: jax.Array) -> tuple[Params, Stats]:
  """Parameters and batch-norm statistics of one model; biases and betas zero, gammas N(1, 0.002)."""
  specs = layer_specs(arch)
  sizes = init_draw_sizes(specs)
  u = iter(jnp.split(jax.random.uniform(key, (sum(sizes),), jnp.float32, 1e-7, 1.0 - 1e-7),
                     np.cumsum(sizes)[:-1]))
  params, stats = {}, {}
  for spec in specs:
    layer = {'kernel': init_kernel(next(u).reshape(spec.kernel_shape), spec.kernel_shape,
                                   initialization),
             'bias': jnp.zeros((spec.units,), jnp.float32)}
    if spec.batch_norm:
      layer['beta'] = jnp.zeros((spec.units,), jnp.float32)
      layer['gamma'] = 1.0 + BN_GAMMA_STD * _std_normal(next(u))
      stats[spec.name] = {'mean': jnp.zeros((spec.units,), jnp.float32),
                          'var': jnp.ones((spec.units,), jnp.float32)}
    params[spec.name] = layer
  return params, stats


def activate(x: jax.Array, activation: jax.Array) -> jax.Array:
  """ReLU, ELU, sigmoid or tanh by traced index (PROTOCOL §1 property 6)."""
  return jax.lax.switch(activation, (jax.nn.relu, jax.nn.elu, jax.nn.sigmoid, jnp.tanh), x)


def conv2d(x: jax.Array, kernel: jax.Array, impl: str = 'im2col') -> jax.Array:
  """Stride-1 SAME convolution: x [B, H, W, C], kernel [k, k, C, O] -> [B, H, W, O].

  'im2col' gathers the k×k shifted copies of the padded input along channels and does one
  matmul; under `vmap` over models this is a batched matmul, which XLA:CPU runs several times
  faster than the grouped convolution that `vmap` makes of 'lax' (lax.conv_general_dilated).
  BENCHMARKS.md has the measurements behind the per-backend default.
  """
  if impl == 'lax':
    return jax.lax.conv_general_dilated(x, kernel, (1, 1), 'SAME',
                                        dimension_numbers=('NHWC', 'HWIO', 'NHWC'),
                                        precision=PRECISION)
  if impl != 'im2col':
    raise ValueError(f'unknown conv impl {impl!r}; choose from {CONV_IMPLS}')
  k, _, c, o = kernel.shape
  _, h, w, _ = x.shape
  p = k // 2
  xp = jnp.pad(x, ((0, 0), (p, p), (p, p), (0, 0)))
  patches = jnp.concatenate(
      [xp[:, dy:dy + h, dx:dx + w, :] for dy in range(k) for dx in range(k)], axis=-1)
  return matmul(patches, kernel.reshape(k * k * c, o), False)


# XLA:CPU's matmuls split a long contraction over its intra-op threads, and the split (so the
# last bits) depends on the thread count, which is max(cores, devices). `matmul` contracts in
# fixed chunks instead: a dense layer's inputs (few rows, long K) in chunks of CONTRACTION_K, a
# weight gradient's rows in chunks of CONTRACTION_ROWS; chunk partial products are summed in
# halves, whose order does not depend on threads. A convolution's K (taps ×
# channels) is not chunked: a padded model's K holds zeros between its own taps and channels,
# and chunks would group its terms otherwise than the unpadded model's (one matmul adds the
# zeros in place, exactly). On other backends a matmul is one matmul: the thread pool is
# XLA:CPU's.
CONTRACTION_K = 128
CONTRACTION_ROWS = 128
_FEW_ROWS = 4096  # below this many rows, a long K would be split over threads


def _chunks(size: int, most: int) -> int:
  """How many equal chunks of at most `most` split `size` (1: none, and always 1 off the CPU)."""
  if jax.default_backend() != 'cpu':
    return 1
  return next(c for c in range(-(-size // most), size + 1) if size % c == 0)


def _contract(x: jax.Array, w: jax.Array, chunks: int) -> jax.Array:
  """x [m, K] @ w [K, n], the K axis in `chunks` equal chunks summed in order."""
  if chunks == 1:
    return jnp.matmul(x, w, precision=PRECISION)
  m, k = x.shape
  parts = jnp.einsum('mck,ckn->cmn', x.reshape(m, chunks, k // chunks),
                     w.reshape(chunks, k // chunks, -1), precision=PRECISION)
  # Summed in halves, by elementwise adds: a sum (a reduce) would join the matmul's YNNPACK
  # fusion, whose reductions split by the thread pool's size.
  while len(parts) > 1:
    half = len(parts) // 2
    pairs = parts[:half] + parts[half:2 * half]
    parts = pairs if len(parts) % 2 == 0 else jnp.concatenate([pairs, parts[2 * half:]])
  return parts[0]


def _matmul(x: jax.Array, w: jax.Array, chunk_k: bool) -> jax.Array:
  k = w.shape[0]
  rows = x.reshape(-1, k)
  chunks = _chunks(k, CONTRACTION_K) if chunk_k and rows.shape[0] < _FEW_ROWS else 1
  return _contract(rows, w, chunks).reshape(x.shape[:-1] + w.shape[1:])


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def matmul(x: jax.Array, w: jax.Array, chunk_k: bool = True) -> jax.Array:
  """x [..., K] @ w [K, N] -> [..., N], with results that do not depend on XLA:CPU's thread
  count (see CONTRACTION_K); chunk_k False: K in one piece (convolutions)."""
  return _matmul(x, w, chunk_k)


def _matmul_fwd(x, w, chunk_k):
  return _matmul(x, w, chunk_k), (x, w)


def _matmul_bwd(chunk_k, res, g):
  x, w = res
  k, n = w.shape
  rows, grads = x.reshape(-1, k), g.reshape(-1, n)
  dw = _contract(rows.T, grads, _chunks(rows.shape[0], CONTRACTION_ROWS))
  dx = jnp.matmul(g, w.T, precision=PRECISION)
  return dx, dw


matmul.defvjp(_matmul_fwd, _matmul_bwd)


def max_pool_2x2(x: jax.Array) -> jax.Array:
  """2×2 max pooling, stride 2: [B, H, W, C] -> [B, H/2, W/2, C]."""
  b, h, w, c = x.shape
  return x.reshape(b, h // 2, 2, w // 2, 2, c).max(axis=(2, 4))


def _batch_norm(y, layer, stats, axes, train):
  if train:
    mean = y.mean(axis=axes)
    var = y.var(axis=axes)
    new_stats = {'mean': BN_DECAY * stats['mean'] + (1 - BN_DECAY) * mean,
                 'var': BN_DECAY * stats['var'] + (1 - BN_DECAY) * var}
  else:
    mean, var, new_stats = stats['mean'], stats['var'], stats
  y = (y - mean) * jax.lax.rsqrt(var + BN_EPSILON) * layer['gamma'] + layer['beta']
  return y, new_stats


def apply(params: Params, stats: Stats, images: jax.Array, activation: jax.Array, *,
          arch: Architecture, train: bool, dropout_key: jax.Array | None = None,
          conv_impl: str = 'im2col', keeps: list[jax.Array] | None = None,
          dropout: bool = True) -> tuple[jax.Array, Stats]:
  """Runs one model on images [B, 32, 32, 3] in [0, 1]; returns logits [B, 20] and new statistics.

  Conv: kernel + bias, batch norm, activation (2×2 max pool closing each block). Dense: matmul +
  bias, activation, batch norm, dropout (keep 0.5, train only). Then the 20 logits. With
  train=True batch norm uses batch statistics and updates the moving averages (decay 0.9);
  with train=False it uses the moving averages and statistics come back unchanged.
  keeps: the dropout masks (bool [B, units] per batch-normed dense layer) when the caller draws
  them (`packing` does, to reproduce an unpadded model's draw); None draws them from dropout_key.
  dropout=False with train=True: batch statistics (moving averages updated) without dropout, the
  original code's evaluation pass (its training graph run with keep probability 1).
  """
  train_dropout = train and dropout
  if train_dropout and dropout_key is None and keeps is None:
    raise ValueError('train=True needs a dropout_key')
  x = images
  new_stats = {}
  specs = layer_specs(arch)
  if train_dropout and keeps is not None:
    keeps = iter(keeps)
  elif train_dropout:
    # One draw for every dropout layer: each random draw adds to the compile time.
    dropped = [s.units for s in specs if s.kind == 'dense' and s.batch_norm]
    keep_all = jax.random.bernoulli(dropout_key, DROPOUT_KEEP, (x.shape[0], sum(dropped)))
    keeps = iter(jnp.split(keep_all, np.cumsum(dropped)[:-1], axis=1))
  for spec in specs:
    layer = params[spec.name]
    if spec.kind == 'conv':
      y = conv2d(x, layer['kernel'], conv_impl) + layer['bias']
      y, new_stats[spec.name] = _batch_norm(y, layer, stats[spec.name], (0, 1, 2), train)
      x = activate(y, activation)
      if spec.pool_after:
        x = max_pool_2x2(x)
    elif spec.batch_norm:
      if x.ndim > 2:
        x = x.reshape(x.shape[0], -1)
      y = activate(matmul(x, layer['kernel']) + layer['bias'], activation)
      x, new_stats[spec.name] = _batch_norm(y, layer, stats[spec.name], (0,), train)
      if train_dropout:
        x = jnp.where(next(keeps), x / DROPOUT_KEEP, 0.0)
    else:
      x = matmul(x, layer['kernel']) + layer['bias']
  return x, new_stats


def cross_entropy(logits: jax.Array, labels: jax.Array) -> jax.Array:
  """Mean softmax cross-entropy of logits [B, 20] against int labels [B]."""
  logp = jax.nn.log_softmax(logits)
  return -jnp.take_along_axis(logp, labels[:, None], axis=1).mean()


def _layer_vectors(spec: LayerSpec, layer: dict, stats: dict | None) -> list[jax.Array]:
  kernel = layer['kernel']
  # Release order: conv kernels out channel by out channel, then in channel, then the k×k patch
  # row by row; dense kernels unit by unit (PROTOCOL §4). Both are the kernel with its last two
  # axes moved first.
  if spec.kind == 'conv':
    kernel = jnp.transpose(kernel, (3, 2, 0, 1))
  else:
    kernel = kernel.T
  parts = [kernel.ravel(), layer['bias']]
  if spec.batch_norm:
    parts += [layer['beta'], layer['gamma'], stats['mean'], stats['var']]
  return parts


def flatten(params: Params, stats: Stats, arch: Architecture) -> jax.Array:
  """One snapshot vector [weightn_conv + weightn_fc] in the release order (PROTOCOL §4)."""
  parts = []
  for spec in layer_specs(arch):
    parts += _layer_vectors(spec, params[spec.name], stats.get(spec.name))
  return jnp.concatenate(parts)


def unflatten(vector: Any, arch: Architecture) -> tuple[Params, Stats]:
  """Inverse of `flatten`: a snapshot vector [n] back to (params, stats) as numpy arrays."""
  vector = np.asarray(vector)
  expected = sum(weight_counts(arch))
  if vector.shape != (expected,):
    raise ValueError(f'snapshot has shape {vector.shape}, architecture needs ({expected},)')
  params, stats, pos = {}, {}, 0

  def take(n):
    nonlocal pos
    out = vector[pos:pos + n]
    pos += n
    return out

  for spec in layer_specs(arch):
    shape = spec.kernel_shape
    if spec.kind == 'conv':
      k, _, c, o = shape
      kernel = take(math.prod(shape)).reshape(o, c, k, k).transpose(2, 3, 1, 0)
    else:
      kernel = take(math.prod(shape)).reshape(shape[1], shape[0]).T
    layer = {'kernel': kernel, 'bias': take(spec.units)}
    if spec.batch_norm:
      layer['beta'], layer['gamma'] = take(spec.units), take(spec.units)
      stats[spec.name] = {'mean': take(spec.units), 'var': take(spec.units)}
    params[spec.name] = layer
  return params, stats
