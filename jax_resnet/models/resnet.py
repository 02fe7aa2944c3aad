"""ResNet-18/34/50/101/152: the ImageNet stage layout on a CIFAR stem.

``model.stem='imagenet'`` puts back the ImageNet stem (7x7 stride-2
convolution, BN-ReLU, 3x3 stride-2 max pool), which shrinks a 32x32 image to
8x8 before the first stage: the mistake the CIFAR tutorials warn about, to be
seen side by side with the CIFAR stem. ``model.stage_blocks`` and
``model.stage_planes`` give another stage layout.

He et al. (2015), Table 1, as CIFAR code bases (kuangliu/pytorch-cifar) run
it: a 3x3 stem of 64 channels with no max pool, four stages of 64/128/256/512
planes (the last three striding by 2) and projection shortcuts (option B) when
the shape changes. Any registered block fits: 'basic' makes ResNet-18/34,
'bottleneck' ResNet-50/101/152, 'preact' PreAct-ResNet-18/34 (whose
projections are a bare 1x1 convolution, on the pre-activated input).
"""

from typing import Optional, Sequence

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


def create(settings: Settings, num_classes: int, *, stem: str = 'cifar',
           stage_blocks: Optional[Sequence[int]] = None,
           stage_planes: Optional[Sequence[int]] = None
           ) -> backbone.CifarResNet:
  """ResNet-``depth`` with ``settings.block`` on a CIFAR (or ImageNet) stem;
  ``stage_blocks`` fix the depth (2 or 3 convolutions per block, + 2)."""
  block_cls = blocks.get_block(settings.block)
  depth = settings.depth
  if stage_blocks is None and depth not in STAGE_SIZES:
    raise errors.ConfigError(f'Network resnet has depths '
                             f'{", ".join(map(str, STAGE_SIZES))}; got '
                             f'{depth}.')
  if stage_blocks is None:
    expansion = 1 if depth in BASIC_DEPTHS else 4
  else:
    expansion = block_cls.expansion
  if block_cls.expansion != expansion:
    fitting = sorted(name for name, cls in blocks.BLOCKS.items()
                     if cls.expansion == expansion)
    raise errors.ConfigError(
        f'ResNet-{depth} is built from blocks of expansion {expansion} '
        f'({", ".join(fitting)}); block {settings.block!r} has expansion '
        f'{block_cls.expansion}.')
  sizes, planes = backbone.stage_layout(
      settings, stage_blocks, stage_planes, STAGE_SIZES.get(depth, ()),
      STAGE_PLANES, 2 if expansion == 1 else 3)
  return backbone.create_residual_network(
      settings, num_classes, block_cls=block_cls,
      stage_sizes=sizes, stage_planes=planes, stem=stem,
      default_shortcut='conv' if block_cls.preactivation else 'B',
      weight_init=layers.TORCH_DEFAULT_INIT)


def describe(settings: Settings, *, stem: str,
             stage_blocks: Optional[Sequence[int]],
             stage_planes: Optional[Sequence[int]]) -> str:
  """E.g. 'ResNet-50 (bottleneck blocks)', 'ResNet-18 (basic blocks,
  ImageNet stem)'."""
  extras = [f'{settings.block} blocks']
  if stem != 'cifar':
    extras.append('ImageNet stem')
  if stage_blocks is not None or stage_planes is not None:
    sizes = stage_blocks or STAGE_SIZES[settings.depth]
    planes = stage_planes or STAGE_PLANES
    extras.append('stages ' + ', '.join(f'{b}x{p}'
                                        for b, p in zip(sizes, planes)))
  return f'ResNet-{settings.depth} ({", ".join(extras)})'
