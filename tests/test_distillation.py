"""Knowledge distillation: the loss, the teacher, the step."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import step_images, tiny_config
from jax_resnet import distillation
from jax_resnet import errors
from jax_resnet import train


def test_kd_loss_by_hand():
  student = np.float32([[1.0, 2.0, 0.5], [0.0, -1.0, 3.0]])
  teacher = np.float32([[2.0, 0.0, 1.0], [1.0, 1.0, 1.0]])
  t = 3.0

  def softmax(x):
    e = np.exp(x - x.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)

  p, q = softmax(teacher / t), softmax(student / t)
  expected = t * t * np.sum(p * np.log(p / q), -1)
  np.testing.assert_allclose(distillation.kd_loss(student, teacher, t),
                             expected, rtol=1e-5)
  # Zero when the student matches the teacher.
  np.testing.assert_allclose(distillation.kd_loss(teacher, teacher, t), 0.0,
                             atol=1e-6)


@pytest.fixture
def teacher_workdir(tmp_path, mock_cifar):
  del mock_cifar
  workdir = str(tmp_path / 'teacher')
  train.train_and_evaluate(tiny_config(num_epochs=1, **{
      'model.depth': 14, 'data.normalization': 'imagenet'}), workdir)
  return workdir


def test_distilling_step_loss_and_teacher_in_eval_mode(teacher_workdir,
                                                       capsys):
  config = tiny_config(**{'distill.teacher_workdir': teacher_workdir,
                          'distill.alpha': 0.7,
                          'distill.temperature': 2.0})
  teacher = distillation.load_teacher(config)
  assert teacher.description == 'ResNet-14 (basic blocks)'
  model = train.validated_model(config)
  state = train.create_train_state(config, model.module, 10)
  cfg = train.step_config(config)
  rng = np.random.default_rng(0)
  batch = {'image': rng.integers(0, 256, (16, 32, 32, 3), np.uint8),
           'label': rng.integers(0, 10, (16,), np.int32)}
  _, metrics = jax.jit(functools.partial(train.train_step, cfg=cfg,
                                         teacher=teacher))(state, batch)
  # By hand: the step's augmentation, the student's logits, the teacher's
  # logits on the same images in its own (ImageNet) normalisation.
  images, _, depth_rng = step_images(state, batch, cfg)
  logits, _ = state.apply_fn(
      {'params': state.params, 'batch_stats': state.batch_stats}, images,
      train=True, mutable=['batch_stats'],
      rngs={'stochastic_depth': depth_rng})
  pixels = np.asarray(images) * np.asarray(cfg.std) + np.asarray(cfg.mean)
  teacher_images = (pixels - np.asarray(teacher.mean)) / np.asarray(
      teacher.std)
  teacher_logits = teacher.module.apply(teacher.variables,
                                        jnp.asarray(teacher_images))
  ce = train.cross_entropy(logits, batch['label'], 10)
  kd = distillation.kd_loss(logits, teacher_logits, 2.0)
  expected = float(jnp.mean(0.3 * ce + 0.7 * kd))
  assert float(metrics['train_loss']) == pytest.approx(expected, rel=1e-4)

  # The whole run prints what it distils from.
  train.train_and_evaluate(tiny_config(num_epochs=1, **{
      'distill.teacher_workdir': teacher_workdir}),
                           teacher_workdir + '_student')
  assert 'Distilling ResNet-14 (basic blocks)' in capsys.readouterr().out


def test_teacher_errors(teacher_workdir, tmp_path):
  with pytest.raises(errors.ConfigError, match='is not a directory'):
    distillation.load_teacher(tiny_config(**{
        'distill.teacher_workdir': str(tmp_path / 'none')}))
  with pytest.raises(errors.ConfigError, match='trained on cifar10; the '
                     'student trains on cifar100'):
    distillation.load_teacher(tiny_config('cifar100', **{
        'distill.teacher_workdir': teacher_workdir}))
  for overrides, message in (({'distill.alpha': 1.5}, 'distill.alpha'),
                             ({'distill.temperature': 0.0}, 'temperature'),
                             ({'distill.teacher_config': 'x.py'},
                              'needs distill.teacher_workdir')):
    with pytest.raises(errors.ConfigError, match=message):
      train.validated_model(tiny_config(**overrides))
