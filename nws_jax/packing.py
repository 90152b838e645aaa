"""Models of different architectures in one compiled program, padded and masked (issue 7).

A *bucket* is a padded architecture: for the models of one layer structure (conv depth, dense
depth), the largest filter size, conv width and dense width among them (`bucket_arch`); which
models share one is the packing (`PACKINGS`, `bucket_key`). Each
model's own weights sit inside the padded arrays (its k×k taps at the centre of the padded
taps, its channels and units first) and every other entry is exactly zero and stays so, since
its gradient is masked. Such zeros do not change the model's function: a padded channel or
unit has zero kernel, bias, beta and gamma, so it leaves batch norm as 0 (times whatever its
activation makes of it) and the weights of the next layer that read it are zero as well.

Random draws are the unpadded model's own: `cnn.init` takes one uniform draw and `cnn.apply`
one Bernoulli draw for dropout, and with JAX's partitionable threefry element i of a draw has
the same value whatever the draw's length, so a padded-length draw read at the model's own
positions is the model's draw. A padded model therefore matches the same model run unpadded
(outputs, gradients, snapshots) up to the summation order of its longer contractions.

`ModelLayout` (host-built, per weight layer) says where the model's own weights are; the rest
is computed inside the program from it: masks, gather indices into the draws, and the scatter
that writes the model's snapshot vector in release order (PROTOCOL §4) at the front of a
padded-length vector.
"""

from __future__ import annotations

import dataclasses
import math
from typing import NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from nws_jax import cnn
from nws_jax.configs import zoo as zoo_config

# What models share a bucket: 'depth' pads filter size, conv width and dense width (one bucket
# per conv and dense depth); 'conv' pads the dense width only (every conv part exact); 'exact'
# pads nothing. BENCHMARKS.md measures programs, waste and wall time of each.
PACKINGS = zoo_config.PACKINGS


class ModelLayout(NamedTuple):
  """One model's architecture inside a bucket's padded one; per weight layer l, arrays [L].

  taps: filter size (1 for dense layers). rows: input channels (conv) or features (dense).
  units: output channels or units. draw / gamma_draw: where the layer's kernel and gamma start
  in `cnn.init`'s uniform draw (gamma_draw 0 where there is no batch norm). flat / flat_units:
  where the layer's kernel and its unit vectors (bias, beta, gamma, mean, var) start in the
  snapshot vector. dropout: where a batch-normed dense layer's units start in a row of the
  dropout draw. limit / trunc_std: the kernel's `cnn.init_constants` (float32). Scalars:
  channels_last (channels feeding the first dense layer), dropout_units (units per row of the
  dropout draw), length (weightn_conv + weightn_fc).
  """
  taps: np.ndarray
  rows: np.ndarray
  units: np.ndarray
  draw: np.ndarray
  gamma_draw: np.ndarray
  flat: np.ndarray
  flat_units: np.ndarray
  dropout: np.ndarray
  limit: np.ndarray
  trunc_std: np.ndarray
  channels_last: np.ndarray
  dropout_units: np.ndarray
  length: np.ndarray


def structure(arch: cnn.Architecture) -> tuple[int, int]:
  """What a bucket cannot pad: (depth_conv, depth_fc)."""
  return arch.depth_conv, arch.depth_fc


def bucket_arch(archs: Sequence[cnn.Architecture]) -> cnn.Architecture:
  """The padded architecture that holds every one of `archs` (all of one `structure`)."""
  if len({structure(a) for a in archs}) != 1:
    raise ValueError('a bucket holds architectures of one conv depth and one dense depth')
  return dataclasses.replace(archs[0], filter_size=max(a.filter_size for a in archs),
                             width_conv=max(a.width_conv for a in archs),
                             width_fc=max(a.width_fc for a in archs))


def bucket_key(arch: cnn.Architecture, packing: str):
  """Models with equal keys share a bucket under `packing` (one of PACKINGS)."""
  if packing == 'depth':
    return structure(arch)
  if packing == 'conv':
    return structure(arch) + (arch.filter_size, arch.width_conv)
  if packing == 'exact':
    return arch
  raise ValueError(f'unknown packing {packing!r}; choose from: ' + ', '.join(PACKINGS))


