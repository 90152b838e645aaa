"""Each knob declared once (configs/): flags, validation, presets and --resume derived from the
config dataclasses. Pure and fast, but for two command lines that stop before any training."""

import dataclasses
import json
import subprocess
import sys

import pytest
from absl import flags

from nws_jax import configs
from nws_jax import space
from nws_jax.configs import presets
from nws_jax.configs.zoo import ZooConfig


def _flags(argv=()):
  values = flags.FlagValues()
  configs.define_flags(ZooConfig, values)
  values(['prog', *argv])
  return values


def test_every_zoo_knob_is_a_flag_with_its_help_and_default():
  values = _flags()
  for field in dataclasses.fields(ZooConfig):
    flag = values[field.name]
    assert field.metadata['help'] in flag.help and len(field.metadata['help']) > 20
    default = field.default
    assert flag.default == (list(default) if isinstance(default, tuple) else default)
  assert configs.from_flags(ZooConfig, values) == ZooConfig()
  assert configs.given(ZooConfig, values) == []
  assert 'enum' in values['architecture'].flag_type()  # choices become an enum


def test_flags_become_the_config_with_zero_meaning_all_and_lists_as_tuples():
  values = _flags(['--num_models=3', '--datasets=shapes,digits', '--num_train=0',
                   '--eval_size=0', '--num_test=50', '--compact', '--architecture=random'])
  config = configs.from_flags(ZooConfig, values)
  assert config == ZooConfig(num_models=3, datasets=('shapes', 'digits'), num_train=None,
                             eval_size=None, num_test=50, compact=True, architecture='random')
  assert configs.given(ZooConfig, values) == ['num_models', 'datasets', 'architecture',
                                              'num_train', 'num_test', 'eval_size', 'compact']
  assert configs.changed(ZooConfig(), config, ['seed', 'num_models']) == ['num_models']


@pytest.mark.parametrize('change,message', [
    (dict(num_models=0), 'num_models must be at least 1, got 0'),
    (dict(datasets=('digits', 'imagenet')), "unknown dataset 'imagenet'; choose from: digits"),
    (dict(architecture='tiny'), "unknown architecture 'tiny'; choose from: fixed, random"),
    (dict(packing='tight'), "unknown packing 'tight'; choose from: depth, conv, exact"),
    (dict(conv_impl='fft'), "unknown conv_impl 'fft'; choose from: auto, im2col, lax"),
    (dict(bn_eval='batch'), "unknown bn_eval 'batch'"),
    (dict(early_stopping='eager'), "unknown early_stopping 'eager'"),
    (dict(num_train=5), 'num_train must be at least 10, got 5'),
    (dict(slots_per_group=0), 'slots_per_group must be at least 1'),
    (dict(max_programs=0), 'max_programs must be at least 1'),
    (dict(steps_per_call=0), 'steps_per_call must be at least 1'),
    (dict(num_snapshots=0), 'num_snapshots must be at least 1'),
    (dict(seed=2 ** 32), 'seed must be an integer in [0, 2**32)'),
    (dict(datasets=()), 'datasets must name at least one dataset'),
    (dict(datasets=('digits', 'digits')), 'datasets repeat a name'),
    (dict(min_epochs=9, max_epochs=8), 'min_epochs must be in [0, max_epochs=8]'),
])
def test_one_validation_names_the_bad_knob(change, message):
  with pytest.raises(ValueError) as error:
    dataclasses.replace(ZooConfig(), **change).validate()
  assert message in str(error.value) and '\n' not in str(error.value)


def test_presets_are_valid_and_the_studies_and_notebooks_use_them():
  for preset in presets.ZOO.values():
    preset.validate()
  assert presets.PAPER.num_train is None and presets.PAPER.eval_size is None  # whole datasets
  assert presets.PAPER.max_epochs == 1000 and presets.PAPER.min_epochs == 20
  assert presets.PAPER_MIXED.architecture == 'random' and presets.TINY_MIXED.num_models == 16
  from nws_jax.study import notebook
  for scale in presets.SCALES.values():
    for config in (scale.fixed_zoo, scale.mixed_zoo, scale.meta, scale.options):
      config.validate()
  assert presets.SCALES['tiny'].fixed_zoo is presets.TINY
  assert presets.SCALES['paper'].mixed_zoo is presets.PAPER_MIXED
  assert notebook.tiny_zoo_config() is presets.NOTEBOOK
  assert notebook.tiny_meta_config() is presets.NOTEBOOK_META
  assert presets.ZOO['main'].architecture in space.ARCHITECTURE_MODES


def test_a_knob_default_must_be_immutable():
  with pytest.raises(TypeError, match='immutable'):
    configs.knob(['digits'], 'help text')


