"""ResNet-20 on CIFAR-10, distilled from a trained ResNet-56.

  python main.py --config configs/resnet56_cifar10.py --workdir runs/resnet56_cifar10
  python main.py --config configs/recipes/resnet20_cifar10_distill_resnet56.py

The first command trains the teacher; this config then trains ResNet-20 on
0.1 x cross-entropy + 0.9 x T^2 KL to the teacher's softened outputs (T = 4),
the teacher running in eval mode inside the student's step.
"""

from configs import resnet20_cifar10


def get_config():
  """The benchmark's ResNet-20 recipe with a ResNet-56 teacher."""
  config = resnet20_cifar10.get_config()
  config.distill.teacher_workdir = 'runs/resnet56_cifar10'
  config.distill.alpha = 0.9
  config.distill.temperature = 4.0
  return config
