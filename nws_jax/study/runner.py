"""A study's workdir: its zoos and meta-classifier runs, each built once and reused on resume.

Layout of a study workdir:
  study.json            the study, its scale and every setting; a resume must match it
  zoo_fixed/, zoo_mixed/  zoos built here when none is given (train_zoo workdirs)
  meta/<run>/           one train_meta workdir per meta-classifier run (written atomically)
  *.csv, *.png, summary.md   the study's results, written last, each atomically

A zoo interrupted while training continues from its checkpoint on resume; a meta run is either
complete or absent (SIGTERM during one removes what it wrote, and exits 143 through
study/cli.run; the hidden folder of one killed outright is removed on resume). Nothing
outside the workdir is written but its lock file, while the command line (study/cli.run)
holds the workdir's lock (workdir_lock.hold: one writer per folder; each meta run holds its
own too, pipeline.train_and_evaluate); given zoos are only read.
"""

from __future__ import annotations

import contextlib
import dataclasses
import gc
import json
import os
import shutil
import signal
import sys
import threading
import time
import weakref
import _weakrefset

import pandas as pd

from nws_jax import files
from nws_jax import zoo as zoo_lib
from nws_jax.zoo import builder as zoo_builder
from nws_jax.meta import evaluate as evaluate_lib
from nws_jax.meta import pipeline
from nws_jax.meta import source as source_lib
from nws_jax.meta import store
from nws_jax.meta import train as train_lib
from nws_jax.configs import study as study_config

STUDY_FILE = 'study.json'
STEPS_FILE = 'steps.json'  # seconds each zoo and meta run took when it was built
META_DIR = 'meta'


class StudyError(RuntimeError):
  """A study that cannot run as asked (one line)."""


class Terminated(BaseException):
  """SIGTERM stopped a meta-classifier run of the study, which kept nothing of it; --resume runs
  it again. A BaseException, as KeyboardInterrupt: no `except Exception` takes it for an error."""


@contextlib.contextmanager
def _sigterm_raises(what: str):
  """Inside the block SIGTERM raises Terminated (in the main thread; elsewhere nothing changes),
  so that the run unwinds and its hidden folder is removed (files.OutputFolder, once Orbax's
  writers are done: store.save_checkpoint) instead of the process dying on the spot."""
  if threading.current_thread() is not threading.main_thread():
    yield
    return

  received = []

  def terminate(signum, frame):
    if _swallows_exceptions(frame):
      # Raised here it would be printed and ignored: deliver the signal again in a moment, to
      # land where it unwinds the run.
      threading.Timer(0.05, os.kill, (os.getpid(), signum)).start()
      return
    received.append(True)
    raise Terminated(f'stopped by SIGTERM during {what}, which kept nothing; --resume runs it '
                     'again')

  previous = signal.signal(signal.SIGTERM, terminate)
  try:
    yield
  finally:
    signal.signal(signal.SIGTERM, signal.SIG_DFL if previous is None else previous)
  if received:
    # The handler's exception was swallowed all the same (by a callback not recognised above),
    # and the run went on to its end.
    raise Terminated(f'stopped by SIGTERM during {what}, which finished and was kept; --resume '
                     'goes on from there')


def _swallows_exceptions(frame) -> bool:
  """Whether code running in `frame` is inside a garbage-collector callback, a `__del__` or a
  weak reference's callback (the standard library's, in weakref.py and _weakrefset.py: JAX's
  caches are WeakKeyDictionaries), whose exceptions Python prints and ignores (a SIGTERM landing
  in JAX's gc callback was lost once, and the study ran on to exit 0)."""
  callbacks = {getattr(cb, '__code__', None) for cb in gc.callbacks}
  while frame is not None:
    code = frame.f_code
    if (code in callbacks or code.co_name == '__del__'
        or code.co_filename in _WEAKREF_FILES):
      return True
    frame = frame.f_back
  return False


_WEAKREF_FILES = frozenset({weakref.__file__, _weakrefset.__file__})


def zoo_dir_name(kind: str) -> str:
  return f'zoo_{kind}'


def _normalised(obj):
  """obj as it reads back from JSON (tuples become lists), to compare a record with a saved one."""
  return json.loads(json.dumps(obj))


