"""WRN-40-4 on CIFAR-10 (Zagoruyko & Komodakis 2016, 8.9M parameters).

  python main.py --config configs/wrn40_4_cifar10.py
"""

from configs import default


def get_config():
  """WRN-40-4, CIFAR-10."""
  config = default.get_config()
  config.dataset = 'cifar10'
  config.model.name = 'wide_resnet'
  config.model.depth = 40
  config.model.widen_factor = 4
  return config
