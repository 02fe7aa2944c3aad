"""A picture of each training augmentation on real CIFAR-10 images.

  python -m jax_resnet.tools.augmentations --output docs/augmentations.png \
      --data_dir=../shared/tensorflow_datasets

One row per setting, the same test images in every column: the originals,
the random crop and flip, AutoAugment, RandAugment (n=2, m=9), Cutout 16,
Mixup (alpha 0.2), CutMix (alpha 1.0), and all of them in the train step's
order. Every row runs the train step's own augmentation
(``augment.pipeline.train_batch``) and shows what the network sees,
normalised and mapped back to pixels (so Cutout's square is the dataset's
mean colour). Mixup and CutMix mix each image with its left neighbour (the
first column with the last); the row label gives the weight of the image's
own label.
"""

import sys
from typing import Sequence

from absl import app
from absl import flags
import jax
import jax.numpy as jnp
import numpy as np

from jax_resnet import errors
from jax_resnet import input_pipeline
from jax_resnet.augment import pipeline

# (row label, AugmentConfig fields).
ROWS = (
    ('original', dict(crop_padding=0, random_flip=False)),
    ('crop + flip', dict()),
    ('AutoAugment', dict(crop_padding=0, random_flip=False,
                         policy='autoaugment')),
    ('RandAugment n=2 m=9', dict(crop_padding=0, random_flip=False,
                                 policy='randaugment')),
    ('Cutout 16', dict(crop_padding=0, random_flip=False, cutout=16)),
    ('Mixup 0.2', dict(crop_padding=0, random_flip=False, mixup_alpha=0.2)),
    ('CutMix 1.0', dict(crop_padding=0, random_flip=False,
                        cutmix_alpha=1.0)),
    ('all, in order', dict(policy='autoaugment', cutout=16, mixup_alpha=0.2,
                           cutmix_alpha=1.0)),
)


def augmented_rows(images: np.ndarray, labels: np.ndarray, dataset: str,
                   seed: int = 0) -> list[tuple[str, np.ndarray]]:
  """(label, uint8 images) for every row of ``ROWS``."""
  mean, std = input_pipeline.normalization_stats('dataset', dataset)
  rows = []
  for index, (label, fields) in enumerate(ROWS):
    cfg = pipeline.AugmentConfig(**fields)
    out, mixed = pipeline.train_batch(
        jax.random.fold_in(jax.random.PRNGKey(seed), index),
        jnp.asarray(images), jnp.asarray(labels), cfg, mean, std,
        jnp.float32)
    pixels = np.clip(np.round(np.asarray(out) * std + mean), 0, 255)
    if mixed is not None:
      label = f'{label} (own {float(mixed.lam):.2f})'
    rows.append((label, pixels.astype(np.uint8)))
  return rows


def write_figure(path: str, rows: Sequence[tuple[str, np.ndarray]]) -> None:
  """The rows as one PNG grid, labelled on the left."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use('Agg')
  from matplotlib import pyplot as plt  # pylint: disable=g-import-not-at-top
  columns = len(rows[0][1])
  figure, axes = plt.subplots(len(rows), columns,
                              figsize=(1.0 * columns + 1.6, 1.0 * len(rows)),
                              squeeze=False)
  for r, (label, images) in enumerate(rows):
    for c in range(columns):
      axis = axes[r][c]
      axis.imshow(images[c], interpolation='nearest')
      axis.set_xticks([])
      axis.set_yticks([])
    axes[r][0].set_ylabel(label, rotation=0, ha='right', va='center',
                          fontsize=8)
  figure.subplots_adjust(left=0.2, right=0.99, top=0.99, bottom=0.01,
                         wspace=0.05, hspace=0.05)
  figure.savefig(path, dpi=100)
  plt.close(figure)


_OUTPUT = flags.DEFINE_string('output', 'augmentations.png', 'PNG to write.')
_DATASET = flags.DEFINE_enum('dataset', 'cifar10',
                             list(input_pipeline.DATASETS), 'Dataset.')
_DATA_DIR = flags.DEFINE_string('data_dir', '', "TFDS data directory ('' = "
                                "TFDS's default).")
_IMAGES = flags.DEFINE_integer('images', 8, 'Test images (columns), from '
                               'the start of the test split.')
_SEED = flags.DEFINE_integer('seed', 0, 'Seed of the augmentations.')


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  try:
    split = input_pipeline.load_split(
        _DATASET.value, 'test', data_dir=_DATA_DIR.value or None,
        download=False, max_examples=_IMAGES.value)
  except errors.Error as e:
    print(f'error: {e}', file=sys.stderr)
    sys.exit(2)
  rows = augmented_rows(split.images, split.labels, _DATASET.value,
                        _SEED.value)
  write_figure(_OUTPUT.value, rows)
  print(f'Wrote {_OUTPUT.value}: {len(rows)} rows of {split.num_examples} '
        f'{_DATASET.value} test images.')


if __name__ == '__main__':
  app.run(main)
