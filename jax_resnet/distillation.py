"""Knowledge distillation from a trained teacher (Hinton et al. 2015).

The student's loss is ``(1 - alpha) * CE(student, targets) + alpha * T^2 *
KL(softmax(teacher / T) || softmax(student / T))``, with
``config.distill.alpha`` and the temperature T ``config.distill.temperature``;
T^2 keeps the soft term's gradients on the scale of the hard term's. The
targets are the batch's (mixed, smoothed) targets as without distillation.

The teacher is any workdir this project wrote (or imported from PyTorch with
``python -m jax_resnet.interop.torch_import``): its best checkpoint, with the
weights its ``eval_weights`` names, built from its ``config.json`` or from
``config.distill.teacher_config``. It runs in eval mode (running BatchNorm
statistics, no dropout or stochastic depth) inside the student's compiled
step, on the same augmented images, renormalised to its own normalisation.
"""

import dataclasses
import json
import os
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from jax_resnet import checkpoints
from jax_resnet import config_overrides
from jax_resnet import errors
from jax_resnet import input_pipeline


def kd_loss(student_logits: jax.Array, teacher_logits: jax.Array,
            temperature: float) -> jax.Array:
  """Per-example ``T^2 * KL(softmax(teacher / T) || softmax(student / T))``.
  """
  teacher_log_p = jax.nn.log_softmax(
      teacher_logits.astype(jnp.float32) / temperature)
  student_log_p = jax.nn.log_softmax(
      student_logits.astype(jnp.float32) / temperature)
  kl = jnp.sum(jnp.exp(teacher_log_p) * (teacher_log_p - student_log_p), -1)
  return temperature ** 2 * kl


@dataclasses.dataclass(frozen=True)
class Teacher:
  """A restored teacher: its network, variables and input normalisation."""
  description: str
  module: Any
  variables: dict[str, Any]
  mean: tuple[float, ...]
  std: tuple[float, ...]
  dtype: Any
  workdir: str
  checkpoint_step: int

  def logits(self, images: jax.Array, mean: np.ndarray, std: np.ndarray
             ) -> jax.Array:
    """The teacher's logits (eval mode, no gradient) for images normalised
    with the student's ``mean``/``std``."""
    if (tuple(np.asarray(mean).tolist()) != self.mean or
        tuple(np.asarray(std).tolist()) != self.std):
      pixels = images.astype(jnp.float32) * std + mean
      images = (pixels - np.asarray(self.mean)) / np.asarray(self.std)
    logits = self.module.apply(self.variables, images.astype(self.dtype),
                               train=False)
    return jax.lax.stop_gradient(logits.astype(jnp.float32))


def teacher_config(config: ml_collections.ConfigDict
                   ) -> ml_collections.ConfigDict:
  """The teacher's config: ``distill.teacher_config`` if set, else its
  workdir's config.json over the defaults."""
  distill = config.distill
  if distill.teacher_config:
    return config_overrides.load_config_file(distill.teacher_config)
  path = os.path.join(distill.teacher_workdir, 'config.json')
  if not os.path.exists(path):
    raise errors.ConfigError(
        f'distill.teacher_workdir {distill.teacher_workdir} has no '
        'config.json; give the config it was trained with as '
        'distill.teacher_config.')
  with open(path) as f:
    saved = json.load(f)
  merged = config_overrides.default_config()
  _merge(merged, saved)
  return merged


def _merge(config: ml_collections.ConfigDict, saved: dict[str, Any]) -> None:
  with config.unlocked():
    for key, value in saved.items():
      if isinstance(value, dict) and key in config and isinstance(
          config[key], ml_collections.ConfigDict):
        _merge(config[key], value)
      else:
        config[key] = tuple(value) if isinstance(value, list) else value


def load_teacher(config: ml_collections.ConfigDict) -> Teacher:
  """Restores the best checkpoint of ``config.distill.teacher_workdir``.

  Raises:
    errors.ConfigError: no such workdir, another dataset.
    checkpoints.NoCheckpointError, CheckpointMismatchError: no checkpoint,
      or one another config wrote.
  """
  from jax_resnet import train  # pylint: disable=g-import-not-at-top
  workdir = config.distill.teacher_workdir
  if not os.path.isdir(workdir):
    raise errors.ConfigError(
        f'distill.teacher_workdir {workdir} is not a directory.')
  teacher = teacher_config(config)
  if teacher.dataset != config.dataset:
    raise errors.ConfigError(
        f'The teacher in {workdir} was trained on {teacher.dataset}; the '
        f'student trains on {config.dataset}.')
  model = train.validated_model(teacher)
  abstract = checkpoints.with_sharding(
      jax.eval_shape(lambda: train.create_train_state(teacher, model.module,
                                                      1)),
      jax.sharding.SingleDeviceSharding(jax.devices()[0]))
  ckpt = checkpoints.Checkpointer(workdir, read_only=True)
  try:
    state, _ = ckpt.restore('best', abstract,
                            train.checkpoint_fit(teacher, model))
  finally:
    ckpt.close()
  mean, std = input_pipeline.normalization_stats(teacher.data.normalization,
                                                 teacher.dataset)
  return Teacher(
      description=model.description, module=model.module,
      variables=state.variables(teacher.eval_weights),
      mean=tuple(mean.tolist()), std=tuple(std.tolist()),
      dtype=train.step_config(teacher).dtype, workdir=workdir,
      checkpoint_step=int(state.step))
