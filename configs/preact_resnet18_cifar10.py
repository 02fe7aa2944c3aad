"""PreAct-ResNet-18 with the CIFAR stem on CIFAR-10 (He et al. 2016).

  python main.py --config configs/preact_resnet18_cifar10.py
"""

from configs import default


def get_config():
  """PreAct-ResNet-18, CIFAR-10."""
  config = default.get_config()
  config.dataset = 'cifar10'
  config.model.name = 'resnet'
  config.model.block = 'preact'
  config.model.depth = 18
  return config
