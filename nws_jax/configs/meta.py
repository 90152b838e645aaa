"""The meta-classifier job's configuration (`train_meta`, `meta.pipeline`): what a run trains
(`MetaConfig`, its config.json) and what it evaluates (`EvalOptions`), one knob per field.

The defaults are PROTOCOL §5's. Light on purpose (no JAX): the methods that need the network's
rules import them when called.
"""

from __future__ import annotations

import dataclasses

from nws_jax.configs import check, knob

PARTS = ('all', 'conv', 'dense')        # where slices come from (meta/slices.py)
BN_EVAL_MODES = ('batch', 'moving')     # batch norm at evaluation (meta/model.py)
PROTOCOL_DENSE_WIDTHS = (1024, 1024, 1024, 1024, 64)  # PROTOCOL §5's dense layers


@dataclasses.dataclass(frozen=True)
class MetaConfig:
  """Everything that determines a meta-classifier run (same config and zoo -> same result).

  The defaults are PROTOCOL §5's: slices of 5,000 weights anywhere in the vector, snapshots
  11–20, Adam at 1e-3, batch 64, 50 epochs, the study's network (model.py: `cnn1D_small`, or
  `cnn1D` for slices over 40,000 weights; dense widths 1024×4 and 64), batch norm evaluated with
  batch statistics as the original did. properties=None trains every property that varies in
  the zoo. conv_widths=None: the variant's own; custom widths keep the variant's pooling rule
  (model.py). bn_eval: 'batch' (the original) or 'moving' (running averages) at evaluation.
  variant 'legacy_6layer' is the pre-issue network: what runs saved before it read back as
  (their config.json has no bn_eval), and the benchmark's comparison. first_snapshot and
  last_snapshot are train_meta's --snapshots (FIRST-LAST); variant and valid_slices are not
  flags.
  """
  properties: tuple[str, ...] | None = knob(
      None, 'Properties to recover, comma-separated (default: every property that varies in '
      'the zoo).')
  slice_length: int = knob(5000, 'Consecutive weights per slice (the study: 5000).', minimum=1)
  part: str = knob('all', 'Where slices come from: the whole vector, the conv part or the dense '
                   'part.', choices=PARTS)
  first_snapshot: int = 11
  last_snapshot: int = 20
  epochs: int = knob(50, 'Epochs over the meta-training snapshots (the study: 50).', minimum=1)
  batch_size: int = knob(64, 'Slices per step (the study: 64).', minimum=1)
  learning_rate: float = knob(1e-3, 'Adam learning rate (the study: 1e-3).')
  conv_widths: tuple[int, ...] | None = knob(
      None, "Widths of the conv layers (default: the study's cnn1D_small, 8,16,32,64,128,256 and "
      'six more 256s; for slices over 40,000 its cnn1D, 15 layers, which takes no other count). '
      "Any count keeps cnn1D_small's pooling (pools after conv 1, 2 and 4, one before each conv "
      'past the 6th while the length is above 50, and a final one).')
  dense_widths: tuple[int, ...] = knob(
      PROTOCOL_DENSE_WIDTHS, 'Widths of the dense layers (the study: 1024,1024,1024,1024,64).')
  seed: int = knob(0, 'Seed of the split, the initialisation and the slices.')
  test_fraction: float = knob(0.2, 'Share of the models held out as meta-test models.')
  valid_fraction: float = knob(0.1, 'Share of the other models used for validation.')
  valid_slices: int = 4
  include_failed: bool = knob(
      False, 'Keep models flagged failed in models.csv (test accuracy below 0.15, or diverged); '
      'by default they are left out, as the release left its failed nets out. Release nets '
      'carry no such flag.')
  bn_eval: str = knob(
      'batch', "Batch norm at evaluation: the evaluated batch's statistics (the study's; "
      'outputs depend on which slices share a batch of --batch_size) or the moving averages.',
      choices=BN_EVAL_MODES)
  variant: str | None = None  # None: the study's for the slice length (model.variant_for)

  @property
  def slice_spec(self):
    """The `meta.slices.SliceSpec` of these slices."""
    from nws_jax.meta import slices as slices_lib
    return slices_lib.SliceSpec(self.slice_length, self.part, self.first_snapshot,
                                self.last_snapshot)

  def validate(self) -> None:
    """Raises ValueError (one line) for values no zoo could run with."""
    from nws_jax.meta import model as model_lib
    if self.valid_slices < 1:
      raise ValueError(f'valid_slices must be at least 1, got {self.valid_slices}')
    check(self)
    if not 0 < self.learning_rate < float('inf'):  # NaN too
      raise ValueError(f'learning_rate must be a positive number, got {self.learning_rate}')
    if self.seed < 0:
      raise ValueError(f'seed must be non-negative, got {self.seed}')
    if self.seed >= 2 ** 32:  # jax.random.key keeps 32 bits: 2**32 would act as 0
      raise ValueError(f'seed must be below 2**32, got {self.seed}')
    if not self.dense_widths or min(self.dense_widths) < 1:
      raise ValueError(f'dense_widths must be positive widths, got {self.dense_widths}')
    model_lib.check_layout(self.variant_used, self.conv_widths_used, self.slice_length)
    if self.variant_used == model_lib.LEGACY and self.bn_eval != 'moving':
      raise ValueError(f'the {model_lib.LEGACY} meta-classifier evaluates with bn_eval=moving')

  @property
  def variant_used(self) -> str:
    """The meta-classifier variant: `variant`, or the study's for the slice length."""
    from nws_jax.meta import model as model_lib
    return self.variant or model_lib.variant_for(self.slice_length)

  @property
  def conv_widths_used(self) -> tuple[int, ...]:
    from nws_jax.meta import model as model_lib
    return (tuple(self.conv_widths) if self.conv_widths is not None
            else model_lib.conv_widths_for(self.slice_length, self.variant_used))

  def to_json(self) -> dict:
    return dataclasses.asdict(self)

  @classmethod
  def from_json(cls, d: dict) -> 'MetaConfig':
    d = dict(d)
    if 'drop_failed' in d:  # saved before include_failed: failed models were used unless dropped
      d.setdefault('include_failed', not d.pop('drop_failed'))
    if 'bn_eval' not in d:  # saved before the study's network: the pre-issue one
      d.update(bn_eval='moving', variant='legacy_6layer')
    for name in ('properties', 'conv_widths', 'dense_widths'):
      if d.get(name) is not None:
        d[name] = tuple(d[name])
    return cls(**d)


