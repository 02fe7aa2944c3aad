"""Resolving config.model into one network: the block's and the network's
hyper-parameters, what each setting refuses, and the run signature."""

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp
import pytest

from conftest import model_config, tiny_config
from jax_resnet import checkpoints
from jax_resnet import errors
from jax_resnet import train
from jax_resnet import validation
from jax_resnet.models import blocks
from jax_resnet.models import registry
from jax_resnet.tools import summary
from jax_resnet.tools import zoo


class TestBlockHyperParameters:
  """model.block_kwargs reaches the blocks and changes what they build."""

  def params(self, **overrides):
    model = registry.create_model(model_config(**overrides), 10)
    return summary.abstract_variables(model)['params']

  def test_resnext_cardinality_and_width(self):
    params = self.params(block='resnext',
                         block_kwargs=dict(cardinality=4, base_width=8))
    # planes 16 * 8 / 64 = 2 channels per group, 4 groups.
    assert params['stage1_block1']['conv2']['kernel'].shape == (3, 3, 2, 8)

  def test_res2net_scale(self):
    block = self.params(block='res2net',
                        block_kwargs=dict(scale=6))['stage1_block1']
    assert sorted(k for k in block if k.startswith('conv2_')) == [
        f'conv2_{i}' for i in range(1, 6)]

  def test_se_reduction(self):
    block = self.params(block='se',
                        block_kwargs=dict(se_reduction=4))['stage3_block1']
    assert block['se']['reduce']['kernel'].shape == (1, 1, 64, 16)

  def test_split_attention_radix(self):
    block = self.params(block='split_attention',
                        block_kwargs=dict(radix=4))['stage1_block1']
    # 16 channels per split, 4 splits, computed by one grouped conv.
    assert block['split_attention']['conv']['kernel'].shape == (
        3, 3, 4, 64)
    assert block['split_attention']['fc2']['kernel'].shape == (
        1, 1, 32, 64)

  def test_block_defaults_apply_when_unset(self):
    block = self.params(block='resnext')['stage1_block1']
    assert block['conv2']['kernel'].shape == (3, 3, 16, 128)  # 8x64d.




class OwnBlock(blocks.BasicBlock):
  """A block with hyper-parameters of its own, one of them required."""

  width_multiplier: int = 1
  tag: str = dataclasses.field(kw_only=True)

  @nn.compact
  def __call__(self, x, train):
    y = self.conv(self.planes * self.width_multiplier, (3, 3),
                  strides=self.stride, name='conv1')(x)
    y = self.norm(name='bn1')(y, relu=True)
    y = self.conv(self.out_planes, (3, 3), name='conv2')(y)
    y = self.norm(name='bn2')(y)
    return nn.relu(self.shortcut(x) + self.drop_branch(y, train))


class TestOwnHyperParameters:
  """A block's dataclass fields are its hyper-parameters; nothing restates
  them."""

  def test_fields_beyond_the_contract(self):
    assert blocks.hyperparameters(OwnBlock) == {
        'width_multiplier': 1, 'tag': dataclasses.MISSING}
    assert blocks.hyperparameters(blocks.BasicBlock) == {}
    assert blocks.hyperparameters(blocks.BLOCKS['resnext']) == {
        'cardinality': 8, 'base_width': 64}

  def test_values_reach_the_block(self):
    resolved = blocks.resolve_kwargs(
        OwnBlock, {'width_multiplier': 3, 'tag': 'x'}, 'block own')
    assert resolved == {'width_multiplier': 3, 'tag': 'x'}

  def test_required_field_must_be_given(self):
    with pytest.raises(errors.ConfigError,
                       match='needs model.block_kwargs.tag'):
      blocks.resolve_kwargs(OwnBlock, {}, 'block own')

  def test_unknown_field_lists_the_fields(self):
    with pytest.raises(errors.ConfigError,
                       match='its hyper-parameters are tag, width_multiplier'):
      blocks.resolve_kwargs(OwnBlock, {'width': 2}, 'block own')

  def test_network_fields_come_from_the_builders(self):
    assert registry.network_fields() == (
        'compression', 'dropout_rate', 'growth_rate', 'pyramid_alpha',
        'stage_blocks', 'stage_planes', 'stem', 'widen_factor')
    assert registry.NETWORKS['wide_resnet'].hyperparameters == {
        'widen_factor': 10, 'dropout_rate': 0.0}


