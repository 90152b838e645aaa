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
import dataclasses
import signal
import sys

from absl import app
from absl import flags
from absl import logging

from nws_jax import cli
from nws_jax import configs
from nws_jax.configs import presets
from nws_jax.configs.zoo import ZooConfig

FLAGS = flags.FLAGS

flags.DEFINE_string('workdir', None, 'Directory of the zoo (created; must be empty).')
flags.DEFINE_enum('preset', None, list(presets.ZOO), 'Start from a named configuration '
                  '(configs/presets.py: the README\'s main job, the studies\' tiny and paper '
                  'scales, the notebooks\' zoo); zoo flags given on the command line override '
                  'its knobs.')
# One flag per knob of the zoo's configuration, with its help (configs/zoo.py).
configs.define_flags(ZooConfig)
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


def _config_from_flags() -> ZooConfig:
  """The zoo the flags ask for: --preset's (or the defaults), with the zoo flags given."""
  given = configs.from_flags(ZooConfig)
  if FLAGS.preset is None:
    return given
  return dataclasses.replace(presets.ZOO[FLAGS.preset], **{
      name: getattr(given, name) for name in configs.given(ZooConfig)})


def _config_to_resume() -> ZooConfig:
  """The workdir's saved config; a zoo flag given on the command line (or a knob --preset sets)
  must agree with it."""
  from nws_jax.zoo import builder as zoo_builder
  saved = zoo_builder.load_config(zoo_builder.resume_folder(FLAGS.workdir))
  asked = _config_from_flags()
  for name in configs.changed(saved, asked, configs.given(ZooConfig)):
    raise zoo_builder.WorkdirError(
        f'cannot resume {FLAGS.workdir} with --{name}={FLAGS[name].value}: it was started with '
        f'{name}={getattr(saved, name)} (leave the flag out)')
  if FLAGS.preset is not None:
    for name in configs.changed(saved, asked, [f.name for f in configs.knobs(ZooConfig)]):
      raise zoo_builder.WorkdirError(
          f'cannot resume {FLAGS.workdir} with --preset={FLAGS.preset}: it sets '
          f'{name}={getattr(asked, name)}, and the zoo was started with '
          f'{name}={getattr(saved, name)} (leave --preset out)')
  return saved


def main(argv):
  cli.begin('train_zoo', argv, required=('workdir',))
  # Imported here so that --help and flag errors stay fast.
  from nws_jax import distributed
  from nws_jax import workdir_lock
  from nws_jax.zoo import builder as zoo_builder

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
