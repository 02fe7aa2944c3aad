"""AutoAugment (CIFAR-10 policy) and RandAugment on a uint8 batch.

As torchvision's ``AutoAugment(AutoAugmentPolicy.CIFAR10)`` and
``RandAugment()`` (torchvision.transforms.autoaugment), with the operations
of ``image_ops``, which compute what torchvision's PIL path computes
(nearest-neighbour sampling, fill 0). Every image draws its own sub-policy or
operations, application coins and signs, from its own key
(``jax.random.split`` of the batch's key); the batch goes through
``jax.vmap`` and each operation is picked with ``jax.lax.switch``, so a batch
shape compiles once.

Operations and magnitudes. An operation is applied at a *magnitude*, the
value torchvision's ``_apply_op`` takes, and torchvision's
``_augmentation_space(num_bins, image_size)`` maps a magnitude bin ``i`` of
``num_bins`` to it (``linspace`` is torch.linspace's float32 formula, ``start
+ i * step`` for the first half of the bins and ``end - (num_bins - 1 - i) *
step`` for the rest):

* ShearX, ShearY: ``linspace(0, 0.3)``, signed; the shear factor ``m``
  (``x_in = x + m y``, resp. ``y_in = y + m x``).
* TranslateX, TranslateY: ``linspace(0, 150 / 331 * W)`` (resp. ``H``),
  signed; shifts by ``int(m)`` pixels, right (down) for positive ``m``.
* Rotate: ``linspace(0, 30)``, signed; degrees counter-clockwise.
* Brightness, Color, Contrast, Sharpness: ``linspace(0, 0.9)``, signed; the
  enhance factor is ``1 + m``.
* Posterize: ``8 - round(i / ((num_bins - 1) / 4))`` (half to even); bits
  kept, ``int(m)``.
* Solarize: ``linspace(255, 0)``; pixels ``>= m`` are inverted.
* Identity, AutoContrast, Equalize, Invert: no magnitude (0).

A signed operation's magnitude is negated with probability 1/2.

AutoAugment: each image picks one of the 25 sub-policies of
``CIFAR10_POLICY`` uniformly and applies each of its two operations with its
probability (when a uniform draw in [0, 1) is ``<=`` it), at its magnitude
bin of 10 (``AUTOAUGMENT_BINS``).

RandAugment: each image applies ``n`` operations drawn uniformly, with
replacement, from ``RANDAUGMENT_OPS`` (no Invert), all at magnitude bin ``m``
of 31 (``RANDAUGMENT_BINS``); torchvision's defaults are ``n = 2, m = 9``.

The pieces, for figures and checks: ``augmentation_space`` gives the
magnitudes of the bins, ``apply_op(images, name, magnitude)`` applies one
operation to a batch, ``autoaugment_ops`` and ``randaugment_ops`` return the
operations and signed magnitudes a key draws for each image, and
``apply_ops`` applies such per-image sequences; ``apply_policy`` is
``apply_ops`` of the drawn operations.

torch.linspace's vectorised CPU kernel can differ from its scalar formula,
used here, by one float32 ulp in a few bins, depending on the machine's
SIMD width: with torch 2.13 on an AVX-512 machine, only bin 20 of 31 of the
enhance and translate ranges did (the 10-bin space and RandAugment's default
bin 9 agreed to the bit).
"""

from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from jax_resnet.augment import image_ops

POLICIES = ('none', 'autoaugment', 'randaugment')

# Every operation, in the order of torchvision's augmentation spaces
# (RandAugment's, then AutoAugment's Invert).
OP_NAMES = ('Identity', 'ShearX', 'ShearY', 'TranslateX', 'TranslateY',
            'Rotate', 'Brightness', 'Color', 'Contrast', 'Sharpness',
            'Posterize', 'Solarize', 'AutoContrast', 'Equalize', 'Invert')
RANDAUGMENT_OPS = OP_NAMES[:-1]
SIGNED_OPS = ('ShearX', 'ShearY', 'TranslateX', 'TranslateY', 'Rotate',
              'Brightness', 'Color', 'Contrast', 'Sharpness')

AUTOAUGMENT_BINS = 10
RANDAUGMENT_BINS = 31

