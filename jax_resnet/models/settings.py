"""What every network takes from ``config.model``, as plain values.

``registry.resolve`` reads the config once into a ``Settings``; the network
families build their modules from it and never see the config itself.
"""

import dataclasses
from typing import Any, Mapping, Optional

from jax_resnet import errors


@dataclasses.dataclass(frozen=True)
class Settings:
  """The network-independent model settings.

  Attributes:
    block: ``model.block``: a registry name or ``module:ClassName``.
    depth: ``model.depth``.
    block_kwargs: ``model.block_kwargs`` as given (the block's defaults fill
      the rest).
    shortcut: 'A', 'B', 'conv', 'D' or 'auto'.
    final_survival_probability: stochastic depth p_L; None = the block's.
    stochastic_depth_mode: 'batch' or 'example'.
    bn_momentum: BatchNorm momentum in PyTorch terms.
    bn_epsilon: BatchNorm epsilon.
    dtype: the computation dtype (a jnp dtype).
    scan_blocks: scan over the identical blocks of a stage.
    conv_backend: 'xla' or 'cpu_kernels', resolved for this process.
  """

  block: str
  depth: int
  block_kwargs: Mapping[str, Any]
  shortcut: str
  final_survival_probability: Optional[float]
  stochastic_depth_mode: str
  bn_momentum: float
  bn_epsilon: float
  dtype: Any
  scan_blocks: bool
  conv_backend: str


def own_units(settings: Settings, network: str, noun: str,
              convolutions: tuple[int, int], offset: int,
              shortcut: str) -> tuple[bool, int]:
  """Checks the settings of a network built from its own units.

  PyramidNet and DenseNet take ``model.block`` 'basic' or 'bottleneck' for
  their own kinds of unit, three stages of n units each, and no shortcut
  choice, block hyper-parameters or scan over blocks.

  Args:
    settings: the model settings.
    network: the registry name, for messages.
    noun: what its units are called, e.g. 'dense layers'.
    convolutions: convolutions per basic and per bottleneck unit.
    offset: layers of the depth that are not in units.
    shortcut: what the network does for a shortcut, for the message.

  Returns:
    (bottleneck, n).
  """
  if settings.block not in ('basic', 'bottleneck'):
    raise errors.ConfigError(
        f'Network {network} takes model.block basic or bottleneck (its own '
        f'{noun}); got {settings.block!r}.')
  bottleneck = settings.block == 'bottleneck'
  per_stage = 3 * convolutions[bottleneck]
  if settings.depth < per_stage + offset or (
      settings.depth - offset) % per_stage:
    raise errors.ConfigError(
        f'Network {network} with {settings.block} {noun} needs depth '
        f'{per_stage}n+{offset} with n >= 1; got {settings.depth}.')
  if settings.shortcut != 'auto':
    raise errors.ConfigError(
        f'Network {network} has {shortcut}; leave model.shortcut at '
        f"'auto' (got {settings.shortcut!r}).")
  if settings.block_kwargs:
    raise errors.ConfigError(
        f'Network {network} has no block hyper-parameters (its own are '
        'model fields); leave model.block_kwargs empty.')
  if settings.scan_blocks:
    raise errors.ConfigError(
        f'Network {network} has no identical blocks to scan over (every '
        'unit has its own width); leave model.scan_blocks False.')
  return bottleneck, (settings.depth - offset) // per_stage
