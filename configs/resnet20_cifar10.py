"""ResNet-20 on CIFAR-10, the benchmark's first setting.

  python main.py --config configs/resnet20_cifar10.py
"""

from configs import default


def get_config():
  """ResNet-20, CIFAR-10: the defaults."""
  config = default.get_config()
  config.dataset = 'cifar10'
  config.model.depth = 20
  return config
