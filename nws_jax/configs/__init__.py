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
has choices) or tuple[str, ...] / tuple[int, ...] (a comma-separated list); `X | None` allows
None (the flag's value None; 0 with `zero_is_none`; an empty list for a list whose default is
None). Light on purpose (no JAX): --help stays fast.
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


def _annotation(field: dataclasses.Field) -> str:
  return field.type if isinstance(field.type, str) else getattr(field.type, '__name__', '')


def _kind(field: dataclasses.Field) -> str:
  """'int', 'float', 'bool', 'str' or 'list': the flag type of a knob, from its annotation."""
  annotation = _annotation(field)
  base = annotation.split('|')[0].strip()
  if base in ('tuple[str, ...]', 'tuple[int, ...]'):
    return 'list'
  if base not in ('int', 'float', 'bool', 'str'):
    raise TypeError(f'knob {field.name}: unsupported type {annotation!r}')
  return base


def define_flags(cls, flag_values: flags.FlagValues = flags.FLAGS, *,
                 names: Sequence[str] | None = None, rename: dict | None = None,
                 overrides: str | None = None) -> None:
  """Defines one absl flag per knob of `cls` (or per knob in `names`), with the knob's help and
  default, named as the knob or as `rename` says (knob -> flag name, where two configs of one
  command share a knob's name). overrides: the flags change a preset, so each defaults to None
  (keep the preset's value) and its help starts with this label (e.g. 'Zoo training')."""
  for field in knobs(cls):
    if names is not None and field.name not in names:
      continue
    meta, kind = field.metadata, _kind(field)
    name = (rename or {}).get(field.name, field.name)
    default = None if overrides else field.default
    text = meta['help'] if not overrides else f'{overrides}: {meta["help"]}'
    if kind == 'list':
      listed = None if overrides else [] if default is None else [str(v) for v in default]
      flags.DEFINE_list(name, listed, text, flag_values=flag_values)
    elif kind == 'bool':
      flags.DEFINE_bool(name, default, text, flag_values=flag_values)
    elif kind == 'str' and meta['choices'] is not None:
      flags.DEFINE_enum(name, default, list(meta['choices']), text, flag_values=flag_values)
    elif kind == 'str':
      flags.DEFINE_string(name, default, text, flag_values=flag_values)
    elif kind == 'int':
      flags.DEFINE_integer(name, default, text, flag_values=flag_values)
    else:
      flags.DEFINE_float(name, default, text, flag_values=flag_values)


def _from_flag(field: dataclasses.Field, value):
  if value is not None and _kind(field) == 'list':
    if not value and field.default is None:
      return None
    if _annotation(field).startswith('tuple[int'):
      try:
        return tuple(int(v) for v in value)
      except ValueError:
        raise ValueError(f'--{field.name} must be comma-separated integers, got '
                         f'{",".join(value)}') from None
    return tuple(value)
  if field.metadata['zero_is_none'] and value == 0:
    return None
  return value


def from_flags(cls, flag_values: flags.FlagValues = flags.FLAGS, **fixed):
  """An instance of `cls` from the parsed flags of its knobs (and `fixed` fields)."""
  values = {f.name: _from_flag(f, flag_values[f.name].value) for f in knobs(cls)}
  return cls(**{**values, **fixed})


def overrides(cls, flag_values: flags.FlagValues = flags.FLAGS, *,
              names: Sequence[str] | None = None, rename: dict | None = None) -> dict:
  """{knob: value} of the flags that `define_flags(cls, names=, rename=, overrides=...)`
  defined and the command line set: what to change in a preset (`dataclasses.replace`)."""
  changes = {}
  for field in knobs(cls):
    name = (rename or {}).get(field.name, field.name)
    if (names is None or field.name in names) and flag_values[name].present:
      changes[field.name] = _from_flag(field, flag_values[name].value)
  return changes


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
