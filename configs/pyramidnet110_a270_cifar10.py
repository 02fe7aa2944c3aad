"""PyramidNet-110, alpha 270, on CIFAR-10 (Han et al. 2017).

  python main.py --config configs/pyramidnet110_a270_cifar10.py
"""

from configs import default


def get_config():
  """PyramidNet-110 (alpha 270, basic blocks), CIFAR-10."""
  config = default.get_config()
  config.dataset = 'cifar10'
  config.model.name = 'pyramidnet'
  config.model.depth = 110
  config.model.pyramid_alpha = 270
  return config
