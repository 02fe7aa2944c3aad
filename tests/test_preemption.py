"""Graceful stops (jax_resnet/preemption.py): SIGTERM or SIGINT mid-epoch
saves the step, and the same command continues bitwise."""

import os
import random
import signal
import subprocess
import sys
import time

import pytest

from conftest import MOCK_MAIN, ROOT, TINY, command_env, records, run_main
from jax_resnet import checkpoints
from jax_resnet import preemption

EXAMPLES = 64  # 4 steps per epoch at batch 16.
ARGS = TINY + ['--config.num_epochs=3']


@pytest.fixture(scope='module')
def timed_reference(tmp_path_factory):
  """The uninterrupted run's records, and how long the command takes once
  its programs are in the compilation cache (a second run, timed)."""
  workdir = tmp_path_factory.mktemp('reference')
  run_main(ARGS + [f'--workdir={workdir}'], examples=EXAMPLES)
  start = time.time()
  run_main(ARGS + [f'--workdir={tmp_path_factory.mktemp("timed")}'],
           examples=EXAMPLES)
  return records(workdir), time.time() - start


@pytest.fixture(scope='module')
def reference(timed_reference):
  return timed_reference[0]


def _run(workdir, check=True, **env):
  return run_main(ARGS + [f'--workdir={workdir}'], examples=EXAMPLES,
                  check=check, extra_env=env)


def _mid_epoch_steps(workdir):
  path = os.path.join(workdir, checkpoints.MID_EPOCH_DIR)
  return sorted(int(n) for n in os.listdir(path) if n.isdigit())


@pytest.mark.parametrize('name,code', [('TERM', 0), ('INT', 130)])
def test_a_signal_mid_epoch_saves_and_the_rerun_is_bitwise_equal(
    tmp_path, reference, name, code):
  stopped = _run(tmp_path, check=False, SIGNAL_AFTER_STEPS=f'6:{name}')
  assert stopped.returncode == code, stopped.stdout + stopped.stderr
  assert stopped.stdout.strip().splitlines()[-1] == (
      f'Stopped by SIG{name} at epoch 2, step 6 (2 of 4 steps into the '
      f'epoch), saved in mid_epoch/ in {tmp_path}. Rerun the same command '
      'to continue.')
  assert _mid_epoch_steps(tmp_path) == [6]
  assert [r['epoch'] for r in records(tmp_path)] == [1]
  resumed = _run(tmp_path)
  assert 'Resumed from epoch 1, 2 steps into epoch 2 (step 6)' in (
      resumed.stdout)
  assert records(tmp_path) == reference
  # The epoch's checkpoint superseded the mid-epoch one.
  assert _mid_epoch_steps(tmp_path) == []


def test_periodic_mid_epoch_checkpoints_survive_kill_9(tmp_path, reference):
  killed = _run(tmp_path, check=False, SIGNAL_AFTER_STEPS='7:KILL')
  assert killed.returncode == -signal.SIGKILL
  killed_again = run_main(ARGS + [f'--workdir={tmp_path}',
                                  '--config.checkpoint_every_steps=3'],
                          examples=EXAMPLES, check=False,
                          extra_env={'SIGNAL_AFTER_STEPS': '3:KILL'})
  # Resumed at step 4 (epoch 1's checkpoint), saved step 6, killed at 7.
  assert killed_again.returncode == -signal.SIGKILL
  assert _mid_epoch_steps(tmp_path) == [6]
  resumed = run_main(ARGS + [f'--workdir={tmp_path}',
                             '--config.checkpoint_every_steps=3'],
                     examples=EXAMPLES)
  assert 'Resumed from epoch 1, 2 steps into epoch 2 (step 6)' in (
      resumed.stdout)
  assert records(tmp_path) == reference


def test_second_signal_waits_for_the_save_and_a_third_exits_at_once(
    tmp_path, reference):
  second = tmp_path / 'second'
  out = _run(second, check=False, SIGNAL_AFTER_STEPS='6:TERM',
             SIGNALS_IN_MID_EPOCH_SAVE='1')
  assert out.returncode == 0, out.stdout + out.stderr
  assert 'SIGTERM again: still saving' in out.stderr
  assert _mid_epoch_steps(second) == [6]

  third = tmp_path / 'third'
  out = _run(third, check=False, SIGNAL_AFTER_STEPS='6:TERM',
             SIGNALS_IN_MID_EPOCH_SAVE='2')
  assert out.returncode == 128 + signal.SIGTERM
  assert 'SIGTERM a third time: exiting now' in out.stderr
  # The save never began; epoch 1's checkpoint stands.
  assert _mid_epoch_steps(third) == []
  for workdir in (second, third):
    _run(workdir)
    assert records(workdir) == reference


def test_sigterm_at_random_moments(tmp_path, timed_reference):
  """Five SIGTERMs at random moments of a run (start-up, steps, evaluation,
  saves), each run stopping with status 0; the last run ends bitwise equal
  to the uninterrupted one."""
  reference, seconds = timed_reference
  rng = random.Random(0)
  env = command_env(1, EXAMPLES)
  exits, stopped = [], 0
  # Within the warm command's time: any moment of a run, from its start-up
  # on (a resumed run has less left to do, and may finish first). The first
  # moment is early enough that no run can be over.
  fractions = [0.3] + [rng.uniform(0.3, 0.95) for _ in range(4)]
  for fraction in fractions:
    process = subprocess.Popen(
        [sys.executable, MOCK_MAIN] + ARGS + [f'--workdir={tmp_path}'],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        text=True)
    time.sleep(fraction * seconds)
    sent = time.time()
    process.send_signal(signal.SIGTERM)
    out, err = process.communicate(timeout=120)
    exits.append(time.time() - sent)
    assert process.returncode == 0, out + err
    last = out.strip().splitlines()[-1]
    assert last.startswith(('Stopped by SIGTERM', 'Final test accuracy')), (
        out + err)
    stopped += last.startswith('Stopped by SIGTERM')
  _run(tmp_path)
  assert records(tmp_path) == reference
  assert stopped >= 1, 'every signal came after its run had finished'
  assert max(exits) < 30, exits


def test_a_signal_once_the_work_is_over_is_ignored():
  """After ``finished`` (the end of main.py's and the grid's work), SIGTERM
  and SIGINT are ignored: Python puts back the default handlers while it
  exits, and a signal then would report a finished run as killed."""
  saved = {s: signal.getsignal(s) for s in preemption.SIGNALS}
  try:
    preemption.finished()  # Not installed: a library caller's handlers stay.
    assert {s: signal.getsignal(s) for s in preemption.SIGNALS} == saved
    preemption.install()
    preemption.finished()
    for signum in preemption.SIGNALS:
      assert signal.getsignal(signum) is signal.SIG_IGN
    os.kill(os.getpid(), signal.SIGTERM)
    os.kill(os.getpid(), signal.SIGINT)
    time.sleep(0.1)  # Still here.
  finally:
    for signum, handler in saved.items():
      signal.signal(signum, handler)
