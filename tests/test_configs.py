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
  from nws_jax.study import notebook, scale
  assert scale.SCALES['tiny'].fixed_zoo is presets.TINY
  assert scale.SCALES['paper'].mixed_zoo is presets.PAPER_MIXED
  assert notebook.tiny_zoo_config() is presets.NOTEBOOK
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
