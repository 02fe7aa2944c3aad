"""He et al.'s CIFAR ResNet (2015): 6n+2 layers, stages of 16/32/64 planes."""

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


def create(settings: Settings, num_classes: int) -> backbone.CifarResNet:
  """He et al.'s CIFAR ResNet of ``settings.block`` and ``settings.depth``."""
  return backbone.create_residual_network(
      settings, num_classes, block_cls=blocks.get_block(settings.block),
      stage_sizes=cifar_stage_sizes(settings.depth),
      stage_planes=(16, 32, 64))


def describe(settings: Settings) -> str:
  """E.g. 'ResNet-56 (basic blocks)'."""
  return f'ResNet-{settings.depth} ({settings.block} blocks)'
