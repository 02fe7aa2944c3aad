"""The bad-input sweep: every mistake a user can make at the command line
gives a clear error in a few lines, a non-zero exit, and leaves the workdir
it was pointed at byte-identical.

One trained workdir (ResNet-8, one epoch on mock data) is the target of
every command. Cases that need a damaged workdir damage a copy of it; each
copy must come out byte-identical to what the case left it. ``CASES`` is the
sweep; the closing figures ("tried N, handled N") are its length.
"""

import os
import re
import shutil
import subprocess
import textwrap

import pytest

from conftest import MOCK_MAIN, ROOT, TINY, run_main, workdir_bytes

CONVERT = os.path.join(ROOT, 'tests', 'mock_convert.py')
# An absl log record (``W1202 20:24:17.318671 1396... file.py:112] ...``):
# what libraries log is not the command's error.
LOG_RECORD = re.compile(r'^[IWEF]\d{4} \d\d:\d\d:\d\d')
MAX_ERROR_LINES = 3

USER_BLOCKS = textwrap.dedent('''
    import flax.linen as nn
    from jax_resnet import blocks


    class Wide(blocks.ResidualBlock):
      """Returns twice the channels of its contract."""

      @nn.compact
      def __call__(self, x, train):
        y = self.conv(2 * self.out_planes, (3, 3), strides=self.stride,
                      name='conv1')(x)
        return nn.relu(self.norm(name='bn1')(y))


    class NotABlock(nn.Module):

      @nn.compact
      def __call__(self, x, train):
        return x
''')

RAISES = textwrap.dedent('''
    from configs import resnet20_cifar10


    def get_config():
      config = resnet20_cifar10.get_config()
      config.model.depth = 8 // 0
      return config
''')


def error_lines(stderr: str) -> list[str]:
  """What the command itself said on stderr: everything but log records
  (and the continuation lines of a multi-line record, which start with
  ', ' or whitespace)."""
  lines = []
  in_record = False
  for line in stderr.strip().splitlines():
    if LOG_RECORD.match(line):
      in_record = True
      continue
    if in_record and (line.startswith((' ', ',')) or not line):
      continue
    in_record = False
    lines.append(line)
  return lines


@pytest.fixture(scope='module')
def trained(tmp_path_factory):
  """A ResNet-8 workdir trained for one epoch on mock data."""
  workdir = str(tmp_path_factory.mktemp('trained') / 'run')
  run_main(TINY + ['--config.num_epochs=1', f'--workdir={workdir}'])
  assert os.path.isdir(os.path.join(workdir, 'checkpoints'))
  return workdir


def _copy(trained, tmp_path):
  workdir = str(tmp_path / 'copy')
  shutil.copytree(trained, workdir)
  return workdir


def _truncate_checkpoint_data(workdir):
  for root, _, files in os.walk(os.path.join(workdir, 'checkpoints')):
    if os.path.basename(root) == 'd':  # OCDBT's array data files.
      for name in files:
        os.truncate(os.path.join(root, name), 10)


def _garble_checkpoint_metadata(workdir):
  for root, _, files in os.walk(os.path.join(workdir, 'checkpoints')):
    for name in files:
      if name in ('_CHECKPOINT_METADATA', 'metrics', 'metadata'):
        with open(os.path.join(root, name), 'w') as f:
          f.write('garbage')


def _damage_metrics_line(workdir):
  path = os.path.join(workdir, 'metrics.jsonl')
  with open(path) as f:
    lines = f.readlines()
  with open(path, 'w') as f:
    f.writelines(['{"epoch": 1, "train_loss": oops}\n'] + lines)


def _user_module(tmp_path):
  folder = tmp_path / 'user'
  folder.mkdir()
  (folder / 'my_blocks.py').write_text(USER_BLOCKS)
  return str(folder)


def _config_file(tmp_path, text):
  path = tmp_path / 'my_config.py'
  path.write_text(text)
  return str(path)


def _torch_checkpoint(tmp_path, state_dict):
  torch = pytest.importorskip('torch')
  path = str(tmp_path / 'model.pt')
  torch.save({k: torch.zeros(v) for k, v in state_dict.items()}, path)
  return path


def _read_only_copy(trained, tmp_path):
  """A copy of the workdir on a read-only file system (a tmpfs mounted
  read-only once it is filled: root only, which CI is)."""
  if os.geteuid() != 0:
    pytest.skip('mounting a tmpfs needs root')
  mount = tmp_path / 'disk'
  mount.mkdir()
  subprocess.run(['mount', '-t', 'tmpfs', '-o', 'size=8m', 'tmpfs',
                  str(mount)], check=True)
  workdir = str(mount / 'run')
  shutil.copytree(trained, workdir)
  subprocess.run(['mount', '-o', 'remount,ro', str(mount)], check=True)
  return workdir, lambda: subprocess.run(['umount', str(mount)], check=True)


