"""The CPU convolution kernels: agreement with XLA, fallbacks, build cache."""

import ctypes
import os
import subprocess
import sys
import threading

import jax
import jax.numpy as jnp
from jax import lax
import numpy as np
import pytest

from jax_resnet.ops import cpu_conv
from jax_resnet.ops import cpu_conv_bf16
from jax_resnet.ops import cpu_kernels
from jax_resnet.models import layers
from jax_resnet.models import registry
from jax_resnet.ops import native_build
from configs import default
from conftest import fake_x86_cpu

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DN = ('NHWC', 'HWIO', 'NHWC')

kernels_only = pytest.mark.skipif(
    not cpu_kernels.cpu_can_run()[0],
    reason=f'this CPU cannot run the kernels: {cpu_kernels.cpu_can_run()[1]}')

# (batch, height, width, in channels, kernel, out channels, stride, padding):
# every kernel size, stride, padding and channel-count path of the zoo.
# Channel counts choose the tile (16 * V output channels with V = 1, 2, 3, 4)
# and whether the pixel stride is a compile-time constant (3, 16, 32, 64) or
# not; widths that are not a multiple of the tile take the tail tiles; odd
# batches split unevenly over threads and kernel-gradient parts.
SHAPES = [
    (5, 32, 32, 3, 3, 16, 1, 1),     # CIFAR ResNet / WRN / PyramidNet stem
    (3, 32, 32, 3, 3, 64, 1, 1),     # ResNet-18 stem
    (3, 32, 32, 3, 3, 24, 1, 1),     # DenseNet-BC stem (24: padded to 32)
    (3, 32, 32, 16, 3, 16, 1, 1),    # ResNet stage 1
    (3, 32, 32, 16, 3, 32, 2, 1),    # ResNet stage 2 entry
    (1, 16, 16, 32, 3, 32, 1, 1),    # ResNet stage 2
    (5, 16, 16, 32, 3, 64, 2, 1),    # ResNet stage 3 entry
    (3, 8, 8, 64, 3, 64, 1, 1),      # ResNet stage 3
    (3, 32, 32, 16, 1, 32, 2, 0),    # option-B / projection shortcut
    (2, 16, 16, 64, 1, 128, 2, 0),   # WRN / ResNet-18 projection
    (2, 32, 32, 16, 3, 128, 1, 1),   # WRN-16-8 stage 1 entry
    (2, 16, 16, 128, 3, 256, 2, 1),  # WRN-16-8 stage 2 entry
    (2, 8, 8, 160, 3, 160, 1, 1),    # WRN-28-10 (V = 2, runtime stride)
    (2, 4, 4, 256, 3, 512, 2, 1),    # ResNet-18 stage 4
    (3, 8, 8, 150, 1, 48, 1, 0),     # DenseNet-BC 1x1 (odd C: padded dx)
    (2, 16, 16, 48, 3, 12, 1, 1),    # DenseNet-BC 3x3, growth 12 (padded)
    (2, 16, 16, 216, 1, 108, 1, 0),  # DenseNet-BC transition (padded both)
    (2, 8, 8, 49, 3, 54, 2, 1),      # PyramidNet-like odd C and K, stride 2
    (2, 16, 16, 48, 3, 48, 1, 1),    # V = 3
    (2, 8, 8, 49, 3, 96, 1, 1),      # PyramidNet-like odd C, V = 3
    (2, 32, 32, 608, 1, 144, 1, 0),  # wide 1x1 (9 blocks of 16: V = 3)
    (3, 9, 7, 32, 3, 32, 1, 1),      # odd sizes: tail tiles
    (1, 7, 9, 32, 3, 48, 2, 1),      # odd sizes, stride 2
    (2, 10, 10, 16, 3, 16, 1, 0),    # no padding (valid)
    (2, 11, 11, 16, 3, 32, 2, 0),    # stride 2, no padding
    (2, 8, 8, 32, 5, 32, 1, 2),      # 5x5
    (2, 8, 8, 32, 3, 32, 1, 3),      # padding beyond the kernel: XLA dx
]


