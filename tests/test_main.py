"""The command line end to end: train, eval, summary, kill -9, devices, errors.

Each test runs main.py in a subprocess on synthetic CIFAR data
(tests/mock_main.py),
as a user would, so process start, flags and exit codes are covered too.
"""

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from conftest import (MOCK_MAIN, ROOT, TINY, command_env, error_lines,
                      records, run_main, workdir_bytes)
import golden
from jax_resnet import metric_logging
from jax_resnet import workdir_lock


def calls(process) -> dict[str, int]:
  """What a COUNT_CALLS=1 run of tests/mock_main.py counted."""
  return json.loads(process.stderr.strip().splitlines()[-1].removeprefix(
      'calls '))


def tensorboard_scalars(workdir) -> dict[str, list[tuple[int, float]]]:
  """Every scalar of a workdir's event files, as TensorBoard loads them."""
  from tensorboard.backend.event_processing import event_accumulator  # pylint: disable=g-import-not-at-top
  events = event_accumulator.EventAccumulator(str(workdir))
  events.Reload()
  return {tag: [(e.step, e.value) for e in events.Scalars(tag)]
          for tag in events.Tags()['scalars']}


def test_train_eval_refuse_and_resume_one_workdir(tmp_path):
  """Eval reproduces the logged accuracy; a refused command changes nothing;
  a resume continues."""
  workdir = str(tmp_path / 'run')
  out = run_main(TINY + ['--config.num_epochs=3', f'--workdir={workdir}'],
                 extra_env={'COUNT_CALLS': '1'})
  assert 'epoch   3/3' in out.stdout and 'Final test accuracy' in out.stdout
  # The network is resolved once per command and initialised once.
  assert calls(out) == {'resolve': 1, 'init_state': 1}
  history = metric_logging.read_metrics(workdir)
  assert len(history) == 3
  # TensorBoard (its own reader) shows every number of every epoch record.
  scalars = tensorboard_scalars(workdir)
  for record in history:
    for key, value in record.items():
      if key not in ('epoch', 'step') and value is not None:
        assert (record['step'], pytest.approx(value)) in scalars[key], key
  assert {len(v) for v in scalars.values()} == {3}

  best = run_main(TINY + ['--config.num_epochs=3', f'--workdir={workdir}',
                          '--mode=eval'])
  result = json.loads(best.stdout.strip().splitlines()[-1])
  assert set(result) == {'test_accuracy', 'test_loss', 'checkpoint_step'}
  best_record = max(history, key=lambda r: r['test_accuracy'])
  assert result['test_accuracy'] == best_record['best_test_accuracy']
  # Ties go to the later epoch, as the checkpoint manager ranks them.
  best_epoch = max(r['epoch'] for r in history
                   if r['test_accuracy'] == best_record['test_accuracy'])
  assert result['checkpoint_step'] == history[best_epoch - 1]['step']

  # Eval may run beside a command that holds the workdir (read-only).
  with workdir_lock.WorkdirLock(workdir, 'a training command'):
    latest = run_main(TINY + ['--config.num_epochs=3', f'--workdir={workdir}',
                              '--mode=eval', '--config.eval_checkpoint=latest'])
  assert (f'{workdir} is in use by process {os.getpid()} on host '
          in latest.stdout)
  result = json.loads(latest.stdout.strip().splitlines()[-1])
  assert result['test_accuracy'] == history[-1]['test_accuracy']
  assert result['test_loss'] == pytest.approx(history[-1]['test_loss'],
                                              rel=1e-6)
  assert result['checkpoint_step'] == history[-1]['step']

  # A command of another setting is refused and changes nothing there.
  before = workdir_bytes(workdir)
  out = run_main(TINY + ['--config.num_epochs=4', '--config.model.depth=14',
                         f'--workdir={workdir}'], check=False)
  assert out.returncode == 1
  assert 'depth: checkpoint 8, command 14' in out.stderr
  assert 'Traceback' not in out.stderr
  assert workdir_bytes(workdir) == before

  # A corrupted metrics.jsonl line: one line of error, nothing changed.
  path = os.path.join(workdir, 'metrics.jsonl')
  with open(path) as f:
    good = f.read()
  lines = good.splitlines(keepends=True)
  with open(path, 'w') as f:
    f.write(lines[0] + '{"epoch": 2, bad\n' + ''.join(lines[2:]))
  before = workdir_bytes(workdir)
  out = run_main(TINY + ['--config.num_epochs=4', f'--workdir={workdir}'],
                 check=False)
  assert out.returncode == 1
  assert error_lines(out.stderr)[-1].startswith(
      f'error: {path}, line 2, is not a JSON record ('), out.stderr
  assert 'Traceback' not in out.stderr
  assert workdir_bytes(workdir) == before
  # A last line cut off by a kill mid-write is dropped (its epoch trains
  # again from the checkpoint).
  with open(path, 'w') as f:
    f.write(good + '{"epoch": 4, "st')

  # Resuming resolves the network once and initialises nothing: the state's
  # shapes come from jax.eval_shape, its values from the checkpoint.
  out = run_main(TINY + ['--config.num_epochs=4', f'--workdir={workdir}'],
                 extra_env={'COUNT_CALLS': '1'})
  assert 'Resumed from epoch 3' in out.stdout
  assert calls(out) == {'resolve': 1}
  assert [r['epoch'] for r in records(workdir)] == [1, 2, 3, 4]


