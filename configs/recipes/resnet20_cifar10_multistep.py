"""ResNet-20 on CIFAR-10 under He et al.'s step schedule.

  python main.py --config configs/recipes/resnet20_cifar10_multistep.py

Learning rate 0.1, divided by 10 at 50% and 75% of training, in place of the
cosine schedule.
"""

from configs import resnet20_cifar10


def get_config():
  """The benchmark's ResNet-20 recipe with the multistep schedule."""
  config = resnet20_cifar10.get_config()
  config.optimizer.schedule = 'multistep'
  return config