# torchvision's AutoAugmentPolicy.CIFAR10: 25 sub-policies, each two
# (operation, probability, magnitude bin or None).
CIFAR10_POLICY = (
    (('Invert', 0.1, None), ('Contrast', 0.2, 6)),
    (('Rotate', 0.7, 2), ('TranslateX', 0.3, 9)),
    (('Sharpness', 0.8, 1), ('Sharpness', 0.9, 3)),
    (('ShearY', 0.5, 8), ('TranslateY', 0.7, 9)),
    (('AutoContrast', 0.5, None), ('Equalize', 0.9, None)),
    (('ShearY', 0.2, 7), ('Posterize', 0.3, 7)),
    (('Color', 0.4, 3), ('Brightness', 0.6, 7)),
    (('Sharpness', 0.3, 9), ('Brightness', 0.7, 9)),
    (('Equalize', 0.6, None), ('Equalize', 0.5, None)),
    (('Contrast', 0.6, 7), ('Sharpness', 0.6, 5)),
    (('Color', 0.7, 7), ('TranslateX', 0.5, 8)),
    (('Equalize', 0.3, None), ('AutoContrast', 0.4, None)),
    (('TranslateY', 0.4, 3), ('Sharpness', 0.2, 6)),
    (('Brightness', 0.9, 6), ('Color', 0.2, 8)),
    (('Solarize', 0.5, 2), ('Invert', 0.0, None)),
    (('Equalize', 0.2, None), ('AutoContrast', 0.6, None)),
    (('Equalize', 0.2, None), ('Equalize', 0.6, None)),
    (('Color', 0.9, 9), ('Equalize', 0.6, None)),
    (('AutoContrast', 0.8, None), ('Solarize', 0.2, 8)),
    (('Brightness', 0.1, 3), ('Color', 0.7, 0)),
    (('Solarize', 0.4, 5), ('AutoContrast', 0.9, None)),
    (('TranslateY', 0.9, 9), ('TranslateY', 0.7, 9)),
    (('AutoContrast', 0.9, None), ('Solarize', 0.8, 3)),
    (('Equalize', 0.8, None), ('Invert', 0.1, None)),
    (('TranslateY', 0.7, 9), ('AutoContrast', 0.9, None)),
)

_OPS: dict[str, Callable[[jax.Array, jax.Array], jax.Array]] = {
    'Identity': lambda image, magnitude: image,
    'ShearX': image_ops.shear_x,
    'ShearY': image_ops.shear_y,
    'TranslateX': image_ops.translate_x,
    'TranslateY': image_ops.translate_y,
    'Rotate': image_ops.rotate,
    'Brightness': lambda image, m: image_ops.brightness(image, 1.0 + m),
    'Color': lambda image, m: image_ops.color(image, 1.0 + m),
    'Contrast': lambda image, m: image_ops.contrast(image, 1.0 + m),
    'Sharpness': lambda image, m: image_ops.sharpness(image, 1.0 + m),
    'Posterize': image_ops.posterize,
    'Solarize': image_ops.solarize,
    'AutoContrast': lambda image, magnitude: image_ops.autocontrast(image),
    'Equalize': lambda image, magnitude: image_ops.equalize(image),
    'Invert': lambda image, magnitude: image_ops.invert(image),
}
_BRANCHES = tuple(_OPS[name] for name in OP_NAMES)
_IDENTITY = OP_NAMES.index('Identity')


def _linspace(start: float, end: float, steps: int) -> np.ndarray:
  """torch.linspace in float32 (its scalar formula)."""
  start, end = np.float32(start), np.float32(end)
  if steps == 1:
    return np.array([start], np.float32)
  step = (end - start) / np.float32(steps - 1)
  index = np.arange(steps)
  return np.where(index < steps / 2,
                  start + step * index.astype(np.float32),
                  end - step * (steps - 1 - index).astype(np.float32)
                  ).astype(np.float32)


def augmentation_space(num_bins: int, height: int, width: int
                       ) -> dict[str, tuple[np.ndarray, bool]]:
  """torchvision's ``_augmentation_space(num_bins, [width, height])``.

  Args:
    num_bins: the number of magnitude bins (10 for AutoAugment, 31 for
      RandAugment).
    height: the image height (TranslateY's range).
    width: the image width (TranslateX's range).

  Returns:
    For each name of ``OP_NAMES``: the magnitudes of the bins (float32,
    ``[num_bins]``; zeros for the operations without one) and whether the
    operation is signed.
  """
  if num_bins < 1:
    raise ValueError(f'num_bins must be positive, got {num_bins}.')
  bins = np.arange(num_bins).astype(np.float32)
  posterize = (8 - np.round(bins / np.float32((num_bins - 1) / 4))
               if num_bins > 1 else np.full(1, 8.0))
  space = {
      'ShearX': _linspace(0.0, 0.3, num_bins),
      'ShearY': _linspace(0.0, 0.3, num_bins),
      'TranslateX': _linspace(0.0, 150.0 / 331.0 * width, num_bins),
      'TranslateY': _linspace(0.0, 150.0 / 331.0 * height, num_bins),
      'Rotate': _linspace(0.0, 30.0, num_bins),
      'Brightness': _linspace(0.0, 0.9, num_bins),
      'Color': _linspace(0.0, 0.9, num_bins),
      'Contrast': _linspace(0.0, 0.9, num_bins),
      'Sharpness': _linspace(0.0, 0.9, num_bins),
      'Posterize': posterize.astype(np.float32),
      'Solarize': _linspace(255.0, 0.0, num_bins),
  }
  return {name: (space[name] if name in space
                 else np.zeros(num_bins, np.float32), name in SIGNED_OPS)
          for name in OP_NAMES}


