"""Two processes on localhost, one CPU device each, train one run."""

import os
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

from conftest import MOCK_MAIN, ROOT, TINY, command_env, records, run_main
from jax_resnet import distributed
from jax_resnet import errors
from jax_resnet import metric_logging

ARGS = TINY + ['--config.num_epochs=3']
EXAMPLES = 64


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(('localhost', 0))
    return s.getsockname()[1]


def _start_pair(workdir, extra_env=None):
  port = _free_port()
  env = {**command_env(1, EXAMPLES), **(extra_env or {})}
  return [subprocess.Popen(
      [sys.executable, MOCK_MAIN] + ARGS +
      [f'--workdir={workdir}', f'--coordinator_address=localhost:{port}',
       '--num_processes=2', f'--process_id={i}'],
      cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
      text=True) for i in range(2)]


def _finish(processes, timeout=300):
  outputs = [p.communicate(timeout=timeout) for p in processes]
  for p, (out, err) in zip(processes, outputs):
    assert p.returncode == 0, out + err
  return outputs


def test_two_processes_equal_two_devices_and_resume_after_kill_9(tmp_path):
  reference = tmp_path / 'one_process'
  run_main(ARGS + [f'--workdir={reference}'], devices=2, examples=EXAMPLES)

  workdir = tmp_path / 'two_processes'
  pair = _start_pair(workdir, {'PAUSE_AFTER_FIRST_EPOCH': '60'})
  deadline = time.time() + 240
  # Epoch 1's checkpoint is complete once Orbax has renamed it into place.
  while not os.path.isdir(workdir / 'checkpoints' / '4'):
    assert time.time() < deadline and all(p.poll() is None for p in pair)
    time.sleep(0.2)
  for p in pair:
    p.send_signal(signal.SIGKILL)
    p.communicate()
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
