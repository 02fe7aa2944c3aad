"""PIL references for the image-operation and policy tests: real CIFAR-10
test images, and each operation computed the way torchvision's AutoAugment
and RandAugment compute it on a PIL image (``_apply_op`` through
torchvision.transforms._functional_pil, nearest neighbour, fill 0).
"""

import functools
import math
import os

import numpy as np
from PIL import Image
from PIL import ImageEnhance
from PIL import ImageOps

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Where the tests look for the prepared TFDS CIFAR-10 (cifar10/3.0.2/...):
# $CIFAR_TFDS_DIR, else the first of these that holds it.
DATA_DIRS = (os.path.join(_ROOT, 'shared', 'tensorflow_datasets'),
             os.path.join(os.path.dirname(_ROOT), 'shared',
                          'tensorflow_datasets'),
             os.environ.get('TFDS_DATA_DIR', ''),
             os.path.expanduser('~/tensorflow_datasets'))
# torchvision's _parse_fill(None) for an RGB image.
FILL = (0, 0, 0)


@functools.cache
def cifar_test_images(count: int) -> np.ndarray:
  """The first ``count`` CIFAR-10 test images, uint8 ``[count, 32, 32, 3]``.

  Raises:
    FileNotFoundError: no prepared dataset where the tests look.
  """
  candidates = ((os.environ['CIFAR_TFDS_DIR'],)
                if os.environ.get('CIFAR_TFDS_DIR') else DATA_DIRS)
  found = [d for d in candidates
           if d and os.path.isdir(os.path.join(d, 'cifar10'))]
  if not found:
    raise FileNotFoundError(
        'The image-operation tests compare against PIL on real CIFAR-10 '
        f'images: no prepared TFDS cifar10 in any of {candidates} (set '
        'CIFAR_TFDS_DIR to the TFDS data directory that holds it).')
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  tf.config.set_visible_devices([], 'GPU')
  dataset = tfds.load('cifar10', split=f'test[:{count}]', data_dir=found[0],
                      download=False, shuffle_files=False)
  images = [example['image'] for example in tfds.as_numpy(dataset)]
  return np.stack(images).astype(np.uint8)


def inverse_affine(center, angle, translate, scale, shear) -> list[float]:
  """The inverse affine coefficients torchvision hands to PIL's transform.

  The map is ``T C R(angle) S(scale) ShY(shear_y) ShX(shear_x) C^-1`` (C the
  move to ``center``, T the translation; angles in degrees, clockwise as
  torchvision's ``affine`` takes them); its inverse, in PIL's
  ``(a, b, c, d, e, f)`` order, is the closed form of torchvision's
  ``_get_inverse_affine_matrix``, evaluated in double precision in the same
  order of operations, so PIL sees the same coefficients.
  """
  rot = math.radians(angle)
  shear_x, shear_y = math.radians(shear[0]), math.radians(shear[1])
  cx, cy = center
  tx, ty = translate
  # R S ShY ShX without the scale: [[a, b], [c, d]], determinant 1.
  a = math.cos(rot - shear_y) / math.cos(shear_y)
  b = (-math.cos(rot - shear_y) * math.tan(shear_x) / math.cos(shear_y) -
       math.sin(rot))
  c = math.sin(rot - shear_y) / math.cos(shear_y)
  d = (-math.sin(rot - shear_y) * math.tan(shear_x) / math.cos(shear_y) +
       math.cos(rot))
  inverse = [v / scale for v in (d, -b, 0.0, -c, a, 0.0)]
  inverse[2] += inverse[0] * (-cx - tx) + inverse[1] * (-cy - ty)
  inverse[5] += inverse[3] * (-cx - tx) + inverse[4] * (-cy - ty)
  inverse[2] += cx
  inverse[5] += cy
  return inverse


def _affine(image: Image.Image, center, translate=(0, 0), shear=(0.0, 0.0)
            ) -> Image.Image:
  matrix = inverse_affine(center, 0.0, translate, 1.0, shear)
  return image.transform(image.size, Image.AFFINE, matrix, Image.NEAREST,
                         fillcolor=FILL)


def apply(image: Image.Image, name: str, magnitude: float) -> Image.Image:
  """torchvision's ``_apply_op(image, name, magnitude)`` on a PIL image."""
  width, height = image.size
  centre = [width * 0.5, height * 0.5]
  if name == 'Identity':
    return image
  if name == 'ShearX':
    return _affine(image, [0, 0],
                   shear=(math.degrees(math.atan(magnitude)), 0.0))
  if name == 'ShearY':
    return _affine(image, [0, 0],
                   shear=(0.0, math.degrees(math.atan(magnitude))))
  if name == 'TranslateX':
    return _affine(image, centre, translate=(int(magnitude), 0))
  if name == 'TranslateY':
    return _affine(image, centre, translate=(0, int(magnitude)))
  if name == 'Rotate':
    return image.rotate(magnitude, Image.NEAREST, False, None,
                        fillcolor=FILL)
  enhancers = {'Brightness': ImageEnhance.Brightness,
               'Color': ImageEnhance.Color,
               'Contrast': ImageEnhance.Contrast,
               'Sharpness': ImageEnhance.Sharpness}
  if name in enhancers:
    return enhancers[name](image).enhance(1.0 + magnitude)
  if name == 'Posterize':
    return ImageOps.posterize(image, int(magnitude))
  if name == 'Solarize':
    return ImageOps.solarize(image, magnitude)
  if name == 'AutoContrast':
    return ImageOps.autocontrast(image)
  if name == 'Equalize':
    return ImageOps.equalize(image)
  if name == 'Invert':
    return ImageOps.invert(image)
  raise ValueError(f'Unknown operation {name!r}.')


def apply_to_batch(images: np.ndarray, name: str, magnitudes) -> np.ndarray:
  """``apply`` to each image of a uint8 batch, magnitude per image (or
  one for all)."""
  magnitudes = np.broadcast_to(np.asarray(magnitudes, np.float64),
                               images.shape[:1])
  return np.stack([np.asarray(apply(Image.fromarray(image), name, float(m)))
                   for image, m in zip(images, magnitudes)])