def _rel(a, b) -> float:
  scale = float(jnp.max(jnp.abs(b)))
  return float(jnp.max(jnp.abs(a - b))) / max(scale, 1e-30)


def _grads(conv, x, w, g):
  y, vjp = jax.vjp(conv, x, w)
  return (y, *vjp(g))


@kernels_only
@pytest.mark.parametrize('shape', SHAPES, ids=lambda s: 'x'.join(map(str, s)))
def test_kernels_agree_with_xla(shape):
  """Values and both gradients within a relative 1e-5 of XLA's."""
  n, h, w_, c, k, out, s, p = shape
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.standard_normal((n, h, w_, c)), jnp.float32)
  w = jnp.asarray(rng.standard_normal((k, k, c, out)), jnp.float32)
  pads = ((p, p), (p, p))
  ref = jax.jit(lambda x, w, g: _grads(
      lambda a, b: lax.conv_general_dilated(a, b, (s, s), pads,
                                            dimension_numbers=DN), x, w, g))
  ours = jax.jit(lambda x, w, g: _grads(
      lambda a, b: cpu_conv.conv_general_dilated(a, b, (s, s), pads,
                                                 dimension_numbers=DN),
      x, w, g))
  y_shape = jax.eval_shape(lambda a, b: lax.conv_general_dilated(
      a, b, (s, s), pads, dimension_numbers=DN), x, w).shape
  g = jnp.asarray(rng.standard_normal(y_shape), jnp.float32)
  for name, a, b in zip(('y', 'dx', 'dw'), ours(x, w, g), ref(x, w, g)):
    assert _rel(a, b) < 1e-5, (name, _rel(a, b))
  hlo = ours.lower(x, w, g).as_text()
  assert 'jax_resnet_conv_forward' in hlo
  uses_kernel_dx = cpu_conv.input_grad_supported(
      x.shape, w.shape, (s, s), pads)
  assert ('jax_resnet_conv_input_grad' in hlo) == uses_kernel_dx


@kernels_only
def test_fallbacks_are_xla(monkeypatch):
  """Grouped and dilated convolutions, and bfloat16 ones without the bf16
  kernels (test_cpu_conv_bf16), go to XLA."""
  monkeypatch.setattr(cpu_conv_bf16, 'isa', lambda: 'none')
  rng = np.random.default_rng(1)
  x = jnp.asarray(rng.standard_normal((2, 8, 8, 32)), jnp.float32)
  cases = {
      'grouped': dict(rhs=(3, 3, 8, 32), feature_group_count=4),
      'dilated': dict(rhs=(3, 3, 32, 32), rhs_dilation=(2, 2)),
      'bfloat16': dict(rhs=(3, 3, 32, 32), dtype=jnp.bfloat16),
  }
  for name, case in cases.items():
    case = dict(case)
    dtype = case.pop('dtype', jnp.float32)
    w = jnp.asarray(rng.standard_normal(case.pop('rhs')), dtype)
    args = (x.astype(dtype), w, (1, 1), 'SAME')
    kwargs = dict(dimension_numbers=DN, **case)
    fn = jax.jit(lambda a, b: cpu_conv.conv_general_dilated(
        a, b, *args[2:], **kwargs))
    assert 'jax_resnet_conv' not in fn.lower(*args[:2]).as_text(), name
    np.testing.assert_array_equal(
        fn(*args[:2]), lax.conv_general_dilated(*args, **kwargs), err_msg=name)


@kernels_only
def test_kernel_refuses_unknown_shape_without_aborting():
  """A direct call with 12 output channels is an error, not a crash."""
  assert cpu_kernels.load()[0]
  x, w = jnp.ones((1, 4, 4, 16)), jnp.ones((3, 3, 16, 12))
  with pytest.raises(Exception, match='multiple of 16'):
    jax.block_until_ready(cpu_kernels.call(
        'jax_resnet_conv_forward', jax.ShapeDtypeStruct((1, 4, 4, 12),
                                                         jnp.float32),
        x, w, stride_h=1, stride_w=1, pad_top=1, pad_bottom=1, pad_left=1,
        pad_right=1))


