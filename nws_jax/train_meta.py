r"""Trains meta-classifiers on a zoo's weight snapshots and evaluates them (PROTOCOL §5, §6).

  python -m nws_jax.train_meta --zoo=workdirs/zoo --workdir=workdirs/meta
  python -m nws_jax.train_meta --nws_csv=NWS/train.csv --nws_test_csv=NWS/test.csv \
      --workdir=workdirs/meta_release

The nets are a zoo of ours (--zoo) or the published NWS release where it lies (--nws_csv: split
CSVs and net folders of PROTOCOL §4, read slice by slice from disk, never loaded whole; with
--nws_test_csv its nets are the meta-test side, as in the release's split). Several CSVs may be
given, comma-separated, so the release and zoos exported with export_nws can be mixed.

One meta-classifier per property (default: every property that varies in the zoo), all trained in
one vectorised program on random slices of the snapshots; then the evaluations (accuracy against
chance, the original's per-net score, votes over many slices, accuracy against slice position and
snapshot number, conv versus dense part) and a gradient-boosted-tree baseline, each as CSV and PNG
in the workdir. Models flagged failed in models.csv are left out unless --include_failed (the
threshold and how many were left out are printed and kept in run.json); each categorical
property is scored on a class-balanced part of the meta-test side, as in the original.
--evaluate_only reruns the evaluations from the saved checkpoint (with the run's evaluation
options, except those given as flags). Exit code 2, with one line on stderr and the workdir left
as it was, for bad flags (out-of-range numbers too), a missing or damaged zoo (files that are not
JSON or CSV, truncated, a snapshots checkpoint Orbax cannot read), an unknown or constant
property, a slice longer than the weights, an empty snapshot range, a damaged release net (unless
--on_damaged=skip), a workdir inside the nets read (the zoo), a non-empty workdir (unless
--overwrite; never one that holds a zoo or a release, or the nets read), a workdir that another
nws_jax command is writing (its lock, nws_jax/workdir_lock.py), or, with --evaluate_only, a
workdir that holds no intact run; and out of disk space (one line naming what it was writing). A
run is written into a hidden sibling of the workdir and moved into place once complete.
"""

import dataclasses
import functools

from absl import app
from absl import flags

from nws_jax import cli
from nws_jax import configs
from nws_jax import files
from nws_jax import workdir_lock
from nws_jax.configs import presets
from nws_jax.configs.meta import EvalOptions, MetaConfig

FLAGS = flags.FLAGS

flags.DEFINE_string('zoo', None, 'Zoo workdir written by nws_jax.train_zoo (or import_nws).')
flags.DEFINE_list('nws_csv', [], 'Split CSVs of the NWS release format to read directly '
                  '(instead of --zoo), comma-separated.')
flags.DEFINE_list('nws_test_csv', [], 'Split CSVs whose nets are the meta-test side (the '
                  'release\'s test split); without them the run splits all nets itself.')
flags.DEFINE_enum('on_damaged', 'fail', ['fail', 'skip'], 'A damaged release net (missing or '
                  'wrong-size file, meta.csv at odds with its CSV row, non-finite weights) fails '
                  'the run, or is left out and listed in damaged_nets.csv; skip reads every '
                  'weight file once first (as --scan_nans), so nothing is found mid-run.')
flags.DEFINE_bool('scan_nans', False, 'Read every release weight file once before training to '
                  'find non-finite values (slower; without it they are caught in the slices read, '
                  'which fails the run).')
flags.DEFINE_string('workdir', None, 'Directory of the meta-classifier run (must be empty).')
flags.DEFINE_string('snapshots', '11-20', 'Snapshot numbers to train on, FIRST-LAST or N (1-20).')
flags.DEFINE_enum('preset', None, list(presets.META), 'Start from a named run (configs/presets.py: '
                  "the README's main job, the notebooks' tiny run); flags given on the command "
                  'line override its knobs.')
