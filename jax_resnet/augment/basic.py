"""Random crop and flip, and Cutout."""

import jax
import jax.numpy as jnp


def random_crop_and_flip(rng: jax.Array, images: jax.Array,
                         padding: int = 4, flip: bool = True) -> jax.Array:
  """Random crop of the zero-padded image, then random horizontal flip.

  Works on any dtype; pads with zeros before normalisation, as torchvision's
  RandomCrop(32, padding=4) does on the raw image.
  """
  batch, height, width, _ = images.shape
  crop_rng, flip_rng = jax.random.split(rng)
  if padding:
    padded = jnp.pad(images, ((0, 0), (padding, padding), (padding, padding),
                              (0, 0)))
    offsets = jax.random.randint(crop_rng, (batch, 2), 0, 2 * padding + 1)

    def crop(image, offset):
      return jax.lax.dynamic_slice(image, (offset[0], offset[1], 0),
                                   (height, width, image.shape[-1]))

    images = jax.vmap(crop)(padded, offsets)
  if flip:
    do_flip = jax.random.bernoulli(flip_rng, 0.5, (batch, 1, 1, 1))
    images = jnp.where(do_flip, images[:, :, ::-1, :], images)
  return images


def cutout(rng: jax.Array, images: jax.Array, size: int) -> jax.Array:
  """Zeroes a random ``size`` x ``size`` square of each image.

  DeVries & Taylor (2017), as their code does it: the square's centre is
  uniform over the image, so the square may hang over the border (and then
  covers less); rows and columns ``[centre - size // 2, centre + size // 2)``
  are zeroed. Applied to normalised images, as in that code, so the square
  holds the dataset's mean colour.
  """
  batch, height, width = images.shape[:3]
  y_rng, x_rng = jax.random.split(rng)
  centre_y = jax.random.randint(y_rng, (batch, 1, 1, 1), 0, height)
  centre_x = jax.random.randint(x_rng, (batch, 1, 1, 1), 0, width)
  rows = jnp.arange(height).reshape(1, height, 1, 1)
  cols = jnp.arange(width).reshape(1, 1, width, 1)
  half = size // 2
  inside = ((rows >= centre_y - half) & (rows < centre_y + half) &
            (cols >= centre_x - half) & (cols < centre_x + half))
  return jnp.where(inside, jnp.zeros((), images.dtype), images)
