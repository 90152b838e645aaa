r"""Writes a zoo as the published NWS release format: a folder per net and train/test split CSVs.

  python -m nws_jax.export_nws --zoo=/tmp/zoo --out=/tmp/nws_release --test_fraction=0.2 --seed=0

Each kept model becomes out/nets/<prefix>_<model_id:06d>/ (weights/001.bin … 020.bin as raw
little-endian float64, meta.csv, error.bin, stat.bin; PROTOCOL §4) and a row of out/train.csv or
out/test.csv (split by model, seeded). Models that failed to train are left out, as the release
left them out, unless --include_failed. stat.bin's seconds is the whole zoo's wall time (its nets
trained together). See nws_jax/release/convert.py for every field.
Exit code 2, with one line on stderr, for bad flags, a zoo that cannot be read (missing, damaged
or truncated files) or predates steps_per_epoch, a split that leaves a side empty, an --out
inside the zoo, or one that is not empty (unless --overwrite; never a zoo, a meta-classifier run,
or a folder holding the zoo), or an --out that another nws_jax command is writing (its lock,
nws_jax/workdir_lock.py); nothing is written then. Out of disk space, exit 2 with one line naming
the file it was writing (`cannot write …: No space left on device`), and nothing left behind.
"""

import functools

from absl import app
from absl import flags

from nws_jax import cli
from nws_jax import files
from nws_jax import workdir_lock

FLAGS = flags.FLAGS

flags.DEFINE_string('zoo', None, 'Zoo workdir to export (written by train_zoo).')
flags.DEFINE_string('out', None, 'Folder of the release (created; must be absent or empty).')
flags.DEFINE_float('test_fraction', 0.2, 'Share of the nets listed in test.csv.')
flags.DEFINE_integer('seed', 0, 'Seed of the train/test split.')
flags.DEFINE_bool('include_failed', False,
                  'Export the models that failed to train too (the release left them out).')
flags.DEFINE_string('prefix', 'nwsjax', 'Net folder names: <prefix>_<model_id:06d>.')
flags.DEFINE_bool('overwrite', False, 'Replace a non-empty --out (once the new one is complete).')
flags.DEFINE_bool('progress', True, 'Show a progress bar.')

_fail = functools.partial(cli.fail, 'export_nws')


def main(argv):
  cli.begin('export_nws', argv, required=('zoo', 'out'))
  # Imported here so that --help and flag errors stay fast.
  from nws_jax.release import convert as release_convert
  from nws_jax import zoo as zoo_lib

  try:
    summary = release_convert.export_zoo(
        FLAGS.zoo, FLAGS.out, test_fraction=FLAGS.test_fraction, seed=FLAGS.seed,
        include_failed=FLAGS.include_failed, prefix=FLAGS.prefix, overwrite=FLAGS.overwrite,
        progress=FLAGS.progress)
  except (ValueError, OSError, zoo_lib.ZooError, workdir_lock.LockedError) as e:
    _fail(' '.join(str(files.no_space_error(e, FLAGS.out) or e).split()))
  print(f'{summary["nets"]} nets ({summary["train"]} in train.csv, {summary["test"]} in test.csv'
        f', {summary["left_out_failed"]} failed left out), {summary["bytes"] / 2**20:.1f} MiB in '
        f'{summary["out"]}')


if __name__ == '__main__':
  app.run(main, flags_parser=cli.flags_parser('export_nws'))
