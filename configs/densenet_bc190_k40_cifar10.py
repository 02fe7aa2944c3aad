"""DenseNet-BC-190, k=40, on CIFAR-10 (Huang et al. 2017).

  python main.py --config configs/densenet_bc190_k40_cifar10.py
"""

from configs import default


def get_config():
  """DenseNet-BC-190 (k=40), CIFAR-10."""
  config = default.get_config()
  config.dataset = 'cifar10'
  config.model.name = 'densenet'
  config.model.block = 'bottleneck'
  config.model.depth = 190
  config.model.growth_rate = 40
  config.model.compression = 0.5
  return config
