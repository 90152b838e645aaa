"""Atomic file writes (a reader sees the old file or the whole new one, never half of it), and
the folders a makedirs would create."""

from __future__ import annotations

import os
import tempfile
from typing import Callable, IO


def write_atomic(path: str, write: Callable[[IO], object], mode: str = 'wb') -> None:
  """Calls write(f) on a temporary file beside `path`, then renames it over `path`. The file
  gets the usual permissions (mkstemp's are private), so others can read what we publish."""
  fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path) or '.', suffix='.tmp')
  try:
    with os.fdopen(fd, mode) as f:
      write(f)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)
    os.replace(tmp, path)
  except OSError as e:
    if e.filename is None:
      e.filename = path  # a failed write (a full disk) names no file: the one being written
    raise
  finally:
    if os.path.exists(tmp):
      os.remove(tmp)


def missing_parents(folder: str) -> list[str]:
  """The folders, deepest first, that os.makedirs(folder) would create."""
  missing = []
  while folder and not os.path.exists(folder):
    missing.append(folder)
    parent = os.path.dirname(folder)
    if parent == folder:
      break
    folder = parent
  return missing
