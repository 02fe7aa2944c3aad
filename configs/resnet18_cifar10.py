"""ResNet-18 with the CIFAR stem on CIFAR-10 (11.17M parameters).

  python main.py --config configs/resnet18_cifar10.py
"""

from configs import default


def get_config():
  """ResNet-18, CIFAR-10."""
  config = default.get_config()
  config.dataset = 'cifar10'
  config.model.name = 'resnet'
  config.model.depth = 18
  return config