@kernels_only
def test_kernel_gradient_is_deterministic():
  """The threaded kernel gradient is bitwise the same on every call."""
  rng = np.random.default_rng(2)
  x = jnp.asarray(rng.standard_normal((13, 16, 16, 32)), jnp.float32)
  w = jnp.asarray(rng.standard_normal((3, 3, 32, 32)), jnp.float32)
  grad = jax.jit(jax.grad(lambda w: jnp.sum(
      cpu_conv.conv2d(x, w, (1, 1), ((1, 1), (1, 1))) ** 2)))
  first = np.asarray(grad(w))
  for _ in range(5):
    np.testing.assert_array_equal(np.asarray(grad(w)), first)


def test_backend_resolution_and_errors():
  assert cpu_kernels.resolve('xla') == 'xla'
  expected = 'cpu_kernels' if cpu_kernels.load()[0] else 'xla'
  assert cpu_kernels.resolve('auto') == expected
  with pytest.raises(ValueError, match='valid: auto, xla, cpu_kernels'):
    cpu_kernels.resolve('onednn')
  config = default.get_config().model
  config.conv_backend = 'onednn'
  with pytest.raises(ValueError, match='model.conv_backend'):
    registry.create_model(config, 10)


@kernels_only
def test_network_uses_the_kernels_and_matches_xla():
  """One switch: the same network on both backends, same loss and grads."""
  config = default.get_config().model
  config.depth = 8
  config.shortcut = 'B'
  rng = np.random.default_rng(3)
  x = jnp.asarray(rng.standard_normal((3, 32, 32, 3)), jnp.float32)
  results = {}
  for backend in ('xla', 'cpu_kernels'):
    config.conv_backend = backend
    model = registry.create_model(config, 10)
    variables = model.init(jax.random.PRNGKey(0), x, train=False)

    def loss(params, model=model, variables=variables):
      out, _ = model.apply({**variables, 'params': params}, x, train=True,
                           mutable=['batch_stats'])
      return jnp.sum(out ** 2)
    fn = jax.jit(jax.value_and_grad(loss))
    hlo = fn.lower(variables['params']).as_text()
    assert ('jax_resnet_conv_kernel_grad' in hlo) == (backend != 'xla')
    results[backend] = fn(variables['params'])
  (l0, g0), (l1, g1) = results['xla'], results['cpu_kernels']
  assert _rel(l1, l0) < 1e-5
  for a, b in zip(jax.tree.leaves(g1), jax.tree.leaves(g0)):
    assert _rel(a, b) < 1e-4


AVX512 = frozenset({'avx512f', 'avx512dq', 'avx512bw', 'avx512vl', 'fma',
                    'avx2'})


@pytest.mark.parametrize('features,env,expected', [
    (AVX512, None, ('avx512', '')),
    (AVX512, 'avx2', ('avx2', '')),
    (AVX512, ' AVX512 ', ('avx512', '')),
    (frozenset({'avx2', 'fma', 'sse4_2'}), None, ('avx2', '')),
    (frozenset({'avx2', 'fma'}), 'auto', ('avx2', '')),
    (frozenset({'avx2', 'fma'}), 'avx512',
     (None, 'the CPU lacks avx512f+avx512dq+avx512bw+avx512vl+fma')),
    (frozenset({'avx2', 'sse4_2'}), None,
     (None, 'the CPU lacks avx512f+avx512dq+avx512bw+avx512vl+fma or '
            'avx2+fma')),
])
def test_instruction_set_choice(monkeypatch, features, env, expected):
  """The best instruction set the CPU has, or the one named."""
  fake_x86_cpu(monkeypatch, features)
  if env is None:
    monkeypatch.delenv(cpu_kernels.ISA_ENV, raising=False)
  else:
    monkeypatch.setenv(cpu_kernels.ISA_ENV, env)
  assert cpu_kernels.cpu_isa() == expected
  assert cpu_kernels.cpu_can_run() == (expected[0] is not None, expected[1])


