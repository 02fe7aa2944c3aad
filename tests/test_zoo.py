"""Network zoo: exact sizes, MACs, forward and training steps, validation."""

import functools
import glob
import importlib
import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from conftest import ROOT
from configs import default
from jax_resnet.models import blocks
from jax_resnet.models import layers
from jax_resnet.models import registry
from jax_resnet.models import pyramidnet
from jax_resnet.tools import summary
from jax_resnet import train
from jax_resnet.tools import zoo

# Parameters of every config file's network with 10 classes.
PARAMS = {
    'resnet20_cifar10': 269_722,
    'resnet56_cifar10': 853_018,
    'resnet56_cifar100': 853_018,
    'resnet110_cifar100': 1_727_962,
    'resnet1202_cifar10': 19_421_274,
    'plain20_cifar10': 269_722,
    'plain56_cifar10': 853_018,
    'resnet18_cifar10': 11_173_962,
    'resnet34_cifar10': 21_282_122,
    'resnet50_cifar10': 23_520_842,
    'resnet101_cifar10': 42_512_970,
    'resnet152_cifar10': 58_156_618,
    'preact_resnet18_cifar10': 11_172_170,
    'wrn16_8_cifar10': 10_961_370,
    'wrn28_10_cifar10': 36_479_194,
    'wrn40_4_cifar10': 8_949_210,
    'pyramidnet110_a48_cifar10': 1_772_706,
    'pyramidnet110_a270_cifar10': 28_485_477,
    'pyramidnet200_a240_cifar10': 26_752_702,
    'pyramidnet272_a200_cifar10': 26_210_842,
    'densenet_bc100_k12_cifar10': 769_162,
    'densenet_bc190_k40_cifar10': 25_624_430,
    'densenet_bc250_k24_cifar10': 15_324_406,
    'resnext29_8x64d_cifar10': 34_426_698,
    'resnext29_16x64d_cifar10': 68_155_210,
}

# Parameters of every registered block in the CIFAR ResNet-20 layout.
BLOCK_PARAMS = {
    'basic': 269_722,
    'bottleneck': 313_114,
    'custom': 269_722,
    'gated': 269_731,
    'plain': 269_722,
    'preact': 269_722,
    'res2net': 312_957,
    'resnext': 2_164_698,
    'se': 272_095,
    'se_bottleneck': 346_798,
    'split_attention': 347_578,
    'stochastic_depth': 269_722,
}

# The smallest member of each family, for forward passes and training steps.
SMALL = {
    'cifar_resnet': dict(depth=8),
    'plain': dict(depth=8, block='plain'),
    'resnet': dict(name='resnet', depth=18),
    'preact_resnet': dict(name='resnet', depth=18, block='preact'),
    'resnext': dict(name='resnext', depth=11, block='resnext', cardinality=2,
                    base_width=4),
    'wide_resnet': dict(name='wide_resnet', depth=10, widen_factor=1,
                        dropout_rate=0.3),
    'pyramidnet': dict(name='pyramidnet', depth=8, pyramid_alpha=12),
    'pyramidnet_bottleneck': dict(name='pyramidnet', depth=11,
                                  block='bottleneck', pyramid_alpha=12),
    'densenet': dict(name='densenet', depth=10, block='bottleneck',
                     growth_rate=4),
}


def model_config(**overrides) -> ml_collections.ConfigDict:
  config = default.get_config().model
  config.update(overrides)
  return config


@functools.lru_cache(maxsize=None)
def abstract_params(config_name: str):
  """Parameter shapes of a config file's network, 10 classes; no compute."""
  model = registry.create_model(zoo.load_config(config_name).model, 10)
  return summary.abstract_variables(model)['params']


def config_files() -> list[str]:
  paths = glob.glob(os.path.join(ROOT, 'configs', '*.py'))
  names = {os.path.splitext(os.path.basename(p))[0] for p in paths}
  return sorted(names - {'__init__', 'default'})


class TestTablesAreComplete:
  """Every config, network and block has an entry; the docs show them."""

  def test_every_config_file_has_a_parameter_entry(self):
    assert config_files() == sorted(PARAMS)

  def test_every_registered_network_has_an_entry(self):
    names = {zoo.load_config(c).model.name for c in PARAMS}
    assert names == set(registry.NETWORKS)

  def test_every_registered_block_has_an_entry(self):
    assert sorted(BLOCK_PARAMS) == sorted(blocks.BLOCKS)

  def test_every_config_is_in_the_zoo(self):
    assert sorted(e.config for e in zoo.ZOO) == sorted(PARAMS)

  def test_docs_zoo_shows_every_count(self):
    with open(os.path.join(ROOT, 'docs', 'zoo.md')) as f:
      page = f.read()
    rows = page.splitlines()
    for config_name, count in PARAMS.items():
      row = [r for r in rows if f'| {config_name}.py |' in r]
      assert len(row) == 1 and f'| {count:,} |' in row[0], config_name
    for name, count in BLOCK_PARAMS.items():
      assert any(r.startswith(f'| {name} | {count:,} |') for r in rows), name

  @pytest.mark.parametrize('config_name', config_files())
  def test_config_docstring_is_its_command(self, config_name):
    module = importlib.import_module(f'configs.{config_name}')
    assert f'python main.py --config configs/{config_name}.py' in (
        module.__doc__)


@pytest.mark.parametrize('config_name', sorted(PARAMS))
def test_parameter_count(config_name):
  assert summary.count_params(abstract_params(config_name)) == (
      PARAMS[config_name])


@pytest.mark.parametrize('block', sorted(BLOCK_PARAMS))
def test_block_parameter_count(block):
  model = registry.create_model(model_config(block=block), 10)
  params = summary.abstract_variables(model)['params']
  assert summary.count_params(params) == BLOCK_PARAMS[block]