@pytest.mark.parametrize('overrides,message', [
    (dict(name='vgg'), "Unknown model.name 'vgg'; valid networks: "
     'cifar_resnet, densenet, pyramidnet, resnet, resnext, wide_resnet.'),
    (dict(name='resnet', depth=20), 'resnet has depths 18, 34, 50, 101, 152'),
    (dict(name='resnet', depth=50), 'ResNet-50 is built from blocks of '
     'expansion 4'),
    (dict(name='resnext', depth=29), 'bottleneck blocks of expansion 4'),
    (dict(name='resnext', depth=30, block='resnext'), 'depth 9n+2'),
    (dict(name='wide_resnet', depth=20), 'depth 6n+4'),
    (dict(name='wide_resnet', depth=16, block='se'),
     "leave model.block at 'basic'"),
    (dict(name='wide_resnet', depth=16, widen_factor=0), 'at least 1'),
    (dict(name='wide_resnet', depth=16, dropout_rate=1.0), 'in [0, 1)'),
    (dict(name='wide_resnet', depth=16, block_kwargs=dict(cardinality=8)),
     'Network wide_resnet takes its block settings as model.widen_factor'),
    (dict(name='pyramidnet', depth=110, block='preact'),
     'takes model.block basic or bottleneck'),
    (dict(name='pyramidnet', depth=112, block='bottleneck'), 'depth 9n+2'),
    (dict(name='pyramidnet', depth=110, shortcut='B'),
     "leave model.shortcut at 'auto'"),
    (dict(name='pyramidnet', depth=110, pyramid_alpha=-1.0), 'at least 0'),
    (dict(name='densenet', depth=101, block='bottleneck'), 'depth 6n+4'),
    (dict(name='densenet', depth=100, block='bottleneck', compression=0.0),
     'in (0, 1]'),
    (dict(name='densenet', depth=100, block='bottleneck', growth_rate=0),
     'at least 1'),
    (dict(name='densenet', depth=100, block='bottleneck',
          final_survival_probability=0.5), 'no residual branches'),
    (dict(name='densenet', depth=100, block='bottleneck',
          block_kwargs=dict(radix=2)), 'leave model.block_kwargs empty'),
    (dict(name='pyramidnet', depth=110, block_kwargs=dict(radix=2)),
     'leave model.block_kwargs empty'),
    (dict(name='densenet', depth=100, block='bottleneck', scan_blocks=True),
     'no identical blocks to scan over'),
    (dict(widen_factor=2), "model.widen_factor does not apply to network "
     "'cifar_resnet'; networks that take it: wide_resnet."),
    (dict(dropout_rate=0.1), 'networks that take it: densenet, wide_resnet.'),
    (dict(block_kwargs=dict(cardinality=4)),
     "model.block_kwargs.cardinality is not a field of block 'basic' "
     '(BasicBlock); it has no hyper-parameters.'),
    (dict(block='resnext', block_kwargs=dict(cardinalty=4)),
     'its hyper-parameters are base_width, cardinality.'),
    (dict(block='resnext', block_kwargs=dict(cardinality=0)),
     'block_kwargs.cardinality must be at least 1; got 0'),
    (dict(block='se', block_kwargs=dict(in_planes=4)),
     'its hyper-parameters are se_reduction'),
    (dict(block='plain', final_survival_probability=0.5), 'has no shortcut'),
    (dict(shortcut='C'), 'valid: auto, A, B, conv, D.'),
    (dict(stage_blocks=(2, 2), stage_planes=(64, 128)),
     'model.stage_blocks [2, 2] of 2-convolution blocks make depth 10; set '
     'model.depth=10 (got 20)'),
    (dict(stage_blocks=(2, 2), depth=10),
     '2 stages of blocks ([2, 2]) but 3 of planes ([16, 32, 64])'),
    (dict(stage_blocks=(2, 0), stage_planes=(8, 8), depth=6),
     'model.stage_blocks must be positive block counts'),
    (dict(stage_planes=(16, 32, 0)), 'model.stage_planes must be positive'),
    (dict(name='resnet', depth=18, stem='vgg'),
     "Unknown model.stem 'vgg'; valid: cifar, imagenet."),
    (dict(name='resnet', depth=50, block='bottleneck',
          stage_blocks=(1, 1, 1, 1)),
     'of 3-convolution blocks make depth 14'),
    (dict(stem='imagenet'), "model.stem does not apply to network "
     "'cifar_resnet'; networks that take it: resnet."),
    (dict(dtype='float16'), 'valid: float32, bfloat16'),
])
def test_invalid_settings_say_what_is_valid(overrides, message):
  with pytest.raises(errors.ConfigError) as error:
    registry.create_model(model_config(**overrides), 10)
  assert message in str(error.value)


