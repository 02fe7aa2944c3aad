"""ResNet-56 on CIFAR-10: the residual counterpart of plain-56 (He et al. 2015).

  python main.py --config configs/resnet56_cifar10.py
"""

from configs import default


def get_config():
  """ResNet-56, CIFAR-10."""
  config = default.get_config()
  config.dataset = 'cifar10'
  config.model.depth = 56
  return config
