"""ResNet-20 on CIFAR-10 with Mixup 0.2 or CutMix 1.0 on every batch.

  python main.py --config configs/recipes/resnet20_cifar10_mixup_cutmix.py

Each batch is mixed by CutMix (alpha 1.0) or, with the same probability,
Mixup (alpha 0.2), as the CIFAR tutorials' MixupCutMix.
"""

from configs import resnet20_cifar10


def get_config():
  """The benchmark's ResNet-20 recipe plus Mixup/CutMix."""
  config = resnet20_cifar10.get_config()
  config.data.mixup_alpha = 0.2
  config.data.cutmix_alpha = 1.0
  config.data.mix_switch_prob = 0.5
  return config
