"""Where a zoo's arrays live: the models axis split over a mesh of every device, data replicated.

A zoo's models are independent, so the trainer shards every per-model array (training state,
hyper-parameters, masks) along its leading models axis over a one-axis `Mesh` of all devices
(`MODELS`), replicates the datasets, and runs each training program under `jax.shard_map`: a
device trains its own slots with no communication. Slot counts are rounded up to a multiple of
the device count; on the CPU a process's devices run their programs one at a time (`InTurn`).
With several processes (`jax.distributed`), the mesh spans every process's devices; arrays are
built from host values that every process holds in full, and results come back to every process
in full (`to_host`), so that each makes the same scheduling decisions.
"""

from __future__ import annotations

import jax
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from nws_jax.zoo import schedule as schedule_lib

MODELS = 'models'
# How a program's argument or output is laid out over the mesh (trees of these, one per argument
# or output, are what `per_device` and `compile_per_device` take, as `jax.shard_map` does):
SPLIT = PartitionSpec(MODELS)  # the leading (models) axis split over the devices
WHOLE = PartitionSpec()        # the whole value on every device


def _is_spec(x) -> bool:
  return isinstance(x, PartitionSpec)


def model_mesh(devices=None) -> Mesh:
  """A one-axis mesh ('models') over `devices` (default: every device of every process)."""
  devices = jax.devices() if devices is None else list(devices)
  return Mesh(np.asarray(devices), (MODELS,))


def round_up(n: int, mesh: Mesh, chunk: int = 1) -> int:
  """The smallest multiple of (the mesh's device count × chunk) that is at least n, and at least
  one such multiple."""
  return schedule_lib.round_up(n, mesh.size, chunk)


def model_sharding(mesh: Mesh) -> jax.sharding.Sharding:
  """Leading axis split over the mesh, the rest whole."""
  return NamedSharding(mesh, SPLIT)


def replicated(mesh: Mesh) -> jax.sharding.Sharding:
  return NamedSharding(mesh, WHOLE)


def per_device(fn, mesh: Mesh | None, in_specs: tuple, out_specs):
  """fn run by every device of `mesh` on its own shards, with no communication: in_specs has one
  spec per argument, `SPLIT` (leading axis split by models) or `WHOLE` (on every device);
  out_specs likewise, a spec or a tree of specs for the output. Every mesh goes through
  `shard_map`, though on one device JAX lowers it without partitioning (docs/scale-out.md).
  mesh None: fn itself."""
  if mesh is None:
    return fn
  return jax.shard_map(fn, mesh=mesh, in_specs=tuple(in_specs), out_specs=out_specs,
                       check_vma=False)


# XLA:CPU gives a program other bits when programs of other devices of the process run at the
# same time (measured: docs/scale-out.md, "Same zoo on any device count"; the fault does not need
# shard_map, and one device at a time it does not occur). Host devices share the same cores, so
# running them in turn costs little.
IN_TURN_PLATFORMS = frozenset({'cpu'})


def compile_per_device(fn, mesh: Mesh | None, in_specs: tuple, out_specs,
                       donate: tuple[int, ...] = ()):
  """`jax.jit` of `per_device(fn, mesh, in_specs, out_specs)`, donating `donate`; on a platform
  of IN_TURN_PLATFORMS with several devices in this process, an `InTurn` that gives the same
  results, one device at a time."""
  if (mesh is not None and mesh.devices.flat[0].platform in IN_TURN_PLATFORMS
      and len(_local_devices(mesh)) > 1):
    return InTurn(fn, mesh, in_specs, out_specs, donate)
  return jax.jit(per_device(fn, mesh, in_specs, out_specs), donate_argnums=donate)


def _local_devices(mesh: Mesh) -> list:
  """The mesh's devices that belong to this process, in mesh order."""
  return [d for d in mesh.devices.flat if d.process_index == jax.process_index()]


