"""PyramidNet-110 (alpha 270) on CIFAR-10 with the strongest common recipe.

  python main.py --config configs/recipes/pyramidnet110_a270_cifar10_strong.py

The strongest setting of the CIFAR tutorials: AutoAugment + Cutout 16 +
label smoothing 0.1 + an EMA of the weights (0.9999, which the run is judged
by) + Nesterov SGD, on PyramidNet's schedule length (300 epochs, Han et al.
2017, with their weight decay 1e-4) under cosine at learning rate 0.1, batch
128. 28.5M parameters: far too slow for a CPU and not run here; it is meant
for a GPU or a TPU VM.
"""

from configs import pyramidnet110_a270_cifar10


def get_config():
  """PyramidNet-110 alpha 270, AutoAugment, Cutout, label smoothing, EMA."""
  config = pyramidnet110_a270_cifar10.get_config()
  config.data.policy = 'autoaugment'
  config.data.cutout = 16
  config.optimizer.label_smoothing = 0.1
  config.optimizer.nesterov = True
  config.optimizer.weight_decay = 1e-4
  config.ema_decay = 0.9999
  config.eval_weights = 'ema'
  config.num_epochs = 300
  return config
