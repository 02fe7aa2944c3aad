"""Mixup (Zhang et al. 2018) and CutMix (Yun et al. 2019) on a batch.

As torchvision's MixUp and CutMix transforms (and the CIFAR tutorials built
on them): one mixing weight ``lam ~ Beta(alpha, alpha)`` per batch, and each
example is mixed with its neighbour in the (already shuffled) batch,
``roll(batch, 1)``. CutMix pastes the neighbour's box of side
``sqrt(1 - lam)`` times the image's, centred uniformly and clipped at the
border, and then sets ``lam`` to the area that stays the example's own.
"""

from typing import NamedTuple

import jax
import jax.numpy as jnp


class MixedLabels(NamedTuple):
  """The labels of a mixed batch: ``lam`` of ``labels``, ``1 - lam`` of
  ``partner_labels``."""
  labels: jax.Array
  partner_labels: jax.Array
  lam: jax.Array

  def targets(self, num_classes: int) -> jax.Array:
    """The mixed one-hot targets the loss is taken against."""
    return (self.lam * jax.nn.one_hot(self.labels, num_classes) +
            (1.0 - self.lam) * jax.nn.one_hot(self.partner_labels,
                                               num_classes))

  def accuracy(self, logits: jax.Array) -> jax.Array:
    """The lam-weighted accuracy (percent): a prediction of the partner's
    class counts ``1 - lam``."""
    predicted = jnp.argmax(logits, -1)
    return 100.0 * (
        self.lam * jnp.mean(predicted == self.labels) +
        (1.0 - self.lam) * jnp.mean(predicted == self.partner_labels))


def _partner(x: jax.Array) -> jax.Array:
  return jnp.roll(x, 1, axis=0)


def mixup(rng: jax.Array, images: jax.Array, labels: jax.Array,
          alpha: float) -> tuple[jax.Array, MixedLabels]:
  """``lam * x + (1 - lam) * roll(x, 1)``, lam ~ Beta(alpha, alpha)."""
  lam = jax.random.beta(rng, alpha, alpha)
  mixed = (lam * images.astype(jnp.float32) +
           (1.0 - lam) * _partner(images).astype(jnp.float32))
  return (mixed.astype(images.dtype),
          MixedLabels(labels, _partner(labels), lam))


def cutmix_box(rng: jax.Array, lam: jax.Array, height: int, width: int
               ) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array]:
  """The box ``[y1, y2) x [x1, x2)`` pasted from the partner, as
  torchvision's CutMix draws it: a centre uniform over the image, half
  sides ``int(0.5 * sqrt(1 - lam) * side)``, clipped at the border."""
  y_rng, x_rng = jax.random.split(rng)
  centre_y = jax.random.randint(y_rng, (), 0, height)
  centre_x = jax.random.randint(x_rng, (), 0, width)
  ratio = 0.5 * jnp.sqrt(1.0 - lam)
  half_h = jnp.floor(ratio * height).astype(jnp.int32)
  half_w = jnp.floor(ratio * width).astype(jnp.int32)
  return (jnp.maximum(centre_y - half_h, 0),
          jnp.minimum(centre_y + half_h, height),
          jnp.maximum(centre_x - half_w, 0),
          jnp.minimum(centre_x + half_w, width))


def cutmix(rng: jax.Array, images: jax.Array, labels: jax.Array,
           alpha: float) -> tuple[jax.Array, MixedLabels]:
  """Pastes the partner's box; ``lam`` becomes the area left unpasted."""
  lam_rng, box_rng = jax.random.split(rng)
  height, width = images.shape[1:3]
  lam = jax.random.beta(lam_rng, alpha, alpha)
  y1, y2, x1, x2 = cutmix_box(box_rng, lam, height, width)
  rows = jnp.arange(height).reshape(1, height, 1, 1)
  cols = jnp.arange(width).reshape(1, 1, width, 1)
  inside = (rows >= y1) & (rows < y2) & (cols >= x1) & (cols < x2)
  mixed = jnp.where(inside, _partner(images), images)
  area = ((y2 - y1) * (x2 - x1)).astype(jnp.float32)
  return mixed, MixedLabels(labels, _partner(labels),
                            1.0 - area / (height * width))


def mix(rng: jax.Array, images: jax.Array, labels: jax.Array,
        mixup_alpha: float, cutmix_alpha: float, switch_prob: float
        ) -> tuple[jax.Array, MixedLabels]:
  """Mixup, CutMix, or (both alphas positive) one of the two per batch:
  CutMix with probability ``switch_prob``, as timm's Mixup switches."""
  if mixup_alpha <= 0 and cutmix_alpha <= 0:
    raise ValueError('mix needs mixup_alpha or cutmix_alpha positive.')
  choice_rng, mixup_rng, cutmix_rng = jax.random.split(rng, 3)
  if cutmix_alpha <= 0:
    return mixup(mixup_rng, images, labels, mixup_alpha)
  if mixup_alpha <= 0:
    return cutmix(cutmix_rng, images, labels, cutmix_alpha)
  use_cutmix = jax.random.bernoulli(choice_rng, switch_prob)
  mixed_up, mixup_labels = mixup(mixup_rng, images, labels, mixup_alpha)
  cut, cutmix_labels = cutmix(cutmix_rng, images, labels, cutmix_alpha)
  return (jnp.where(use_cutmix, cut, mixed_up),
          jax.tree.map(lambda c, m: jnp.where(use_cutmix, c, m),
                       cutmix_labels, mixup_labels))
