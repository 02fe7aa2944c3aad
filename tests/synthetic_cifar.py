"""CIFAR-shaped random data in place of the TFDS files, made without
TensorFlow.

The tests that train, evaluate or run a command need data of CIFAR's shape,
not TFDS itself: ``load_split`` (which reads TFDS through TensorFlow) is
tested on TFDS's own mock data in test_input_pipeline. Everything else reads
this data, in the pytest workers and in every command a test runs. A command
then never imports TensorFlow, which costs seconds per process.

The data is a function of (dataset, split, number of examples) only, so a
command and the test that checks it see the same images.

``input_pipeline`` (and with it JAX) is imported only when data is asked
for: a command that imports this module starts as fast as main.py does, so
a signal in its first second meets main.py's own handlers.
"""

import contextlib
import zlib
from typing import Optional

import numpy as np

# pylint: disable=g-import-not-at-top


def split(dataset: str, name: str, num_examples: int,
          max_examples: Optional[int] = None):
  """``num_examples`` random uint8 images and labels of ``dataset``'s
  classes (an ``input_pipeline.Split``), the first ``max_examples`` of them
  if given."""
  from jax_resnet import input_pipeline
  classes = input_pipeline.num_classes(dataset)
  if name not in ('train', 'test'):
    raise ValueError(f'Unknown split {name!r}; CIFAR has train and test.')
  rng = np.random.default_rng(
      [zlib.crc32(dataset.encode()), zlib.crc32(name.encode()), num_examples])
  images = rng.integers(0, 256, (num_examples, 32, 32, 3), dtype=np.uint8)
  labels = rng.integers(0, classes, num_examples, dtype=np.int32)
  if max_examples is not None:
    images, labels = images[:max_examples], labels[:max_examples]
  return input_pipeline.Split(images=images, labels=labels)


@contextlib.contextmanager
def synthetic_cifar(num_examples: int):
  """``input_pipeline.load_split`` returns ``split(...)`` inside: every
  split of either dataset has ``num_examples`` examples, wherever data_dir
  points and whether or not downloads are allowed, as under TFDS's mock."""
  from jax_resnet import input_pipeline
  original = input_pipeline.load_split

  def load_split(dataset: str, name: str, data_dir: Optional[str] = None,
                 download: bool = True, max_examples: Optional[int] = None):
    del data_dir, download
    return split(dataset, name, num_examples, max_examples)

  input_pipeline.load_split = load_split
  try:
    yield
  finally:
    input_pipeline.load_split = original
