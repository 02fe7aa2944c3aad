"""What each published network is: layer shapes, a forward pass and a
training step per family, the CIFAR-100 head, dropout, the plain block."""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from conftest import model_config
from jax_resnet import train
from jax_resnet.models import blocks
from jax_resnet.models import layers
from jax_resnet.models import pyramidnet
from jax_resnet.models import registry
from jax_resnet.tools import summary
from jax_resnet.tools import zoo

# The smallest member of each family, for forward passes and training steps.
SMALL = {
    'cifar_resnet': dict(depth=8),
    'plain': dict(depth=8, block='plain'),
    'resnet': dict(name='resnet', depth=18),
    'preact_resnet': dict(name='resnet', depth=18, block='preact'),
    'resnext': dict(name='resnext', depth=11, block='resnext', 
                    block_kwargs=dict(cardinality=2, base_width=4)),
    'wide_resnet': dict(name='wide_resnet', depth=10, widen_factor=1,
                        dropout_rate=0.3),
    'pyramidnet': dict(name='pyramidnet', depth=8, pyramid_alpha=12),
    'pyramidnet_bottleneck': dict(name='pyramidnet', depth=11,
                                  block='bottleneck', pyramid_alpha=12),
    'densenet': dict(name='densenet', depth=10, block='bottleneck',
                     growth_rate=4),
}




@functools.lru_cache(maxsize=None)
def abstract_params(config_name: str):
  """Parameter shapes of a config file's network, 10 classes; no compute."""
  model = registry.create_model(zoo.load_config(config_name).model, 10)
  return summary.abstract_variables(model)['params']


@pytest.mark.parametrize('family', sorted(SMALL))
def test_cifar100_only_widens_the_head(family):
  config = model_config(**SMALL[family])
  counts = {}
  for classes in (10, 100):
    params = summary.abstract_variables(
        registry.create_model(config, classes))['params']
    counts[classes] = summary.count_params(params)
  fan_in = params['head']['kernel'].shape[0]
  assert counts[100] - counts[10] == 90 * (fan_in + 1)


class TestPublishedStructure:
  """Layer shapes that define each published network."""

  def test_resnet18_has_four_stages_and_projection_shortcuts(self):
    params = abstract_params('resnet18_cifar10')
    assert params['stem_conv']['kernel'].shape == (3, 3, 3, 64)
    assert 'stem_bn' in params and 'stage4_block1' in params
    assert params['stage4_block1']['shortcut_conv']['kernel'].shape == (
        1, 1, 256, 512)
    assert 'shortcut_bn' in params['stage4_block1']
    assert params['head']['kernel'].shape == (512, 10)

  def test_preact_resnet18_projects_with_a_bare_conv(self):
    params = abstract_params('preact_resnet18_cifar10')
    block = params['stage2_block1']
    assert block['shortcut_conv']['kernel'].shape == (1, 1, 64, 128)
    assert 'shortcut_bn' not in block
    assert 'final_bn' in params and 'stem_bn' not in params

  def test_wrn_28_10_widths(self):
    params = abstract_params('wrn28_10_cifar10')
    assert params['stem_conv']['kernel'].shape == (3, 3, 3, 16)
    assert params['stage1_block1']['shortcut_conv']['kernel'].shape == (
        1, 1, 16, 160)
    assert 'shortcut_bn' not in params['stage1_block1']
    assert params['stage3_block1']['conv2']['kernel'].shape == (
        3, 3, 640, 640)
    assert params['head']['kernel'].shape == (640, 10)

  def test_pyramidnet_widens_every_block(self):
    planes = pyramidnet.block_planes(54, 48)
    assert planes[0] == 17 and planes[-1] == 64
    assert all(b - a in (0, 1) for a, b in zip(planes, planes[1:]))
    assert pyramidnet.block_planes(54, 270) == list(range(21, 287, 5))
    params = abstract_params('pyramidnet272_a200_cifar10')
    assert params['stage3_block30']['conv3']['kernel'].shape == (
        1, 1, 216, 864)
    assert params['head']['kernel'].shape == (864, 10)

  def test_densenet_bc_100_channels(self):
    params = abstract_params('densenet_bc100_k12_cifar10')
    assert params['stem_conv']['kernel'].shape == (3, 3, 3, 24)
    # 24 + 16 * 12 = 216 channels, compressed by half.
    assert params['stage1_transition']['conv']['kernel'].shape == (
        1, 1, 216, 108)
    assert params['stage2_transition']['conv']['kernel'].shape == (
        1, 1, 300, 150)
    assert params['stage3_layer16']['conv1']['kernel'].shape == (
        1, 1, 330, 48)
    assert params['head']['kernel'].shape == (342, 10)

  def test_resnext29_groups_its_3x3_convolutions(self):
    params = abstract_params('resnext29_8x64d_cifar10')
    # 512 channels in 8 groups: each output sees 64 inputs.
    assert params['stage1_block1']['conv2']['kernel'].shape == (
        3, 3, 64, 512)
    params = abstract_params('resnext29_16x64d_cifar10')
    assert params['stage3_block1']['conv2']['kernel'].shape == (
        3, 3, 256, 4096)