@pytest.mark.parametrize('entry', zoo.ZOO, ids=lambda e: e.config)
def test_paper_sizes_match_or_are_explained(entry):
  if entry.paper_params is None:
    return
  ours = zoo.rounded_like(PARAMS[entry.config], entry.paper_params)
  assert ours == entry.paper_params or entry.config in zoo.NOTES


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


class TestBlockHyperParameters:
  """Config fields reach the blocks and change what they build."""

  def params(self, **overrides):
    model = registry.create_model(model_config(**overrides), 10)
    return summary.abstract_variables(model)['params']

  def test_resnext_cardinality_and_width(self):
    params = self.params(block='resnext', cardinality=4, base_width=8)
    # planes 16 * 8 / 64 = 2 channels per group, 4 groups.
    assert params['stage1_block1']['conv2']['kernel'].shape == (3, 3, 2, 8)

  def test_res2net_scale(self):
    block = self.params(block='res2net', scale=6)['stage1_block1']
    assert sorted(k for k in block if k.startswith('conv2_')) == [
        f'conv2_{i}' for i in range(1, 6)]

  def test_se_reduction(self):
    block = self.params(block='se', se_reduction=4)['stage3_block1']
    assert block['se']['reduce']['kernel'].shape == (1, 1, 64, 16)

  def test_split_attention_radix(self):
    block = self.params(block='split_attention', radix=4)['stage1_block1']
    # 16 channels per split, 4 splits, computed by one grouped conv.
    assert block['split_attention']['conv']['kernel'].shape == (
        3, 3, 4, 64)
    assert block['split_attention']['fc2']['kernel'].shape == (
        1, 1, 32, 64)

  def test_block_defaults_apply_when_unset(self):
    block = self.params(block='resnext')['stage1_block1']
    assert block['conv2']['kernel'].shape == (3, 3, 16, 128)  # 8x64d.


class TestMultiplyAccumulates:
  """MACs: convolutions and dense layers, scanned blocks once per step."""

  @pytest.mark.parametrize('depth,expected', [
      (20, 40_551_040), (56, 125_485_696), (110, 252_887_680)])
  def test_cifar_resnets(self, depth, expected):
    model = registry.create_model(model_config(depth=depth), 10)
    assert summary.count_macs(model, summary.abstract_variables(model)) == (
        expected)

  def test_scanned_equals_unrolled(self):
    counts = []
    for scan in (True, False):
      model = registry.create_model(model_config(scan_blocks=scan), 10)
      counts.append(summary.count_macs(model,
                                       summary.abstract_variables(model)))
    assert counts[0] == counts[1] == 40_551_040

  def test_grouped_conv_costs_its_groups(self):
    full = registry.create_model(model_config(block='resnext', cardinality=1,
                                            base_width=64), 10)
    grouped = registry.create_model(model_config(block='resnext', cardinality=4,
                                               base_width=16), 10)
    by_module = [summary.macs_by_module(m, summary.abstract_variables(m))
                 for m in (full, grouped)]
    # Same 16-channel 3x3 stage in stage1_block1; 4 groups cost a quarter:
    # 32 * 32 * 16 * 9 * (16 - 16 / 4) MACs fewer.
    saved = by_module[0]['stage1_block1'] - by_module[1]['stage1_block1']
    assert saved == 32 * 32 * 16 * 9 * 12


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


def test_run_signature_names_the_network():
  for config_name in ('wrn16_8_cifar10', 'densenet_bc100_k12_cifar10',
                      'pyramidnet110_a48_cifar10', 'resnet20_cifar10'):
    config = zoo.load_config(config_name)
    signature = train.run_signature(config)
    assert signature['name'] == config.model.name
    assert signature['shortcut'] and signature['final_survival_probability']


def test_summary_of_a_network_without_scan():
  config = zoo.load_config('densenet_bc100_k12_cifar10')
  text = summary.summarize(config)
  assert 'DenseNet-BC-100 (k=12) (densenet): 769,162 parameters' in text
  assert '287,929,692 multiply-accumulates per image' in text
  assert '8x8x342' in text  # The last dense block's output.


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
    (dict(name='wide_resnet', depth=16, cardinality=8),
     'model.cardinality does not apply to network wide_resnet'),
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
    (dict(name='densenet', depth=100, block='bottleneck', radix=2),
     'model.radix does not apply to network densenet'),
    (dict(widen_factor=2), "model.widen_factor does not apply to network "
     "'cifar_resnet'; networks that take it: wide_resnet."),
    (dict(dropout_rate=0.1), 'networks that take it: densenet, wide_resnet.'),
    (dict(cardinality=4), "model.cardinality does not apply to block 'basic'; "
     'blocks that take it: resnext, split_attention.'),
    (dict(block='resnext', cardinality=0), 'at least 1'),
    (dict(block='plain', final_survival_probability=0.5), 'has no shortcut'),
    (dict(shortcut='C'), 'valid: auto, A, B, conv.'),
    (dict(dtype='float16'), 'valid: float32, bfloat16'),
])
def test_invalid_settings_say_what_is_valid(overrides, message):
  with pytest.raises(ValueError) as error:
    registry.create_model(model_config(**overrides), 10)
  assert message in str(error.value)


@pytest.mark.parametrize('overrides,message', [
    (dict(block='res2net', base_width=2), 'leaves no channel per group'),
    (dict(block='split_attention', radix=3), 'which do not divide them'),
])
def test_widths_that_do_not_fit_are_explained(overrides, message):
  """Caught when the block sees its width, at initialisation."""
  model = registry.create_model(model_config(**overrides), 10)
  with pytest.raises(ValueError, match=message):
    summary.abstract_variables(model)
