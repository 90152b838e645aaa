"""A random-architecture zoo as a user launches it, `python -m nws_jax.train_zoo` on 1 and 4
(virtual CPU) devices: bit for bit the same zoo (the fixed-architecture runs are
test_scale_out.py)."""

from helpers import assert_same_zoo
from helpers import run_zoo_cli as run

# The one model of seed 146355 draws the architecture and training of model 1 of seed 11 in
# docs/scale-out.md (filter 7, five conv and four dense layers of width 12 and 128, batch 32,
# momentum, ELU, augmented, digits; only its learning rate differs), alone in its group, so on
# 4 devices with 3 idle slots: XLA:CPU gave it other bits when the devices' programs ran at
# once; on the CPU they now run in turn. One model, one training program per device count (seed
# 11's model 0 added a second group of its own, and its compiles, to each run).
RANDOM_FLAGS = ('--architecture=random', '--num_models=1', '--seed=146355', '--max_epochs=2',
                '--min_epochs=2', '--num_train=600', '--num_test=100', '--eval_size=20',
                '--noprogress')


def test_random_architectures_on_four_devices_give_the_one_device_zoo(tmp_path, zoo_cli_cache):
  one = run(tmp_path / 'one', zoo_cli_cache, *RANDOM_FLAGS)
  assert (one.table[['filter_size', 'depth_conv', 'depth_fc', 'width_conv', 'width_fc',
                     'batch_size', 'optimizer', 'activation', 'augmentation']].values.tolist()
          == [[7, 5, 4, 12, 128, 32, 2, 1, True]])
  four = run(tmp_path / 'four', zoo_cli_cache, *RANDOM_FLAGS, devices=4)
  assert_same_zoo(one, four)
