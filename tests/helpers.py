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