def test_kill_9_mid_run_then_restart_equals_uninterrupted(tmp_path):
  args = TINY + ['--config.num_epochs=4', '--config.model.block=stochastic_depth']
  reference = tmp_path / 'reference'
  run_main(args + [f'--workdir={reference}'], examples=160)

  killed = tmp_path / 'killed'
  proc = subprocess.Popen(
      [sys.executable, MOCK_MAIN] + args + [f'--workdir={killed}'], cwd=ROOT,
      env=command_env(examples=160), stdout=subprocess.DEVNULL,
      stderr=subprocess.DEVNULL)
  deadline = time.time() + 300
  # Kill as soon as the first epoch is logged: inside its checkpoint save or
  # early in epoch 2, whichever the scheduler gives.
  while len(metric_logging.read_metrics(str(killed))) < 1:
    assert proc.poll() is None, 'the run ended before it could be killed'
    assert time.time() < deadline
    time.sleep(0.05)
  proc.send_signal(signal.SIGKILL)
  proc.wait()
  assert len(metric_logging.read_metrics(str(killed))) < 4

  out = run_main(args + [f'--workdir={killed}'], examples=160)
  assert records(killed) == records(reference)
  assert 'Final test accuracy' in out.stdout


@pytest.mark.parametrize('mix', [
    [],
    # Mixup and CutMix pair each image with its neighbour in the global
    # batch (a roll across the devices' halves): the same pairs on two
    # devices as on one.
    ['--config.data.mixup_alpha=0.2', '--config.data.cutmix_alpha=1.0',
     '--config.data.mix_switch_prob=0.5']], ids=['plain', 'mixup_cutmix'])
def test_two_devices_equal_one(tmp_path, mix):
  one, two = tmp_path / 'one', tmp_path / 'two'
  args = TINY + ['--config.num_epochs=2'] + mix
  run_main(args + [f'--workdir={one}'], examples=64)
  out = run_main(args + [f'--workdir={two}'], devices=2, examples=64)
  assert '2 device(s)' in out.stdout
  a, b = records(one), records(two)
  assert [r['step'] for r in a] == [r['step'] for r in b] == [4, 8]
  for ra, rb in zip(a, b):
    for key in ('train_loss', 'test_loss'):
      np.testing.assert_allclose(ra[key], rb[key], rtol=1e-4)
    for key in ('train_accuracy', 'test_accuracy', 'best_test_accuracy'):
      assert ra[key] == pytest.approx(rb[key], abs=1e-6)


def test_packed_sam_seeds_on_two_devices_equal_their_own_runs(tmp_path):
  # SAM perturbs per device (a shard_map inside the map over seeds): the
  # packed seed equals its own run on the same two devices.
  args = TINY + ['--config.num_epochs=2', '--config.optimizer.sam_rho=0.05']
  packed = tmp_path / 'packed'
  out = run_main(args + [f'--workdir={packed}', '--config.pack_seeds=0,1'],
                 devices=2, examples=64)
  assert 'seeds 0,1 packed' in out.stdout and '2 device(s)' in out.stdout
  assert 'seed 1: epoch   2/2' in out.stdout
  alone = tmp_path / 'alone1'
  run_main(args + [f'--workdir={alone}', '--config.seed=1'], devices=2,
           examples=64)
  for rp, ra in zip(records(packed / 'seed1'), records(alone), strict=True):
    assert rp['step'] == ra['step']
    # SAM's second gradient amplifies rounding: measured 1.5e-4 relative at
    # most, where SAM over the whole batch (one device) differs by 3e-3 to
    # 2e-2.
    for key in ('train_loss', 'test_loss'):
      np.testing.assert_allclose(rp[key], ra[key], rtol=5e-4)
    for key in ('train_accuracy', 'test_accuracy'):
      assert rp[key] == pytest.approx(ra[key], abs=1e-6)
  for seed in (0, 1):
    assert len(records(packed / f'seed{seed}')) == 2
    with open(packed / f'seed{seed}' / 'config.json') as f:
      saved = json.load(f)
    assert saved['seed'] == seed and saved['pack_seeds'] == ''


def test_summary_mode():
  out = run_main(['--config', os.path.join(ROOT, 'configs',
                                           'resnet56_cifar100.py'),
                  '--mode=summary'], mock=False)
  resnet56 = golden.CIFAR_RESNET_PARAMS[56]
  assert f'{resnet56:,}' not in out.stdout  # CIFAR-100 has a wider head.
  assert f'{resnet56 + 90 * 64 + 90:,} parameters' in out.stdout
  assert '8x8x64' in out.stdout


def test_missing_dataset_stops_before_training(tmp_path):
  out = run_main(TINY + ['--config.dataset=cifar100',
                         f'--workdir={tmp_path / "run"}'], mock=False,
                 check=False)
  assert out.returncode == 1
  assert "Dataset 'cifar100' is not prepared in" in out.stderr
  assert 'no_such_tfds_dir' in out.stderr
  assert 'download_and_prepare' in out.stderr
  assert not os.path.exists(tmp_path / 'run' / 'checkpoints')
