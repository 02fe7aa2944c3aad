"""WRN-28-10 with dropout 0.3 on CIFAR-10 (Zagoruyko & Komodakis 2016).

  python main.py --config configs/wrn28_10_cifar10.py
"""

from configs import default


def get_config():
  """WRN-28-10, dropout 0.3, CIFAR-10: the paper's best CIFAR setting."""
  config = default.get_config()
  config.dataset = 'cifar10'
  config.model.name = 'wide_resnet'
  config.model.depth = 28
  config.model.widen_factor = 10
  config.model.dropout_rate = 0.3
  return config
