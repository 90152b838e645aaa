"""The zoo job's configuration (`train_zoo`, `zoo_builder.build_zoo`): everything that determines
a zoo, one knob per field (same config -> same zoo). Its JSON is a zoo's config.json.

The defaults are the command line's (a zoo that trains in minutes on a CPU); the study's sizes
are the 'paper' preset (`configs.presets`). Light on purpose (no JAX).
"""

from __future__ import annotations

import dataclasses

from nws_jax import datasets as datasets_lib
from nws_jax import early_stopping
from nws_jax import space
from nws_jax.configs import check, knob

# Choices of knobs that the library's modules check too (they import them from here).
CONV_IMPLS = ('im2col', 'lax')      # cnn.py's convolution formulations
PACKINGS = ('depth', 'conv', 'exact')  # packing.py's bucketings
BN_EVALS = ('original', 'moving')   # zoo/step.py's readings of the evaluation
# Seeds that give distinct zoos: [0, SEEDS).
SEEDS = 2 ** 32


@dataclasses.dataclass(frozen=True)
class ZooConfig:
  """Everything that determines a zoo (same config -> same zoo); see each knob's help.

  num_train / num_test: examples per dataset (None: the dataset's default); num_train counts
  the training split before 10% of it is held out for validation. eval_size caps the
  validation, test and training-accuracy sets (None: whole sets).
  """
  num_models: int = knob(8, 'Number of models in the zoo.', minimum=1)
  seed: int = knob(0, 'Seed of the zoo: configurations, initialisation, data order.')
  datasets: tuple[str, ...] = knob(
      datasets_lib.OFFLINE_NAMES,
      'Datasets to draw from, comma-separated, among: ' + ','.join(datasets_lib.ALL_NAMES)
      + ' (default: the offline datasets ' + ','.join(datasets_lib.OFFLINE_NAMES) + ').',
      choices=datasets_lib.ALL_NAMES, item='dataset')
  architecture: str = knob(
      'fixed', "'fixed': nws_fixed's architecture for every model; 'random': nws_main, the "
      'five architecture properties drawn per model too.', choices=space.ARCHITECTURE_MODES)
  max_epochs: int = knob(8, 'Epoch cap (the study: 1000).')
  min_epochs: int = knob(4, 'No early stopping before this many exports (original reading: the '
                         'initialisation is export 1) or epochs (protocol reading); the study: '
                         '20.')
  num_train: int | None = knob(
      3000, 'Training examples per dataset before the 90/10 validation split, at most what the '
      'dataset has; 0 means all (the study).', minimum=10, zero_is_none=True)
  num_test: int | None = knob(None, 'Test examples per dataset (default: all).', minimum=10)
  eval_size: int | None = knob(
      300, 'Cap on the examples of each evaluation set (validation, test, training accuracy) '
      'per epoch; 0 means no cap.', minimum=10, zero_is_none=True)
  num_snapshots: int = knob(20, 'Snapshots kept per model (the study: 20).', minimum=1)
  conv_impl: str = knob('auto', 'Convolution formulation; auto picks the measured best for the '
                        'backend.', choices=('auto',) + CONV_IMPLS)
  steps_per_call: int = knob(64, 'Training steps per compiled call.', minimum=1)
  data_dir: str | None = knob(None, 'TFDS data directory of prepared datasets.')
  packing: str = knob(
      'depth', 'How models of different architectures share compiled programs (the same models '
      "whichever): 'depth' pads those of one conv and dense depth to their largest filter size "
      "and widths (fewest programs); 'conv' pads the dense width only (little padding); "
      "'exact' compiles one program per architecture. BENCHMARKS.md compares them.",
      choices=PACKINGS)
  slots_per_group: int | None = knob(
      None, 'Models of a training program trained at once; the others queue and each takes the '
      'slot of a model that stopped (default: all at once).', minimum=1)
  compact: bool = knob(
      False, "Once a training program's queue is empty and at most half of its slots are busy, "
      'move its models into a program of fewer slots (one more compile per size; worth it for '
      'long runs).')
  max_programs: int | None = knob(
      None, "Training programs alive at once: groups run in waves of this many, each wave's "
      'programs released before the next (default: 16 on a CPU, whose compiled programs use up '
      'memory maps; all elsewhere).', minimum=1)
  bn_eval: str = knob(
      'original', "How accuracies are measured: 'original' as the code that made the release "
      '(batch statistics, no dropout, augmented inputs for augmented nets, each pass updating '
      "the moving averages that the exports hold); 'moving': moving averages on clean images.",
      choices=BN_EVALS)
  early_stopping: str = knob(
      'original', "Reading of the stopping rules: 'original' as the release's code (the "
      'initialisation compared too, an unchanged epoch does not reset the fall count, judged '
      "from export --min_epochs); 'protocol': PROTOCOL §3's words.",
      choices=early_stopping.READINGS)

  def validate(self) -> None:
    """Raises ValueError with a one-line message for a config that cannot run."""
    if not 0 <= self.seed < SEEDS:
      # JAX's key holds 32 bits of the seed: 2**32 would train as 0 but sample other properties.
      raise ValueError(f'seed must be an integer in [0, 2**32), got {self.seed}')
    if not self.datasets:
      raise ValueError('datasets must name at least one dataset')
    check(self)
    if len(set(self.datasets)) != len(self.datasets):
      raise ValueError(f'datasets repeat a name: {",".join(self.datasets)}')
    self.stopping_rules()

  def stopping_rules(self) -> early_stopping.StoppingRules:
    return early_stopping.StoppingRules(min_epochs=self.min_epochs, max_epochs=self.max_epochs,
                                        reading=self.early_stopping)

  def to_json(self) -> dict:
    d = dataclasses.asdict(self)
    d['datasets'] = list(self.datasets)
    return d
