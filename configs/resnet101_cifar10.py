"""ResNet-101 with the CIFAR stem on CIFAR-10.

  python main.py --config configs/resnet101_cifar10.py
"""

from configs import default


def get_config():
  """ResNet-101, CIFAR-10."""
  config = default.get_config()
  config.dataset = 'cifar10'
  config.model.name = 'resnet'
  config.model.block = 'bottleneck'
  config.model.depth = 101
  return config
