"""ResNeXt-29 16x64d on CIFAR-10 (Xie et al. 2017).

  python main.py --config configs/resnext29_16x64d_cifar10.py
"""

from configs import default


def get_config():
  """ResNeXt-29, cardinality 16, base width 64, CIFAR-10."""
  config = default.get_config()
  config.dataset = 'cifar10'
  config.model.name = 'resnext'
  config.model.block = 'resnext'
  config.model.depth = 29
  config.model.block_kwargs.cardinality = 16
  config.model.block_kwargs.base_width = 64
  return config
