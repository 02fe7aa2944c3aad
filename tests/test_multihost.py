"""Two processes on localhost, one CPU device each, train one run."""

import json
import os
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

from conftest import MOCK_MAIN, ROOT, TINY, command_env, error_lines, records
from conftest import run_main
from jax_resnet import distributed
from jax_resnet import errors
from jax_resnet import exits
from jax_resnet import metric_logging
from jax_resnet.tools import grid

ARGS = TINY + ['--config.num_epochs=3']
EXAMPLES = 64


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(('localhost', 0))
    return s.getsockname()[1]


def _start_pair(workdir, extra_env=None, command=None, second_env=None):
  """Two processes of ``command`` (main.py's arguments on mock data by
  default) forming one run on localhost; ``second_env`` is added to process
  1's environment only."""
  port = _free_port()
  env = {**command_env(1, EXAMPLES, pythonpath=os.path.join(ROOT, 'tests')),
         **(extra_env or {})}
  command = command or ([MOCK_MAIN] + ARGS + [f'--workdir={workdir}'])
  return [subprocess.Popen(
      [sys.executable] + command +
      [f'--coordinator_address=localhost:{port}', '--num_processes=2',
       f'--process_id={i}'],
      cwd=ROOT, env={**env, **((second_env or {}) if i else {})},
      stdout=subprocess.PIPE, stderr=subprocess.PIPE,
      text=True) for i in range(2)]


def _finish(processes, timeout=300):
  outputs = [p.communicate(timeout=timeout) for p in processes]
  for p, (out, err) in zip(processes, outputs):
    assert p.returncode == 0, out + err
  return outputs


def test_two_processes_equal_two_devices_lost_process_and_resume(tmp_path):
  reference = tmp_path / 'one_process'
  run_main(ARGS + [f'--workdir={reference}'], devices=2, examples=EXAMPLES)

  workdir = tmp_path / 'two_processes'
  marker = tmp_path / 'paused'
  pair = _start_pair(workdir, {'PAUSE_AFTER_FIRST_EPOCH': '5',
                               'PAUSE_MARKER': str(marker)})
  deadline = time.time() + 240
  # Both processes are past epoch 1 (its checkpoint written) and sleeping.
  while not all(os.path.exists(f'{marker}.{p.pid}') for p in pair):
    assert time.time() < deadline and all(p.poll() is None for p in pair)
    time.sleep(0.1)
  pair[1].send_signal(signal.SIGKILL)
  pair[1].communicate()
  lost = time.time()
  _, err = pair[0].communicate(timeout=150)
  # Process 0's next collective fails: one message, no traceback, and no
  # wait at the shutdown barrier for the lost process.
  assert time.time() - lost < 120
  assert pair[0].returncode == distributed.LOST_PROCESS_EXIT_CODE, err
  # (The lines before are the mock dataset's warnings.)
  lines = error_lines(err)[-2:]
  assert lines[0].startswith('error: process 0 of 2 stopped: '), err
  assert 'probably lost' in lines[1] and str(workdir) in lines[1], err
  assert 'Traceback' not in err, err
  assert len(metric_logging.read_metrics(str(workdir))) == 1

  restart = _start_pair(workdir)
  (out0, _), (out1, _) = _finish(restart)
  assert 'Resumed from epoch 1' in out0 and '2 device(s)' in out0
  # Process 1 prints nothing of the run and writes nothing: the TensorBoard
  # files (named host.pid) are process 0's, one per launch.
  assert 'epoch' not in out1 and 'Final test accuracy' not in out1
  writers = {f.split('.')[-3] for f in os.listdir(workdir)
             if f.startswith('events.out')}
  assert writers == {str(pair[0].pid), str(restart[0].pid)}
  a, b = records(reference), records(workdir)
  assert [r['step'] for r in a] == [r['step'] for r in b] == [4, 8, 12]
  for ra, rb in zip(a, b):
    for key in ('train_loss', 'test_loss'):
      np.testing.assert_allclose(ra[key], rb[key], rtol=1e-4)
    for key in ('train_accuracy', 'test_accuracy', 'best_test_accuracy'):
      assert ra[key] == pytest.approx(rb[key], abs=1e-6)

  # Both processes evaluate the best checkpoint; process 0 alone prints.
  (out0, _), (out1, _) = _finish(_start_pair(
      workdir, command=[MOCK_MAIN] + ARGS + [f'--workdir={workdir}',
                                             '--mode=eval']))
  result = json.loads(out0.strip().splitlines()[-1])
  best = max(b, key=lambda r: r['test_accuracy'])
  assert result['checkpoint_step'] == best['step']
  assert result['test_accuracy'] == pytest.approx(best['test_accuracy'])
  assert 'test accuracy' not in out1 and 'checkpoint_step' not in out1


