"""A full disk during a checkpoint: one clear error, nothing lost, and the
same command resumes once there is space (a small tmpfs; mounting it needs
root, which CI has)."""

import os
import subprocess

import numpy as np
import pytest

from conftest import TINY, error_lines, records, run_main
from jax_resnet import checkpoints
from jax_resnet import errors

ARGS = TINY + ['--config.num_epochs=4']


def _mount(tmp_path, options):
  if os.geteuid() != 0:
    pytest.skip('mounting a tmpfs needs root')
  mount = tmp_path / 'disk'
  mount.mkdir()
  subprocess.run(['mount', '-t', 'tmpfs', '-o', options, 'tmpfs',
                  str(mount)], check=True)
  return mount


@pytest.fixture
def small_disk(tmp_path):
  mount = _mount(tmp_path, 'size=4m')
  yield mount
  subprocess.run(['umount', str(mount)], check=True)


def test_a_read_only_workdir_is_refused_in_one_line(tmp_path):
  mount = _mount(tmp_path, 'size=1m,ro')
  try:
    out = run_main(ARGS + [f'--workdir={mount}/run'], check=False)
  finally:
    subprocess.run(['umount', str(mount)], check=True)
  assert out.returncode == 1
  assert error_lines(out.stderr)[-1] == (
      f'error: Cannot write to the workdir {mount}/run: the file system is '
      'read-only (Read-only file system). Use a writable --workdir.')
  assert 'Traceback' not in out.stderr


def test_leftover_temporary_checkpoints_are_removed_at_start(tmp_path):
  leftover = tmp_path / 'checkpoints' / '6.orbax-checkpoint-tmp-1' / 'state'
  leftover.mkdir(parents=True)
  checkpoints.Checkpointer(str(tmp_path)).close()
  assert not os.listdir(tmp_path / 'checkpoints')
  # Evaluation (read-only) leaves a workdir as it is.
  other = tmp_path / 'other'
  leftover = other / 'checkpoints' / '6.orbax-checkpoint-tmp-1' / 'state'
  leftover.mkdir(parents=True)
  checkpoints.Checkpointer(str(other), read_only=True).close()
  assert os.path.isdir(leftover)


def test_a_full_disk_stops_cleanly_and_the_rerun_resumes(tmp_path,
                                                         small_disk):
  reference = tmp_path / 'reference'
  run_main(ARGS + [f'--workdir={reference}'])
  # Room for the log and 2.5 checkpoints of this ResNet-8 (0.67 MB each; a
  # save asks for a tenth and 64 KB more): epoch 3's does not fit.
  filler = small_disk / 'filler'
  with open(filler, 'wb') as f:
    f.write(b'\0' * (4 * 2**20 - 1_750_000))
  workdir = small_disk / 'run'
  out = run_main(ARGS + [f'--workdir={workdir}'], check=False)
  assert out.returncode == 1, out.stdout + out.stderr
  lines = error_lines(out.stderr)
  assert lines[-1].startswith('error: Could not write the checkpoint of '
                              'epoch 3 (step 6) to '
                              f'{workdir}/checkpoints: no space left on the '
                              'device ('), out.stderr
  assert ('The previous checkpoint (epoch 2, step 4) is intact: free some '
          'space (or move the workdir) and rerun the same command to resume '
          'from it.') in lines[-1]
  assert 'Traceback' not in out.stderr and 'coroutine' not in out.stderr
  assert sorted(os.listdir(workdir / 'checkpoints')) == ['2', '4']

  os.remove(filler)
  out = run_main(ARGS + [f'--workdir={workdir}'])
  assert 'Resumed from epoch 2' in out.stdout
  a, b = records(reference), records(workdir)
  assert [r['epoch'] for r in b] == [1, 2, 3, 4]
  for ra, rb in zip(a, b):
    for key in ra:
      np.testing.assert_allclose(rb[key], ra[key], rtol=1e-6, err_msg=key)


def test_write_failure():
  assert errors.write_failure(OSError(28, 'x')) == (
      'no space left on the device')
  orbax = ValueError("RESOURCE_EXHAUSTED: Failed to write 235424 bytes: No "
                     "space left on device [os_error_code='28']")
  assert errors.write_failure(orbax) == 'no space left on the device'
  try:
    try:
      raise PermissionError(13, 'Permission denied')
    except OSError as e:
      raise RuntimeError('saving failed') from e
  except RuntimeError as e:
    assert errors.write_failure(e) == 'permission denied'
  assert errors.write_failure(ValueError('a bug')) is None
