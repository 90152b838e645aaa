"""A checkpoint save that fails for lack of space leaves the last finished checkpoint readable."""

import subprocess
import sys
import textwrap

# Runs in its own process: a file-size limit (RLIMIT_FSIZE, its signal ignored) makes every write
# past 64 KiB fail with EFBIG, as a full disk fails with ENOSPC.
SCRIPT = textwrap.dedent('''
    import resource, signal, sys
    import numpy as np
    from nws_jax import early_stopping, trainer, zoo_builder

    def result(size, value):
      m = 3
      return trainer.TrainResult(
          state=[np.random.default_rng(0).random((m, size), np.float32) + value],
          stopping=early_stopping.initial_state(m), curves=np.full((m, 4, 3), value),
          losses=np.full((m, 4), value), seconds=1.0, exports=np.zeros((m, 4, 3), np.int64),
          schedule={'wave': np.int64(0)}, rounds=1)

    directory = sys.argv[1]
    checkpointer = zoo_builder._StateCheckpointer(directory)
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
