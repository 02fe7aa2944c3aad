"""Flax networks and their PyTorch references, paired for the equivalence
tests: the cases, weight transfer through the importer users run
(jax_resnet.interop.torch_import), and difference measures.

Every comparison prints its measured maximum difference (run with -s):

  python -m pytest -s tests/test_torch_*.py | grep 'torch equivalence'
"""

import dataclasses
from typing import Any, Callable

import jax
import numpy as np
import torch

from conftest import tiny_config
from jax_resnet.interop import torch_import
from jax_resnet.interop import torch_reference
from jax_resnet.models import registry

torch.set_num_threads(1)

BATCH = 8


@dataclasses.dataclass(frozen=True)
class Case:
  """A configured Flax network and its PyTorch reference.

  Attributes:
    model: config.model overrides.
    reference: builds the PyTorch network from config.model and the Flax
      network.
    image_size: input height and width (smaller for the wide networks).
  """
  model: dict[str, Any]
  reference: Callable[[Any, Any], torch.nn.Module]
  image_size: int = 32


def _cifar(block, shortcut='auto', image_size=32, **block_kwargs) -> Case:
  # Depth 14: one scanned block per stage behind the first.
  return Case(
      dict(block=block, depth=14, shortcut=shortcut,
           block_kwargs=block_kwargs),
      lambda model_config, model: torch_reference.cifar_resnet(
          block, model_config.depth, option=model.shortcut_type,
          final_survival_probability=model.final_survival_probability,
          **block_kwargs), image_size)


CASES = {
    'basic': _cifar('basic', 'A'),
    'basic_shortcut_b': _cifar('basic', 'B'),
    # 30x30 images: the last stage's 15x15 input leaves the option-D pool a
    # partial last window (ceil_mode, only its pixels averaged).
    'basic_shortcut_d': _cifar('basic', 'D', image_size=30),
    'preact': _cifar('preact', 'A'),
    'gated': _cifar('gated'),
    'stochastic_depth': _cifar('stochastic_depth'),
    'bottleneck': _cifar('bottleneck'),
    'plain': _cifar('plain'),
    'se': _cifar('se', se_reduction=4),
    'se_bottleneck': _cifar('se_bottleneck', se_reduction=4),
    'resnext_block': _cifar('resnext', cardinality=2, base_width=16),
    'res2net': _cifar('res2net', base_width=26, scale=4),
    'split_attention': _cifar('split_attention', radix=2, cardinality=2,
                              base_width=32),
    'split_attention_avd_first': _cifar('split_attention', radix=2,
                                        base_width=32, avd_first=True),
    # ResNeSt's CIFAR layout: avd and avg_down together.
    'split_attention_avg_down': _cifar('split_attention', 'D', radix=2,
                                       cardinality=2, base_width=32),
    'split_attention_no_avd': _cifar('split_attention', radix=1,
                                     cardinality=2, base_width=32,
                                     avd=False),
    'resnet18': Case(dict(name='resnet', depth=18),
                     lambda *_: torch_reference.resnet18('basic'), 8),
    'preact_resnet18': Case(dict(name='resnet', depth=18, block='preact'),
                            lambda *_: torch_reference.resnet18('preact'),
                            8),
    'resnext29_layout': Case(
        dict(name='resnext', depth=11, block='resnext',
             block_kwargs=dict(cardinality=4, base_width=4)),
        lambda *_: torch_reference.resnext(11, cardinality=4, base_width=4),
        16),
    'wide_resnet': Case(dict(name='wide_resnet', depth=16, widen_factor=2),
                        lambda *_: torch_reference.WideResNet(16, 2), 16),
    'pyramidnet': Case(dict(name='pyramidnet', depth=14, pyramid_alpha=12.0),
                       lambda *_: torch_reference.PyramidNet(14, 12.0)),
    'pyramidnet_bottleneck': Case(
        dict(name='pyramidnet', depth=11, block='bottleneck',
             pyramid_alpha=12.0),
        lambda *_: torch_reference.PyramidNet(11, 12.0, bottleneck=True)),
    'densenet_bc': Case(
        dict(name='densenet', depth=16, block='bottleneck', growth_rate=6),
        lambda *_: torch_reference.DenseNetBC(16, growth_rate=6), 16),
}
# Branches dropped at random in training: compared in eval mode only.
STOCHASTIC = ('stochastic_depth',)


def report(what: str, value: float):
  print(f'\n[torch equivalence] {what}: {value:.3g}')


def max_abs_diff(a, b) -> float:
  return max(float(np.max(np.abs(np.asarray(x, np.float64) - np.asarray(y))))
             for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


def max_rel_diff(a, b) -> float:
  """Largest per-tensor max |a - b| / max |b|."""
  return max(float(np.max(np.abs(np.asarray(x, np.float64) - np.asarray(y)))
                   / max(float(np.max(np.abs(np.asarray(y)))), 1e-12))
             for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


def leaves_named(tree, leaf):
  """(path, value) of every leaf called ``leaf``."""
  for path, value in jax.tree_util.tree_flatten_with_path(tree)[0]:
    if path[-1].key == leaf:
      yield jax.tree_util.keystr(path), value


def randomize(torch_model, seed=0):
  """Non-trivial BatchNorm affine and running statistics, non-zero gates."""
  gen = torch.Generator().manual_seed(seed)
  with torch.no_grad():
    for module in torch_model.modules():
      if isinstance(module, torch.nn.BatchNorm2d):
        c = module.num_features
        module.weight.copy_(0.5 + torch.rand(c, generator=gen))
        module.bias.copy_(0.2 * torch.randn(c, generator=gen))
        module.running_mean.copy_(0.2 * torch.randn(c, generator=gen))
        module.running_var.copy_(0.5 + torch.rand(c, generator=gen))
      if hasattr(module, 'gate'):
        module.gate.copy_(torch.randn((), generator=gen))
  return torch_model


def make_config(case: str, scan_blocks: bool = True, **model_overrides):
  config = tiny_config()
  for key, value in {**CASES[case].model, **model_overrides}.items():
    config.model[key] = value
  # PyramidNet and DenseNet have no identical blocks to scan.
  config.model.scan_blocks = scan_blocks and config.model.name not in (
      'pyramidnet', 'densenet')
  return config


def make_pair(case: str, scan_blocks: bool = True, **model_overrides):
  """(config, Flax model, randomised PyTorch reference, converted variables)."""
  config = make_config(case, scan_blocks, **model_overrides)
  model = registry.create_model(config.model, 10)
  torch.manual_seed(0)
  reference = randomize(CASES[case].reference(config.model, model))
  variables = torch_import.torch_to_flax(reference.state_dict(), model)
  return config, model, reference, variables


def random_images(seed=0, size=32, batch=BATCH):
  return np.random.default_rng(seed).normal(
      size=(batch, size, size, 3)).astype(np.float32)


def to_torch(images: np.ndarray):
  return torch.from_numpy(np.ascontiguousarray(images.transpose(0, 3, 1, 2)))
