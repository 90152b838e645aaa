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