def _resume(workdir, *args):
  return subprocess.run([sys.executable, '-m', 'nws_jax.train_zoo', f'--workdir={workdir}',
                         '--resume', '--noprogress', *args],
                        capture_output=True, text=True, timeout=300)


def test_resume_refuses_a_changed_knob_from_a_flag_or_a_preset(tmp_path):
  """A zoo's saved config.json (as an older version wrote it, flat) against the command line."""
  saved = presets.TINY.to_json()
  (tmp_path / 'config.json').write_text(json.dumps({'zoo': saved}))
  before = sorted(p.name for p in tmp_path.iterdir())
  result = _resume(tmp_path, '--max_epochs=9')
  assert result.returncode == 2
  assert result.stderr.strip().splitlines()[-1] == (
      f'train_zoo: error: cannot resume {tmp_path} with --max_epochs=9: it was started with '
      'max_epochs=5 (leave the flag out)')
  result = _resume(tmp_path, '--preset=main')
  assert result.returncode == 2
  assert result.stderr.strip().splitlines()[-1] == (
      f'train_zoo: error: cannot resume {tmp_path} with --preset=main: it sets num_models=64, '
      'and the zoo was started with num_models=32 (leave --preset out)')
  assert sorted(p.name for p in tmp_path.iterdir()) == before


def test_meta_knobs_are_flags_with_int_lists_and_empty_lists_as_none():
  from nws_jax.configs.meta import EvalOptions, MetaConfig
  values = flags.FlagValues()
  configs.define_flags(MetaConfig, values)
  configs.define_flags(EvalOptions, values)
  assert 'snapshots' not in values and 'variant' not in values and 'valid_slices' not in values
  values(['prog'])
  assert configs.from_flags(MetaConfig, values) == MetaConfig()
  assert configs.from_flags(EvalOptions, values) == EvalOptions()
  values(['prog', '--conv_widths=4,8', '--dense_widths=16', '--properties=optimizer',
          '--positions=7', '--nobaseline'])
  config = configs.from_flags(MetaConfig, values, first_snapshot=1, last_snapshot=5)
  assert config == MetaConfig(conv_widths=(4, 8), dense_widths=(16,), properties=('optimizer',),
                              first_snapshot=1, last_snapshot=5)
  assert configs.from_flags(EvalOptions, values) == EvalOptions(positions=7, baseline=False)
  assert configs.given(EvalOptions, values) == ['positions', 'baseline']
  values['conv_widths'].parse('4,x')
  with pytest.raises(ValueError, match='--conv_widths must be comma-separated integers, got 4,x'):
    configs.from_flags(MetaConfig, values)


@pytest.mark.parametrize('change,message', [
    (dict(epochs=0), 'epochs must be at least 1, got 0'),
    (dict(part='middle'), "unknown part 'middle'; choose from: all, conv, dense"),
    (dict(bn_eval='running'), "unknown bn_eval 'running'; choose from: batch, moving"),
    (dict(learning_rate=float('nan')), 'learning_rate must be a positive number'),
    (dict(valid_slices=0), 'valid_slices must be at least 1'),
])
def test_meta_validation_names_the_bad_knob(change, message):
  from nws_jax.configs.meta import MetaConfig
  with pytest.raises(ValueError, match=message.replace('(', r'\(')):
    dataclasses.replace(MetaConfig(slice_length=500), **change).validate()


def _readme_flags(command: str) -> list[str]:
  """The knob flags of `python -m nws_jax.<command>` in the README's first fresh-machine line."""
  import os
  import shlex
  readme = open(os.path.join(os.path.dirname(__file__), '..', 'README.md')).read()
  line = next(l for l in readme.splitlines() if 'nws_jax.train_meta' in l and 'pip install' in l)
  words = shlex.split(line)
  start = words.index(f'nws_jax.{command}') + 1
  end = words.index('&&', start) if '&&' in words[start:] else len(words)
  skip = ('--workdir', '--zoo', '--overwrite')
  return [w for w in words[start:end] if not w.startswith(skip)]


def test_the_readme_main_job_is_the_main_presets():
  """The README's two commands and `--preset=main` run the same zoo and meta-classifier."""
  from nws_jax.configs.meta import EvalOptions, MetaConfig
  values = flags.FlagValues()
  configs.define_flags(ZooConfig, values)
  values(['prog', *_readme_flags('train_zoo')])
  assert configs.from_flags(ZooConfig, values) == presets.MAIN
  values = flags.FlagValues()
  configs.define_flags(MetaConfig, values)
  configs.define_flags(EvalOptions, values)
  values(['prog', *_readme_flags('train_meta')])
  assert (configs.from_flags(MetaConfig, values), configs.from_flags(EvalOptions, values)) \
      == presets.META['main']
