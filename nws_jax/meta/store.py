"""A meta-classifier workdir on disk: what a run saves so evaluation can be rerun without training.

Layout:
  config.json    the MetaConfig and the nets it read (source.py's description: a zoo's
                 absolute path, or the release's split CSVs and how they were checked)
  damaged_nets.csv  nets of the release left out as damaged (--on_damaged=skip), if any
  run.json       the properties (classes, regression scaling) and the model: shapes, variant
                 ('cnn1D_small', 'cnn1D'; no variant: a run of the pre-issue 'legacy_6layer'),
                 bn_eval, batch_size, and variables_per_classifier_params_and_bn_stats (one
                 member's parameters and batch-norm moving statistics, optimizer state
                 excluded: the original's "Model size"; equal for every property, the heads
                 being shared)
                 and `failed`: what the run did with models flagged failed, the threshold and
                 how many it left out (`pipeline.failed_note`; absent from older runs)
  split.json     the meta-train / validation / meta-test models (rows of the zoo's models.csv)
  checkpoint/    Orbax: the kept parameters and batch statistics of every member, [P, ...]
  history.csv    per epoch and property: training loss, validation score
  evaluation.json  the evaluation options last used (reused by --evaluate_only)
  accuracy.csv, ensemble.csv, position.csv, snapshot.csv, part.csv, baseline.csv and their PNGs
"""

from __future__ import annotations

import json
import os
import threading
import time
from typing import Sequence

import jax
import orbax.checkpoint as ocp

from nws_jax import files
from nws_jax import space
from nws_jax import zoo as zoo_lib
from nws_jax.meta import model as model_lib
from nws_jax.meta import split as split_lib
from nws_jax.meta import targets as targets_lib
from nws_jax.meta import train as train_lib

CONFIG_FILE = 'config.json'
RUN_FILE = 'run.json'
SPLIT_FILE = 'split.json'
CHECKPOINT_DIR = 'checkpoint'
HISTORY_FILE = 'history.csv'
EVAL_FILE = 'evaluation.json'
FAILED_KEY = 'failed'  # run.json: what the run did with failed models
VARIABLE_COUNT = 'variables_per_classifier_params_and_bn_stats'


class MetaWorkdirError(RuntimeError):
  """A workdir that cannot be used as asked, or that holds no readable trained run."""


def check_workdir(workdir: str, *, overwrite: bool, protect: Sequence[str] = ()) -> None:
  """Raises MetaWorkdirError unless a run may be written to `workdir`: not inside one of the
  inputs in `protect` (the zoo, the release's CSVs and nets), and absent, an empty folder, or,
  with overwrite, a meta-classifier run that train_meta wrote (its marker file:
  files.replace_refusal) that holds none of them.
  Touches nothing: the run is written elsewhere and moved into place (files.OutputFolder)."""
  if os.path.lexists(workdir) and not os.path.isdir(workdir):
    raise MetaWorkdirError(f'workdir {workdir} exists and is not a directory')
  inside = files.inside_input(workdir, protect)
  if inside:
    raise MetaWorkdirError(f'workdir {workdir} {inside}')
  if not os.path.isdir(workdir) or not os.listdir(workdir):
    return
  if not overwrite:
    raise MetaWorkdirError(f'workdir {workdir} is not empty; pass --overwrite to replace it '
                           'or --evaluate_only to re-evaluate the run in it')
  clash = files.input_clash(workdir, protect)
  if clash:
    raise MetaWorkdirError(f'workdir {workdir} {clash} (--overwrite)')
  refusal = files.replace_refusal(workdir, 'meta', 'train_meta')
  if refusal:
    raise MetaWorkdirError(f'workdir {workdir} {refusal}')


def _read_json(path: str):
  try:
    with open(path, 'rb') as f:
      return json.loads(f.read().decode('utf-8'))
  except (ValueError, UnicodeDecodeError) as e:
    raise MetaWorkdirError(f'{path} is damaged (not valid JSON: {files.short_error(e, 80)})') \
        from e


