"""Own CPU convolution kernels (``cpu_conv.cc``) as a drop-in JAX convolution.

``conv_general_dilated`` here is ``lax.conv_general_dilated`` for
``nn.Conv(conv_general_dilated=...)``: a float32 NHWC/HWIO convolution whose
output channels are a multiple of 16 runs the AVX-512 kernels of
``cpu_conv.cc`` (forward, input gradient and kernel gradient, as XLA FFI
custom calls inside the jitted step, with a ``custom_vjp``); any other
convolution (grouped, dilated, bfloat16, 12 output channels, ...) is handed to
the fallback (XLA) before tracing. The input gradient also goes to XLA when
the input channels are not a multiple of 16 (the RGB stem, whose input needs
no gradient, so XLA drops it).

``model.conv_backend`` chooses, once per process, through ``resolve``:

* ``'auto'`` (default): the kernels on the CPU backend of an x86-64 CPU with
  AVX-512 (F, DQ, BW, VL) where they compile, XLA everywhere else (GPU, TPU,
  other CPUs). A failed build prints one warning line and uses XLA.
* ``'xla'``: XLA's convolutions.
* ``'cpu_kernels'``: the kernels, or a clear error where they cannot run.

The library is compiled at first use (``native_build``), never inside a
traced function. The kernels split each call over the CPUs this process may
run on (``os.sched_getaffinity``) using XLA's own intra-op thread pool.
"""

import ctypes
import functools
import os
import platform
from typing import Callable, Optional, Sequence

from absl import logging
import jax
from jax import lax
import jax.numpy as jnp
import numpy as np

from jax_resnet import canonical_conv
from jax_resnet import native_build

BACKENDS = ('auto', 'xla', 'cpu_kernels')

_SOURCE = os.path.join(os.path.dirname(os.path.abspath(__file__)),
                       'cpu_conv.cc')
# The instructions the library is compiled for; the CPU must have them all.
REQUIRED_FEATURES = ('avx512f', 'avx512dq', 'avx512bw', 'avx512vl', 'fma')
_FLAGS = ('-O3', '-std=c++17', '-fno-math-errno', '-mavx512f', '-mavx512dq',
          '-mavx512bw', '-mavx512vl', '-mfma')
_FORWARD = 'jax_resnet_conv_forward'
_INPUT_GRAD = 'jax_resnet_conv_input_grad'
_KERNEL_GRAD = 'jax_resnet_conv_kernel_grad'
_LANES = 16  # float32 lanes of a zmm register.


def cpu_features() -> frozenset[str]:
  """The CPU's feature flags as Linux reports them (empty elsewhere)."""
  try:
    with open('/proc/cpuinfo') as f:
      for line in f:
        if line.startswith('flags'):
          return frozenset(line.split(':', 1)[1].split())
  except OSError:
    pass
  return frozenset()


def threads() -> int:
  """CPUs this process may run on."""
  try:
    return len(os.sched_getaffinity(0))
  except AttributeError:  # Not Linux.
    return os.cpu_count() or 1


def cpu_can_run() -> tuple[bool, str]:
  """Whether this CPU has the kernels' instructions; ``(ok, why not)``."""
  if platform.machine().lower() not in ('x86_64', 'amd64'):
    return False, f'the CPU is {platform.machine()}, not x86-64'
  missing = [f for f in REQUIRED_FEATURES if f not in cpu_features()]
  if missing:
    return False, f'the CPU lacks {", ".join(missing)}'
  return True, ''


@functools.cache
def load() -> tuple[bool, str]:
  """Builds (or finds) and registers the kernels; ``(ok, why not)``."""
  ok, reason = cpu_can_run()
  if not ok:
    return ok, reason
  features = cpu_features()
  flags = _FLAGS + ('-isystem', jax.ffi.include_dir())
  key = ' '.join(sorted(features)) + f' jaxlib {jax.lib.__version__}'
  try:
    path = native_build.build(_SOURCE, flags, key)
  except native_build.BuildError as e:
    return False, f'building {os.path.basename(_SOURCE)}: {e}'
  library = ctypes.CDLL(path)
  if not library.jax_resnet_conv_cpu_supported():
    return False, 'the CPU does not run the compiled instructions'
  for target in (_FORWARD, _INPUT_GRAD, _KERNEL_GRAD):
    jax.ffi.register_ffi_target(
        target, jax.ffi.pycapsule(getattr(library, target)), platform='cpu')
  return True, ''


@functools.cache
def _warn_fallback(reason: str) -> None:
  logging.warning('CPU convolution kernels unavailable (%s); using XLA '
                  'convolutions.', reason)


