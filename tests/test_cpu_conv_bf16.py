"""The bf16 CPU convolution kernels: values and gradients against a float32
reference on bf16-rounded operands, the micro-kernel choice, the routing.

The reference micro-kernel runs on every x86-64 CPU, so the kernels' blocking
(tiles, tails, strides, col2im, VNNI pairs) is checked everywhere; the AMX and
AVX512-BF16 micro-kernels run here too where the CPU has them.
"""

import platform
import re

import jax
import jax.numpy as jnp
from jax import lax
import numpy as np
import optax
import pytest

from conftest import model_config
from jax_resnet import errors
from jax_resnet.models import layers
from jax_resnet.models import registry
from jax_resnet.ops import canonical_conv
from jax_resnet.ops import cpu_conv
from jax_resnet.ops import cpu_conv_bf16
from jax_resnet.ops import cpu_kernels

DN = ('NHWC', 'HWIO', 'NHWC')

pytestmark = pytest.mark.skipif(
    platform.machine().lower() not in ('x86_64', 'amd64'),
    reason='the bf16 kernels are x86-64 code')

# (batch, height, width, in channels, kernel, out channels, stride, padding).
SHAPES = [
    (2, 32, 32, 16, 3, 16, 1, 1),   # ResNet stage 1: two 16-pixel tiles a row
    (2, 32, 32, 16, 3, 32, 2, 1),   # stage 2 entry: strided, col2im gradient
    (1, 8, 8, 64, 3, 64, 1, 1),     # stage 3: 8-pixel tiles, 4 column blocks
    (1, 16, 16, 32, 3, 32, 1, 1),   # stage 2: kd 96, 32 rows at once
    (2, 32, 32, 16, 1, 32, 2, 0),   # projection shortcut
    (1, 8, 8, 64, 3, 80, 1, 1),     # 5 column blocks: 64 + 16
    (2, 9, 7, 32, 3, 48, 1, 1),     # odd sizes: 7-pixel tiles, 63 pixels
    (1, 7, 9, 32, 3, 48, 2, 1),     # odd sizes, stride 2: 20 pixels
    (2, 10, 10, 16, 3, 16, 1, 0),   # no padding
    (1, 8, 8, 32, 5, 32, 1, 2),     # 5x5: kd = 160
    (1, 20, 20, 16, 3, 16, 1, 1),   # a 16-pixel tile and a 4-pixel tail
    (1, 8, 8, 32, 3, 112, 2, 1),    # kernel panels of 64 columns: 64 + 48
    (1, 2, 2, 16, 3, 80, 1, 1),     # one 16-row product, panels 64 + 16
    (20, 6, 6, 16, 3, 32, 1, 1),    # kernel gradient: 8 parts, 2-3 images
]


def _fast_micro_kernels():
  """The fast micro-kernels this CPU has (none on most CI machines)."""
  features = cpu_kernels.cpu_features()
  found = []
  if {'avx512f', 'avx512_bf16'} <= features:
    found.append('avx512_bf16')
  if {'amx_tile', 'amx_bf16'} <= features:
    found.append('amx')
  return found


MICRO_KERNELS = ['reference'] + _fast_micro_kernels()


def _operands(shape, seed=0):
  n, h, w, c, k, o, s, p = shape
  rng = np.random.default_rng(seed)
  x = jnp.asarray(rng.normal(size=(n, h, w, c)), jnp.bfloat16)
  kernel = jnp.asarray(rng.normal(size=(k, k, c, o)) / np.sqrt(k * k * c),
                       jnp.bfloat16)
  strides, padding = (s, s), ((p, p), (p, p))
  out = canonical_conv.output_shape(x.shape, kernel.shape, strides, padding)
  g = jnp.asarray(rng.normal(size=out), jnp.bfloat16)
  return x, kernel, g, strides, padding


def _float32_reference(x, kernel, g, strides, padding):
  """y, dx, dw of the float32 convolution of the bf16 values."""
  f32 = lambda a: a.astype(jnp.float32)
  conv = lambda a, b: lax.conv_general_dilated(
      a, b, strides, padding, dimension_numbers=DN,
      precision=lax.Precision.HIGHEST)
  y, vjp = jax.vjp(conv, f32(x), f32(kernel))
  return (y, *vjp(f32(g)))


