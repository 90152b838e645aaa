"""The sizes a study runs at: `tiny` (this 2-core CPU, minutes) and `paper` (PROTOCOL's).

A Scale fixes the zoos (a fixed-architecture and a mixed-architecture one), the meta-classifier
config and evaluation options, and each study's sweep. Every field can be overridden from the
command line (experiments/*.py); `paper` follows PROTOCOL §1, §3 and §5 and needs the TFDS
datasets prepared (`--data_dir`) and an accelerator.
"""

from __future__ import annotations

import dataclasses

from nws_jax.configs import presets
from nws_jax.configs.zoo import ZooConfig
from nws_jax.meta import pipeline
from nws_jax.meta import train as train_lib

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
  meta: train_lib.MetaConfig
  options: pipeline.EvalOptions
  ranges: tuple[tuple[str, tuple[int, int]], ...]
  parts: tuple[str, ...] = ('all', 'conv', 'dense')
  slice_lengths: tuple[int, ...] = ()
  vote_sizes: tuple[int, ...] = ()

  def zoo_config(self, kind: str) -> ZooConfig:
    if kind not in ZOO_KINDS:
      raise ValueError(f'unknown zoo kind {kind!r}; choose from: {", ".join(ZOO_KINDS)}')
    return self.fixed_zoo if kind == 'fixed' else self.mixed_zoo


ZOO_KINDS = ('fixed', 'mixed')
_RANGES = (('early', (1, 5)), ('late', (16, 20)), ('all', (1, 20)))

# This CPU in minutes: zoos of 5 epochs on the offline datasets (most models stay near chance,
# as in the README's main job) and a narrow meta-classifier on 500-weight slices.
TINY = Scale(
    name='tiny',
    fixed_zoo=presets.TINY,
    # Random architectures compile one program per (padded architecture, batch size): 16 models
    # keep that to minutes on this CPU.
    mixed_zoo=presets.TINY_MIXED,
    # include_failed: most models of a 5-epoch zoo stay near chance and are flagged failed (22
    # of 32, 15 of 16); left out, too few would remain to split.
    meta=train_lib.MetaConfig(slice_length=500, epochs=20, conv_widths=(8, 16, 32, 32, 32, 32),
                              dense_widths=(256, 64), include_failed=True),
    options=pipeline.EvalOptions(ensemble_slices=10, positions=25, snapshot_slices=4,
                                 baseline_slices=4),
    ranges=_RANGES,
    slice_lengths=(100, 300, 1000, 3000),
    vote_sizes=(1, 2, 5, 10, 20),
)

# PROTOCOL's sizes: 3,000 fixed and 13,000 mixed nets on the five datasets, up to 1,000 epochs
# with early stopping from epoch 20; meta-classifiers on 5,000-weight slices, 50 epochs.
PAPER = Scale(
    name='paper',
    fixed_zoo=presets.PAPER,
    mixed_zoo=presets.PAPER_MIXED,
    meta=train_lib.MetaConfig(),
    options=pipeline.EvalOptions(),
    ranges=_RANGES,
    slice_lengths=(250, 500, 1000, 2500, 5000, 10000, 20000, 40000, WHOLE),
    vote_sizes=(1, 2, 5, 10, 20, 50, 100),
)

SCALES = {s.name: s for s in (TINY, PAPER)}
