"""The bench command line and its report: errors exit 2; the zoo suite's JSON lines."""

import json
import os
import subprocess
import sys

from nws_jax.bench import report


def run_cli(*args):
  return subprocess.run([sys.executable, '-m', 'nws_jax.bench', *args], capture_output=True,
                        text=True, timeout=600)


def error_line(result):
  lines = [l for l in result.stderr.splitlines() if l.startswith('bench: error:')]
  assert len(lines) == 1, result.stderr
  return lines[0]


def test_unknown_suite_exits_2():
  result = run_cli('--suite=zoo,speed')
  assert result.returncode == 2 and "unknown suite 'speed'" in error_line(result)


def test_bad_sizes_exit_2(tmp_path):
  for args, message in ((['--num_models=8,x'], 'comma-separated integers'),
                        (['--num_models=0'], 'num_models must be positive'),
                        (['--steps=0'], 'steps must be at least 1'),
                        ([f'--json_out={tmp_path}/no/such/file.jsonl'], 'no directory')):
    result = run_cli(*args)
    assert result.returncode == 2, args
    assert message in error_line(result), args


def test_zoo_suite_on_several_cpu_devices_exits_2():
  # They would run in turn (sharding.InTurn): no one program over every device to time.
  env = dict(os.environ, JAX_PLATFORMS='cpu', XLA_FLAGS='--xla_force_host_platform_device_count=2')
  result = subprocess.run([sys.executable, '-m', 'nws_jax.bench', '--suite=zoo'],
                          capture_output=True, text=True, timeout=600, env=env)
  assert result.returncode == 2
  assert 'the 2 cpu devices of this process run in turn' in error_line(result)


def test_zoo_suite_writes_one_json_line_per_size(tmp_path):
  out = tmp_path / 'zoo.jsonl'
  result = run_cli('--suite=zoo', '--num_models=1,2', '--steps=2', '--repeats=1',
                   '--loop_models=1', '--batch_size=8', f'--json_out={out}')
  assert result.returncode == 0, result.stderr
  rows = report.read_json_lines(str(out))
  assert [r['n_models'] for r in rows] == [1, 2]
  for r in rows:
    for field in ('vectorised_model_steps_per_s', 'loop_model_steps_per_s', 'ratio'):
      assert r[field] > 0, (field, r)
    assert r['device'] and r['suite'] == 'zoo'
  assert '== zoo (' in result.stdout and 'vectorised_model_steps_per_s' in result.stdout
  assert not (tmp_path / 'zoo.jsonl.partial').exists()


def test_format_table_groups_by_suite_and_aligns():
  machine = dict(device='cpu', backend='cpu', num_devices=1, jax='0', date='2026-01-01')
  rows = [dict(suite='zoo', n_models=1, rate=12.3456, **machine),
          dict(suite='zoo', n_models=32, rate=1234567.0, **machine),
          dict(suite='io', measure='save', bytes_per_s=2.5e9, **machine)]
  text = report.format_table(rows)
  zoo, io = text.split('\n\n')
  assert zoo.splitlines()[0].startswith('== zoo (device=cpu')
  header, first, second = zoo.splitlines()[1:]
  assert header.split() == ['n_models', 'rate'] and first.split() == ['1', '12.35']
  assert second.split() == ['32', '1.23e+06']
  assert len(header) == len(first) == len(second)
  assert io.splitlines()[2].split() == ['save', '2.5e+09']


def test_json_lines_round_trip(tmp_path):
  path = str(tmp_path / 'rows.jsonl')
  report.write_all([{'a': 1}, {'a': 2.5, 'b': 'x'}], path)
  assert report.read_json_lines(path) == [{'a': 1}, {'a': 2.5, 'b': 'x'}]
  assert json.loads(open(path).readline()) == {'a': 1}