def _close(got, want):
  """float32 agreement up to summation order."""
  got, want = np.asarray(got), np.asarray(want)
  assert got.dtype == np.float32 and got.shape == want.shape
  np.testing.assert_allclose(got, want, rtol=1e-5,
                             atol=1e-5 * np.abs(want).max())


def _rounded_once(got, want):
  """bf16 ``got`` is float32 ``want`` rounded to nearest even, up to the
  summation order: equal almost everywhere (a float32 sum in another order
  can only flip a rounding that was within 1e-5 of a tie), and within one
  bf16 step everywhere. Truncating would miss half the values."""
  got, want = np.asarray(got), np.asarray(want)
  assert got.dtype == jnp.bfloat16 and got.shape == want.shape
  rounded = want.astype(jnp.bfloat16).astype(np.float32)
  got = got.astype(np.float32)
  assert np.mean(got == rounded) >= 0.99
  np.testing.assert_allclose(got, want, rtol=2 ** -7,
                             atol=1e-5 * np.abs(want).max())


@pytest.mark.parametrize('micro_kernel', MICRO_KERNELS)
@pytest.mark.parametrize('shape', SHAPES, ids=str)
def test_kernels_match_float32_on_bf16_values(shape, micro_kernel):
  """Each op accumulates the exact bf16 products in float32; the forward and
  input gradient round the sums to bf16 once."""
  x, kernel, g, strides, padding = _operands(shape)
  assert cpu_conv_bf16.supported(x.shape, kernel.shape, strides, padding)
  y, dx, dw = _float32_reference(x, kernel, g, strides, padding)
  call = lambda target, out, a, b: cpu_conv_bf16.call(
      target, out.shape, a, b, strides, padding, micro_kernel=micro_kernel)
  _rounded_once(call(cpu_conv_bf16._FORWARD, y, x, kernel), y)
  _rounded_once(call(cpu_conv_bf16._INPUT_GRAD, dx, g, kernel), dx)
  _close(call(cpu_conv_bf16._KERNEL_GRAD, dw, x, g), dw)


@pytest.mark.parametrize('micro_kernel', MICRO_KERNELS)
@pytest.mark.parametrize('shape', [
    (2, 8, 8, 36, 1, 48, 1, 0),    # DenseNet-BC bottleneck 1x1 (any width)
    (1, 9, 7, 20, 3, 32, 1, 1),    # 3x3: kernel rows of 60 values
    (1, 8, 8, 40, 1, 16, 2, 0),    # strided: tiles read into the zero tail
    (1, 7, 9, 27, 3, 16, 2, 1),    # strided 3x3, odd width
], ids=str)
def test_forward_takes_any_input_width(shape, micro_kernel):
  """The forward reads input channels off the lanes as they are (rows run on
  into the next position's values or a zero tail, against zero weights):
  the float32 sums of the bf16 products, rounded once. The gradients refuse
  them (the Python side pads their channels)."""
  x, kernel, g, strides, padding = _operands(shape)
  y, _, _ = _float32_reference(x, kernel, g, strides, padding)
  _rounded_once(cpu_conv_bf16.call(cpu_conv_bf16._FORWARD, y.shape, x, kernel,
                                   strides, padding, micro_kernel=micro_kernel),
                y)
  with pytest.raises(Exception, match='multiple of 16'):
    jax.block_until_ready(cpu_conv_bf16.call(
        cpu_conv_bf16._KERNEL_GRAD, kernel.shape, x, g, strides, padding,
        micro_kernel=micro_kernel))


