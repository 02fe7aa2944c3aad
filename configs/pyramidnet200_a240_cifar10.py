"""PyramidNet-200, alpha 240, bottleneck, on CIFAR-10 (Han et al. 2017).

  python main.py --config configs/pyramidnet200_a240_cifar10.py
"""

from configs import default


def get_config():
  """PyramidNet-200 (alpha 240, bottleneck blocks), CIFAR-10."""
  config = default.get_config()
  config.dataset = 'cifar10'
  config.model.name = 'pyramidnet'
  config.model.block = 'bottleneck'
  config.model.depth = 200
  config.model.pyramid_alpha = 240
  return config
