"""The network registry and ``create_model``.

``config.model.name`` picks a network from NETWORKS; each entry builds it
from ``config.model`` and names it.
"""

import dataclasses
from typing import Any, Callable

import flax.linen as nn

from jax_resnet.models import cifar_resnet
from jax_resnet.models import densenet
from jax_resnet.models import pyramidnet
from jax_resnet.models import resnet
from jax_resnet.models import resnext
from jax_resnet.models import wide_resnet
from jax_resnet.models import backbone


@dataclasses.dataclass(frozen=True)
class Network:
  """A registered network: its builder, a display name and its own fields.

  Attributes:
    create: ``(config.model, num_classes) -> nn.Module`` with
      ``__call__(x, train)``, ``shortcut_type`` and
      ``final_survival_probability`` (read by the run signature).
    describe: ``config.model -> str``, e.g. 'WRN-28-10'.
    fields: the NETWORK_FIELDS it reads; setting any other one is an error.
  """

  create: Callable[[Any, int], nn.Module]
  describe: Callable[[Any], str]
  fields: tuple[str, ...] = ()


NETWORKS: dict[str, Network] = {
    'cifar_resnet': Network(backbone.residual_network(cifar_resnet.layout),
                            cifar_resnet.describe),
    'resnet': Network(backbone.residual_network(resnet.layout),
                      resnet.describe),
    'resnext': Network(backbone.residual_network(resnext.layout),
                       resnext.describe),
    'wide_resnet': Network(backbone.residual_network(wide_resnet.layout),
                           wide_resnet.describe, wide_resnet.FIELDS),
    'pyramidnet': Network(pyramidnet.create, pyramidnet.describe,
                          pyramidnet.FIELDS),
    'densenet': Network(densenet.create, densenet.describe, densenet.FIELDS),
}

# Network hyper-parameters in config.model; None there keeps the network's
# default.
NETWORK_FIELDS = ('widen_factor', 'dropout_rate', 'pyramid_alpha',
                  'growth_rate', 'compression')


def get_network(name: str) -> Network:
  """The registered network ``name``; unknown names list the valid ones."""
  if name not in NETWORKS:
    raise ValueError(f'Unknown model.name {name!r}; valid networks: '
                     f'{", ".join(sorted(NETWORKS))}.')
  return NETWORKS[name]


def describe(model_config) -> str:
  """A human name of the configured network, e.g. 'WRN-28-10'."""
  return get_network(model_config.get('name', 'cifar_resnet')).describe(
      model_config)


def create_model(model_config, num_classes: int) -> nn.Module:
  """Builds the network ``config.model.name`` (default 'cifar_resnet')."""
  name = model_config.get('name', 'cifar_resnet')
  network = get_network(name)
  for field in NETWORK_FIELDS:
    if model_config.get(field) is not None and field not in network.fields:
      takers = sorted(n for n, net in NETWORKS.items() if field in net.fields)
      raise ValueError(
          f'model.{field} does not apply to network {name!r}; networks that '
          f'take it: {", ".join(takers)}. Leave it unset (None) otherwise.')
  return network.create(model_config, num_classes)