def _init(model, x):
  return jax.jit(functools.partial(model.init, train=False))(
      jax.random.PRNGKey(0), x)


# Forward passes run on small images to keep them fast (ResNet-18, the
# smallest of its family, on smaller ones still); the parameter counts and
# summaries above trace every network on 32x32.
IMAGE_SIZE = {'resnet': 8}


# PreAct-ResNet-18 differs from ResNet-18 only in blocks that the CIFAR ResNet
# tests run; its shapes are checked above.
@pytest.mark.parametrize('family', sorted(set(SMALL) - {'preact_resnet'}))
def test_forward_and_training_step(family):
  """Eval forward and one SGD step that updates weights and statistics."""
  model = registry.create_model(model_config(**SMALL[family]), 10)
  size = IMAGE_SIZE.get(family, 16)
  x = jax.random.normal(jax.random.PRNGKey(1), (2, size, size, 3))
  labels = jnp.array([3, 7])
  variables = _init(model, x)
  optimizer = optax.sgd(0.1, momentum=0.9)

  # One compiled function for both modes: compiling dominates the time here.
  @jax.jit
  def evaluate_and_step(params, batch_stats, opt_state, rng):
    logits = model.apply({'params': params, 'batch_stats': batch_stats}, x,
                         train=False)

    def loss_fn(p):
      out, new = model.apply(
          {'params': p, 'batch_stats': batch_stats}, x, train=True,
          mutable=['batch_stats'], rngs={'stochastic_depth': rng})
      return train.cross_entropy(out, labels, 10).mean(), new['batch_stats']

    (loss, new_stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(
        params)
    updates, _ = optimizer.update(grads, opt_state, params)
    return logits, optax.apply_updates(params, updates), new_stats, loss

  params = variables['params']
  logits, new_params, new_stats, loss = evaluate_and_step(
      params, variables['batch_stats'], optimizer.init(params),
      jax.random.PRNGKey(2))
  assert logits.shape == (2, 10) and logits.dtype == jnp.float32
  assert bool(jnp.all(jnp.isfinite(logits)))
  assert np.isfinite(float(loss))
  moved = jax.tree.map(lambda a, b: bool(jnp.any(a != b)), params, new_params)
  assert moved['stem_conv']['kernel'] and moved['head']['kernel']
  stats_moved = jax.tree.leaves(jax.tree.map(
      lambda a, b: bool(jnp.any(a != b)), variables['batch_stats'],
      new_stats))
  assert all(stats_moved)


@pytest.mark.parametrize('family', ['wide_resnet', 'densenet'])
def test_dropout_draws_from_the_training_stream(family):
  """Training draws differ by key; evaluation is deterministic."""
  config = model_config(**SMALL[family])
  config.dropout_rate = 0.5
  model = registry.create_model(config, 10)
  x = jax.random.normal(jax.random.PRNGKey(1), (2, 16, 16, 3))
  variables = _init(model, x)

  @functools.partial(jax.jit, static_argnums=1)
  def forward(seed, train_mode):
    rngs = {'stochastic_depth': jax.random.PRNGKey(seed)}
    if train_mode:
      return model.apply(variables, x, train=True, mutable=['batch_stats'],
                         rngs=rngs)[0]
    return model.apply(variables, x, train=False, rngs=rngs)

  train_a, train_b = forward(0, True), forward(1, True)
  assert not np.allclose(train_a, train_b)
  np.testing.assert_array_equal(forward(0, True), train_a)
  np.testing.assert_array_equal(forward(0, False), forward(1, False))


def test_plain_block_has_no_shortcut():
  """With its last BN zeroed the plain block outputs 0, a basic one relu(x)."""
  x = jax.nn.relu(jax.random.normal(jax.random.PRNGKey(0), (2, 8, 8, 16)))
  outputs = {}
  for name in ('plain', 'basic'):
    block = blocks.BLOCKS[name](
        in_planes=16, planes=16, stride=1,
        conv=functools.partial(nn.Conv, use_bias=False, padding=1),
        norm=layers.norm_partial(False, 0.1, 1e-5, jnp.float32))
    variables = block.init(jax.random.PRNGKey(0), x, train=False)
    params = jax.tree_util.tree_map_with_path(
        lambda path, v: jnp.zeros_like(v) if path[0].key == 'bn2' else v,
        variables['params'])
    outputs[name] = block.apply({**variables, 'params': params}, x,
                                train=False)
  np.testing.assert_allclose(outputs['plain'], 0.0)
  np.testing.assert_allclose(outputs['basic'], x)
