"""ResNeXt-29 and its kin: the CIFAR bottleneck layout of Xie et al. (2017).

Depth 9n+2: a 3x3 stem of 64 channels, then three stages of n bottleneck
blocks with 64/128/256 planes (outputs 256/512/1024; the last two stages stride
by 2), projection shortcuts (option B), pool and head. With the 'resnext' block
it is ResNeXt-29 (cardinality x base width, e.g. 8x64d); any other
expansion-4 block (res2net, split_attention, se_bottleneck, bottleneck) drops
into the same layout.
"""

from jax_resnet import errors
from jax_resnet.models import backbone
from jax_resnet.models import blocks
from jax_resnet.models.settings import Settings

STAGE_PLANES = (64, 128, 256)


def stage_sizes(depth: int) -> tuple[int, int, int]:
  """Blocks per stage for depth 9n+2."""
  if depth < 11 or (depth - 2) % 9:
    raise errors.ConfigError('Network resnext needs depth 9n+2 with n >= 1 '
                             f'(11, 20, 29, ...); got {depth}.')
  n = (depth - 2) // 9
  return (n, n, n)


def create(settings: Settings, num_classes: int) -> backbone.CifarResNet:
  """The ResNeXt-29 layout with ``settings.block``."""
  block_cls = blocks.get_block(settings.block)
  if block_cls.expansion != 4:
    fitting = sorted(name for name, cls in blocks.BLOCKS.items()
                     if cls.expansion == 4)
    raise errors.ConfigError(
        'Network resnext is built from bottleneck blocks of expansion 4; set '
        f'model.block to one of {", ".join(fitting)} (got '
        f'{settings.block!r}).')
  return backbone.create_residual_network(
      settings, num_classes, block_cls=block_cls,
      stage_sizes=stage_sizes(settings.depth), stage_planes=STAGE_PLANES,
      default_shortcut='B')


def describe(settings: Settings) -> str:
  """E.g. 'ResNeXt-29 (8x64d)'."""
  if settings.block == 'resnext':
    kwargs = {**blocks.hyperparameters(blocks.get_block('resnext')),
              **settings.block_kwargs}
    return (f'ResNeXt-{settings.depth} ({kwargs["cardinality"]}x'
            f'{kwargs["base_width"]}d)')
  return f'ResNeXt-{settings.depth} layout ({settings.block} blocks)'