def _check_images(images: jax.Array) -> None:
  if images.ndim != 4 or images.shape[-1] != 3 or images.dtype != jnp.uint8:
    raise ValueError('Expected a uint8 batch [B, H, W, 3], got '
                     f'{images.dtype} {tuple(images.shape)}.')


def _apply_sequence(image: jax.Array, ops: jax.Array,
                    magnitudes: jax.Array) -> jax.Array:
  """Applies ``ops[i]`` at ``magnitudes[i]`` in turn to one image."""

  def step(image, op_and_magnitude):
    op, magnitude = op_and_magnitude
    return jax.lax.switch(op, _BRANCHES, image, magnitude), None

  return jax.lax.scan(step, image, (ops, magnitudes))[0]


def apply_ops(images: jax.Array, ops: jax.Array,
              magnitudes: jax.Array) -> jax.Array:
  """Applies per-image sequences of operations to a batch.

  Args:
    images: uint8 ``[B, H, W, 3]``.
    ops: int ``[B, K]``, indices into ``OP_NAMES``; image ``b`` goes through
      ``ops[b, 0]``, then ``ops[b, 1]``, and so on.
    magnitudes: float ``[B, K]``, the (signed) magnitudes of ``ops``, as
      torchvision's ``_apply_op`` takes them.

  Returns:
    The transformed uint8 batch.
  """
  _check_images(images)
  return jax.vmap(_apply_sequence)(images, jnp.asarray(ops, jnp.int32),
                                   jnp.asarray(magnitudes, jnp.float32))


def apply_op(images: jax.Array, name: str, magnitude) -> jax.Array:
  """Applies one operation to every image of a batch.

  Args:
    images: uint8 ``[B, H, W, 3]``.
    name: one of ``OP_NAMES``.
    magnitude: the magnitude as torchvision's ``_apply_op`` takes it (e.g.
      degrees for Rotate, ``factor - 1`` for the enhance operations, bits for
      Posterize; ignored by the operations without one): a scalar, or one per
      image ``[B]``. ``augmentation_space`` maps bins to magnitudes.

  Returns:
    The transformed uint8 batch.
  """
  if name not in _OPS:
    raise ValueError(f'Unknown operation {name!r}; expected one of '
                     f'{", ".join(OP_NAMES)}.')
  _check_images(images)
  magnitudes = jnp.broadcast_to(jnp.asarray(magnitude, jnp.float32),
                                images.shape[:1])
  return jax.vmap(_OPS[name])(images, magnitudes)


def _policy_tables(height: int, width: int):
  """CIFAR10_POLICY as arrays ``[25, 2]``: op indices, probabilities,
  magnitudes and signedness."""
  space = augmentation_space(AUTOAUGMENT_BINS, height, width)
  ops, probs, magnitudes, signed = [], [], [], []
  for sub_policy in CIFAR10_POLICY:
    for name, prob, magnitude_bin in sub_policy:
      values, is_signed = space[name]
      ops.append(OP_NAMES.index(name))
      probs.append(prob)
      magnitudes.append(0.0 if magnitude_bin is None
                        else values[magnitude_bin])
      signed.append(is_signed)
  shape = (len(CIFAR10_POLICY), 2)
  return (jnp.array(ops, jnp.int32).reshape(shape),
          jnp.array(probs, jnp.float32).reshape(shape),
          jnp.array(magnitudes, jnp.float32).reshape(shape),
          jnp.array(signed, bool).reshape(shape))


def autoaugment_ops(rng: jax.Array, batch_size: int, height: int,
                    width: int) -> tuple[jax.Array, jax.Array]:
  """The operations AutoAugment (CIFAR-10 policy) draws for a batch.

  Each image uses the key ``jax.random.split(rng, batch_size)[b]``: a
  sub-policy uniformly, then for each of its two operations whether it
  applies and, if signed, the sign of its magnitude.

  Args:
    rng: a PRNG key.
    batch_size: the number of images.
    height: the image height.
    width: the image width.

  Returns:
    ``ops`` int32 ``[B, 2]`` (indices into OP_NAMES; Identity for an
    operation that does not apply) and their signed magnitudes float32
    ``[B, 2]`` (0 for Identity), for ``apply_ops``.
  """
  ops, probs, magnitudes, signed = _policy_tables(height, width)

  def draw(key):
    policy_key, prob_key, sign_key = jax.random.split(key, 3)
    sub_policy = jax.random.randint(policy_key, (), 0, len(CIFAR10_POLICY))
    applied = jax.random.uniform(prob_key, (2,)) <= probs[sub_policy]
    negative = jax.random.bernoulli(sign_key, 0.5, (2,)) & signed[sub_policy]
    magnitude = jnp.where(negative, -magnitudes[sub_policy],
                          magnitudes[sub_policy])
    return (jnp.where(applied, ops[sub_policy], _IDENTITY),
            jnp.where(applied, magnitude, 0.0))

  return jax.vmap(draw)(jax.random.split(rng, batch_size))


