"""A study's configuration (experiments/*.py): the sizes it runs at, a `Scale`. The named scales
(tiny, paper) are presets (`configs.presets.SCALES`); every knob of their zoos, meta-classifier
and evaluations can be overridden from the command line (study/cli.py). Light (no JAX).
"""

from __future__ import annotations

import dataclasses

from nws_jax.configs.meta import EvalOptions, MetaConfig
from nws_jax.configs.zoo import ZooConfig

WHOLE = 0  # in a slice-length sweep: the whole weight vector of the shortest model


@dataclasses.dataclass(frozen=True)
class Scale:
  """fixed_zoo / mixed_zoo: how to build each zoo when none is given. meta: every meta run's
  config (a study changes only the knob it sweeps). options: the evaluations of each run.
  ranges: `when`'s training snapshot ranges, name -> (first, last). parts: `where`'s parts.
  slice_lengths: weights per slice (WHOLE: the whole vector). vote_sizes: `ensembles`' numbers of
  slices per model in a vote."""
  name: str
  fixed_zoo: ZooConfig
  mixed_zoo: ZooConfig
  meta: MetaConfig
  options: EvalOptions
  ranges: tuple[tuple[str, tuple[int, int]], ...]
  parts: tuple[str, ...] = ('all', 'conv', 'dense')
  slice_lengths: tuple[int, ...] = ()
  vote_sizes: tuple[int, ...] = ()

  def zoo_config(self, kind: str) -> ZooConfig:
    if kind not in ZOO_KINDS:
      raise ValueError(f'unknown zoo kind {kind!r}; choose from: {", ".join(ZOO_KINDS)}')
    return self.fixed_zoo if kind == 'fixed' else self.mixed_zoo


ZOO_KINDS = ('fixed', 'mixed')
