"""Where a zoo's arrays live: the models axis split over a mesh of every device, data replicated.

A zoo's models are independent, so the trainer shards every per-model array (training state,
hyper-parameters, masks) along its leading models axis over a one-axis `Mesh` of all devices
(`MODELS`), replicates the datasets, and runs each training program under `jax.shard_map`: a
device trains its own slots with no communication. Slot counts are rounded up to a multiple of
the device count. With several processes (`jax.distributed`), the mesh spans every process's
devices; arrays are built from host values that every process holds in full, and results come
back to every process in full (`to_host`), so that each makes the same scheduling decisions.
"""

from __future__ import annotations

import jax
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec

MODELS = 'models'


def model_mesh(devices=None) -> Mesh:
  """A one-axis mesh ('models') over `devices` (default: every device of every process)."""
  devices = jax.devices() if devices is None else list(devices)
  return Mesh(np.asarray(devices), (MODELS,))


def reproducibility_caveat(platform: str, local_devices: int, architecture: str) -> str | None:
  """Why a zoo with these settings may not come out bit for bit the same, or None.

  Measured (docs/scale-out.md, "Same zoo on any device count"): on the CPU, a random-architecture
  zoo trained on several devices of one process can differ from the same zoo on one device, and
  on 4 devices from run to run, because of how XLA:CPU runs programs when more than one device
  of a process is in use; not seen with the fixed architecture (measured on 1, 2, 4 and 8
  devices)."""
  if platform == 'cpu' and local_devices > 1 and architecture == 'random':
    return (f'a random-architecture zoo on {local_devices} CPU devices of one process may not be '
            'bit-for-bit reproducible (XLA:CPU, docs/scale-out.md); on one device it is')
  return None


def round_up(n: int, mesh: Mesh, chunk: int = 1) -> int:
  """The smallest multiple of (the mesh's device count × chunk) that is at least n, and at least
  one such multiple."""
  size = mesh.size * chunk
  return max(1, -(-n // size)) * size


def model_sharding(mesh: Mesh) -> jax.sharding.Sharding:
  """Leading axis split over the mesh, the rest whole."""
  return NamedSharding(mesh, PartitionSpec(MODELS))


def replicated(mesh: Mesh) -> jax.sharding.Sharding:
  return NamedSharding(mesh, PartitionSpec())


def per_device(fn, mesh: Mesh | None, in_specs: str, out_specs):
  """fn run by every device of `mesh` on its own shards, with no communication: in_specs has one
  letter per argument, 'M' split by models (leading axis) or 'R' whole on every device;
  out_specs likewise, a letter or a tree of letters per output. Every mesh goes through
  `shard_map`, though on one device JAX lowers it without partitioning (docs/scale-out.md).
  mesh None: fn itself."""
  if mesh is None:
    return fn
  spec = {'M': PartitionSpec(MODELS), 'R': PartitionSpec()}
  return jax.shard_map(fn, mesh=mesh, in_specs=tuple(spec[s] for s in in_specs),
                       out_specs=jax.tree.map(spec.get, out_specs), check_vma=False)


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
