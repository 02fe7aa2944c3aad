"""PyramidNet-272, alpha 200, bottleneck, on CIFAR-10 (Han et al. 2017).

  python main.py --config configs/pyramidnet272_a200_cifar10.py
"""

from configs import default


def get_config():
  """PyramidNet-272 (alpha 200, bottleneck blocks), CIFAR-10."""
  config = default.get_config()
  config.dataset = 'cifar10'
  config.model.name = 'pyramidnet'
  config.model.block = 'bottleneck'
  config.model.depth = 272
  config.model.pyramid_alpha = 200
  return config
