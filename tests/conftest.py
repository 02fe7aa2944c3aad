"""Shared test setup: project XLA flags, tiny configs and TFDS mock data."""

import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

# pylint: disable=g-import-not-at-top,wrong-import-position
from jax_resnet import runtime

runtime.configure()

import jax
import pytest

# Tiny models compile faster without XLA's heavier optimisation passes.
jax.config.update('jax_disable_most_optimizations', True)

from configs import default
import tensorflow_datasets as tfds

MOCK_EXAMPLES = 40


def tiny_config(dataset: str = 'cifar10', **overrides):
  """A ResNet-8 config that trains in seconds on TFDS mock data."""
  config = default.get_config()
  config.dataset = dataset
  config.data_dir = os.path.join(ROOT, 'tests', 'no_such_tfds_dir')
  config.data.download = False
  config.model.depth = 8
  config.num_epochs = 2
  config.batch_size = 16
  config.eval_batch_size = 16
  config.log_every_steps = 1
  for key, value in overrides.items():
    node = config
    *parents, leaf = key.split('.')
    for parent in parents:
      node = node[parent]
    node[leaf] = value
  return config


@pytest.fixture
def mock_cifar():
  """Random CIFAR-shaped data in place of the real TFDS files."""
  with tfds.testing.mock_data(num_examples=MOCK_EXAMPLES):
    yield
