"""ResNet-1202 on CIFAR-10 (He et al. 2015, 19.4M parameters).

  python main.py --config configs/resnet1202_cifar10.py
"""

from configs import default


def get_config():
  """ResNet-1202, CIFAR-10: 200 blocks per stage."""
  config = default.get_config()
  config.dataset = 'cifar10'
  config.model.depth = 1202
  return config
