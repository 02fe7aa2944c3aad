"""Wide residual networks WRN-d-k (Zagoruyko & Komodakis, 2016).

Depth 6n+4: a 3x3 stem of 16 channels, three stages of n pre-activation blocks
with 16k/32k/64k planes (the last two striding by 2), a final BN-ReLU, pool
and head. Each block is BN-ReLU-conv3x3-BN-ReLU-dropout-conv3x3; where the
shape changes, its shortcut is a 1x1 convolution of the pre-activated input.
WRN-28-10 is the paper's flagship.
"""

from typing import Any, ClassVar

import flax.linen as nn
import jax

from jax_resnet.models import blocks
from jax_resnet.models import layers

# Network hyper-parameters of config.model this network reads.
FIELDS = ('widen_factor', 'dropout_rate')
DEFAULT_WIDEN_FACTOR = 10
DEFAULT_DROPOUT_RATE = 0.0


class WideBlock(blocks.PreActBlock):
  """Pre-activation basic block with dropout between its convolutions."""

  dropout_rate: float = 0.0

  default_shortcut: ClassVar[str] = 'conv'

  def between_convs(self, y: jax.Array, train: bool) -> jax.Array:
    return nn.Dropout(self.dropout_rate, rng_collection=layers.TRAINING_RNG)(
        y, deterministic=not train)


def widen_factor(model_config) -> int:
  """``model.widen_factor``, or the default, checked."""
  k = model_config.get('widen_factor')
  k = DEFAULT_WIDEN_FACTOR if k is None else k
  if k < 1:
    raise ValueError(f'model.widen_factor must be at least 1; got {k}.')
  return k


def dropout_rate(model_config) -> float:
  """``model.dropout_rate``, or the default, checked."""
  rate = model_config.get('dropout_rate')
  rate = DEFAULT_DROPOUT_RATE if rate is None else rate
  if not 0.0 <= rate < 1.0:
    raise ValueError(f'model.dropout_rate must be in [0, 1); got {rate}.')
  return rate


def layout(model_config) -> dict[str, Any]:
  """CifarResNet layout of WRN-depth-k."""
  depth = model_config.depth
  if depth < 10 or (depth - 4) % 6:
    raise ValueError('Network wide_resnet needs depth 6n+4 with n >= 1 (10, '
                     f'16, 22, 28, 40, ...); got {depth}.')
  if model_config.block != 'basic':
    raise ValueError(
        'Network wide_resnet builds its own pre-activation basic blocks (the '
        "paper's B(3,3)); leave model.block at 'basic' (got "
        f'{model_config.block!r}).')
  n = (depth - 4) // 6
  k = widen_factor(model_config)
  options = blocks.block_options(WideBlock, model_config,
                                 owner='network wide_resnet')
  options['dropout_rate'] = dropout_rate(model_config)
  return dict(block_cls=WideBlock, stage_sizes=(n, n, n),
              stage_planes=(16 * k, 32 * k, 64 * k), stem_planes=16,
              block_options=options, weight_init=layers.WIDE_RESNET_INIT)


def describe(model_config) -> str:
  """E.g. 'WRN-28-10'."""
  return f'WRN-{model_config.depth}-{widen_factor(model_config)}'