def save_checkpoint(path: str, tree) -> None:
  """Saves the pytree `tree` with Orbax at `path` and returns once every writer of it is done.

  Orbax writes in background threads; when one fails (a full disk), waiting raises that error
  while the others may still be writing, and its metadata writer keeps running until the
  checkpointer is closed. So the checkpointer is closed, and each thread the save started
  joined, before anything is raised: once this returns or raises, nothing writes under `path`
  any more, and the caller may remove it for good (files.OutputFolder)."""
  before = set(threading.enumerate())
  checkpointer = ocp.StandardCheckpointer()
  try:
    checkpointer.save(path, tree, force=True)
    checkpointer.wait_until_finished()
  except BaseException:
    try:
      checkpointer.close()
    except Exception:  # pylint: disable=broad-except
      pass  # the same failure, being raised
    deadline = time.monotonic() + 60
    for thread in set(threading.enumerate()) - before:
      thread.join(max(0.0, deadline - time.monotonic()))
    raise
  checkpointer.close()


def save_run(workdir: str, run: train_lib.MetaRun, source: dict,
             failed: dict | None = None) -> None:
  """Writes the checkpoint first and the JSON files after it: a run.json means a usable run.
  failed: what the run did with failed models (`pipeline.failed_note`), kept in run.json."""
  path = os.path.abspath(os.path.join(workdir, CHECKPOINT_DIR))
  save_checkpoint(path, {'params': run.params, 'batch_stats': run.batch_stats})
  files.write_marker(workdir, 'meta')
  files.write_csv_atomic(run.history, os.path.join(workdir, HISTORY_FILE))
  split_lib.save_split(os.path.join(workdir, SPLIT_FILE), run.split)
  files.write_json_atomic({'meta': run.config.to_json(), 'source': source},
                            os.path.join(workdir, CONFIG_FILE))
  spec = run.spec
  files.write_json_atomic(
      {'targets': [t.to_json() for t in run.targets],
       **({} if failed is None else {FAILED_KEY: failed}),
       'spec': dict(slice_length=spec.slice_length, conv_widths=list(spec.conv_widths),
                    dense_widths=list(spec.dense_widths), num_outputs=spec.num_outputs,
                    variant=spec.variant, bn_eval=spec.bn_eval, batch_size=spec.batch_size),
       VARIABLE_COUNT: spec.variable_count()},
      os.path.join(workdir, RUN_FILE))


def read_failed(workdir: str) -> dict | None:
  """run.json's record of what the run did with failed models (`pipeline.failed_note`), or None
  for a run saved before it was kept (or no readable run.json)."""
  path = os.path.join(workdir, RUN_FILE)
  if not os.path.isfile(path):
    return None
  saved = _read_json(path)
  note = saved.get(FAILED_KEY) if isinstance(saved, dict) else None
  return note if isinstance(note, dict) else None


def read_config(workdir: str) -> tuple[train_lib.MetaConfig, dict]:
  """(the run's MetaConfig, the description of the nets it read: `source.open_source`'s); raises
  MetaWorkdirError for a workdir that holds no run (a zoo, a release, nothing) or a damaged
  config.json."""
  path = os.path.join(workdir, CONFIG_FILE)
  kind = files.folder_kind(workdir)
  not_a_run = (f'{workdir} holds {files.KIND_NAMES[kind]}, not a meta-classifier run'
               if kind in ('zoo', 'release') else None)
  if not os.path.isfile(path):
    raise MetaWorkdirError(not_a_run or f'{workdir} holds no meta-classifier run '
                           f'({CONFIG_FILE} is missing)')
  saved = _read_json(path)
  if not isinstance(saved, dict) or 'meta' not in saved:
    raise MetaWorkdirError(not_a_run or f'{path} is not a meta-classifier run\'s (no "meta" '
                           'entry)')
  try:
    config = train_lib.MetaConfig.from_json(saved['meta'])
    config.validate()
    source = saved.get('source') or {'kind': 'zoo', 'zoo': saved['zoo']}
    if source.get('kind') == 'release':
      fields = dict(train_csvs=list, test_csvs=list, on_damaged=str, scan_nans=bool)
    else:
      fields = dict(zoo=str)
    for name, kind_of in fields.items():
      if not isinstance(source[name], kind_of):
        raise TypeError(f'source {name} is not a {kind_of.__name__}')
  except (KeyError, TypeError, ValueError, AttributeError) as e:
    raise MetaWorkdirError(f'{path} is damaged ({type(e).__name__}: '
                           f'{files.short_error(e, 120)})') from e
  return config, source


