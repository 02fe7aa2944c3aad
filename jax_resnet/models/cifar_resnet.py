"""He et al.'s CIFAR ResNet (2015): 6n+2 layers, stages of 16/32/64 planes."""

from typing import Any

from jax_resnet.models import blocks


def cifar_stage_sizes(depth: int) -> tuple[int, int, int]:
  """Blocks per stage for a CIFAR ResNet of depth 6n+2."""
  if depth < 8 or (depth - 2) % 6:
    raise ValueError(f'CIFAR ResNet depth must be 6n+2 with n >= 1 '
                     f'(20, 32, 44, 56, 110, 1202, ...); got {depth}.')
  n = (depth - 2) // 6
  return (n, n, n)


def layout(model_config) -> dict[str, Any]:
  """He et al.'s CIFAR ResNet: 6n+2 layers, stages of 16/32/64 planes."""
  block_cls = blocks.get_block(model_config.block)
  return dict(block_cls=block_cls,
              stage_sizes=cifar_stage_sizes(model_config.depth),
              stage_planes=(16, 32, 64),
              block_options=blocks.block_options(block_cls, model_config))


def describe(model_config) -> str:
  """E.g. 'ResNet-56 (basic blocks)'."""
  return f'ResNet-{model_config.depth} ({model_config.block} blocks)'
