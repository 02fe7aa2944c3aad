"""ResNet-34 with the CIFAR stem on CIFAR-10.

  python main.py --config configs/resnet34_cifar10.py
"""

from configs import default


def get_config():
  """ResNet-34, CIFAR-10."""
  config = default.get_config()
  config.dataset = 'cifar10'
  config.model.name = 'resnet'
  config.model.depth = 34
  return config
