r"""Benchmarks of nws_jax: how much vectorising buys, and how close it runs to the machine.

  python -m nws_jax.bench --suite=zoo --num_models=32 --json_out=/tmp/zoo.jsonl
  python -m nws_jax.bench --suite=all

Suites: zoo (vectorised trainer against a per-model loop), roofline (achieved FLOP/s against the
measured matmul peak, memory per model), meta (meta-classifiers: one property against all in
one program), io (snapshot saving and its stall, slice reads), release (reading the published
release format: slices from a warm and a cold page cache, the open checks, memory under an
address-space limit), packing (a random-architecture zoo padded into few programs against
exact packing, the fixed zoo and a per-model loop). Prints a table per suite; with --json_out,
one JSON line per measurement.
Exit code 2 for bad flags.
"""

import functools
import sys

from absl import app
from absl import flags

from nws_jax import cli

SUITES = ('zoo', 'roofline', 'meta', 'io', 'release', 'packing')
FLAGS = flags.FLAGS

flags.DEFINE_list('suite', ['zoo'], 'Suites to run, comma-separated, among: '
                  + ','.join(SUITES) + ', or all.')
flags.DEFINE_list('num_models', [], 'Zoo sizes N, comma-separated (default: 1,8,32 on a CPU; '
                  '1,8,32,128,256,1024 on an accelerator, as memory allows).')
flags.DEFINE_integer('batch_size', 64, 'Images per model-step (slices per meta step).')
flags.DEFINE_integer('steps', 16, 'Training steps per timed call.')
flags.DEFINE_integer('repeats', 2, 'Timed calls per measurement (mean).')
flags.DEFINE_integer('loop_models', 4, 'Models timed one at a time for the per-model loop.')
flags.DEFINE_enum('conv_impl', 'auto', ['auto', 'im2col', 'lax'], 'Convolution formulation.')
flags.DEFINE_enum('bn_eval', 'original', ['original', 'moving'], 'Zoo suites: how the zoo '
                  "evaluates ('original' runs an evaluation pass before every training step, as "
                  'the release\'s code did; train_zoo --bn_eval).')
flags.DEFINE_integer('meta_num_models', 48, 'Models of the meta suite\'s synthetic zoo.')
flags.DEFINE_integer('meta_slice_length', 500, 'Slice length of the meta suite.')
flags.DEFINE_list('meta_conv_widths', ['8', '16', '32', '32', '32', '32'],
                  'Conv widths of the meta suite\'s meta-classifiers (empty: the variant\'s '
                  'own, the study\'s 12 or 15 layers).')
flags.DEFINE_enum('meta_variant', 'study', ['study', 'legacy_6layer'], 'Meta suite: the study\'s '
                  'meta-classifier (cnn1D_small, or cnn1D over 40,000 weights) or the pre-issue '
                  '6-layer one, for comparison.')
flags.DEFINE_bool('meta_loop', True, 'Meta suite: time every property alone too (the loop); '
                  'without it only the first property alone.')
flags.DEFINE_list('meta_dense_widths', ['256', '64'], 'Dense widths of the meta suite.')
flags.DEFINE_integer('release_num_models', 64, 'Nets of the release suite\'s release (two '
                     'architectures in turn).')
flags.DEFINE_integer('release_weights', 100_000, 'Weights per net of the release suite\'s longer '
                     'architecture (the other has 3/4 of them).')
flags.DEFINE_integer('release_slice_length', 5000, 'Slice length of the release suite.')
flags.DEFINE_integer('release_batches', 50, 'Batches per timed round of the release suite.')
flags.DEFINE_integer('release_rss_num_models', 40, 'Nets of the release suite\'s sparse release, '
                     'read under an address-space limit.')
flags.DEFINE_integer('release_rss_weights', 1_000_000, 'Weights per net of that sparse release.')
flags.DEFINE_integer('release_rss_limit_mb', 3072, 'RLIMIT_AS of the process reading it, MiB (it '
                     'must be smaller than the sparse release).')
flags.DEFINE_integer('release_rss_batches', 200, 'Batches read under that limit.')
flags.DEFINE_integer('packing_num_models', 256, 'Models of the packing suite\'s zoos.')
flags.DEFINE_integer('packing_num_train', 320, 'Training examples per dataset of the packing '
                     'suite.')
