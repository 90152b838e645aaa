"""Several processes (hosts) training one zoo: start-up, agreement and a fail-fast exit.

Every process runs the same host loop over a mesh of all processes' devices (`sharding`), makes
the same decisions from values gathered in full, and calls every Orbax save (which writes each
array once). Files outside Orbax (config.json, the CSVs) are written by process 0 alone, and the
others wait for it at a barrier. The workdir must be on a filesystem every process sees.

A process that fails must not wait in `jax.distributed.shutdown` (up to its timeout) while its
peers block in a collective: after `initialize`, an uncaught exception (and `exit_now`) ends it
at once, and the peers' collectives then fail within a second.
"""

from __future__ import annotations

import os
import sys
import traceback

import jax
import numpy as np
from jax.experimental import multihost_utils

TIMEOUT_S = 120
_TIMEOUTS = dict(initialization_timeout=TIMEOUT_S, heartbeat_timeout_seconds=TIMEOUT_S,
                 shutdown_timeout_seconds=TIMEOUT_S)


def initialize(coordinator_address: str | None = None, num_processes: int | None = None,
               process_id: int | None = None, auto: bool = False) -> None:
  """Joins the processes of a run: explicitly (all three arguments), or with `auto` from the
  cluster's environment (TPU pods, SLURM, …, as `jax.distributed.initialize()` detects it).
  Does nothing when neither is asked. Then makes an uncaught exception end the process at once.
  """
  if coordinator_address is None and not auto:
    return
  if coordinator_address is not None:
    if num_processes is None or process_id is None:
      raise ValueError('--coordinator_address needs --num_processes and --process_id')
    if num_processes < 1 or not 0 <= process_id < num_processes:
      raise ValueError(f'process_id must be in [0, num_processes={num_processes}), '
                       f'got {process_id}')
    jax.distributed.initialize(coordinator_address=coordinator_address,
                               num_processes=num_processes, process_id=process_id,
                               **_TIMEOUTS)
  else:
    jax.distributed.initialize(**_TIMEOUTS)
  sys.excepthook = _exit_on_exception


def _exit_on_exception(etype, value, tb):
  traceback.print_exception(etype, value, tb)
  exit_now(1)


def multiprocess() -> bool:
  return jax.process_count() > 1


def is_primary() -> bool:
  return jax.process_index() == 0


def exit_now(code: int) -> None:
  """Exits with `code`; with several processes, without the shutdown barrier."""
  sys.stdout.flush()
  sys.stderr.flush()
  if multiprocess():
    os._exit(code)
  sys.exit(code)


def barrier(name: str) -> None:
  """Waits until every process got here (no-op with one process)."""
  if multiprocess():
    multihost_utils.sync_global_devices(name)


def any_process(flag: bool) -> bool:
  """Whether `flag` is True in some process (every process gets the same answer)."""
  if not multiprocess():
    return bool(flag)
  return bool(np.any(multihost_utils.process_allgather(np.asarray([flag]))))
