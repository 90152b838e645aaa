"""The project's file and folder I/O, shared by every command.

- Atomic writes: a reader sees the old file or the whole new one, never half of it
  (`write_atomic`, `write_csv_atomic`, `write_json_atomic`); a whole output folder is written
  hidden beside its place and moved there when complete (`OutputFolder`, `move_into_place`).
- A write that fails for lack of room becomes one line naming the file (`no_space_error`).
- Folders this project writes carry a marker naming their kind (zoo, meta run, release, study);
  `--overwrite` replaces only a folder so marked (`replace_refusal`), and nothing is written
  inside or over a run's inputs (`inside_input`, `input_clash`).
- `short_error`: a library's error on one line.
"""

from __future__ import annotations

import errno
import json
import os
import re
import shutil
import tempfile
import time
from typing import IO, TYPE_CHECKING, Callable

if TYPE_CHECKING:
  import pandas as pd


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


def write_csv_atomic(frame: pd.DataFrame, path: str) -> None:
  """Writes `frame` to `path` through a temporary file, so a reader never sees half a file."""
  write_atomic(path, lambda f: frame.to_csv(f, index=False), mode='w')


def write_json_atomic(obj, path: str) -> None:
  write_atomic(path, lambda f: json.dump(obj, f, indent=2, sort_keys=True), mode='w')


# The errno of a write that failed for lack of room: a full disk, a quota, or a file-size limit
# (RLIMIT_FSIZE; the tests simulate a full disk with it).
_NO_SPACE = {errno.ENOSPC: 'ENOSPC', errno.EDQUOT: 'EDQUOT', errno.EFBIG: 'EFBIG'}


class NoSpaceError(OSError):
  """A write that failed for lack of room, as one line naming the file or folder written."""


def _no_space_errno(error: BaseException | None) -> tuple[int, BaseException] | None:
  """(errno, the error carrying it) when `error`, or one it was raised from or while handling,
  is a write that failed for lack of room; None otherwise. TensorStore's errors (through Orbax)
  carry it only in their text: "… File too large [os_error_code='27']"."""
  seen = set()
  while error is not None and id(error) not in seen:
    seen.add(id(error))
    if isinstance(error, OSError) and error.errno in _NO_SPACE:
      return error.errno, error
    for code in _NO_SPACE:
      if f"os_error_code='{code}'" in str(error):
        return code, error
    error = error.__cause__ or error.__context__
  return None


def no_space_error(error: BaseException, out: str,
                   tmp: str | None = None) -> NoSpaceError | None:
  """`cannot write PATH: No space left on device (ERRNO…)` when `error` is a write that failed
  for lack of room (ENOSPC, EDQUOT, or EFBIG, a file-size limit, told alike), or None. PATH: the
  file written (its OSError.filename; under `tmp`, the hidden folder of an OutputFolder, named
  where it was to end up under `out`), else the output folder `out`."""
  if isinstance(error, NoSpaceError):
    return error
  found = _no_space_errno(error)
  if found is None:
    return None
  code, cause = found
  path = getattr(cause, 'filename', None)
  path = os.path.abspath(os.fspath(path)) if isinstance(path, (str, os.PathLike)) else out
  if tmp is not None and _inside(path, tmp):
    path = os.path.normpath(os.path.join(out, os.path.relpath(path, tmp)))
  detail = _NO_SPACE[code] + ('' if code == errno.ENOSPC else f': {os.strerror(code)}')
  result = NoSpaceError(f'cannot write {path}: No space left on device ({detail})')
  result.errno = code
  return result


_PARTIAL_NAME = re.compile(r'\..+\.partial-[a-z0-9_]+')  # OutputFolder's hidden folders


def remove_folder(folder: str, settle_s: float = 0.5, most_s: float = 10.0) -> None:
  """Removes the tree `folder` and checks that it stays gone for `settle_s` seconds: a writer not
  quite finished may still add a file (after a failed Orbax save, TensorStore's own threads,
  which Python cannot join, finish the writes already started, creating their folders again).
  Gives up after `most_s` seconds. Errors are ignored."""
  deadline = time.monotonic() + most_s
  while True:
    shutil.rmtree(folder, ignore_errors=True)
    quiet_until = time.monotonic() + settle_s
    while not os.path.lexists(folder) and time.monotonic() < quiet_until:
      time.sleep(0.02)
    if not os.path.lexists(folder) or time.monotonic() > deadline:
      return


