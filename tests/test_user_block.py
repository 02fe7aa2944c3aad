"""A researcher's own block from the command line: its hyper-parameters
(``--config.model.block_kwargs.NAME``) for train, eval, summary and the grid,
its registration (``model.block_modules``) and its errors."""

import json
import os
import re
import textwrap

import pytest

from conftest import ROOT, TINY, error_lines, run_main
import golden

MY_BLOCKS = textwrap.dedent('''
    import flax.linen as nn
    from jax_resnet import blocks


    class MyBlock(blocks.ResidualBlock):
      ratio: int = 1

      @nn.compact
      def __call__(self, x, train):
        y = self.conv(self.planes * self.ratio, (3, 3), strides=self.stride,
                      name='conv1')(x)
        y = self.norm(name='bn1')(y, relu=True)
        y = self.conv(self.out_planes, (3, 3), name='conv2')(y)
        y = self.norm(name='bn2')(y)
        return nn.relu(self.shortcut(x) + self.drop_branch(y, train))


    @blocks.register_block('my_wide')
    class MyWideBlock(MyBlock):
      ratio: int = 2


    class Broken(blocks.ResidualBlock):

      @nn.compact
      def __call__(self, x, train):
        raise ValueError('broken on purpose')
''')
GRID = os.path.join(ROOT, 'tests', 'mock_grid.py')
# MyBlock with ratio 2 in ResNet-8: conv1 of each of the three blocks doubles
# its outputs (and bn1 its channels), conv2 its inputs.
RATIO_2_EXTRA = sum(9 * c_in * c + 2 * c + 9 * c * c
                    for c_in, c in ((16, 16), (16, 32), (32, 64)))


@pytest.fixture(name='user_path')
def fixture_user_path(tmp_path):
  """A folder with the user's module my_blocks.py, for PYTHONPATH."""
  folder = tmp_path / 'user'
  folder.mkdir()
  (folder / 'my_blocks.py').write_text(MY_BLOCKS)
  return str(folder)


def parameters(summary_output: str) -> int:
  return int(re.search(r': ([\d,]+) parameters', summary_output).group(1)
             .replace(',', ''))


def test_hyperparameter_changes_the_network(user_path):
  counts = {}
  for ratio in (1, 2):
    out = run_main(TINY + ['--config.model.block=my_blocks:MyBlock',
                           f'--config.model.block_kwargs.ratio={ratio}',
                           '--mode=summary'], mock=False,
                   pythonpath=user_path)
    assert f'ratio={ratio}' in out.stdout
    counts[ratio] = parameters(out.stdout)
  assert counts == {1: golden.CIFAR_RESNET_PARAMS[8],
                    2: golden.CIFAR_RESNET_PARAMS[8] + RATIO_2_EXTRA}


def test_train_then_eval_with_a_hyperparameter(user_path, tmp_path):
  args = TINY + ['--config.model.block=my_blocks:MyBlock',
                 '--config.model.block_kwargs.ratio=2', '--config.num_epochs=1',
                 f'--workdir={tmp_path / "run"}']
  run_main(args, pythonpath=user_path)
  out = run_main(args + ['--mode=eval'], pythonpath=user_path)
  assert json.loads(out.stdout.strip().splitlines()[-1])['checkpoint_step'] == 2
  # (Another ratio is refused: test_checkpoints, block_kwargs.)


def test_grid_with_a_hyperparameter(user_path, tmp_path):
  root = tmp_path / 'grid'
  run_main(['--settings=resnet20-cifar10', '--blocks=my_blocks:MyBlock',
            f'--root={root}', '--epochs=1'] +
           [a for a in TINY[2:]] + ['--config.model.block_kwargs.ratio=2'],
           script=GRID, pythonpath=user_path)
  workdir = root / 'resnet20-cifar10' / 'my_blocks.MyBlock' / 'seed0'
  with open(workdir / 'status.json') as f:
    status = json.load(f)
  assert status['state'] == 'done'
  with open(workdir / 'config.json') as f:
    assert json.load(f)['model']['block_kwargs'] == {'ratio': 2}
  assert status['parameters'] == golden.CIFAR_RESNET_PARAMS[8] + RATIO_2_EXTRA


def test_unknown_hyperparameter_lists_the_block_fields(user_path):
  out = run_main(TINY + ['--config.model.block=my_blocks:MyBlock',
                         '--config.model.block_kwargs.ratoi=2',
                         '--mode=summary'], mock=False, pythonpath=user_path,
                 check=False)
  assert out.returncode == 1
  assert error_lines(out.stderr) == [
      "error: model.block_kwargs.ratoi is not a field of block "
      "'my_blocks:MyBlock' (MyBlock); its hyper-parameters are ratio."]


def test_block_registered_by_its_module(user_path):
  args = TINY + ['--config.model.block=my_wide', '--mode=summary']
  out = run_main(args + ['--config.model.block_modules=my_blocks'],
                 mock=False, pythonpath=user_path)
  assert 'block my_wide' in out.stdout and 'ratio=2' in out.stdout
  out = run_main(args, mock=False, pythonpath=user_path, check=False)
  assert out.returncode == 1
  assert "Unknown block 'my_wide'" in out.stderr
  assert 'model.block_modules' in out.stderr


def test_error_inside_the_users_block_keeps_its_traceback(user_path):
  out = run_main(TINY + ['--config.model.block=my_blocks:Broken',
                         '--mode=summary'], mock=False, pythonpath=user_path,
                 check=False)
  assert out.returncode != 0
  assert 'Traceback' in out.stderr
  assert 'my_blocks.py' in out.stderr
  assert 'ValueError: broken on purpose' in out.stderr