def _set(*args, rc=1, **kwargs):
  """A case: extra main.py arguments (on the trained workdir)."""
  return dict(args=list(args), rc=rc, **kwargs)


# name: (what the case runs, the exit status, a phrase of its error).
# ``args`` go after TINY and --workdir; ``prepare(trained, tmp_path)``
# returns extra arguments and may set the workdir (a damaged copy), the
# environment or the script; ``env`` adds environment variables.
CASES = {
    'unknown block': _set('--config.model.block=resnet',
                          message="Unknown block 'resnet'; valid blocks:"),
    'unknown bf16 micro-kernel': _set(
        env={'JAX_RESNET_BF16_ISA': 'avx512'},
        message="Unknown $JAX_RESNET_BF16_ISA 'avx512'; valid: auto, amx"),
    'unknown kernel instruction set': _set(
        env={'JAX_RESNET_CPU_ISA': 'avx'},
        message="Unknown $JAX_RESNET_CPU_ISA 'avx'; valid: auto, avx512, "
        'avx2.'),
    'unknown dataset': _set('--config.dataset=mnist',
                            message='valid datasets: cifar10, cifar100'),
    'unknown field': _set('--config.model.blok=preact', rc=2,
                          message="unknown config field 'model.blok'. Did "
                          'you mean model.block'),
    'field of an earlier version': _set(
        '--config.model.cardinality=8', rc=2,
        message="'model.cardinality' is now 'model.block_kwargs."
        "cardinality'"),
    'unknown choice: shortcut': _set('--config.model.shortcut=C',
                                     message='valid: auto, A, B'),
    'unknown choice: optimizer': _set('--config.optimizer.name=rmsprop',
                                      message='valid: sgd, adam, adamw'),
    'unknown choice: schedule': _set('--config.optimizer.schedule=step',
                                     message='valid: cosine, multistep'),
    'unknown choice: policy': _set('--config.data.policy=trivial',
                                   message='valid: none, autoaugment'),
    'unknown choice: eval_checkpoint': _set('--config.eval_checkpoint=final',
                                            message='valid: best, latest'),
    'unknown choice: normalization': _set('--config.data.normalization=zca',
                                          message='valid: dataset, cifar10'),
    'warmup longer than training': _set(
        '--config.optimizer.warmup_epochs=300',
        message='warmup_epochs must be below num_epochs'),
    'unknown block hyper-parameter': _set(
        '--config.model.block_kwargs.cardinality=4',
        message='model.block_kwargs.cardinality is not a field of block'),
    # absl's own report of a flag it cannot parse (two lines).
    'not a number': _set('--config.batch_size=many',
                         first='FATAL Flags parsing error: ',
                         message="flag --config.batch_size=many: invalid "
                         "literal for int() with base 10: 'many'"),
    'depth not 6n+2': _set('--config.model.depth=21',
                           message='must be 6n+2'),
    'zero batch': _set('--config.batch_size=0',
                       message='batch_size must be at least 1; got 0.'),
    'negative batch': _set('--config.batch_size=-3',
                           message='batch_size must be at least 1; got -3.'),
    'zero eval batch': _set('--config.eval_batch_size=0',
                            message='eval_batch_size must be at least 1'),
    'zero epochs': _set('--config.num_epochs=0',
                        message='num_epochs must be at least 1; got 0.'),
    'negative epochs': _set('--config.num_epochs=-1',
                            message='num_epochs must be at least 1; got -1.'),
    'negative examples': _set('--config.data.train_examples=-5',
                              message='data.train_examples must be at least '
                              '0; got -5.'),
    'train_examples below the batch size': _set(
        '--config.data.train_examples=8',
        message='data.train_examples=8 makes no batch of batch_size=16'),
    'batch not divisible by the devices': _set(
        '--config.batch_size=15', devices=2,
        message='batch_size=15 does not split over 2 devices'),
    'missing config file': _set(
        rc=2, config='configs/nope.py',
        message='error: no config file configs/nope.py. Config files in '
        'configs/:'),
    'config file that raises': _set(
        rc=2, prepare=lambda trained, tmp: {
            'config': _config_file(tmp, RAISES)},
        message='raised ZeroDivisionError: integer division or modulo by '
        'zero'),
    'config file with a syntax error': _set(
        rc=2, prepare=lambda trained, tmp: {
            'config': _config_file(tmp, 'def get_config(:\n')},
        message='raised SyntaxError'),
    'config file without get_config': _set(
        rc=2, prepare=lambda trained, tmp: {
            'config': _config_file(tmp, 'x = 1\n')},
        message='defines no get_config()'),
    'block module not found': _set(
        '--config.model.block=no_such_module:Wide',
        message="Cannot import module 'no_such_module'"),
    'block class not found': _set(
        '--config.model.block=my_blocks:Missing', user_module=True,
        message="Module 'my_blocks' has no class 'Missing'"),
    'block of the wrong base class': _set(
        '--config.model.block=my_blocks:NotABlock', user_module=True,
        message='must be a subclass of jax_resnet.blocks.ResidualBlock'),
    'block returning the wrong channel count': _set(
        '--config.model.block=my_blocks:Wide', user_module=True,
        message='(stage1_block1) returned shape'),
    'block module listed but not found': _set(
        '--config.model.block_modules=("no_such_blocks",)',
        message="Cannot import model.block_modules entry 'no_such_blocks'"),
    'workdir of another setting': _set(
        '--config.model.depth=14',
        message='was written by a different setting'),
    'workdir of another batch size': _set(
        '--config.batch_size=8',
        message='steps per epoch; this command has'),
    'truncated checkpoint: resume': _set(
        '--config.num_epochs=2', damage=_truncate_checkpoint_data,
        message='No readable latest checkpoint'),
    'truncated checkpoint: eval': _set(
        '--mode=eval', damage=_truncate_checkpoint_data,
        message='No readable best checkpoint'),
    'unreadable checkpoint metadata: resume': _set(
        '--config.num_epochs=2', damage=_garble_checkpoint_metadata,
        message='Cannot read the checkpoints in'),
    'unreadable checkpoint metadata: eval': _set(
        '--mode=eval', damage=_garble_checkpoint_metadata,
        message='Cannot read the checkpoints in'),
    'corrupted metrics.jsonl line': _set(
        '--config.num_epochs=2', damage=_damage_metrics_line,
        message='metrics.jsonl, line 1, is not a JSON record'),
    'read-only workdir': _set('--config.num_epochs=2', read_only=True,
                              message='the file system is read-only'),
    'eval of an empty workdir': _set(
        '--mode=eval', empty_workdir=True, message='No best checkpoint in'),
    'PyTorch checkpoint of the wrong layout': _set(
        rc=1, convert={'conv1.weight': (16, 3, 3, 3), 'fc.weight': (7, 64)},
        new_workdir=True, message='does not fit'),
    'PyTorch import into a trained workdir': _set(
        rc=1, convert={'conv1.weight': (16, 3, 3, 3)},
        message='already holds checkpoints'),
}


