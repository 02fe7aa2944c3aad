"""ResNeXt-29 and its kin: the CIFAR bottleneck layout of Xie et al. (2017).

Depth 9n+2: a 3x3 stem of 64 channels, then three stages of n bottleneck
blocks with 64/128/256 planes (outputs 256/512/1024; the last two stages stride
by 2), projection shortcuts (option B), pool and head. With the 'resnext' block
it is ResNeXt-29 (cardinality x base width, e.g. 8x64d); any other
expansion-4 block (res2net, split_attention, se_bottleneck, bottleneck) drops
into the same layout.
"""

from typing import Any

from jax_resnet.models import blocks

STAGE_PLANES = (64, 128, 256)


def stage_sizes(depth: int) -> tuple[int, int, int]:
  """Blocks per stage for depth 9n+2."""
  if depth < 11 or (depth - 2) % 9:
    raise ValueError('Network resnext needs depth 9n+2 with n >= 1 (11, 20, '
                     f'29, ...); got {depth}.')
  n = (depth - 2) // 9
  return (n, n, n)


def layout(model_config) -> dict[str, Any]:
  """CifarResNet layout of the configured ResNeXt."""
  block_cls = blocks.get_block(model_config.block)
  if block_cls.expansion != 4:
    fitting = sorted(name for name, cls in blocks.BLOCKS.items()
                     if cls.expansion == 4)
    raise ValueError(
        'Network resnext is built from bottleneck blocks of expansion 4; set '
        f'model.block to one of {", ".join(fitting)} (got '
        f'{model_config.block!r}).')
  return dict(block_cls=block_cls,
              stage_sizes=stage_sizes(model_config.depth),
              stage_planes=STAGE_PLANES, default_shortcut='B',
              block_options=blocks.block_options(block_cls, model_config))


def describe(model_config) -> str:
  """E.g. 'ResNeXt-29 (8x64d)'."""
  if model_config.block == 'resnext':
    block_cls = blocks.get_block('resnext')
    cardinality = model_config.cardinality or block_cls.cardinality
    width = model_config.base_width or block_cls.base_width
    return f'ResNeXt-{model_config.depth} ({cardinality}x{width}d)'
  return f'ResNeXt-{model_config.depth} layout ({model_config.block} blocks)'
