"""What the absl command lines share: usage errors as one line on stderr and exit code 2.

absl itself exits 1 on a bad flag; every nws_jax command exits 2 for any usage error instead.
Light on purpose (no JAX), so that --help and flag errors stay fast.
"""

from __future__ import annotations

import logging as python_logging
import os
import sys
import warnings
from typing import Callable, NoReturn

from absl import flags
from absl import logging


def one_line(message) -> str:
  """`message` on one line: its lines joined by spaces (a library error may span several, e.g.
  TensorStore's, which append their spec)."""
  return ' '.join(line.strip() for line in str(message).splitlines() if line.strip())


def fail(prog: str, message) -> NoReturn:
  """Prints `prog: error: message` on stderr, on one line, and exits 2."""
  print(f'{prog}: error: {one_line(message)}', file=sys.stderr)
  sys.exit(2)


def _quiet_closed_loop(previous):
  """An unraisable-exception hook that drops what a failed Orbax restore leaves behind: when one
  read of a damaged checkpoint fails, Orbax closes its event loop while TensorStore still
  completes the other reads; each completion's call into the closed loop (`RuntimeError: Event
  loop is closed`), and each of Orbax's read coroutines that failed too, is reported as an
  unraisable exception: tracebacks on stderr after our one-line error."""

  def hook(unraisable):
    code = getattr(unraisable.object, 'cr_code', None)  # a coroutine's
    if ((isinstance(unraisable.exc_value, RuntimeError)
         and str(unraisable.exc_value) == 'Event loop is closed')
        or (code is not None and f'{os.sep}orbax{os.sep}' in code.co_filename)):
      return
    previous(unraisable)

  hook.quiet_closed_loop = True
  return hook


class _QuietBackgroundSaves(python_logging.Filter):
  """Drops the errors Orbax logs, traceback and all, from its background save threads when a
  save fails (a full disk: one per thread, three or more): waiting for the save raises the same
  error in the main thread, which reports it as its one line."""

  _MESSAGES = ('_SignalingThread.run() raised an exception',
               'Handler Commit operations or the Commit callback in background save thread')

  def filter(self, record) -> bool:
    message = record.getMessage()
    return not any(text in message for text in self._MESSAGES)


class _QuietUnreadReads(python_logging.Filter):
  """Drops asyncio's report of a future or task whose error nobody retrieved when that error is
  a TensorStore read's or write's: a failed Orbax restore of a damaged checkpoint, or a failed
  save on a full disk, leaves such futures behind, and asyncio logs each whenever it is
  collected, after (or, in a long-lived process, long after) our one-line error about the same
  damage."""

  _REPORTS = ('Future exception was never retrieved', 'Task exception was never retrieved')
  _SOURCES = ('tensorstore', 'OCDBT database')

  def filter(self, record) -> bool:
    message = record.getMessage()
    return not (message.startswith(self._REPORTS)
                and any(source in message for source in self._SOURCES))


def begin(prog: str, argv, required: tuple[str, ...] = ()) -> None:
  """The start of every main: no positional arguments, each flag in `required` given, absl
  logging at WARNING unless --verbosity is given (Orbax logs every read and save at INFO), and no
  stray traceback after a damaged checkpoint's error (`_quiet_closed_loop`) or a failed save
  (`_QuietBackgroundSaves`, `_QuietUnreadReads`)."""
  if len(argv) > 1:
    fail(prog, f'unexpected arguments: {" ".join(argv[1:])}')
  for name in required:
    if not flags.FLAGS[name].value:
      fail(prog, f'--{name} is required')
  if not flags.FLAGS['verbosity'].present:
    logging.set_verbosity(logging.WARNING)
  if not getattr(sys.unraisablehook, 'quiet_closed_loop', False):
    sys.unraisablehook = _quiet_closed_loop(sys.unraisablehook)
  absl_logger = logging.get_absl_logger()
  if not any(isinstance(f, _QuietBackgroundSaves) for f in absl_logger.filters):
    absl_logger.addFilter(_QuietBackgroundSaves())
  # A failed save also leaves Orbax's unstarted chunk writes, which Python reports at exit.
  warnings.filterwarnings('ignore', message="coroutine 'async_serialize_from_host",
                          category=RuntimeWarning)
  asyncio_logger = python_logging.getLogger('asyncio')
  if not any(isinstance(f, _QuietUnreadReads) for f in asyncio_logger.filters):
    asyncio_logger.addFilter(_QuietUnreadReads())


def flags_parser(prog: str) -> Callable:
  """A `flags_parser` for `app.run`: absl's parser, but a bad flag fails like any usage error."""

  def parse(argv):
    try:
      return flags.FLAGS(argv)
    except flags.Error as e:
      fail(prog, str(e).splitlines()[0])

  return parse


def int_list(prog: str, name: str) -> tuple[int, ...]:
  """The integers of list flag `--name` (() when empty); a non-integer fails with one line."""
  values = flags.FLAGS[name].value
  try:
    return tuple(int(v) for v in values)
  except ValueError:
    fail(prog, f'--{name} must be comma-separated integers, got {",".join(values)}')
