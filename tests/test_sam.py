"""SAM: the perturbation, the two passes, BatchNorm, several devices."""

import functools
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import ROOT, command_env, step_images, tiny_config
from jax_resnet import errors
from jax_resnet import sam
from jax_resnet import train


def test_sam_gradient_on_a_quadratic():
  """loss = sum(a * w^2): g = 2aw, and the SAM gradient is 2a(w + e) with
  e = rho g / ||g||."""
  a = jnp.asarray([1.0, 3.0])
  w = {'w': jnp.asarray([2.0, -1.0])}
  (loss, aux), grads = sam.sam_gradient(
      lambda p: (jnp.sum(a * p['w'] ** 2), 'aux'), w, rho=0.5)
  g = 2 * np.asarray(a) * np.asarray(w['w'])
  e = 0.5 * g / np.linalg.norm(g)
  np.testing.assert_allclose(grads['w'], 2 * np.asarray(a) * (w['w'] + e),
                             rtol=1e-6)
  assert float(loss) == pytest.approx(7.0) and aux == 'aux'


def test_sam_step_updates_with_the_second_gradient_and_first_pass_bn():
  config = tiny_config(**{'optimizer.sam_rho': 0.05})
  plain_config = tiny_config()
  model = train.validated_model(config)
  state = train.create_train_state(config, model.module, 10)
  rng = np.random.default_rng(1)
  batch = {'image': rng.integers(0, 256, (16, 32, 32, 3), np.uint8),
           'label': rng.integers(0, 10, (16,), np.int32)}
  sam_state, sam_metrics = jax.jit(functools.partial(
      train.train_step, cfg=train.step_config(config)))(state, batch)
  plain_state, plain_metrics = jax.jit(functools.partial(
      train.train_step, cfg=train.step_config(plain_config)))(state, batch)
  # The first pass is the plain step's: same loss, same BatchNorm update.
  assert float(sam_metrics['train_loss']) == float(plain_metrics['train_loss'])
  for a, b in zip(jax.tree.leaves(sam_state.batch_stats),
                  jax.tree.leaves(plain_state.batch_stats)):
    np.testing.assert_array_equal(a, b)
  # The update is SGD's from the gradient at the perturbed weights, by hand:
  # the step's augmentation and stochastic-depth keys, then sam_gradient.
  cfg = train.step_config(config)
  images, _, depth_rng = step_images(state, batch, cfg)
  targets = jax.nn.one_hot(batch['label'], 10)

  def loss_fn(params):
    logits, new = state.apply_fn(
        {'params': params, 'batch_stats': state.batch_stats}, images,
        train=True, mutable=['batch_stats'],
        rngs={'stochastic_depth': depth_rng})
    return train.soft_cross_entropy(logits, targets).mean(), new

  _, grads = sam.sam_gradient(loss_fn, state.params, 0.05)
  expected = state.apply_gradients(grads=grads)
  for a, b in zip(jax.tree.leaves(expected.params),
                  jax.tree.leaves(sam_state.params)):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)
  moved = [float(jnp.max(jnp.abs(a - b))) for a, b in zip(
      jax.tree.leaves(sam_state.params), jax.tree.leaves(plain_state.params))]
  assert max(moved) > 1e-5


def test_sam_perturbs_per_device():
  env = command_env(devices=2)
  proc = subprocess.run(
      [sys.executable, os.path.join(ROOT, 'tests', 'sam_devices.py')],
      cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, proc.stdout + proc.stderr
  assert 'per-device SAM ok' in proc.stdout


def test_sam_rho_is_checked():
  with pytest.raises(errors.ConfigError, match='optimizer.sam_rho must be at '
                     'least 0.0; got -0.1'):
    train.validated_model(tiny_config(**{'optimizer.sam_rho': -0.1}))
