"""DenseNet and DenseNet-BC for CIFAR (Huang et al., 2017).

Three dense blocks of n layers; each layer adds ``growth_rate`` (k) channels,
concatenated to all before it. A layer is BN-ReLU-conv3x3, or with
'bottleneck' blocks BN-ReLU-conv1x1(4k)-BN-ReLU-conv3x3 (DenseNet-B). Between
dense blocks a transition BN-ReLU-conv1x1-avgpool2 keeps
``floor(compression * channels)`` channels (compression < 1: DenseNet-C).
The stem is a 3x3 convolution to 2k channels with bottlenecks, 16 without;
the end is BN-ReLU, pool and head. Depth counts the convolutions plus stem,
transitions and head: 3n+4, or 6n+4 with bottlenecks. With dropout, every
convolution after the stem is followed by it.
"""

from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from jax_resnet import errors
from jax_resnet.models import layers
from jax_resnet.models import settings as settings_lib
from jax_resnet.models.settings import Settings

ModuleDef = Any

# Bottleneck width in multiples of the growth rate.
BOTTLENECK_FACTOR = 4


class DenseLayer(nn.Module):
  """Computes ``growth_rate`` new channels and appends them to its input."""

  conv: ModuleDef
  norm: ModuleDef
  growth_rate: int
  bottleneck: bool
  dropout_rate: float

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    dropout = nn.Dropout(self.dropout_rate, deterministic=not train,
                         rng_collection=layers.TRAINING_RNG)
    y = self.norm(name='bn1')(x, relu=True)
    if self.bottleneck:
      y = self.conv(BOTTLENECK_FACTOR * self.growth_rate, (1, 1), padding=0,
                    name='conv1')(y)
      y = self.norm(name='bn2')(dropout(y), relu=True)
      y = self.conv(self.growth_rate, (3, 3), name='conv2')(y)
    else:
      y = self.conv(self.growth_rate, (3, 3), name='conv1')(y)
    return jnp.concatenate([x, dropout(y)], axis=-1)


class Transition(nn.Module):
  """BN-ReLU-conv1x1 to ``features`` channels, then a 2x2 average pool."""

  conv: ModuleDef
  norm: ModuleDef
  features: int
  dropout_rate: float

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    y = self.norm(name='bn')(x, relu=True)
    y = self.conv(self.features, (1, 1), padding=0, name='conv')(y)
    y = nn.Dropout(self.dropout_rate, rng_collection=layers.TRAINING_RNG)(
        y, deterministic=not train)
    return nn.avg_pool(y, (2, 2), strides=(2, 2))


class DenseNet(nn.Module):
  """Stem, dense blocks joined by transitions, BN-ReLU, pool, head.

  Stage s holds ``stage{s}_layer{l}`` and, except the last,
  ``stage{s}_transition``.

  Attributes:
    stage_sizes: layers per dense block.
    growth_rate: channels each layer adds (k).
    num_classes: outputs of the head.
    bottleneck: 1x1 bottleneck layers (DenseNet-B).
    compression: fraction of channels a transition keeps.
    dropout_rate: dropout after every convolution but the stem.
    bn_momentum: BatchNorm momentum in PyTorch terms.
    bn_epsilon: BatchNorm epsilon.
    dtype: computation dtype; parameters stay float32.
    conv_backend: ``cpu_kernels.BACKENDS``: XLA or the project's CPU
      kernels for convolutions and BatchNorm.
  """

  stage_sizes: Sequence[int]
  growth_rate: int
  num_classes: int
  bottleneck: bool = True
  compression: float = 0.5
  dropout_rate: float = 0.0
  bn_momentum: float = 0.1
  bn_epsilon: float = 1e-5
  dtype: Any = jnp.float32
  conv_backend: str = 'auto'

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    conv = layers.conv_partial(self.dtype, layers.DENSENET_INIT,
                               backend=self.conv_backend)
    norm = layers.norm_partial(train, self.bn_momentum, self.bn_epsilon,
                               self.dtype, backend=self.conv_backend)
    stem = 2 * self.growth_rate if self.bottleneck else 16
    x = conv(stem, (3, 3), name='stem_conv')(x)
    for stage, size in enumerate(self.stage_sizes, start=1):
      for layer in range(1, size + 1):
        x = DenseLayer(conv, norm, self.growth_rate, self.bottleneck,
                       self.dropout_rate,
                       name=f'stage{stage}_layer{layer}')(x, train)
      if stage < len(self.stage_sizes):
        features = int(self.compression * x.shape[-1])
        x = Transition(conv, norm, features, self.dropout_rate,
                       name=f'stage{stage}_transition')(x, train)
    x = norm(name='final_bn')(x, relu=True)
    return layers.classifier(x, self.num_classes, self.dtype,
                             layers.DENSENET_INIT)


def create(settings: Settings, num_classes: int, *, growth_rate: int = 12,
           compression: float = 0.5, dropout_rate: float = 0.0) -> DenseNet:
  """DenseNet of ``settings.block`` (basic or bottleneck layers) and depth."""
  bottleneck, n = settings_lib.own_units(
      settings, 'densenet', 'dense layers', convolutions=(1, 2), offset=4,
      shortcut='no shortcuts')
  if settings.final_survival_probability is not None:
    raise errors.ConfigError(
        'Network densenet has no residual branches for stochastic depth; '
        'leave model.final_survival_probability unset.')
  if growth_rate < 1:
    raise errors.ConfigError(
        f'model.growth_rate must be at least 1; got {growth_rate}.')
  if not 0.0 < compression <= 1.0:
    raise errors.ConfigError(
        f'model.compression must be in (0, 1]; got {compression}.')
  if not 0.0 <= dropout_rate < 1.0:
    raise errors.ConfigError(
        f'model.dropout_rate must be in [0, 1); got {dropout_rate}.')
  return DenseNet(stage_sizes=(n, n, n), growth_rate=growth_rate,
                  num_classes=num_classes, bottleneck=bottleneck,
                  compression=compression, dropout_rate=dropout_rate,
                  bn_momentum=settings.bn_momentum,
                  bn_epsilon=settings.bn_epsilon, dtype=settings.dtype,
                  conv_backend=settings.conv_backend)


def describe(settings: Settings, *, growth_rate: int, compression: float,
             **unused) -> str:
  """E.g. 'DenseNet-BC-100 (k=12)'."""
  del unused
  suffix = (('B' if settings.block == 'bottleneck' else '') +
            ('C' if compression < 1 else ''))
  kind = f'DenseNet-{suffix}' if suffix else 'DenseNet'
  return f'{kind}-{settings.depth} (k={growth_rate})'
