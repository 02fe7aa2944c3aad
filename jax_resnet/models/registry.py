"""The network registry and ``resolve``: ``config.model`` -> one network.

``config.model.name`` picks a network from NETWORKS. ``resolve`` reads
``config.model`` once into plain values (``settings.Settings`` plus the
network's own hyper-parameters) and builds the unbound Flax module; model
creation, validation, the run signature, the summary, the zoo table and the
PyTorch importer all use that one result.
"""

import dataclasses
import inspect
from typing import Any, Callable, Mapping

import flax.linen as nn

from jax_resnet import errors
from jax_resnet.models import blocks
from jax_resnet.models import cifar_resnet
from jax_resnet.models import densenet
from jax_resnet.models import layers
from jax_resnet.models import pyramidnet
from jax_resnet.models import resnet
from jax_resnet.models import resnext
from jax_resnet.models import wide_resnet
from jax_resnet.models.settings import Settings

# Version of the run signature's layout (``ResolvedModel.signature``).
SIGNATURE_VERSION = 2


@dataclasses.dataclass(frozen=True)
class Network:
  """A registered network.

  Attributes:
    create: ``(settings, num_classes, **hyperparameters) -> nn.Module`` with
      ``__call__(x, train)``. Its keyword-only parameters are the network's
      hyper-parameters, set by the ``config.model`` fields of the same names.
    describe: ``(settings, **hyperparameters) -> str``, e.g. 'WRN-28-10';
      it gets every hyper-parameter, the defaults of ``create`` filled in.
  """

  create: Callable[..., nn.Module]
  describe: Callable[..., str]

  @property
  def hyperparameters(self) -> dict[str, Any]:
    """The network's hyper-parameters and their defaults."""
    return {p.name: p.default
            for p in inspect.signature(self.create).parameters.values()
            if p.kind is inspect.Parameter.KEYWORD_ONLY}


NETWORKS: dict[str, Network] = {
    'cifar_resnet': Network(cifar_resnet.create, cifar_resnet.describe),
    'resnet': Network(resnet.create, resnet.describe),
    'resnext': Network(resnext.create, resnext.describe),
    'wide_resnet': Network(wide_resnet.create, wide_resnet.describe),
    'pyramidnet': Network(pyramidnet.create, pyramidnet.describe),
    'densenet': Network(densenet.create, densenet.describe),
}


def network_fields() -> tuple[str, ...]:
  """Every network hyper-parameter (a ``config.model`` field), sorted."""
  return tuple(sorted({name for network in NETWORKS.values()
                       for name in network.hyperparameters}))


@dataclasses.dataclass(frozen=True)
class ResolvedModel:
  """One network, resolved from ``config.model`` once.

  Attributes:
    name: the registry name (``model.name``).
    settings: the network-independent settings.
    network_kwargs: the network's hyper-parameters as set in the config
      (unset ones are left out: the network's defaults apply).
    module: the unbound Flax module; its fields are the plain keyword
      arguments of the network.
    description: e.g. 'WRN-28-10'.
  """

  name: str
  settings: Settings
  network_kwargs: Mapping[str, Any]
  module: nn.Module
  description: str

  @property
  def block_kwargs(self) -> dict[str, Any]:
    """The block's hyper-parameters, defaults included ({} for networks
    whose blocks have none)."""
    return dict(getattr(self.module, 'block_kwargs', {}))

  @property
  def hyperparameters(self) -> dict[str, Any]:
    """The network's hyper-parameters, defaults included."""
    return {**NETWORKS[self.name].hyperparameters, **self.network_kwargs}

  def signature(self, dataset: str) -> dict[str, Any]:
    """What a checkpoint must share with the run that restores it: whatever
    changes the parameter tree or what the network computes."""
    return {
        'version': SIGNATURE_VERSION,
        'dataset': dataset,
        'name': self.name,
        'block': self.settings.block,
        'depth': self.settings.depth,
        'scan_blocks': self.settings.scan_blocks,
        'block_kwargs': _json_values(
            {k: v for k, v in self.block_kwargs.items()
             if LATER_BLOCK_HYPERPARAMETERS.get(self.settings.block, {}).get(
                 k, _NONE) != v}),
        'network_kwargs': _json_values(
            {k: v for k, v in self.hyperparameters.items()
             if LATER_HYPERPARAMETERS.get(k, _NONE) != v}),
        'shortcut': getattr(self.module, 'shortcut_type', None),
        'final_survival_probability': getattr(
            self.module, 'final_survival_probability', None),
    }


