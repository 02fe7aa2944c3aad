"""Runs main.py on TFDS mock data, for tests that drive the command line."""

import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

# pylint: disable=g-import-not-at-top,wrong-import-position
from absl import app
import main
from jax_resnet import config_overrides
import tensorflow_datasets as tfds

if __name__ == '__main__':
  num_examples = int(os.environ.get('MOCK_EXAMPLES', '40'))
  with tfds.testing.mock_data(num_examples=num_examples):
    config_overrides.check_command_line(sys.argv)
    app.run(main.main)