@dataclasses.dataclass
class MetaResult:
  """One meta-classifier run of a study: its workdir, its config and its evaluations."""
  name: str
  workdir: str
  zoo: str
  config: train_lib.MetaConfig
  results: pipeline.Results

  def context(self) -> evaluate_lib.EvalContext:
    """The trained stack and its zoo, for evaluations beyond train_meta's own."""
    source = source_lib.from_zoo(self.zoo)
    return evaluate_lib.make_context(store.load_run(self.workdir), source.table, source.reader)


class Study:
  """A study run in `workdir` at `scale` (see `open_study`)."""

  def __init__(self, name: str, scale: study_config.Scale, workdir: str, zoos: dict[str, str],
               progress: bool):
    self.name = name
    self.scale = scale
    self.workdir = workdir
    self.given_zoos = zoos
    self.progress = progress
    self.steps: list[tuple[str, float, bool]] = []  # (step, seconds when built, reused)
    self._built = _read_steps(self.path(STEPS_FILE))

  def path(self, name: str) -> str:
    return os.path.join(self.workdir, name)

  @contextlib.contextmanager
  def _step(self, name: str, what: str):
    print(f'[{self.name}] {name}: {what} ...', flush=True)
    t0 = time.time()
    yield
    seconds = time.time() - t0
    self.steps.append((name, seconds, False))
    self._built[name] = seconds
    files.write_json_atomic(self._built, self.path(STEPS_FILE))
    print(f'[{self.name}] {name}: done in {seconds:.0f} s', flush=True)

  def _reused(self, name: str) -> None:
    print(f'[{self.name}] {name}: reused from an earlier run', flush=True)
    self.steps.append((name, self._built.get(name, float('nan')), True))

  def zoo(self, kind: str) -> str:
    """The path of the zoo of `kind` ('fixed' or 'mixed'): the one given, or one built (or
    finished, after an interruption) in the workdir."""
    given = self.given_zoos.get(kind)
    if given:
      return given
    name = zoo_dir_name(kind)
    path = self.path(name)
    if os.path.isfile(os.path.join(path, zoo_lib.MODELS_FILE)):
      if not any(s[0] == name for s in self.steps):
        self._reused(name)
      return path
    config = self.scale.zoo_config(kind)
    partial = os.path.isdir(path) and bool(os.listdir(path))
    resume = partial and os.path.isfile(os.path.join(path, zoo_lib.CONFIG_FILE))
    with self._step(name, f'training {config.num_models} models ({config.architecture} '
                          f'architecture, up to {config.max_epochs} epochs)'
                          + (', continued' if resume else '')):
      zoo_builder.build_zoo(config, path, resume=resume, overwrite=partial and not resume,
                            progress=self.progress)
    return path

  def meta(self, run: str, kind: str, config: train_lib.MetaConfig,
           options: pipeline.EvalOptions | None = None) -> MetaResult:
    """Trains and evaluates the meta-classifiers of `config` on the zoo of `kind` into
    meta/<run> (or reads that run back when it is already complete)."""
    zoo = self.zoo(kind)
    workdir = os.path.join(self.path(META_DIR), run)
    name = f'{META_DIR}/{run}'
    if os.path.isdir(workdir) and os.listdir(workdir):
      self._reused(name)
      return MetaResult(run, workdir, zoo, config, pipeline.read_results(workdir))
    with self._step(name, f'meta-classifiers on the {kind} zoo (slices of {config.slice_length} '
                          f'weights, {config.part} part, snapshots {config.first_snapshot}-'
                          f'{config.last_snapshot}, {config.epochs} epochs)'), \
        _sigterm_raises(name):
      results = pipeline.train_and_evaluate(config, zoo, workdir,
                                            options=options or self.scale.options,
                                            progress=self.progress)
    return MetaResult(run, workdir, zoo, config, results)

  def write_csv(self, frame: pd.DataFrame, name: str) -> str:
    path = self.path(name)
    files.write_csv_atomic(frame, path)
    return path

  def write_text(self, text: str, name: str) -> str:
    path = self.path(name)
    files.write_atomic(path, lambda f: f.write(text), mode='w')
    return path


