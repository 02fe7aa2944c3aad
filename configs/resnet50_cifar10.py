"""ResNet-50 with the CIFAR stem on CIFAR-10.

  python main.py --config configs/resnet50_cifar10.py
"""

from configs import default


def get_config():
  """ResNet-50, CIFAR-10."""
  config = default.get_config()
  config.dataset = 'cifar10'
  config.model.name = 'resnet'
  config.model.block = 'bottleneck'
  config.model.depth = 50
  return config