class InTurn:
  """`fn` run for each device of this process on its own shards, one device after the other,
  each run finished before the next starts; called (and lowered) like the jitted shard_map
  program it replaces, on the same global arrays.

  Every run uses one program, compiled for a 1-device mesh of the process's first device (the
  program a 1-device zoo runs): a device's `SPLIT` shards are copied there and its results
  copied back. `WHOLE` arguments are read from that first device; `WHOLE` outputs come from its
  run (shard_map likewise assumes they agree).
  """

  def __init__(self, fn, mesh: Mesh, in_specs: tuple, out_specs, donate: tuple[int, ...] = ()):
    self.mesh, self.out_specs, self.donate = mesh, out_specs, donate
    self.in_specs = tuple(in_specs)
    self.devices = _local_devices(mesh)
    self.one = model_mesh(self.devices[:1])
    self.program = jax.jit(per_device(fn, self.one, in_specs, out_specs), donate_argnums=donate)

  def _part(self, x, spec: PartitionSpec, device):
    """The piece of argument leaf x that `device` runs on, placed as a 1-device zoo places it."""
    if spec == WHOLE:
      if not isinstance(x, jax.Array):
        return x
      pieces = [s.data for s in x.addressable_shards if s.device == self.devices[0]]
      return jax.device_put(pieces[0] if pieces else x, replicated(self.one))
    if isinstance(x, jax.Array):
      if not x.sharding.is_equivalent_to(model_sharding(self.mesh), x.ndim):
        x = jax.device_put(x, model_sharding(self.mesh))
      (piece,) = [s.data for s in x.addressable_shards if s.device == device]
    else:
      position = list(self.mesh.devices.flat).index(device)
      piece = np.split(np.asarray(x), self.mesh.size)[position]
    return jax.device_put(piece, model_sharding(self.one))

  def _args(self, args, device):
    if len(args) != len(self.in_specs):
      raise TypeError(f'expected {len(self.in_specs)} arguments, got {len(args)}')
    return [jax.tree.map(lambda x, s=s: self._part(x, s, device), a)
            for a, s in zip(args, self.in_specs)]

  def _gather(self, spec: PartitionSpec, *outs):
    """One global array from the leaf's result on each device (outs in self.devices order)."""
    if spec == WHOLE:
      arrays = [jax.device_put(outs[0], d) for d in self.devices]
      return jax.make_array_from_single_device_arrays(outs[0].shape, replicated(self.mesh),
                                                      arrays)
    arrays = [jax.device_put(o, d) for o, d in zip(outs, self.devices)]
    shape = (outs[0].shape[0] * self.mesh.size,) + outs[0].shape[1:]
    return jax.make_array_from_single_device_arrays(shape, model_sharding(self.mesh), arrays)

  def __call__(self, *args):
    # Every device's pieces first: running device 0's program on donated arguments deletes the
    # global arrays they are shards of.
    pieces = [self._args(args, device) for device in self.devices]
    results = [jax.block_until_ready(self.program(*p)) for p in pieces]
    for i in self.donate:  # As under jit, a donated argument is gone.
      for x in jax.tree.leaves(args[i]):
        if isinstance(x, jax.Array) and not x.is_deleted():
          x.delete()
    return jax.tree.map(
        lambda spec, *subtrees: jax.tree.map(lambda *leaves: self._gather(spec, *leaves),
                                             *subtrees),
        self.out_specs, *results, is_leaf=_is_spec)

  def lower(self, *args):
    """The program each device runs, lowered for these arguments (arrays or
    `ShapeDtypeStruct`s placed as for the mesh-wide program)."""

    def abstract(x, spec):
      if spec == WHOLE and not isinstance(x, (jax.Array, jax.ShapeDtypeStruct)):
        return x
      shape = tuple(x.shape)
      if spec == SPLIT:
        shape = (shape[0] // self.mesh.size,) + shape[1:]
      place = model_sharding(self.one) if spec == SPLIT else replicated(self.one)
      return jax.ShapeDtypeStruct(shape, x.dtype, sharding=place)

    return self.program.lower(*[jax.tree.map(lambda x, s=s: abstract(x, s), a)
                                for a, s in zip(args, self.in_specs)])


def _put(x, sharding: jax.sharding.Sharding) -> jax.Array:
  if isinstance(x, jax.Array) and x.is_fully_addressable and jax.process_count() == 1:
    return jax.device_put(x, sharding)
  host = np.asarray(x)  # Every process holds the whole value: each takes its shards.
  return jax.make_array_from_callback(host.shape, sharding, lambda index: host[index])


def put_models(tree, mesh: Mesh):
  """Every leaf (leading axis a multiple of the device count) split over the mesh by models."""
  sharding = model_sharding(mesh)
  return jax.tree.map(lambda x: _put(x, sharding), tree)


def put_replicated(tree, mesh: Mesh):
  """Every leaf whole on every device of the mesh."""
  sharding = replicated(mesh)
  return jax.tree.map(lambda x: _put(x, sharding), tree)


def to_host(x) -> np.ndarray:
  """The whole value of a (possibly sharded, possibly multi-process) array, in every process."""
  if not isinstance(x, jax.Array) or x.is_fully_addressable:
    return np.asarray(x)
  return np.asarray(multihost_utils.process_allgather(x, tiled=True))


def abstract_models(shape, dtype, mesh: Mesh) -> jax.ShapeDtypeStruct:
  """A stand-in for a models-sharded array, for lowering a program before its inputs exist."""
  return jax.ShapeDtypeStruct(shape, dtype, sharding=model_sharding(mesh))
