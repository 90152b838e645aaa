"""`sharding.compile_per_device` on 4 virtual CPU devices: the in-turn runner (`InTurn`) gives
what the shard_map program gives, as global arrays split (or replicated) over the mesh, with
donation and lowering as the jitted program has them, and runs one device at a time.

The checks run in a subprocess (this file run as a script) whose XLA:CPU has 4 devices.
"""

import os
import subprocess
import sys

DEVICES = 4


def _checks() -> None:
  import threading
  import time

  import jax
  import jax.numpy as jnp
  import numpy as np
  from nws_jax import sharding

  assert jax.device_count() == DEVICES
  mesh = sharding.model_mesh()
  SPECS = (sharding.SPLIT, sharding.SPLIT, sharding.WHOLE)  # state, scale, offset
  OUT_SPECS = (sharding.SPLIT, sharding.WHOLE)  # new state, total
  spans, lock = [], threading.Lock()

  def record(x):
    t0 = time.monotonic()
    time.sleep(0.05)
    with lock:
      spans.append((t0, time.monotonic()))
    return x

  def fn(state, scale, offset):
    """state {'w': [n, 3]}, scale [n], offset [] -> ({'w'}, total [] over this device's rows)."""
    w = jax.pure_callback(record, jax.ShapeDtypeStruct(state['w'].shape, state['w'].dtype),
                          state['w'])
    new = {'w': w * scale[:, None] + offset}
    return new, offset * 2.0

  w = np.arange(8 * 3, dtype=np.float32).reshape(8, 3)
  scale = np.linspace(1.0, 2.0, 8).astype(np.float32)

  def inputs():
    return ({'w': sharding.put_models(w, mesh)}, sharding.put_models(scale, mesh),
            sharding.put_replicated(np.float32(0.5), mesh))

  in_turn = sharding.compile_per_device(fn, mesh, SPECS, OUT_SPECS, donate=(0,))
  assert isinstance(in_turn, sharding.InTurn)
  together = jax.jit(sharding.per_device(fn, mesh, SPECS, OUT_SPECS))
  args = inputs()
  (new, doubled) = in_turn(*args)
  assert args[0]['w'].is_deleted()  # Donated, as by the jitted program.
  (want, want_doubled) = together(*inputs())
  np.testing.assert_array_equal(np.asarray(new['w']), w * scale[:, None] + 0.5)
  np.testing.assert_array_equal(np.asarray(new['w']), np.asarray(want['w']))
  assert new['w'].sharding.is_equivalent_to(sharding.model_sharding(mesh), 2)
  assert doubled.sharding.is_equivalent_to(sharding.replicated(mesh), 0)
  assert float(doubled) == float(want_doubled) == 1.0

  # One device at a time: the four runs' host callbacks never overlap.
  spans.clear()
  in_turn(*inputs())
  spans.sort()
  assert len(spans) == DEVICES, spans
  assert all(end <= start for (_, end), (start, _) in zip(spans, spans[1:])), spans

  # Host arguments for 'M' are split as put_models splits them.
  new, _ = in_turn({'w': w}, scale, np.float32(0.5))
  np.testing.assert_array_equal(np.asarray(new['w']), w * scale[:, None] + 0.5)

  # Lowered for abstract arguments placed for the whole mesh: the 1-device program, 2 rows.
  lowered = in_turn.lower({'w': sharding.abstract_models((8, 3), jnp.float32, mesh)},
                          sharding.abstract_models((8,), jnp.float32, mesh), np.float32(0.5))
  assert '2x3' in lowered.as_text()
  lowered.compile()

  # One device, or another platform: the jitted shard_map program itself.
  one = sharding.compile_per_device(fn, sharding.model_mesh(jax.devices()[:1]), SPECS,
                                    OUT_SPECS)
  assert not isinstance(one, sharding.InTurn)
  print('ok')


def test_in_turn_runs_each_device_alone_and_gives_the_shard_map_results():
  env = dict(os.environ, JAX_PLATFORMS='cpu',
             XLA_FLAGS=f'--xla_force_host_platform_device_count={DEVICES}')
  process = subprocess.run([sys.executable, __file__], env=env, capture_output=True, text=True,
                           timeout=300)
  assert process.returncode == 0, process.stderr[-3000:]
  assert process.stdout.strip().endswith('ok')


if __name__ == '__main__':
  _checks()
