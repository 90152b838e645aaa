r"""Slice length: how the score grows with the number of consecutive weights read.

  python experiments/slice_length.py --workdir=workdirs/length [--slice_lengths=100,1000,whole]

One meta-classifier per slice length, from a few hundred weights to the whole vector ('whole':
the shortest model's), scored on single slices and on votes of several slices. Writes
slice_length.csv, slice_length.png and summary.md.
"""

from absl import app
from absl import flags

from nws_jax import cli
from nws_jax.study import cli as study_cli

flags.DEFINE_enum('zoo', 'fixed', ['fixed', 'mixed'], 'The zoo studied.')
flags.DEFINE_list('slice_lengths', None, 'Weights per slice, comma-separated; "whole" for the '
                  'whole vector (default: the scale\'s sweep).')
FLAGS = flags.FLAGS


def parse_lengths(prog: str, values) -> list[int]:
  from nws_jax.configs import study as study_config

  lengths = []
  for value in values:
    if value == 'whole':
      lengths.append(study_config.WHOLE)
      continue
    try:
      length = int(value)
    except ValueError:
      length = 0
    if length < 1:
      cli.fail(prog, f'--slice_lengths: expected positive integers or "whole", got {value!r}')
    lengths.append(length)
  if not lengths:
    cli.fail(prog, '--slice_lengths: give at least one length')
  return list(dict.fromkeys(lengths))


def main(argv):
  from nws_jax.configs import presets

  lengths = (parse_lengths('slice_length', FLAGS.slice_lengths) if FLAGS.slice_lengths
             else list(presets.SCALES[FLAGS.scale].slice_lengths))
  study_cli.run('slice_length', 'Slice length: score by weights per slice', argv,
                {'zoo': FLAGS.zoo, 'slice_lengths': lengths},
                'slice_length', FLAGS.zoo, lengths)


if __name__ == '__main__':
  app.run(main, flags_parser=cli.flags_parser('slice_length'))