@pytest.mark.parametrize('overrides,message', [
    (dict(block='res2net', block_kwargs=dict(base_width=2)),
     'leaves no channel per group'),
    (dict(block='split_attention', block_kwargs=dict(radix=3)),
     'which do not divide them'),
])
def test_widths_that_do_not_fit_are_explained(overrides, message):
  """Caught when the block sees its width, at initialisation."""
  model = registry.create_model(model_config(**overrides), 10)
  with pytest.raises(errors.ConfigError, match=message):
    summary.abstract_variables(model)


class TestResolution:
  """One resolution feeds the module, the description and the signature."""

  @pytest.mark.parametrize('config_name', [
      'wrn16_8_cifar10', 'densenet_bc100_k12_cifar10',
      'pyramidnet110_a48_cifar10', 'resnet20_cifar10',
      'resnext29_8x64d_cifar10'])
  def test_signature_names_the_network(self, config_name):
    config = zoo.load_config(config_name)
    model = train.resolve_model(config)
    signature = train.run_signature(config, model)
    assert signature['name'] == config.model.name
    assert signature['version'] == registry.SIGNATURE_VERSION
    assert signature['block_kwargs'] == model.block_kwargs
    # Hyper-parameters added later are left out at their defaults.
    assert signature['network_kwargs'] == {
        k: v for k, v in model.hyperparameters.items()
        if k not in registry.LATER_HYPERPARAMETERS}

  def test_description_and_defaults(self):
    model = train.resolve_model(zoo.load_config('wrn16_8_cifar10'))
    assert model.description == 'WRN-16-8'
    assert model.hyperparameters == {'widen_factor': 8, 'dropout_rate': 0.0}
    model = train.resolve_model(zoo.load_config('resnext29_16x64d_cifar10'))
    assert model.description == 'ResNeXt-29 (16x64d)'

  def test_explicit_default_is_the_same_network(self):
    implicit = registry.resolve(model_config(block='resnext'), 10)
    explicit = registry.resolve(
        model_config(block='resnext', block_kwargs=dict(cardinality=8)), 10)
    assert implicit.signature('cifar10') == explicit.signature('cifar10')

  def test_split_attention_signature_before_avd(self):
    """A split_attention run trained before avd (its signature without the
    avd fields) resumes with avd=False, and only with it."""
    def signature(**kwargs):
      return registry.resolve(model_config(
          block='split_attention', block_kwargs=kwargs), 10).signature(
              'cifar10')
    before = dict(signature(avd=False))
    assert before['block_kwargs'] == {'base_width': 64, 'cardinality': 1,
                                      'radix': 2}
    assert signature()['block_kwargs'] == {**before['block_kwargs'],
                                           'avd': True}
    assert signature(avd_first=True)['block_kwargs'] == {
        **before['block_kwargs'], 'avd': True, 'avd_first': True}
    fit = checkpoints.Fit(signature=signature())
    with pytest.raises(checkpoints.CheckpointMismatchError,
                       match="block_kwargs: checkpoint .*'radix': 2}, command "
                       ".*'avd': True"):
      fit.check({'signature': before}, 'runs/old')
    checkpoints.Fit(signature=signature(avd=False)).check(
        {'signature': before}, 'runs/old')

  def test_legacy_signature_of_a_zoo_config(self):
    """The layout checkpoints had before signatures had a version."""
    config = zoo.load_config('resnext29_8x64d_cifar10')
    fit = train.checkpoint_fit(config, train.resolve_model(config))
    assert fit.legacy_signature == {
        'dataset': 'cifar10', 'name': 'resnext', 'block': 'resnext',
        'depth': 29, 'scan_blocks': False, 'cardinality': 8,
        'base_width': 64, 'scale': None, 'se_reduction': None,
        'radix': None, 'widen_factor': None, 'dropout_rate': None,
        'pyramid_alpha': None, 'growth_rate': None, 'compression': None,
        'shortcut': 'B', 'final_survival_probability': 1.0}

  def test_no_legacy_signature_for_new_block_fields(self):
    config = zoo.load_config('resnet20_cifar10')
    config.model.block = 'resnext'
    config.model.block_kwargs.cardinality = 2
    signature = train.run_signature(config, train.resolve_model(config))
    assert checkpoints.legacy_signature(signature, {'ratio': 2}, {}) is None