def resolve(backend: str) -> str:
  """``model.conv_backend`` -> the backend used here: 'xla' or 'cpu_kernels'.

  Raises:
    ValueError: an unknown name, or 'cpu_kernels' where they cannot run.
  """
  if backend not in BACKENDS:
    raise ValueError(f'Unknown model.conv_backend {backend!r}; valid: '
                     f'{", ".join(BACKENDS)}.')
  if backend == 'xla':
    return 'xla'
  if jax.default_backend() != 'cpu':
    if backend == 'cpu_kernels':
      raise ValueError(
          "model.conv_backend='cpu_kernels' runs on the CPU backend only; "
          f"JAX's backend here is {jax.default_backend()!r}. Use 'auto' or "
          "'xla'.")
    return 'xla'
  ok, reason = load()
  if ok:
    return 'cpu_kernels'
  if backend == 'cpu_kernels':
    raise ValueError(f"model.conv_backend='cpu_kernels' cannot run here: "
                     f"{reason}. Use 'auto' or 'xla'.")
  _warn_fallback(reason)
  return 'xla'


def _output_shape(x_shape, w_shape, strides, padding) -> tuple[int, ...]:
  n, h, w, _ = x_shape
  kh, kw, _, k = w_shape
  (pt, pb), (pl, pr) = padding
  return (n, (h + pt + pb - kh) // strides[0] + 1,
          (w + pl + pr - kw) // strides[1] + 1, k)


def _call(target: str, out_shape, a, b, strides, padding) -> jax.Array:
  ok, reason = load()  # Registers the targets on first use.
  if not ok:
    raise RuntimeError(f'The CPU convolution kernels cannot run here: '
                       f'{reason}.')
  (pt, pb), (pl, pr) = padding
  return jax.ffi.ffi_call(
      target, jax.ShapeDtypeStruct(out_shape, jnp.float32),
      vmap_method='sequential')(
          a, b, stride_h=np.int64(strides[0]), stride_w=np.int64(strides[1]),
          pad_top=np.int64(pt), pad_bottom=np.int64(pb),
          pad_left=np.int64(pl), pad_right=np.int64(pr),
          threads=np.int64(threads()))


def supported(x_shape, w_shape, strides, padding) -> bool:
  """Whether the kernels run this canonical float32 convolution."""
  kh, kw, _, k = w_shape
  out = _output_shape(x_shape, w_shape, strides, padding)
  return (k % _LANES == 0 and min(strides) >= 1 and out[1] >= 1 and
          out[2] >= 1 and all(lo >= 0 and hi >= 0 for lo, hi in padding) and
          kh <= x_shape[1] + sum(padding[0]) and
          kw <= x_shape[2] + sum(padding[1]))


def input_grad_supported(x_shape, w_shape, strides, padding) -> bool:
  """Whether the input-gradient kernel runs it (else XLA's gradient)."""
  kh, kw, c, _ = w_shape
  (pt, pb), (pl, pr) = padding
  small_padding = max(pt, pb) < kh and max(pl, pr) < kw
  return c % _LANES == 0 and (small_padding or max(strides) > 1)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def conv2d(x: jax.Array, w: jax.Array, strides: tuple[int, int],
           padding: tuple[tuple[int, int], ...]) -> jax.Array:
  """NHWC x HWIO float32 convolution on the kernels (``supported`` shapes)."""
  return _call(_FORWARD, _output_shape(x.shape, w.shape, strides, padding), x,
               w, strides, padding)


def _conv2d_fwd(x, w, strides, padding):
  return conv2d(x, w, strides, padding), (x, w)


def _conv2d_bwd(strides, padding, residuals, g):
  x, w = residuals
  if input_grad_supported(x.shape, w.shape, strides, padding):
    dx = _call(_INPUT_GRAD, x.shape, g, w, strides, padding)
  else:
    _, vjp = jax.vjp(
        lambda x_: lax.conv_general_dilated(
            x_, w, strides, padding,
            dimension_numbers=('NHWC', 'HWIO', 'NHWC')), x)
    dx, = vjp(g)
  dw = _call(_KERNEL_GRAD, w.shape, x, g, strides, padding)
  return dx, dw


conv2d.defvjp(_conv2d_fwd, _conv2d_bwd)


def conv_general_dilated(lhs, rhs, window_strides: Sequence[int], padding,
                         lhs_dilation=None, rhs_dilation=None,
                         dimension_numbers=None, feature_group_count: int = 1,
                         batch_group_count: int = 1, precision=None,
                         preferred_element_type=None, *,
                         fallback: Optional[Callable[..., jax.Array]] = None
                         ) -> jax.Array:
  """``lax.conv_general_dilated`` on the kernels where they run it.

  Args:
    lhs, rhs, window_strides, padding, lhs_dilation, rhs_dilation,
    dimension_numbers, feature_group_count, batch_group_count, precision,
    preferred_element_type: as ``lax.conv_general_dilated``.
    fallback: the convolution for what the kernels do not run (default
      ``lax.conv_general_dilated``).

  Returns:
    The convolution's output.
  """
  args = (lhs, rhs, window_strides, padding, lhs_dilation, rhs_dilation,
          dimension_numbers, feature_group_count, batch_group_count, precision,
          preferred_element_type)
  canonical = canonical_conv.canonical_arguments(*args)
  if (canonical is not None and lhs.dtype == jnp.float32 and
      rhs.dtype == jnp.float32 and supported(lhs.shape, rhs.shape,
                                             *canonical)):
    return conv2d(lhs, rhs, *canonical)
  return (fallback or lax.conv_general_dilated)(*args)