def test_conv2d_values_and_gradients_in_bf16(monkeypatch):
  """``conv2d`` returns bf16 results within one bf16 rounding of float32, and
  its gradients are bf16, under jit."""
  monkeypatch.setattr(cpu_conv_bf16, 'isa', lambda: 'reference')
  x, kernel, g, strides, padding = _operands(SHAPES[1], seed=1)
  y32, dx32, dw32 = _float32_reference(x, kernel, g, strides, padding)
  loss = lambda a, b: jnp.sum(
      cpu_conv_bf16.conv2d(a, b, strides, padding).astype(jnp.float32) *
      g.astype(jnp.float32))
  y = jax.jit(cpu_conv_bf16.conv2d, static_argnums=(2, 3))(
      x, kernel, strides, padding)
  dx, dw = jax.jit(jax.grad(loss, argnums=(0, 1)))(x, kernel)
  for got, want in ((y, y32), (dx, dx32), (dw, dw32)):
    assert got.dtype == jnp.bfloat16
    np.testing.assert_allclose(np.asarray(got, np.float32), want,
                               rtol=2 ** -8, atol=1e-6)


def test_rounding_to_bf16_is_to_nearest_even_on_every_path():
  """The kernels' vector rounding of their float32 sums (AVX512-BF16's
  VCVTNE2PS2BF16 or AVX-512 integer arithmetic, whichever this CPU has, else
  scalar) gives the scalar round-to-nearest-even bits on ties, carries,
  overflow to infinity, NaNs, signed zeros and float32 subnormals."""
  assert cpu_conv_bf16._library().jax_resnet_bf16_round_check() == 1


def test_results_are_deterministic():
  """The kernel gradient sums its batch parts in a fixed order."""
  x, _, g, strides, padding = _operands((9, 8, 8, 16, 3, 16, 1, 1))
  grad = lambda: np.asarray(cpu_conv_bf16.call(
      cpu_conv_bf16._KERNEL_GRAD, (3, 3, 16, 16), x, g, strides, padding,
      micro_kernel='reference'))
  first = grad()
  assert np.array_equal(first, grad())


@pytest.mark.parametrize('features,permitted,want', [
    ({'avx512f', 'avx512_bf16', 'amx_tile', 'amx_bf16'}, True, 'amx'),
    ({'avx512f', 'avx512_bf16', 'amx_tile', 'amx_bf16'}, False,
     'avx512_bf16'),
    ({'avx512f', 'avx512_bf16'}, False, 'avx512_bf16'),  # Zen 4
    ({'avx512f', 'avx512bw'}, False, 'none'),            # Skylake-X
    ({'avx2', 'fma'}, False, 'none'),
])
def test_micro_kernel_follows_cpu_features(features, permitted, want):
  assert cpu_conv_bf16.features_isa(frozenset(features), permitted) == want


@pytest.fixture
def fresh_isa():
  cpu_conv_bf16.isa.cache_clear()
  yield
  cpu_conv_bf16.isa.cache_clear()


@pytest.mark.usefixtures('fresh_isa')
def test_isa_override(monkeypatch):
  """``$JAX_RESNET_BF16_ISA``: forced, off, refused, or an unknown name."""
  monkeypatch.setenv(cpu_conv_bf16.ENV, 'reference')
  assert cpu_conv_bf16.isa() == 'reference' and cpu_conv_bf16.available()
  cpu_conv_bf16.isa.cache_clear()
  monkeypatch.setenv(cpu_conv_bf16.ENV, 'none')
  assert cpu_conv_bf16.isa() == 'none' and not cpu_conv_bf16.available()
  cpu_conv_bf16.isa.cache_clear()
  monkeypatch.setenv(cpu_conv_bf16.ENV, 'avx512-bf16')
  with pytest.raises(errors.ConfigError, match='valid: auto, amx'):
    cpu_conv_bf16.isa()
  cpu_conv_bf16.isa.cache_clear()
  # A CPU without the instructions refuses them by name.
  monkeypatch.setattr(cpu_kernels, 'cpu_features',
                      lambda: frozenset({'avx2', 'fma'}))
  for name in ('amx', 'avx512_bf16'):
    monkeypatch.setenv(cpu_conv_bf16.ENV, name)
    with pytest.raises(errors.ConfigError, match=f'{name} but this CPU'):
      cpu_conv_bf16.isa()
    cpu_conv_bf16.isa.cache_clear()
  monkeypatch.setenv(cpu_conv_bf16.ENV, 'auto')
  assert cpu_conv_bf16.isa() == 'none'


