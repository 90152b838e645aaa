r"""Trains a zoo of NWS CNNs in one vectorised program and saves its snapshots.

  python -m nws_jax.train_zoo --workdir=/tmp/zoo --num_models=8 --seed=0

Each model draws its training variations (PROTOCOL §1) from the seed; all train together; the
workdir gets config.json, models.csv, curves.csv and the Orbax snapshots ([20, n] per model).
Exit code 2 for bad flags, an unknown or unprepared dataset, or a workdir that is not empty
(unless --resume or --overwrite).
"""

import functools

from absl import app
from absl import flags
from absl import logging

from nws_jax import cli
from nws_jax import datasets as datasets_lib

FLAGS = flags.FLAGS
_DEFAULTS_NOTE = 'default: the offline datasets ' + ','.join(datasets_lib.OFFLINE_NAMES)

flags.DEFINE_string('workdir', None, 'Directory of the zoo (created; must be empty).')
flags.DEFINE_integer('num_models', 8, 'Number of models in the zoo.')
flags.DEFINE_integer('seed', 0, 'Seed of the zoo: configurations, initialisation, data order.')
flags.DEFINE_list('datasets', list(datasets_lib.OFFLINE_NAMES),
                  'Datasets to draw from, comma-separated, among: '
                  + ','.join(datasets_lib.ALL_NAMES) + f' ({_DEFAULTS_NOTE}).')
flags.DEFINE_enum('architecture', 'fixed', ['fixed', 'random'],
                  "'fixed': nws_fixed's architecture for every model; 'random': nws_main, the "
                  'five architecture properties drawn per model too.')
flags.DEFINE_enum('packing', 'depth', ['depth', 'conv', 'exact'],
                  'How models of different architectures share compiled programs (the same '
                  "models whichever): 'depth' pads those of one conv and dense depth to their "
                  "largest filter size and widths (fewest programs); 'conv' pads the dense width "
                  "only (little padding); 'exact' compiles one program per architecture. "
                  'BENCHMARKS.md compares them.')
flags.DEFINE_integer('slots_per_group', None, 'Models of a training program trained at once; '
                     'the others queue and each takes the slot of a model that stopped '
                     '(default: all at once).')
flags.DEFINE_bool('compact', False, 'Once a training program\'s queue is empty and at most half '
                  'of its slots are busy, move its models into a program of fewer slots (one '
                  'more compile per size; worth it for long runs).')
flags.DEFINE_integer('max_programs', None, 'Training programs alive at once: groups run in '
                     'waves of this many, each wave\'s programs released before the next '
                     '(default: 16 on a CPU, whose compiled programs use up memory maps; all '
                     'elsewhere).')
flags.DEFINE_integer('max_epochs', 8, 'Epoch cap (the study: 1000).')
flags.DEFINE_integer('min_epochs', 4, 'No early stopping before this epoch (the study: 20).')
flags.DEFINE_integer('num_train', 3000,
                     'Training examples per dataset before the 90/10 validation split, at most '
                     'what the dataset has; 0 means all (the study).')
flags.DEFINE_integer('num_test', None, 'Test examples per dataset (default: all).')
flags.DEFINE_integer('eval_size', 300,
                     'Cap on the examples of each evaluation set (validation, test, training '
                     'accuracy) per epoch; 0 means no cap.')
flags.DEFINE_integer('num_snapshots', 20, 'Snapshots kept per model (the study: 20).')
flags.DEFINE_enum('conv_impl', 'auto', ['auto', 'im2col', 'lax'],
                  'Convolution formulation; auto picks the measured best for the backend.')
flags.DEFINE_integer('steps_per_call', 64, 'Training steps per compiled call.')
flags.DEFINE_string('data_dir', None, 'TFDS data directory of prepared datasets.')
flags.DEFINE_bool('resume', False, 'Continue the zoo in a non-empty workdir from its last epoch.')
flags.DEFINE_bool('overwrite', False, 'Delete a non-empty workdir and start again.')
flags.DEFINE_bool('progress', True, 'Show a progress bar.')


_fail = functools.partial(cli.fail, 'train_zoo')


def summary(zoo) -> str:
  """The end-of-run table: per dataset, models, epochs and accuracies (mean over models)."""
  t = zoo.table
  from nws_jax import space

  lines = [f'{"":<24} {"models":>6} {"epochs":>7} {"train":>7} {"valid":>7} {"test":>7}'
           f' {"failed":>6}']

  def row(name, g):
    lines.append(f'{name:<24} {len(g):>6} {g.epochs.mean():>7.1f} {g.train_accuracy.mean():>7.3f}'
                 f' {g.valid_accuracy.mean():>7.3f} {g.test_accuracy.mean():>7.3f}'
                 f' {int(g.failed.sum()):>6}')

  for name, g in t.groupby('dataset', sort=True):
    row(f'dataset={name}', g)
  for code, g in t.groupby('initialization', sort=True):
    row(f'initialization={space.INITIALIZATIONS[code]}', g)
  row('all', t)
  lines.append('(mean test/valid/train accuracy, fractions; chance is 0.100; failed: test < 0.15)')
  return '\n'.join(lines)


def main(argv):
  cli.begin('train_zoo', argv, required=('workdir',))
  # Imported here so that --help and flag errors stay fast.
  from nws_jax import zoo_builder

  config = zoo_builder.ZooConfig(
      num_models=FLAGS.num_models, seed=FLAGS.seed, datasets=tuple(FLAGS.datasets),
      architecture=FLAGS.architecture, max_epochs=FLAGS.max_epochs, min_epochs=FLAGS.min_epochs,
      num_train=FLAGS.num_train or None, num_test=FLAGS.num_test,
      eval_size=FLAGS.eval_size or None, num_snapshots=FLAGS.num_snapshots,
      conv_impl=FLAGS.conv_impl, steps_per_call=FLAGS.steps_per_call, data_dir=FLAGS.data_dir,
      packing=FLAGS.packing, slots_per_group=FLAGS.slots_per_group, compact=FLAGS.compact,
      max_programs=FLAGS.max_programs)
  try:
    config.validate()
    zoo = zoo_builder.build_zoo(config, FLAGS.workdir, resume=FLAGS.resume,
                                overwrite=FLAGS.overwrite, progress=FLAGS.progress)
  except (ValueError, zoo_builder.WorkdirError) as e:
    _fail(str(e))
  logging.info('zoo written to %s', FLAGS.workdir)
  print(summary(zoo))
  print(f'snapshots of {zoo.num_models} models ({zoo.snapshots.num_snapshots} each, '
        f'{int(zoo.snapshots.lengths.max())} weights) float32 in {FLAGS.workdir}')


if __name__ == '__main__':
  app.run(main, flags_parser=cli.flags_parser('train_zoo'))