def model_layout(arch: cnn.Architecture, padded: cnn.Architecture) -> ModelLayout:
  """Where the weights of `arch` are inside a bucket of padded architecture `padded`."""
  own, pad = cnn.layer_specs(arch), cnn.layer_specs(padded)
  if structure(arch) != structure(padded) or any(
      o > p for a, b in zip(own, pad) for o, p in zip(a.kernel_shape, b.kernel_shape)):
    raise ValueError(f'{arch} does not fit in the padded architecture {padded}')
  draws = np.cumsum([0] + cnn.init_draw_sizes(own))
  fields = {name: [] for name in ('taps', 'rows', 'units', 'draw', 'gamma_draw', 'flat',
                                  'flat_units', 'dropout', 'limit', 'trunc_std')}
  d = flat = dropout = 0
  for spec in own:
    size = math.prod(spec.kernel_shape)
    limit, trunc_std = cnn.init_constants(spec.kernel_shape)
    values = dict(taps=spec.kernel_shape[0] if spec.kind == 'conv' else 1,
                  rows=spec.kernel_shape[-2], units=spec.units, draw=draws[d],
                  gamma_draw=draws[d + 1] if spec.batch_norm else 0, flat=flat,
                  flat_units=flat + size, dropout=dropout, limit=limit, trunc_std=trunc_std)
    for name, value in values.items():
      fields[name].append(value)
    d += 2 if spec.batch_norm else 1
    flat += spec.num_weights
    if spec.kind == 'dense' and spec.batch_norm:
      dropout += spec.units
  ints = {k: np.asarray(v, np.int32) for k, v in fields.items() if k not in ('limit', 'trunc_std')}
  floats = {k: np.asarray(fields[k], np.float32) for k in ('limit', 'trunc_std')}
  last_conv = [s for s in own if s.kind == 'conv'][-1]
  return ModelLayout(**ints, **floats, channels_last=np.int32(last_conv.units),
                     dropout_units=np.int32(dropout), length=np.int32(flat))