@pytest.mark.parametrize('micro_kernel', MICRO_KERNELS)
def test_self_check(micro_kernel):
  """The load-time check passes for every micro-kernel this CPU has."""
  library = cpu_conv_bf16._library()
  assert library.jax_resnet_bf16_self_check(
      cpu_conv_bf16._CODES[micro_kernel]) == 1


def test_routing(monkeypatch):
  """``cpu_conv`` hands canonical bf16 convolutions with 16 or more input
  channels to the bf16 kernels (output channels padded to multiples of 16;
  the input's only in the gradients), those with fewer (the stem) to the
  bf16 forward and the float32 kernels' gradients, and the rest (or
  everything, without bf16 kernels) to XLA."""
  calls = []

  def fallback(*args):
    calls.append(args[0].shape)
    return lax.conv_general_dilated(*args)

  conv = lambda x, w, s=(1, 1), p=((1, 1), (1, 1)): (
      cpu_conv.conv_general_dilated(x, w, s, p, dimension_numbers=DN,
                                    fallback=fallback))
  same = ((1, 1), (1, 1))
  bits = lambda a: np.asarray(a, np.float32)
  pad = lambda a, c, k: jnp.pad(a, ((0, 0), (0, 0), (0, c), (0, k)))
  x, kernel, _, _, _ = _operands(SHAPES[2])
  monkeypatch.setattr(cpu_conv_bf16, 'isa', lambda: 'reference')
  y = conv(x, kernel)
  assert not calls
  assert y.dtype == jnp.bfloat16
  np.testing.assert_array_equal(
      bits(y), bits(cpu_conv_bf16.conv2d(x, kernel, (1, 1), same)))
  # 36 input and 12 output channels (DenseNet): the bf16 kernels on the 36
  # channels as they are and 4 zero output channels, sliced off; the same
  # bits as on 12 zero input channels more (the reference's sums in order).
  y36 = conv(x[..., :36], kernel[:, :, :36, :12])
  assert y36.dtype == jnp.bfloat16 and y36.shape == (1, 8, 8, 12)
  # The forward makes no padded copy of the input; the gradients do.
  padded = 'tensor<1x8x8x48xbf16>'
  assert padded not in jax.jit(conv).lower(
      x[..., :36], kernel[:, :, :36, :12]).as_text()
  assert padded in jax.jit(lambda a, b: jax.vjp(conv, a, b)[1](y36)).lower(
      x[..., :36], kernel[:, :, :36, :12]).as_text()
  np.testing.assert_array_equal(bits(y36), bits(cpu_conv_bf16.conv2d(
      x[..., :36], pad(kernel[:, :, :36, :12], 0, 4), (1, 1), same)[..., :12]))
  np.testing.assert_array_equal(bits(y36), bits(cpu_conv_bf16.conv2d(
      jnp.pad(x[..., :36], ((0, 0),) * 3 + ((0, 12),)),
      pad(kernel[:, :, :36, :12], 12, 4), (1, 1), same)[..., :12]))
  # 12 input channels, 64 or 12 output channels (like the RGB stem): the
  # bf16 forward on the 12 channels as they are, and the gradients of the
  # float32 kernels on the widened operands, rounded to bf16 once.
  f32 = jnp.float32
  for k in (64, 12):
    x12, w12 = x[..., :12], kernel[:, :, :12, :k]
    y12, vjp = jax.vjp(conv, x12, w12)
    assert y12.dtype == jnp.bfloat16 and y12.shape == (1, 8, 8, k)
    np.testing.assert_array_equal(bits(y12), bits(cpu_conv_bf16.conv2d(
        x12, pad(w12, 0, -k % 16), (1, 1), same)[..., :k]))
    widened = lambda a, b: cpu_conv.conv2d(  # pylint: disable=cell-var-from-loop
        a.astype(f32), pad(b, 0, -k % 16).astype(f32), (1, 1),
        same)[..., :k].astype(jnp.bfloat16)
    for got, want in zip(vjp(y12), jax.vjp(widened, x12, w12)[1](y12)):
      assert got.dtype == jnp.bfloat16
      np.testing.assert_array_equal(bits(got), bits(want))
  # No input padded to 16 channels in the forward or the gradients (at 64
  # output channels no other tensor has 16).
  assert 'tensor<1x8x8x16xbf16>' not in jax.jit(
      lambda a, b: jax.vjp(conv, a, b)[1](conv(a, b))).lower(
          x[..., :12], kernel[:, :, :12, :]).as_text()
  cpu_conv.conv_general_dilated(          # Dilated: not canonical.
      x, kernel, (1, 1), ((2, 2), (2, 2)), rhs_dilation=(2, 2),
      dimension_numbers=DN, fallback=fallback)
  monkeypatch.setattr(cpu_conv_bf16, 'isa', lambda: 'none')
  conv(x, kernel)
  assert calls == [(1, 8, 8, 64), (1, 8, 8, 64)]