def autoaugment(rng: jax.Array, images: jax.Array) -> jax.Array:
  """AutoAugment with torchvision's CIFAR-10 policy, per image.

  Args:
    rng: a PRNG key.
    images: uint8 ``[B, H, W, 3]``.

  Returns:
    The augmented uint8 batch.
  """
  _check_images(images)
  return apply_ops(images, *autoaugment_ops(rng, *images.shape[:3]))


def _check_randaugment(n: int, m: int) -> None:
  if not isinstance(n, (int, np.integer)) or n < 0:
    raise ValueError(f'RandAugment needs n >= 0 operations, got {n!r}.')
  if not isinstance(m, (int, np.integer)) or not 0 <= m < RANDAUGMENT_BINS:
    raise ValueError(f'RandAugment magnitude m must be in [0, '
                     f'{RANDAUGMENT_BINS - 1}], got {m!r}.')


def randaugment_ops(rng: jax.Array, batch_size: int, height: int,
                    width: int, n: int = 2,
                    m: int = 9) -> tuple[jax.Array, jax.Array]:
  """The operations RandAugment draws for a batch.

  Each image uses the key ``jax.random.split(rng, batch_size)[b]``: ``n``
  operations uniformly from RANDAUGMENT_OPS, with replacement, and a sign for
  each signed one.

  Args:
    rng: a PRNG key.
    batch_size: the number of images.
    height: the image height.
    width: the image width.
    n: operations per image (>= 0).
    m: the magnitude bin, 0..30.

  Returns:
    ``ops`` int32 ``[B, n]`` (indices into OP_NAMES) and their signed
    magnitudes float32 ``[B, n]``, for ``apply_ops``.
  """
  _check_randaugment(n, m)
  space = augmentation_space(RANDAUGMENT_BINS, height, width)
  magnitudes = jnp.array([space[name][0][m] for name in RANDAUGMENT_OPS],
                         jnp.float32)
  signed = jnp.array([space[name][1] for name in RANDAUGMENT_OPS])

  def draw(key):
    op_key, sign_key = jax.random.split(key)
    # RANDAUGMENT_OPS is the start of OP_NAMES: its indices are OP_NAMES'.
    ops = jax.random.randint(op_key, (n,), 0, len(RANDAUGMENT_OPS))
    negative = jax.random.bernoulli(sign_key, 0.5, (n,)) & signed[ops]
    return ops, jnp.where(negative, -magnitudes[ops], magnitudes[ops])

  return jax.vmap(draw)(jax.random.split(rng, batch_size))


def randaugment(rng: jax.Array, images: jax.Array, n: int = 2,
                m: int = 9) -> jax.Array:
  """RandAugment: ``n`` operations per image at magnitude bin ``m`` of 31.

  Args:
    rng: a PRNG key.
    images: uint8 ``[B, H, W, 3]``.
    n: operations per image, drawn with replacement from RANDAUGMENT_OPS.
    m: the magnitude bin, 0..30.

  Returns:
    The augmented uint8 batch.
  """
  _check_randaugment(n, m)
  _check_images(images)
  if n == 0:
    return images
  return apply_ops(images, *randaugment_ops(rng, *images.shape[:3], n, m))


def apply_policy(rng: jax.Array, images: jax.Array, policy: str,
                 randaugment_n: int = 2, randaugment_m: int = 9
                 ) -> jax.Array:
  """The training augmentation policy of a config, on a uint8 batch.

  Args:
    rng: a PRNG key; each image uses a key split from it.
    images: uint8 ``[B, H, W, 3]``.
    policy: one of ``POLICIES``: 'none' (the images unchanged),
      'autoaugment' (the CIFAR-10 policy) or 'randaugment'.
    randaugment_n: RandAugment's operations per image (>= 0).
    randaugment_m: RandAugment's magnitude bin, 0..30.

  Returns:
    The augmented uint8 batch.

  Raises:
    ValueError: an unknown policy, n < 0, m outside [0, 30], or images that
      are not a uint8 RGB batch.
  """
  if policy not in POLICIES:
    raise ValueError(f'Unknown augmentation policy {policy!r}; expected one '
                     f'of {", ".join(POLICIES)}.')
  _check_randaugment(randaugment_n, randaugment_m)
  if policy == 'none':
    return images
  if policy == 'autoaugment':
    return autoaugment(rng, images)
  return randaugment(rng, images, randaugment_n, randaugment_m)