def test_a_config_file_field_that_does_not_exist_is_refused():
  """A field set in a config file, not on the command line, is checked too."""
  config = tiny_config()
  config.model.cardinality = 8  # The flat field of earlier versions.
  with pytest.raises(errors.ConfigError,
                     match="is now 'model.block_kwargs.cardinality'"):
    validation.validate_config(config)
  config = tiny_config()
  config.model.dept = 56
  with pytest.raises(errors.ConfigError, match='Did you mean model.depth'):
    validation.validate_config(config)
  config = tiny_config()
  config.model.block_kwargs.anything = 1  # Checked by the block instead.
  validation.validate_config(config)


class TestStagesAndStem:
  """model.stage_blocks / stage_planes and model.stem."""

  def test_stage_layout(self):
    model = registry.resolve(model_config(
        stage_blocks=(2, 2), stage_planes=(64, 128), depth=10, shortcut='B'),
                             10)
    params = summary.abstract_variables(model.module)['params']
    assert sorted(k for k in params if k.startswith('stage')) == [
        'stage1_block1', 'stage1_block2', 'stage2_block1', 'stage2_block2']
    assert params['stage2_block1']['conv1']['kernel'].shape == (3, 3, 64, 128)
    assert 'shortcut_conv' in str(params['stage2_block1'].keys())
    assert model.description == ('ResNet-10 (basic blocks, stages 2x64, '
                                 '2x128)')
    # A layout is in the run signature; the default layout is not, so that
    # workdirs written before these fields existed still fit.
    assert model.signature('cifar10')['network_kwargs'] == {
        'stage_blocks': [2, 2], 'stage_planes': [64, 128]}
    default = registry.resolve(model_config(), 10)
    assert default.signature('cifar10')['network_kwargs'] == {}

  def test_imagenet_stem_is_torchvisions(self):
    model = registry.resolve(model_config(name='resnet', depth=18,
                                          stem='imagenet'), 10)
    params = summary.abstract_variables(model.module)['params']
    assert params['stem_conv']['kernel'].shape == (7, 7, 3, 64)
    # torchvision's resnet18: 11,689,512 parameters with a 1000-class head,
    # so 11,689,512 - 512 * 990 - 990 with ten classes.
    assert summary.count_params(params) == 11_689_512 - 513 * 990
    assert model.description == 'ResNet-18 (basic blocks, ImageNet stem)'
    assert model.signature('cifar10')['network_kwargs'] == {
        'stem': 'imagenet'}
    # The 7x7 stride-2 convolution and the stride-2 pool leave 8x8 maps.
    variables = summary.abstract_variables(model.module)
    _, state = jax.eval_shape(
        lambda v, x: model.module.apply(v, x, capture_intermediates=True,
                                        mutable=['intermediates']),
        variables, jax.ShapeDtypeStruct((1, 32, 32, 3), jnp.float32))
    (stage1,) = state['intermediates']['stage1_block1']['__call__']
    assert stage1.shape == (1, 8, 8, 64)


def test_bn_momentum_is_checked():
  with pytest.raises(errors.ConfigError, match=r'model.bn_momentum must be in '
                     r'\(0, 1\]'):
    validation.validate_config(tiny_config(**{'model.bn_momentum': 0.0}))