def test_unknown_or_unavailable_instruction_set_is_an_error(monkeypatch):
  monkeypatch.setenv(cpu_kernels.ISA_ENV, 'sse4')
  assert cpu_kernels.cpu_isa() == (
      None, "Unknown $JAX_RESNET_CPU_ISA 'sse4'; valid: auto, avx512, avx2.")
  for backend in ('auto', 'cpu_kernels'):
    with pytest.raises(ValueError, match=r"Unknown \$JAX_RESNET_CPU_ISA"):
      cpu_kernels.resolve(backend)
  # 'xla' asks for no kernels, but a misspelt name is still reported.
  with pytest.raises(ValueError, match=r"Unknown \$JAX_RESNET_CPU_ISA"):
    cpu_kernels.resolve('xla')
  # Named, but the CPU lacks it: an error even under 'auto'.
  monkeypatch.setenv(cpu_kernels.ISA_ENV, 'avx512')
  monkeypatch.setattr(cpu_kernels, 'cpu_features',
                      lambda: frozenset({'avx2', 'fma'}))
  monkeypatch.setattr(cpu_kernels, 'load',
                      lambda: (False, cpu_kernels.cpu_isa()[1]))
  with pytest.raises(ValueError, match=r'\$JAX_RESNET_CPU_ISA=avx512: the '
                     'CPU kernels cannot run here: the CPU lacks avx512f'):
    cpu_kernels.resolve('auto')


_ISA_PROBE = '''
import sys
import jax, jax.numpy as jnp, numpy as np
from jax_resnet.models import registry
from jax_resnet.ops import cpu_kernels
from configs import default
assert cpu_kernels.load() == (True, ''), cpu_kernels.load()
results = []
# bf16: the bf16 BatchNorm passes too; PyramidNet: widths 18-21, the
# channel tails of the BatchNorm passes and the padded convolutions.
for name, dtype in [(n, d) for n in ('cifar_resnet', 'pyramidnet')
                    for d in ('float32', 'bfloat16')]:
  config = default.get_config().model
  config.name = name
  config.depth = 8
  if name == 'pyramidnet':
    config.pyramid_alpha = 5
  config.conv_backend = 'cpu_kernels'
  config.dtype = dtype
  model = registry.create_model(config, 10)
  x = jnp.asarray(np.random.default_rng(5).standard_normal((3, 32, 32, 3)),
                  jnp.float32)
  variables = model.init(jax.random.PRNGKey(0), x, train=False)
  def loss(params, model=model, variables=variables, x=x):
    out, _ = model.apply({**variables, 'params': params}, x, train=True,
                         mutable=['batch_stats'])
    return jnp.sum(out.astype(jnp.float32) ** 2)
  value, grads = jax.jit(jax.value_and_grad(loss))(variables['params'])
  results += [np.ravel(value)] + [np.ravel(g) for g in jax.tree.leaves(grads)]
np.save(sys.argv[1], np.concatenate(results))
'''


@pytest.mark.skipif(
    not {'avx512f', 'avx512dq', 'avx512bw', 'avx512vl', 'avx2', 'fma'} <=
    cpu_kernels.cpu_features(),
    reason='needs a CPU that runs both the AVX-512 and the AVX2 build')
def test_avx2_and_avx512_builds_agree_bitwise(tmp_path):
  """The same lane-by-lane arithmetic in the same order: same bits."""
  out = {}
  for isa in ('avx512', 'avx2'):
    out[isa] = tmp_path / f'{isa}.npy'
    env = dict(os.environ, JAX_RESNET_CPU_ISA=isa, PYTHONPATH=ROOT,
               TF_CPP_MIN_LOG_LEVEL='2')
    subprocess.run([sys.executable, '-c', _ISA_PROBE, str(out[isa])],
                   cwd=ROOT, env=env, check=True, timeout=300)
  np.testing.assert_array_equal(np.load(out['avx512']), np.load(out['avx2']))


