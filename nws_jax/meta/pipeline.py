"""Train the meta-classifiers of a zoo and evaluate them: the library behind `train_meta`.

`train_and_evaluate(config, source, workdir)` checks everything before it touches the workdir,
trains every chosen property in one program, saves the run (store.py), then runs the evaluations
and the baseline and writes their CSVs and PNGs, all into a hidden sibling of the workdir that
replaces it only once complete (an error leaves the workdir exactly as it was). The source is a
zoo of ours (a workdir path) or the published release read from disk (`source.from_release`).
`evaluate_workdir(workdir)` reruns the evaluations from the saved checkpoint without training.
Both hold the workdir's lock (workdir_lock.hold) while they run: a second writer of it is refused.
"""

from __future__ import annotations

import dataclasses
import os

import numpy as np
import pandas as pd

from nws_jax import files
from nws_jax import workdir_lock
from nws_jax import zoo as zoo_lib
from nws_jax.configs import meta as meta_config
from nws_jax.meta import baseline as baseline_lib
from nws_jax.meta import evaluate as evaluate_lib
from nws_jax.meta import plots
from nws_jax.meta import slices as slices_lib
from nws_jax.meta import source as source_lib
from nws_jax.meta import split as split_lib
from nws_jax.meta import store
from nws_jax.meta import targets as targets_lib
from nws_jax.meta import train as train_lib


# What a run evaluates is declared (knob by knob, with flags) in configs/meta.py.
EvalOptions = meta_config.EvalOptions


@dataclasses.dataclass
class Results:
  """The frames written to the workdir (see evaluate.py for their columns)."""
  accuracy: pd.DataFrame
  ensemble: pd.DataFrame
  position: pd.DataFrame
  snapshot: pd.DataFrame
  part: pd.DataFrame
  baseline: pd.DataFrame | None
  history: pd.DataFrame
  per_net: pd.DataFrame | None = None  # None: a run evaluated before per_net.csv existed


DAMAGED_FILE = 'damaged_nets.csv'


def failed_note(table: pd.DataFrame, include_failed: bool) -> dict:
  """What a run does with models flagged failed, as run.json records it (`store.save_run`):
  include_failed; threshold (what `failed` means, or None when the nets carry no flag); flagged
  and dropped (how many models were flagged, and left out); models (all rows); note."""
  if 'failed' not in table:
    return dict(include_failed=bool(include_failed), threshold=None, flagged=0, dropped=0,
                models=len(table), note='the release\'s nets carry no failed flag (the release '
                'left its failed nets out itself): none left out')
  from nws_jax.zoo import builder as zoo_builder  # the zoo's threshold (a heavy import, needed only here)
  flagged = int(table['failed'].to_numpy(bool).sum())
  return dict(include_failed=bool(include_failed),
              threshold=f'test accuracy below {zoo_builder.FAILED_BELOW} or diverged '
                        '(models.csv failed, set when the zoo was trained)',
              flagged=flagged, dropped=0 if include_failed else flagged, models=len(table),
              note='kept (include_failed)' if include_failed else
                   'left out, as the release did (include_failed keeps them)')


def describe_failed(note: dict) -> str:
  """One line on `failed_note`'s record, for the printout."""
  if note.get('threshold') is None:
    return (f'failed models: {note.get("note", "no failed flag")} (dropped '
            f'{note.get("dropped", 0)})')
  return (f'failed models ({note["threshold"]}): {note["flagged"]} of {note["models"]} flagged, '
          f'dropped {note["dropped"]}' + ('' if note['include_failed'] else
                                          ' (--include_failed keeps them)'))


def plan(config: train_lib.MetaConfig, source: source_lib.WeightSource):
  """(split, targets) for `config` on `source`; raises ValueError subclasses, one line, for a
  config these nets cannot satisfy. Touches no file. A release read with its test CSVs keeps
  their nets as the meta-test side."""
  config.validate()
  table = source.table
  models = train_lib.eligible_models(table, config.include_failed)
  try:
    if source.test_models is None:
      split = split_lib.make_split(models, config.seed, config.test_fraction,
                                   config.valid_fraction)
    else:
      test = np.intersect1d(models, source.test_models)
      split = split_lib.split_with_test(np.setdiff1d(models, test), test, config.seed,
                                        config.valid_fraction)
  except split_lib.SplitError as e:
    dropped = len(table) - len(models)
    if not dropped:
      raise
    raise split_lib.SplitError(f'{e}, after leaving out {dropped} failed models '
                               '(--include_failed keeps them)') from e
  names = config.properties or targets_lib.varying_properties(table.iloc[models])
  if not names:
    raise targets_lib.PropertyError('no property varies in this zoo; nothing to learn')
  targets = targets_lib.make_targets(table, names, split.train)
  slices_lib.check_spec(config.slice_spec, table['weightn_conv'].to_numpy()[models],
                        table['weightn_fc'].to_numpy()[models], source.num_snapshots)
  return split, targets