def test_a_signal_to_one_process_stops_both_and_the_rerun_resumes(tmp_path):
  """SIGTERM to process 1 alone, 2 steps into epoch 2 (steps 1-4 are epoch
  1): the processes agree to stop where the metrics come back (each
  dispatch, with log_every_steps=1), save the step on both and exit with
  status 0; the same command continues."""
  workdir = tmp_path / 'run'
  pair = _start_pair(workdir, second_env={'SIGNAL_AFTER_STEPS': '6:TERM'})
  (out0, err0), (out1, _) = _finish(pair)
  assert out0.strip().splitlines()[-1] == (
      'Stopped by SIGTERM at epoch 2, step 6 (2 of 4 steps into the epoch), '
      f'saved in mid_epoch/ in {workdir}. Rerun the same command to '
      'continue.'), out0 + err0
  assert 'Stopped' not in out1
  assert [r['step'] for r in records(workdir)] == [4]
  (out0, _), _ = _finish(_start_pair(workdir))
  assert 'Resumed from epoch 1, 2 steps into epoch 2 (step 6)' in out0
  assert [r['step'] for r in records(workdir)] == [4, 8, 12]


def test_a_two_process_grid_runs_each_run_on_both(tmp_path):
  root = tmp_path / 'grid'
  overrides = [a for a in TINY if a.startswith('--config.') and
               'depth' not in a] + ['--config.model.depth=8']
  command = [os.path.join(ROOT, 'tests', 'mock_grid.py'),
             '--settings=resnet20-cifar10',
             '--blocks=mock_grid:NaNBlock,basic', '--seeds=0',
             f'--root={root}', '--epochs=1'] + overrides
  pair = _start_pair(None, command=command)
  (out0, err0), (out1, err1) = [p.communicate(timeout=300) for p in pair]
  # The NaN run fails on both processes alike, and both go on to the next.
  assert [p.returncode for p in pair] == [1, 1], out0 + err0 + out1 + err1
  assert 'failed: resnet20-cifar10 mock_grid:NaNBlock seed0' in out0
  assert '1 finished now' in out0 and '2 device(s)' in out0
  # Process 1 prints nothing of the grid (gloo's connection notice only).
  assert 'resnet20-cifar10' not in out1 and 'Grid' not in out1, out1
  basic = root / 'resnet20-cifar10' / 'basic' / 'seed0'
  status = grid.read_status(str(basic))
  assert (status['state'], status['pid']) == ('done', pair[0].pid)
  assert [r['step'] for r in records(basic)] == [EXAMPLES // 16]
  nan = grid.read_status(str(root / 'resnet20-cifar10' /
                             'mock_grid.NaNBlock' / 'seed0'))
  assert nan['state'] == 'failed'


@pytest.mark.parametrize('kwargs,message', [
    ({'coordinator_address': 'localhost:1234'}, 'go together'),
    ({'coordinator_address': 'h:1', 'num_processes': 2, 'process_id': 2},
     r'--process_id=2 is not in \[0, 2\)'),
    ({'mode': 'slurm'}, "Unknown --distributed='slurm'"),
])
def test_incomplete_flags_are_refused(kwargs, message):
  with pytest.raises(errors.ConfigError, match=message):
    distributed.initialize(**kwargs)


def test_off_by_default():
  assert not distributed.initialize()


# What a host-level all-gather raised in a CI run when its peer was killed:
# a ValueError, not a JaxRuntimeError.
GLOO_ERROR = ('UNKNOWN: Gloo AllGather failed: [external/gloo/gloo/transport/'
              'tcp/pair.cc:547] Connection closed by peer [127.0.0.1]:47832')


class _Exited(Exception):
  pass


@pytest.mark.parametrize('multi_process,error,lost', [
    (True, ValueError(GLOO_ERROR), True),
    (True, ValueError('could not broadcast input array'), False),
    (False, ValueError(GLOO_ERROR), False),
])
def test_a_failed_collective_ends_the_process_as_a_lost_process(
    monkeypatch, capsys, tmp_path, multi_process, error, lost):
  """Whichever collective meets the lost process first (the step's, or the
  host-level all-gather of the stop check, which raises a ValueError), the
  survivor ends with one message and status 1, skipping the shutdown
  barrier (os._exit). Other ValueErrors keep their traceback."""
  codes = []

  def fake_exit(code):
    codes.append(code)
    raise _Exited()

  monkeypatch.setattr(distributed, 'is_multi_process', lambda: multi_process)
  monkeypatch.setattr(distributed.os, '_exit', fake_exit)
  with pytest.raises(_Exited if lost else ValueError):
    with exits.reported(str(tmp_path)):
      raise error
  assert codes == ([distributed.LOST_PROCESS_EXIT_CODE] if lost else [])
  if lost:
    err = capsys.readouterr().err
    assert err.startswith('error: process 0 of 1 stopped: UNKNOWN: Gloo '
                          'AllGather failed'), err
    assert 'probably lost' in err and str(tmp_path) in err
