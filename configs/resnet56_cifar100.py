"""ResNet-56 on CIFAR-100, the benchmark's second setting.

  python main.py --config configs/resnet56_cifar100.py
"""

from configs import default


def get_config():
  """ResNet-56, CIFAR-100."""
  config = default.get_config()
  config.dataset = 'cifar100'
  config.model.depth = 56
  return config
