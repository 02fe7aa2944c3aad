"""ResNet-20 on CIFAR-10 with the AutoAugment CIFAR-10 policy.

  python main.py --config configs/recipes/resnet20_cifar10_autoaugment.py

Cubuk et al.'s 25 sub-policies, one per image, after the crop and flip.
"""

from configs import resnet20_cifar10


def get_config():
  """The benchmark's ResNet-20 recipe plus AutoAugment."""
  config = resnet20_cifar10.get_config()
  config.data.policy = 'autoaugment'
  return config
