"""The five studies of PROTOCOL §6: how much, when, where, slice length and ensembles.

Each function takes a runner.Study, trains the meta-classifier runs it needs (through
`study.meta`, so a resumed study reuses finished runs), writes its CSVs and PNGs into the study's
workdir and returns the sections of its markdown summary as (heading, markdown). Scores are
fractions of test models' slices classified right ('accuracy') or, for lrate, a mean absolute
error in its own units ('mae'); chance is what a constant guess scores (nws_jax.meta.targets).
"""

from __future__ import annotations

import dataclasses
import os
from typing import Sequence

import pandas as pd

from nws_jax import zoo as zoo_lib
from nws_jax.meta import evaluate as evaluate_lib
from nws_jax.meta import plots
from nws_jax.meta import slices as slices_lib
from nws_jax.study import figures
from nws_jax.study import report
from nws_jax.study import runner
from nws_jax.configs import study as study_config

Sections = list[tuple[str, str]]


def zoo_overview(path: str) -> str:
  """One line on a zoo: models, epochs, test accuracy, how many failed."""
  table = zoo_lib.read_csv(os.path.join(path, zoo_lib.MODELS_FILE))
  failed = int(table['failed'].astype(bool).sum()) if 'failed' in table else 0
  return (f'`{path}`: {len(table)} models, {table["epochs"].mean():.1f} epochs on average, '
          f'mean test accuracy {table["test_accuracy"].mean():.3f} (chance 0.100), '
          f'{failed} failed (test accuracy below 0.15)')


def _figure(name: str) -> str:
  return f'![{name}]({name})'


def _wide(frame: pd.DataFrame, columns: str, values: str) -> pd.DataFrame:
  """One row per property (in order of appearance): property, metric, chance, then `values`
  for each value of `columns` (in order of appearance), for the markdown tables."""
  order = list(dict.fromkeys(frame['property']))
  wide = frame.pivot(index='property', columns=columns, values=values)
  wide = wide.reindex(order)[list(dict.fromkeys(frame[columns]))]
  wide.columns = [str(c) for c in wide.columns]
  first = frame.drop_duplicates('property').set_index('property').reindex(order)
  wide.insert(0, 'metric', first['metric'].to_numpy())
  wide.insert(1, 'chance', first['chance'].to_numpy())
  return wide.reset_index()


def _scores(result: runner.MetaResult) -> pd.DataFrame:
  """Per property: metric, chance, meta (single slice), meta_vote (mean probabilities of the
  evaluation's slices per test snapshot), meta_per_net (the original's per-net score, when the
  run has it), one column per baseline method, n_test_models."""
  r = result.results
  kept = ['property', 'metric', 'chance', 'value', 'n_test_models']
  frame = r.accuracy[kept + (['per_net'] if 'per_net' in r.accuracy else [])].rename(
      columns={'value': 'meta', 'per_net': 'meta_per_net'})
  vote = r.ensemble[['property', 'mean_prob']].rename(columns={'mean_prob': 'meta_vote'})
  frame = frame.merge(vote, on='property', how='left')
  if r.baseline is not None:
    methods = r.baseline.pivot(index='property', columns='method', values='value')
    frame = frame.merge(methods.reset_index(), on='property', how='left')
  front = ['property', 'metric', 'chance', 'meta', 'meta_vote']
  front += ['meta_per_net'] if 'meta_per_net' in frame else []
  return frame[front + [c for c in frame.columns if c not in front]]


def _count(values) -> str:
  """'8' or '4-8': the range of a count column."""
  lo, hi = int(min(values)), int(max(values))
  return str(lo) if lo == hi else f'{lo}-{hi}'


