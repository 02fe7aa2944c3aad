"""Plain-56 on CIFAR-10: ResNet-56 without shortcuts (He et al. 2015).

  python main.py --config configs/plain56_cifar10.py
"""

from configs import default


def get_config():
  """Plain-56, CIFAR-10."""
  config = default.get_config()
  config.dataset = 'cifar10'
  config.model.block = 'plain'
  config.model.depth = 56
  return config
