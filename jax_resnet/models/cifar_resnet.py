"""He et al.'s CIFAR ResNet (2015): 6n+2 layers, stages of 16/32/64 planes.

``model.stage_blocks`` and ``model.stage_planes`` give it any other layout of
stages (the first at stride 1, each later one starting at stride 2), e.g. the
two stages of 64 and 128 planes of configs/tutorial_resnet_cifar10.py.
"""

from typing import Optional, Sequence

from jax_resnet import errors
from jax_resnet.models import backbone
from jax_resnet.models import blocks
from jax_resnet.models.settings import Settings


def cifar_stage_sizes(depth: int) -> tuple[int, int, int]:
  """Blocks per stage for a CIFAR ResNet of depth 6n+2."""
  if depth < 8 or (depth - 2) % 6:
    raise errors.ConfigError(
        'CIFAR ResNet depth must be 6n+2 with n >= 1 (20, 32, 44, 56, 110, '
        f'1202, ...); got {depth}.')
  n = (depth - 2) // 6
  return (n, n, n)


STAGE_PLANES = (16, 32, 64)
# cifar_resnet counts two layers per block whatever the block (depth 6n+2).
LAYERS_PER_BLOCK = 2


def create(settings: Settings, num_classes: int, *,
           stage_blocks: Optional[Sequence[int]] = None,
           stage_planes: Optional[Sequence[int]] = None
           ) -> backbone.CifarResNet:
  """He et al.'s CIFAR ResNet of ``settings.block`` and ``settings.depth``,
  or the stage layout given (``stage_blocks`` fix the depth,
  2 * sum + 2)."""
  if stage_blocks is None:
    default_blocks = cifar_stage_sizes(settings.depth)
  else:
    default_blocks = ()
  sizes, planes = backbone.stage_layout(
      settings, stage_blocks, stage_planes, default_blocks,
      STAGE_PLANES, LAYERS_PER_BLOCK)
  return backbone.create_residual_network(
      settings, num_classes, block_cls=blocks.get_block(settings.block),
      stage_sizes=sizes, stage_planes=planes)


def describe(settings: Settings, *, stage_blocks: Optional[Sequence[int]],
             stage_planes: Optional[Sequence[int]]) -> str:
  """E.g. 'ResNet-56 (basic blocks)'; with a stage layout
  'ResNet-10 (basic blocks, stages 2x64, 2x128)'."""
  if stage_blocks is None and stage_planes is None:
    return f'ResNet-{settings.depth} ({settings.block} blocks)'
  sizes = stage_blocks or cifar_stage_sizes(settings.depth)
  planes = stage_planes or STAGE_PLANES
  stages = ', '.join(f'{b}x{p}' for b, p in zip(sizes, planes))
  return f'ResNet-{settings.depth} ({settings.block} blocks, stages {stages})'
