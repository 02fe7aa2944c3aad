"""Residual blocks and the block registry.

Every block is built from ``(in_planes, planes, stride)`` plus the ``conv`` and
``norm`` partials that the backbone hands it, declares ``expansion`` and returns
``planes * expansion`` channels. Shortcut handling, stochastic depth and the
registry live here so that a new block only writes its residual branch.

A block's own hyper-parameters (cardinality, widths, ...) are its dataclass
fields beyond the contract; ``config.model.block_kwargs`` sets them
(``hyperparameters``, ``resolve_kwargs``).
"""

import dataclasses
import importlib
from typing import Any, Callable, ClassVar, Mapping, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from jax_resnet import errors
from jax_resnet.models import layers

ModuleDef = Any

SHORTCUT_TYPES = ('A', 'B', 'conv', 'D')
STOCHASTIC_DEPTH_MODES = ('batch', 'example')


def shortcut_option_a(x: jax.Array, out_channels: int, stride: int) -> jax.Array:
  """Parameter-free shortcut: strided subsampling plus zero channel padding."""
  if stride > 1:
    x = x[:, ::stride, ::stride, :]
  extra = out_channels - x.shape[-1]
  if extra < 0:
    raise errors.ConfigError(
        f'Option-A shortcut cannot reduce channels ({x.shape[-1]} -> '
        f'{out_channels}); use shortcut "B".')
  if extra:
    # Split the zero channels on both sides, as the He et al. CIFAR code does.
    x = jnp.pad(x, ((0, 0), (0, 0), (0, 0), (extra // 2, extra - extra // 2)))
  return x


def average_pool_3x3(x: jax.Array, stride: int) -> jax.Array:
  """3x3 average pool, padding 1 with the zeros counted (PyTorch's
  ``nn.AvgPool2d(3, stride, padding=1)``): Res2Net's last split and
  ResNeSt's downsampling."""
  return nn.avg_pool(x, (3, 3), strides=(stride, stride),
                     padding=((1, 1), (1, 1)), count_include_pad=True)


def average_pool_ceil(x: jax.Array, size: int) -> jax.Array:
  """``size`` x ``size`` average pool at stride ``size`` that keeps a partial
  last window and averages only its pixels (PyTorch's ``nn.AvgPool2d(size,
  size, ceil_mode=True, count_include_pad=False)``): ResNet-D's shortcut."""
  padding = tuple((0, -n % size) for n in x.shape[1:3])
  return nn.avg_pool(x, (size, size), strides=(size, size), padding=padding,
                     count_include_pad=False)


def survival_probabilities(num_blocks: int,
                           final_survival_probability: float) -> list[float]:
  """Linear decay rule p_l = 1 - (l / L) (1 - p_L) for blocks l = 1..L."""
  return [1.0 - (l / num_blocks) * (1.0 - final_survival_probability)
          for l in range(1, num_blocks + 1)]


class ResidualBlock(nn.Module):
  """Base class: shortcut, stochastic depth and the block contract.

  Subclasses implement ``__call__(x, train)`` and use ``self.shortcut(x)`` and
  ``self.drop_branch(branch, train)``; they never build their own conv or norm
  settings.

  Attributes:
    in_planes: input channels.
    planes: base width; the output has ``planes * expansion`` channels.
    stride: spatial stride of the block (1 or 2).
    conv: ``nn.Conv`` partial (dtype, init, no bias).
    norm: ``batch_norm.BatchNorm`` partial (momentum, epsilon, train flag,
      dtype); ``norm(name=...)(x, relu=True)`` is BN-ReLU in one pass,
      ``norm(name=...)(x, relu=True, residual=r)`` ReLU(BN(x) + r).
    shortcut_type: when the shape changes, 'A' (parameter-free), 'B' (1x1
      conv + BN), 'conv' (1x1 conv alone, the projection of pre-activation
      networks) or 'D' (ResNet-D, He et al. 2019, ResNeSt's ``avg_down``: a
      strided block averages ``stride`` x ``stride`` windows, then a 1x1 conv
      at stride 1 + BN); identity otherwise.
    survival_probability: probability that the residual branch is kept in
      training (stochastic depth); 1.0 disables it. A scalar array when the
      backbone scans over the block.
    stochastic_depth_mode: 'batch' draws one keep/drop per mini-batch (Huang et
      al.), 'example' one per example.
  """

  in_planes: int
  planes: int
  stride: int
  conv: ModuleDef
  norm: ModuleDef
  shortcut_type: str = 'A'
  survival_probability: Any = 1.0
  stochastic_depth_mode: str = 'batch'

  expansion: ClassVar[int] = 1
  # Pre-activation blocks leave the stem without BN-ReLU and need a final
  # BN-ReLU before pooling; the backbone reads this flag.
  preactivation: ClassVar[bool] = False
  # Default final survival probability used when the config does not set one.
  default_final_survival_probability: ClassVar[float] = 1.0
  # Default shortcut when the config says 'auto'.
  default_shortcut: ClassVar[str] = 'A'
  # False for a block without a shortcut: dropping its branch would zero the
  # network, so stochastic depth is refused.
  has_shortcut: ClassVar[bool] = True

  def __post_init__(self):
    super().__post_init__()
    self.check_hyperparameters()

  def check_hyperparameters(self) -> None:
    """Raises errors.ConfigError for hyper-parameter values it cannot take."""

  @property
  def out_planes(self) -> int:
    return self.planes * self.expansion

  @property
  def needs_projection(self) -> bool:
    return self.stride != 1 or self.in_planes != self.out_planes

  def shortcut(self, x: jax.Array) -> jax.Array:
    """Identity, or option A / B / conv / D when stride or channels change."""
    if not self.needs_projection:
      return x
    if self.shortcut_type == 'A':
      return shortcut_option_a(x, self.out_planes, self.stride)
    if self.shortcut_type == 'B':
      x = self.conv(self.out_planes, (1, 1), strides=self.stride, padding=0,
                    name='shortcut_conv')(x)
      return self.norm(name='shortcut_bn')(x)
    if self.shortcut_type == 'conv':
      return self.conv(self.out_planes, (1, 1), strides=self.stride, padding=0,
                       name='shortcut_conv')(x)
    if self.shortcut_type == 'D':
      if self.stride > 1:
        x = average_pool_ceil(x, self.stride)
      x = self.conv(self.out_planes, (1, 1), padding=0,
                    name='shortcut_conv')(x)
      return self.norm(name='shortcut_bn')(x)
    raise errors.ConfigError(f'Unknown shortcut {self.shortcut_type!r}; '
                             f'valid: {", ".join(SHORTCUT_TYPES)}.')

  @property
  def keeps_branch(self) -> bool:
    """Whether the branch is never dropped (no stochastic depth). A traced
    probability (blocks scanned by the backbone) always draws."""
    p = self.survival_probability
    return isinstance(p, (int, float)) and p >= 1.0

  def branch_factor(self, branch: jax.Array,
                    train: bool) -> Optional[jax.Array]:
    """What ``drop_branch`` multiplies ``branch`` by: None where it keeps
    it; in training a 0/1 draw, one per mini-batch (a scalar) or one per
    example (shape ``(batch, 1, ..., 1)``); in evaluation the survival
    probability."""
    p = self.survival_probability
    if self.keeps_branch:
      return None
    if not train:
      return jnp.asarray(p)
    rng = self.make_rng('stochastic_depth')
    if self.stochastic_depth_mode == 'batch':
      shape = ()
    elif self.stochastic_depth_mode == 'example':
      shape = (branch.shape[0],) + (1,) * (branch.ndim - 1)
    else:
      raise errors.ConfigError(
          f'Unknown stochastic_depth_mode {self.stochastic_depth_mode!r}; '
          f'valid: {", ".join(STOCHASTIC_DEPTH_MODES)}.')
    return jax.random.bernoulli(rng, p, shape)

  def drop_branch(self, branch: jax.Array, train: bool) -> jax.Array:
    """Stochastic depth on the residual branch (Huang et al. 2016).

    Training keeps the branch with probability ``survival_probability``;
    evaluation scales it by that probability.
    """
    factor = self.branch_factor(branch, train)
    if factor is None:
      return branch
    return branch * factor.astype(branch.dtype)

  def finish(self, y: jax.Array, x: jax.Array, train: bool, norm_name: str,
             gate: Optional[jax.Array] = None) -> jax.Array:
    """ReLU(shortcut(x) + drop_branch(BN(y) * gate)): the end of a block
    whose branch ends in the BatchNorm ``norm_name`` (a submodule of that
    name), scaled by a scalar ``gate`` where given.

    Unless stochastic depth draws per example, the BatchNorm adds the
    shortcut and applies the ReLU itself (``norm(y, relu=True,
    residual=..., branch_scale=...)``): one pass on the CPU kernels.
    """
    shortcut = self.shortcut(x)
    norm = self.norm(name=norm_name)
    factor = self.branch_factor(y, train)
    if factor is None or factor.ndim == 0:
      scale = gate
      if factor is not None:
        factor = factor.astype(jnp.float32)
        scale = factor if gate is None else gate * factor
      return norm(y, relu=True, residual=shortcut, branch_scale=scale)
    branch = norm(y)
    if gate is not None:
      branch = branch * gate.astype(branch.dtype)
    return nn.relu(shortcut + branch * factor.astype(branch.dtype))


class BlockOutputError(errors.Error):
  """A block returned a shape other than its contract's."""


def call_checked(block: ResidualBlock, x: jax.Array, train: bool
                 ) -> jax.Array:
  """``block(x, train)``, checked against the block contract: the output
  keeps the batch, divides height and width by ``stride`` (rounded up, as a
  padded strided convolution does) and has ``out_planes`` channels.

  A block breaking it would otherwise feed the next block (whose layers take
  any input width) and train a different network without a word.
  """
  y = block(x, train)
  expected = (x.shape[0], -(-x.shape[1] // block.stride),
              -(-x.shape[2] // block.stride), block.out_planes)
  if tuple(y.shape) != expected:
    cls = type(block)
    raise BlockOutputError(
        f'block {cls.__module__}:{cls.__qualname__} ({block.name}) returned '
        f'shape {tuple(y.shape)} for input {tuple(x.shape)}; with '
        f'in_planes={block.in_planes}, planes={block.planes}, '
        f'stride={block.stride} and expansion={cls.expansion} it must return '
        f'{expected}: out_planes = planes * expansion channels.')
  return y


def basic_branch(block: ResidualBlock, x: jax.Array,
                 last_norm: bool = True) -> jax.Array:
  """conv3x3-BN-ReLU-conv3x3-BN of a basic block (call from its __call__);
  without ``last_norm`` it stops before bn2 (for ``ResidualBlock.finish``).

  The layers become the calling block's submodules conv1, bn1, conv2, bn2.
  """
  y = block.conv(block.planes, (3, 3), strides=block.stride, name='conv1')(x)
  y = block.norm(name='bn1')(y, relu=True)
  y = block.conv(block.planes, (3, 3), name='conv2')(y)
  return block.norm(name='bn2')(y) if last_norm else y


def bottleneck_branch(block: ResidualBlock, x: jax.Array, width: int,
                      groups: int = 1, last_norm: bool = True) -> jax.Array:
  """1x1-BN-ReLU, 3x3 (strided, ``groups`` groups)-BN-ReLU, 1x1-BN; without
  ``last_norm`` it stops before bn3 (for ``ResidualBlock.finish``).

  The layers become the calling block's submodules conv1..3, bn1..3; the
  output has ``block.out_planes`` channels.
  """
  y = block.conv(width, (1, 1), padding=0, name='conv1')(x)
  y = block.norm(name='bn1')(y, relu=True)
  y = block.conv(width, (3, 3), strides=block.stride,
                 feature_group_count=groups, name='conv2')(y)
  y = block.norm(name='bn2')(y, relu=True)
  y = block.conv(block.out_planes, (1, 1), padding=0, name='conv3')(y)
  return block.norm(name='bn3')(y) if last_norm else y


class BasicBlock(ResidualBlock):
  """conv-BN-ReLU-conv-BN, add, ReLU (He et al. 2015)."""

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    return self.finish(basic_branch(self, x, last_norm=False), x, train, 'bn2')


class PreActBlock(ResidualBlock):
  """BN-ReLU-conv-BN-ReLU-conv, add (He et al. 2016, identity mappings).

  A changed shape takes its shortcut from the pre-activated input, as in the
  reference implementation.
  """

  preactivation: ClassVar[bool] = True

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    pre = self.norm(name='bn1')(x, relu=True)
    shortcut = self.shortcut(pre) if self.needs_projection else x
    y = self.conv(self.planes, (3, 3), strides=self.stride, name='conv1')(pre)
    y = self.between_convs(self.norm(name='bn2')(y, relu=True), train)
    y = self.conv(self.planes, (3, 3), name='conv2')(y)
    return shortcut + self.drop_branch(y, train)

  def between_convs(self, y: jax.Array, train: bool) -> jax.Array:
    """Hook between the second BN-ReLU and conv2 (WRN puts dropout here)."""
    del train
    return y


class GatedBlock(ResidualBlock):
  """Basic block whose branch is scaled by a learnable scalar, initialised to 0.

  ReZero-style gating: every block starts as (ReLU of) its shortcut, so a deep
  network starts as a shallow one.
  """

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    y = basic_branch(self, x, last_norm=False)
    gate = self.param('gate', nn.initializers.zeros, (), jnp.float32)
    return self.finish(y, x, train, 'bn2', gate=gate)


class StochasticDepthBlock(BasicBlock):
  """Basic block with stochastic depth, final survival probability 0.5."""

  default_final_survival_probability: ClassVar[float] = 0.5


class BottleneckBlock(ResidualBlock):
  """1x1-3x3-1x1 bottleneck, expansion 4, stride on the 3x3 convolution."""

  expansion: ClassVar[int] = 4
  default_shortcut: ClassVar[str] = 'B'

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    y = bottleneck_branch(self, x, self.planes, last_norm=False)
    return self.finish(y, x, train, 'bn3')


def require_positive(block: nn.Module, *names: str) -> None:
  """Raises errors.ConfigError unless the named fields are at least 1."""
  for name in names:
    value = getattr(block, name)
    if value < 1:
      raise errors.ConfigError(
          f'{type(block).__name__}: block_kwargs.{name} must be at least 1; '
          f'got {value}.')


def group_width(planes: int, base_width: int, groups: int) -> int:
  """Width of a grouped 3x3 stage: ``floor(planes * base_width / 64)`` a group.

  ResNeXt, Res2Net and ResNeSt size their bottlenecks this way.
  """
  per_group = planes * base_width // 64
  if per_group < 1:
    raise errors.ConfigError(
        f'planes {planes} x base_width {base_width} / 64 leaves no channel per '
        'group; raise model.base_width.')
  return per_group * groups


class PlainBlock(ResidualBlock):
  """The basic block without a shortcut: conv-BN-ReLU-conv-BN-ReLU.

  A stack of these is He et al.'s plain baseline (plain-20, plain-56), the
  network that shows the degradation problem residual learning fixes. The
  whole block is its branch: no shortcut, so no stochastic depth either.
  """

  has_shortcut: ClassVar[bool] = False

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    y = basic_branch(self, x, last_norm=False)
    return self.norm(name='bn2')(y, relu=True)


class SqueezeExcitation(nn.Module):
  """Per-channel gates from globally pooled features (Hu et al. 2018).

  The two fully connected layers are 1x1 convolutions on the pooled map, so
  they take the backbone's conv settings.
  """

  conv: ModuleDef
  reduction: int

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    channels = x.shape[-1]
    hidden = max(1, channels // self.reduction)
    s = jnp.mean(x, axis=(1, 2), keepdims=True)
    s = self.conv(hidden, (1, 1), padding=0, use_bias=True,
                  bias_init=layers.torch_linear_bias_init(channels),
                  name='reduce')(s)
    s = self.conv(channels, (1, 1), padding=0, use_bias=True,
                  bias_init=layers.torch_linear_bias_init(hidden),
                  name='expand')(nn.relu(s))
    return x * nn.sigmoid(s)


class SEBasicBlock(ResidualBlock):
  """Basic block whose branch is gated by squeeze-and-excitation (SE-ResNet)."""

  se_reduction: int = 16

  def check_hyperparameters(self) -> None:
    require_positive(self, 'se_reduction')

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    y = basic_branch(self, x)
    y = SqueezeExcitation(self.conv, self.se_reduction, name='se')(y)
    return nn.relu(self.shortcut(x) + self.drop_branch(y, train))


class SEBottleneckBlock(ResidualBlock):
  """Bottleneck block with squeeze-and-excitation on its branch."""

  se_reduction: int = 16

  expansion: ClassVar[int] = 4
  default_shortcut: ClassVar[str] = 'B'
  def check_hyperparameters(self) -> None:
    require_positive(self, 'se_reduction')

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    y = bottleneck_branch(self, x, self.planes)
    y = SqueezeExcitation(self.conv, self.se_reduction, name='se')(y)
    return nn.relu(self.shortcut(x) + self.drop_branch(y, train))


class ResNeXtBlock(ResidualBlock):
  """Bottleneck whose 3x3 convolution has ``cardinality`` groups.

  Xie et al. (2017), form (c): the 3x3 stage is ``cardinality`` groups of
  ``planes * base_width / 64`` channels; the defaults make ResNeXt-29 8x64d.
  """

  cardinality: int = 8
  base_width: int = 64

  expansion: ClassVar[int] = 4
  default_shortcut: ClassVar[str] = 'B'

  def check_hyperparameters(self) -> None:
    require_positive(self, 'cardinality', 'base_width')

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    width = group_width(self.planes, self.base_width, self.cardinality)
    y = bottleneck_branch(self, x, width, self.cardinality, last_norm=False)
    return self.finish(y, x, train, 'bn3')


class Res2NetBlock(ResidualBlock):
  """Bottleneck whose 3x3 stage is a hierarchy of ``scale`` splits.

  Gao et al. (2019): the 1x1 output is cut into ``scale`` splits of
  ``planes * base_width / 64`` channels; split i (i > 1) is convolved after
  adding the previous split's output, so receptive fields grow within the
  block; the last split passes through. In the first block of a stage (which
  changes stride or width) the splits are not chained and the last one is
  average-pooled, as in the reference 'stage' blocks.
  """

  base_width: int = 26
  scale: int = 4

  expansion: ClassVar[int] = 4
  default_shortcut: ClassVar[str] = 'B'

  def check_hyperparameters(self) -> None:
    require_positive(self, 'base_width', 'scale')

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    width = group_width(self.planes, self.base_width, 1)
    y = self.conv(width * self.scale, (1, 1), padding=0, name='conv1')(x)
    y = self.norm(name='bn1')(y, relu=True)
    splits = jnp.split(y, self.scale, axis=-1)
    first_of_stage = self.needs_projection
    outputs = []
    z = None
    # With scale 1 the single split is convolved: a plain bottleneck.
    for i in range(max(self.scale - 1, 1)):
      z = splits[i] if i == 0 or first_of_stage else z + splits[i]
      z = self.conv(width, (3, 3), strides=self.stride,
                    name=f'conv2_{i + 1}')(z)
      z = self.norm(name=f'bn2_{i + 1}')(z, relu=True)
      outputs.append(z)
    if self.scale > 1:
      last = splits[-1]
      if first_of_stage:
        last = average_pool_3x3(last, self.stride)
      outputs.append(last)
    y = jnp.concatenate(outputs, axis=-1)
    y = self.conv(self.out_planes, (1, 1), padding=0, name='conv3')(y)
    return self.finish(y, x, train, 'bn3')


class SplitAttentionConv(nn.Module):
  """3x3 convolution into ``radix`` splits fused by attention across them.

  Zhang et al. (2020), ResNeSt: each of ``cardinality`` groups computes
  ``radix`` feature maps; a softmax over the radix (sigmoid when radix is 1)
  of scores from the pooled sum weights them.
  """

  conv: ModuleDef
  norm: ModuleDef
  features: int
  stride: int
  radix: int
  cardinality: int
  # Attention bottleneck: features * radix / reduction, at least min_hidden.
  reduction: int = 4
  min_hidden: int = 32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    groups = self.cardinality * self.radix
    if x.shape[-1] % groups:
      raise errors.ConfigError(
          f'Split attention convolves {x.shape[-1]} channels in cardinality x '
          f'radix = {groups} groups, which do not divide them; change '
          'model.radix, model.cardinality or model.base_width.')
    y = self.conv(self.features * self.radix, (3, 3), strides=self.stride,
                  feature_group_count=groups, name='conv')(x)
    y = self.norm(name='bn0')(y, relu=True)
    n, h, w, _ = y.shape
    splits = y.reshape(n, h, w, self.radix, self.features)
    pooled = jnp.mean(splits.sum(axis=3), axis=(1, 2), keepdims=True)
    hidden = max(self.features * self.radix // self.reduction, self.min_hidden)
    # The grouped 1x1 convolutions need whole groups.
    hidden = -(-hidden // self.cardinality) * self.cardinality
    a = self.conv(hidden, (1, 1), padding=0, use_bias=True,
                  feature_group_count=self.cardinality,
                  bias_init=layers.torch_linear_bias_init(
                      self.features // self.cardinality), name='fc1')(pooled)
    a = self.norm(name='bn1')(a, relu=True)
    a = self.conv(self.features * self.radix, (1, 1), padding=0,
                  use_bias=True, feature_group_count=self.cardinality,
                  bias_init=layers.torch_linear_bias_init(
                      hidden // self.cardinality), name='fc2')(a)
    # fc2's output is grouped by cardinality, each group holding its radix
    # scores side by side; reorder to the splits' radix-major layout.
    a = a.reshape(n, self.cardinality, self.radix, -1)
    if self.radix > 1:
      a = jax.nn.softmax(a, axis=2)
    else:
      a = nn.sigmoid(a)
    a = a.transpose(0, 2, 1, 3).reshape(n, 1, 1, self.radix, self.features)
    return jnp.sum(splits * a.astype(splits.dtype), axis=3)


class SplitAttentionBlock(ResidualBlock):
  """ResNeSt bottleneck: 1x1, split-attention 3x3, 1x1 (Zhang et al. 2020).

  A strided block downsamples as ResNeSt does (``avd``): the split-attention
  convolution runs at stride 1 and a 3x3 average pool (padding 1, the zeros
  counted) strides after it, or before it with ``avd_first``. With
  ``avd=False`` the stride sits on the split-attention convolution.
  """

  radix: int = 2
  cardinality: int = 1
  base_width: int = 64
  avd: bool = True
  avd_first: bool = False

  expansion: ClassVar[int] = 4
  default_shortcut: ClassVar[str] = 'B'

  def check_hyperparameters(self) -> None:
    require_positive(self, 'radix', 'cardinality', 'base_width')

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    width = group_width(self.planes, self.base_width, self.cardinality)
    y = self.conv(width, (1, 1), padding=0, name='conv1')(x)
    y = self.norm(name='bn1')(y, relu=True)
    pool = self.avd and self.stride > 1
    if pool and self.avd_first:
      y = average_pool_3x3(y, self.stride)
    y = SplitAttentionConv(self.conv, self.norm, width,
                           1 if pool else self.stride, self.radix,
                           self.cardinality, name='split_attention')(y)
    if pool and not self.avd_first:
      y = average_pool_3x3(y, self.stride)
    y = self.conv(self.out_planes, (1, 1), padding=0, name='conv3')(y)
    return self.finish(y, x, train, 'bn3')



class CustomBlock(ResidualBlock):
  """Template for a new design: edit this class, then train with block=custom.

  As shipped it is the basic block, so `custom` trains out of the box. Keep the
  contract: build layers only through ``self.conv`` / ``self.norm`` (so dtype
  and BatchNorm settings stay the backbone's), stride the first spatial
  convolution by ``self.stride``, return ``self.out_planes`` channels, and
  combine with ``self.shortcut(x)`` and ``self.drop_branch(branch, train)`` so
  option A/B shortcuts and stochastic depth keep working. Set ``expansion``,
  ``preactivation`` or ``default_shortcut`` as class variables if the design
  needs them. ``tests/test_blocks.py`` checks every registered block.
  """

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    y = self.conv(self.planes, (3, 3), strides=self.stride, name='conv1')(x)
    y = self.norm(name='bn1')(y, relu=True)
    y = self.conv(self.out_planes, (3, 3), name='conv2')(y)
    y = self.norm(name='bn2')(y)
    return nn.relu(self.shortcut(x) + self.drop_branch(y, train))


BLOCKS: dict[str, type[ResidualBlock]] = {
    'basic': BasicBlock,
    'preact': PreActBlock,
    'gated': GatedBlock,
    'stochastic_depth': StochasticDepthBlock,
    'bottleneck': BottleneckBlock,
    'custom': CustomBlock,
    'plain': PlainBlock,
    'se': SEBasicBlock,
    'se_bottleneck': SEBottleneckBlock,
    'resnext': ResNeXtBlock,
    'res2net': Res2NetBlock,
    'split_attention': SplitAttentionBlock,
}


# The fields every block takes from the backbone (and Flax's own); the
# dataclass fields beyond these are a block's hyper-parameters.
CONTRACT_FIELDS = frozenset(
    f.name for f in dataclasses.fields(ResidualBlock)) | {'parent', 'name'}


def hyperparameters(block_cls: type[ResidualBlock]) -> dict[str, Any]:
  """A block's own hyper-parameters and their defaults (MISSING: required).

  They are the block's dataclass fields beyond the contract, so a field
  declared on a block class is settable as ``config.model.block_kwargs.NAME``
  with nothing else to register.
  """
  return {f.name: f.default for f in dataclasses.fields(block_cls)
          if f.init and f.name not in CONTRACT_FIELDS}


def resolve_kwargs(block_cls: type[ResidualBlock], given: Mapping[str, Any],
                   owner: str) -> dict[str, Any]:
  """The block's hyper-parameters: its defaults updated with ``given``.

  Raises errors.ConfigError for a name the block does not take (listing
  the ones it does) and for a required one left out; the block's own
  ``check_hyperparameters`` then checks the values. ``owner`` names the
  block in messages, e.g. "block 'resnext'".
  """
  fields = hyperparameters(block_cls)
  unknown = sorted(set(given) - set(fields))
  if unknown:
    takes = (f'its hyper-parameters are {", ".join(sorted(fields))}' if fields
             else 'it has no hyper-parameters')
    raise errors.ConfigError(
        f'model.block_kwargs.{unknown[0]} is not a field of {owner} '
        f'({block_cls.__name__}); {takes}.')
  resolved = {**fields, **given}
  missing = sorted(k for k, v in resolved.items() if v is dataclasses.MISSING)
  if missing:
    raise errors.ConfigError(
        f'{owner} ({block_cls.__name__}) needs '
        f'{", ".join(f"model.block_kwargs.{k}" for k in missing)}.')
  # An unbound instance runs the block's own checks of the values now,
  # before anything is traced.
  block_cls(in_planes=1, planes=1, stride=1, conv=None, norm=None,
            **resolved)
  return resolved


def _import_block(name: str) -> type[ResidualBlock]:
  """The class of ``module:ClassName``, imported from the user's module."""
  module_name, _, class_name = name.partition(':')
  try:
    module = importlib.import_module(module_name)
  except ModuleNotFoundError as e:
    # Only the module itself missing is a config error; an import failing
    # inside the user's module keeps its traceback.
    if e.name != module_name.split('.')[0] and e.name != module_name:
      raise
    raise errors.ConfigError(
        f'Cannot import module {module_name!r} for block {name!r}: {e}. '
        'Put it on PYTHONPATH, or use a registered block: '
        f'{", ".join(sorted(BLOCKS))}.') from None
  block_cls = getattr(module, class_name, None)
  if block_cls is None:
    raise errors.ConfigError(
        f'Module {module_name!r} has no class {class_name!r}.')
  if not (isinstance(block_cls, type) and
          issubclass(block_cls, ResidualBlock)):
    raise errors.ConfigError(
        f'{name!r} must be a subclass of jax_resnet.blocks.ResidualBlock.')
  return block_cls


def get_block(name: str) -> type[ResidualBlock]:
  """Returns a block class by registry name or ``module:ClassName``.

  ``module:ClassName`` imports a block from the user's own module (found on
  ``sys.path``, e.g. via ``PYTHONPATH``); it must subclass ``ResidualBlock``.
  """
  if ':' in name:
    return _import_block(name)
  if name not in BLOCKS:
    raise errors.ConfigError(
        f'Unknown block {name!r}; valid blocks: {", ".join(sorted(BLOCKS))}, '
        'module:ClassName, or a name registered by a module in '
        'model.block_modules.')
  return BLOCKS[name]


def import_block_modules(modules) -> None:
  """Imports each module of ``config.model.block_modules``.

  Their ``@register_block('name')`` classes join the registry, so
  ``model.block`` can name them. A module that is not found is a config error;
  any other exception while importing it keeps its traceback.
  """
  for module_name in modules:
    try:
      importlib.import_module(module_name)
    except ModuleNotFoundError as e:
      if e.name != module_name.split('.')[0] and e.name != module_name:
        raise
      raise errors.ConfigError(
          f'Cannot import model.block_modules entry {module_name!r}: {e}. '
          'Put it on PYTHONPATH (e.g. PYTHONPATH=.).') from None


def register_block(name: str) -> Callable[[type[ResidualBlock]],
                                          type[ResidualBlock]]:
  """Class decorator that adds a block to the registry under ``name``.

  Registering the same class again (a module imported twice) is a no-op.
  """

  def decorator(cls):
    if BLOCKS.get(name, cls) is not cls:
      raise errors.ConfigError(
          f'Block {name!r} is already registered ({BLOCKS[name].__name__}).')
    BLOCKS[name] = cls
    return cls

  return decorator


def final_survival_probability(block_cls: type[ResidualBlock],
                               final: Any, mode: str) -> float:
  """Checked stochastic-depth settings; returns p_L.

  ``final`` None means the block's default. Raises errors.ConfigError for p_L
  outside (0, 1], an unknown draw ``mode``, or stochastic depth on a block
  without a shortcut.
  """
  if final is None:
    final = block_cls.default_final_survival_probability
  if not 0.0 < final <= 1.0:
    raise errors.ConfigError('model.final_survival_probability must be in '
                             f'(0, 1]; got {final}.')
  if final < 1.0 and not block_cls.has_shortcut:
    raise errors.ConfigError(
        f'{block_cls.__name__} has no shortcut, so dropping its branch would '
        'cut the network; leave model.final_survival_probability unset.')
  if mode not in STOCHASTIC_DEPTH_MODES:
    raise errors.ConfigError(
        f'Unknown model.stochastic_depth_mode {mode!r}; valid: '
        f'{", ".join(STOCHASTIC_DEPTH_MODES)}.')
  return final