@pytest.mark.parametrize('name', list(CASES))
def test_bad_input(name, trained, tmp_path):
  case = CASES[name]
  workdir = trained
  cleanup = None
  if case.get('damage'):
    workdir = _copy(trained, tmp_path)
    case['damage'](workdir)
  if case.get('read_only'):
    workdir, cleanup = _read_only_copy(trained, tmp_path)
  if case.get('empty_workdir'):
    workdir = str(tmp_path / 'empty')
    os.mkdir(workdir)
  if case.get('new_workdir'):
    workdir = str(tmp_path / 'new')
  before = workdir_bytes(workdir) if os.path.exists(workdir) else None
  extra = case['prepare'](trained, tmp_path) if case.get('prepare') else {}

  args = list(TINY)
  config = extra.get('config') or case.get('config')
  if config:
    args[1] = config
  args += case['args'] + [f'--workdir={workdir}']
  script = MOCK_MAIN
  if case.get('convert'):
    script = CONVERT
    args.append('--torch-checkpoint=' +
                _torch_checkpoint(tmp_path, case['convert']))
  try:
    out = run_main(args, devices=case.get('devices', 1), check=False,
                   script=script, extra_env=case.get('env'),
                   pythonpath=_user_module(tmp_path)
                   if case.get('user_module') else '')
  finally:
    if cleanup:
      after = workdir_bytes(workdir)
      cleanup()
  if not cleanup:
    after = workdir_bytes(workdir) if os.path.exists(workdir) else None

  lines = error_lines(out.stderr)
  assert out.returncode == case['rc'], out.stderr
  assert 'Traceback' not in out.stderr, out.stderr
  assert 1 <= len(lines) <= MAX_ERROR_LINES, out.stderr
  assert lines[0].startswith(case.get('first', 'error: ')), out.stderr
  assert case['message'] in out.stderr, out.stderr
  assert after == before, f'{name} changed the workdir'
