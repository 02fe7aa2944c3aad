"""The network zoo: every published network's size and cost next to the paper's.

  python -m jax_resnet.tools.zoo > docs/zoo.md

Each row builds a config file's network for 10 classes and counts its
parameters (``jax.eval_shape``) and multiply-accumulates per image (from the
jaxpr, see summary.py); nothing is initialised or run.
"""

import dataclasses
import functools
import importlib
from typing import Optional

import ml_collections

from jax_resnet.models import blocks
from jax_resnet.models import registry
from jax_resnet import runtime
from jax_resnet.tools import summary

NUM_CLASSES = 10


@dataclasses.dataclass(frozen=True)
class Entry:
  """A published network, the config file that builds it and its paper size.

  Attributes:
    title: the network's published name.
    config: module name under configs/.
    paper_params: the parameter count the source prints, as printed (e.g.
      '1.7M'); None when it prints none.
    source: where the network and that count come from.
  """

  title: str
  config: str
  paper_params: Optional[str]
  source: str


HE_2015 = 'He et al. 2015, Table 6'
KUANGLIU = 'kuangliu/pytorch-cifar'
WRN = 'Zagoruyko & Komodakis 2016'
PYRAMIDNET = 'Han et al. 2017'
DENSENET = 'Huang et al. 2017, Table 2'
RESNEXT = 'Xie et al. 2017, Table 7'

ZOO = (
    Entry('ResNet-20', 'resnet20_cifar10', '0.27M', HE_2015),
    Entry('ResNet-56', 'resnet56_cifar10', '0.85M', HE_2015),
    Entry('ResNet-56', 'resnet56_cifar100', '0.85M', HE_2015),
    Entry('ResNet-110', 'resnet110_cifar100', '1.7M', HE_2015),
    Entry('ResNet-1202', 'resnet1202_cifar10', '19.4M', HE_2015),
    Entry('Plain-20', 'plain20_cifar10', None, 'He et al. 2015, Fig. 6'),
    Entry('Plain-56', 'plain56_cifar10', None, 'He et al. 2015, Fig. 6'),
    Entry('ResNet-18', 'resnet18_cifar10', '11.17M', KUANGLIU),
    Entry('ResNet-34', 'resnet34_cifar10', None, KUANGLIU),
    Entry('ResNet-50', 'resnet50_cifar10', None, KUANGLIU),
    Entry('ResNet-101', 'resnet101_cifar10', None, KUANGLIU),
    Entry('ResNet-152', 'resnet152_cifar10', None, KUANGLIU),
    Entry('PreAct-ResNet-18', 'preact_resnet18_cifar10', '11.17M', KUANGLIU),
    Entry('WRN-16-8', 'wrn16_8_cifar10', '11.0M', WRN),
    Entry('WRN-28-10', 'wrn28_10_cifar10', '36.5M', WRN),
    Entry('WRN-40-4', 'wrn40_4_cifar10', '8.9M', WRN),
    Entry('PyramidNet-110 (α=48)', 'pyramidnet110_a48_cifar10', '1.7M',
          PYRAMIDNET),
    Entry('PyramidNet-110 (α=270)', 'pyramidnet110_a270_cifar10', '28.3M',
          PYRAMIDNET),
    Entry('PyramidNet-200 (α=240, bottleneck)', 'pyramidnet200_a240_cifar10',
          '26.6M', PYRAMIDNET),
    Entry('PyramidNet-272 (α=200, bottleneck)', 'pyramidnet272_a200_cifar10',
          '26.0M', PYRAMIDNET),
    Entry('DenseNet-BC-100 (k=12)', 'densenet_bc100_k12_cifar10', '0.8M',
          DENSENET),
    Entry('DenseNet-BC-250 (k=24)', 'densenet_bc250_k24_cifar10', '15.3M',
          DENSENET),
    Entry('DenseNet-BC-190 (k=40)', 'densenet_bc190_k40_cifar10', '25.6M',
          DENSENET),
    Entry('ResNeXt-29, 8x64d', 'resnext29_8x64d_cifar10', '34.4M', RESNEXT),
    Entry('ResNeXt-29, 16x64d', 'resnext29_16x64d_cifar10', '68.1M', RESNEXT),
    Entry('Tutorial ResNet (stages 2x64, 2x128)', 'tutorial_resnet_cifar10',
          None, 'a Keras CIFAR-10 tutorial'),
)

