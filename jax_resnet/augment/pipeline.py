"""The training augmentation of a config, in its fixed order."""

import dataclasses
from typing import Any, Optional

import jax
import ml_collections
import numpy as np

from jax_resnet import input_pipeline
from jax_resnet.augment import basic
from jax_resnet.augment import mix
from jax_resnet.augment import policies

# The random streams of the step's augmentation key: crop and flip use the
# key itself, the others keys folded from it.
CUTOUT_STREAM, POLICY_STREAM, MIX_STREAM = 1, 2, 3


@dataclasses.dataclass(frozen=True)
class AugmentConfig:
  """Static training augmentation settings (``config.data``)."""
  crop_padding: int = 4
  random_flip: bool = True
  policy: str = 'none'
  randaugment_n: int = 2
  randaugment_m: int = 9
  cutout: int = 0
  mixup_alpha: float = 0.0
  cutmix_alpha: float = 0.0
  mix_switch_prob: float = 0.5

  @property
  def mixes(self) -> bool:
    """Whether batches are mixed (Mixup or CutMix)."""
    return self.mixup_alpha > 0 or self.cutmix_alpha > 0


def augment_config(config: ml_collections.ConfigDict) -> AugmentConfig:
  """The augmentation of ``config.data``."""
  data = config.data
  return AugmentConfig(
      crop_padding=data.crop_padding, random_flip=data.random_flip,
      policy=data.policy, randaugment_n=data.randaugment_n,
      randaugment_m=data.randaugment_m, cutout=data.cutout, mixup_alpha=float(data.mixup_alpha),
      cutmix_alpha=float(data.cutmix_alpha),
      mix_switch_prob=float(data.mix_switch_prob))


def train_batch(rng: jax.Array, images: jax.Array, labels: jax.Array,
                cfg: AugmentConfig, mean: np.ndarray, std: np.ndarray,
                dtype: Any) -> tuple[jax.Array, Optional[mix.MixedLabels]]:
  """A uint8 batch, augmented and normalised for training.

  Returns:
    The images in ``dtype``, and the mixed labels when ``cfg.mixes`` (else
    None: the labels are the batch's own).
  """
  images = basic.random_crop_and_flip(rng, images, cfg.crop_padding,
                                      cfg.random_flip)
  if cfg.policy != 'none':
    images = policies.apply_policy(jax.random.fold_in(rng, POLICY_STREAM),
                                   images, cfg.policy, cfg.randaugment_n,
                                   cfg.randaugment_m)
  images = input_pipeline.normalize(images, mean, std, dtype)
  if cfg.cutout:
    images = basic.cutout(jax.random.fold_in(rng, CUTOUT_STREAM), images,
                          cfg.cutout)
  if not cfg.mixes:
    return images, None
  return mix.mix(jax.random.fold_in(rng, MIX_STREAM), images, labels,
                 cfg.mixup_alpha, cfg.cutmix_alpha, cfg.mix_switch_prob)
