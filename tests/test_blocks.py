"""Block contract for every registered block, stochastic depth, registry."""

import functools
import sys
import textwrap

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import default
from jax_resnet import errors
from jax_resnet.models import blocks
from jax_resnet.models import layers
from jax_resnet.models import registry

CONV = functools.partial(nn.Conv, use_bias=False, padding=1,
                         kernel_init=layers.conv_kernel_init)


def make_block(block_cls, in_planes, planes, stride, train, **kwargs):
  norm = layers.norm_partial(train, momentum=0.1, epsilon=1e-5,
                             dtype=jnp.float32)
  return block_cls(in_planes=in_planes, planes=planes, stride=stride,
                   conv=CONV, norm=norm, **kwargs)


def run_block(block, x, train, rng=0):
  variables = block.init(
      {'params': jax.random.PRNGKey(0),
       'stochastic_depth': jax.random.PRNGKey(1)}, x, train=False)
  return block.apply(variables, x, train=train, mutable=['batch_stats'],
                     rngs={'stochastic_depth': jax.random.PRNGKey(rng)})[0]


def _shape_cases():
  for name, block_cls in sorted(blocks.BLOCKS.items()):
    for in_planes, planes, stride in [(16, 16, 1), (16, 32, 2), (16, 32, 1),
                                      (32, 16, 1)]:
      for shortcut in ('A', 'B'):
        # Option A cannot reduce channels: test_option_a_cannot_reduce_channels.
        if shortcut == 'B' or planes * block_cls.expansion >= in_planes:
          yield name, in_planes, planes, stride, shortcut


@pytest.mark.parametrize('name,in_planes,planes,stride,shortcut',
                         list(_shape_cases()))
def test_block_output_shape(name, in_planes, planes, stride, shortcut):
  block_cls = blocks.BLOCKS[name]
  block = make_block(block_cls, in_planes, planes, stride, True,
                     shortcut_type=shortcut)
  x = jax.random.normal(jax.random.PRNGKey(0), (2, 8, 8, in_planes))
  y = run_block(block, x, train=True)
  assert y.shape == (2, 8 // stride, 8 // stride,
                     planes * block_cls.expansion)
  assert bool(jnp.all(jnp.isfinite(y)))


def test_option_a_cannot_reduce_channels():
  block = make_block(blocks.BasicBlock, 32, 16, 1, False, shortcut_type='A')
  with pytest.raises(ValueError, match='cannot reduce channels'):
    run_block(block, jnp.zeros((1, 8, 8, 32)), train=False)


def test_option_a_shortcut_subsamples_and_pads_zero_channels():
  x = jnp.arange(2 * 4 * 4 * 2, dtype=jnp.float32).reshape(2, 4, 4, 2)
  y = blocks.shortcut_option_a(x, 6, 2)
  assert y.shape == (2, 2, 2, 6)
  np.testing.assert_array_equal(y[..., 2:4], x[:, ::2, ::2, :])
  assert float(jnp.abs(y[..., :2]).sum() + jnp.abs(y[..., 4:]).sum()) == 0


def test_average_pool_ceil_averages_only_the_pixels_of_a_partial_window():
  x = jnp.arange(9, dtype=jnp.float32).reshape(1, 3, 3, 1)
  y = blocks.average_pool_ceil(x, 2)
  np.testing.assert_allclose(y[0, ..., 0], [[(0 + 1 + 3 + 4) / 4, (2 + 5) / 2],
                                            [(6 + 7) / 2, 8]])


class _ShortcutOnly(blocks.BasicBlock):

  @nn.compact
  def __call__(self, x, train=False):
    return self.shortcut(x)


