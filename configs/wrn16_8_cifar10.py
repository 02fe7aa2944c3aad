"""WRN-16-8 on CIFAR-10 (Zagoruyko & Komodakis 2016, 11.0M parameters).

  python main.py --config configs/wrn16_8_cifar10.py
"""

from configs import default


def get_config():
  """WRN-16-8, CIFAR-10."""
  config = default.get_config()
  config.dataset = 'cifar10'
  config.model.name = 'wide_resnet'
  config.model.depth = 16
  config.model.widen_factor = 8
  return config
