"""Wide residual networks WRN-d-k (Zagoruyko & Komodakis, 2016).

Depth 6n+4: a 3x3 stem of 16 channels, three stages of n pre-activation blocks
with 16k/32k/64k planes (the last two striding by 2), a final BN-ReLU, pool
and head. Each block is BN-ReLU-conv3x3-BN-ReLU-dropout-conv3x3; where the
shape changes, its shortcut is a 1x1 convolution of the pre-activated input.
WRN-28-10 is the paper's flagship.
"""

from typing import ClassVar

import flax.linen as nn
import jax

from jax_resnet import errors
from jax_resnet.models import backbone
from jax_resnet.models import blocks
from jax_resnet.models import layers
from jax_resnet.models.settings import Settings


class WideBlock(blocks.PreActBlock):
  """Pre-activation basic block with dropout between its convolutions."""

  dropout_rate: float = 0.0

  default_shortcut: ClassVar[str] = 'conv'

  def check_hyperparameters(self) -> None:
    if not 0.0 <= self.dropout_rate < 1.0:
      raise errors.ConfigError(
          f'model.dropout_rate must be in [0, 1); got {self.dropout_rate}.')

  def between_convs(self, y: jax.Array, train: bool) -> jax.Array:
    return nn.Dropout(self.dropout_rate, rng_collection=layers.TRAINING_RNG)(
        y, deterministic=not train)


def create(settings: Settings, num_classes: int, *, widen_factor: int = 10,
           dropout_rate: float = 0.0) -> backbone.CifarResNet:
  """WRN-depth-k: ``widen_factor`` is k, ``dropout_rate`` between the convs."""
  depth = settings.depth
  if depth < 10 or (depth - 4) % 6:
    raise errors.ConfigError(
        'Network wide_resnet needs depth 6n+4 with n >= 1 (10, 16, 22, 28, '
        f'40, ...); got {depth}.')
  if settings.block != 'basic':
    raise errors.ConfigError(
        'Network wide_resnet builds its own pre-activation basic blocks (the '
        "paper's B(3,3)); leave model.block at 'basic' (got "
        f'{settings.block!r}).')
  if settings.block_kwargs:
    raise errors.ConfigError(
        'Network wide_resnet takes its block settings as model.widen_factor '
        'and model.dropout_rate; leave model.block_kwargs empty.')
  if widen_factor < 1:
    raise errors.ConfigError(
        f'model.widen_factor must be at least 1; got {widen_factor}.')
  n = (depth - 4) // 6
  k = widen_factor
  return backbone.create_residual_network(
      settings, num_classes, block_cls=WideBlock, stage_sizes=(n, n, n),
      stage_planes=(16 * k, 32 * k, 64 * k), stem_planes=16,
      block_kwargs=blocks.resolve_kwargs(
          WideBlock, {'dropout_rate': dropout_rate}, 'network wide_resnet'),
      weight_init=layers.WIDE_RESNET_INIT)


def describe(settings: Settings, *, widen_factor: int, **unused) -> str:
  """E.g. 'WRN-28-10'."""
  del unused
  return f'WRN-{settings.depth}-{widen_factor}'
