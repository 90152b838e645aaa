"""A meta-classifier workdir on disk: what a run saves so evaluation can be rerun without training.

Layout:
  config.json    the MetaConfig and the nets it read (source.py's description: a zoo's
                 absolute path, or the release's split CSVs and how they were checked)
  damaged_nets.csv  nets of the release left out as damaged (--on_damaged=skip), if any
  run.json       the properties (classes, regression scaling) and the model shapes
  split.json     the meta-train / validation / meta-test models (rows of the zoo's models.csv)
  checkpoint/    Orbax: the kept parameters and batch statistics of every member, [P, ...]
  history.csv    per epoch and property: training loss, validation score
  evaluation.json  the evaluation options last used (reused by --evaluate_only)
  accuracy.csv, ensemble.csv, position.csv, snapshot.csv, part.csv, baseline.csv and their PNGs
"""

from __future__ import annotations

import json
import os
import shutil

import jax
import orbax.checkpoint as ocp
import pandas as pd

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


class MetaWorkdirError(RuntimeError):
  """A workdir that cannot be used as asked, or that holds no readable trained run."""


def prepare_workdir(workdir: str, *, overwrite: bool) -> None:
  """Creates `workdir`; a non-empty one is refused unless overwrite (then it is emptied)."""
  if os.path.exists(workdir) and not os.path.isdir(workdir):
    raise MetaWorkdirError(f'workdir {workdir} exists and is not a directory')
  if os.path.isdir(workdir) and os.listdir(workdir):
    if not overwrite:
      raise MetaWorkdirError(f'workdir {workdir} is not empty; pass --overwrite to replace it '
                             'or --evaluate_only to re-evaluate the run in it')
    shutil.rmtree(workdir)
  os.makedirs(workdir, exist_ok=True)


def save_run(workdir: str, run: train_lib.MetaRun, source: dict) -> None:
  """Writes the checkpoint first and the JSON files after it: a run.json means a usable run."""
  checkpointer = ocp.StandardCheckpointer()
  path = os.path.abspath(os.path.join(workdir, CHECKPOINT_DIR))
  checkpointer.save(path, {'params': run.params, 'batch_stats': run.batch_stats}, force=True)
  checkpointer.wait_until_finished()
  checkpointer.close()
  zoo_lib.write_csv_atomic(run.history, os.path.join(workdir, HISTORY_FILE))
  split_lib.save_split(os.path.join(workdir, SPLIT_FILE), run.split)
  zoo_lib.write_json_atomic({'meta': run.config.to_json(), 'source': source},
                            os.path.join(workdir, CONFIG_FILE))
  spec = run.spec
  zoo_lib.write_json_atomic(
      {'targets': [t.to_json() for t in run.targets],
       'spec': dict(slice_length=spec.slice_length, conv_widths=list(spec.conv_widths),
                    dense_widths=list(spec.dense_widths), num_outputs=spec.num_outputs)},
      os.path.join(workdir, RUN_FILE))


def read_config(workdir: str) -> tuple[train_lib.MetaConfig, dict]:
  """(the run's MetaConfig, the description of the nets it read: `source.open_source`'s)."""
  path = os.path.join(workdir, CONFIG_FILE)
  if not os.path.exists(path):
    raise MetaWorkdirError(f'{workdir} holds no meta-classifier run ({CONFIG_FILE} is missing)')
  with open(path) as f:
    saved = json.load(f)
  source = saved.get('source') or {'kind': 'zoo', 'zoo': saved['zoo']}
  return train_lib.MetaConfig.from_json(saved['meta']), source


def load_run(workdir: str) -> train_lib.MetaRun:
  """Reads a trained stack back; raises MetaWorkdirError naming what is missing or damaged."""
  config, _ = read_config(workdir)
  for name in (RUN_FILE, SPLIT_FILE, CHECKPOINT_DIR, HISTORY_FILE):
    if not os.path.exists(os.path.join(workdir, name)):
      raise MetaWorkdirError(f'{workdir} holds no finished meta-classifier run ({name} is '
                             'missing)')
  with open(os.path.join(workdir, RUN_FILE)) as f:
    saved = json.load(f)
  targets = [targets_lib.PropertyTarget.from_json(t) for t in saved['targets']]
  s = saved['spec']
  spec = model_lib.ModelSpec(s['slice_length'], tuple(s['conv_widths']),
                             tuple(s['dense_widths']), s['num_outputs'])
  codes = jax.numpy.asarray([t.code for t in targets])
  member_keys = train_lib.member_keys_for(config.seed, codes)
  abstract = jax.eval_shape(lambda k: train_lib.init_members(
      k, spec=spec, learning_rate=config.learning_rate), member_keys)
  target = {'params': abstract['params'], 'batch_stats': abstract['batch_stats']}
  checkpointer = ocp.StandardCheckpointer()
  try:
    restored = checkpointer.restore(os.path.abspath(os.path.join(workdir, CHECKPOINT_DIR)),
                                    target)
  except Exception as e:  # Orbax raises many types for a damaged checkpoint.
    raise MetaWorkdirError(f'{workdir}: cannot read the meta-classifier checkpoint: {e}') from e
  finally:
    checkpointer.close()
  history = pd.read_csv(os.path.join(workdir, HISTORY_FILE))
  split = split_lib.load_split(os.path.join(workdir, SPLIT_FILE))
  return train_lib.MetaRun(config, targets, split, spec, restored['params'],
                           restored['batch_stats'], history)


def save_eval_options(workdir: str, options: dict) -> None:
  zoo_lib.write_json_atomic(options, os.path.join(workdir, EVAL_FILE))


def read_eval_options(workdir: str) -> dict:
  """The evaluation options last used in `workdir` ({} if none were saved)."""
  path = os.path.join(workdir, EVAL_FILE)
  if not os.path.exists(path):
    return {}
  with open(path) as f:
    return json.load(f)
