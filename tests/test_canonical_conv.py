"""canonical_conv equals lax convolution; its gradients stay canonical in loops."""

import re

import jax
import jax.numpy as jnp
from jax import lax
import numpy as np
import pytest

from jax_resnet.ops import canonical_conv

DN = ('NHWC', 'HWIO', 'NHWC')


@pytest.mark.parametrize('size,cin,cout,kernel,stride,padding', [
    (8, 3, 4, 3, 1, 1), (8, 3, 4, 3, 2, 1), (9, 3, 4, 3, 2, 1),
    (8, 4, 6, 1, 2, 0), (7, 2, 3, 1, 1, 0), (8, 2, 3, 3, 1, 'SAME'),
    (9, 2, 3, 3, 2, 'VALID'), (10, 2, 3, 7, 2, 3)])
def test_values_and_gradients_match_lax(size, cin, cout, kernel, stride,
                                        padding):
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.standard_normal((2, size, size, cin)), jnp.float32)
  w = jnp.asarray(rng.standard_normal((kernel, kernel, cin, cout)),
                  jnp.float32)
  if not isinstance(padding, str):
    padding = ((padding, padding), (padding, padding))

  def reference(x, w):
    return lax.conv_general_dilated(x, w, (stride, stride), padding,
                                    dimension_numbers=DN)

  def ours(x, w):
    return canonical_conv.conv_general_dilated(x, w, (stride, stride),
                                               padding, dimension_numbers=DN)

  y = reference(x, w)
  g = jnp.asarray(rng.standard_normal(y.shape), jnp.float32)
  np.testing.assert_allclose(ours(x, w), y, rtol=1e-5, atol=1e-5)
  for a, b in zip(jax.vjp(ours, x, w)[1](g), jax.vjp(reference, x, w)[1](g)):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-4)


def test_grouped_convolution_is_passed_to_lax():
  rng = np.random.default_rng(1)
  x = jnp.asarray(rng.standard_normal((2, 6, 6, 4)), jnp.float32)
  w = jnp.asarray(rng.standard_normal((3, 3, 2, 4)), jnp.float32)
  kwargs = dict(window_strides=(1, 1), padding='SAME', dimension_numbers=DN,
                feature_group_count=2)
  np.testing.assert_allclose(
      canonical_conv.conv_general_dilated(x, w, **kwargs),
      lax.conv_general_dilated(x, w, **kwargs), rtol=1e-6)


def _conv_dim_labels(fn, *args):
  text = jax.jit(fn).lower(*args).compile().as_text()
  return re.findall(r'convolution\(.*?dim_labels=([\w>-]+)', text)


def test_gradients_inside_a_loop_are_canonical_convolutions():
  """XLA:CPU only runs canonical convolutions fast inside while loops."""
  rng = np.random.default_rng(2)
  x = jnp.asarray(rng.standard_normal((4, 8, 8, 8)), jnp.float32)
  ws = jnp.asarray(rng.standard_normal((3, 3, 3, 8, 8)) * 0.1, jnp.float32)

  def loss(conv, ws, x):
    def body(h, w):
      return jax.nn.relu(conv(h, w, (1, 1), ((1, 1), (1, 1)),
                              dimension_numbers=DN)), None
    return jnp.sum(lax.scan(body, x, ws)[0])

  labels = _conv_dim_labels(
      jax.grad(lambda ws, x: loss(canonical_conv.conv_general_dilated, ws, x)),
      ws, x)
  assert len(labels) >= 3  # forward, input and kernel gradient
  assert set(labels) == {'b01f_01io->b01f'}
