"""The grid: run order, shards, skip, resume, failures and the command line."""

import json
import os
import socket
import subprocess
import sys

import pytest

from conftest import ROOT, command_env
import golden
from jax_resnet import checkpoints
from jax_resnet import config_overrides
from jax_resnet import errors
from jax_resnet.tools import grid
from jax_resnet import metric_logging
from jax_resnet import workdir_lock

NO_DATA = os.path.join(ROOT, 'tests', 'no_such_tfds_dir')
# Every run of these tests: ResNet-8, batch 16, on 40 mock images.
TINY = {'model.depth': 8, 'batch_size': 16, 'eval_batch_size': 16,
        'log_every_steps': 1, 'data.download': False, 'data_dir': NO_DATA,
        'num_epochs': 2}
RESNET8_PARAMS = golden.CIFAR_RESNET_PARAMS[8]


def tiny_runs(root, seeds=(0, 1), blocks=('basic',), **overrides):
  return grid.plan_runs(['resnet20-cifar10'], list(blocks), list(seeds),
                        str(root), {**TINY, **overrides})


class TestPlan:
  """The grid's runs, their configs and their order."""

  def test_settings_are_config_files_recipes_included(self, tmp_path):
    (run,) = grid.plan_runs(['recipes/resnet20-cifar10-cutout'], [], [0],
                            str(tmp_path))
    assert run.config.data.cutout == 16 and run.config.model.depth == 20
    assert run.workdir == os.path.join(str(tmp_path), 'recipes',
                                       'resnet20-cifar10-cutout', 'basic',
                                       'seed0')
    with pytest.raises(errors.ConfigError,
                       match=r"Unknown setting 'resnet20-cutout'.*valid "
                       r'settings: .*recipes/resnet20-cifar10-ema.*'
                       r'resnet20-cifar10,'):
      grid.plan_runs(['resnet20-cutout'], [], [0], str(tmp_path))

  def test_order_is_seed_then_setting_then_block(self, tmp_path):
    runs = grid.plan_runs(['resnet20-cifar10', 'resnet56-cifar100'],
                          ['basic', 'preact'], [0, 1], str(tmp_path),
                          {'num_epochs': 3})
    assert [(r.seed, r.setting, r.block) for r in runs] == [
        (s, setting, b) for s in (0, 1)
        for setting in ('resnet20-cifar10', 'resnet56-cifar100')
        for b in ('basic', 'preact')]
    assert [r.index for r in runs] == list(range(8))
    run = runs[7]
    assert run.workdir == os.path.join(str(tmp_path), 'resnet56-cifar100',
                                       'preact', 'seed1')
    assert (run.config.model.block, run.config.seed, run.config.num_epochs,
            run.config.dataset, run.config.model.depth) == (
                'preact', 1, 3, 'cifar100', 56)

  def test_without_blocks_each_setting_keeps_its_own(self, tmp_path):
    runs = grid.plan_runs(['plain20-cifar10', 'resnet56-cifar10'], [], [0],
                          str(tmp_path))
    assert [(r.block, r.config.model.depth) for r in runs] == [
        ('plain', 20), ('basic', 56)]

  def test_unknown_field_lists_the_valid_ones(self, tmp_path):
    with pytest.raises(config_overrides.UnknownFieldError,
                       match=r"'model.deptth'.*Did you mean model.depth.*"
                       r'Valid fields: .*data.train_examples'):
      tiny_runs(tmp_path, **{'model.deptth': 8})

  def test_grid_axes_cannot_be_overridden(self, tmp_path):
    with pytest.raises(ValueError, match='use --seeds'):
      tiny_runs(tmp_path, seed=3)
    with pytest.raises(ValueError, match='use --blocks'):
      tiny_runs(tmp_path, **{'model.block': 'preact'})

  def test_unknown_setting_lists_the_configs(self, tmp_path):
    with pytest.raises(ValueError, match=r'resnet20-cifar100.*valid '
                       r'settings: .*resnet56-cifar100'):
      grid.plan_runs(['resnet20-cifar100'], [], [0], str(tmp_path))


@pytest.mark.parametrize('count', [1, 2, 3, 4, 7])
def test_shards_partition_the_grid(tmp_path, count):
  runs = grid.plan_runs(
      ['resnet20-cifar10', 'resnet56-cifar100', 'resnet110-cifar100'],
      ['basic', 'preact', 'gated', 'stochastic_depth', 'custom'], [0, 1, 2],
      str(tmp_path))
  shards = [grid.shard_runs(runs, *grid.parse_shard(f'{i}/{count}'))
            for i in range(count)]
  indices = [r.index for shard in shards for r in shard]
  assert sorted(indices) == list(range(45))  # Every run, none twice.
  for i, shard in enumerate(shards):
    assert [r.index for r in shard] == list(range(i, 45, count))
  workdirs = [r.workdir for shard in shards for r in shard]
  assert len(set(workdirs)) == 45


