r"""Where: how the score depends on where in the weight vector the slice is read (PROTOCOL §6).

  python experiments/where.py --workdir=workdirs/where [--parts=all,conv,dense]

The score against slice position (100 evenly spaced positions at paper scale) of a
meta-classifier trained on the whole vector, and the scores of meta-classifiers trained on the
conv part and on the dense part only (the whole-vector one is also read on each part). Writes
where_position.csv/png, where_parts.csv/png and summary.md.
"""

from absl import app
from absl import flags

from nws_jax import cli
from nws_jax.study import cli as study_cli

flags.DEFINE_enum('zoo', 'fixed', ['fixed', 'mixed'], 'The zoo studied.')
flags.DEFINE_list('parts', ['all', 'conv', 'dense'], 'Parts to train on: all, conv, dense.')
FLAGS = flags.FLAGS


def main(argv):
  from nws_jax.meta import slices as slices_lib

  parts = study_cli.choices('where', 'parts', slices_lib.PARTS)
  study_cli.run('where', 'Where: score by position in the weight vector', argv,
                {'zoo': FLAGS.zoo, 'parts': parts},
                'where', FLAGS.zoo, parts)


if __name__ == '__main__':
  app.run(main, flags_parser=cli.flags_parser('where'))
