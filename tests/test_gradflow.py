"""Gradient flow: the probes measure true gradients; plain vs residual."""

import functools
import json
import math
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import ROOT, tiny_config
from configs import default
from jax_resnet.tools import gradflow
from jax_resnet.models import registry

PNG_MAGIC = b'\x89PNG\r\n\x1a\n'


def init_norms(block, depth, batch=4, seed=0):
  """Gradient norms of a freshly initialised network on random images."""
  config = default.get_config()
  config.model.block, config.model.depth = block, depth
  model = registry.create_model(config.model, 10)
  # Eagerly: op by op is quicker here than compiling each deep initialiser.
  variables = model.init(jax.random.PRNGKey(seed), jnp.zeros((1, 32, 32, 3)),
                         train=False)
  rng = np.random.default_rng(seed)
  images = jnp.asarray(rng.normal(size=(batch, 32, 32, 3)), jnp.float32)
  labels = jnp.asarray(rng.integers(0, 10, size=(batch,)), jnp.int32)
  norms_fn, positions = gradflow.gradient_norm_fn(model, variables, images)
  norms = norms_fn(variables['params'], variables['batch_stats'], images,
                   labels, jax.random.PRNGKey(1))
  return model, variables, images, labels, norms, positions


def test_last_activation_probe_is_the_analytic_gradient():
  # Above the last block sit only global average pooling and the dense head,
  # so dL/dh there is W_head (softmax - one_hot) / (batch * H * W) at every
  # position: its norm is ||(p - y) W^T|| / (batch * sqrt(H * W)).
  model, variables, images, labels, norms, positions = init_norms('basic', 8)
  assert positions == ['stem', 'stage1_block1', 'stage2_block1',
                       'stage3_block1']
  logits, _ = jax.jit(functools.partial(
      model.apply, train=True, mutable=['batch_stats']))(variables, images)
  probs = jax.nn.softmax(logits)
  delta = probs - jax.nn.one_hot(labels, 10)
  pooled_grad = delta @ variables['params']['head']['kernel'].T
  height_width = 8 * 8  # Stage 3 of a 32x32 input.
  expected = float(jnp.linalg.norm(pooled_grad)) / (
      len(labels) * math.sqrt(height_width))
  assert float(norms['activation'][-1]) == pytest.approx(expected, rel=1e-4)
  assert float(norms['loss']) == pytest.approx(float(jnp.mean(
      -jnp.sum(jax.nn.log_softmax(logits) * jax.nn.one_hot(labels, 10),
               -1))), rel=1e-5)


def test_writes_json_and_png_with_finite_norms(tmp_path, mock_cifar):
  del mock_cifar
  out = str(tmp_path / 'gradflow')
  gradflow.run([tiny_config()], out, steps=2, batch_size=8)
  with open(os.path.join(out, 'gradflow.json')) as f:
    summary = json.load(f)
  assert (summary['batch_size'], summary['steps']) == (8, 2)
  assert [r['label'] for r in summary['results']] == ['basic-8']
  for result in summary['results']:
    assert len(result['positions']) == 4 and len(result['train_loss']) == 2
    assert (result['init']['step'], result['trained']['step']) == (0, 2)
    for time in ('init', 'trained'):
      for kind in gradflow.KINDS:
        values = np.asarray(result[time][kind])
        assert values.shape == (4,)
        assert np.all(np.isfinite(values)) and np.all(values > 0)
    # SGD changed the parameters, so the gradients differ too.
    assert result['init']['parameter'] != result['trained']['parameter']
  with open(os.path.join(out, 'gradflow.png'), 'rb') as f:
    assert f.read(8) == PNG_MAGIC


def test_variants_cross_configs_blocks_and_depths():
  configs = gradflow.variants([tiny_config(), tiny_config('cifar100')],
                              ['plain', 'basic'], [20, 56])
  assert [(c.dataset, c.model.block, c.model.depth) for c in configs] == [
      (d, b, n) for d in ('cifar10', 'cifar100') for b in ('plain', 'basic')
      for n in (20, 56)]


def test_plain_gradient_at_the_stem_is_larger_than_residual():
  # Without shortcuts, and with BatchNorm in training mode, the gradient
  # grows on its way down at initialisation; it does not vanish. Measured on
  # these 4 images: plain-56's stem gets about 450 times ResNet-56's, in both
  # the activation and the parameter gradient (plain-20: about 3 times).
  stem = {block: init_norms(block, 56)[4] for block in ('plain', 'basic')}
  for kind in gradflow.KINDS:
    assert stem['plain'][kind][0] > 50 * stem['basic'][kind][0], kind
    # Near the head the two are alike: the difference builds up with depth.
    assert stem['plain'][kind][-1] < 3 * stem['basic'][kind][-1], kind


def test_command_line_refuses_an_unknown_field():
  proc = subprocess.run(
      [sys.executable, '-m', 'jax_resnet.tools.gradflow', '--config',
       'configs/plain20_cifar10.py', '--config.model.deptth=8'], cwd=ROOT,
      capture_output=True, text=True, timeout=300)
  assert proc.returncode == 2
  assert "unknown config field 'model.deptth'" in proc.stderr
