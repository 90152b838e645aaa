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


def occupied_folder(path, name='keep.txt', text='mine'):
  """Creates folder `path` holding one file; returns its file_state, to check it is left alone."""
  path.mkdir()
  (path / name).write_text(text)
  return file_state(path)


def positive(row, *fields):
  """Asserts each field of a benchmark row is a finite positive number."""
  import math
  for field in fields:
    value = row[field]
    assert isinstance(value, (int, float)) and math.isfinite(value) and value > 0, (field, row)
