"""A small ResNet without augmentation, as a Keras tutorial trained it.

  python main.py --config configs/tutorial_resnet_cifar10.py

The tutorial's fix for an overfitting CNN: a 3x3 stem of 64 channels with
BN-ReLU, two basic blocks of 64 channels, two of 128 (the first at stride 2),
1x1-conv+BN projection shortcuts, global average pooling and a dense head;
Adam at 1e-3 (Keras's eps 1e-7, no weight decay), batch 64, 30 epochs, the
pixels scaled to [0, 1] and no data augmentation. Its claim: test accuracy
above 85% while train accuracy stays below 92%. The weights start from the
project's He initialisation, not Keras's Glorot.
"""

from configs import default


def get_config():
  """The tutorial's network and recipe."""
  config = default.get_config()
  config.dataset = 'cifar10'
  config.model.name = 'cifar_resnet'
  config.model.block = 'basic'
  config.model.stage_blocks = (2, 2)
  config.model.stage_planes = (64, 128)
  config.model.depth = 10  # 2 layers x 4 blocks + stem + head.
  config.model.shortcut = 'B'
  config.data.normalization = 'none'  # x / 255.
  config.data.crop_padding = 0
  config.data.random_flip = False
  config.optimizer.name = 'adam'
  config.optimizer.learning_rate = 1e-3
  config.optimizer.eps = 1e-7
  config.optimizer.weight_decay = 0.0
  config.optimizer.schedule = 'constant'
  config.batch_size = 64
  config.num_epochs = 30
  return config