# One flag per knob of the run's configuration and evaluations, with its help (configs/meta.py).
configs.define_flags(MetaConfig)
configs.define_flags(EvalOptions)
flags.DEFINE_bool('evaluate_only', False, 'Re-run the evaluations of the run in --workdir from '
                  'its checkpoint, without training.')
flags.DEFINE_bool('overwrite', False, 'Delete a non-empty workdir and start again.')
flags.DEFINE_bool('progress', True, 'Show a progress bar.')


_fail = functools.partial(cli.fail, 'train_meta')


def main(argv):
  cli.begin('train_meta', argv, required=('workdir',))
  if FLAGS.zoo and (FLAGS.nws_csv or FLAGS.nws_test_csv):
    _fail('give either --zoo or --nws_csv, not both')
  if FLAGS.nws_test_csv and not FLAGS.nws_csv:
    _fail('--nws_test_csv needs --nws_csv (the training nets)')
  if not FLAGS.evaluate_only and not FLAGS.zoo and not FLAGS.nws_csv:
    _fail('--zoo or --nws_csv is required (the nets to read)')
  # Imported here so that --help and flag errors stay fast.
  from nws_jax import zoo as zoo_lib
  from nws_jax.meta import pipeline
  from nws_jax.meta import slices as slices_lib
  from nws_jax.meta import source as source_lib
  from nws_jax.meta import store

  try:
    # One writer per workdir: a second train_meta on it is refused before anything.
    with workdir_lock.hold(FLAGS.workdir, 'train_meta'):
      if FLAGS.evaluate_only:
        # The run's saved evaluation options, except where a flag is given.
        changed = {name: FLAGS[name].value for name in configs.given(EvalOptions)}
        if FLAGS.nws_csv:
          _fail('--evaluate_only reads the nets the run was trained on, or another --zoo')
        results = pipeline.evaluate_workdir(FLAGS.workdir, options=changed, zoo_dir=FLAGS.zoo)
      else:
        first, last = slices_lib.parse_snapshot_range(FLAGS.snapshots)
        if FLAGS.preset is None:
          config = configs.from_flags(MetaConfig, first_snapshot=first, last_snapshot=last)
          options = configs.from_flags(EvalOptions)
        else:
          config, options = presets.META[FLAGS.preset]
          config = dataclasses.replace(config, **configs.overrides(MetaConfig))
          if FLAGS['snapshots'].present:
            config = dataclasses.replace(config, first_snapshot=first, last_snapshot=last)
          options = dataclasses.replace(options, **configs.overrides(EvalOptions))
        if FLAGS.nws_csv:
          source = source_lib.from_release(FLAGS.nws_csv, FLAGS.nws_test_csv,
                                           on_damaged=FLAGS.on_damaged, scan_nans=FLAGS.scan_nans,
                                           progress=FLAGS.progress)
        else:
          source = FLAGS.zoo
        results = pipeline.train_and_evaluate(config, source, FLAGS.workdir, options=options,
                                              overwrite=FLAGS.overwrite, progress=FLAGS.progress)
  except (ValueError, OSError, zoo_lib.ZooError, store.MetaWorkdirError,
          workdir_lock.LockedError) as e:
    _fail(files.no_space_error(e, FLAGS.workdir) or e)  # a full disk: what was written
  print(pipeline.summary(results))
  failed = store.read_failed(FLAGS.workdir)  # None for a run saved before it was recorded
  if failed is not None:
    print(pipeline.describe_failed(failed))
  if FLAGS.nws_csv and len(source.reader.damaged):
    print(f'left out {len(source.reader.damaged)} damaged nets (listed in '
          f'{pipeline.DAMAGED_FILE})')
  print(f'results in {FLAGS.workdir}: accuracy.csv, per_net.csv, ensemble.csv, position.csv, '
        'snapshot.csv, part.csv' + (', baseline.csv' if results.baseline is not None else '')
        + ' and PNGs')


if __name__ == '__main__':
  app.run(main, flags_parser=cli.flags_parser('train_meta'))
