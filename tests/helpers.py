"""Plain helpers shared by test modules (fixtures live in conftest.py)."""

import os


def file_state(directory):
  """{relative path: (bytes, mtime_ns)} of every file under `directory`: equal before and after
  means nothing was written there."""
  state = {}
  for root, _, names in os.walk(directory):
    for name in names:
      path = os.path.join(root, name)
      with open(path, 'rb') as f:
        state[os.path.relpath(path, directory)] = (f.read(), os.stat(path).st_mtime_ns)
  return state


def occupied_folder(path, name='keep.txt', text='mine', kind=None):
  """Creates folder `path` holding one file; returns its file_state, to check it is left alone.
  kind: also mark it as a folder this project wrote as that kind (`files.write_marker`), one that
  --overwrite may replace."""
  path.mkdir()
  (path / name).write_text(text)
  if kind is not None:
    from nws_jax import files
    files.write_marker(str(path), kind)
  return file_state(path)


def positive(row, *fields):
  """Asserts each field of a benchmark row is a finite positive number."""
  import math
  for field in fields:
    value = row[field]
    assert isinstance(value, (int, float)) and math.isfinite(value) and value > 0, (field, row)


def build_crashing_after(config, workdir, rounds, check=None, **options):
  """Runs `build_zoo(config, workdir, **options)` until its checkpoint of round `rounds` is
  saved, then crashes it (KeyboardInterrupt, caught here), as a preempted run would stop;
  check(result), when given, sees that round's result."""
  import pytest
  from nws_jax.zoo import builder as zoo_builder
  save = zoo_builder.StateCheckpointer.save

  def save_then_crash(self, done, result):
    save(self, done, result)
    if done == rounds:
      if check is not None:
        check(result)
      self.close()
      raise KeyboardInterrupt(f'simulated crash after round {rounds}')

  with pytest.MonkeyPatch.context() as patch:
    patch.setattr(zoo_builder.StateCheckpointer, 'save', save_then_crash)
    with pytest.raises(KeyboardInterrupt):
      zoo_builder.build_zoo(config, workdir, **options)


class MemoryWriter:
  """An export writer in memory: what `snapshots.gather_snapshots` reads, the arrays of each
  export number (`trainer.train(on_export=writer.save)`)."""

  def __init__(self):
    self.saved = {}

  def save(self, number, arrays):
    import numpy as np
    self.saved[number] = [np.asarray(a) for a in arrays]

  def read(self, number):
    return self.saved[number]


# `python -m nws_jax.train_zoo` as a user runs it (test_scale_out*.py): on `devices` virtual CPU
# devices, with a persistent compilation cache `cache` that keeps every program, so the runs of
# a module compile each program once.

ZOO_CLI_TIMEOUT_S = 600


def zoo_cli_environment(cache, devices):
  return dict(os.environ, JAX_PLATFORMS='cpu', JAX_COMPILATION_CACHE_DIR=cache,
              JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS='0',
              JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES='0',
              XLA_FLAGS=f'--xla_force_host_platform_device_count={devices}')


def start_zoo_cli(workdir, cache, *flags, devices=1):
  import subprocess
  import sys
  return subprocess.Popen(
      [sys.executable, '-m', 'nws_jax.train_zoo', f'--workdir={workdir}', *flags],
      env=zoo_cli_environment(cache, devices), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
      text=True)


def finish(process):
  """(return code, stdout, stderr) of `process`, killed after ZOO_CLI_TIMEOUT_S."""
  import subprocess
  try:
    out, err = process.communicate(timeout=ZOO_CLI_TIMEOUT_S)
  except subprocess.TimeoutExpired:
    process.kill()
    out, err = process.communicate()
  return process.returncode, out, err


def run_zoo_cli(workdir, cache, *flags, devices=1):
  """Runs train_zoo to the end (it must succeed); returns the loaded zoo."""
  from nws_jax import zoo as zoo_lib
  code, _, err = finish(start_zoo_cli(workdir, cache, *flags, devices=devices))
  assert code == 0, err[-3000:]
  return zoo_lib.load_zoo(str(workdir))


def assert_same_zoo(a, b):
  """Bit for bit: models.csv (but its wall-clock column), every snapshot, the export numbers
  and the curves."""
  import numpy as np
  import pandas as pd
  pd.testing.assert_frame_equal(a.table.drop(columns=['seconds']),
                                b.table.drop(columns=['seconds']))
  np.testing.assert_array_equal(a.snapshots.flat, b.snapshots.flat)
  np.testing.assert_array_equal(a.export_numbers, b.export_numbers)
  pd.testing.assert_frame_equal(a.curves, b.curves)