def property_table(study: runner.Study, kinds: Sequence[str]) -> Sections:
  """How much: every varying property's score on a fixed- and a mixed-architecture zoo, for the
  deep meta-classifier (single slice and vote) and the gradient-boosted-tree baselines, beside
  chance. Writes table.csv and table_<kind>.png."""
  frames, sections = [], []
  for kind in kinds:
    result = study.meta(f'table_{kind}', kind, study.scale.meta)
    scores = _scores(result)
    frames.append(scores.assign(zoo=kind))
    png = f'table_{kind}.png'
    plots.save(plots.plot_accuracy(result.results.accuracy, baseline=result.results.baseline),
               study.path(png))
    sections.append((f'The {kind}-architecture zoo',
                     zoo_overview(result.zoo) + '\n\n' + report.markdown_table(scores)
                     + '\n\n' + _figure(png)))
  table = pd.concat(frames, ignore_index=True)
  study.write_csv(table[['zoo'] + [c for c in table.columns if c != 'zoo']], 'table.csv')
  sections.append(('Columns', 'meta: one random slice per prediction; meta_vote: the mean '
                   'probabilities of several slices of the same snapshot; meta_per_net: the '
                   'original\'s per-net score (evenly spaced slices of a test snapshot as one '
                   'batch, averaged); gbt_slice / '
                   'gbt_layers: gradient-boosted trees on statistics of a slice / of every '
                   'layer; lrate: mean absolute error (lower is better).'))
  return sections


def when(study: runner.Study, kind: str,
         ranges: Sequence[tuple[str, tuple[int, int]]]) -> Sections:
  """When: meta-classifiers trained on early, late or all snapshots, each scored on every
  snapshot number. Writes when.csv (its snapshot.csv rows with `trained_on`), when.png and
  when_trained.csv (each run's score on its own range)."""
  curves, own = [], []
  for name, (first, last) in ranges:
    config = dataclasses.replace(study.scale.meta, first_snapshot=first, last_snapshot=last)
    result = study.meta(f'when_{name}', kind, config)
    label = f'{name} ({first}-{last})'
    curves.append(result.results.snapshot.assign(trained_on=label))
    own.append(_scores(result).assign(trained_on=label))
  curve = pd.concat(curves, ignore_index=True)
  study.write_csv(curve, 'when.csv')
  own_frame = pd.concat(own, ignore_index=True)
  study.write_csv(own_frame, 'when_trained.csv')
  plots.save(figures.plot_sweep(curve, x='snapshot', series='trained_on',
                                title='Score by snapshot read, per snapshot range trained on',
                                xlabel='snapshot number (1 = initialisation)'),
             study.path('when.png'))
  table = report.markdown_table(_wide(own_frame, 'trained_on', 'meta'))
  return [('Score on the snapshots trained on', zoo_overview(study.zoo(kind)) + '\n\n' + table),
          ('Score by snapshot number', _figure('when.png'))]


def _boundary(zoo: str) -> float:
  """Where the conv part ends, as a mean fraction of the weight vector over the zoo's models."""
  table = zoo_lib.read_csv(os.path.join(zoo, zoo_lib.MODELS_FILE))
  return slices_lib.conv_fraction(table['weightn_conv'], table['weightn_fc'])


def where(study: runner.Study, kind: str, parts: Sequence[str]) -> Sections:
  """Where: the score against slice position (from the run on the whole vector) and of runs
  trained on the conv part, the dense part and the whole vector, each also read on the other
  parts. Writes where_position.csv/png and where_parts.csv/png."""
  rows, notes, sections = [], [], []
  for part in parts:
    config = dataclasses.replace(study.scale.meta, part=part)
    try:
      result = study.meta(f'where_{part}', kind, config)
    except slices_lib.SliceError as e:
      notes.append(f'- trained on the {part} part: not run ({e})')
      continue
    own = result.results.accuracy
    rows.append(own.assign(trained_on=part, read_from=part)[
        ['property', 'metric', 'trained_on', 'read_from', 'value', 'chance']])
    if part == 'all':
      read = result.results.part.assign(trained_on='all').rename(columns={'part': 'read_from'})
      rows.append(read[['property', 'metric', 'trained_on', 'read_from', 'value', 'chance']])
      position = result.results.position
      study.write_csv(position, 'where_position.csv')
      plots.save(plots.plot_position(position, _boundary(result.zoo)),
                 study.path('where_position.png'))
      sections.append(('Score by slice position (trained on the whole vector)',
                       _figure('where_position.png')))
  if not rows:
    raise runner.StudyError('no part could be studied: ' + '; '.join(notes))
  frame = pd.concat(rows, ignore_index=True)
  study.write_csv(frame, 'where_parts.csv')
  shown = frame.assign(part='trained ' + frame['trained_on'] + ', read ' + frame['read_from'])
  plots.save(plots.plot_part(shown[['property', 'metric', 'part', 'value', 'chance']]),
             study.path('where_parts.png'))
  text = (report.markdown_table(_wide(shown, 'part', 'value')) + '\n\n'
          + _figure('where_parts.png'))
  if notes:
    text += '\n\n' + '\n'.join(notes)
  sections.insert(0, ('Conv part against dense part', zoo_overview(study.zoo(kind))
                      + '\n\n' + text))
  return sections


