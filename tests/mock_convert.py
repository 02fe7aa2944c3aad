"""Runs `python -m jax_resnet.interop.torch_import` on TFDS mock data.

For the CLI tests.
"""

import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

# pylint: disable=g-import-not-at-top,wrong-import-position
from jax_resnet.interop import torch_import
import tensorflow_datasets as tfds

if __name__ == '__main__':
  num_examples = int(os.environ.get('MOCK_EXAMPLES', '40'))
  with tfds.testing.mock_data(num_examples=num_examples):
    torch_import.run()
