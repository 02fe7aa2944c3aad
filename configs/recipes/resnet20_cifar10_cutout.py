"""ResNet-20 on CIFAR-10 with Cutout 16 (DeVries & Taylor 2017).

  python main.py --config configs/recipes/resnet20_cifar10_cutout.py
"""

from configs import resnet20_cifar10


def get_config():
  """The benchmark's ResNet-20 recipe plus a 16x16 Cutout square."""
  config = resnet20_cifar10.get_config()
  config.data.cutout = 16
  return config
