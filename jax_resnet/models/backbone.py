"""The residual backbone: stem, stages of any registered block, pool, head.

``CifarResNet`` is the backbone of every residual network here: the CIFAR
ResNets, the ImageNet ResNet layouts, ResNeXt-29 and the wide ResNets differ
only in layout (``cifar_resnet.py``, ``resnet.py``, ``resnext.py``,
``wide_resnet.py``). PyramidNet and DenseNet have backbones of their own.
"""

from typing import Any, Mapping, Optional, Sequence

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp

from jax_resnet import errors
from jax_resnet.models import blocks
from jax_resnet.models import layers
from jax_resnet.models import settings as model_settings


class _ScannedBlock(nn.Module):
  """One block as an ``nn.scan`` body: (x, survival probability) -> x."""

  block_cls: Any
  block_kwargs: dict[str, Any]
  train: bool
  stochastic: bool

  @nn.compact
  def __call__(self, x: jax.Array, survival_probability: jax.Array):
    block = self.block_cls(
        survival_probability=survival_probability if self.stochastic else 1.0,
        name='block', **self.block_kwargs)
    return blocks.call_checked(block, x, self.train), None


# The stems: 'cifar' (a 3x3 convolution, stride 1) and 'imagenet' (a 7x7
# stride-2 convolution and a 3x3 stride-2 max pool, as torchvision's ResNet:
# on 32x32 CIFAR images it leaves the first stage 8x8).
STEMS = ('cifar', 'imagenet')


def check_stem(stem: str) -> None:
  if stem not in STEMS:
    raise errors.ConfigError(f'Unknown model.stem {stem!r}; valid: '
                             f'{", ".join(STEMS)}.')


def stage_layout(settings: model_settings.Settings,
                 stage_blocks: Optional[Sequence[int]],
                 stage_planes: Optional[Sequence[int]],
                 default_blocks: Sequence[int],
                 default_planes: Sequence[int],
                 convs_per_block: int) -> tuple[tuple[int, ...],
                                                tuple[int, ...]]:
  """Blocks and planes per stage: the network's, or ``model.stage_blocks``
  and ``model.stage_planes``.

  Given stage blocks fix the depth, ``convs_per_block * sum(blocks) + 2``
  (the stem and the head), and ``model.depth`` must state it, so a run's
  depth always says what it trains.
  """
  blocks_ = tuple(default_blocks if stage_blocks is None else stage_blocks)
  planes = tuple(default_planes if stage_planes is None else stage_planes)
  if not blocks_ or any(int(b) != b or b < 1 for b in blocks_):
    raise errors.ConfigError(
        f'model.stage_blocks must be positive block counts, one per stage; '
        f'got {stage_blocks}.')
  if any(int(p) != p or p < 1 for p in planes):
    raise errors.ConfigError(
        f'model.stage_planes must be positive channel counts; got '
        f'{stage_planes}.')
  if len(planes) != len(blocks_):
    raise errors.ConfigError(
        f'{len(blocks_)} stages of blocks ({list(blocks_)}) but '
        f'{len(planes)} of planes ({list(planes)}); set model.stage_blocks '
        'and model.stage_planes to the same number of stages.')
  if stage_blocks is not None:
    depth = convs_per_block * sum(blocks_) + 2
    if settings.depth != depth:
      raise errors.ConfigError(
          f'model.stage_blocks {list(blocks_)} of {convs_per_block}-'
          f'convolution blocks make depth {depth}; set model.depth={depth} '
          f'(got {settings.depth}).')
  return tuple(int(b) for b in blocks_), tuple(int(p) for p in planes)


