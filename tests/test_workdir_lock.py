"""One writer per workdir (issue 18, point 6): workdir_lock.hold, and every command line that
writes a folder refusing, at once and touching nothing, a folder that another process holds."""

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time

import pytest

from helpers import file_state
from helpers import occupied_folder
from nws_jax import workdir_lock

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# A second process that holds the lock of argv[1] as command argv[2] until its stdin closes.
HOLDER = '''
import sys
from nws_jax import workdir_lock
with workdir_lock.hold(sys.argv[1], sys.argv[2]):
  print('held', flush=True)
  sys.stdin.read()
print('released', flush=True)
'''


@contextlib.contextmanager
def holder(folder, command='holder_cmd'):
  """A child process holding the lock of `folder`; yields it, then lets it release and exit."""
  child = subprocess.Popen([sys.executable, '-c', HOLDER, str(folder), command],
                           stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
  try:
    assert child.stdout.readline().strip() == 'held'
    yield child
  finally:
    child.stdin.close()
    child.wait(timeout=30)


def refused_elsewhere(folder):
  """The error line of another process that tries to hold `folder`'s lock (and must fail)."""
  child = subprocess.run([sys.executable, '-c', HOLDER, str(folder), 'elsewhere'],
                         stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=60)
  assert child.returncode != 0 and 'held' not in child.stdout, child.stdout
  line = child.stderr.strip().splitlines()[-1]
  assert line.startswith('nws_jax.workdir_lock.LockedError: '), child.stderr
  return line


def tree(path):
  """Every folder and file under `path` (files with their bytes and mtime): equal before and
  after means nothing was created, written or removed there."""
  folders = sorted(os.path.relpath(root, path) for root, _, _ in os.walk(path))
  return folders, file_state(path)


def assert_refused_by(error, folder, child, command='holder_cmd'):
  """The one-line refusal names the folder and the holder: its command, pid and host."""
  message = str(error)
  assert '\n' not in message
  assert f'{folder} is in use by {command} (pid {child.pid} on {socket.gethostname()}, since '\
      in message, message
  assert 'wait for it to finish or stop it' in message


# --- hold ---------------------------------------------------------------------------------------

def test_a_second_holder_in_another_process_is_refused_at_once_naming_the_first(tmp_path):
  out = tmp_path / 'out'
  with holder(out) as child:
    before = tree(tmp_path)
    start = time.monotonic()
    with pytest.raises(workdir_lock.LockedError) as refused:
      with workdir_lock.hold(str(out), 'second'):
        pytest.fail('a second writer got the lock')
    assert time.monotonic() - start < 5
    assert_refused_by(refused.value, out, child)
    assert tree(tmp_path) == before  # the holder's lock file, as it was
  assert os.listdir(tmp_path) == []


def test_the_lock_file_lies_beside_the_folder_and_is_gone_after_exit(tmp_path):
  out = tmp_path / 'out'
  with workdir_lock.hold(str(out), 'test') as path:
    assert path == str(tmp_path / '.out.lock')
    assert os.path.isfile(path) and not out.exists()
  assert os.listdir(tmp_path) == []


def test_the_lock_file_is_gone_after_an_exception(tmp_path):
  with pytest.raises(KeyError):
    with workdir_lock.hold(str(tmp_path / 'out'), 'test'):
      raise KeyError('failed mid-write')
  assert os.listdir(tmp_path) == []
  with workdir_lock.hold(str(tmp_path / 'out'), 'test'):  # and the lock is free again
    pass


def test_a_released_lock_is_taken_by_the_next_writer(tmp_path):
  out = tmp_path / 'out'
  with holder(out):
    pass
  with workdir_lock.hold(str(out), 'next'):
    assert f'in use by next (pid {os.getpid()} ' in refused_elsewhere(out)


def test_a_lock_file_left_by_a_killed_holder_does_not_block(tmp_path):
  out = tmp_path / 'out'
  with holder(out) as child:
    child.send_signal(signal.SIGKILL)
    child.wait(timeout=30)
  assert os.listdir(tmp_path) == ['.out.lock']  # left behind, but no longer locked
  with workdir_lock.hold(str(out), 'after the crash') as path:
    assert '"after the crash"' in open(path).read()
  assert os.listdir(tmp_path) == []


def test_missing_parents_are_created_for_the_lock_and_removed_after(tmp_path):
  out = tmp_path / 'a' / 'b' / 'out'
  with workdir_lock.hold(str(out), 'test') as path:
    assert path == str(tmp_path / 'a' / 'b' / '.out.lock')
  assert os.listdir(tmp_path) == []
  # Parents that the writer filled meanwhile are kept.
  with workdir_lock.hold(str(out), 'test'):
    out.mkdir()
  assert os.listdir(tmp_path / 'a' / 'b') == ['out']


def test_a_folder_renamed_into_place_stays_locked(tmp_path):
  out = tmp_path / 'out'
  with holder(out) as child:
    (tmp_path / '.out.partial').mkdir()
    os.rename(tmp_path / '.out.partial', out)  # as files.OutputFolder publishes a finished folder
    with pytest.raises(workdir_lock.LockedError) as refused:
      with workdir_lock.hold(str(out), 'second'):
        pass
    assert_refused_by(refused.value, out, child)


def test_two_spellings_of_a_folder_share_one_lock(tmp_path):
  (tmp_path / 'real').mkdir()
  os.symlink(tmp_path / 'real', tmp_path / 'link')
  with holder(tmp_path / 'link' / 'out') as child:
    with pytest.raises(workdir_lock.LockedError) as refused:
      with workdir_lock.hold(str(tmp_path / 'real' / '.' / 'out'), 'second'):
        pass
    assert f'pid {child.pid} ' in str(refused.value)


def test_a_nested_hold_in_one_process_passes_and_the_outer_one_releases(tmp_path):
  out = str(tmp_path / 'out')
  with workdir_lock.hold(out, 'outer') as path:
    with workdir_lock.hold(out + '/', 'inner') as inner:
      assert inner == path
    assert 'in use by outer' in refused_elsewhere(out)  # still held after the inner one
  assert os.listdir(tmp_path) == []
  with holder(out):
    pass


def test_holding_locks_the_named_argument():
  seen = []

  @workdir_lock.holding('out', 'decorated')
  def write(zoo, out, *, flag=False):
    seen.append(os.path.exists(workdir_lock.lock_path(out)))
    return zoo, flag

  import tempfile
  with tempfile.TemporaryDirectory() as d:
    assert write('zoo', os.path.join(d, 'out'), flag=True) == ('zoo', True)
    assert write('zoo', out=os.path.join(d, 'out')) == ('zoo', False)
    assert seen == [True, True] and os.listdir(d) == []


# --- the command lines --------------------------------------------------------------------------

@pytest.fixture(scope='module')
def release_dir(tmp_path_factory, synthetic_zoo_dir):
  from nws_jax.release import convert as release_convert
  path = str(tmp_path_factory.mktemp('lock_release') / 'release')
  release_convert.export_zoo(synthetic_zoo_dir, path)
  return path


def _command(prog, zoo, release, out):
  """argv of `prog` writing `out`, a folder of its own kind: replacing it (--overwrite), adding
  to it (an experiment's --resume, as in the issue) or rewriting its evaluations."""
  if prog == 'train_zoo':  # a second train_zoo --resume of one workdir (the case)
    args = ['-m', 'nws_jax.train_zoo', '--num_models=1', '--num_train=300']
  elif prog == 'train_meta':
    args = ['-m', 'nws_jax.train_meta', f'--zoo={zoo}', '--slice_length=40', '--epochs=1']
  elif prog == 'train_meta_evaluate_only':
    args = ['-m', 'nws_jax.train_meta', '--evaluate_only']
  elif prog == 'export_nws':
    args = ['-m', 'nws_jax.export_nws', f'--zoo={zoo}']
  elif prog == 'import_nws':
    args = ['-m', 'nws_jax.import_nws', f'--csv={release}/train.csv,{release}/test.csv']
  else:
    args = [os.path.join(ROOT, 'experiments', f'{prog}.py'), f'--fixed_zoo={zoo}']
  flag = '--out' if prog.endswith('_nws') else '--workdir'
  if prog in WRITE_FLAG:
    args.append(WRITE_FLAG[prog])
  return [sys.executable, *args, f'{flag}={out}', '--progress=false']


KINDS = {'train_zoo': 'zoo', 'train_meta': 'meta', 'train_meta_evaluate_only': 'meta', 'export_nws': 'release',
         'import_nws': 'zoo', 'where': 'study'}
WRITE_FLAG = {'train_zoo': '--resume', 'train_meta': '--overwrite', 'export_nws': '--overwrite',
              'import_nws': '--overwrite', 'where': '--resume'}


@pytest.mark.parametrize('prog', list(KINDS))
def test_a_command_line_refuses_a_folder_another_process_writes(tmp_path, synthetic_zoo_dir,
                                                                 release_dir, prog):
  """Exit 2 at once, one line naming the holder; the folder (a finished one of the command's own
  kind, which --overwrite would replace) and everything beside it left as they were."""
  out = tmp_path / 'out'
  if KINDS[prog] == 'study':
    occupied_folder(out, name='study.json', text='{"study": "where"}')
  else:
    occupied_folder(out, kind=KINDS[prog])
  argv = _command(prog, synthetic_zoo_dir, release_dir, out)
  with holder(out, 'train_zoo') as child:
    before = tree(tmp_path)
    result = subprocess.run(argv, capture_output=True, text=True, timeout=300)
    assert tree(tmp_path) == before
  name = 'train_meta' if prog.startswith('train_meta') else prog
  assert result.returncode == 2, result.stderr
  lines = [line for line in result.stderr.splitlines() if line.strip()]
  assert len(lines) == 1 and lines[0].startswith(f'{name}: error: '), result.stderr
  assert_refused_by(lines[0], out, child, command='train_zoo')
  assert sorted(os.listdir(tmp_path)) == ['out']