@pytest.mark.parametrize('text', ['3/3', '-1/2', '1', 'a/b', '0/0'])
def test_bad_shard_is_refused(text):
  with pytest.raises(ValueError, match='i/k with 0 <= i < k'):
    grid.parse_shard(text)


def test_interrupted_run_resumes_and_finished_runs_are_skipped(
    tmp_path, mock_cifar, monkeypatch, capsys):
  del mock_cifar
  runs = tiny_runs(tmp_path / 'grid', seeds=(0,))
  (run,) = runs
  save = checkpoints.Checkpointer.save

  def save_then_interrupt(self, step, state, meta, test_accuracy):
    save(self, step, state, meta, test_accuracy)
    raise KeyboardInterrupt  # As Ctrl-C right after epoch 1 is saved.

  with monkeypatch.context() as patch:
    patch.setattr(checkpoints.Checkpointer, 'save', save_then_interrupt)
    with pytest.raises(KeyboardInterrupt):
      grid.run_grid(runs)
  assert grid.read_status(run.workdir)['state'] == 'interrupted'
  assert grid.run_state(run).state == 'interrupted'
  epoch1 = metric_logging.read_metrics(run.workdir)
  assert len(epoch1) == 1

  outcome = grid.run_grid(runs)
  assert outcome.finished == runs and not outcome.failed
  assert 'Resumed from epoch 1' in capsys.readouterr().out
  history = metric_logging.read_metrics(run.workdir)
  # Epoch 1's record, timing included, is the one written before the
  # interruption: the run continued rather than started again.
  assert [r['epoch'] for r in history] == [1, 2] and history[0] == epoch1[0]
  status = grid.read_status(run.workdir)
  assert (status['state'], status['seed'], status['block']) == (
      'done', 0, 'basic')
  assert status['parameters'] == RESNET8_PARAMS
  assert status['best_test_accuracy'] == history[-1]['best_test_accuracy']
  assert grid.run_state(run).state == 'done'

  def must_not_train(config, workdir, model):
    del model
    raise AssertionError(f'{workdir} trained again')

  outcome = grid.run_grid(runs, train_fn=must_not_train)
  assert outcome.already_done == runs and not outcome.finished
  # Asking the same workdir for more epochs is a conflict, not a resume with
  # another schedule.
  (longer,) = tiny_runs(tmp_path / 'grid', seeds=(0,), num_epochs=3)
  assert grid.run_state(longer).state == 'conflict'
  assert 'num_epochs: workdir 2, grid 3' in grid.run_state(longer).detail
  outcome = grid.run_grid([longer], train_fn=must_not_train)
  assert [run for run, _ in outcome.failed] == [longer]

  # A workdir written before a config field existed: the field at its
  # default is no conflict (the run is done), at another value it is.
  config_path = os.path.join(run.workdir, 'config.json')
  with open(config_path) as f:
    saved = json.load(f)
  del saved['data']['cutout']
  with open(config_path, 'w') as f:
    json.dump(saved, f)
  assert grid.run_state(run).state == 'done'
  (cutout,) = tiny_runs(tmp_path / 'grid', seeds=(0,),
                        **{'data.cutout': 8})
  assert grid.run_state(cutout).state == 'conflict'
  assert 'data.cutout: workdir None, grid 8' in grid.run_state(cutout).detail


def test_failing_runs_are_recorded_and_the_grid_goes_on(tmp_path):
  runs = tiny_runs(tmp_path, seeds=(0, 1, 2))
  attempted = []

  def fail(config, workdir, model):
    del model
    attempted.append(config.seed)
    if config.seed == 1:
      raise FloatingPointError('Training loss is nan at epoch 1, step 3.')
    raise OSError('No space left on device')

  outcome = grid.run_grid(runs, train_fn=fail)
  assert attempted == [0, 1, 2] and len(outcome.failed) == 3
  status = grid.read_status(runs[1].workdir)
  assert status['state'] == 'failed'
  assert status['error_type'] == 'FloatingPointError'
  assert status['message'] == 'Training loss is nan at epoch 1, step 3.'
  assert 'Traceback' in status['traceback']
  assert status['parameters'] == RESNET8_PARAMS
  assert grid.run_state(runs[0]).detail == 'OSError: No space left on device'

  # Failed runs stay failed (and count as failures) until asked to retry.
  attempted.clear()
  outcome = grid.run_grid(runs, train_fn=fail)
  assert not attempted and len(outcome.failed) == 3
  grid.run_grid(runs, retry_failed=True, train_fn=fail)
  assert attempted == [0, 1, 2]