def _tiny_library(tmp_path) -> str:
  source = tmp_path / 'tiny.cc'
  source.write_text('extern "C" int answer() { return 42; }\n')
  return str(source)


def test_cache_is_reused(tmp_path, monkeypatch):
  """A second build finds the cached library and runs no compiler."""
  monkeypatch.setenv('JAX_RESNET_CACHE', str(tmp_path / 'cache'))
  source = _tiny_library(tmp_path)
  path = native_build.build(source, ['-O1'], 'key')
  assert ctypes.CDLL(path).answer() == 42
  assert os.path.dirname(path) == str(tmp_path / 'cache')

  def no_compiler(*args, **kwargs):
    raise AssertionError('the compiler ran again')
  monkeypatch.setattr(subprocess, 'run', no_compiler)
  assert native_build.build(source, ['-O1'], 'key') == path
  # Anything the library depends on is in its name: a new one is built.
  monkeypatch.undo()
  monkeypatch.setenv('JAX_RESNET_CACHE', str(tmp_path / 'cache'))
  assert native_build.build(source, ['-O1'], 'other cpu') != path


def test_concurrent_builds_leave_a_whole_library(tmp_path, monkeypatch):
  monkeypatch.setenv('JAX_RESNET_CACHE', str(tmp_path / 'cache'))
  source = _tiny_library(tmp_path)
  paths, errors = [], []

  def build():
    try:
      paths.append(native_build.build(source, ['-O1'], 'key'))
    except Exception as e:  # pylint: disable=broad-except
      errors.append(e)
  workers = [threading.Thread(target=build) for _ in range(4)]
  for t in workers:
    t.start()
  for t in workers:
    t.join()
  assert not errors and len(set(paths)) == 1
  assert ctypes.CDLL(paths[0]).answer() == 42
  assert os.listdir(tmp_path / 'cache') == [os.path.basename(paths[0])]


_PROBE = '''
import jax, jax.numpy as jnp
from jax_resnet.models import registry
from jax_resnet.ops import cpu_kernels
from configs import default
config = default.get_config().model
config.depth = 8
model = registry.create_model(config, 10)
variables = model.init(jax.random.PRNGKey(0), jnp.zeros((2, 32, 32, 3)))
print('backend', cpu_kernels.resolve('auto'), model.conv_backend)
try:
  cpu_kernels.resolve('cpu_kernels')
except ValueError as e:
  print('error', e)
'''


@pytest.mark.parametrize('cxx', ['/no/such/compiler', 'false'])
def test_no_compiler_falls_back_with_one_warning(tmp_path, cxx):
  """No compiler, or one that fails: one warning line, then XLA."""
  env = dict(os.environ, CXX=cxx, JAX_RESNET_CACHE=str(tmp_path),
             PYTHONPATH=ROOT, TF_CPP_MIN_LOG_LEVEL='2')
  proc = subprocess.run([sys.executable, '-c', _PROBE], cwd=ROOT, env=env,
                        capture_output=True, text=True, timeout=300,
                        check=False)
  assert proc.returncode == 0, proc.stderr
  assert 'backend xla xla' in proc.stdout
  warnings = [l for l in proc.stderr.splitlines()
              if 'CPU kernels unavailable' in l]
  if cpu_kernels.cpu_can_run()[0]:
    assert len(warnings) == 1, proc.stderr
    reason = 'no C++ compiler' if cxx.startswith('/') else 'failed (exit 1)'
    assert reason in warnings[0]
    assert "model.conv_backend='cpu_kernels' cannot run here" in proc.stdout
  assert not os.listdir(tmp_path) or all(
      not f.endswith('.so') for f in os.listdir(tmp_path))


def test_conv_partial_picks_the_backend():
  conv = layers.conv_partial(jnp.float32, backend='xla')
  assert 'conv_general_dilated' not in conv.keywords
  if cpu_kernels.load()[0]:
    conv = layers.conv_partial(jnp.float32, backend='cpu_kernels')
    assert conv.keywords['conv_general_dilated'].func is (
        cpu_conv.conv_general_dilated)
