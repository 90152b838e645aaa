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
from nws_jax import configs
from nws_jax import workdir_lock
from nws_jax.configs.meta import EvalOptions, MetaConfig
from nws_jax.configs.zoo import ZooConfig

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
# Overrides of the preset (unset: the scale's value), one per knob of the configs they change.
_ZOO_KNOBS = ('num_models', 'max_epochs', 'min_epochs', 'num_train', 'eval_size', 'datasets',
              'data_dir', 'seed')
_ZOO_NAMES = {'seed': 'zoo_seed'}
_META_KNOBS = ('slice_length', 'epochs', 'batch_size', 'learning_rate', 'conv_widths',
               'dense_widths', 'seed')
_META_NAMES = {'epochs': 'meta_epochs'}
_EVAL_KNOBS = ('ensemble_slices', 'positions', 'snapshot_slices', 'baseline')
configs.define_flags(ZooConfig, names=_ZOO_KNOBS, rename=_ZOO_NAMES,
                     overrides='Zoo training (both zoos)')
configs.define_flags(MetaConfig, names=_META_KNOBS, rename=_META_NAMES,
                     overrides='Meta-classifiers')
flags.DEFINE_string('snapshots', None, 'Meta-classifiers: snapshots trained on, FIRST-LAST.')
configs.define_flags(EvalOptions, names=_EVAL_KNOBS, overrides='Evaluation')


def choices(prog: str, name: str, allowed) -> list[str]:
  """The values of list flag `--name`, each once, in order; one-line exit 2 unless each is in
  `allowed` and there is at least one."""
  values = list(dict.fromkeys(FLAGS[name].value or []))
  if not values or any(v not in allowed for v in values):
    cli.fail(prog, f'--{name}: choose from {", ".join(allowed)}, got '
             f'{",".join(FLAGS[name].value or [])}')
  return values


def scale_from_flags():
  """The preset of --scale with every override flag given applied (ValueError, one line, for a
  value that cannot run)."""
  from nws_jax.meta import slices as slices_lib
  from nws_jax.configs import presets

  preset = presets.SCALES[FLAGS.scale]
  zoo = configs.overrides(ZooConfig, names=_ZOO_KNOBS, rename=_ZOO_NAMES)
  if 'max_epochs' in zoo and 'min_epochs' not in zoo:
    # A shorter run than the preset's still trains every epoch it is given.
    zoo['min_epochs'] = min(preset.fixed_zoo.min_epochs, zoo['max_epochs'])
  meta = configs.overrides(MetaConfig, names=_META_KNOBS, rename=_META_NAMES)
  if FLAGS['snapshots'].present:
    first, last = slices_lib.parse_snapshot_range(FLAGS.snapshots)
    if not 1 <= first <= last:
      raise ValueError(f'--snapshots {FLAGS.snapshots}: snapshots are numbered from 1, FIRST '
                       'before LAST')
    meta.update(first_snapshot=first, last_snapshot=last)
  scale = dataclasses.replace(
      preset, fixed_zoo=dataclasses.replace(preset.fixed_zoo, **zoo),
      mixed_zoo=dataclasses.replace(preset.mixed_zoo, **zoo),
      meta=dataclasses.replace(preset.meta, **meta),
      options=dataclasses.replace(preset.options, **configs.overrides(EvalOptions,
                                                                      names=_EVAL_KNOBS)))
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
      scale = scale_from_flags()
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
