"""Shared fixtures: tiny offline datasets, built once per session."""

import os
import tempfile

import pytest

# One persistent compilation cache for the session's workers and the command lines they start
# (set before JAX is imported): many tests compile the same programs in other processes.
os.environ.setdefault('JAX_COMPILATION_CACHE_DIR', os.path.join(
    tempfile.gettempdir(),
    f'nws_jax_test_jit_cache_{os.environ.get("PYTEST_XDIST_TESTRUNUID", os.getpid())}'))

from nws_jax import datasets


@pytest.fixture(scope='session')
def tiny_datasets():
  """Two offline datasets of 300 training (270 after the validation split) and 100 test images."""
  return [datasets.load(name, num_train=300, num_test=100, seed=0)
          for name in ('gratings', 'shapes')]


def write_synthetic_zoo(workdir, num_models=40, weightn_conv=80, weightn_fc=120, seed=0):
  """A zoo workdir whose weights encode some properties, for meta-classifier tests.

  Fixed-architecture property columns, but a short fake vector (weightn_conv + weightn_fc).
  initialization (4 classes) sets the scale of the whole vector and lrate its mean; optimizer
  (3 classes) adds an alternating ±pattern of 0, 1 or 2 times the scale to the dense part only;
  dataset and augmentation are drawn but leave no trace. Returns the models table.
  """
  import json
  import os

  import numpy as np
  import pandas as pd

  from nws_jax import snapshots as snapshots_lib
  from nws_jax import space
  from nws_jax import zoo as zoo_lib

  rng = np.random.default_rng(seed)
  m = num_models
  table = pd.DataFrame(dict(
      dataset=rng.choice(['digits', 'shapes'], m), lrate=rng.uniform(*space.LRATE_RANGE, m),
      batch_size=64, batch_norm=True, augmentation=rng.integers(0, 2, m).astype(bool),
      optimizer=np.arange(m) % 3, activation=0, initialization=(np.arange(m) // 3) % 4,
      **space.FIXED_ARCHITECTURE))
  table['model_id'] = np.arange(m)
  table['weightn_conv'], table['weightn_fc'] = weightn_conv, weightn_fc
  for name in ('train_accuracy', 'valid_accuracy', 'test_accuracy'):
    table[name] = 0.5
  table['epochs'], table['status'], table['failed'] = 5, 'max_epochs', False
  table['steps_per_epoch'], table['seconds'] = 9, 1.0
  scale = np.array([0.25, 0.5, 1.0, 2.0])[table['initialization']]
  pattern = np.array([0.0, 1.0, 2.0])[table['optimizer']]
  snaps = rng.normal(size=(m, 20, weightn_conv + weightn_fc))
  snaps[:, :, weightn_conv:] += (pattern[:, None, None]
                                 * (-1.0) ** np.arange(weightn_fc)[None, None, :])
  snaps = (scale[:, None, None] * snaps
           + 500.0 * table['lrate'].to_numpy()[:, None, None]).astype(np.float32)
  os.makedirs(workdir, exist_ok=True)
  with open(os.path.join(workdir, zoo_lib.CONFIG_FILE), 'w') as f:
    json.dump({'synthetic': True}, f)
  table.to_csv(os.path.join(workdir, zoo_lib.MODELS_FILE), index=False)
  zoo_lib.write_record(workdir)
  epochs = np.arange(6)  # 0 (initialisation) .. 5, as table['epochs']
  curve = 0.1 + 0.08 * epochs
  pd.DataFrame(dict(model_id=np.repeat(np.arange(m), 6), epoch=np.tile(epochs, m),
                    train_accuracy=np.tile(curve + 0.02, m), valid_accuracy=np.tile(curve, m),
                    test_accuracy=np.tile(curve - 0.01, m),
                    train_loss=np.tile(2.3 - 0.1 * epochs, m))).to_csv(
                        os.path.join(workdir, zoo_lib.CURVES_FILE), index=False)
  numbers = np.tile(snapshots_lib.select_exports(6).astype(np.int32), (m, 1))
  snapshots_lib.save_snapshots(os.path.join(workdir, zoo_lib.SNAPSHOTS_DIR), snaps, numbers)
  return table


@pytest.fixture(scope='module')
def zoo_cli_cache(tmp_path_factory):
  """A persistent compilation cache folder for one module's train_zoo command lines
  (`helpers.start_zoo_cli`), so that its runs compile each program once."""
  return str(tmp_path_factory.mktemp('compilation_cache'))


@pytest.fixture(scope='session')
def synthetic_zoo_dir(tmp_path_factory):
  """Path of a 40-model synthetic zoo (see write_synthetic_zoo), shared by the session."""
  path = str(tmp_path_factory.mktemp('synthetic') / 'zoo')
  write_synthetic_zoo(path)
  return path


# The files that take longest, longest first (their time in `--durations=0` on the 2-core
# machine, 2026-12-01), run first: pytest-xdist hands each worker whole files (--dist loadfile)
# in collection order (--no-loadscope-reorder, setup.cfg), and its default order (most tests
# first) started the two scale-out files last, leaving the other worker idle at the end.
LONGEST_FILES = ('test_scale_out.py', 'test_scale_out_random.py', 'test_packing.py',
                 'test_refill.py', 'test_train_meta_cli.py', 'test_experiments.py',
                 'test_trainer.py', 'test_notebooks.py', 'test_bench_zoo.py', 'test_mixed_zoo.py',
                 'test_meta_release.py', 'test_zoo.py', 'test_original_eval.py',
                 'test_bench_meta_io.py', 'test_cnn.py', 'test_train_zoo_cli.py')


def pytest_collection_modifyitems(items):
  rank = {name: i for i, name in enumerate(LONGEST_FILES)}
  order = {id(item): i for i, item in enumerate(items)}
  items.sort(key=lambda item: (rank.get(item.path.name, len(rank)), order[id(item)]))
