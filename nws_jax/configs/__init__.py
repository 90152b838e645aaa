"""Jobs' configurations declared once: each knob is a dataclass field that carries its help text
and its constraints, and the command line's flags, the validation and the `--resume` check are
derived from those fields.

  @dataclasses.dataclass(frozen=True)
  class ZooConfig:
    num_models: int = knob(8, 'Number of models in the zoo.', minimum=1)

`define_flags(ZooConfig)` defines `--num_models` (an absl integer flag with that help and
default); `from_flags(ZooConfig)` builds the config from the parsed flags; `check(config)` raises
ValueError, one line, for a value outside its knob's choices or below its minimum;
`given(ZooConfig)` lists the knobs set on the command line (what `--resume` compares with the
saved config). A flag's type follows the field's: int, float, bool, str (an enum when the knob
has choices) or tuple[str, ...] (a comma-separated list); `X | None` allows None (the flag's
value None, or 0 with `zero_is_none`). Light on purpose (no JAX): --help stays fast.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Sequence

from absl import flags

# The flags `define_flags` defines belong to the module that calls it (its --help lists them).
flags.disclaim_key_flags()


def knob(default, help: str, *, choices: Sequence | None = None, minimum: int | None = None,
         zero_is_none: bool = False, item: str | None = None) -> Any:
  """A dataclass field that is also a command-line flag of the same name.

  choices: the values allowed (each element's, for a tuple knob); minimum: the smallest value
  allowed (None passes); zero_is_none: the flag's 0 means None (e.g. 'all examples'); item: the
  word for one element in messages (default: the knob's name)."""
  if isinstance(default, (list, dict, set)):
    raise TypeError('a knob default must be immutable (a tuple, not a list)')
  return dataclasses.field(default=default, metadata=dict(
      help=help, choices=None if choices is None else tuple(choices), minimum=minimum,
      zero_is_none=zero_is_none, item=item))


def knobs(cls) -> list[dataclasses.Field]:
  """The fields of dataclass `cls` that are knobs, in declaration order."""
  return [f for f in dataclasses.fields(cls) if 'help' in f.metadata]


def _kind(field: dataclasses.Field) -> str:
  """'int', 'float', 'bool', 'str' or 'list': the flag type of a knob, from its annotation."""
  annotation = field.type if isinstance(field.type, str) else getattr(field.type, '__name__', '')
  base = annotation.split('|')[0].strip()
  if base.startswith('tuple'):
    return 'list'
  if base not in ('int', 'float', 'bool', 'str'):
    raise TypeError(f'knob {field.name}: unsupported type {annotation!r}')
  return base


def define_flags(cls, flag_values: flags.FlagValues = flags.FLAGS,
                 defaults: dict | None = None) -> None:
  """Defines one absl flag per knob of `cls`, with the knob's help and default (or the value in
  `defaults`, a command's own starting point)."""
  for field in knobs(cls):
    meta, kind = field.metadata, _kind(field)
    default = (defaults or {}).get(field.name, field.default)
    text = meta['help']
    if kind == 'list':
      flags.DEFINE_list(field.name, None if default is None else list(default), text,
                        flag_values=flag_values)
    elif kind == 'bool':
      flags.DEFINE_bool(field.name, default, text, flag_values=flag_values)
    elif kind == 'str' and meta['choices'] is not None:
      flags.DEFINE_enum(field.name, default, list(meta['choices']), text,
                        flag_values=flag_values)
    elif kind == 'str':
      flags.DEFINE_string(field.name, default, text, flag_values=flag_values)
    elif kind == 'int':
      flags.DEFINE_integer(field.name, default, text, flag_values=flag_values)
    else:
      flags.DEFINE_float(field.name, default, text, flag_values=flag_values)


def _from_flag(field: dataclasses.Field, value):
  if value is not None and _kind(field) == 'list':
    return tuple(value)
  if field.metadata['zero_is_none'] and value == 0:
    return None
  return value


def from_flags(cls, flag_values: flags.FlagValues = flags.FLAGS, **fixed):
  """An instance of `cls` from the parsed flags of its knobs (and `fixed` fields)."""
  values = {f.name: _from_flag(f, flag_values[f.name].value) for f in knobs(cls)}
  return cls(**{**values, **fixed})


def given(cls, flag_values: flags.FlagValues = flags.FLAGS) -> list[str]:
  """The knobs of `cls` whose flag was set on the command line."""
  return [f.name for f in knobs(cls) if flag_values[f.name].present]


def check(config) -> None:
  """Raises ValueError (one line) for a knob of `config` outside its choices or below its
  minimum."""
  for field in knobs(config):
    meta, value = field.metadata, getattr(config, field.name)
    if value is None:
      continue
    if meta['choices'] is not None:
      for v in (value if _kind(field) == 'list' else (value,)):
        if v not in meta['choices']:
          raise ValueError(f'unknown {meta["item"] or field.name} {v!r}; choose from: '
                           + ', '.join(map(str, meta['choices'])))
    if meta['minimum'] is not None and value < meta['minimum']:
      raise ValueError(f'{field.name} must be at least {meta["minimum"]}, got {value}')


def changed(saved, config, names: Sequence[str]) -> list[str]:
  """The knobs among `names` whose value in `config` differs from `saved`'s."""
  return [n for n in names if getattr(config, n) != getattr(saved, n)]
