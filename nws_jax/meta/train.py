"""Training the meta-classifiers of every chosen property at once (PROTOCOL §5).

One meta-classifier per property; their parameters, batch statistics and Adam states are stacked
on a leading members axis [P, ...] and one jitted program trains them all: each step draws one
batch of random slices (shared by all members) and every member takes its own gradient step on
its own targets. A member's randomness (initialisation, dropout, class balancing) derives from
(seed, its property's PROTOCOL index, epoch, step) and the shared draws (order, slice offsets)
from (seed, epoch, step) only, so a property trained alone gets the same meta-classifier as inside
any stack (tested).

An epoch is one pass, in a fresh random order, over the meta-training (model, snapshot) pairs, in
ceil(pairs / batch_size) steps (the last batch wraps around); every sample gets a fresh random
slice position. Class balance (PROTOCOL §5, cut to the rarest class) is a per-property 0/1 weight
redrawn each epoch, since the members share their batches. After each epoch the members are scored
on fixed slices of the validation models and each keeps its best-scoring parameters.

Where the slices come from (source.py): a zoo's snapshots sit on the device and each epoch is one
jitted `lax.scan` that gathers its slices there; the release is read from disk, so the same
epoch plan (order, offsets, balance) is drawn on the device, the host reads each step's slices
and a jitted step trains on them. Both paths draw the same slices and take the same steps.

With several devices (sharding.py), `fit` splits the members over all of them: the member axis
is padded to a multiple of the device count with copies of the last member, each device runs
the programs above on its own members (`jax.shard_map`; members never communicate) with the
snapshots and training pairs whole on every device, and every result is cut back to the real
members before it leaves `fit`. On one device the programs are those above, unchanged.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pandas as pd

from nws_jax import sharding
from nws_jax.configs import meta as meta_config
from nws_jax.sharding import SPLIT, WHOLE
from nws_jax.meta import model as model_lib
from nws_jax.meta import slices as slices_lib
from nws_jax.meta import source as source_lib
from nws_jax.meta import split as split_lib
from nws_jax.meta import targets as targets_lib

MASKED_LOGIT = -1e30
EVAL_CHUNK = 256  # slices per evaluation call (the last chunk is padded, so one compile)


def eval_rows_per_call(spec: model_lib.ModelSpec) -> int:
  """Slices per evaluation call: EVAL_CHUNK, or with bn_eval='batch' the whole batches of
  spec.batch_size that fit in it (at least one)."""
  if spec.bn_eval == 'batch':
    return spec.batch_size * max(1, EVAL_CHUNK // spec.batch_size)
  return EVAL_CHUNK


# A run's configuration is declared (knob by knob, with flags and validation) in configs/meta.py.
MetaConfig = meta_config.MetaConfig


@dataclasses.dataclass
class MetaData:
  """A source prepared for meta-training; device arrays unless noted.

  layout: the snapshots on the device (a zoo), or None (a release, read through `reader`);
  reader: the host reader of the snapshots (`Snapshots` or `Release`); lo, hi: int32 [models],
  the part of each vector slices come from.
  labels: int32 [P, models]; values: float32 [P, models] (standardised regression targets).
  is_regression: bool [P]; num_classes: int32 [P]; codes: int32 [P] (PROTOCOL index).
  train_pairs: (model, 0-based snapshot) of the meta-training pairs, int32 [K] each, numpy.
  """
  layout: source_lib.DeviceLayout | None
  reader: Any
  lo: jax.Array
  hi: jax.Array
  labels: jax.Array
  values: jax.Array
  is_regression: jax.Array
  num_classes: jax.Array
  codes: jax.Array
  train_pairs: tuple[np.ndarray, np.ndarray]

  @property
  def snapshots(self):
    """Where slices are read from: the device layout, or the host reader."""
    return self.layout if self.layout is not None else self.reader


def eligible_models(table: pd.DataFrame, include_failed: bool) -> np.ndarray:
  """Row indices of the models a run may use: those not flagged failed (models.csv `failed`:
  test accuracy below zoo_builder.FAILED_BELOW, 0.15, or diverged), as the release left failed
  nets out; every model with include_failed, or when the table has no `failed` column (a
  release's nets: none of them failed)."""
  if not include_failed and 'failed' in table:
    return np.flatnonzero(~table['failed'].to_numpy(bool))
  return np.arange(len(table))


def model_spec(config: MetaConfig, targets: Sequence[targets_lib.PropertyTarget],
               table: pd.DataFrame) -> model_lib.ModelSpec:
  """The shared shapes. num_outputs is the most classes of any property that varies in the zoo
  (not only of those chosen), so a property's meta-classifier has the same shapes alone or in any
  stack."""
  counts = [table[n].nunique() for n in targets_lib.varying_properties(table)
            if n not in targets_lib.REGRESSION_PROPERTIES]
  num_outputs = max(counts + [t.num_classes for t in targets] + [1])
  return model_lib.ModelSpec(config.slice_length, config.conv_widths_used,
                             tuple(config.dense_widths), num_outputs, config.variant_used,
                             config.bn_eval, config.batch_size)


def prepare(config: MetaConfig, table: pd.DataFrame, snapshots, split: split_lib.ModelSplit,
            targets: Sequence[targets_lib.PropertyTarget]) -> MetaData:
  """Puts the targets and training pairs on the device, and the snapshots too when they are a
  zoo's (`Snapshots`, or a uniform [models, S, n] array); a `Release` stays on disk."""
  reader = source_lib.as_reader(snapshots)
  source_lib.check_lengths(table, reader)
  where = source_lib.placed(reader)
  lo, hi = slices_lib.part_bounds(table['weightn_conv'], table['weightn_fc'], config.part)
  labels, values = targets_lib.encode(table, targets)
  numbers = config.slice_spec.snapshot_numbers
  return MetaData(
      layout=where if isinstance(where, source_lib.DeviceLayout) else None, reader=reader,
      lo=jnp.asarray(lo), hi=jnp.asarray(hi),
      labels=jnp.asarray(labels), values=jnp.asarray(values),
      is_regression=jnp.asarray([t.is_regression for t in targets]),
      num_classes=jnp.asarray([t.num_classes for t in targets], jnp.int32),
      codes=jnp.asarray([t.code for t in targets], jnp.int32),
      train_pairs=slices_lib.pairs(split.train, numbers))


# --- keys -----------------------------------------------------------------------------------
# Shared draws: fold_in(seed key, tag); a member's: fold_in(fold_in(seed key, 1000 + code), tag).
_ORDER, _SLICES, _VALID = 1, 2, 3
_INIT, _BALANCE, _DROPOUT = 0, 1, 2


def seed_key_for(seed: int) -> jax.Array:
  """The key of a run's shared draws (epoch order, slice offsets, validation slices)."""
  return jax.random.key(seed)


def member_keys_for(seed: int, codes: jax.Array) -> jax.Array:
  """Keys [P] of the meta-classifiers of the properties with PROTOCOL indices `codes` [P]."""
  base = seed_key_for(seed)
  return jax.vmap(lambda c: jax.random.fold_in(base, 1000 + c))(codes)


def _fold(keys: jax.Array, *data) -> jax.Array:
  for d in data:
    keys = jax.vmap(lambda k, d=d: jax.random.fold_in(k, d))(keys)
  return keys


# --- one member -------------------------------------------------------------------------------

def per_sample_loss(outputs: jax.Array, label: jax.Array, value: jax.Array, is_regression,
                    num_classes) -> jax.Array:
  """[B]: cross-entropy over the first num_classes logits, or L1 error of output 0."""
  usable = jnp.arange(outputs.shape[-1]) < num_classes
  logits = jnp.where(usable, outputs, MASKED_LOGIT)
  ce = jax.nn.logsumexp(logits, axis=-1) - jnp.take_along_axis(logits, label[:, None], -1)[:, 0]
  l1 = jnp.abs(outputs[:, 0] - value)
  return jnp.where(is_regression, l1, ce)


def predictions(outputs: jax.Array, is_regression, num_classes) -> tuple[jax.Array, jax.Array]:
  """(class probabilities [..., O] with unused classes at 0, regressed value [...])."""
  usable = jnp.arange(outputs.shape[-1]) < num_classes
  probs = jax.nn.softmax(jnp.where(usable, outputs, MASKED_LOGIT), axis=-1)
  return jnp.where(is_regression, 0.0, probs), outputs[..., 0]


def _init_member(key: jax.Array, spec: model_lib.ModelSpec, tx) -> dict:
  variables = spec.module().init(jax.random.fold_in(key, _INIT),
                                 jnp.zeros((1, spec.slice_length)), train=False)
  params, stats = variables['params'], variables['batch_stats']
  return dict(params=params, batch_stats=stats, opt_state=tx.init(params),
              best_params=params, best_stats=stats, best_score=jnp.float32(-jnp.inf))


def _member_step(state: dict, slices, label, value, weight, is_regression, num_classes,
                 dropout_key, *, spec: model_lib.ModelSpec, tx) -> tuple[dict, jax.Array]:
  module = spec.module()

  def loss_fn(params):
    outputs, new_vars = module.apply({'params': params, 'batch_stats': state['batch_stats']},
                                     slices, train=True, rngs={'dropout': dropout_key},
                                     mutable=['batch_stats'])
    losses = per_sample_loss(outputs, label, value, is_regression, num_classes)
    loss = jnp.sum(weight * losses) / jnp.maximum(jnp.sum(weight), 1.0)
    return loss, new_vars['batch_stats']

  (loss, stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(state['params'])
  updates, opt_state = tx.update(grads, state['opt_state'], state['params'])
  params = optax.apply_updates(state['params'], updates)
  return dict(state, params=params, batch_stats=stats, opt_state=opt_state), loss


# --- the stacked programs ---------------------------------------------------------------------

def _optimizer(learning_rate: float):
  # PROTOCOL §5: Adam at 1e-3; the reference's ×0.95 decay is never advanced, so constant.
  return optax.adam(learning_rate)


@functools.partial(jax.jit, static_argnames=('spec', 'learning_rate'))
def init_members(member_keys: jax.Array, *, spec: model_lib.ModelSpec,
                 learning_rate: float) -> dict:
  """The stacked state of P fresh meta-classifiers, one per key [P]."""
  tx = _optimizer(learning_rate)
  return jax.vmap(lambda k: _init_member(k, spec, tx))(member_keys)


def _epoch_plan(epoch, seed_key, member_keys, labels, is_regression, lo, hi, train_models,
                train_snaps, *, batch_size: int, length: int, num_outputs: int):
  """What an epoch draws: per step t and sample b the pair's position in the epoch's order,
  its model, 0-based snapshot and slice start (a dict of int32 [T, B]); each member's 0/1
  class-balance weight per position [P, K] (1 for regression); each member's dropout key [P]."""
  num_pairs = train_models.shape[0]
  num_steps = -(-num_pairs // batch_size)
  order = jax.random.permutation(jax.random.fold_in(jax.random.fold_in(seed_key, _ORDER), epoch),
                                 num_pairs)
  slice_key = jax.random.fold_in(jax.random.fold_in(seed_key, _SLICES), epoch)
  epoch_keys = _fold(member_keys, epoch)
  balance = jax.vmap(slices_lib.balance_mask, in_axes=(0, 0, None))(
      _fold(epoch_keys, _BALANCE), labels[:, train_models[order]], num_outputs)
  weights = jnp.where(is_regression[:, None], 1.0, balance)
  steps = jnp.arange(num_steps)
  positions = (steps[:, None] * batch_size + jnp.arange(batch_size)[None, :]) % num_pairs
  models, snaps = train_models[order[positions]], train_snaps[order[positions]]
  offsets = jax.vmap(lambda i, m: slices_lib.random_offsets(
      jax.random.fold_in(slice_key, i), lo[m], hi[m], length))(steps, models)
  plan = dict(positions=positions, models=models, snaps=snaps, offsets=offsets)
  return plan, weights, _fold(epoch_keys, _DROPOUT)


def _stacked_step(state, batch, i, models, positions, labels, values, weights, is_regression,
                  num_classes, dropout_keys, *, spec: model_lib.ModelSpec, tx):
  """Step i of every member on one shared batch of slices [B, L]."""
  step_fn = jax.vmap(functools.partial(_member_step, spec=spec, tx=tx),
                     in_axes=(0, None, 0, 0, 0, 0, 0, 0))
  return step_fn(state, batch, labels[:, models], values[:, models], weights[:, positions],
                 is_regression, num_classes, _fold(dropout_keys, i))


@functools.partial(jax.jit, static_argnames=('spec', 'learning_rate', 'batch_size'),
                   donate_argnums=0)
def train_epoch(state: dict, epoch: jax.Array, seed_key: jax.Array, member_keys: jax.Array,
                layout: source_lib.DeviceLayout, lo, hi, labels, values, is_regression,
                num_classes, train_models, train_snaps, *, spec: model_lib.ModelSpec,
                learning_rate: float, batch_size: int) -> tuple[dict, jax.Array]:
  """One epoch of every member, slices gathered from `layout` on the device. Returns the new
  state and each member's mean loss [P]."""
  tx = _optimizer(learning_rate)
  plan, weights, dropout_keys = _epoch_plan(
      epoch, seed_key, member_keys, labels, is_regression, lo, hi, train_models, train_snaps,
      batch_size=batch_size, length=spec.slice_length, num_outputs=spec.num_outputs)

  def step(state, xs):
    i, p = xs
    batch = layout.gather(p['models'], p['snaps'], p['offsets'], spec.slice_length)
    return _stacked_step(state, batch, i, p['models'], p['positions'], labels, values, weights,
                         is_regression, num_classes, dropout_keys, spec=spec, tx=tx)

  steps = jnp.arange(plan['models'].shape[0])
  state, losses = jax.lax.scan(step, state, (steps, plan))
  return state, losses.mean(axis=0)


epoch_plan = jax.jit(_epoch_plan, static_argnames=('batch_size', 'length', 'num_outputs'))


@functools.partial(jax.jit, static_argnames=('spec', 'learning_rate'), donate_argnums=0)
def train_step(state: dict, batch: jax.Array, i: jax.Array, models, positions, labels, values,
               weights, is_regression, num_classes, dropout_keys, *,
               spec: model_lib.ModelSpec, learning_rate: float) -> tuple[dict, jax.Array]:
  """Step i of an epoch planned by `epoch_plan`, on slices [B, L] read by the host."""
  return _stacked_step(state, batch, i, models, positions, labels, values, weights,
                       is_regression, num_classes, dropout_keys, spec=spec,
                       tx=_optimizer(learning_rate))


# --- the members split over devices -----------------------------------------------------------

@functools.lru_cache(maxsize=None)
def _on_members(program, mesh, in_specs: tuple, out_specs, donate: tuple[int, ...] = (),
                **static):
  """`program` (one of the jitted programs here, given its static arguments `static`) run by
  every device of `mesh` on its own members: in_specs, one per argument, `SPLIT` by members
  (leading axis) or `WHOLE` on every device; out_specs likewise, per output. The
  members never communicate, so shard_map needs no collective. On one device (or mesh None),
  the program itself, as it always ran."""
  bound = functools.partial(program, **static)
  if mesh is None or mesh.size == 1:
    return bound
  return sharding.compile_per_device(bound, mesh, in_specs, out_specs, donate)


def _members_mesh(tree):
  """The mesh whose devices hold `tree`'s members (every leaf split by its leading axis over a
  one-axis models mesh of several devices, as `fit` places them), or None."""
  s = getattr(jax.tree.leaves(tree)[0], 'sharding', None)
  if (isinstance(s, jax.sharding.NamedSharding) and s.mesh.size > 1
      and tuple(s.mesh.axis_names) == (sharding.MODELS,) and len(s.spec)
      and s.spec[0] == sharding.MODELS):
    return s.mesh
  return None


def split_members(data: MetaData, mesh) -> MetaData:
  """`data` placed on `mesh`: its per-member arrays (labels, values, is_regression, num_classes,
  codes) padded to a multiple of the device count with copies of the last member and split
  over the devices, the shared ones (snapshot layout, lo, hi) whole on every device. On one
  device, `data` as it is."""
  if mesh.size == 1:
    return data
  p = data.labels.shape[0]
  index = np.minimum(np.arange(sharding.round_up(p, mesh)), p - 1)
  members = {k: sharding.put_models(np.asarray(getattr(data, k))[index], mesh)
             for k in ('labels', 'values', 'is_regression', 'num_classes', 'codes')}
  shared = {k: sharding.put_replicated(getattr(data, k), mesh) for k in ('layout', 'lo', 'hi')}
  return dataclasses.replace(data, **members, **shared)


def train_epoch_from_host(state: dict, epoch: int, seed_key: jax.Array, member_keys: jax.Array,
                          data: MetaData, train_models: jax.Array, train_snaps: jax.Array, *,
                          spec: model_lib.ModelSpec, learning_rate: float,
                          batch_size: int, mesh=None) -> tuple[dict, jax.Array]:
  """`train_epoch` for slices read on the host by `data.reader` (a Release): the device plans
  the epoch, the host reads each step's slices while the device runs the step before (dispatch
  is asynchronous), and one jitted step trains on them. train_models, train_snaps: the
  meta-training pairs on the device, int32 [K] each. mesh: the devices the members are split
  over (`split_members`), or None (one device)."""
  plan, weights, dropout_keys = _on_members(
      epoch_plan, mesh,
      # epoch, seed_key, member_keys, labels, is_regression, lo, hi, train_models, train_snaps
      (WHOLE, WHOLE, SPLIT, SPLIT, SPLIT, WHOLE, WHOLE, WHOLE, WHOLE),
      (WHOLE, SPLIT, SPLIT),  # plan, weights, dropout_keys
      batch_size=batch_size,
      length=spec.slice_length, num_outputs=spec.num_outputs)(
          jnp.int32(epoch), seed_key, member_keys, data.labels, data.is_regression, data.lo,
          data.hi, train_models, train_snaps)
  host = jax.device_get(plan)
  step = _on_members(
      train_step, mesh,
      # state, batch, i, models, positions, labels, values, weights, is_regression, num_classes,
      # dropout_keys
      (SPLIT, WHOLE, WHOLE, WHOLE, WHOLE, SPLIT, SPLIT, SPLIT, SPLIT, SPLIT, SPLIT),
      (SPLIT, SPLIT), (0,), spec=spec,
                     learning_rate=learning_rate)
  losses = []
  for i in range(host['models'].shape[0]):
    batch = data.reader.read(host['models'][i], host['snaps'][i], host['offsets'][i],
                             spec.slice_length)
    state, loss = step(state, batch, jnp.int32(i), host['models'][i], host['positions'][i],
                       data.labels, data.values, weights, data.is_regression, data.num_classes,
                       dropout_keys)
    losses.append(loss)
  return state, jnp.stack(losses).mean(axis=0)


@functools.partial(jax.jit, static_argnames=('spec',))
def _outputs_of(params, stats, batch, *, spec: model_lib.ModelSpec):
  """[P, R, O] for slices [R, L]; with bn_eval='batch' each block of spec.batch_size rows is
  normalised by its own statistics (R a multiple of it)."""
  module = spec.module()
  apply = lambda p, s, x: module.apply({'params': p, 'batch_stats': s}, x, train=False)
  if spec.bn_eval == 'batch':
    blocks = batch.reshape(-1, spec.batch_size, batch.shape[-1])
    run = lambda p, s: jax.vmap(lambda x: apply(p, s, x))(blocks).reshape(
        batch.shape[0], spec.num_outputs)
  else:
    run = lambda p, s: apply(p, s, batch)
  return jax.vmap(run)(params, stats)


@functools.partial(jax.jit, static_argnames=('spec',))
def _outputs(params, stats, layout, models, snaps, offsets, *, spec: model_lib.ModelSpec):
  return _outputs_of(params, stats, layout.gather(models, snaps, offsets, spec.slice_length),
                     spec=spec)


def eval_rows(n: int, spec: model_lib.ModelSpec) -> np.ndarray:
  """The request rows evaluated, in order, for a request of n slices: 0 … n-1, and with
  bn_eval='batch' the last partial batch completed by wrapping to the request's start (rows
  0, 1, …, as the original's np.mod indexing), to a multiple of spec.batch_size."""
  if spec.bn_eval == 'batch' and n:
    return np.arange(-(-n // spec.batch_size) * spec.batch_size) % n
  return np.arange(n)


def outputs_at(params, stats, spec: model_lib.ModelSpec, snapshots, models: np.ndarray,
               snaps: np.ndarray, offsets: np.ndarray) -> np.ndarray:
  """Raw outputs [P, N, num_outputs] (numpy) of the stacked members in inference mode (dropout
  off) for the slices at (model, 0-based snapshot, offset) triples [N].

  Batch norm as spec.bn_eval says. 'moving' (running averages): a slice's outputs depend on it
  alone. 'batch' (the original's, its default): each batch is normalised by its own statistics,
  so a slice's outputs depend on the slices that share its batch. The batches are consecutive
  blocks of exactly spec.batch_size (the run's batch_size) rows in the order given: rows [0, B),
  [B, 2B), …; a last partial block is completed with rows 0, 1, … of the same request (wrapping
  around, as the original's np.mod indexing) whose extra outputs are dropped. So a caller
  decides what a batch holds by ordering its request: e.g. the per-net score of the original
  (64 evenly spaced slices of one net, one batch) is a request that puts each net's 64 slices
  in one aligned block of 64 rows (with batch_size 64).

  snapshots: a DeviceLayout, or a host reader (`Release`, `Snapshots`) whose slices are read on
  the host. Members split over several devices (as `fit` holds them) are run there, each
  device on its own members. Several batches go in one call (`eval_rows_per_call`; the last
  call is padded, so one compile)."""
  n = len(models)
  mesh = _members_mesh(params)
  if mesh is not None and isinstance(snapshots, source_lib.DeviceLayout):
    snapshots = sharding.put_replicated(snapshots, mesh)  # a no-op where it already is
  # params, stats, layout, models, snaps, offsets
  from_layout = _on_members(_outputs, mesh, (SPLIT, SPLIT, WHOLE, WHOLE, WHOLE, WHOLE), SPLIT,
                            spec=spec)
  from_batch = _on_members(_outputs_of, mesh, (SPLIT, SPLIT, WHOLE), SPLIT, spec=spec)
  rows, per_call = eval_rows(n, spec), eval_rows_per_call(spec)
  models, snaps, offsets = (np.asarray(a, np.int32) for a in (models, snaps, offsets))
  chunks = []
  for start in range(0, len(rows), per_call):
    part = rows[start:start + per_call]
    # Padding rows (copies of the last; whole batches in 'batch' mode): outputs dropped.
    take = lambda a: np.pad(a[part], (0, per_call - len(part)), mode='edge')
    if isinstance(snapshots, source_lib.DeviceLayout):
      out = from_layout(params, stats, snapshots, take(models), take(snaps), take(offsets))
    else:
      batch = snapshots.read(take(models), take(snaps), take(offsets), spec.slice_length)
      out = from_batch(params, stats, jnp.asarray(batch))
    chunks.append(sharding.to_host(out)[:, :len(part)])
  if not chunks:
    return np.zeros((len(jax.tree.leaves(params)[0]), 0, spec.num_outputs), np.float32)
  return np.concatenate(chunks, axis=1)[:, :n]


def scores(outputs: np.ndarray, labels: np.ndarray, values: np.ndarray,
           targets: Sequence[targets_lib.PropertyTarget]) -> np.ndarray:
  """Per member [P]: accuracy (classification) or minus the mean absolute error in standardised
  units (regression): higher is better. outputs [P, N, O]; labels, values [P, N]."""
  return np.array([
      -targets_lib.score(t, t.predict(outputs[p], standardised=True), values[p])
      if t.is_regression else targets_lib.score(t, t.predict(outputs[p]), labels[p])
      for p, t in enumerate(targets)])


@jax.jit
def _keep_best(state: dict, new_scores: jax.Array) -> dict:
  better = new_scores > state['best_score']
  pick = lambda new, old: jax.vmap(jnp.where)(better, new, old)
  return dict(state, best_params=jax.tree.map(pick, state['params'], state['best_params']),
              best_stats=jax.tree.map(pick, state['batch_stats'], state['best_stats']),
              best_score=jnp.where(better, new_scores, state['best_score']))


@dataclasses.dataclass
class MetaRun:
  """A trained stack: config, what each member predicts, the split, and the kept parameters.

  params / batch_stats: pytrees with a leading [P] axis (the best-on-validation ones, or the last
  when there are no validation models). history: one row per epoch and property.
  """
  config: MetaConfig
  targets: list[targets_lib.PropertyTarget]
  split: split_lib.ModelSplit
  spec: model_lib.ModelSpec
  params: Any
  batch_stats: Any
  history: pd.DataFrame


def fit(config: MetaConfig, table: pd.DataFrame, snapshots,
        split: split_lib.ModelSplit, targets: Sequence[targets_lib.PropertyTarget], *,
        progress: bool = False, mesh: jax.sharding.Mesh | None = None) -> MetaRun:
  """Trains one meta-classifier per target, all in one program, and keeps each one's best.

  snapshots: `Snapshots` or [models, S, n] (held on the device), or a `Release` (read from disk).
  mesh: the devices the members are split over (default: all, `sharding.model_mesh`); the run
  returned holds the real members only, on one device, whatever the mesh.
  """
  mesh = sharding.model_mesh() if mesh is None else mesh
  spec = model_spec(config, targets, table)
  data = prepare(config, table, snapshots, split, targets)
  num = len(targets)
  labels_np, values_np = np.asarray(data.labels), np.asarray(data.values)
  data = split_members(data, mesh)  # on one device, as it is
  padded = np.minimum(np.arange(sharding.round_up(num, mesh)), num - 1)  # member of each slot
  seed_key = seed_key_for(config.seed)
  member_keys = member_keys_for(config.seed, data.codes)
  state = _on_members(init_members, mesh, (SPLIT,), SPLIT, spec=spec,
                      learning_rate=config.learning_rate)(member_keys)

  valid_models, valid_snaps, valid_offsets = slices_lib.random_triples(
      np.random.default_rng([config.seed, _VALID]), split.valid,
      config.slice_spec.snapshot_numbers, np.asarray(data.lo), np.asarray(data.hi),
      spec.slice_length, config.valid_slices)
  # In a shuffled order, so that with bn_eval='batch' a validation batch mixes many snapshots
  # (as the original's shuffled validation batches did), not one model's few (pair-major).
  mix = np.random.default_rng([config.seed, _VALID, 1]).permutation(len(valid_models))
  valid_models, valid_snaps, valid_offsets = (a[mix] for a in (valid_models, valid_snaps,
                                                                valid_offsets))

  train_models, train_snaps = (jnp.asarray(a) for a in data.train_pairs)
  if mesh.size > 1:
    train_models, train_snaps = sharding.put_replicated((train_models, train_snaps), mesh)
  epoch_program = _on_members(
      train_epoch, mesh,
      # state, epoch, seed_key, member_keys, layout, lo, hi, labels, values, is_regression,
      # num_classes, train_models, train_snaps
      (SPLIT, WHOLE, WHOLE, SPLIT, WHOLE, WHOLE, WHOLE, SPLIT, SPLIT, SPLIT, SPLIT, WHOLE, WHOLE),
      (SPLIT, SPLIT), (0,), spec=spec, learning_rate=config.learning_rate,
      batch_size=config.batch_size)
  keep_best = _on_members(_keep_best, mesh, (SPLIT, SPLIT), SPLIT)
  rows = []
  epochs = range(config.epochs)
  bar = None
  if progress:
    import tqdm
    bar = tqdm.tqdm(total=config.epochs, desc='meta-classifiers', unit='epoch')
  for epoch in epochs:
    if data.layout is not None:
      state, losses = epoch_program(
          state, jnp.int32(epoch), seed_key, member_keys, data.layout, data.lo, data.hi,
          data.labels, data.values, data.is_regression, data.num_classes, train_models,
          train_snaps)
    else:
      state, losses = train_epoch_from_host(
          state, epoch, seed_key, member_keys, data, train_models, train_snaps, spec=spec,
          learning_rate=config.learning_rate, batch_size=config.batch_size, mesh=mesh)
    if len(valid_models):
      out = outputs_at(state['params'], state['batch_stats'], spec, data.snapshots, valid_models,
                       valid_snaps, valid_offsets)
      epoch_scores = scores(out, labels_np[:, valid_models], values_np[:, valid_models], targets)
    else:
      epoch_scores = np.full(len(targets), float(epoch))  # no validation: keep the last
    if mesh.size > 1:  # the padding slots copy their member's score (their outputs are unused)
      state = keep_best(state, sharding.put_models(
          np.asarray(epoch_scores, np.float32)[padded], mesh))
    else:
      state = keep_best(state, jnp.asarray(epoch_scores, jnp.float32))
    losses = sharding.to_host(losses)[:num]
    for p, t in enumerate(targets):
      rows.append(dict(epoch=epoch + 1, property=t.name, train_loss=float(losses[p]),
                       valid_score=float(epoch_scores[p]) if len(valid_models) else np.nan))
    if bar is not None:
      acc = [s for s, t in zip(epoch_scores, targets) if not t.is_regression]
      bar.set_postfix(loss=f'{losses.mean():.3f}',
                      valid_acc=f'{np.mean(acc):.3f}' if acc and len(valid_models) else 'n/a')
      bar.update()
  if bar is not None:
    bar.close()
  best = state['best_params'], state['best_stats']
  if mesh.size > 1:  # the real members, on one device: what a one-device run returns
    best = jax.tree.map(lambda x: jnp.asarray(sharding.to_host(x)[:num]), best)
  return MetaRun(config, list(targets), split, spec, *best, pd.DataFrame(rows))