@workdir_lock.holding('workdir', 'train_meta')
def train_and_evaluate(config: train_lib.MetaConfig, source: source_lib.WeightSource | str,
                       workdir: str, *, options: EvalOptions = EvalOptions(),
                       overwrite: bool = False, progress: bool = False) -> Results:
  """source: a WeightSource, or the path of a zoo workdir."""
  if isinstance(source, str):
    source = source_lib.from_zoo(source)
  options.validate()
  split, targets = plan(config, source)
  # Every check before anything is written; the run is written into a hidden sibling of the
  # workdir and moved into place once evaluated, so an error leaves the workdir as it was.
  workdir = os.path.realpath(workdir)  # a symbolic link to a folder stays a link
  inputs = input_paths(source)
  store.check_workdir(workdir, overwrite=overwrite, protect=inputs)
  check = lambda out: store.check_workdir(out, overwrite=overwrite, protect=inputs)
  with files.OutputFolder(workdir, check) as tmp:
    # Marked from the start: what a killed run leaves may be swept (files.remove_partial_folders).
    files.write_marker(tmp, 'meta')
    damaged = getattr(source.reader, 'damaged', None)
    if damaged is not None and len(damaged):
      files.write_csv_atomic(damaged, os.path.join(tmp, DAMAGED_FILE))
    run = train_lib.fit(config, source.table, source.reader, split, targets, progress=progress)
    store.save_run(tmp, run, source.description,
                   failed=failed_note(source.table, config.include_failed))
    results = evaluate_run(run, source, tmp, options)
  return results


def input_paths(source: source_lib.WeightSource) -> list[str]:
  """The files and folders a run reads (a zoo's folder; a release's CSVs and net folders): a
  workdir replaced with overwrite must not hold them."""
  d = source.description
  if d.get('kind') == 'release':
    return list(d['train_csvs']) + list(d['test_csvs']) + source.table['path'].tolist()
  return [d['zoo']]


@workdir_lock.holding('workdir', 'train_meta --evaluate_only')
def evaluate_workdir(workdir: str, *, options: dict | None = None,
                     zoo_dir: str | None = None) -> Results:
  """Reruns the evaluations of a saved run (on the nets it read unless `zoo_dir` is given), with
  the run's saved EvalOptions updated by `options` (field name -> value)."""
  run = store.load_run(workdir)
  fields = [f.name for f in dataclasses.fields(EvalOptions)]
  saved = EvalOptions(**store.read_eval_options(workdir, known=fields))
  try:
    saved.validate()
  except ValueError as e:
    raise store.MetaWorkdirError(f'{os.path.join(workdir, store.EVAL_FILE)} is damaged ({e})') \
        from e
  options = dataclasses.replace(saved, **(options or {}))
  options.validate()
  _, saved_source = store.read_config(workdir)
  source = source_lib.open_source(saved_source, zoo_dir)
  try:
    split_lib.check_split(run.split, len(source.table),
                          os.path.join(workdir, store.SPLIT_FILE))
  except split_lib.SplitError as e:
    raise store.MetaWorkdirError(f'{e} (damaged?)') from e
  return evaluate_run(run, source, workdir, options)


def evaluate_run(run: train_lib.MetaRun, source: source_lib.WeightSource, workdir: str,
                 options: EvalOptions) -> Results:
  """Runs every evaluation and the baseline; writes the CSVs and PNGs into `workdir`."""
  # Categorical properties are scored on a class-balanced test side; a release's test CSV gave
  # the test side, whose first nets of each class the original kept (evaluate.make_context).
  ctx = evaluate_lib.make_context(run, source.table, source.reader,
                                  in_file_order=source.test_models is not None)
  seed = run.config.seed
  accuracy, ensemble = evaluate_lib.evaluate_slices(ctx, options.ensemble_slices, seed)
  per_net = evaluate_lib.evaluate_per_net(ctx)
  accuracy = evaluate_lib.per_net_means(accuracy, per_net)
  position, boundary = evaluate_lib.evaluate_positions(ctx, options.positions)
  snapshot = evaluate_lib.evaluate_snapshots(ctx, options.snapshot_slices, seed)
  part = evaluate_lib.evaluate_parts(ctx, options.snapshot_slices, seed)
  baseline = None
  if options.baseline:
    baseline = baseline_lib.run_baseline(source.table, source.reader, run.split, run.targets,
                                         run.config.slice_spec,
                                         slices_per_snapshot=options.baseline_slices, seed=seed,
                                         n_threads=options.baseline_threads,
                                         test_of=ctx.test_of)
  results = Results(accuracy, ensemble, position, snapshot, part, baseline, run.history,
                    per_net)
  store.save_eval_options(workdir, options.to_json())
  write_results(results, workdir, boundary,
                (run.config.first_snapshot, run.config.last_snapshot))
  return results


