"""The benchmark report: a table per suite on stdout, and JSON lines for plotting."""

from __future__ import annotations

import json
import math
import os
from typing import Iterable

# Fields every row carries (common.device_fields) are printed once per suite, not per row.
_MACHINE_FIELDS = ('device', 'backend', 'num_devices', 'jax', 'date')


def _cell(value) -> str:
  if isinstance(value, float):
    if math.isnan(value):
      return 'nan'
    if value != 0 and (abs(value) >= 1e5 or abs(value) < 1e-2):
      return f'{value:.3g}'
    return f'{value:,.2f}' if abs(value) < 100 else f'{value:,.0f}'
  return str(value)


def format_table(rows: list[dict]) -> str:
  """One block per suite: a header line naming the machine, then aligned columns."""
  blocks = []
  for suite in dict.fromkeys(r['suite'] for r in rows):
    group = [r for r in rows if r['suite'] == suite]
    columns = [k for k in dict.fromkeys(k for r in group for k in r)
               if k not in _MACHINE_FIELDS and k != 'suite']
    cells = [[_cell(r.get(c, '')) for c in columns] for r in group]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(columns)]
    machine = ', '.join(f'{k}={group[0][k]}' for k in _MACHINE_FIELDS if k in group[0])
    lines = [f'== {suite} ({machine})',
             '  '.join(c.rjust(w) for c, w in zip(columns, widths))]
    lines += ['  '.join(v.rjust(w) for v, w in zip(row, widths)) for row in cells]
    blocks.append('\n'.join(lines))
  return '\n\n'.join(blocks)


class JsonLines:
  """Writes rows as JSON lines to `path` as they come (to `path`.partial, renamed when closed,
  so a finished file is never half-written)."""

  def __init__(self, path: str):
    self._path = path
    self._partial = path + '.partial'
    self._file = open(self._partial, 'w')

  def write(self, row: dict) -> None:
    self._file.write(json.dumps(row, sort_keys=False) + '\n')
    self._file.flush()

  def close(self) -> None:
    self._file.close()
    os.replace(self._partial, self._path)


def read_json_lines(path: str) -> list[dict]:
  with open(path) as f:
    return [json.loads(line) for line in f if line.strip()]


def write_all(rows: Iterable[dict], path: str) -> None:
  out = JsonLines(path)
  for row in rows:
    out.write(row)
  out.close()
