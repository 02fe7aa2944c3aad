"""One command per workdir (jax_resnet/workdir_lock.py)."""

import json
import os
import signal
import socket
import subprocess
import sys
import time

import pytest

from conftest import MOCK_MAIN, ROOT, TINY, command_env, error_lines
from conftest import records
from jax_resnet import workdir_lock

# A process that takes a workdir's lock, says so and sleeps.
HOLD = ('import sys, time; sys.path.insert(0, {root!r}); '
        'from jax_resnet import workdir_lock; '
        'workdir_lock.WorkdirLock({workdir!r}, "holder").acquire(); '
        'print("held", flush=True); time.sleep(600)')


def _hold(workdir):
  process = subprocess.Popen(
      [sys.executable, '-c', HOLD.format(root=ROOT, workdir=str(workdir))],
      stdout=subprocess.PIPE, text=True)
  assert process.stdout.readline().strip() == 'held'
  return process


def test_a_second_holder_is_refused_and_named(tmp_path):
  holder = _hold(tmp_path)
  try:
    record = workdir_lock.holder(str(tmp_path))
    assert record['pid'] == holder.pid
    assert (record['host'], record['command']) == (socket.gethostname(),
                                                   'holder')
    with pytest.raises(workdir_lock.WorkdirLocked,
                       match=f'in use by process {holder.pid} on host '):
      workdir_lock.WorkdirLock(str(tmp_path), 'second').acquire()
  finally:
    # kill -9: the kernel drops the lock; the file stays behind, stale.
    holder.send_signal(signal.SIGKILL)
    holder.wait()
  assert os.path.exists(tmp_path / workdir_lock.LOCK_FILE)
  assert workdir_lock.holder(str(tmp_path)) is None
  with workdir_lock.WorkdirLock(str(tmp_path), 'third') as lock:
    # This process's own lock is answered without touching the file (a
    # close of another descriptor of it would drop the lock).
    assert workdir_lock.holder(str(tmp_path)) == lock.record
    assert lock.record['pid'] == os.getpid()
    with open(tmp_path / workdir_lock.LOCK_FILE) as f:
      assert json.load(f)['command'] == 'third'
    with pytest.raises(workdir_lock.WorkdirLocked, match='by this process'):
      workdir_lock.WorkdirLock(str(tmp_path), 'again').acquire()
  # Released: the file is gone and anyone may lock.
  assert not os.path.exists(tmp_path / workdir_lock.LOCK_FILE)
  assert workdir_lock.holder(str(tmp_path)) is None
  # A workdir the lock created is removed with it if nothing was written.
  for written in (False, True):
    new = tmp_path / f'new{written}'
    with workdir_lock.WorkdirLock(str(new), 'fourth'):
      if written:
        (new / 'config.json').write_text('{}')
    assert os.path.isdir(new) == written


def test_two_commands_on_one_workdir(tmp_path):
  workdir = tmp_path / 'run'
  args = TINY + ['--config.num_epochs=3', f'--workdir={workdir}']
  env = command_env()
  # The first command holds the workdir for at least 2 x 8 s (it pauses
  # before epochs 2 and 3): its tiny run would otherwise be over before the
  # second command has started.
  first = subprocess.Popen([sys.executable, MOCK_MAIN] + args, cwd=ROOT,
                           env={**env, 'PAUSE_AFTER_FIRST_EPOCH': '8'},
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                           text=True)
  deadline = time.time() + 120
  while workdir_lock.holder(str(workdir)) is None:
    assert time.time() < deadline and first.poll() is None
    time.sleep(0.1)
  start = time.time()
  second = subprocess.run([sys.executable, MOCK_MAIN] + args, cwd=ROOT,
                          env=env, capture_output=True, text=True,
                          timeout=120)
  seconds = time.time() - start
  out, err = first.communicate(timeout=300)
  assert first.returncode == 0, out + err
  assert second.returncode == 1
  lines = error_lines(second.stderr)
  assert lines[-1].startswith(f'error: {workdir} is in use by process '
                              f'{first.pid} on host '), second.stderr
  assert 'Traceback' not in second.stderr
  assert seconds < 10, seconds
  assert [r['epoch'] for r in records(workdir)] == [1, 2, 3]
  assert not os.path.exists(workdir / workdir_lock.LOCK_FILE)
