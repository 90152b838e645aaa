r"""Ensembles: the per-model score of a vote over many slices of the same model.

  python experiments/ensembles.py --workdir=workdirs/ensembles [--vote_sizes=1,2,5,10,20]

One meta-classifier stack; each meta-test model is read at many random slices of its trained
snapshots and classified by the majority of k slices' classes, or by their mean probabilities,
for each k. Writes ensembles.csv, ensembles.png and summary.md.
"""

from absl import app
from absl import flags

from nws_jax import cli
from nws_jax.study import cli as study_cli

flags.DEFINE_enum('zoo', 'fixed', ['fixed', 'mixed'], 'The zoo studied.')
flags.DEFINE_list('vote_sizes', None, 'Slices per model in a vote, comma-separated (default: '
                  'the scale\'s sweep).')
FLAGS = flags.FLAGS


def main(argv):
  from nws_jax.configs import presets

  sizes = (cli.int_list('ensembles', 'vote_sizes') if FLAGS.vote_sizes
           else presets.SCALES[FLAGS.scale].vote_sizes)
  sizes = sorted(set(sizes))
  if not sizes or sizes[0] < 1:
    cli.fail('ensembles', f'--vote_sizes: expected positive integers, got {FLAGS.vote_sizes}')
  study_cli.run('ensembles', 'Ensembles: per-model score of a vote over k slices', argv,
                {'zoo': FLAGS.zoo, 'vote_sizes': sizes},
                'ensembles', FLAGS.zoo, sizes)


if __name__ == '__main__':
  app.run(main, flags_parser=cli.flags_parser('ensembles'))
