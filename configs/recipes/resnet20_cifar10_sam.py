"""ResNet-20 on CIFAR-10 trained with SAM, rho 0.05 (Foret et al. 2021).

  python main.py --config configs/recipes/resnet20_cifar10_sam.py

SGD as in the benchmark's recipe, on the gradient at the SAM-perturbed
weights; a step costs two forward and backward passes.
"""

from configs import resnet20_cifar10


def get_config():
  """The benchmark's ResNet-20 recipe, wrapped in SAM."""
  config = resnet20_cifar10.get_config()
  config.optimizer.sam_rho = 0.05
  return config