def _kernel_index(spec: cnn.LayerSpec, layout: ModelLayout, l: int, channels_last_padded: int,
                  first_dense: bool):
  """For the padded kernel of layer l: (valid [shape] bool, index into the model's own init
  draw, index into its snapshot vector), both meaningful where valid."""
  units = layout.units[l]
  if spec.kind == 'conv':
    big, _, c_pad, o_pad = spec.kernel_shape
    k, c = layout.taps[l], layout.rows[l]
    shift = (big - k) // 2
    a = jnp.arange(big)[:, None, None, None] - shift
    b = jnp.arange(big)[None, :, None, None] - shift
    i = jnp.arange(c_pad)[None, None, :, None]
    j = jnp.arange(o_pad)[None, None, None, :]
    valid = (a >= 0) & (a < k) & (b >= 0) & (b < k) & (i < c) & (j < units)
    draw = layout.draw[l] + ((a * k + b) * c + i) * units + j
    flat = layout.flat[l] + ((j * c + i) * k + a) * k + b
    return valid, draw, flat
  f_pad, u_pad = spec.kernel_shape
  r = jnp.arange(f_pad)[:, None]
  j = jnp.arange(u_pad)[None, :]
  if first_dense:
    # Features of the last conv block are (position, channel) with the channels fastest.
    channel = r % channels_last_padded
    row = (r // channels_last_padded) * layout.channels_last + channel
    row_valid = channel < layout.channels_last
  else:
    row, row_valid = r, r < layout.rows[l]
  valid = row_valid & (j < units)
  return valid, layout.draw[l] + row * units + j, layout.flat[l] + j * layout.rows[l] + row


def _kernel_indices(arch: cnn.Architecture, layout: ModelLayout):
  specs = cnn.layer_specs(arch)
  last_conv = [s for s in specs if s.kind == 'conv'][-1].units
  first_dense = next(i for i, s in enumerate(specs) if s.kind == 'dense')
  return [(spec, _kernel_index(spec, layout, l, last_conv, l == first_dense))
          for l, spec in enumerate(specs)]


def _unit_valid(spec: cnn.LayerSpec, layout: ModelLayout, l: int) -> jax.Array:
  return jnp.arange(spec.units) < layout.units[l]


def init(key: jax.Array, layout: ModelLayout, initialization: jax.Array,
         arch: cnn.Architecture) -> tuple[cnn.Params, cnn.Stats]:
  """`cnn.init` of the model that `layout` describes, padded to `arch` with zeros."""
  draw_length = sum(cnn.init_draw_sizes(cnn.layer_specs(arch)))
  u = jax.random.uniform(key, (draw_length,), jnp.float32, 1e-7, 1.0 - 1e-7)
  params, stats = {}, {}
  for l, (spec, (valid, draw, _)) in enumerate(_kernel_indices(arch, layout)):
    kernel = cnn.kernel_values(u[jnp.where(valid, draw, 0)], layout.limit[l],
                               layout.trunc_std[l], initialization)
    zeros = jnp.zeros((spec.units,), jnp.float32)
    layer = {'kernel': jnp.where(valid, kernel, 0.0), 'bias': zeros}
    if spec.batch_norm:
      unit_valid = _unit_valid(spec, layout, l)
      gamma_u = u[jnp.where(unit_valid, layout.gamma_draw[l] + jnp.arange(spec.units), 0)]
      layer['beta'] = zeros
      layer['gamma'] = jnp.where(
          unit_valid, 1.0 + cnn.BN_GAMMA_STD * cnn._std_normal(gamma_u), 0.0)
      stats[spec.name] = {'mean': zeros, 'var': jnp.ones((spec.units,), jnp.float32)}
    params[spec.name] = layer
  return params, stats


def param_masks(layout: ModelLayout, arch: cnn.Architecture) -> cnn.Params:
  """float32 1/0 masks in the shape of the padded params: 1 on the model's own weights."""
  masks = {}
  for l, (spec, (valid, _, _)) in enumerate(_kernel_indices(arch, layout)):
    unit = _unit_valid(spec, layout, l).astype(jnp.float32)
    masks[spec.name] = {'kernel': valid.astype(jnp.float32), 'bias': unit}
    if spec.batch_norm:
      masks[spec.name].update(beta=unit, gamma=unit)
  return masks


def dropout_keeps(key: jax.Array, layout: ModelLayout, arch: cnn.Architecture,
                  batch: int) -> list[jax.Array]:
  """The unpadded model's dropout masks (what `cnn.apply` draws from `key`), padded: bool
  [batch, padded units] per batch-normed dense layer, False on padded units."""
  specs = cnn.layer_specs(arch)
  dropped = [(l, s) for l, s in enumerate(specs) if s.kind == 'dense' and s.batch_norm]
  width = sum(s.units for _, s in dropped)
  u = jax.random.uniform(key, (batch * width,), jnp.float32)
  rows = jnp.arange(batch)[:, None] * layout.dropout_units
  keeps = []
  for l, spec in dropped:
    valid = _unit_valid(spec, layout, l)[None, :]
    index = rows + layout.dropout[l] + jnp.arange(spec.units)[None, :]
    keeps.append(valid & (u[jnp.where(valid, index, 0)] < cnn.DROPOUT_KEEP))
  return keeps


def apply(params: cnn.Params, stats: cnn.Stats, images: jax.Array, activation: jax.Array,
          layout: ModelLayout, *, arch: cnn.Architecture, train: bool,
          dropout_key: jax.Array | None = None, conv_impl: str = 'im2col', dropout: bool = True):
  """`cnn.apply` of a padded model with the unpadded model's dropout draw."""
  keeps = (dropout_keeps(dropout_key, layout, arch, images.shape[0]) if train and dropout
           else None)
  return cnn.apply(params, stats, images, activation, arch=arch, train=train,
                   conv_impl=conv_impl, keeps=keeps, dropout=dropout)


def flatten(params: cnn.Params, stats: cnn.Stats, layout: ModelLayout,
            arch: cnn.Architecture) -> jax.Array:
  """The model's snapshot vector in release order (PROTOCOL §4) at the front of a float32
  vector of the padded length sum(cnn.weight_counts(arch)); zeros after layout.length."""
  length = sum(cnn.weight_counts(arch))
  index, values = [], []
  for l, (spec, (valid, _, flat)) in enumerate(_kernel_indices(arch, layout)):
    layer = params[spec.name]
    index.append(jnp.where(valid, flat, length).ravel())
    values.append(layer['kernel'].ravel())
    parts = [layer['bias']]
    if spec.batch_norm:
      parts += [layer['beta'], layer['gamma'], stats[spec.name]['mean'], stats[spec.name]['var']]
    unit_valid = _unit_valid(spec, layout, l)
    for p, part in enumerate(parts):
      at = layout.flat_units[l] + p * layout.units[l] + jnp.arange(spec.units)
      index.append(jnp.where(unit_valid, at, length))
      values.append(part)
  out = jnp.zeros((length,), jnp.float32)
  return out.at[jnp.concatenate(index)].set(jnp.concatenate(values), mode='drop')


def check_random_draws() -> None:
  """Raises RuntimeError unless JAX draws random numbers position by position (partitionable
  threefry), which padded draws rely on to equal the unpadded model's."""
  if not jax.config.jax_threefry_partitionable:
    raise RuntimeError('padded packing needs jax_threefry_partitionable=True (the default '
                       'since JAX 0.5); unset JAX_THREEFRY_PARTITIONABLE or use --packing=exact')
