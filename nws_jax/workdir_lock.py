"""One writer per workdir: an exclusive lock on an output folder, held while a command writes it.

  with workdir_lock.hold(workdir, 'train_zoo'):
    ...  # check the workdir, then write it

The lock is an `flock` on a hidden sibling file, `<parent>/.<name>.lock`, never inside the folder:
the folder may not exist yet, and a writer may replace it whole by renaming a finished folder into
its place (files.OutputFolder). While one process holds it, a second `hold` of the same folder
raises LockedError at once, naming the holder (pid, host, command, since when, read from the lock
file); the second writer has then checked and written nothing. The lock file is removed when the
holder leaves the `with` block, normally or by an exception; one left by a killed process is not
locked, so it blocks nobody: the next writer takes it over.

Advisory: only nws_jax commands take it; anything else may still write the folder. On a local
disk it excludes every process of the host; on a shared file system it reaches other hosts only
where the file system passes `flock` on (NFS: depends on client and server, and may lock per host
only or not at all; check before running writers of one folder on several hosts). A folder is
named by its real path (symbolic links resolved), so two spellings of one folder share one lock.

Re-entrant within a process: a nested `hold` of a folder this process already holds (a command
that locks its workdir, then calls a library function that locks it too) passes through; the
outermost one releases it. Light on purpose (no JAX), so a command can lock before heavy imports.
"""

from __future__ import annotations

import contextlib
import datetime
import fcntl
import functools
import inspect
import json
import os
import socket
import threading
import time
from typing import Callable, Iterator

from nws_jax import files

LOCK_SUFFIX = '.lock'
_ATTEMPTS = 20  # times a lock file unlinked by its releasing holder is opened afresh
_READ_WAIT_S = 1.0  # how long to wait for a new holder to write its record

_held: dict[str, int] = {}  # lock path -> nesting depth, for the locks this process holds
_registry = threading.Lock()


class LockedError(RuntimeError):
  """The folder is being written by another process (one line naming it)."""


def lock_path(folder: str) -> str:
  """The lock file of `folder`: `<parent>/.<name>.lock` of its real path (links resolved)."""
  parent, name = os.path.split(os.path.realpath(folder))
  if not name:
    raise ValueError(f'{folder}: the root folder cannot be a workdir')
  return os.path.join(parent, f'.{name}{LOCK_SUFFIX}')


@contextlib.contextmanager
def hold(folder: str, command: str) -> Iterator[str]:
  """Holds the exclusive lock of `folder` (see the module docstring) inside the `with` block.

  Guarantees, among processes that lock `folder` this way (advisory; flock's reach on shared file
  systems is the file system's): at most one holds it at a time; a refused one has created and
  changed nothing; the lock file is gone once the block is left, normally or by an exception
  (only a killed process leaves it, unlocked); a nested hold of the same folder in this process
  passes through. Not inherited by programs this process starts.

  Args:
    folder: the output folder to write; it need not exist. Missing parents of it are created for
      the lock file and removed again on exit when still empty.
    command: what writes it (e.g. 'train_zoo'), shown to a writer that is refused.

  Yields:
    The path of the lock file.

  Raises:
    LockedError: another process holds the lock; nothing was created or changed.
    OSError: the lock file cannot be created (e.g. a read-only parent, or a parent that is a file).
  """
  path = lock_path(folder)
  with _registry:
    nested = path in _held
    if not nested:
      fd, created = _take(path, folder, command)
    _held[path] = _held.get(path, 0) + 1
  try:
    yield path
  finally:
    with _registry:
      _held[path] -= 1
      if not nested:
        del _held[path]
        _release(fd, path)
        _remove_empty(created)


def holding(argument: str, command: str) -> Callable:
  """Decorator: the function runs inside `hold(<its argument named argument>, command)`."""

  def decorate(fn):
    signature = inspect.signature(fn)

    @functools.wraps(fn)
    def locked(*args, **kwargs):
      folder = signature.bind(*args, **kwargs).arguments[argument]
      with hold(folder, command):
        return fn(*args, **kwargs)

    return locked

  return decorate


def _take(path: str, folder: str, command: str) -> tuple[int, list[str]]:
  """(locked descriptor of the lock file at `path`, with this process's record written in it;
  the parent folders created for it). On any error, nothing is left behind."""
  created = _make_parents(os.path.dirname(path))
  try:
    fd = _acquire(path, folder)
  except BaseException:
    _remove_empty(created)
    raise
  try:
    _write_holder(fd, command)
  except BaseException:
    _release(fd, path)
    _remove_empty(created)
    raise
  return fd, created


def _acquire(path: str, folder: str) -> int:
  """An open descriptor of the lock file at `path`, exclusively locked; LockedError if held."""
  for _ in range(_ATTEMPTS):
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    try:
      fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
      holder = _read_holder(fd)
      os.close(fd)
      raise LockedError(_refusal(folder, holder)) from None
    except BaseException:
      os.close(fd)
      raise
    if _is_file_at(fd, path):
      return fd
    os.close(fd)  # its holder unlinked it while releasing: lock the file now at the path
  raise LockedError(f'{folder}: could not lock {path} ({_ATTEMPTS} attempts: it kept being '
                    'replaced)')


def _is_file_at(fd: int, path: str) -> bool:
  """Whether the open file `fd` is still the file at `path`."""
  try:
    here = os.stat(path)
  except FileNotFoundError:
    return False
  mine = os.fstat(fd)
  return (mine.st_dev, mine.st_ino) == (here.st_dev, here.st_ino)


def _write_holder(fd: int, command: str) -> None:
  record = {'pid': os.getpid(), 'host': socket.gethostname(), 'command': command,
            'started': datetime.datetime.now().astimezone().isoformat(timespec='seconds')}
  os.ftruncate(fd, 0)  # a killed holder's record may be longer
  os.pwrite(fd, (json.dumps(record) + '\n').encode(), 0)


def _read_holder(fd: int) -> dict:
  """The holder's record in the lock file; {} if it is not written (in time) or unreadable."""
  deadline = time.monotonic() + _READ_WAIT_S
  while True:
    try:
      record = json.loads(os.pread(fd, 4096, 0).decode())
      if isinstance(record, dict):
        return record
    except (OSError, ValueError):
      pass
    if time.monotonic() > deadline:
      return {}
    time.sleep(0.02)  # the holder has just locked the file and is writing its record


def _refusal(folder: str, holder: dict) -> str:
  get = lambda key: str(holder.get(key, '?'))
  return (f'{folder} is in use by {get("command")} (pid {get("pid")} on {get("host")}, since '
          f'{get("started")}); wait for it to finish or stop it')


def _release(fd: int, path: str) -> None:
  """Removes the lock file, then unlocks it: a writer that opened it meanwhile finds it gone."""
  try:
    if _is_file_at(fd, path):
      os.unlink(path)
  finally:
    os.close(fd)


def _make_parents(folder: str) -> list[str]:
  """Creates `folder` and its missing parents; returns those created, deepest first."""
  missing = files.missing_parents(folder)
  if missing:
    os.makedirs(missing[0], exist_ok=True)
  return missing


def _remove_empty(folders: list[str]) -> None:
  for folder in folders:
    try:
      os.rmdir(folder)
    except OSError:
      break