def load_run(workdir: str) -> train_lib.MetaRun:
  """Reads a trained stack back; raises MetaWorkdirError naming what is missing or damaged."""
  config, _ = read_config(workdir)
  for name in (RUN_FILE, SPLIT_FILE, CHECKPOINT_DIR, HISTORY_FILE):
    if not os.path.exists(os.path.join(workdir, name)):
      raise MetaWorkdirError(f'{workdir} holds no finished meta-classifier run ({name} is '
                             'missing)')
  path = os.path.join(workdir, RUN_FILE)
  saved = _read_json(path)
  try:
    targets = [targets_lib.PropertyTarget.from_json(t) for t in saved['targets']]
    s = saved['spec']
    # A run.json without a variant is a run of the pre-issue network (so says its config:
    # MetaConfig.from_json), evaluated with moving statistics.
    spec = model_lib.ModelSpec(int(s['slice_length']), tuple(int(w) for w in s['conv_widths']),
                               tuple(int(w) for w in s['dense_widths']), int(s['num_outputs']),
                               str(s.get('variant', config.variant_used)),
                               str(s.get('bn_eval', config.bn_eval)),
                               int(s.get('batch_size', config.batch_size)))
    if not targets or any(t.name not in space.PROPERTY_NAMES for t in targets):
      raise ValueError('no targets, or an unknown property')
  except (KeyError, TypeError, ValueError, AttributeError) as e:
    raise MetaWorkdirError(f'{path} is damaged ({type(e).__name__}: '
                           f'{files.short_error(e, 120)})') from e
  codes = jax.numpy.asarray([t.code for t in targets])
  member_keys = train_lib.member_keys_for(config.seed, codes)
  abstract = jax.eval_shape(lambda k: train_lib.init_members(
      k, spec=spec, learning_rate=config.learning_rate), member_keys)
  target = {'params': abstract['params'], 'batch_stats': abstract['batch_stats']}
  checkpoint = os.path.abspath(os.path.join(workdir, CHECKPOINT_DIR))
  checkpointer = ocp.StandardCheckpointer()
  try:
    zoo_lib.check_checkpoint_files(checkpoint)
    restored = checkpointer.restore(checkpoint, target)
  except Exception as e:  # Orbax raises many types for a damaged checkpoint.
    raise MetaWorkdirError(f'{workdir}: cannot read the meta-classifier checkpoint: '
                           f'{files.short_error(e)}') from e
  finally:
    checkpointer.close()
  try:
    history = zoo_lib.read_csv(os.path.join(workdir, HISTORY_FILE))
    split = split_lib.load_split(os.path.join(workdir, SPLIT_FILE))
  except (zoo_lib.ZooError, split_lib.SplitError) as e:
    raise MetaWorkdirError(str(e)) from e
  return train_lib.MetaRun(config, targets, split, spec, restored['params'],
                           restored['batch_stats'], history)


def save_eval_options(workdir: str, options: dict) -> None:
  files.write_json_atomic(options, os.path.join(workdir, EVAL_FILE))


def read_eval_options(workdir: str, known: Sequence[str] | None = None) -> dict:
  """The evaluation options last used in `workdir` ({} if none were saved); raises
  MetaWorkdirError when the file is damaged (not a JSON object, or names an option not in
  `known`)."""
  path = os.path.join(workdir, EVAL_FILE)
  if not os.path.exists(path):
    return {}
  saved = _read_json(path)
  if not isinstance(saved, dict):
    raise MetaWorkdirError(f'{path} is damaged (not a JSON object)')
  unknown = [k for k in saved if known is not None and k not in known]
  if unknown:
    raise MetaWorkdirError(f'{path} is damaged (unknown option {unknown[0]!r})')
  return saved
