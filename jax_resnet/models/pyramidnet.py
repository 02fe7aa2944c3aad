"""PyramidNet: residual networks widened a little at every block.

Han, Kim & Kim (2017). The width grows additively by ``alpha`` over all blocks:
block i of N has ``round(16 + alpha * i / N)`` planes (times 4 out of a
bottleneck). Blocks are BN-conv-BN-ReLU-conv-BN with no ReLU after the
addition; the shortcut is the identity padded with zero channels, average-
pooled 2x2 where the block strides. Depth 6n+2 with basic blocks, 9n+2 with
bottlenecks; three stages of n blocks, the last two striding by 2.
"""

from typing import Any, ClassVar, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from jax_resnet import errors
from jax_resnet.models import blocks
from jax_resnet.models import layers
from jax_resnet.models import settings as settings_lib
from jax_resnet.models.settings import Settings

STEM_PLANES = 16


def pyramid_shortcut(x: jax.Array, out_channels: int,
                     stride: int) -> jax.Array:
  """2x2 average pool where strided, then zero channels appended."""
  if stride > 1:
    h, w = x.shape[1:3]
    # PyTorch's ceil_mode: an odd edge gets a partial window.
    x = nn.avg_pool(x, (stride, stride), strides=(stride, stride),
                    padding=((0, h % stride), (0, w % stride)),
                    count_include_pad=False)
  extra = out_channels - x.shape[-1]
  if extra < 0:
    raise errors.ConfigError(f'A PyramidNet shortcut cannot reduce channels '
                             f'({x.shape[-1]} -> {out_channels}).')
  if extra:
    x = jnp.pad(x, ((0, 0), (0, 0), (0, 0), (0, extra)))
  return x


class PyramidBlock(blocks.ResidualBlock):
  """BN-conv3x3-BN-ReLU-conv3x3-BN, added to the zero-padded shortcut."""

  def shortcut(self, x: jax.Array) -> jax.Array:
    """The pyramid shortcut, whatever ``shortcut_type`` says."""
    return pyramid_shortcut(x, self.out_planes, self.stride)

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    y = self.norm(name='bn1')(x)
    y = self.conv(self.planes, (3, 3), strides=self.stride, name='conv1')(y)
    y = self.norm(name='bn2')(y, relu=True)
    y = self.conv(self.planes, (3, 3), name='conv2')(y)
    y = self.norm(name='bn3')(y)
    return self.shortcut(x) + self.drop_branch(y, train)


class PyramidBottleneck(blocks.ResidualBlock):
  """BN-1x1-BN-ReLU-3x3-BN-ReLU-1x1-BN (4x planes), plus the shortcut."""

  expansion: ClassVar[int] = 4

  def shortcut(self, x: jax.Array) -> jax.Array:
    """The pyramid shortcut, whatever ``shortcut_type`` says."""
    return pyramid_shortcut(x, self.out_planes, self.stride)

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    y = self.norm(name='bn1')(x)
    y = self.conv(self.planes, (1, 1), padding=0, name='conv1')(y)
    y = self.norm(name='bn2')(y, relu=True)
    y = self.conv(self.planes, (3, 3), strides=self.stride, name='conv2')(y)
    y = self.norm(name='bn3')(y, relu=True)
    y = self.conv(self.out_planes, (1, 1), padding=0, name='conv3')(y)
    y = self.norm(name='bn4')(y)
    return self.shortcut(x) + self.drop_branch(y, train)


def block_planes(num_blocks: int, alpha: float) -> list[int]:
  """Planes of blocks 1..N: round(16 + alpha * i / N), Python's rounding."""
  return [int(round(STEM_PLANES + alpha * i / num_blocks))
          for i in range(1, num_blocks + 1)]


