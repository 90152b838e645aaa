"""Bad input to the command lines (issue 8, point 5): unknown datasets and properties,
out-of-range values, a workdir that exists, is a file or is of the wrong kind, truncated or
corrupted zoos, checkpoints and releases. Each is refused with exit code 2 and one line
`prog: error: …` naming the problem, no traceback, and the inputs and the output are left exactly
as they were (nothing created beside them either).

The cases of one command line run in one child process (this file run as a script, `_drive`):
it calls the command's `main` as `app.run` would, once per case, with absl's flags reset in
between and file descriptors 1 and 2 redirected, so a case's stderr is all that a shell would
see, C-level writes included. One case per command line also runs as `python -m nws_jax.<prog>`
to check the real exit status. All of them start together, once per module.
"""

import json
import os
import shutil
import stat
import subprocess
import sys

import pytest

HERE = os.path.abspath(__file__)
PROGS = ('train_meta', 'export_nws', 'import_nws', 'bench')


# --- building damaged inputs --------------------------------------------------------------------

def truncate(path):
  """Cuts the file in half."""
  with open(path, 'rb') as f:
    data = f.read()
  with open(path, 'wb') as f:
    f.write(data[:len(data) // 2])


def largest_file(directory, parent=None):
  """The largest file under `directory` (in a folder named `parent`, when given)."""
  paths = [os.path.join(root, name) for root, _, names in os.walk(directory) for name in names
           if parent is None or os.path.basename(root) == parent]
  return max(paths, key=os.path.getsize)


def write(path, text, mode='w'):
  with open(path, mode) as f:
    f.write(text)


def entry_state(path):
  """One entry by its lstat: 'dir', ('symlink', target), ('special', type, mtime_ns) for a FIFO
  or device (never opened: a FIFO blocks, /dev/zero never ends), else (bytes, mtime_ns)."""
  info = os.lstat(path)
  if stat.S_ISLNK(info.st_mode):
    return ('symlink', os.readlink(path))
  if stat.S_ISDIR(info.st_mode):
    return 'dir'
  if not stat.S_ISREG(info.st_mode):
    return ('special', stat.S_IFMT(info.st_mode), info.st_mtime_ns)
  with open(path, 'rb') as f:
    return (f.read(), info.st_mtime_ns)


def tree_state(path):
  """Everything under `path` (or the file itself): {relative path: entry_state}; None when
  absent. Symbolic links are recorded, not followed. Equal before and after means nothing there
  was written, created or removed."""
  if not os.path.lexists(path):
    return None
  top = entry_state(path)
  if top != 'dir':
    return {'.': top}
  state = {}
  for root, dirs, names in os.walk(path):  # does not enter linked folders (followlinks=False)
    for name in dirs + names:
      full = os.path.join(root, name)
      state[os.path.relpath(full, path)] = entry_state(full)
  return state


class Inputs:
  """The shared, intact inputs (never written) and copies of them to damage, in a case's folder."""

  def __init__(self, zoo, release, meta):
    self.zoo, self.release, self.meta = zoo, release, meta

  def copy(self, source, d, name, damage=None):
    path = os.path.join(d, name)
    shutil.copytree(source, path)
    if damage is not None:
      damage(path)
    return path

  def zoo_copy(self, d, damage=None, name='zoo'):
    return self.copy(self.zoo, d, name, damage)

  def release_copy(self, d, damage=None, name='release'):
    return self.copy(self.release, d, name, damage)

  def meta_copy(self, d, damage=None, name='meta'):
    return self.copy(self.meta, d, name, damage)


def edit_first_row(csv, column, value):
  import pandas as pd
  table = pd.read_csv(csv)
  table.loc[0, column] = value
  table.to_csv(csv, index=False)


def unknown_dataset(release):
  edit_first_row(f'{release}/train.csv', 'dataset', 'imagenet')


def notes(d, name='out'):
  """A folder holding one file of the user's."""
  path = os.path.join(d, name)
  os.makedirs(path)
  write(os.path.join(path, 'notes.txt'), 'keep me')
  return path


def look_alike(d, *names):
  """A user's folder holding files named as this project's outputs (notes.txt beside them)."""
  path = notes(d)
  for name in names:
    write(os.path.join(path, name), '{"mine": true}')
  return path


def a_file(d, name='out'):
  path = os.path.join(d, name)
  write(path, 'a file, not a folder')
  return path


def rename_chunk(zoo):
  os.rename(os.path.join(zoo, 'snapshots', '0'), os.path.join(zoo, 'snapshots', '1'))


def flip_snapshot_byte(zoo):
  """Inverts the middle byte of the snapshots' largest data file: Orbax decodes it to wrong
  weights of one model, with no error of its own (caught by the checksums)."""
  path = largest_file(f'{zoo}/snapshots')
  with open(path, 'r+b') as f:
    f.seek(os.path.getsize(path) // 2)
    byte = f.read(1)
    f.seek(-1, os.SEEK_CUR)
    f.write(bytes([byte[0] ^ 0xFF]))


def edit_config(zoo, config):
  write(f'{zoo}/config.json', json.dumps(config))


def repeat_model_id(zoo):
  edit_first_row(f'{zoo}/models.csv', 'model_id', 1)


def bad_split(meta):
  write(os.path.join(meta, 'split.json'), '{"train": [0, 1, 2], "valid": [], "test": [999]}')


def cut_error_bin(release):
  net = os.path.join(release, 'nets', sorted(os.listdir(os.path.join(release, 'nets')))[0])
  path = os.path.join(net, 'error.bin')
  with open(path, 'rb') as f:
    data = f.read()
  write(path, data[:3 * 5 * 8], 'wb')  # 3 whole rows of 5 float64; stat.bin counts 6 exports


def cut_weight_file(release):
  net = os.path.join(release, 'nets', sorted(os.listdir(os.path.join(release, 'nets')))[0])
  truncate(os.path.join(net, 'weights', '005.bin'))


def first_net(release):
  """The folder of the first net listed in train.csv."""
  import pandas as pd
  return os.path.join(release, pd.read_csv(f'{release}/train.csv')['path'][0])


def make_fifo(path):
  """Replaces the file at `path` with a FIFO: opening it to read blocks until a writer comes."""
  os.remove(path)
  os.mkfifo(path)


def link_to_dev_zero(path):
  """Replaces the file at `path` with a symbolic link to /dev/zero: endless zeros."""
  os.remove(path)
  os.symlink('/dev/zero', path)


def alias_in_test_csv(release):
  """nets/alias, a symbolic link to train.csv's first net, listed again in test.csv."""
  import pandas as pd
  train, test = pd.read_csv(f'{release}/train.csv'), pd.read_csv(f'{release}/test.csv')
  os.symlink(os.path.basename(train['path'][0]), f'{release}/nets/alias')
  pd.concat([test, train.iloc[[0]].assign(path='nets/alias')]).to_csv(
      f'{release}/test.csv', index=False)


# Hostile release files (issue 18 point 4): id -> (keyword, damage(release)); each case runs
# for import_nws and for train_meta --nws_csv. None may hang or fill the memory.
HOSTILE_RELEASES = {
    'meta_csv_fifo': ('meta.csv is a FIFO, not a regular file',
                      lambda r: make_fifo(f'{first_net(r)}/meta.csv')),
    'stat_bin_fifo': ('stat.bin is a FIFO, not a regular file',
                      lambda r: make_fifo(f'{first_net(r)}/stat.bin')),
    'meta_csv_links_to_dev_zero': ('meta.csv is a character device, not a regular file',
                                   lambda r: link_to_dev_zero(f'{first_net(r)}/meta.csv')),
    'split_csv_fifo': ('test.csv is a FIFO, not a regular file',
                       lambda r: make_fifo(f'{r}/test.csv')),
    'net_listed_twice_via_symlink': ('is listed more than once (again as', alias_in_test_csv),
}


# --- the cases: id -> (keyword of the error line, setup(inputs, case folder) -> argv) ---------

TM = ['--progress=false', '--slice_length=40', '--epochs=1']


def _tm_zoo(damage):
  return lambda i, d: TM + [f'--zoo={i.zoo_copy(d, damage)}', f'--workdir={d}/meta']


def _tm_flags(*flags):
  return lambda i, d: TM + [f'--zoo={i.zoo}', f'--workdir={d}/meta', *flags]


def _tm_evaluate(damage):
  return lambda i, d: ['--progress=false', '--evaluate_only',
                       f'--workdir={i.meta_copy(d, damage)}']


def _tm_release(damage):
  def setup(i, d):
    release = i.release_copy(d, damage)
    return TM + [f'--nws_csv={release}/train.csv', f'--nws_test_csv={release}/test.csv',
                 f'--workdir={d}/meta']
  return setup


TRAIN_META = {
    # flags
    'unknown_property': ("unknown property 'colour'", _tm_flags('--properties=colour')),
    'property_named_twice': ('named twice', _tm_flags('--properties=optimizer,optimizer')),
    'constant_property': ("'activation' does not vary", _tm_flags('--properties=activation')),
    'zero_slice_length': ('slice_length must be at least 1', _tm_flags('--slice_length=0')),
    'slice_longer_than_vector': ('longer than the vector', _tm_flags('--slice_length=201')),
    'negative_batch_size': ('batch_size must be at least 1', _tm_flags('--batch_size=-4')),
    'nan_learning_rate': ('learning_rate must be a positive number',
                          _tm_flags('--learning_rate=nan')),
    'negative_seed': ('seed must be non-negative', _tm_flags('--seed=-1')),
    'seed_of_33_bits': ('seed must be below 2**32', _tm_flags('--seed=4294967296')),
    'seed_beyond_64_bits': ('seed must be below 2**32', _tm_flags(f'--seed={2 ** 64 + 1}')),
    'test_fraction_one': ('test_fraction must be in (0, 1)', _tm_flags('--test_fraction=1')),
    'snapshots_out_of_range': ("outside the zoo's snapshots 1-20", _tm_flags('--snapshots=15-21')),
    'zero_positions': ('positions must be an integer of at least 1',
                       _tm_flags('--positions=0')),
    'non_integer_widths': ('--conv_widths must be comma-separated integers',
                           _tm_flags('--conv_widths=8,x')),
    'unknown_flag': ("'bogus'", _tm_flags('--bogus=1')),
    'zoo_and_release': ('not both', _tm_flags(f'--nws_csv={HERE}')),
    'unknown_dataset_in_release': ("unknown dataset 'imagenet'", lambda i, d: TM + [
        f'--nws_csv={i.release_copy(d, unknown_dataset)}/train.csv', f'--workdir={d}/meta']),
    # the workdir
    'workdir_not_empty': ('is not empty', lambda i, d: TM + [
        f'--zoo={i.zoo}', f'--workdir={notes(d)}']),
    'workdir_is_a_file': ('exists and is not a directory', lambda i, d: TM + [
        f'--zoo={i.zoo}', f'--workdir={a_file(d)}']),
    'overwrite_a_zoo': ('holds a zoo', lambda i, d: TM + [
        f'--zoo={i.zoo}', f'--workdir={i.zoo_copy(d, name="other_zoo")}', '--overwrite']),
    'overwrite_a_release': ('holds a release', lambda i, d: TM + [
        f'--zoo={i.zoo}', f'--workdir={i.release_copy(d)}', '--overwrite']),
    'overwrite_a_user_folder': ('was not written by train_meta', lambda i, d: TM + [
        f'--zoo={i.zoo}', f'--workdir={notes(d)}', '--overwrite']),
    'overwrite_a_look_alike': ('was not written by train_meta', lambda i, d: TM + [
        f'--zoo={i.zoo}', f'--workdir={look_alike(d, "run.json", "split.json")}',
        '--overwrite']),
    'overwrite_the_zoo_read': ('holds the input', lambda i, d: TM + [
        f'--zoo={i.zoo_copy(notes(d, "outer"))}', f'--workdir={d}/outer', '--overwrite']),
    'overwrite_inside_the_zoo_read': ('lies inside the input', lambda i, d: TM + [
        f'--zoo={i.zoo_copy(d)}', f'--workdir={d}/zoo/snapshots', '--overwrite']),
    'workdir_inside_the_zoo_read': ('lies inside the input', lambda i, d: TM + [
        f'--zoo={i.zoo_copy(d)}', f'--workdir={d}/zoo/meta']),
    # the zoo
    'no_zoo': ('no zoo at', lambda i, d: TM + [f'--zoo={d}/none', f'--workdir={d}/meta']),
    'zoo_is_a_meta_workdir': ('holds a meta-classifier run', lambda i, d: TM + [
        f'--zoo={i.meta_copy(d)}', f'--workdir={d}/out']),
    'zoo_is_a_release': ('holds a release', lambda i, d: TM + [
        f'--zoo={i.release_copy(d)}', f'--workdir={d}/out']),
    'models_csv_truncated': ('models.csv is truncated',
                             _tm_zoo(lambda z: truncate(f'{z}/models.csv'))),
    'models_csv_garbage': ('models.csv: not a readable CSV',
                           _tm_zoo(lambda z: write(f'{z}/models.csv', 'a,b\n1,2,3,4\n"x\n'))),
    'models_csv_lacks_a_column': ('lacks column weightn_conv', _tm_zoo(lambda z: write(
        f'{z}/models.csv', open(f'{z}/models.csv').read().replace('weightn_conv', 'w_conv')))),
    'config_not_json': ('config.json is damaged',
                        _tm_zoo(lambda z: write(f'{z}/config.json', '{"synthetic": '))),
    'curves_csv_truncated': ('curves.csv is truncated',
                             _tm_zoo(lambda z: truncate(f'{z}/curves.csv'))),
    'snapshot_data_truncated': ('cannot read snapshots',
                                _tm_zoo(lambda z: truncate(largest_file(f'{z}/snapshots')))),
    'snapshot_manifest_garbage': ('cannot read snapshots', _tm_zoo(lambda z: write(
        f'{z}/snapshots/0/default/manifest.ocdbt', 'garbage'))),
    'snapshot_metadata_truncated': ('_METADATA is damaged', _tm_zoo(
        lambda z: truncate(f'{z}/snapshots/0/default/_METADATA'))),
    'snapshot_chunk_missing': ('chunk 0 of the snapshots', _tm_zoo(rename_chunk)),
    # models.csv or config.json edited after training (issue 18 point 3)
    'property_edited': ('but it was trained with optimizer=0', _tm_zoo(
        lambda z: edit_first_row(f'{z}/models.csv', 'optimizer', 1))),
    'property_outside_protocol': ('has optimizer=7; PROTOCOL §1 allows 0, 1, 2', _tm_zoo(
        lambda z: edit_first_row(f'{z}/models.csv', 'optimizer', 7))),
    'dataset_not_built_from': ("has dataset='cifar10', not one the zoo was built from", _tm_zoo(
        lambda z: (edit_config(z, {'zoo': {'datasets': ['digits', 'shapes']}}),
                   edit_first_row(f'{z}/models.csv', 'dataset', 'cifar10')))),
    'model_id_twice': ('model_id 1 is listed more than once', _tm_zoo(repeat_model_id)),
    'num_models_changed': ('lists 40 models, but config.json says the zoo has 41', _tm_zoo(
        lambda z: edit_config(z, {'zoo': {'num_models': 41}}))),
    'config_edited': ('config.json was changed after the zoo was trained', _tm_zoo(
        lambda z: edit_config(z, {'synthetic': False}))),
    'snapshot_byte_flipped': ('do not match their checksum', _tm_zoo(flip_snapshot_byte)),
    # --evaluate_only: the workdir must hold an intact run
    'evaluate_a_zoo': ('holds a zoo', lambda i, d: [
        '--evaluate_only', f'--workdir={i.zoo_copy(d)}']),
    'evaluate_checkpoint_truncated': ('cannot read the meta-classifier checkpoint', _tm_evaluate(
        lambda m: truncate(largest_file(f'{m}/checkpoint', parent='d')))),
    'evaluate_run_json_damaged': ('run.json is damaged',
                                  _tm_evaluate(lambda m: write(f'{m}/run.json', '{}'))),
    'evaluate_config_not_json': ('config.json is damaged',
                                 _tm_evaluate(lambda m: truncate(f'{m}/config.json'))),
    'evaluate_history_truncated': ('history.csv is truncated',
                                   _tm_evaluate(lambda m: truncate(f'{m}/history.csv'))),
    'evaluate_split_out_of_range': ('names model 999', _tm_evaluate(bad_split)),
    'evaluate_unknown_option': ('evaluation.json is damaged', _tm_evaluate(
        lambda m: write(f'{m}/evaluation.json', '{"bogus": 1}'))),
}

EX = ['--progress=false']


def _ex_zoo(damage):
  return lambda i, d: EX + [f'--zoo={i.zoo_copy(d, damage)}', f'--out={d}/out']


def _ex_flags(*flags):
  return lambda i, d: EX + [f'--zoo={i.zoo}', f'--out={d}/out', *flags]


EXPORT_NWS = {
    'no_zoo': ('no zoo at', lambda i, d: EX + [f'--zoo={d}/none', f'--out={d}/out']),
    'zoo_is_a_meta_workdir': ('holds a meta-classifier run', lambda i, d: EX + [
        f'--zoo={i.meta_copy(d)}', f'--out={d}/out']),
    'models_csv_truncated': ('models.csv is truncated',
                             _ex_zoo(lambda z: truncate(f'{z}/models.csv'))),
    'config_not_json': ('config.json is damaged',
                        _ex_zoo(lambda z: write(f'{z}/config.json', '[1, '))),
    'snapshot_data_truncated': ('cannot read snapshots',
                                _ex_zoo(lambda z: truncate(largest_file(f'{z}/snapshots')))),
    'snapshot_byte_flipped': ('do not match their checksum', _ex_zoo(flip_snapshot_byte)),
    'property_edited': ('but it was trained with optimizer=0', _ex_zoo(
        lambda z: edit_first_row(f'{z}/models.csv', 'optimizer', 1))),
    'property_outside_protocol': ('has batch_size=63', _ex_zoo(
        lambda z: edit_first_row(f'{z}/models.csv', 'batch_size', 63))),
    'model_id_twice': ('model_id 1 is listed more than once', _ex_zoo(repeat_model_id)),
    'out_not_empty': ('is not empty', lambda i, d: EX + [f'--zoo={i.zoo}', f'--out={notes(d)}']),
    'out_is_a_file': ('is not a folder', lambda i, d: EX + [
        f'--zoo={i.zoo}', f'--out={a_file(d)}']),
    'overwrite_a_zoo': ('holds a zoo', lambda i, d: EX + [
        f'--zoo={i.zoo}', f'--out={i.zoo_copy(d, name="other_zoo")}', '--overwrite']),
    'overwrite_a_meta_workdir': ('holds a meta-classifier run', lambda i, d: EX + [
        f'--zoo={i.zoo}', f'--out={i.meta_copy(d)}', '--overwrite']),
    'overwrite_a_user_folder': ('was not written by export_nws', lambda i, d: EX + [
        f'--zoo={i.zoo}', f'--out={notes(d)}', '--overwrite']),
    'overwrite_a_look_alike': ('was not written by export_nws', lambda i, d: EX + [
        f'--zoo={i.zoo}', f'--out={look_alike(d, "train.csv", "test.csv")}', '--overwrite']),
    'overwrite_the_zoo_read': ('holds the input', lambda i, d: EX + [
        f'--zoo={i.zoo_copy(d)}', f'--out={d}/zoo', '--overwrite']),
    'overwrite_inside_the_zoo_read': ('lies inside the input', lambda i, d: EX + [
        f'--zoo={i.zoo_copy(d)}', f'--out={d}/zoo/snapshots', '--overwrite']),
    'out_inside_the_zoo_read': ('lies inside the input', lambda i, d: EX + [
        f'--zoo={i.zoo_copy(d)}', f'--out={d}/zoo/release']),
    'zero_test_fraction': ('test_fraction must be in (0, 1)', _ex_flags('--test_fraction=0')),
    'negative_seed': ('seed must be a non-negative integer', _ex_flags('--seed=-1')),
    'prefix_with_a_slash': ("prefix 'a/b'", _ex_flags('--prefix=a/b')),
    'unknown_flag': ("'bogus'", _ex_flags('--bogus=1')),
}

IM = ['--progress=false']


def _im_release(damage):
  def setup(i, d):
    release = i.release_copy(d, damage)
    return IM + [f'--csv={release}/train.csv,{release}/test.csv', f'--out={d}/out']
  return setup


def _im_flags(*flags):
  return lambda i, d: IM + [f'--csv={i.release}/train.csv', f'--out={d}/out', *flags]


IMPORT_NWS = {
    'no_csv': ('no split CSV at', lambda i, d: IM + [f'--csv={d}/none.csv', f'--out={d}/out']),
    'csv_is_a_models_csv': ('missing columns path', lambda i, d: IM + [
        f'--csv={i.zoo}/models.csv', f'--out={d}/out']),
    'csv_garbage': ('not a readable CSV',
                    _im_release(lambda r: write(f'{r}/train.csv', b'\x80\x81junk\n', 'wb'))),
    'unknown_dataset': ("unknown dataset 'imagenet'", _im_release(unknown_dataset)),
    'batch_size_outside_protocol': ("'batch_size' holds 63", _im_release(
        lambda r: edit_first_row(f'{r}/train.csv', 'batch_size', 63))),
    'weight_file_truncated': ('005.bin has', _im_release(cut_weight_file)),
    'error_bin_truncated': ('error.bin: 3 rows', _im_release(cut_error_bin)),
    'listed_twice': ('listed more than once', lambda i, d: IM + [
        f'--csv={i.release}/train.csv,{i.release}/train.csv', f'--out={d}/out']),
    'zero_chunk_mb': ('chunk_mb must be positive', _im_flags('--chunk_mb=0')),
    'out_not_empty': ('is not empty', lambda i, d: IM + [
        f'--csv={i.release}/train.csv', f'--out={notes(d)}']),
    'overwrite_a_release': ('holds a release', lambda i, d: IM + [
        f'--csv={i.release}/train.csv', f'--out={i.release_copy(d)}', '--overwrite']),
    'overwrite_a_meta_workdir': ('holds a meta-classifier run', lambda i, d: IM + [
        f'--csv={i.release}/train.csv', f'--out={i.meta_copy(d)}', '--overwrite']),
    'overwrite_a_user_folder': ('was not written by import_nws', lambda i, d: IM + [
        f'--csv={i.release}/train.csv', f'--out={notes(d)}', '--overwrite']),
    'overwrite_a_look_alike': ('was not written by import_nws', lambda i, d: IM + [
        f'--csv={i.release}/train.csv', f'--out={look_alike(d, "models.csv")}', '--overwrite']),
    'overwrite_the_release_read': ('holds the input', lambda i, d: IM + [
        f'--csv={i.release_copy(d)}/train.csv', f'--out={d}/release', '--overwrite']),
    'out_inside_the_release_read': ('lies inside the input', lambda i, d: IM + [
        f'--csv={i.release_copy(d)}/train.csv', f'--out={d}/release/zoo']),
}

for _case, (_keyword, _damage) in HOSTILE_RELEASES.items():
  TRAIN_META[_case] = (_keyword, _tm_release(_damage))
  IMPORT_NWS[_case] = (_keyword, _im_release(_damage))

BENCH = {
    'unknown_suite': ("unknown suite 'bogus'", lambda i, d: ['--suite=bogus']),
    'zero_models': ('num_models must be positive', lambda i, d: ['--num_models=0']),
    'non_integer_models': ('comma-separated integers', lambda i, d: ['--num_models=a']),
    'zero_batch_size': ('batch_size must be at least 1', lambda i, d: ['--batch_size=0']),
    'json_out_without_folder': ('--json_out: no directory', lambda i, d: [
        f'--json_out={d}/none/rows.jsonl']),
    'json_out_is_a_folder': ('is a directory; name a file', lambda i, d: [
        '--suite=io', f'--json_out={notes(d)}']),
    'workdir_is_a_file': ('exists and is not a directory', lambda i, d: [
        '--suite=io', f'--workdir={a_file(d)}']),
}

CASES = {'train_meta': TRAIN_META, 'export_nws': EXPORT_NWS, 'import_nws': IMPORT_NWS,
         'bench': BENCH}
# The case each command line also runs as `python -m nws_jax.<prog>`.
COMMAND_LINE_CASE = {'train_meta': 'models_csv_truncated', 'export_nws': 'overwrite_a_meta_workdir',
                     'import_nws': 'unknown_dataset', 'bench': 'zero_models'}


# --- the child process ----------------------------------------------------------------------------

def _captured(run):
  """(return value of run(), what fds 1 and 2 received) — fd 1 is thrown away."""
  import tempfile
  sys.stdout.flush()
  sys.stderr.flush()
  saved = os.dup(1), os.dup(2)
  with tempfile.TemporaryFile() as err, open(os.devnull, 'wb') as null:
    os.dup2(null.fileno(), 1)
    os.dup2(err.fileno(), 2)
    try:
      code = run()
    finally:
      sys.stdout.flush()
      sys.stderr.flush()
      os.dup2(saved[0], 1)
      os.dup2(saved[1], 2)
      os.close(saved[0])
      os.close(saved[1])
    err.seek(0)
    return code, err.read().decode('utf-8', 'replace')


def _drive(prog, cases_path, out_path):
  """Runs `prog`'s main once per case of `cases_path` ({id: argv}) as app.run would; writes
  {id: {code, stderr}} to `out_path`."""
  import importlib
  import traceback

  from absl import flags
  from absl import logging

  from nws_jax import cli
  module = importlib.import_module('nws_jax.bench.__main__' if prog == 'bench'
                                   else f'nws_jax.{prog}')
  logging.use_absl_handler()  # as app.run does
  parse = cli.flags_parser(prog)

  def main(argv):
    try:
      module.main(parse([prog, *argv]))
    except SystemExit as e:
      return e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    except BaseException:  # an uncaught error: what app.run would print, and exit 1
      traceback.print_exc()
      return 1
    return 0

  with open(cases_path) as f:
    cases = json.load(f)
  results = {}
  for case, argv in cases.items():
    flags.FLAGS.unparse_flags()
    code, stderr = _captured(lambda: main(argv))
    results[case] = dict(code=code, stderr=stderr)
  with open(out_path, 'w') as f:
    json.dump(results, f)


# --- running every case once per module -------------------------------------------------------

def _write_meta_run(zoo, workdir):
  """A meta-classifier workdir as train_meta leaves it, of a stack of random parameters with the
  real one's shapes (nothing trained or compiled: these cases never get as far as evaluating
  it)."""
  import jax
  import jax.numpy as jnp
  import numpy as np
  import pandas as pd

  from nws_jax.meta import pipeline
  from nws_jax.meta import source as source_lib
  from nws_jax.meta import store
  from nws_jax.meta import train as train_lib
  config = train_lib.MetaConfig(properties=('initialization',), slice_length=40,
                                conv_widths=(4,), dense_widths=(8,), epochs=1)
  source = source_lib.from_zoo(zoo)
  split, targets = pipeline.plan(config, source)
  spec = train_lib.model_spec(config, targets, source.table)
  keys = train_lib.member_keys_for(config.seed, jnp.asarray([t.code for t in targets]))
  shapes = jax.eval_shape(lambda k: train_lib.init_members(
      k, spec=spec, learning_rate=config.learning_rate), keys)
  rng = np.random.default_rng(0)  # not zeros: compressed to nothing, they leave no file to cut
  state = jax.tree.map(lambda a: rng.normal(size=a.shape).astype(a.dtype), shapes)
  history = pd.DataFrame([dict(epoch=1, property='initialization', train_loss=1.0,
                               valid_score=0.5)])
  os.makedirs(workdir)
  store.save_run(workdir, train_lib.MetaRun(config, targets, split, spec, state['params'],
                                            state['batch_stats'], history), source.description)
  store.save_eval_options(workdir, pipeline.EvalOptions().to_json())
  store.load_run(workdir)  # readable as it is


@pytest.fixture(scope='module')
def inputs(tmp_path_factory, synthetic_zoo_dir):
  from nws_jax.release import convert as release_convert
  base = str(tmp_path_factory.mktemp('bad_input_inputs'))
  release = os.path.join(base, 'release')
  release_convert.export_zoo(synthetic_zoo_dir, release)
  meta = os.path.join(base, 'meta')
  _write_meta_run(synthetic_zoo_dir, meta)
  return Inputs(synthetic_zoo_dir, release, meta)


def _communicate(key, child, children, timeout=600):
  """child.communicate(); a child that outlives `timeout` seconds (a case hangs, e.g. on a FIFO)
  fails the fixture, and every child is killed rather than left blocked or filling memory."""
  try:
    return child.communicate(timeout=timeout)
  except subprocess.TimeoutExpired:
    for other in children.values():
      other.kill()
    pytest.fail(f'the {key} child ran over {timeout} s (a case hangs?)')


@pytest.fixture(scope='module')
def runs(tmp_path_factory, inputs):
  """{prog: {case: dict(code, stderr, before, after, keyword)}}; the cases in
  COMMAND_LINE_CASE run again as `python -m nws_jax.<prog>`, under prog 'command_line/<prog>'."""
  base = str(tmp_path_factory.mktemp('bad_input_cases'))
  shared_before = {name: tree_state(getattr(inputs, name)) for name in ('zoo', 'release', 'meta')}
  prepared, children = {}, {}
  env = dict(os.environ, PYTHONUNBUFFERED='1')
  for prog, cases in CASES.items():
    argvs = {}
    for case, (keyword, setup) in cases.items():
      for kind in ('driven', 'command_line') if case == COMMAND_LINE_CASE[prog] else ('driven',):
        folder = os.path.join(base, kind, prog, case)
        os.makedirs(folder)
        argv = setup(inputs, folder)
        key = prog if kind == 'driven' else f'command_line/{prog}'
        prepared.setdefault(key, {})[case] = dict(keyword=keyword, folder=folder, argv=argv,
                                                  before=tree_state(folder))
        if kind == 'driven':
          argvs[case] = argv
        else:
          module = 'nws_jax.bench' if prog == 'bench' else f'nws_jax.{prog}'
          children[key] = subprocess.Popen(
              [sys.executable, '-m', module, *argv], stdout=subprocess.DEVNULL,
              stderr=subprocess.PIPE, text=True, env=env)
    cases_path = os.path.join(base, f'{prog}.cases.json')
    with open(cases_path, 'w') as f:
      json.dump(argvs, f)
    children[prog] = subprocess.Popen(
        [sys.executable, HERE, prog, cases_path, os.path.join(base, f'{prog}.results.json')],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env)
  results = {}
  for key, child in children.items():
    _, stderr = _communicate(key, child, children)
    if key.startswith('command_line/'):
      (case, info), = prepared[key].items()
      results[key] = {case: dict(info, code=child.returncode, stderr=stderr)}
      continue
    assert child.returncode == 0, f'the {key} driver failed:\n{stderr}'
    with open(os.path.join(base, f'{key}.results.json')) as f:
      driven = json.load(f)
    results[key] = {case: dict(info, **driven[case]) for case, info in prepared[key].items()}
  for cases in results.values():
    for info in cases.values():
      info['after'] = tree_state(info['folder'])
  results['shared'] = dict(before=shared_before, after={
      name: tree_state(getattr(inputs, name)) for name in ('zoo', 'release', 'meta')})
  return results


def check_refused(result, prog):
  """Exit code 2, one short line `prog: error: …` holding the case's keyword, no traceback, and
  the case's folder (inputs and output) exactly as it was."""
  stderr = result['stderr']
  assert result['code'] == 2, (result['argv'], stderr)
  assert 'Traceback' not in stderr, stderr
  lines = [line for line in stderr.splitlines() if line.strip()]
  assert len(lines) == 1, stderr
  assert lines[0].startswith(f'{prog}: error: '), stderr
  assert result['keyword'] in lines[0], (result['keyword'], lines[0])
  # Short: a TensorStore error's spec (dozens of lines) is cut.
  assert 'tensorstore_spec' not in lines[0] and len(lines[0]) < 1000, lines[0]
  assert result['after'] == result['before'], (
      'written: ' + ', '.join(sorted(set(result['after'] or {}) ^ set(result['before'] or {})
                                     or ['(changed files)'])))


@pytest.mark.parametrize('case', list(TRAIN_META))
def test_train_meta_refuses_bad_input(runs, case):
  check_refused(runs['train_meta'][case], 'train_meta')


@pytest.mark.parametrize('case', list(EXPORT_NWS))
def test_export_nws_refuses_bad_input(runs, case):
  check_refused(runs['export_nws'][case], 'export_nws')


@pytest.mark.parametrize('case', list(IMPORT_NWS))
def test_import_nws_refuses_bad_input(runs, case):
  check_refused(runs['import_nws'][case], 'import_nws')


@pytest.mark.parametrize('case', list(BENCH))
def test_bench_refuses_bad_flags(runs, case):
  check_refused(runs['bench'][case], 'bench')


@pytest.mark.parametrize('prog', PROGS)
def test_command_line_exits_2_and_writes_nothing(runs, prog):
  """The real `python -m nws_jax.<prog>`: its exit status, its whole stderr."""
  check_refused(runs[f'command_line/{prog}'][COMMAND_LINE_CASE[prog]], prog)


def test_the_intact_inputs_are_never_written(runs):
  shared = runs['shared']
  for name, before in shared['before'].items():
    assert shared['after'][name] == before, name


def test_unread_tensorstore_errors_are_dropped_after_the_one_line_error():
  """What a failed Orbax restore leaves behind (asyncio's report of an unread future holding a
  TensorStore error, seen in a driven case's stderr) is dropped once a command has begun; other
  unread futures are still reported."""
  import logging as python_logging
  from nws_jax import cli

  def record(message):
    return python_logging.LogRecord('asyncio', python_logging.ERROR, __file__, 1, message, None,
                                    None)

  quiet = cli._QuietUnreadReads()
  assert not quiet.filter(record(
      "Future exception was never retrieved\nfuture: <Future finished exception=ValueError("
      "'DATA_LOSS: Error opening \"zarr\" driver [tensorstore_spec=...]')>"))
  assert quiet.filter(record(
      "Future exception was never retrieved\nfuture: <Future finished exception=KeyError('x')>"))
  assert quiet.filter(record('Task was destroyed but it is pending!'))
  # What a save that failed on a full disk leaves (seen in test_checkpoint_integrity's stderr).
  assert not quiet.filter(record(
      "Task exception was never retrieved\nfuture: <Task finished name='Task-9' coro=<...> "
      "exception=ValueError('OUT_OF_RANGE: Error writing \"batch_stats.conv2_bn.mean/0.0\" in "
      "OCDBT database at local file \"/x/.meta.partial-1/checkpoint/\"')>"))
  assert quiet.filter(record(
      "Task exception was never retrieved\nfuture: <Task finished exception=KeyError('x')>"))


def test_unstarted_orbax_writes_are_not_reported_once_a_command_has_begun(monkeypatch):
  """A failed save also leaves Orbax's unstarted chunk writes, which Python would report at exit
  as never-awaited coroutines; other never-awaited coroutines are still reported."""
  import warnings
  from absl import logging
  from nws_jax import cli
  monkeypatch.setattr(sys, 'unraisablehook', sys.unraisablehook)  # begin() replaces it
  monkeypatch.setattr(logging, 'set_verbosity', lambda level: None)
  with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter('always')
    cli.begin('test', ['test'])
    warnings.warn("coroutine 'async_serialize_from_host.<locals>.write_fragment' was never "
                  'awaited', RuntimeWarning)
    warnings.warn("coroutine 'mine' was never awaited", RuntimeWarning)
  assert [str(w.message) for w in caught] == ["coroutine 'mine' was never awaited"]


if __name__ == '__main__':
  _drive(*sys.argv[1:])