# Why a count differs from the paper's, by config.
NOTES = {
    'preact_resnet18_cifar10': (
        "1,024 more than kuangliu's PreActResNet18 (11,171,146): ours ends "
        'with the BN-ReLU before pooling that He et al. (2016) prescribe and '
        'that file omits.'),
    'pyramidnet110_a48_cifar10': (
        "Exactly what the authors' code builds (Torch addpyramidnet.lua: "
        'widths round(16 + αi/N)). The paper\'s 1.7M, 26.6M and 26.0M are what '
        'truncated widths give (1.74M, 26.62M, 26.05M); truncation does not '
        'explain 28.3M for α=270, whose widths 16 + 5i are whole numbers.'),
    'pyramidnet110_a270_cifar10': 'See PyramidNet-110 (α=48).',
    'pyramidnet200_a240_cifar10': (
        "As the authors' PyTorch code builds it; see PyramidNet-110 (α=48)."),
    'pyramidnet272_a200_cifar10': (
        "As the authors' PyTorch code builds it; see PyramidNet-110 (α=48)."),
    'resnext29_16x64d_cifar10': (
        'Rounds to 68.2M; the paper\'s 34.4M and 68.1M are both our counts '
        'truncated to 0.1M.'),
}


def load_config(name: str) -> ml_collections.ConfigDict:
  """``configs/<name>.py``'s config."""
  return importlib.import_module(f'configs.{name}').get_config()


def measure(model_config: ml_collections.ConfigDict,
            num_classes: int = NUM_CLASSES) -> tuple[int, int]:
  """(parameters, multiply-accumulates per image) of a configured network."""
  return summary.params_and_macs(
      registry.create_model(model_config, num_classes))


@functools.lru_cache(maxsize=None)
def measure_config(name: str) -> tuple[int, int]:
  """``measure`` of ``configs/<name>.py``'s network (cached)."""
  return measure(load_config(name).model)


@functools.lru_cache(maxsize=None)
def measure_block(name: str) -> tuple[int, int]:
  """``measure`` of a registered block in the ResNet-20 layout (cached)."""
  config = load_config('resnet20_cifar10').model
  config.block = name
  return measure(config)


def _millions(count: int) -> str:
  return f'{count / 1e6:,.2f}M'


def rounded_like(count: int, printed: str) -> str:
  """``count`` in millions, with as many decimals as ``printed`` ('1.7M')."""
  decimals = len(printed.rstrip('M').partition('.')[2])
  return f'{count / 1e6:.{decimals}f}M'


def network_table() -> list[str]:
  """Markdown rows of ZOO: parameters, MACs and the paper's count."""
  lines = [
      '| Network | Config (`configs/`) | `model.name` | Parameters | MACs '
      '| Paper | Ours, rounded alike | Source |',
      '|---|---|---|---:|---:|---:|---:|---|',
  ]
  for entry in ZOO:
    config = load_config(entry.config)
    params, macs = measure_config(entry.config)
    paper = entry.paper_params or '—'
    ours = rounded_like(params, paper) if entry.paper_params else '—'
    note = ' [*]' if entry.config in NOTES else ''
    lines.append(
        f'| {entry.title}{note} | {entry.config}.py | '
        f'{config.model.name} | {params:,} | {_millions(macs)} | {paper} | '
        f'{ours} | {entry.source} |')
  return lines


def block_table() -> list[str]:
  """Markdown rows: every registered block in the CIFAR ResNet-20 layout.

  The ``custom`` template is left out: it is the user's to edit.
  """
  lines = ['| Block | Parameters | MACs |', '|---|---:|---:|']
  for name in sorted(set(blocks.BLOCKS) - {'custom'}):
    params, macs = measure_block(name)
    lines.append(f'| {name} | {params:,} | {_millions(macs)} |')
  return lines


def markdown() -> str:
  """The zoo page: networks, notes on differences, blocks."""
  lines = [
      '# Network zoo',
      '',
      'Every network with a config file, built for 10 classes (CIFAR-100 '
      'adds 90 head outputs). Parameters are exact; MACs are '
      'multiply-accumulates of one 32x32 image\'s forward pass, counting '
      'convolutions (grouped ones at their reduced cost) and dense layers; '
      'BatchNorm, activations, pooling and additions are not counted. '
      '"Paper" is the count the source prints, next to ours rounded the same '
      'way; [*] marks a difference, explained below the table. Regenerate '
      'with `python -m jax_resnet.tools.zoo > docs/zoo.md`.',
      '',
  ]
  lines += network_table()
  lines += ['', '## Differences from the papers', '']
  titles = {e.config: e.title for e in ZOO}
  lines += [f'- **{titles[config]}**: {note}' for config, note in NOTES.items()]
  lines += [
      '',
      '## Blocks',
      '',
      'Each registered block in the CIFAR ResNet layout of depth 20 (three '
      'stages of three blocks, 16/32/64 planes; bottleneck blocks output 4x '
      'those), default block hyper-parameters and shortcut. (`custom`, the '
      'template you edit, is left out.)',
      '',
  ]
  lines += block_table()
  return '\n'.join(lines)


def main() -> None:
  """Prints the zoo page (markdown)."""
  runtime.configure()
  print(markdown())


if __name__ == '__main__':
  main()
