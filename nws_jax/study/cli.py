"""The flags every experiments/ script shares, and the main that runs a study with them.

A script checks its own knobs, then calls `run(name, title, argv, settings, study, *args)`: the
scale's preset with every flag given applied over it, the study workdir opened
(runner.open_study), `studies.<study>(study, *args)` run, and summary.md written, all holding
the workdir's lock (workdir_lock.hold). Usage errors, unusable inputs and a workdir that another
study is writing exit 2 with one line on stderr, touching nothing; a SIGTERM'd zoo build or
meta-classifier run exits 143 and continues with --resume.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import sys
from absl import flags

from nws_jax import cli
from nws_jax import workdir_lock

FLAGS = flags.FLAGS

flags.DEFINE_enum('scale', 'tiny', ['tiny', 'paper'], 'Preset sizes: tiny (this CPU, minutes) '
                  'or paper (the study\'s: 3,000 fixed and 13,000 mixed nets, up to 1,000 epochs, '
                  '5,000-weight slices; needs the TFDS datasets and an accelerator).')
flags.DEFINE_string('workdir', None, 'Directory of the study (must be empty, or a study with '
                    '--resume / --overwrite).')
flags.DEFINE_string('fixed_zoo', None, 'A finished fixed-architecture zoo to read instead of '
                    'building one in the workdir.')
flags.DEFINE_string('mixed_zoo', None, 'A finished mixed-architecture zoo to read instead of '
                    'building one in the workdir.')
flags.DEFINE_bool('resume', False, 'Continue the study in --workdir (same flags): finished zoos '
                  'and meta-classifier runs are reused, an interrupted zoo continues.')
flags.DEFINE_bool('overwrite', False, 'Delete the study in --workdir first (only a study\'s '
                  'workdir).')
flags.DEFINE_bool('progress', True, 'Show progress bars.')
# Overrides of the preset (unset: the scale's value).
flags.DEFINE_integer('num_models', None, 'Models per zoo built (both kinds).')
flags.DEFINE_integer('max_epochs', None, 'Zoo training: most epochs.')
flags.DEFINE_integer('min_epochs', None, 'Zoo training: no early stop before this epoch.')
flags.DEFINE_integer('num_train', None, 'Zoo training: examples per dataset.')
flags.DEFINE_integer('eval_size', None, 'Zoo training: cap of the evaluation sets.')
flags.DEFINE_list('datasets', None, 'Zoo training: datasets (offline: digits,shapes,gratings).')
flags.DEFINE_string('data_dir', None, 'TFDS data directory (prepared datasets).')
flags.DEFINE_integer('zoo_seed', None, 'Seed of the zoos built.')
flags.DEFINE_integer('slice_length', None, 'Meta-classifiers: weights per slice.')
flags.DEFINE_integer('meta_epochs', None, 'Meta-classifiers: training epochs.')
flags.DEFINE_string('snapshots', None, 'Meta-classifiers: snapshots trained on, FIRST-LAST.')
flags.DEFINE_integer('batch_size', None, 'Meta-classifiers: slices per step.')
flags.DEFINE_float('learning_rate', None, 'Meta-classifiers: Adam learning rate.')
flags.DEFINE_list('conv_widths', None, 'Meta-classifiers: conv widths (empty: PROTOCOL §5\'s).')
flags.DEFINE_list('dense_widths', None, 'Meta-classifiers: dense widths.')
flags.DEFINE_integer('seed', None, 'Meta-classifiers: seed of the split, weights and slices.')
flags.DEFINE_integer('ensemble_slices', None, 'Evaluation: slices per test snapshot (votes).')
flags.DEFINE_integer('positions', None, 'Evaluation: slice positions over the vector.')
flags.DEFINE_integer('snapshot_slices', None, 'Evaluation: slices per snapshot number and part.')
flags.DEFINE_bool('baseline', None, 'Evaluation: fit the gradient-boosted-tree baselines.')


def _given(name: str):
  return FLAGS[name].value if FLAGS[name].present else None


def _replace(obj, **changes):
  return dataclasses.replace(obj, **{k: v for k, v in changes.items() if v is not None})


def _ints(prog: str, name: str):
  if not FLAGS[name].present:
    return None
  return cli.int_list(prog, name)


def choices(prog: str, name: str, allowed) -> list[str]:
  """The values of list flag `--name`, each once, in order; one-line exit 2 unless each is in
  `allowed` and there is at least one."""
  values = list(dict.fromkeys(FLAGS[name].value or []))
  if not values or any(v not in allowed for v in values):
    cli.fail(prog, f'--{name}: choose from {", ".join(allowed)}, got '
             f'{",".join(FLAGS[name].value or [])}')
  return values


def scale_from_flags(prog: str):
  """The preset of --scale with every override flag given applied."""
  from nws_jax.meta import slices as slices_lib
  from nws_jax.study import scale as scale_lib

  preset = scale_lib.SCALES[FLAGS.scale]
  zoo = dict(num_models=_given('num_models'), max_epochs=_given('max_epochs'),
             min_epochs=_given('min_epochs'), num_train=_given('num_train'),
             eval_size=_given('eval_size'), data_dir=_given('data_dir'), seed=_given('zoo_seed'),
             datasets=tuple(FLAGS.datasets) if FLAGS['datasets'].present else None)
  if zoo['max_epochs'] is not None and zoo['min_epochs'] is None:
    # A shorter run than the preset's still trains every epoch it is given.
    zoo['min_epochs'] = min(preset.fixed_zoo.min_epochs, zoo['max_epochs'])
  first = last = None
  if FLAGS['snapshots'].present:
    first, last = slices_lib.parse_snapshot_range(FLAGS.snapshots)
    if not 1 <= first <= last:
      raise ValueError(f'--snapshots {FLAGS.snapshots}: snapshots are numbered from 1, FIRST '
                       'before LAST')
  conv = _ints(prog, 'conv_widths')
  meta = _replace(preset.meta, slice_length=_given('slice_length'), epochs=_given('meta_epochs'),
                  first_snapshot=first, last_snapshot=last, batch_size=_given('batch_size'),
                  learning_rate=_given('learning_rate'), dense_widths=_ints(prog, 'dense_widths'),
                  seed=_given('seed'))
  if conv is not None:
    meta = dataclasses.replace(meta, conv_widths=conv or None)
  options = _replace(preset.options, ensemble_slices=_given('ensemble_slices'),
                     positions=_given('positions'), snapshot_slices=_given('snapshot_slices'),
                     baseline=_given('baseline'))
  scale = dataclasses.replace(preset, fixed_zoo=_replace(preset.fixed_zoo, **zoo),
                              mixed_zoo=_replace(preset.mixed_zoo, **zoo), meta=meta,
                              options=options)
  for config in (scale.fixed_zoo, scale.mixed_zoo, scale.meta, scale.options):
    config.validate()
  return scale


def run(name: str, title: str, argv, settings: dict, study_fn: str, *args) -> None:
  """The main of experiments/<name>.py: studies.<study_fn>(study, *args) runs the study and
  returns its summary's sections; settings: the study's own knobs (saved in study.json). The
  heavy imports (JAX, Orbax, scikit-learn) come after the flag checks, so those stay fast."""
  fail = functools.partial(cli.fail, name)
  cli.begin(name, argv, required=('workdir',))
  from nws_jax import zoo as zoo_lib
  from nws_jax.zoo import builder as zoo_builder
  from nws_jax.meta import store
  from nws_jax.study import report
  from nws_jax.study import runner
  from nws_jax.study import studies

  try:
    # One writer per study workdir: a second study on it is refused before any check.
    with workdir_lock.hold(FLAGS.workdir, name):
      scale = scale_from_flags(name)
      study = runner.open_study(name, scale, FLAGS.workdir, settings=settings,
                                zoos={'fixed': FLAGS.fixed_zoo, 'mixed': FLAGS.mixed_zoo},
                                resume=FLAGS.resume, overwrite=FLAGS.overwrite,
                                progress=FLAGS.progress)
      sections = getattr(studies, study_fn)(study, *args)
      text = report.summary(study, title, sections, runner.command_line())
      study.write_text(text, 'summary.md')
  except (zoo_builder.Preempted, runner.Terminated) as e:
    print(f'{name}: {e}', file=sys.stderr)
    sys.exit(143)
  except (ValueError, OSError, runner.StudyError, zoo_lib.ZooError, zoo_builder.WorkdirError,
          store.MetaWorkdirError, workdir_lock.LockedError) as e:
    fail(str(e))
  print(text)
  print(f'{name}: results in {os.path.abspath(FLAGS.workdir)} (summary.md, CSVs and PNGs)')