def test_option_d_shortcut_pools_then_projects_at_stride_1():
  block = make_block(_ShortcutOnly, 16, 32, 2, False, shortcut_type='D')
  x = jax.random.normal(jax.random.PRNGKey(0), (2, 7, 7, 16))
  variables = block.init(jax.random.PRNGKey(0), x)
  assert variables['params']['shortcut_conv']['kernel'].shape == (1, 1, 16, 32)
  variables['batch_stats']['shortcut_bn'] = {
      'mean': jnp.linspace(-1, 1, 32), 'var': jnp.linspace(0.5, 2, 32)}
  shortcut = block.apply(variables, x)
  kernel = variables['params']['shortcut_conv']['kernel'][0, 0]
  stats = variables['batch_stats']['shortcut_bn']
  scale = variables['params']['shortcut_bn']
  expected = blocks.average_pool_ceil(x, 2) @ kernel
  expected = ((expected - stats['mean']) / jnp.sqrt(stats['var'] + 1e-5)
              * scale['scale'] + scale['bias'])
  assert shortcut.shape == (2, 4, 4, 32)
  np.testing.assert_allclose(shortcut, expected, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize('name', sorted(blocks.BLOCKS))
def test_gradients_reach_the_stem(name):
  config = default.get_config().model
  config.update(block=name, depth=8)
  model = registry.create_model(config, 10)
  x = jax.random.normal(jax.random.PRNGKey(0), (4, 32, 32, 3))
  labels = jnp.arange(4)
  # Compiled once: faster than op-by-op dispatch for the larger blocks.
  variables = jax.jit(functools.partial(model.init, train=False))(
      jax.random.PRNGKey(1), x)

  def loss(params):
    logits, _ = model.apply(
        {'params': params, 'batch_stats': variables['batch_stats']}, x,
        train=True, mutable=['batch_stats'],
        rngs={'stochastic_depth': jax.random.PRNGKey(2)})
    return -jnp.mean(jax.nn.log_softmax(logits)[jnp.arange(4), labels])

  # Checked in NumPy: an eager jnp op per leaf shape compiles a program.
  grads = jax.device_get(jax.jit(jax.grad(loss))(variables['params']))
  assert float(np.abs(grads['stem_conv']['kernel']).sum()) > 0
  for path, g in jax.tree_util.tree_leaves_with_path(grads):
    assert bool(np.all(np.isfinite(g))), path


def test_gated_block_is_identity_at_init_and_learns_its_gate():
  block = make_block(blocks.GatedBlock, 16, 16, 1, True)
  x = jax.nn.relu(jax.random.normal(jax.random.PRNGKey(0), (2, 8, 8, 16)))
  variables = block.init(jax.random.PRNGKey(0), x, train=False)
  assert float(variables['params']['gate']) == 0.0
  y = block.apply(variables, x, train=True, mutable=['batch_stats'])[0]
  np.testing.assert_allclose(y, x)
  grad = jax.grad(lambda p: jnp.sum(block.apply(
      {'params': p, 'batch_stats': variables['batch_stats']}, x, train=True,
      mutable=['batch_stats'])[0] ** 2))(variables['params'])
  assert float(jnp.abs(grad['gate'])) > 0


class TestStochasticDepth:
  """Stochastic depth: eval scaling, training draws, per-example mode."""

  x = jax.nn.relu(jax.random.normal(jax.random.PRNGKey(0), (8, 8, 8, 16)))

  def test_eval_is_deterministic_and_scales_branch(self):
    block = make_block(blocks.StochasticDepthBlock, 16, 16, 1, False,
                       survival_probability=0.5)
    full = make_block(blocks.BasicBlock, 16, 16, 1, False)
    variables = block.init(jax.random.PRNGKey(0), self.x, train=False)
    y1 = block.apply(variables, self.x, train=False)
    y2 = block.apply(variables, self.x, train=False)
    np.testing.assert_array_equal(y1, y2)
    branch_full = full.apply(variables, self.x, train=False)
    # With the same weights the full block computes relu(x + branch); where
    # that is positive, branch = y_full - x, so y_half = relu(x + 0.5 branch).
    positive = branch_full > 0
    expected = jax.nn.relu(self.x + 0.5 * (branch_full - self.x))
    np.testing.assert_allclose(np.where(positive, y1, 0),
                               np.where(positive, expected, 0), atol=1e-5)

  def test_training_draw_depends_on_rng(self):
    block = make_block(blocks.StochasticDepthBlock, 16, 16, 1, True,
                       survival_probability=0.5)
    identity = jax.nn.relu(self.x)
    outcomes = set()
    for seed in range(16):
      y = run_block(block, self.x, train=True, rng=seed)
      outcomes.add(bool(np.allclose(y, identity)))
      y_again = run_block(block, self.x, train=True, rng=seed)
      np.testing.assert_array_equal(y, y_again)
    assert outcomes == {True, False}  # Dropped for some keys, kept for others.

  def test_per_example_mode_drops_examples_independently(self):
    block = make_block(blocks.StochasticDepthBlock, 16, 16, 1, True,
                       survival_probability=0.5,
                       stochastic_depth_mode='example')
    identity = jax.nn.relu(self.x)
    mixed = False
    for seed in range(8):
      y = run_block(block, self.x, train=True, rng=seed)
      dropped = [bool(np.allclose(y[i], identity[i])) for i in range(8)]
      mixed |= 0 < sum(dropped) < 8
    assert mixed

  def test_survival_one_never_drops(self):
    block = make_block(blocks.StochasticDepthBlock, 16, 16, 1, True,
                       survival_probability=1.0)
    identity = jax.nn.relu(self.x)
    for seed in range(4):
      y = run_block(block, self.x, train=True, rng=seed)
      assert not np.allclose(y, identity)


def test_unknown_block_lists_valid_names():
  with pytest.raises(ValueError, match='basic, bottleneck, custom, gated'):
    blocks.get_block('resnet')


def test_block_from_user_module(tmp_path, monkeypatch):
  (tmp_path / 'my_blocks.py').write_text(textwrap.dedent('''
      import flax.linen as nn
      from jax_resnet.models import blocks

      class MyBlock(blocks.ResidualBlock):
        @nn.compact
        def __call__(self, x, train):
          y = self.conv(self.out_planes, (3, 3), strides=self.stride)(x)
          y = self.norm()(y)
          return nn.relu(self.shortcut(x) + self.drop_branch(y, train))

      NotABlock = int
  '''))
  monkeypatch.syspath_prepend(str(tmp_path))
  assert blocks.get_block('my_blocks:MyBlock').__name__ == 'MyBlock'
  config = default.get_config().model
  config.update(block='my_blocks:MyBlock', depth=8)
  model = registry.create_model(config, 10)
  y = model.apply(model.init(jax.random.PRNGKey(0), jnp.zeros((1, 32, 32, 3))),
                  jnp.zeros((1, 32, 32, 3)))
  assert y.shape == (1, 10)
  with pytest.raises(errors.ConfigError, match='subclass'):
    blocks.get_block('my_blocks:NotABlock')
  with pytest.raises(errors.ConfigError, match='has no class'):
    blocks.get_block('my_blocks:Missing')
  with pytest.raises(errors.ConfigError, match='Cannot import'):
    blocks.get_block('no_such_module_xyz:MyBlock')
  sys.modules.pop('my_blocks', None)


def test_register_block_rejects_a_second_class_under_a_name():
  with pytest.raises(errors.ConfigError, match='already registered'):
    blocks.register_block('basic')(blocks.PreActBlock)
  # The same class again (its module imported twice) is no conflict.
  assert blocks.register_block('basic')(blocks.BasicBlock) is (
      blocks.BasicBlock)


def test_public_block_api_is_the_models_module():
  """``jax_resnet.blocks`` (the documented name) is ``models.blocks`` itself."""
  # pylint: disable-next=g-import-not-at-top
  from jax_resnet import blocks as public
  assert public is blocks
  assert public.ResidualBlock is blocks.ResidualBlock
  assert public.get_block('basic') is blocks.BasicBlock