def test_a_stale_running_status_is_taken_over(tmp_path, capsys):
  """A status that says running, of a process that died without a word
  (here on another host), with the workdir's lock free: the grid says so
  and trains the run."""
  (run,) = tiny_runs(tmp_path, seeds=(0,))
  grid.write_status(run.workdir, {'state': 'running', 'host': 'elsewhere',
                                  'pid': 1})
  assert grid.run_state(run).state == 'interrupted'
  attempted = []

  def fail(config, workdir, model):
    del workdir, model
    attempted.append(config.seed)
    raise OSError('No space left on device')

  grid.run_grid([run], train_fn=fail)
  assert attempted == [0]
  out = capsys.readouterr().out
  assert ('status says running (host elsewhere, pid 1), but no process held '
          'the workdir; taking it over.') in out
  assert f'{run.name} ({run.workdir}): starting.' in out


def test_dry_run_lists_every_state(tmp_path):
  runs = tiny_runs(tmp_path, seeds=range(6), num_epochs=1)
  host = socket.gethostname()
  exited = subprocess.run([sys.executable, '-c', 'import os; '
                           'print(os.getpid())'], capture_output=True,
                          text=True, check=True)
  dead_pid = int(exited.stdout)
  states = [
      None,  # Pending.
      {'state': 'running', 'host': host, 'pid': os.getpid()},
      {'state': 'running', 'host': host, 'pid': dead_pid},
      {'state': 'running', 'host': 'elsewhere', 'pid': 1},
      {'state': 'failed', 'error_type': 'NonFiniteLossError',
       'message': 'Training loss is nan'},
      {'state': 'done', 'best_test_accuracy': 12.5},
  ]
  for run, status in zip(runs, states):
    if status is not None:
      grid.write_status(run.workdir, status)
  with open(os.path.join(runs[5].workdir, metric_logging.METRICS_FILE),
            'w') as f:
    f.write(json.dumps({'epoch': 1}) + '\n')
  # A run is running while a process holds its workdir's lock, whatever
  # its status names: here another process holds run 3's (status: another
  # host), and no one run 1's (status: this process, alive) or run 2's.
  holder = subprocess.Popen(
      [sys.executable, '-c', 'import sys; from jax_resnet import '
       'workdir_lock; workdir_lock.WorkdirLock(sys.argv[1], "train")'
       '.acquire(); print("held", flush=True); sys.stdin.read()',
       runs[3].workdir], cwd=ROOT, stdin=subprocess.PIPE,
      stdout=subprocess.PIPE, text=True)
  try:
    assert holder.stdout.readline() == 'held\n'
    text = grid.format_plan(runs, total=12, shard=(0, 2))
  finally:
    holder.communicate('')
  lines = text.splitlines()
  assert lines[0] == '12 runs in the grid; shard 0/2 has 6.'
  got = [line.split()[4] for line in lines[2:8]]
  assert got == ['pending', 'interrupted', 'interrupted', 'running',
                 'failed', 'done']
  assert f'status says running (host {host}, pid {dead_pid}), but no ' \
      'process holds the workdir' in lines[4]
  assert 'host elsewhere' in lines[5] and 'Training loss is nan' in lines[6]
  assert '1/1 epochs, best 12.50%' in lines[7]
  assert lines[-1].startswith('Would run 3 (pending 1, interrupted 2); '
                              'done 1; failed 1')


def _grid_command(args, module=True, extra_env=None):
  command = ([sys.executable, '-m', 'jax_resnet.tools.grid'] if module else
             [sys.executable, os.path.join(ROOT, 'tests', 'mock_grid.py')])
  return subprocess.run(
      command + args, cwd=ROOT, capture_output=True, text=True, timeout=600,
      env={**command_env(pythonpath=os.path.join(ROOT, 'tests')),
           **(extra_env or {})})


def test_sigterm_stops_the_grid_after_saving_and_the_rerun_resumes(
    tmp_path):
  root = str(tmp_path / 'grid')
  args = (['--settings=resnet20-cifar10', '--seeds=0,1', f'--root={root}'] +
          [f'--config.{k}={v}' for k, v in TINY.items()])
  # 40 examples: 2 steps per epoch; the signal comes after step 3.
  stopped = _grid_command(args, module=False,
                          extra_env={'SIGNAL_AFTER_STEPS': '3:TERM'})
  assert stopped.returncode == 0, stopped.stdout + stopped.stderr
  seed0 = os.path.join(root, 'resnet20-cifar10', 'basic', 'seed0')
  assert stopped.stdout.strip().splitlines()[-1] == (
      'Stopped by SIGTERM at epoch 2, step 3 (1 of 2 steps into the epoch), '
      f'saved in mid_epoch/ in {seed0}. Rerun the same command to continue.')
  assert grid.read_status(seed0)['state'] == 'interrupted'
  seed1 = os.path.join(root, 'resnet20-cifar10', 'basic', 'seed1')
  assert grid.read_status(seed1) is None
  rerun = _grid_command(args, module=False)
  assert rerun.returncode == 0, rerun.stdout + rerun.stderr
  assert 'Resumed from epoch 1, 1 step into epoch 2 (step 3)' in rerun.stdout
  for workdir in (seed0, seed1):
    assert grid.read_status(workdir)['state'] == 'done'
    assert [r['step'] for r in metric_logging.read_metrics(workdir)] == [2, 4]


