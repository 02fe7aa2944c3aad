"""ResNet-20 on CIFAR-10, judged by an EMA of its weights (decay 0.999).

  python main.py --config configs/recipes/resnet20_cifar10_ema.py

Both the trained weights and their EMA are evaluated every epoch
(test_accuracy, ema_test_accuracy); the best checkpoint and --mode eval use
the EMA.
"""

from configs import resnet20_cifar10


def get_config():
  """The benchmark's ResNet-20 recipe plus an EMA of the weights."""
  config = resnet20_cifar10.get_config()
  config.ema_decay = 0.999
  config.eval_weights = 'ema'
  return config