def remove_partial_folders(parent: str) -> list[str]:
  """Removes from `parent` the hidden folders of OutputFolders whose process was killed while
  writing (.<name>.partial-…) — only those that carry this project's marker file (MARKER_FILE),
  nothing else. The caller makes sure no writer of `parent` is running (its lock). Returns the
  paths removed."""
  removed = []
  names = sorted(os.listdir(parent)) if os.path.isdir(parent) else []
  for name in names:
    path = os.path.join(parent, name)
    if (_PARTIAL_NAME.fullmatch(name) and os.path.isdir(path) and not os.path.islink(path)
        and marked_kind(path) is not None):
      remove_folder(path)
      removed.append(path)
  return removed


class OutputFolder:
  """`with OutputFolder(out, check) as tmp:` — write a workdir of several files into tmp, a
  hidden sibling of out (.<name>.partial-…); on success tmp becomes out, on any error tmp (and
  any parent folder this created) is removed and out is left exactly as it was. A write that
  fails for lack of room is raised as a NoSpaceError naming what was written (`no_space_error`).

  check(out) is called when out, at the end, is not empty (it may have been filled meanwhile);
  it raises to refuse replacing it. A replaced out is removed only once tmp is in its place.
  """

  def __init__(self, out: str, check: Callable[[str], None]):
    self.out = os.path.abspath(out)
    self.check = check

  def __enter__(self) -> str:
    parent = os.path.dirname(self.out)
    self._created = missing_parents(parent)
    os.makedirs(parent, exist_ok=True)
    try:
      self.tmp = tempfile.mkdtemp(dir=parent,
                                  prefix='.' + os.path.basename(self.out) + '.partial-')
      umask = os.umask(0)
      os.umask(umask)
      os.chmod(self.tmp, 0o777 & ~umask)  # mkdtemp makes it private; out should not be.
    except BaseException:
      self._remove_parents()
      raise
    return self.tmp

  def _remove_parents(self) -> None:
    for folder in self._created:
      try:
        os.rmdir(folder)
      except OSError:
        break

  def __exit__(self, kind, value, traceback) -> None:
    if kind is None:
      try:
        self._commit()
        return
      except Exception as e:
        self._discard()
        error = no_space_error(e, self.out, self.tmp)
        if error is None:
          raise
        raise error from e
      except BaseException:
        self._discard()
        raise
    self._discard()
    error = no_space_error(value, self.out, self.tmp) if isinstance(value, Exception) else None
    if error is not None:
      raise error from value  # out of room: one line naming what was written

  def _discard(self) -> None:
    remove_folder(self.tmp)
    self._remove_parents()

  def _commit(self) -> None:
    if not _absent_or_empty(self.out):
      self.check(self.out)  # became non-empty meanwhile, or overwrite: may it be replaced?
    move_into_place(self.tmp, self.out)


def _absent_or_empty(folder: str) -> bool:
  return not os.path.lexists(folder) or (os.path.isdir(folder) and not os.listdir(folder))


def move_into_place(new: str, out: str) -> None:
  """Renames the finished folder `new` to `out` (same filesystem). An empty or absent `out` is
  replaced atomically; a non-empty one (the caller has checked that it may go) is first renamed
  aside, and removed only once `new` is in its place (put back if that rename fails)."""
  if _absent_or_empty(out):
    os.rename(new, out)
    return
  parent, name = os.path.split(os.path.abspath(out))
  old = tempfile.mkdtemp(dir=parent, prefix=f'.{name}.old-')
  os.rename(out, old)  # replaces the empty folder mkdtemp made
  try:
    os.rename(new, out)
  except BaseException:
    os.rename(old, out)
    raise
  shutil.rmtree(old, ignore_errors=True)


# What each kind of workdir holds (folder_kind): a meta-classifier run (meta/store.py's names),
# a zoo (zoo/__init__.py's), a release (release.py's), a study (study/runner.py's).
_KIND_MARKERS = (('meta', ('run.json', 'split.json', 'checkpoint')),
                 ('zoo', ('models.csv', 'snapshots', 'state', 'exports')),
                 ('release', ('train.csv', 'test.csv', 'nets')),
                 ('study', ('study.json',)))
