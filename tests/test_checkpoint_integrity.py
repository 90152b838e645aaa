"""A checkpoint save that fails for lack of space leaves the last finished checkpoint readable;
a command line that runs out of space (train_meta, export_nws, import_nws) says so in one line
naming what it was writing, exits 2 and leaves nothing behind (issue 18, point 9)."""

import os
import subprocess
import sys
import textwrap

import pytest

from helpers import file_state

# Runs in its own process: a file-size limit (RLIMIT_FSIZE, its signal ignored) makes every write
# past 64 KiB fail with EFBIG, as a full disk fails with ENOSPC.
SCRIPT = textwrap.dedent('''
    import resource, signal, sys
    import numpy as np
    from nws_jax import early_stopping
    from nws_jax.zoo import builder as zoo_builder
    from nws_jax.zoo import loop
    from nws_jax.zoo import schedule as schedule_lib

    def result(size, value):
      m = 3
      return loop.TrainResult(
          state=[np.random.default_rng(0).random((m, size), np.float32) + value],
          stopping=early_stopping.initial_state(m), curves=np.full((m, 4, 3), value),
          losses=np.full((m, 4), value), seconds=1.0, exports=np.zeros((m, 4, 3), np.int64),
          schedule=schedule_lib.start(schedule_lib.Plan((np.arange(m),), np.zeros(1, np.int64), 1)),
          rounds=1)

    directory = sys.argv[1]
    checkpointer = zoo_builder.StateCheckpointer(directory)
    checkpointer.save(1, result(100, 1.0))
    checkpointer.wait()
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (1 << 16, 1 << 16))
    try:
      checkpointer.save(2, result(1 << 20, 2.0))  # 12 MiB of random state: cannot be written
      checkpointer.wait()
    except Exception as e:  # Orbax reports the failed write here, in some wrapper.
      print('save failed:', type(e).__name__)
    else:
      print('save succeeded')
''')


def test_a_failed_save_keeps_the_previous_checkpoint(tmp_path):
  directory = tmp_path / 'state'
  run = subprocess.run([sys.executable, '-c', SCRIPT, str(directory)], capture_output=True,
                       text=True, timeout=300)
  assert 'save failed' in run.stdout, (run.stdout, run.stderr[-3000:])

  import numpy as np
  import orbax.checkpoint as ocp
  manager = ocp.CheckpointManager(str(directory))
  try:
    assert manager.latest_step() == 1
    tree = manager.restore(1, args=ocp.args.StandardRestore())
  finally:
    manager.close()
  np.testing.assert_array_equal(tree['state'][0],
                                np.random.default_rng(0).random((3, 100), np.float32) + 1.0)
  np.testing.assert_array_equal(tree['curves'], np.full((3, 4, 3), 1.0))


def test_a_folder_a_late_writer_fills_again_is_removed_for_good(tmp_path):
  """After a failed Orbax save, TensorStore's own threads may still finish writes they started,
  creating their folders again after the first removal (a .partial- folder was left so)."""
  import threading
  import time
  from nws_jax import files
  folder = tmp_path / '.meta.partial-x'
  (folder / 'checkpoint').mkdir(parents=True)
  removed = threading.Event()

  def late_writer():
    while folder.exists():
      time.sleep(0.005)
    removed.set()
    time.sleep(0.1)
    (folder / 'checkpoint' / 'd').mkdir(parents=True)
    (folder / 'checkpoint' / 'd' / 'chunk').write_bytes(b'late')

  writer = threading.Thread(target=late_writer)
  writer.start()
  files.remove_folder(str(folder))
  writer.join()
  assert removed.is_set() and not folder.exists()


# `python -m MODULE ARGS` in a process whose writes past LIMIT bytes fail (EFBIG), as on a full
# disk; its stderr goes to a pipe, which the limit leaves alone.
FULL_DISK = textwrap.dedent('''
    import resource, runpy, signal, sys
    limit, module = int(sys.argv[1]), sys.argv[2]
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    sys.argv = [module] + sys.argv[3:]
    runpy.run_module(module, run_name='__main__', alter_sys=True)
''')


def run_on_a_full_disk(limit, module, *args):
  # No persistent compilation cache: its writes would fail too, each with a warning.
  env = {k: v for k, v in os.environ.items() if k != 'JAX_COMPILATION_CACHE_DIR'}
  return subprocess.run([sys.executable, '-c', FULL_DISK, str(limit), module, *map(str, args)],
                        capture_output=True, text=True, timeout=600, env=env)


def assert_out_of_space(run, prog, out, parent, before):
  """Exit 2; stderr one line `prog: error: cannot write <out…>: No space left on device (…)`;
  no hidden .partial- folder, and `parent` byte for byte as it was."""
  assert run.returncode == 2, run.stderr[-3000:]
  lines = run.stderr.splitlines()
  assert len(lines) == 1, run.stderr[-3000:]
  assert lines[0].startswith(f'{prog}: error: cannot write {out}'), lines[0]
  assert 'No space left on device (EFBIG' in lines[0], lines[0]
  assert not [n for n in os.listdir(parent) if '.partial-' in n]
  assert file_state(parent) == before


@pytest.fixture
def parent(tmp_path):
  """A folder holding one file of the user's: where the output goes."""
  path = tmp_path / 'parent'
  path.mkdir()
  (path / 'keep.txt').write_text('mine')
  return path


def test_train_meta_on_a_full_disk_fails_in_one_line_and_leaves_nothing(synthetic_zoo_dir,
                                                                      parent):
  before = file_state(parent)
  workdir = parent / 'meta'
  run = run_on_a_full_disk(
      2000, 'nws_jax.train_meta', f'--zoo={synthetic_zoo_dir}', f'--workdir={workdir}',
      '--slice_length=40', '--conv_widths=4,8', '--dense_widths=16', '--epochs=1',
      '--batch_size=32', '--positions=5', '--ensemble_slices=3', '--snapshot_slices=2',
      '--baseline=false', '--progress=false')
  assert_out_of_space(run, 'train_meta', workdir, parent, before)


def test_export_nws_on_a_full_disk_names_the_file_it_was_writing(synthetic_zoo_dir, parent):
  before = file_state(parent)
  out = parent / 'release'
  # A weight file (20 x 200 float64) is over the limit; the first fails.
  run = run_on_a_full_disk(1000, 'nws_jax.export_nws', f'--zoo={synthetic_zoo_dir}',
                           f'--out={out}', '--progress=false')
  assert_out_of_space(run, 'export_nws', out, parent, before)
  assert '/weights/001.bin: ' in run.stderr


def test_import_nws_on_a_full_disk_fails_in_one_line_and_leaves_nothing(synthetic_zoo_dir,
                                                                      tmp_path, parent):
  from nws_jax.release import convert as release_convert
  release = str(tmp_path / 'release')
  release_convert.export_zoo(synthetic_zoo_dir, release)
  before = file_state(parent)
  out = parent / 'zoo'
  run = run_on_a_full_disk(20000, 'nws_jax.import_nws', f'--csv={release}/train.csv',
                           f'--out={out}', '--progress=false')
  assert_out_of_space(run, 'import_nws', out, parent, before)