def slice_length(study: runner.Study, kind: str, lengths: Sequence[int]) -> Sections:
  """Slice length: one run per length (scale.WHOLE: the shortest model's whole vector), scored on
  single slices and on votes. Writes slice_length.csv and slice_length.png."""
  zoo = study.zoo(kind)
  table = zoo_lib.read_csv(os.path.join(zoo, zoo_lib.MODELS_FILE))
  whole = int((table['weightn_conv'] + table['weightn_fc']).min())
  rows, notes = [], []
  for length in lengths:
    length = whole if length == study_config.WHOLE else int(length)
    if length > whole:
      notes.append(f'- {length} weights: longer than the shortest vector ({whole}), not run')
      continue
    config = dataclasses.replace(study.scale.meta, slice_length=length, part='all')
    scores = _scores(study.meta(f'length_{length}', kind, config))
    rows.append(scores.assign(slice_length=length, whole=length == whole))
  if not rows:
    raise runner.StudyError('no slice length could be studied: ' + '; '.join(notes))
  frame = pd.concat(rows, ignore_index=True)
  study.write_csv(frame, 'slice_length.csv')
  long = pd.concat([frame.assign(value=frame['meta'], kind='single slice'),
                    frame.assign(value=frame['meta_vote'], kind='vote of the slices')])
  plots.save(figures.plot_sweep(long, x='slice_length', series='kind',
                                title='Score by slice length', xlabel='weights per slice',
                                log_x=True),
             study.path('slice_length.png'))
  pivot = _wide(frame, 'slice_length', 'meta')
  text = (zoo_overview(zoo) + f' (whole vector: {whole} weights)\n\nSingle-slice score per '
          'slice length (columns: weights per slice):\n\n' + report.markdown_table(pivot)
          + '\n\n' + _figure('slice_length.png'))
  if notes:
    text += '\n\n' + '\n'.join(notes)
  return [('Score by slice length', text)]


def ensembles(study: runner.Study, kind: str, sizes: Sequence[int]) -> Sections:
  """Ensembles: per-model votes over k random slices of the model's trained snapshots, for each
  k in `sizes`. Writes ensembles.csv and ensembles.png."""
  result = study.meta('ensembles', kind, study.scale.meta)
  votes = evaluate_lib.evaluate_votes(result.context(), sizes, seed=result.config.seed)
  study.write_csv(votes, 'ensembles.csv')
  long = pd.concat([votes.assign(value=votes['majority'], kind='majority vote'),
                    votes.assign(value=votes['mean_prob'], kind='mean probabilities')])
  plots.save(figures.plot_sweep(long, x='slices', series='kind',
                                title='Per-model score of a vote over k slices',
                                xlabel='slices per model (k)', log_x=True),
             study.path('ensembles.png'))
  pivot = _wide(votes, 'slices', 'mean_prob')
  return [('Per-model score of a vote over k slices',
           zoo_overview(result.zoo) + f'\n\n{_count(votes["n_test_models"])} test models (a '
           'categorical property\'s class-balanced); '
           'score of the mean-probability vote (lrate: MAE of the mean prediction) per number '
           'of slices k:\n\n' + report.markdown_table(pivot) + '\n\n' + _figure('ensembles.png'))]