def read_results(workdir: str) -> Results:
  """The evaluations a run wrote into `workdir` (write_results' CSVs), read back."""
  read = lambda name: zoo_lib.read_csv(os.path.join(workdir, f'{name}.csv'))
  try:
    frames = {name: read(name) for name in ('accuracy', 'ensemble', 'position', 'snapshot',
                                            'part', 'history')}
    for name in ('baseline', 'per_net'):  # per_net.csv: absent from runs evaluated before it
      frames[name] = read(name) if os.path.exists(os.path.join(workdir, f'{name}.csv')) else None
  except (zoo_lib.ZooError, OSError) as e:
    raise store.MetaWorkdirError(f'{workdir} holds no evaluated run ({e})') from e
  return Results(**frames)


def write_results(results: Results, workdir: str, boundary: float,
                  train_range: tuple[int, int]) -> None:
  path = lambda name: os.path.join(workdir, name)
  for name in ('accuracy', 'ensemble', 'position', 'snapshot', 'part', 'history'):
    files.write_csv_atomic(getattr(results, name), path(f'{name}.csv'))
  if results.baseline is not None:
    files.write_csv_atomic(results.baseline, path('baseline.csv'))
  elif os.path.exists(path('baseline.csv')):
    os.remove(path('baseline.csv'))  # from an earlier evaluation; it would no longer match
  if results.per_net is not None:
    files.write_csv_atomic(results.per_net, path('per_net.csv'))
    plots.save(plots.plot_per_net(results.per_net, chance=results.accuracy), path('per_net.png'))
  for name, fig in (('accuracy', plots.plot_accuracy(results.accuracy, baseline=results.baseline)),
                    ('ensemble', plots.plot_ensemble(results.ensemble)),
                    ('position', plots.plot_position(results.position, boundary)),
                    ('snapshot', plots.plot_snapshot(results.snapshot, train_range)),
                    ('part', plots.plot_part(results.part)),
                    ('history', plots.plot_history(results.history))):
    plots.save(fig, path(f'{name}.png'))


def summary(results: Results) -> str:
  """The final table: per property, the meta-classifier's score beside chance and the baseline."""
  methods = []
  if results.baseline is not None:
    methods = list(dict.fromkeys(results.baseline['method']))
  header = (f'{"property":<15} {"metric":<8} {"meta":>7} {"per net":>8} {"chance":>7}'
            + ''.join(f' {m:>10}' for m in methods) + f' {"test models":>11}')
  lines = [header]
  for row in results.accuracy.itertuples():
    per_net = getattr(row, 'per_net', float('nan'))  # NaN: evaluated before per_net existed
    cells = [f'{row.property:<15} {row.metric:<8} {_fmt(row.value, row.metric):>7} '
             f'{_fmt(per_net, row.metric):>8} {_fmt(row.chance, row.metric):>7}']
    for m in methods:
      b = results.baseline[(results.baseline['method'] == m)
                           & (results.baseline['property'] == row.property)]
      cells.append(f' {_fmt(b["value"].iloc[0], row.metric) if len(b) else "-":>10}')
    cells.append(f' {row.n_test_models:>11}')
    lines.append(''.join(cells))
  for row in results.accuracy.itertuples():
    if row.metric == 'mae' and row.chance > 0:
      lines.append(f'{row.property}: MAE / MAE of predicting the training mean = '
                   f'{row.value / row.chance:.2f} (below 1 beats the mean)')
  lines.append('(meta: single random slices, accuracy the fraction classified right, mae the '
               'mean absolute error of lrate; per net: the original\'s per-net score, batch_size '
               '(64) evenly spaced slices of a test snapshot as one batch, averaged over the '
               'test snapshots; chance: a constant guess; test models: those a property is '
               'scored on, class-balanced for a categorical one)')
  return '\n'.join(lines)


def _fmt(value: float, metric: str) -> str:
  if value != value:  # NaN
    return 'n/a'
  return f'{value:.2e}' if metric == 'mae' else f'{value:.3f}'
