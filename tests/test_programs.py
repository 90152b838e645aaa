"""The zoo's compiled programs (nws_jax/zoo/programs.py): one owner keyed by signature, a
bundle per wave, a closed wave's programs released; and the loop's progress text."""

import dataclasses

import numpy as np
import pytest

from nws_jax import early_stopping
from nws_jax import input_pipeline
from nws_jax import space
from nws_jax.zoo import loop
from nws_jax.zoo import programs as programs_lib
from nws_jax.zoo import trainer as trainer_lib

NAMES = ('gratings', 'shapes')
BASE = space.ModelConfig(dataset='gratings', lrate=0.004, batch_size=64, batch_norm=True,
                         augmentation=False, optimizer=0, activation=0, initialization=2,
                         filter_size=3, depth_conv=3, depth_fc=2, width_conv=4, width_fc=64)
# Two batch sizes: two groups of one padded architecture; one program a wave: two waves.
CONFIGS = [BASE, dataclasses.replace(BASE, optimizer=1), dataclasses.replace(BASE, batch_size=32)]


def _trainer(tiny_datasets, cache, **options):
  data = input_pipeline.stack(tiny_datasets)
  sizes = [input_pipeline.balanced_size(d.train_labels) for d in tiny_datasets]
  cfg = trainer_lib.TrainConfig(rules=early_stopping.StoppingRules(min_epochs=1, max_epochs=2),
                                **options)
  return trainer_lib.ZooTrainer(CONFIGS, [0, 1, 2], data, NAMES, sizes, cfg, cache=cache)


def test_the_cache_builds_a_program_once_per_signature_and_releases_only_what_it_is_told():
  built = []

  def build(*args):
    built.append(args)
    return object()

  def other(*args):
    return object()

  cache = programs_lib.ProgramCache()
  a, b = cache.get(build, 1, 'x'), cache.get(build, 2, 'x')
  assert cache.get(build, 1, 'x') is a and built == [(1, 'x'), (2, 'x')]
  c = cache.get(other, 1, 'x')  # Another builder with the same arguments: its own program.
  assert c is not a and len(cache) == 3
  assert cache.release({(build, 1, 'x'), (other, 1, 'x')}) == 2
  assert cache.keys() == {(build, 2, 'x')} and cache.get(build, 2, 'x') is b
  assert cache.get(build, 1, 'x') is not a  # Built again after its release.
  assert cache.release(set()) == 0 and len(cache) == 2
  assert cache.release() == 2 and len(cache) == 0


def test_a_wave_holds_its_groups_programs_and_the_next_wave_releases_them(tiny_datasets):
  cache = programs_lib.ProgramCache()
  trainer = _trainer(tiny_datasets, cache, max_programs=1)
  assert trainer.num_waves == 2 and trainer.open_groups() == [0]
  first = trainer.programs
  assert set(first.groups) == {0} and [a.groups for a in first.archs] == [(0,)]
  assert first.groups[0].graph_eval is not None and first.archs[0].evaluate is None
  assert cache.keys() == first.keys
  trainer.next_wave(trainer.init_state())
  second = trainer.programs
  assert set(second.groups) == {1} and cache.keys() == second.keys
  # The batch-64 programs (training, export evaluation) were released; those of the padded
  # architecture alone (init, refill, flatten) and the shape-free ones (order, take) stay.
  assert {key[0] for key in first.keys - second.keys} == {programs_lib.train_program,
                                                         programs_lib.graph_eval_program}
  assert first.groups[0].train is not second.groups[1].train
  assert first.groups[0].refill is second.groups[1].refill
  assert first.archs[0].init is second.archs[0].init and len(first.keys & second.keys) == 5


def test_zoos_of_one_process_share_the_programs_of_equal_signature(tiny_datasets):
  cache = programs_lib.ProgramCache()
  one, two = (_trainer(tiny_datasets, cache, bn_eval='moving') for _ in range(2))
  assert one.programs.groups[0].train is two.programs.groups[0].train
  assert one.programs.archs[0].evaluate is two.programs.archs[0].evaluate
  assert one.programs.groups[0].graph_eval is None
  apart = _trainer(tiny_datasets, programs_lib.ProgramCache(), bn_eval='moving')
  assert apart.programs.groups[0].train is not one.programs.groups[0].train


def test_progress_text_names_the_wave_programs_slots_queue_and_accuracy(tiny_datasets):
  trainer = _trainer(tiny_datasets, programs_lib.ProgramCache(), max_programs=1,
                     slots_per_group=1)
  running = np.array([True, True, True])
  acc = np.array([[0.1, 0.5, 0.4], [0.2, 0.25, 0.3], [np.nan] * 3])
  text = loop.wave_text(trainer, running, acc, trained=np.array([True, False, False]))
  assert text == 'wave 1/2, programs 1/1, slots busy 1/1, queued 2, valid acc 0.500'
  assert loop.wave_text(trainer, running, acc, np.zeros(3, bool)).endswith('queued 2')
  assert loop.round_text(text, 3, 1, 4) == text + ', round 3 25%'
  assert loop.round_text('', 1, 2, 2) == 'round 1 100%'


@pytest.mark.parametrize('n,most,want', [(12, 5, 4), (7, 3, 1), (8, 8, 8), (6, 0, 1)])
def test_divisor_at_most(n, most, want):
  assert programs_lib.divisor_at_most(n, most) == want
