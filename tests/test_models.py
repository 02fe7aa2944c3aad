"""CIFAR ResNet backbone: parameter counts, depth rule, survival schedule."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import model_config
import golden
from jax_resnet.models import backbone
from jax_resnet.models import blocks
from jax_resnet.models import registry
from jax_resnet.tools import summary


def param_count(model_cfg, num_classes=10) -> int:
  model = registry.create_model(model_cfg, num_classes)
  variables = jax.eval_shape(functools.partial(model.init, train=False),
                             jax.random.PRNGKey(0), jnp.zeros((1, 32, 32, 3)))
  return summary.count_params(variables['params'])


# He et al. (2015) option-A CIFAR ResNets, 10 classes (ResNet-1202: its
# config file's count, test_zoo).
@pytest.mark.parametrize('depth,expected', sorted(
    (d, n) for d, n in golden.CIFAR_RESNET_PARAMS.items() if d < 1202))
def test_option_a_parameter_counts(depth, expected):
  assert param_count(model_config(depth=depth)) == expected


def test_cifar100_head():
  assert param_count(model_config(depth=56), 100) == (
      golden.CIFAR_RESNET_PARAMS[56] + 90 * 64 + 90)


def test_option_b_adds_projections():
  # Two 1x1 conv + BN projections: 16->32 and 32->64.
  extra = (16 * 32 + 2 * 32) + (32 * 64 + 2 * 64)
  assert param_count(model_config(shortcut='B')) == (
      golden.CIFAR_RESNET_PARAMS[20] + extra)


def test_bottleneck_default_shortcut_is_b():
  model = registry.create_model(model_config(block='bottleneck', depth=20), 10)
  assert model.shortcut_type == 'B'


@pytest.mark.parametrize('depth', [7, 9, 21, 2, 0])
def test_depth_must_be_6n_plus_2(depth):
  with pytest.raises(ValueError, match='6n\\+2'):
    registry.create_model(model_config(depth=depth), 10)


def test_survival_probability_linear_decay():
  probs = blocks.survival_probabilities(54, 0.5)
  assert probs[0] == pytest.approx(1 - 0.5 / 54)
  assert probs[-1] == pytest.approx(0.5)
  assert np.all(np.diff(probs) < 0)
  assert blocks.survival_probabilities(3, 1.0) == [1.0, 1.0, 1.0]


def test_backbone_hands_survival_probabilities_to_blocks():
  model = registry.create_model(model_config(block='stochastic_depth'), 10)
  assert model.final_survival_probability == 0.5
  plain = registry.create_model(model_config(block='basic'), 10)
  assert plain.final_survival_probability == 1.0
  explicit = registry.create_model(
      model_config(block='preact', final_survival_probability=0.8), 10)
  assert explicit.final_survival_probability == 0.8


def test_preact_network_has_final_bn_and_no_stem_bn():
  model = registry.create_model(model_config(block='preact'), 10)
  params = jax.eval_shape(functools.partial(model.init, train=False),
                          jax.random.PRNGKey(0),
                          jnp.zeros((1, 32, 32, 3)))['params']
  assert 'final_bn' in params and 'stem_bn' not in params
  basic = registry.create_model(model_config(block='basic'), 10)
  params = jax.eval_shape(functools.partial(basic.init, train=False),
                          jax.random.PRNGKey(0),
                          jnp.zeros((1, 32, 32, 3)))['params']
  assert 'stem_bn' in params and 'final_bn' not in params


def _init(model, train=False):
  return model.init(jax.random.PRNGKey(0), jnp.zeros((2, 32, 32, 3)),
                    train=train)


def test_parameter_paths_are_stable():
  model = registry.create_model(model_config(depth=20, scan_blocks=True), 10)
  params = jax.eval_shape(lambda: _init(model))['params']
  assert sorted(params) == [
      'head', 'stage1_block1', 'stage1_blocks', 'stage2_block1',
      'stage2_blocks', 'stage3_block1', 'stage3_blocks', 'stem_bn',
      'stem_conv']
  assert sorted(params['stage2_block1']) == ['bn1', 'bn2', 'conv1', 'conv2']
  assert params['stage2_blocks']['block']['conv2']['kernel'].shape == (
      2, 3, 3, 32, 32)
  unrolled = registry.create_model(
      model_config(depth=20, scan_blocks=False), 10)
  names = sorted(jax.eval_shape(lambda: _init(unrolled))['params'])
  assert names == sorted(['head', 'stem_bn', 'stem_conv'] + [
      f'stage{s}_block{b}' for s in (1, 2, 3) for b in (1, 2, 3)])


@pytest.mark.parametrize('block', ['basic', 'preact', 'stochastic_depth'])
def test_scanned_network_equals_unrolled(block):
  """Same weights give the same outputs and BatchNorm updates either way."""
  config = model_config(depth=20, block=block, scan_blocks=True)
  scanned = registry.create_model(config, 10)
  config.scan_blocks = False
  unrolled = registry.create_model(config, 10)
  variables = _init(unrolled)
  x = jax.random.normal(jax.random.PRNGKey(3), (4, 32, 32, 3))
  stacked = {k: backbone.stack_scanned_blocks(v) for k, v in variables.items()}
  assert jax.tree.structure(stacked) == jax.tree.structure(
      jax.eval_shape(lambda: _init(scanned)))
  np.testing.assert_allclose(scanned.apply(stacked, x),
                             unrolled.apply(variables, x), atol=1e-5)
  if block != 'stochastic_depth':  # Training draws differ between layouts.
    y_s, new_s = scanned.apply(stacked, x, train=True, mutable=['batch_stats'])
    y_u, new_u = unrolled.apply(variables, x, train=True,
                                mutable=['batch_stats'])
    np.testing.assert_allclose(y_s, y_u, atol=1e-5)
    for a, b in zip(jax.tree.leaves(new_s),
                    jax.tree.leaves(backbone.stack_scanned_blocks(
                        new_u['batch_stats']))):
      np.testing.assert_allclose(a, b, atol=1e-5)
    # Gradients too: the scanned network's convolutions have hand-written
    # (canonical) gradients.
    def grads(model, tree):
      def loss(params):
        y, _ = model.apply({'params': params,
                            'batch_stats': tree['batch_stats']}, x,
                           train=True, mutable=['batch_stats'])
        return jnp.sum(jnp.sin(y))
      return jax.grad(loss)(tree['params'])
    g_s = backbone.unstack_scanned_blocks(grads(scanned, stacked))
    g_u = grads(unrolled, variables)
    for a, b in zip(jax.tree.leaves(g_s), jax.tree.leaves(g_u)):
      np.testing.assert_allclose(a, b, rtol=1e-4,
                                 atol=1e-4 * float(jnp.max(jnp.abs(b))))
  round_trip = backbone.unstack_scanned_blocks(stacked['params'])
  for a, b in zip(jax.tree.leaves(round_trip),
                  jax.tree.leaves(variables['params'])):
    np.testing.assert_array_equal(a, b)


def test_scanned_stochastic_depth_draws_differ_per_block():
  """Each scanned block draws its own keep/drop, at its own rate."""
  config = model_config(depth=56, block='stochastic_depth',
                        final_survival_probability=0.5, scan_blocks=True)
  model = registry.create_model(config, 10)
  variables = _init(model)
  x = jax.random.normal(jax.random.PRNGKey(3), (2, 32, 32, 3))
  outputs = {np.asarray(model.apply(
      variables, x, train=True, mutable=['batch_stats'],
      rngs={'stochastic_depth': jax.random.PRNGKey(seed)})[0]).tobytes()
             for seed in range(6)}
  assert len(outputs) == 6


def test_init_matches_pytorch_kaiming_normal_statistics():
  model = registry.create_model(model_config(depth=20, scan_blocks=True), 10)
  params = model.init(jax.random.PRNGKey(0), jnp.zeros((1, 32, 32, 3)),
                      train=False)['params']
  kernel = np.asarray(params['stage3_blocks']['block']['conv1']['kernel'])
  assert kernel.shape == (2, 3, 3, 64, 64)  # Blocks 2 and 3, stacked.
  fan_in = 3 * 3 * 64
  assert kernel.std() == pytest.approx(np.sqrt(2.0 / fan_in), rel=0.03)
  # Plain (untruncated) normal, like torch.nn.init.kaiming_normal_.
  assert np.abs(kernel).max() > 2.5 * np.sqrt(2.0 / fan_in)
  bias = np.asarray(params['head']['bias'])
  assert np.all(np.abs(bias) <= 1 / np.sqrt(64))