def test_command_line_records_a_nan_run_and_exits_nonzero(tmp_path):
  root = str(tmp_path / 'grid')
  overrides = [f'--config.{k}={v}' for k, v in TINY.items()
               if k != 'num_epochs']
  proc = _grid_command(
      ['--settings=resnet20-cifar10', '--blocks=mock_grid:NaNBlock,basic',
       '--seeds=0', f'--root={root}', '--epochs=1'] + overrides,
      module=False)
  assert proc.returncode == 1, proc.stdout + proc.stderr
  assert 'failed: resnet20-cifar10 mock_grid:NaNBlock seed0' in proc.stdout
  basic = os.path.join(root, 'resnet20-cifar10', 'basic', 'seed0')
  with open(os.path.join(basic, 'config.json')) as f:
    config = json.load(f)
  assert (config['num_epochs'], config['model']['depth'],
          config['batch_size']) == (1, 8, 16)
  assert grid.read_status(basic)['state'] == 'done'
  nan = grid.read_status(os.path.join(root, 'resnet20-cifar10',
                                      'mock_grid.NaNBlock', 'seed0'))
  assert nan['state'] == 'failed'
  assert nan['error_type'] == 'NonFiniteLossError'
  assert nan['message'].startswith('Training loss is nan at epoch 1')
  with open(os.path.join(root, grid.GRID_FILE)) as f:
    assert json.load(f)['blocks'] == ['mock_grid:NaNBlock', 'basic']


def test_command_line_refuses_an_unknown_field(tmp_path):
  proc = _grid_command(['--settings=resnet20-cifar10', '--dry-run',
                        f'--root={tmp_path}', '--config.model.deptth=8'])
  assert proc.returncode == 2
  assert "unknown config field 'model.deptth'" in proc.stderr
  assert 'Valid fields:' in proc.stderr and 'Traceback' not in proc.stderr


def test_a_run_whose_workdir_is_in_use_is_skipped(tmp_path, mock_cifar,
                                                  capsys):
  del mock_cifar
  held, other = tiny_runs(tmp_path, num_epochs=1)
  with workdir_lock.WorkdirLock(held.workdir, 'another command'):
    outcome = grid.run_grid([held, other])
  assert outcome.elsewhere == [held] and outcome.finished == [other]
  out = capsys.readouterr().out
  assert f'{held.name} ({held.workdir}): in use by process {os.getpid()}' in out
  assert '(another command, since' in out
  assert grid.run_state(held).state == 'pending'
  assert not os.path.exists(os.path.join(other.workdir,
                                         workdir_lock.LOCK_FILE))


def test_packed_seeds_train_together_and_write_each_workdir(tmp_path,
                                                            mock_cifar,
                                                            capsys):
  del mock_cifar
  runs = tiny_runs(tmp_path, seeds=(0, 1, 2), blocks=('basic', 'preact'))
  # Seed 1 of basic is done already: the rest of its group packs.
  grid.run_grid([r for r in runs if (r.block, r.seed) == ('basic', 1)])
  capsys.readouterr()
  outcome = grid.run_grid(runs, pack_seeds=True)
  out = capsys.readouterr().out
  assert 'resnet20-cifar10 basic: seeds 0,2 packed.' in out
  assert 'resnet20-cifar10 preact: seeds 0,1,2 packed.' in out
  assert len(outcome.finished) == 5 and len(outcome.already_done) == 1
  for run in runs:
    assert grid.run_state(run).state == 'done', run.name
    status = grid.read_status(run.workdir)
    assert (status['seed'], status['block']) == (run.seed, run.block)
    history = metric_logging.read_metrics(run.workdir)
    assert [r['epoch'] for r in history] == [1, 2]
    assert status['best_test_accuracy'] == history[-1]['best_test_accuracy']
  # Each seed's config.json is its own run's: no conflict on a rerun, and
  # the report reads the workdirs as any others.
  assert not grid.run_grid(runs).finished


def test_a_failing_packed_group_marks_each_seed(tmp_path):
  runs = tiny_runs(tmp_path, seeds=(0, 1))

  def fail(model):
    del model
    raise OSError('No space left on device')

  assert not grid.execute_group(runs, fail)
  for run in runs:
    status = grid.read_status(run.workdir)
    assert (status['state'], status['seed']) == ('failed', run.seed)
    assert status['message'] == 'No space left on device'
