"""ResNet-110 on CIFAR-100, the benchmark's third setting.

  python main.py --config configs/resnet110_cifar100.py
"""

from configs import default


def get_config():
  """ResNet-110, CIFAR-100."""
  config = default.get_config()
  config.dataset = 'cifar100'
  config.model.depth = 110
  return config
