"""CIFAR ResNet backbone built from any registered residual block."""

import functools
import math
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from jax_resnet import blocks

DTYPES = {'float32': jnp.float32, 'bfloat16': jnp.bfloat16}

# PyTorch's kaiming_normal_(fan_in, relu), as the reference CIFAR ResNets use.
conv_kernel_init = nn.initializers.variance_scaling(2.0, 'fan_in', 'normal')


def torch_linear_bias_init(fan_in: int):
  """PyTorch's nn.Linear bias init: U(-1/sqrt(fan_in), 1/sqrt(fan_in))."""
  bound = 1.0 / math.sqrt(fan_in)

  def init(key, shape, dtype=jnp.float32):
    return jax.random.uniform(key, shape, dtype, -bound, bound)

  return init


def cifar_stage_sizes(depth: int) -> tuple[int, int, int]:
  """Blocks per stage for a CIFAR ResNet of depth 6n+2."""
  if depth < 8 or (depth - 2) % 6:
    raise ValueError(f'CIFAR ResNet depth must be 6n+2 with n >= 1 '
                     f'(20, 32, 44, 56, 110, 1202, ...); got {depth}.')
  n = (depth - 2) // 6
  return (n, n, n)


def survival_probabilities(num_blocks: int,
                           final_survival_probability: float) -> list[float]:
  """Linear decay rule p_l = 1 - (l / L) (1 - p_L) for blocks l = 1..L."""
  return [1.0 - (l / num_blocks) * (1.0 - final_survival_probability)
          for l in range(1, num_blocks + 1)]


class CifarResNet(nn.Module):
  """3x3 stem, three stages of blocks (16/32/64 planes), pool, dense head.

  Attributes:
    block_cls: a ``blocks.ResidualBlock`` subclass.
    stage_sizes: blocks per stage.
    num_classes: outputs of the dense head.
    stage_planes: base planes per stage.
    shortcut_type: 'A' or 'B' (see blocks.ResidualBlock).
    final_survival_probability: stochastic depth p_L; 1.0 disables it.
    stochastic_depth_mode: 'batch' or 'example'.
    bn_momentum: BatchNorm momentum in PyTorch terms (weight of the new batch).
    bn_epsilon: BatchNorm epsilon.
    dtype: computation dtype; parameters stay float32.
  """

  block_cls: Any
  stage_sizes: Sequence[int]
  num_classes: int
  stage_planes: Sequence[int] = (16, 32, 64)
  shortcut_type: str = 'A'
  final_survival_probability: float = 1.0
  stochastic_depth_mode: str = 'batch'
  bn_momentum: float = 0.1
  bn_epsilon: float = 1e-5
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    conv = functools.partial(nn.Conv, use_bias=False, padding=1,
                             kernel_init=conv_kernel_init, dtype=self.dtype)
    norm = functools.partial(nn.BatchNorm, use_running_average=not train,
                             momentum=1.0 - self.bn_momentum,
                             epsilon=self.bn_epsilon, dtype=self.dtype)
    preact = self.block_cls.preactivation

    x = conv(self.stage_planes[0], (3, 3), name='stem_conv')(x)
    if not preact:
      x = nn.relu(norm(name='stem_bn')(x))

    num_blocks = sum(self.stage_sizes)
    survival = survival_probabilities(num_blocks,
                                      self.final_survival_probability)
    in_planes = self.stage_planes[0]
    index = 0
    for stage, (size, planes) in enumerate(
        zip(self.stage_sizes, self.stage_planes)):
      for b in range(size):
        stride = 2 if stage > 0 and b == 0 else 1
        block = self.block_cls(
            in_planes=in_planes, planes=planes, stride=stride, conv=conv,
            norm=norm, shortcut_type=self.shortcut_type,
            survival_probability=survival[index],
            stochastic_depth_mode=self.stochastic_depth_mode,
            name=f'stage{stage + 1}_block{b + 1}')
        x = block(x, train)
        in_planes = block.out_planes
        index += 1

    if preact:
      x = nn.relu(norm(name='final_bn')(x))
    x = jnp.mean(x, axis=(1, 2))
    x = nn.Dense(self.num_classes, kernel_init=conv_kernel_init,
                 bias_init=torch_linear_bias_init(x.shape[-1]),
                 dtype=self.dtype, name='head')(x)
    return x.astype(jnp.float32)


def create_model(model_config, num_classes: int) -> CifarResNet:
  """Builds the backbone described by ``config.model``."""
  block_cls = blocks.get_block(model_config.block)
  shortcut = model_config.shortcut
  if shortcut == 'auto':
    shortcut = block_cls.default_shortcut
  if shortcut not in blocks.SHORTCUT_TYPES:
    raise ValueError(f'Unknown shortcut {shortcut!r}; valid: auto, '
                     f'{", ".join(blocks.SHORTCUT_TYPES)}.')
  final_survival = model_config.final_survival_probability
  if final_survival is None:
    final_survival = block_cls.default_final_survival_probability
  if not 0.0 < final_survival <= 1.0:
    raise ValueError('model.final_survival_probability must be in (0, 1]; '
                     f'got {final_survival}.')
  if model_config.stochastic_depth_mode not in blocks.STOCHASTIC_DEPTH_MODES:
    raise ValueError(
        f'Unknown model.stochastic_depth_mode '
        f'{model_config.stochastic_depth_mode!r}; valid: '
        f'{", ".join(blocks.STOCHASTIC_DEPTH_MODES)}.')
  if model_config.dtype not in DTYPES:
    raise ValueError(f'Unknown model.dtype {model_config.dtype!r}; valid: '
                     f'{", ".join(DTYPES)}.')
  return CifarResNet(
      block_cls=block_cls,
      stage_sizes=cifar_stage_sizes(model_config.depth),
      num_classes=num_classes,
      shortcut_type=shortcut,
      final_survival_probability=final_survival,
      stochastic_depth_mode=model_config.stochastic_depth_mode,
      bn_momentum=model_config.bn_momentum,
      bn_epsilon=model_config.bn_epsilon,
      dtype=DTYPES[model_config.dtype])