flags.DEFINE_integer('packing_loop_models', 8, 'Models of the random zoo the packing suite times '
                     'with exact packing and one at a time.')
flags.DEFINE_bool('packing_plan_only', False, 'Packing suite: count programs and arithmetic, '
                  'time nothing.')
flags.DEFINE_string('workdir', None, 'Where the io and release suites write (default: a '
                    'temporary dir).')
flags.DEFINE_string('json_out', None, 'Write every measurement as a JSON line to this file.')


_fail = functools.partial(cli.fail, 'bench')
_int_list = functools.partial(cli.int_list, 'bench')


def main(argv):
  cli.begin('bench', argv)
  suites = list(SUITES) if 'all' in FLAGS.suite else list(dict.fromkeys(FLAGS.suite))
  unknown = [s for s in suites if s not in SUITES]
  if unknown or not suites:
    _fail(f'unknown suite {unknown[0] if unknown else "(none)"!r}; choose from: '
          + ', '.join(SUITES + ('all',)))
  import importlib
  import os

  from nws_jax.bench import common
  from nws_jax.bench import report

  config = common.BenchConfig(
      num_models=_int_list('num_models') or None, batch_size=FLAGS.batch_size, steps=FLAGS.steps,
      repeats=FLAGS.repeats, loop_models=FLAGS.loop_models, conv_impl=FLAGS.conv_impl,
      bn_eval=FLAGS.bn_eval,
      meta_num_models=FLAGS.meta_num_models, meta_slice_length=FLAGS.meta_slice_length,
      meta_conv_widths=_int_list('meta_conv_widths'),
      meta_dense_widths=_int_list('meta_dense_widths'),
      meta_variant='' if FLAGS.meta_variant == 'study' else FLAGS.meta_variant,
      meta_loop=FLAGS.meta_loop,
      release_num_models=FLAGS.release_num_models, release_weights=FLAGS.release_weights,
      release_slice_length=FLAGS.release_slice_length, release_batches=FLAGS.release_batches,
      release_rss_num_models=FLAGS.release_rss_num_models,
      release_rss_weights=FLAGS.release_rss_weights,
      release_rss_limit_mb=FLAGS.release_rss_limit_mb,
      release_rss_batches=FLAGS.release_rss_batches,
      workdir=FLAGS.workdir, packing_num_models=FLAGS.packing_num_models,
      packing_num_train=FLAGS.packing_num_train, packing_loop_models=FLAGS.packing_loop_models,
      packing_plan_only=FLAGS.packing_plan_only)
  try:
    config.validate()
    if 'release' in suites:
      importlib.import_module('nws_jax.bench.release').check_sizes(config)
    if 'zoo' in suites:
      importlib.import_module('nws_jax.bench.zoo').check_devices()
  except ValueError as e:
    _fail(str(e))
  if FLAGS.json_out and not os.path.isdir(os.path.dirname(os.path.abspath(FLAGS.json_out))):
    _fail(f'--json_out: no directory {os.path.dirname(os.path.abspath(FLAGS.json_out))}')
  if FLAGS.json_out and os.path.isdir(FLAGS.json_out):
    _fail(f'--json_out: {FLAGS.json_out} is a directory; name a file')
  if FLAGS.workdir and os.path.exists(FLAGS.workdir) and not os.path.isdir(FLAGS.workdir):
    _fail(f'--workdir: {FLAGS.workdir} exists and is not a directory')
  out = report.JsonLines(FLAGS.json_out) if FLAGS.json_out else None
  rows = []
  for suite in suites:
    module = importlib.import_module(f'nws_jax.bench.{suite}')
    for row in module.run(config):
      rows.append(row)
      if out:
        out.write(row)
      print(f'[{suite}] ' + ', '.join(f'{k}={v}' for k, v in row.items()
                                      if k not in ('suite', 'date', 'jax', 'backend')),
            file=sys.stderr, flush=True)
  if out:
    out.close()
  print(report.format_table(rows))


if __name__ == '__main__':
  app.run(main, flags_parser=cli.flags_parser('bench'))
