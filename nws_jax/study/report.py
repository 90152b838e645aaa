"""The markdown summary of a study: what ran, on which machine, how long, and its tables."""

from __future__ import annotations

import datetime
import math
import platform

import jax
import numpy as np
import pandas as pd

import nws_jax


def fmt(value, metric: str | None = None) -> str:
  """A cell: counts as they are, scores to 3 decimals (MAEs in scientific notation), NaN as
  'n/a'."""
  if isinstance(value, (bool, np.bool_)) or not isinstance(value, (float, int, np.number)):
    return str(value)
  if isinstance(value, (int, np.integer)):
    return str(int(value))
  if math.isnan(value):
    return 'n/a'
  return f'{value:.2e}' if metric == 'mae' else f'{value:.3f}'


def _seconds(seconds: float) -> str:
  return '?' if math.isnan(seconds) else f'{seconds:.0f} s'



def markdown_table(frame: pd.DataFrame, columns: list[str] | None = None) -> str:
  """`frame` as a markdown table; a 'metric' column, when present, decides each row's number
  format."""
  columns = columns or list(frame.columns)
  lines = ['| ' + ' | '.join(columns) + ' |', '|' + '---|' * len(columns)]
  for row in frame.to_dict('records'):
    metric = row.get('metric')
    lines.append('| ' + ' | '.join(fmt(row[c], metric) for c in columns) + ' |')
  return '\n'.join(lines)


def machine() -> str:
  devices = jax.devices()
  kind = devices[0].device_kind if devices else '?'
  return (f'{platform.node() or "?"}: {platform.machine()} {platform.system()}, JAX '
          f'{jax.__version__} on {len(devices)} {jax.default_backend()} device(s) ({kind})')


def summary(study, title: str, sections: list[tuple[str, str]], command: str) -> str:
  """The summary.md of `study` (runner.Study): title, how to rerun it, the machine and the time
  of each step, then the sections (heading, markdown body)."""
  total = sum(s[1] for s in study.steps if not math.isnan(s[1]))
  steps = '\n'.join(f'| {name} | {_seconds(seconds)}'
                    + (' (built by an earlier run, reused)' if reused else '') + ' |'
                    for name, seconds, reused in study.steps)
  head = [f'# {title}', '',
          f'Scale `{study.scale.name}`, nws_jax {nws_jax.__version__}, '
          f'{datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC.', '',
          'Made by:', '', '```', command, '```', '',
          f'Machine: {machine()}.', '',
          '| step | time |', '|---|---|', steps, f'| total | {total:.0f} s |', '']
  body = []
  for heading, text in sections:
    body += [f'## {heading}', '', text.rstrip(), '']
  return '\n'.join(head + body)
