"""The command line end to end: train, eval, summary, kill -9, devices, errors.

Each test runs main.py in a subprocess on TFDS mock data (tests/mock_main.py),
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

from conftest import ROOT
from jax_resnet import metric_logging

MOCK_MAIN = os.path.join(ROOT, 'tests', 'mock_main.py')
TINY = ['--config', os.path.join(ROOT, 'configs', 'resnet20_cifar10.py'),
        '--config.model.depth=8', '--config.batch_size=16',
        '--config.eval_batch_size=16', '--config.log_every_steps=1',
        '--config.data.download=False',
        '--config.data_dir=' + os.path.join(ROOT, 'tests', 'no_such_tfds_dir')]
TIMING_KEYS = ('images_per_sec', 'epoch_seconds')


def _env(devices: int = 1, examples: int = 40) -> dict[str, str]:
  env = dict(os.environ)
  env['MOCK_EXAMPLES'] = str(examples)
  env['JAX_DISABLE_MOST_OPTIMIZATIONS'] = '1'
  env['XLA_FLAGS'] = (f'--xla_force_host_platform_device_count={devices}'
                      if devices > 1 else '')
  env['TF_CPP_MIN_LOG_LEVEL'] = '2'
  return env


def run_main(args, devices=1, examples=40, mock=True, check=True):
  """Runs main.py (on mock data unless mock=False); returns the process."""
  script = MOCK_MAIN if mock else os.path.join(ROOT, 'main.py')
  proc = subprocess.run([sys.executable, script] + args, cwd=ROOT,
                        env=_env(devices, examples), capture_output=True,
                        text=True, timeout=600)
  if check and proc.returncode:
    raise AssertionError(f'main.py {args} exited {proc.returncode}:\n'
                         f'{proc.stdout}\n{proc.stderr}')
  return proc


def records(workdir):
  return [{k: v for k, v in r.items() if k not in TIMING_KEYS}
          for r in metric_logging.read_metrics(str(workdir))]


def test_train_then_eval_reproduces_logged_accuracy(tmp_path):
  workdir = str(tmp_path / 'run')
  out = run_main(TINY + ['--config.num_epochs=3', f'--workdir={workdir}'])
  assert 'epoch   3/3' in out.stdout and 'Final test accuracy' in out.stdout
  history = metric_logging.read_metrics(workdir)
  assert len(history) == 3

  best = run_main(TINY + ['--config.num_epochs=3', f'--workdir={workdir}',
                          '--mode=eval'])
  result = json.loads(best.stdout.strip().splitlines()[-1])
  assert set(result) == {'test_accuracy', 'test_loss', 'checkpoint_step'}
  best_record = max(history, key=lambda r: r['test_accuracy'])
  assert result['test_accuracy'] == best_record['best_test_accuracy']
  # Ties go to the later epoch: the best checkpoint is saved on >=.
  best_epoch = max(r['epoch'] for r in history
                   if r['test_accuracy'] == best_record['test_accuracy'])
  assert result['checkpoint_step'] == history[best_epoch - 1]['step']

  latest = run_main(TINY + ['--config.num_epochs=3', f'--workdir={workdir}',
                            '--mode=eval', '--config.eval_checkpoint=latest'])
  result = json.loads(latest.stdout.strip().splitlines()[-1])
  assert result['test_accuracy'] == history[-1]['test_accuracy']
  assert result['test_loss'] == pytest.approx(history[-1]['test_loss'],
                                              rel=1e-6)
  assert result['checkpoint_step'] == history[-1]['step']


def test_kill_9_mid_run_then_restart_equals_uninterrupted(tmp_path):
  args = TINY + ['--config.num_epochs=4', '--config.model.block=stochastic_depth']
  reference = tmp_path / 'reference'
  run_main(args + [f'--workdir={reference}'], examples=160)

  killed = tmp_path / 'killed'
  proc = subprocess.Popen(
      [sys.executable, MOCK_MAIN] + args + [f'--workdir={killed}'], cwd=ROOT,
      env=_env(examples=160), stdout=subprocess.DEVNULL,
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


def test_two_devices_equal_one(tmp_path):
  one, two = tmp_path / 'one', tmp_path / 'two'
  args = TINY + ['--config.num_epochs=2']
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


def test_summary_mode():
  out = run_main(['--config', os.path.join(ROOT, 'configs',
                                           'resnet56_cifar100.py'),
                  '--mode=summary'], mock=False)
  assert '853,018' not in out.stdout  # CIFAR-100 has a wider head.
  assert f'{853_018 + 90 * 64 + 90:,} parameters' in out.stdout
  assert '8x8x64' in out.stdout


@pytest.mark.parametrize('override,message', [
    ('--config.model.block=resnet', "Unknown block 'resnet'; valid blocks:"),
    ('--config.dataset=mnist', 'valid datasets: cifar10, cifar100'),
    ('--config.model.depth=21', 'must be 6n+2'),
    ('--config.model.shortcut=C', 'valid: auto, A, B'),
    ('--config.optimizer.warmup_epochs=300', 'warmup_epochs must be below'),
    ('--config.data.normalization=zca', 'valid: dataset, cifar10'),
    ('--config.eval_checkpoint=final', 'valid: best, latest'),
])
def test_config_errors_exit_with_the_valid_choices(override, message):
  out = run_main(TINY + [override, '--mode=summary'], mock=False, check=False)
  assert out.returncode == 1
  assert message in out.stderr
  assert 'Traceback' not in out.stderr


def test_unknown_config_field_lists_valid_fields():
  out = run_main(TINY + ['--config.model.blok=preact'], mock=False,
                 check=False)
  assert out.returncode == 2
  assert "unknown config field 'model.blok'" in out.stderr
  assert 'Did you mean model.block' in out.stderr
  assert 'model.depth' in out.stderr  # The full list of valid fields.


def test_missing_config_file_is_one_line():
  out = run_main(['--config', 'configs/nope.py'], mock=False, check=False)
  assert out.returncode == 2
  lines = out.stderr.strip().splitlines()
  assert len(lines) == 1, out.stderr
  assert lines[0].startswith('error: no config file configs/nope.py.')
  assert 'resnet20_cifar10.py' in lines[0]


def test_missing_dataset_stops_before_training(tmp_path):
  out = run_main(TINY + ['--config.dataset=cifar100',
                         f'--workdir={tmp_path / "run"}'], mock=False,
                 check=False)
  assert out.returncode == 1
  assert "Dataset 'cifar100' is not prepared in" in out.stderr
  assert 'no_such_tfds_dir' in out.stderr
  assert 'download_and_prepare' in out.stderr
  assert not os.path.exists(tmp_path / 'run' / 'checkpoints')


def test_eval_without_checkpoint_is_a_clear_error(tmp_path):
  out = run_main(TINY + [f'--workdir={tmp_path}', '--mode=eval'],
                 check=False)
  assert out.returncode == 1
  assert 'No best checkpoint in' in out.stderr
