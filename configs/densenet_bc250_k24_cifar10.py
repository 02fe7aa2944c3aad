"""DenseNet-BC-250, k=24, on CIFAR-10 (Huang et al. 2017).

  python main.py --config configs/densenet_bc250_k24_cifar10.py
"""

from configs import default


def get_config():
  """DenseNet-BC-250 (k=24), CIFAR-10."""
  config = default.get_config()
  config.dataset = 'cifar10'
  config.model.name = 'densenet'
  config.model.block = 'bottleneck'
  config.model.depth = 250
  config.model.growth_rate = 24
  config.model.compression = 0.5
  return config