@pytest.mark.parametrize('shape', [
    (2, 8, 8, 36, 3, 12, 1, 1),    # DenseNet-BC 3x3 layer (growth 12)
    (2, 8, 8, 40, 1, 20, 2, 0),    # odd both ways, strided 1x1
    (1, 9, 7, 3, 3, 24, 1, 1),     # DenseNet-BC stem: narrow, padded K
], ids=str)
def test_padded_channels_values_and_gradients(shape, monkeypatch):
  """Channel counts off the lanes: values and both gradients of the padded
  kernels are bf16 and within one bf16 rounding of float32, under jit."""
  monkeypatch.setattr(cpu_conv_bf16, 'isa', lambda: 'reference')
  x, kernel, g, strides, padding = _operands(shape, seed=2)
  y32, dx32, dw32 = _float32_reference(x, kernel, g, strides, padding)
  conv = lambda a, b: cpu_conv.conv_general_dilated(
      a, b, strides, padding, dimension_numbers=DN)
  y, vjp = jax.jit(lambda a, b: jax.vjp(conv, a, b))(x, kernel)
  dx, dw = jax.jit(vjp)(g)
  hlo = jax.jit(lambda a, b: jax.vjp(conv, a, b)[1](g)).lower(
      x, kernel).as_text()
  assert 'jax_resnet_' in hlo and 'convolution(' not in hlo
  for got, want in ((y, y32), (dx, dx32), (dw, dw32)):
    assert got.dtype == jnp.bfloat16 and got.shape == want.shape
    np.testing.assert_allclose(np.asarray(got, np.float32), want,
                               rtol=2 ** -7, atol=2e-3 * np.abs(want).max())


