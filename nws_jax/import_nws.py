r"""Imports nets of the published NWS release format into a zoo workdir that load_zoo reads.

  python -m nws_jax.import_nws --csv=/data/nws/train.csv,/data/nws/test.csv --out=/tmp/nws_zoo

Reads the split CSVs (PROTOCOL §4), checks every listed net, then streams them net by net into
Orbax snapshot chunks of about --chunk_mb MiB (memory holds one chunk), with models.csv (the 13
properties, accuracies from error.bin, epochs and seconds from stat.bin, the source folder),
curves.csv and config.json. Weights are rounded from the release's float64 to float32, as our
zoos store them (a zoo written by export_nws comes back bit-identical). A damaged net (missing or
wrong-size files, non-finite weights) fails the import, naming it, or with --on_damaged=skip is
left out and listed in config.json; --scan_nans reads every net once more up front to find
non-finite weights before anything is written. See nws_jax/release/convert.py.
Exit code 2, with one line on stderr, for bad flags, an unreadable CSV (or values outside
PROTOCOL §1, an unknown dataset), a damaged net (unless skipped), an --out inside the inputs
(the release folder of the CSVs too), or one that is not empty (unless --overwrite; never a
release, a meta-classifier run, or a folder holding the inputs), or an --out that another nws_jax
command is writing (its lock, nws_jax/workdir_lock.py); nothing is written then. Out of disk
space, exit 2 with one line naming what it was writing, and nothing left behind.
"""

import functools

from absl import app
from absl import flags

from nws_jax import cli
from nws_jax import files
from nws_jax import workdir_lock

FLAGS = flags.FLAGS

flags.DEFINE_list('csv', None, 'Split CSV(s) of the release, comma-separated (e.g. train,test).')
flags.DEFINE_string('out', None, 'Zoo workdir to write (created; must be absent or empty).')
flags.DEFINE_enum('on_damaged', 'fail', ['fail', 'skip'],
                  'What a damaged net does: fail the import, or skip it (listed in config.json).')
flags.DEFINE_bool('scan_nans', False,
                  'Read every net in full when opening the release, to find non-finite weights '
                  'before writing anything.')
flags.DEFINE_float('chunk_mb', 256, 'Size of the snapshot chunks written (MiB): bounds memory.')
flags.DEFINE_bool('overwrite', False, 'Replace a non-empty --out (once the new one is complete).')
flags.DEFINE_bool('progress', True, 'Show a progress bar.')

_fail = functools.partial(cli.fail, 'import_nws')


def main(argv):
  cli.begin('import_nws', argv, required=('csv', 'out'))
  # Imported here so that --help and flag errors stay fast.
  from nws_jax.release import convert as release_convert
  from nws_jax import zoo as zoo_lib

  try:
    summary = release_convert.import_release(
        FLAGS.csv, FLAGS.out, on_damaged=FLAGS.on_damaged, scan_nans=FLAGS.scan_nans,
        chunk_mb=FLAGS.chunk_mb, overwrite=FLAGS.overwrite, progress=FLAGS.progress)
  except (ValueError, OSError, zoo_lib.ZooError, workdir_lock.LockedError) as e:
    _fail(' '.join(str(files.no_space_error(e, FLAGS.out) or e).split()))
  print(f'{summary["models"]} nets imported ({summary["damaged"]} damaged left out), '
        f'{summary["bytes"] / 2**20:.1f} MiB of float32 snapshots in {summary["chunks"]} chunks '
        f'in {summary["out"]}')


if __name__ == '__main__':
  app.run(main, flags_parser=cli.flags_parser('import_nws'))
