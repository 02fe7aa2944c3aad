"""ResNet-1202 on CIFAR-10 (He et al. 2015, 19.4M parameters).

  python main.py --config configs/resnet1202_cifar10.py
"""

from configs import default


def get_config():
  """ResNet-1202, CIFAR-10: 200 blocks per stage."""
  config = default.get_config()
  config.dataset = 'cifar10'
  config.model.depth = 1202
  # One compiled block per stage instead of 200: compiles in about 2 s
  # instead of about 2.5 min on a 2-core CPU (README, Performance).
  config.model.scan_blocks = True
  return config
