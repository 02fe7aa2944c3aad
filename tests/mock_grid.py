"""Runs the grid command on synthetic CIFAR data (tests/synthetic_cifar.py),
for tests that drive it.

Also holds ``NaNBlock``, a block whose run fails with a NaN loss, so a test
can put a failing run in a grid: ``--blocks basic,mock_grid:NaNBlock``.
"""

import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

# pylint: disable=g-import-not-at-top,wrong-import-position
from absl import app
import flax.linen as nn
import jax
import jax.numpy as jnp
from jax_resnet.models import blocks
from jax_resnet import config_overrides
from jax_resnet.tools import grid
import signal_hooks
import synthetic_cifar


class NaNBlock(blocks.ResidualBlock):
  """A convolution whose output is NaN: the first training step's loss is."""

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    y = self.conv(self.out_planes, (3, 3), strides=self.stride,
                  name='conv1')(x)
    return y * jnp.nan


if __name__ == '__main__':
  num_examples = int(os.environ.get('MOCK_EXAMPLES', '40'))
  signal_hooks.install_from_environment()
  with synthetic_cifar.synthetic_cifar(num_examples):
    config_overrides.exit_on_unknown_fields(sys.argv, config_overrides.default_config())
    grid.define_flags()
    app.run(grid.main)