KIND_NAMES = {'meta': "a meta-classifier run (train_meta's workdir)",
              'zoo': 'a zoo (train_zoo or import_nws)',
              'release': "a release in the NWS format (export_nws's output)",
              'study': "a study (the workdir of an experiments/ script)"}


# Every folder this project writes as a whole (a zoo, a meta-classifier run, a release export)
# carries this file, naming its kind. --overwrite replaces only a folder that carries it with the
# right kind: a folder of the user's is never deleted, whatever files it holds.
MARKER_FILE = '.nws_jax.json'


def write_marker(folder: str, kind: str) -> None:
  """Marks `folder` as written by this project, as a `kind` (a key of KIND_NAMES)."""
  write_json_atomic({'kind': kind, 'written_by': 'nws_jax'}, os.path.join(folder, MARKER_FILE))


def marked_kind(folder: str) -> str | None:
  """The kind named by `folder`'s marker file, or None (no marker, or not readable as one)."""
  path = os.path.join(folder, MARKER_FILE)
  if not os.path.isfile(path) or os.path.islink(path):
    return None
  try:
    with open(path) as f:
      kind = json.load(f).get('kind')
  except (OSError, ValueError, AttributeError):
    return None
  return kind if kind in KIND_NAMES else None


def replace_refusal(folder: str, kind: str, command: str) -> str | None:
  """Why --overwrite must not replace the non-empty `folder` with a new `kind`, or None when it
  may: only a folder this project wrote as that kind (its marker file) may be replaced."""
  found = folder_kind(folder)
  marked = marked_kind(folder)
  if marked == kind:
    return None
  if marked is not None or found not in (None, kind):
    return (f'holds {KIND_NAMES[marked or found]}; --overwrite replaces only '
            f'{KIND_NAMES[kind].split(" (")[0]} (choose another folder)')
  return (f'was not written by {command} (no {MARKER_FILE} naming it '
          f'{KIND_NAMES[kind].split(" (")[0]}); --overwrite replaces only such a folder, so '
          'nothing of yours is deleted: choose another folder, or empty it yourself')


def folder_kind(path: str) -> str | None:
  """What the folder `path` holds, judged by the names in it: 'meta' (a train_meta workdir),
  'zoo' (a zoo, finished or still training), 'release' (split CSVs and net folders), or None
  (anything else, or not a folder). Used to refuse a workdir of the wrong kind."""
  if not os.path.isdir(path):
    return None
  names = set(os.listdir(path))
  for kind, markers in _KIND_MARKERS:
    if names.intersection(markers):
      return kind
  return None


def _inside(path: str, parent: str) -> bool:
  path, parent = os.path.realpath(path), os.path.realpath(parent)
  return os.path.commonpath([path, parent]) == parent


def inside_input(folder: str, inputs) -> str | None:
  """Why `folder` may not be written at all, even when it does not exist yet: it lies inside
  one of `inputs` (paths read by the run: 'lies inside the input …'); or None. (A folder that is
  an input holds it: `input_clash`.)"""
  for path in inputs:
    if _inside(folder, path) and not _inside(path, folder):
      return f'lies inside the input {path}; writing there would damage it'
  return None


def input_clash(folder: str, inputs) -> str | None:
  """Why replacing `folder` would harm one of `inputs` (paths read by the run): it holds one
  ('holds the input …') or lies inside one ('lies inside the input …'); None if neither."""
  for path in inputs:
    if _inside(path, folder):
      return f'holds the input {path}; overwriting it would delete it'
  return inside_input(folder, inputs)


def short_error(error: BaseException, limit: int = 400) -> str:
  """The gist of a library's error on one line. Orbax wraps TensorStore's error (kept as the
  cause) in one that points at 'full TensorStore details': then the cause is what went wrong
  (e.g. 'OUT_OF_RANGE: Error reading … Requested byte range … is not valid'). TensorStore's
  messages end in their whole spec ('[tensorstore_spec=…]'). Both tails are cut."""
  while 'See full TensorStore details' in str(error) and error.__cause__ is not None:
    error = error.__cause__
  text = ' '.join(str(error).split()) or type(error).__name__
  for marker in (' [tensorstore_spec=', ' See full TensorStore details'):
    if marker in text:
      text = text[:text.index(marker)].rstrip('.;, ')
  return text if len(text) <= limit else text[:limit - 1] + '…'
