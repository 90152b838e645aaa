r"""How much: the per-property accuracy table of the reference study (PROTOCOL §6).

  python experiments/property_table.py --workdir=workdirs/table            # tiny, this CPU
  python experiments/property_table.py --scale=paper --workdir=... --data_dir=...

Per zoo (a fixed- and a mixed-architecture one, built in the workdir unless --fixed_zoo /
--mixed_zoo name finished zoos), one meta-classifier per varying property on random slices,
scored on the meta-test models beside chance and the gradient-boosted-tree baselines. Writes
table.csv, table_<zoo>.png and summary.md; each run's full train_meta output is in meta/.
"""

from absl import app
from absl import flags

from nws_jax import cli
from nws_jax.study import cli as study_cli

flags.DEFINE_list('zoos', ['fixed', 'mixed'], 'Zoos to score: fixed, mixed or both.')
FLAGS = flags.FLAGS


def main(argv):
  from nws_jax.configs import study as study_config

  kinds = study_cli.choices('property_table', 'zoos', study_config.ZOO_KINDS)
  study_cli.run('property_table', 'How much: per-property accuracy', argv, {'zoos': kinds},
                'property_table', kinds)


if __name__ == '__main__':
  app.run(main, flags_parser=cli.flags_parser('property_table'))
