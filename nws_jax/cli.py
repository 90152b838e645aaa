"""What the absl command lines share: usage errors as one line on stderr and exit code 2.

absl itself exits 1 on a bad flag; every nws_jax command exits 2 for any usage error instead.
Light on purpose (no JAX), so that --help and flag errors stay fast.
"""

from __future__ import annotations

import sys
from typing import Callable, NoReturn

from absl import flags
from absl import logging


def fail(prog: str, message: str) -> NoReturn:
  """Prints `prog: error: message` on stderr and exits 2."""
  print(f'{prog}: error: {message}', file=sys.stderr)
  sys.exit(2)


def begin(prog: str, argv, required: tuple[str, ...] = ()) -> None:
  """The start of every main: no positional arguments, each flag in `required` given, and absl
  logging at WARNING unless --verbosity is given (Orbax logs every read and save at INFO)."""
  if len(argv) > 1:
    fail(prog, f'unexpected arguments: {" ".join(argv[1:])}')
  for name in required:
    if not flags.FLAGS[name].value:
      fail(prog, f'--{name} is required')
  if not flags.FLAGS['verbosity'].present:
    logging.set_verbosity(logging.WARNING)


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