def check_zoo(path: str, kind: str) -> str:
  """The absolute path of a finished zoo given for `kind`; StudyError otherwise."""
  if not os.path.isdir(path):
    raise StudyError(f'--{kind}_zoo {path}: no such directory')
  if not os.path.isfile(os.path.join(path, zoo_lib.MODELS_FILE)):
    found = files.folder_kind(path)
    hint = f' (it holds {files.KIND_NAMES[found]})' if found and found != 'zoo' else ''
    raise StudyError(f'--{kind}_zoo {path} is not a finished zoo: no '
                     f'{zoo_lib.MODELS_FILE}{hint}')
  return os.path.abspath(path)


def open_study(name: str, scale: study_config.Scale, workdir: str, *, settings: dict,
               zoos: dict[str, str | None] | None = None, resume: bool = False,
               overwrite: bool = False, progress: bool = True) -> Study:
  """Checks everything, then prepares `workdir` for study `name` and returns the Study.

  settings: the study's own knobs (saved with the scale in study.json). zoos: kind -> path of
  a finished zoo to read instead of building one. resume: continue the study already in the
  workdir (same scale and settings); overwrite: delete the study in the workdir first (only a
  study's workdir, and never one that holds a given zoo). Raises StudyError (one line) and
  touches nothing when the workdir cannot be used.
  """
  if resume and overwrite:
    raise StudyError('choose one of --resume and --overwrite')
  zoos = {kind: check_zoo(path, kind) for kind, path in (zoos or {}).items() if path}
  workdir = os.path.abspath(workdir)
  record = _normalised({'study': name, 'scale': dataclasses.asdict(scale), 'settings': settings,
                        'zoos': zoos})
  if os.path.lexists(workdir) and not os.path.isdir(workdir):
    raise StudyError(f'workdir {workdir} exists and is not a directory')
  filled = os.path.isdir(workdir) and bool(os.listdir(workdir))
  kind = files.folder_kind(workdir) if filled else None
  if filled and (resume or overwrite) and kind != 'study':
    held = f'holds {files.KIND_NAMES[kind]}' if kind else 'is not a study workdir'
    raise StudyError(f'workdir {workdir} {held}; --{"resume" if resume else "overwrite"} '
                     'applies only to a study (choose another workdir)')
  if filled and resume:
    saved = _read_record(workdir)
    if saved != record:
      differ = sorted(k for k in record if saved.get(k) != record[k])
      raise StudyError(f'cannot resume {workdir}: it was started with other '
                       f'{"/".join(differ)} (see {os.path.join(workdir, STUDY_FILE)})')
    # What meta runs of a killed study left (their hidden, marked folders): run again below.
    files.remove_partial_folders(os.path.join(workdir, META_DIR))
  elif filled and overwrite:
    clash = files.input_clash(workdir, list(zoos.values()))
    if clash:
      raise StudyError(f'workdir {workdir} {clash} (--overwrite)')
    shutil.rmtree(workdir)
  elif filled:
    raise StudyError(f'workdir {workdir} is not empty; pass --resume to continue the study in '
                     'it or --overwrite to replace it')
  os.makedirs(workdir, exist_ok=True)
  files.write_json_atomic(record, os.path.join(workdir, STUDY_FILE))
  return Study(name, scale, workdir, zoos, progress)


def _read_steps(path: str) -> dict[str, float]:
  try:
    with open(path) as f:
      return {str(k): float(v) for k, v in json.load(f).items()}
  except (OSError, ValueError, TypeError, AttributeError):
    return {}  # absent (a new study) or damaged: only the summary's times are lost


def _read_record(workdir: str) -> dict:
  path = os.path.join(workdir, STUDY_FILE)
  try:
    with open(path) as f:
      return json.load(f)
  except (OSError, ValueError) as e:
    raise StudyError(f'{path} is damaged ({type(e).__name__})') from None


def command_line() -> str:
  """The command that started this process, as a user would type it."""
  argv = list(sys.argv)
  if argv and argv[0].endswith('.py'):
    argv[0] = os.path.relpath(argv[0])
    return ' '.join(['python'] + argv)
  return ' '.join(argv)