class CifarResNet(nn.Module):
  """A stem, stages of blocks, pool, dense head.

  The CIFAR ResNet is three stages of 16/32/64 planes; the other residual
  networks (``NETWORKS``) change the stage sizes and planes, the stem width and
  the block. Every stage after the first starts with a stride-2 block.

  The first block of a stage (which may change stride and width) is
  ``stage{s}_block1``; with ``scan_blocks`` the stage's remaining identical
  blocks are one ``nn.scan`` over ``stage{s}_blocks`` whose parameters carry a
  leading block axis, so compile time does not grow with depth.

  Attributes:
    block_cls: a ``blocks.ResidualBlock`` subclass.
    stage_sizes: blocks per stage.
    num_classes: outputs of the dense head.
    stage_planes: base planes per stage.
    stem_planes: stem output channels; None uses ``stage_planes[0]``.
    stem: 'cifar' or 'imagenet' (``STEMS``).
    block_kwargs: the block's hyper-parameters, e.g. ``{'cardinality': 8}``.
    shortcut_type: 'A', 'B', 'conv' or 'D' (see blocks.ResidualBlock).
    final_survival_probability: stochastic depth p_L; 1.0 disables it.
    stochastic_depth_mode: 'batch' or 'example'.
    bn_momentum: BatchNorm momentum in PyTorch terms (weight of the new batch).
    bn_epsilon: BatchNorm epsilon.
    dtype: computation dtype; parameters stay float32.
    scan_blocks: scan over blocks 2..n of each stage instead of unrolling.
    conv_backend: ``cpu_kernels.BACKENDS``: XLA or the project's CPU
      kernels for convolutions and BatchNorm.
    weight_init: initialisers of the convolutions and the head.
  """

  block_cls: Any
  stage_sizes: Sequence[int]
  num_classes: int
  stage_planes: Sequence[int] = (16, 32, 64)
  stem_planes: Optional[int] = None
  stem: str = 'cifar'
  block_kwargs: Mapping[str, Any] = flax.core.FrozenDict()
  shortcut_type: str = 'A'
  final_survival_probability: float = 1.0
  stochastic_depth_mode: str = 'batch'
  bn_momentum: float = 0.1
  bn_epsilon: float = 1e-5
  dtype: Any = jnp.float32
  scan_blocks: bool = False
  weight_init: layers.Init = layers.CIFAR_RESNET_INIT
  conv_backend: str = 'auto'

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    conv = layers.conv_partial(self.dtype, self.weight_init,
                               canonical_gradients=self.scan_blocks,
                               backend=self.conv_backend)
    norm = layers.norm_partial(train, self.bn_momentum, self.bn_epsilon,
                               self.dtype, backend=self.conv_backend)
    preact = self.block_cls.preactivation
    stem_planes = self.stem_planes or self.stage_planes[0]

    if self.stem == 'imagenet':
      x = conv(stem_planes, (7, 7), strides=(2, 2), padding=3,
               name='stem_conv')(x)
      x = norm(name='stem_bn')(x, relu=True)
      x = nn.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))
    else:
      x = conv(stem_planes, (3, 3), name='stem_conv')(x)
      if not preact:
        x = norm(name='stem_bn')(x, relu=True)

    num_blocks = sum(self.stage_sizes)
    survival = blocks.survival_probabilities(num_blocks,
                                             self.final_survival_probability)
    stochastic = self.final_survival_probability < 1.0
    in_planes = stem_planes
    index = 0
    for stage, (size, planes) in enumerate(
        zip(self.stage_sizes, self.stage_planes)):
      common = dict(planes=planes, conv=conv, norm=norm,
                    shortcut_type=self.shortcut_type,
                    stochastic_depth_mode=self.stochastic_depth_mode,
                    **self.block_kwargs)
      first = self.block_cls(
          in_planes=in_planes, stride=2 if stage > 0 else 1,
          survival_probability=survival[index],
          name=f'stage{stage + 1}_block1', **common)
      x = blocks.call_checked(first, x, train)
      in_planes = first.out_planes
      index += 1
      rest = survival[index:index + size - 1]
      if rest and self.scan_blocks:
        scanned = nn.scan(
            _ScannedBlock, variable_axes={'params': 0, 'batch_stats': 0},
            split_rngs={'params': True, layers.TRAINING_RNG: True},
            in_axes=0, length=len(rest))
        x, _ = scanned(
            block_cls=self.block_cls,
            block_kwargs=dict(in_planes=in_planes, stride=1, **common),
            train=train, stochastic=stochastic,
            name=f'stage{stage + 1}_blocks')(x, jnp.asarray(rest, jnp.float32))
      else:
        for b, p in enumerate(rest, start=2):
          x = blocks.call_checked(
              self.block_cls(in_planes=in_planes, stride=1,
                             survival_probability=p,
                             name=f'stage{stage + 1}_block{b}', **common),
              x, train)
      index += len(rest)

    if preact:
      x = norm(name='final_bn')(x, relu=True)
    return layers.classifier(x, self.num_classes, self.dtype,
                             self.weight_init)


