"""Runs `python -m jax_resnet.interop.torch_import` on synthetic CIFAR data
(tests/synthetic_cifar.py).

For the CLI tests.
"""

import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

# pylint: disable=g-import-not-at-top,wrong-import-position
from jax_resnet.interop import torch_import
import synthetic_cifar

if __name__ == '__main__':
  num_examples = int(os.environ.get('MOCK_EXAMPLES', '40'))
  with synthetic_cifar.synthetic_cifar(num_examples):
    torch_import.run()
