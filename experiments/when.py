r"""When: how the score depends on the training snapshots read (PROTOCOL §6).

  python experiments/when.py --workdir=workdirs/when [--ranges=early:1-5,late:16-20,all:1-20]

Meta-classifiers trained on early, late and all snapshots of one zoo (--zoo), each scored on
every snapshot number from the initialisation (1) to the converged model (20). Writes when.csv,
when_trained.csv, when.png and summary.md.
"""

from absl import app
from absl import flags

from nws_jax import cli
from nws_jax.study import cli as study_cli

flags.DEFINE_enum('zoo', 'fixed', ['fixed', 'mixed'], 'The zoo studied.')
flags.DEFINE_list('ranges', ['early:1-5', 'late:16-20', 'all:1-20'],
                  'Snapshot ranges to train on, NAME:FIRST-LAST, comma-separated.')
FLAGS = flags.FLAGS


def parse_ranges(prog: str, values) -> list[tuple[str, tuple[int, int]]]:
  from nws_jax.meta import slices as slices_lib

  ranges = []
  for value in values:
    name, sep, span = value.partition(':')
    if not sep or not name:
      cli.fail(prog, f'--ranges: expected NAME:FIRST-LAST, got {value!r}')
    try:
      first, last = slices_lib.parse_snapshot_range(span)
    except ValueError as e:
      cli.fail(prog, f'--ranges {value}: {e}')
    if not 1 <= first <= last:
      cli.fail(prog, f'--ranges {value}: snapshots are numbered from 1, FIRST before LAST')
    ranges.append((name, (first, last)))
  if not ranges or len({n for n, _ in ranges}) != len(ranges):
    cli.fail(prog, '--ranges: give at least one range, each with its own name')
  return ranges


def main(argv):
  ranges = parse_ranges('when', FLAGS.ranges)
  study_cli.run('when', 'When: score by training snapshot', argv,
                {'zoo': FLAGS.zoo, 'ranges': ranges},
                'when', FLAGS.zoo, ranges)


if __name__ == '__main__':
  app.run(main, flags_parser=cli.flags_parser('when'))