@dataclasses.dataclass(frozen=True)
class EvalOptions:
  """What a run's evaluations draw. baseline_slices: the trees' slices per snapshot (not a flag);
  baseline_threads: OpenMP threads of the tree fits (scikit-learn's default, every core, spins
  and slows down many-fold when the cores are shared, as with JAX's pool next to it)."""
  ensemble_slices: int = knob(20, 'Random slices per test snapshot for the accuracy table and '
                              'the votes.')
  positions: int = knob(100, 'Evenly spaced slice positions for position.csv.')
  snapshot_slices: int = knob(4, 'Random slices per snapshot for snapshot.csv and part.csv.')
  baseline: bool = knob(True, 'Also fit the gradient-boosted-tree baseline.')
  baseline_slices: int = 4
  baseline_threads: int = knob(1, "OpenMP threads of the baseline's tree fits.")

  def to_json(self) -> dict:
    return dataclasses.asdict(self)

  def validate(self) -> None:
    """Raises ValueError (one line) for an option that is not a positive integer (or, for
    baseline, a bool): options also come from a saved evaluation.json."""
    import numpy as np
    for name in ('ensemble_slices', 'positions', 'snapshot_slices', 'baseline_slices',
                 'baseline_threads'):
      value = getattr(self, name)
      if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < 1:
        raise ValueError(f'{name} must be an integer of at least 1, got {value!r}')
    if not isinstance(self.baseline, (bool, np.bool_)):
      raise ValueError(f'baseline must be true or false, got {self.baseline!r}')
