"""DenseNet-BC-100, k=12, on CIFAR-10 (Huang et al. 2017).

  python main.py --config configs/densenet_bc100_k12_cifar10.py
"""

from configs import default


def get_config():
  """DenseNet-BC-100 (k=12), CIFAR-10."""
  config = default.get_config()
  config.dataset = 'cifar10'
  config.model.name = 'densenet'
  config.model.block = 'bottleneck'
  config.model.depth = 100
  config.model.growth_rate = 12
  config.model.compression = 0.5
  return config
