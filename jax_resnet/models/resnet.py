"""ResNet-18/34/50/101/152: the ImageNet stage layout on a CIFAR stem.

He et al. (2015), Table 1, as CIFAR code bases (kuangliu/pytorch-cifar) run
it: a 3x3 stem of 64 channels with no max pool, four stages of 64/128/256/512
planes (the last three striding by 2) and projection shortcuts (option B) when
the shape changes. Any registered block fits: 'basic' makes ResNet-18/34,
'bottleneck' ResNet-50/101/152, 'preact' PreAct-ResNet-18/34 (whose
projections are a bare 1x1 convolution, on the pre-activated input).
"""

from jax_resnet import errors
from jax_resnet.models import backbone
from jax_resnet.models import blocks
from jax_resnet.models import layers
from jax_resnet.models.settings import Settings

STAGE_SIZES = {18: (2, 2, 2, 2), 34: (3, 4, 6, 3), 50: (3, 4, 6, 3),
               101: (3, 4, 23, 3), 152: (3, 8, 36, 3)}
# Two-convolution blocks (expansion 1) at these depths; three-convolution
# bottlenecks (expansion 4) at the others.
BASIC_DEPTHS = (18, 34)
STAGE_PLANES = (64, 128, 256, 512)


def create(settings: Settings, num_classes: int) -> backbone.CifarResNet:
  """ResNet-``depth`` with ``settings.block`` on a CIFAR stem."""
  block_cls = blocks.get_block(settings.block)
  depth = settings.depth
  if depth not in STAGE_SIZES:
    raise errors.ConfigError(f'Network resnet has depths '
                             f'{", ".join(map(str, STAGE_SIZES))}; got '
                             f'{depth}.')
  expansion = 1 if depth in BASIC_DEPTHS else 4
  if block_cls.expansion != expansion:
    fitting = sorted(name for name, cls in blocks.BLOCKS.items()
                     if cls.expansion == expansion)
    raise errors.ConfigError(
        f'ResNet-{depth} is built from blocks of expansion {expansion} '
        f'({", ".join(fitting)}); block {settings.block!r} has expansion '
        f'{block_cls.expansion}.')
  return backbone.create_residual_network(
      settings, num_classes, block_cls=block_cls,
      stage_sizes=STAGE_SIZES[depth], stage_planes=STAGE_PLANES,
      default_shortcut='conv' if block_cls.preactivation else 'B',
      weight_init=layers.TORCH_DEFAULT_INIT)


def describe(settings: Settings) -> str:
  """E.g. 'ResNet-50 (bottleneck blocks)'."""
  return f'ResNet-{settings.depth} ({settings.block} blocks)'