def test_bf16_network_on_the_kernels(monkeypatch):
  """A bf16 ResNet-8 train step with ``conv_backend='cpu_kernels'``: the
  convolutions with channels in 16s run the bf16 kernels, and the loss and
  gradients are as close to the float32 network's as XLA's bf16 network is.
  Mixed precision: every layer's output (convolutions, BatchNorm, the head)
  is bf16; logits, loss, parameters, gradients and BatchNorm statistics are
  float32."""
  monkeypatch.setattr(cpu_conv_bf16, 'isa', lambda: 'reference')
  monkeypatch.setattr(cpu_kernels, 'resolve',
                      lambda b: 'xla' if b == 'xla' else 'cpu_kernels')
  rng = np.random.default_rng(0)
  images = jnp.asarray(rng.normal(size=(4, 32, 32, 3)), jnp.float32)
  labels = jnp.asarray([0, 3, 7, 9])
  results = {}
  for dtype, backend in (('bfloat16', 'cpu_kernels'), ('bfloat16', 'xla'),
                         ('float32', 'xla')):
    model = registry.create_model(
        model_config(depth=8, dtype=dtype, conv_backend=backend), 10)
    variables = model.init(jax.random.PRNGKey(0), images, train=False)

    def loss_fn(params, model=model, variables=variables):
      (logits, state) = model.apply(
          {'params': params, 'batch_stats': variables['batch_stats']},
          images, train=True, mutable=['batch_stats', 'intermediates'],
          capture_intermediates=True,
          rngs={layers.TRAINING_RNG: jax.random.PRNGKey(1)})
      loss = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
      return loss.mean(), (logits, state)

    step = jax.jit(jax.value_and_grad(loss_fn, has_aux=True))
    hlo = step.lower(variables['params']).as_text()
    (loss, (logits, state)), grads = step(variables['params'])
    results[dtype, backend] = loss, np.concatenate(
        [np.ravel(g) for g in jax.tree.leaves(grads)])
    for name in ('forward', 'input_grad', 'kernel_grad'):
      assert (f'jax_resnet_conv_bf16_{name}' in hlo) == (
          backend == 'cpu_kernels'), (backend, name)
    assert logits.dtype == loss.dtype == jnp.float32
    for tree in (grads, state['batch_stats'], variables['params']):
      assert {leaf.dtype for leaf in jax.tree.leaves(tree)} == {
          jnp.dtype(jnp.float32)}
    outputs = state['intermediates']
    layer_outputs = jax.tree.leaves(
        {k: v for k, v in outputs.items() if k != '__call__'})
    assert layer_outputs and {o.dtype for o in layer_outputs} == {
        jnp.dtype(dtype)}
  (loss, grads), (xla_loss, xla_grads), (loss32, grads32) = results.values()
  np.testing.assert_allclose(loss, loss32, rtol=1e-2)
  error = np.linalg.norm(grads - grads32)
  assert 0 < error <= 1.5 * np.linalg.norm(xla_grads - grads32)
  assert error <= 0.15 * np.linalg.norm(grads32)


@pytest.mark.usefixtures('fresh_isa')
def test_broken_micro_kernel_is_never_used(monkeypatch, caplog):
  """A library that fails to build, or a micro-kernel that disagrees with the
  reference: one warning and XLA under 'auto', an error when asked for."""

  class Disagreeing:
    jax_resnet_amx_permitted = staticmethod(lambda: 0)
    jax_resnet_bf16_self_check = staticmethod(lambda isa: 0)

  def unbuildable():
    raise errors.ConfigError('Building the bf16 CPU kernels: g++ failed')

  monkeypatch.setattr(cpu_kernels, 'cpu_features',
                      lambda: frozenset({'avx512f', 'avx512_bf16'}))
  for library, message in ((lambda: Disagreeing(), 'disagrees'),
                           (unbuildable, 'g++ failed')):
    monkeypatch.setattr(cpu_conv_bf16, '_library', library)
    monkeypatch.setenv(cpu_conv_bf16.ENV, 'auto')
    caplog.clear()
    assert cpu_conv_bf16.isa() == 'none'
    assert message in caplog.text and 'run on XLA' in caplog.text
    cpu_conv_bf16.isa.cache_clear()
    monkeypatch.setenv(cpu_conv_bf16.ENV, 'avx512_bf16')
    with pytest.raises(errors.ConfigError, match=re.escape(message)):
      cpu_conv_bf16.isa()
    cpu_conv_bf16.isa.cache_clear()


def test_a_micro_kernel_the_cpu_lacks_is_an_error_not_a_crash():
  """Asked for directly, a micro-kernel this CPU (or Linux) does not run is
  refused by the library; one it runs computes the reference's result."""
  x, kernel, _, strides, padding = _operands(SHAPES[2])
  forward = lambda micro_kernel: np.asarray(cpu_conv_bf16.call(
      cpu_conv_bf16._FORWARD, (1, 8, 8, 64), x, kernel, strides, padding,
      micro_kernel=micro_kernel))
  want = forward('reference')
  amx_permitted = cpu_conv_bf16._library().jax_resnet_amx_permitted()
  for micro_kernel in ('avx512_bf16', 'amx'):
    if micro_kernel in MICRO_KERNELS and (micro_kernel != 'amx' or
                                          amx_permitted):
      _rounded_once(forward(micro_kernel), want.astype(np.float32))
    else:
      with pytest.raises(Exception, match='lacks'):
        forward(micro_kernel)
