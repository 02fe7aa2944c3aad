"""Residual blocks and the block registry.

Every block is built from ``(in_planes, planes, stride)`` plus the ``conv`` and
``norm`` partials that the backbone hands it, declares ``expansion`` and returns
``planes * expansion`` channels. Shortcut handling, stochastic depth and the
registry live here so that a new block only writes its residual branch.
"""

import importlib
from typing import Any, Callable, ClassVar

import flax.linen as nn
import jax
import jax.numpy as jnp

ModuleDef = Any

SHORTCUT_TYPES = ('A', 'B')
STOCHASTIC_DEPTH_MODES = ('batch', 'example')


def shortcut_option_a(x: jax.Array, out_channels: int, stride: int) -> jax.Array:
  """Parameter-free shortcut: strided subsampling plus zero channel padding."""
  if stride > 1:
    x = x[:, ::stride, ::stride, :]
  extra = out_channels - x.shape[-1]
  if extra < 0:
    raise ValueError(
        f'Option-A shortcut cannot reduce channels ({x.shape[-1]} -> '
        f'{out_channels}); use shortcut "B".')
  if extra:
    # Split the zero channels on both sides, as the He et al. CIFAR code does.
    x = jnp.pad(x, ((0, 0), (0, 0), (0, 0), (extra // 2, extra - extra // 2)))
  return x


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
    norm: ``nn.BatchNorm`` partial (momentum, epsilon, train flag, dtype).
    shortcut_type: 'A' (parameter-free) or 'B' (1x1 conv + BN) when the
      shape changes; identity otherwise.
    survival_probability: probability that the residual branch is kept in
      training (stochastic depth); 1.0 disables it.
    stochastic_depth_mode: 'batch' draws one keep/drop per mini-batch (Huang et
      al.), 'example' one per example.
  """

  in_planes: int
  planes: int
  stride: int
  conv: ModuleDef
  norm: ModuleDef
  shortcut_type: str = 'A'
  survival_probability: float = 1.0
  stochastic_depth_mode: str = 'batch'

  expansion: ClassVar[int] = 1
  # Pre-activation blocks leave the stem without BN-ReLU and need a final
  # BN-ReLU before pooling; the backbone reads this flag.
  preactivation: ClassVar[bool] = False
  # Default final survival probability used when the config does not set one.
  default_final_survival_probability: ClassVar[float] = 1.0
  # Default shortcut when the config says 'auto'.
  default_shortcut: ClassVar[str] = 'A'

  @property
  def out_planes(self) -> int:
    return self.planes * self.expansion

  @property
  def needs_projection(self) -> bool:
    return self.stride != 1 or self.in_planes != self.out_planes

  def shortcut(self, x: jax.Array) -> jax.Array:
    """Identity, or option A / B when stride or channels change."""
    if not self.needs_projection:
      return x
    if self.shortcut_type == 'A':
      return shortcut_option_a(x, self.out_planes, self.stride)
    if self.shortcut_type == 'B':
      x = self.conv(self.out_planes, (1, 1), strides=self.stride, padding=0,
                    name='shortcut_conv')(x)
      return self.norm(name='shortcut_bn')(x)
    raise ValueError(f'Unknown shortcut {self.shortcut_type!r}; valid: '
                     f'{", ".join(SHORTCUT_TYPES)}.')

  def drop_branch(self, branch: jax.Array, train: bool) -> jax.Array:
    """Stochastic depth on the residual branch (Huang et al. 2016).

    Training keeps the branch with probability ``survival_probability``;
    evaluation scales it by that probability.
    """
    p = self.survival_probability
    if p >= 1.0:
      return branch
    if not train:
      return branch * jnp.asarray(p, branch.dtype)
    rng = self.make_rng('stochastic_depth')
    if self.stochastic_depth_mode == 'batch':
      shape = ()
    elif self.stochastic_depth_mode == 'example':
      shape = (branch.shape[0],) + (1,) * (branch.ndim - 1)
    else:
      raise ValueError(
          f'Unknown stochastic_depth_mode {self.stochastic_depth_mode!r}; '
          f'valid: {", ".join(STOCHASTIC_DEPTH_MODES)}.')
    keep = jax.random.bernoulli(rng, p, shape)
    return branch * keep.astype(branch.dtype)


class BasicBlock(ResidualBlock):
  """conv-BN-ReLU-conv-BN, add, ReLU (He et al. 2015)."""

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    y = self.conv(self.planes, (3, 3), strides=self.stride, name='conv1')(x)
    y = nn.relu(self.norm(name='bn1')(y))
    y = self.conv(self.planes, (3, 3), name='conv2')(y)
    y = self.norm(name='bn2')(y)
    return nn.relu(self.shortcut(x) + self.drop_branch(y, train))


class PreActBlock(ResidualBlock):
  """BN-ReLU-conv-BN-ReLU-conv, add (He et al. 2016, identity mappings).

  A changed shape takes its shortcut from the pre-activated input, as in the
  reference implementation.
  """

  preactivation: ClassVar[bool] = True

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    pre = nn.relu(self.norm(name='bn1')(x))
    shortcut = self.shortcut(pre) if self.needs_projection else x
    y = self.conv(self.planes, (3, 3), strides=self.stride, name='conv1')(pre)
    y = nn.relu(self.norm(name='bn2')(y))
    y = self.conv(self.planes, (3, 3), name='conv2')(y)
    return shortcut + self.drop_branch(y, train)


class GatedBlock(ResidualBlock):
  """Basic block whose branch is scaled by a learnable scalar, initialised to 0.

  ReZero-style gating: every block starts as (ReLU of) its shortcut, so a deep
  network starts as a shallow one.
  """

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    y = self.conv(self.planes, (3, 3), strides=self.stride, name='conv1')(x)
    y = nn.relu(self.norm(name='bn1')(y))
    y = self.conv(self.planes, (3, 3), name='conv2')(y)
    y = self.norm(name='bn2')(y)
    gate = self.param('gate', nn.initializers.zeros, (), jnp.float32)
    y = y * gate.astype(y.dtype)
    return nn.relu(self.shortcut(x) + self.drop_branch(y, train))


class StochasticDepthBlock(BasicBlock):
  """Basic block with stochastic depth, final survival probability 0.5."""

  default_final_survival_probability: ClassVar[float] = 0.5


class BottleneckBlock(ResidualBlock):
  """1x1-3x3-1x1 bottleneck, expansion 4, stride on the 3x3 convolution."""

  expansion: ClassVar[int] = 4
  default_shortcut: ClassVar[str] = 'B'

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    y = self.conv(self.planes, (1, 1), padding=0, name='conv1')(x)
    y = nn.relu(self.norm(name='bn1')(y))
    y = self.conv(self.planes, (3, 3), strides=self.stride, name='conv2')(y)
    y = nn.relu(self.norm(name='bn2')(y))
    y = self.conv(self.out_planes, (1, 1), padding=0, name='conv3')(y)
    y = self.norm(name='bn3')(y)
    return nn.relu(self.shortcut(x) + self.drop_branch(y, train))


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
    y = nn.relu(self.norm(name='bn1')(y))
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
}


def get_block(name: str) -> type[ResidualBlock]:
  """Returns a block class by registry name or ``module:ClassName``.

  ``module:ClassName`` imports a block from the user's own module (found on
  ``sys.path``, e.g. via ``PYTHONPATH``); it must subclass ``ResidualBlock``.
  """
  if ':' in name:
    module_name, _, class_name = name.partition(':')
    try:
      module = importlib.import_module(module_name)
    except ImportError as e:
      raise ValueError(
          f'Cannot import module {module_name!r} for block {name!r}: {e}. '
          'Put it on PYTHONPATH, or use a registered block: '
          f'{", ".join(sorted(BLOCKS))}.') from e
    block_cls = getattr(module, class_name, None)
    if block_cls is None:
      raise ValueError(f'Module {module_name!r} has no class {class_name!r}.')
    if not (isinstance(block_cls, type) and
            issubclass(block_cls, ResidualBlock)):
      raise ValueError(
          f'{name!r} must be a subclass of jax_resnet.blocks.ResidualBlock.')
    return block_cls
  if name not in BLOCKS:
    raise ValueError(f'Unknown block {name!r}; valid blocks: '
                     f'{", ".join(sorted(BLOCKS))}, or module:ClassName.')
  return BLOCKS[name]


def register_block(name: str) -> Callable[[type[ResidualBlock]],
                                          type[ResidualBlock]]:
  """Class decorator that adds a block to the registry under ``name``."""

  def decorator(cls):
    if name in BLOCKS:
      raise ValueError(f'Block {name!r} is already registered.')
    BLOCKS[name] = cls
    return cls

  return decorator
