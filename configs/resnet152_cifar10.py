"""ResNet-152 with the CIFAR stem on CIFAR-10.

  python main.py --config configs/resnet152_cifar10.py
"""

from configs import default


def get_config():
  """ResNet-152, CIFAR-10."""
  config = default.get_config()
  config.dataset = 'cifar10'
  config.model.name = 'resnet'
  config.model.block = 'bottleneck'
  config.model.depth = 152
  return config