class PyramidNet(nn.Module):
  """16-channel stem (conv-BN), three stages of pyramid blocks, BN-ReLU, head.

  Blocks are ``stage{s}_block{b}``; every block has its own width, so none is
  scanned.

  Attributes:
    stage_sizes: blocks per stage.
    alpha: total widening over all blocks.
    num_classes: outputs of the head.
    bottleneck: bottleneck blocks instead of basic ones.
    final_survival_probability: stochastic depth p_L; 1.0 disables it.
    stochastic_depth_mode: 'batch' or 'example'.
    bn_momentum: BatchNorm momentum in PyTorch terms.
    bn_epsilon: BatchNorm epsilon.
    dtype: computation dtype; parameters stay float32.
    conv_backend: ``cpu_kernels.BACKENDS``: XLA or the project's CPU
      kernels for convolutions and BatchNorm.
  """

  stage_sizes: Sequence[int]
  alpha: float
  num_classes: int
  bottleneck: bool = False
  final_survival_probability: float = 1.0
  stochastic_depth_mode: str = 'batch'
  bn_momentum: float = 0.1
  bn_epsilon: float = 1e-5
  dtype: Any = jnp.float32
  conv_backend: str = 'auto'

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    conv = layers.conv_partial(self.dtype, layers.PYRAMIDNET_INIT,
                               backend=self.conv_backend)
    norm = layers.norm_partial(train, self.bn_momentum, self.bn_epsilon,
                               self.dtype, backend=self.conv_backend)
    block_cls = PyramidBottleneck if self.bottleneck else PyramidBlock
    x = conv(STEM_PLANES, (3, 3), name='stem_conv')(x)
    # No ReLU: every block starts with BN.
    x = norm(name='stem_bn')(x)
    num_blocks = sum(self.stage_sizes)
    planes = block_planes(num_blocks, self.alpha)
    survival = blocks.survival_probabilities(num_blocks,
                                             self.final_survival_probability)
    in_planes, index = STEM_PLANES, 0
    for stage, size in enumerate(self.stage_sizes):
      for b in range(size):
        block = block_cls(
            in_planes=in_planes, planes=planes[index],
            stride=2 if stage > 0 and b == 0 else 1, conv=conv, norm=norm,
            survival_probability=survival[index],
            stochastic_depth_mode=self.stochastic_depth_mode,
            name=f'stage{stage + 1}_block{b + 1}')
        x = block(x, train)
        in_planes = block.out_planes
        index += 1
    x = norm(name='final_bn')(x, relu=True)
    return layers.classifier(x, self.num_classes, self.dtype,
                             layers.PYRAMIDNET_INIT)


def create(settings: Settings, num_classes: int, *,
           pyramid_alpha: float = 48.0) -> PyramidNet:
  """PyramidNet of ``settings.block`` (basic or bottleneck) and depth;
  ``pyramid_alpha`` is the total widening."""
  bottleneck, n = settings_lib.own_units(
      settings, 'pyramidnet', 'pyramid blocks', convolutions=(2, 3),
      offset=2, shortcut='its own zero-padded shortcut')
  if pyramid_alpha < 0:
    raise errors.ConfigError(
        f'model.pyramid_alpha must be at least 0; got {pyramid_alpha}.')
  block_cls = PyramidBottleneck if bottleneck else PyramidBlock
  return PyramidNet(
      stage_sizes=(n, n, n), alpha=pyramid_alpha, num_classes=num_classes,
      bottleneck=bottleneck,
      final_survival_probability=blocks.final_survival_probability(
          block_cls, settings.final_survival_probability,
          settings.stochastic_depth_mode),
      stochastic_depth_mode=settings.stochastic_depth_mode,
      bn_momentum=settings.bn_momentum, bn_epsilon=settings.bn_epsilon,
      dtype=settings.dtype, conv_backend=settings.conv_backend)


def describe(settings: Settings, *, pyramid_alpha: float) -> str:
  """E.g. 'PyramidNet-272 (alpha 200, bottleneck)'."""
  return (f'PyramidNet-{settings.depth} (alpha {pyramid_alpha:g}, '
          f'{settings.block})')