# Hyper-parameters added after signature version 2, at the values that
# change nothing: left out of the signature there, so that workdirs written
# before them still fit.
LATER_HYPERPARAMETERS = {'stem': 'cifar', 'stage_blocks': None,
                         'stage_planes': None}
# Block hyper-parameters added later, by block, at the values that compute
# what the block computed before them: left out of the signature there, so
# that a run trained before them resumes with those values (split_attention
# gained ResNeSt's average-pool downsampling, on by default).
LATER_BLOCK_HYPERPARAMETERS = {
    'split_attention': {'avd': False, 'avd_first': False}}
_NONE = object()


def _json_values(values: Mapping[str, Any]) -> dict[str, Any]:
  """Values as JSON stores them (tuples become lists), sorted by name."""
  return {k: list(v) if isinstance(v, tuple) else v
          for k, v in sorted(values.items())}


def get_network(name: str) -> Network:
  """The registered network ``name``; unknown names list the valid ones."""
  if name not in NETWORKS:
    raise errors.ConfigError(f'Unknown model.name {name!r}; valid networks: '
                             f'{", ".join(sorted(NETWORKS))}.')
  return NETWORKS[name]


def resolve(model_config: Mapping[str, Any], num_classes: int
            ) -> ResolvedModel:
  """Reads ``config.model`` once and builds the network it names.

  Args:
    model_config: ``config.model`` (a ConfigDict or a plain mapping).
    num_classes: outputs of the head.

  Returns:
    The resolved network.

  Raises:
    errors.ConfigError: an unknown network, block, block field or value, or
      a network hyper-parameter the network does not take.
  """
  get = model_config.get
  blocks.import_block_modules(get('block_modules') or ())
  name = get('name', 'cifar_resnet')
  network = get_network(name)
  block_kwargs = get('block_kwargs') or {}
  if hasattr(block_kwargs, 'to_dict'):
    block_kwargs = block_kwargs.to_dict()
  settings = Settings(
      block=get('block'), depth=get('depth'), block_kwargs=dict(block_kwargs),
      shortcut=get('shortcut', 'auto'),
      final_survival_probability=get('final_survival_probability'),
      stochastic_depth_mode=get('stochastic_depth_mode', 'batch'),
      bn_momentum=get('bn_momentum', 0.1), bn_epsilon=get('bn_epsilon', 1e-5),
      dtype=layers.dtype_of(get('dtype', 'float32')),
      scan_blocks=get('scan_blocks', False),
      conv_backend=layers.conv_backend_of(get('conv_backend', 'auto')))
  taken = network.hyperparameters
  network_kwargs = {}
  for field in network_fields():
    value = get(field)
    if value is None:
      continue
    if field not in taken:
      takers = sorted(n for n, net in NETWORKS.items()
                      if field in net.hyperparameters)
      raise errors.ConfigError(
          f'model.{field} does not apply to network {name!r}; networks that '
          f'take it: {", ".join(takers)}. Leave it unset (None) otherwise.')
    network_kwargs[field] = value
  module = network.create(settings, num_classes, **network_kwargs)
  return ResolvedModel(
      name=name, settings=settings, network_kwargs=network_kwargs,
      module=module, description=network.describe(
          settings, **{**network.hyperparameters, **network_kwargs}))


def create_model(model_config: Mapping[str, Any],
                 num_classes: int) -> nn.Module:
  """The unbound Flax module of ``config.model`` (``resolve(...).module``)."""
  return resolve(model_config, num_classes).module
