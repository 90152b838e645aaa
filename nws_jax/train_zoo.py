r"""Trains a zoo of NWS CNNs in one vectorised program and saves its snapshots.

  python -m nws_jax.train_zoo --workdir=/tmp/zoo --num_models=8 --seed=0

Each model draws its training variations (PROTOCOL §1) from the seed; all train together; the
workdir gets config.json, models.csv, curves.csv and the Orbax snapshots ([20, n] per model).
The models are sharded over every device; with --coordinator_address (or --multihost on a TPU
pod) several processes train one zoo. The training state is checkpointed every
--checkpoint_every epochs and on SIGTERM (exit code 143 then); `--workdir=DIR --resume`
continues with the flags saved in DIR. Exit code 2 for bad flags, an unknown or unprepared
dataset, a workdir that is not empty (unless --resume or --overwrite) or a checkpoint that
cannot be read.
"""

import contextlib
import signal
import sys

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
flags.DEFINE_integer('min_epochs', 4, 'No early stopping before this many exports (original '
                     'reading: the initialisation is export 1) or epochs (protocol reading); '
                     'the study: 20.')
flags.DEFINE_enum('bn_eval', 'original', ['original', 'moving'],
                  "How accuracies are measured: 'original' as the code that made the release "
                  '(batch statistics, no dropout, augmented inputs for augmented nets, each pass '
                  "updating the moving averages that the exports hold); 'moving': moving "
                  'averages on clean images.')
flags.DEFINE_enum('early_stopping', 'original', ['original', 'protocol'],
                  "Reading of the stopping rules: 'original' as the release's code (the "
                  'initialisation compared too, an unchanged epoch does not reset the fall '
                  "count, judged from export --min_epochs); 'protocol': PROTOCOL §3's words.")
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
flags.DEFINE_bool('resume', False, 'Continue the zoo in --workdir from its last checkpoint, with '
                  'the flags it was started with (other zoo flags must be left out or equal).')
flags.DEFINE_integer('checkpoint_every', 1, 'Epochs (rounds) between checkpoints of the whole '
                     'training state; a SIGTERM checkpoints the epoch under way too.')
flags.DEFINE_string('coordinator_address', None, 'host:port of process 0, to train one zoo with '
                    'several processes (each needs --num_processes and --process_id; the '
                    'workdir must be on a filesystem all of them see).')
flags.DEFINE_integer('num_processes', None, 'Processes of a multi-process run.')
flags.DEFINE_integer('process_id', None, 'This process\'s index in [0, --num_processes).')
flags.DEFINE_bool('multihost', False, 'Join the processes of a cluster that JAX detects by '
                  'itself (a TPU pod, SLURM) with jax.distributed.initialize().')
flags.DEFINE_bool('overwrite', False, 'Replace the zoo in --workdir (only a zoo train_zoo or '
                  'import_nws wrote) with a new one, built beside it in .<name>.replacing and '
                  'renamed into place once complete; the old zoo is whole until then.')
flags.DEFINE_bool('progress', True, 'Show a progress bar.')


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


# Flags that say what zoo is built (ZooConfig's fields), and how each becomes a field value.
_ZOO_FLAGS = {
    'num_models': None, 'seed': None, 'datasets': tuple, 'architecture': None,
    'max_epochs': None, 'min_epochs': None, 'num_train': lambda v: v or None,
    'num_test': None, 'eval_size': lambda v: v or None, 'num_snapshots': None,
    'conv_impl': None, 'steps_per_call': None, 'data_dir': None, 'packing': None,
    'slots_per_group': None, 'compact': None, 'max_programs': None, 'bn_eval': None,
    'early_stopping': None}


def _config_from_flags():
  from nws_jax import zoo_builder
  return zoo_builder.ZooConfig(**{name: (convert or (lambda v: v))(FLAGS[name].value)
                                  for name, convert in _ZOO_FLAGS.items()})


def _config_to_resume():
  """The workdir's saved config; a zoo flag given on the command line must agree with it."""
  from nws_jax import zoo_builder
  saved = zoo_builder.load_config(zoo_builder.resume_folder(FLAGS.workdir))
  given = _config_from_flags()
  for name in _ZOO_FLAGS:
    if FLAGS[name].present and getattr(given, name) != getattr(saved, name):
      raise zoo_builder.WorkdirError(
          f'cannot resume {FLAGS.workdir} with --{name}={FLAGS[name].value}: it was started with '
          f'{name}={getattr(saved, name)} (leave the flag out)')
  return saved


def main(argv):
  cli.begin('train_zoo', argv, required=('workdir',))
  # Imported here so that --help and flag errors stay fast.
  from nws_jax import distributed
  from nws_jax import workdir_lock
  from nws_jax import zoo_builder

  def fail(message):
    print(f'train_zoo: error: {cli.one_line(message)}', file=sys.stderr)
    distributed.exit_now(2)  # Several processes: at once, not through the shutdown barrier.

  try:
    distributed.initialize(FLAGS.coordinator_address, FLAGS.num_processes, FLAGS.process_id,
                           auto=FLAGS.multihost)
    # The lock first (process 0 holds it for all): a second writer reads nothing, not even the
    # saved config (build_zoo takes it again, re-entrantly).
    with (workdir_lock.hold(FLAGS.workdir, 'train_zoo') if distributed.is_primary()
          else contextlib.nullcontext()):
      if FLAGS.resume and not FLAGS.overwrite:
        config = _config_to_resume()
      else:
        config = _config_from_flags()
      config.validate()
      zoo = zoo_builder.build_zoo(config, FLAGS.workdir, resume=FLAGS.resume,
                                  overwrite=FLAGS.overwrite, progress=FLAGS.progress,
                                  checkpoint_every=FLAGS.checkpoint_every)
  except (ValueError, zoo_builder.WorkdirError, workdir_lock.LockedError) as e:
    fail(str(e))
  except OSError as e:  # A full disk or a permission error while saving.
    fail(f'cannot write in {FLAGS.workdir}: {e} (a checkpoint already saved there is intact: '
         'continue with --resume once this is fixed)')
  except zoo_builder.Preempted as e:
    print(f'train_zoo: {e}', file=sys.stderr)
    distributed.exit_now(128 + signal.SIGTERM)
  if distributed.is_primary():
    logging.info('zoo written to %s', FLAGS.workdir)
    print(summary(zoo))
    print(f'snapshots of {zoo.num_models} models ({zoo.snapshots.num_snapshots} each, '
          f'{int(zoo.snapshots.lengths.max())} weights) float32 in {FLAGS.workdir}')


if __name__ == '__main__':
  app.run(main, flags_parser=cli.flags_parser('train_zoo'))