def create_residual_network(settings: model_settings.Settings,
                            num_classes: int, *,
                            block_cls: type[blocks.ResidualBlock],
                            stage_sizes: Sequence[int],
                            stage_planes: Sequence[int],
                            stem_planes: Optional[int] = None,
                            stem: str = 'cifar',
                            block_kwargs: Optional[Mapping[str, Any]] = None,
                            default_shortcut: Optional[str] = None,
                            weight_init: layers.Init = layers.CIFAR_RESNET_INIT
                            ) -> CifarResNet:
  """A CifarResNet with the given layout and the model settings.

  Args:
    settings: the model settings (shortcut, stochastic depth, BatchNorm,
      dtype, scan_blocks, conv_backend, block_kwargs).
    num_classes: outputs of the head.
    block_cls: the block class.
    stage_sizes: blocks per stage.
    stage_planes: base planes per stage.
    stem_planes: stem channels; None = ``stage_planes[0]``.
    stem: 'cifar' or 'imagenet' (``STEMS``).
    block_kwargs: the block's hyper-parameters, resolved; None resolves
      ``settings.block_kwargs``.
    default_shortcut: what shortcut 'auto' means; None = the block's default.
    weight_init: initialisers of the convolutions and the head.

  Returns:
    The (unbound) network.
  """
  check_stem(stem)
  if block_kwargs is None:
    block_kwargs = blocks.resolve_kwargs(block_cls, settings.block_kwargs,
                                         f'block {settings.block!r}')
  shortcut = settings.shortcut
  if shortcut == 'auto':
    shortcut = default_shortcut or block_cls.default_shortcut
  if shortcut not in blocks.SHORTCUT_TYPES:
    raise errors.ConfigError(
        f'Unknown model.shortcut {shortcut!r}; valid: auto, '
        f'{", ".join(blocks.SHORTCUT_TYPES)}.')
  return CifarResNet(
      block_cls=block_cls,
      stage_sizes=tuple(stage_sizes),
      num_classes=num_classes,
      stage_planes=tuple(stage_planes),
      stem_planes=stem_planes,
      stem=stem,
      block_kwargs=flax.core.FrozenDict(block_kwargs),
      shortcut_type=shortcut,
      final_survival_probability=blocks.final_survival_probability(
          block_cls, settings.final_survival_probability,
          settings.stochastic_depth_mode),
      stochastic_depth_mode=settings.stochastic_depth_mode,
      bn_momentum=settings.bn_momentum,
      bn_epsilon=settings.bn_epsilon,
      dtype=settings.dtype,
      scan_blocks=settings.scan_blocks,
      weight_init=weight_init,
      conv_backend=settings.conv_backend)


def stack_scanned_blocks(tree: dict[str, Any]) -> dict[str, Any]:
  """Unrolled layout (``stage{s}_block{b}``, b >= 2) -> scanned layout.

  Works on any variable collection (params or batch_stats) of a CifarResNet;
  the scanned layout keeps ``stage{s}_block1`` and stacks blocks 2..n of each
  stage on a leading axis under ``stage{s}_blocks/block``.
  """
  out, stacks = {}, {}
  for name, value in tree.items():
    stage, _, index = name.partition('_block')
    if name.startswith('stage') and index.isdigit() and int(index) >= 2:
      stacks.setdefault(stage, {})[int(index)] = value
    else:
      out[name] = value
  for stage, members in stacks.items():
    ordered = [members[i] for i in sorted(members)]
    if sorted(members) != list(range(2, len(members) + 2)):
      raise ValueError(f'{stage}: blocks {sorted(members)} are not 2..n.')
    out[f'{stage}_blocks'] = {
        'block': jax.tree.map(lambda *xs: jnp.stack(xs), *ordered)}
  return out


def unstack_scanned_blocks(tree: dict[str, Any]) -> dict[str, Any]:
  """Scanned layout -> unrolled layout; the inverse of stack_scanned_blocks."""
  out = {}
  for name, value in tree.items():
    if name.startswith('stage') and name.endswith('_blocks'):
      stage = name[:-len('_blocks')]
      stacked = value['block']
      length = jax.tree.leaves(stacked)[0].shape[0]
      for i in range(length):
        out[f'{stage}_block{i + 2}'] = jax.tree.map(lambda x, i=i: x[i],
                                                    stacked)
    else:
      out[name] = value
  return out
