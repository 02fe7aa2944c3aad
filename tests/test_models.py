"""CIFAR ResNet backbone: parameter counts, depth rule, survival schedule."""

import functools

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from configs import default
from jax_resnet import blocks
from jax_resnet import models
from jax_resnet import summary


def model_config(**overrides) -> ml_collections.ConfigDict:
  config = default.get_config().model
  config.update(overrides)
  return config


def param_count(model_cfg, num_classes=10) -> int:
  model = models.create_model(model_cfg, num_classes)
  variables = jax.eval_shape(functools.partial(model.init, train=False),
                             jax.random.PRNGKey(0), jnp.zeros((1, 32, 32, 3)))
  return summary.count_params(variables['params'])


# He et al. (2015) option-A CIFAR ResNets, 10 classes. Each n adds 97,216.
@pytest.mark.parametrize('depth,expected', [
    (20, 269_722), (32, 464_154), (44, 658_586), (56, 853_018),
    (110, 1_727_962), (1202, 19_421_274)])
def test_option_a_parameter_counts(depth, expected):
  assert param_count(model_config(depth=depth)) == expected


def test_cifar100_head():
  assert param_count(model_config(depth=56), 100) == 853_018 + 90 * 64 + 90


def test_option_b_adds_projections():
  # Two 1x1 conv + BN projections: 16->32 and 32->64.
  extra = (16 * 32 + 2 * 32) + (32 * 64 + 2 * 64)
  assert param_count(model_config(shortcut='B')) == 269_722 + extra


def test_bottleneck_default_shortcut_is_b():
  model = models.create_model(model_config(block='bottleneck', depth=20), 10)
  assert model.shortcut_type == 'B'


@pytest.mark.parametrize('depth', [7, 9, 21, 2, 0])
def test_depth_must_be_6n_plus_2(depth):
  with pytest.raises(ValueError, match='6n\\+2'):
    models.create_model(model_config(depth=depth), 10)


def test_survival_probability_linear_decay():
  probs = models.survival_probabilities(54, 0.5)
  assert probs[0] == pytest.approx(1 - 0.5 / 54)
  assert probs[-1] == pytest.approx(0.5)
  assert np.all(np.diff(probs) < 0)
  assert models.survival_probabilities(3, 1.0) == [1.0, 1.0, 1.0]


def test_backbone_hands_survival_probabilities_to_blocks():
  model = models.create_model(model_config(block='stochastic_depth'), 10)
  assert model.final_survival_probability == 0.5
  plain = models.create_model(model_config(block='basic'), 10)
  assert plain.final_survival_probability == 1.0
  explicit = models.create_model(
      model_config(block='preact', final_survival_probability=0.8), 10)
  assert explicit.final_survival_probability == 0.8


def test_preact_network_has_final_bn_and_no_stem_bn():
  model = models.create_model(model_config(block='preact'), 10)
  params = jax.eval_shape(functools.partial(model.init, train=False),
                          jax.random.PRNGKey(0),
                          jnp.zeros((1, 32, 32, 3)))['params']
  assert 'final_bn' in params and 'stem_bn' not in params
  basic = models.create_model(model_config(block='basic'), 10)
  params = jax.eval_shape(functools.partial(basic.init, train=False),
                          jax.random.PRNGKey(0),
                          jnp.zeros((1, 32, 32, 3)))['params']
  assert 'stem_bn' in params and 'final_bn' not in params


def test_parameter_paths_are_stable():
  model = models.create_model(model_config(depth=8), 10)
  params = jax.eval_shape(functools.partial(model.init, train=False),
                          jax.random.PRNGKey(0),
                          jnp.zeros((1, 32, 32, 3)))['params']
  assert sorted(params) == ['head', 'stage1_block1', 'stage2_block1',
                            'stage3_block1', 'stem_bn', 'stem_conv']
  assert sorted(params['stage2_block1']) == ['bn1', 'bn2', 'conv1', 'conv2']


def test_init_matches_pytorch_kaiming_normal_statistics():
  model = models.create_model(model_config(depth=20), 10)
  params = model.init(jax.random.PRNGKey(0), jnp.zeros((1, 32, 32, 3)),
                      train=False)['params']
  kernel = np.asarray(params['stage3_block2']['conv1']['kernel'])
  fan_in = 3 * 3 * 64
  assert kernel.std() == pytest.approx(np.sqrt(2.0 / fan_in), rel=0.03)
  # Plain (untruncated) normal, like torch.nn.init.kaiming_normal_.
  assert np.abs(kernel).max() > 2.5 * np.sqrt(2.0 / fan_in)
  bias = np.asarray(params['head']['bias'])
  assert np.all(np.abs(bias) <= 1 / np.sqrt(64))


def test_every_registered_block_builds_a_network():
  for name in blocks.BLOCKS:
    assert param_count(model_config(block=name, depth=8)) > 0
