"""The project's bfloat16 CPU convolution kernels (``cpu_conv_bf16.cc``).

``conv2d`` is an NHWC/HWIO convolution of bf16 operands with float32
accumulation (forward, input gradient and kernel gradient as XLA FFI custom
calls, with a ``custom_vjp``); its output and gradients are rounded to bf16
once, at the end (to nearest even), as XLA's bf16 convolutions return them:
the forward and input gradient by the kernels, the kernel gradient here.

The micro-kernel that multiplies is chosen once per process from the CPU's
features (``isa``):

* ``'amx'``: AMX tiles (TDPBF16PS), where the CPU has AMX-BF16 and Linux
  grants the process the tile state;
* ``'avx512_bf16'``: VDPBF16PS, where the CPU has AVX512-BF16;
* neither: no bf16 kernels; bf16 convolutions run on XLA (``cpu_conv``).

``$JAX_RESNET_BF16_ISA`` overrides the choice: ``'auto'`` (default), one of
the two above (an error where the CPU lacks it), ``'none'`` (XLA), or
``'reference'``, a plain C++ micro-kernel with the same blocking that runs on
every x86-64 CPU. The reference is slow; it exists so that tests check the
kernels' arithmetic on any CPU, and each fast micro-kernel is compared with
it when the library loads: a mismatch, like a failed build, is an error
for a micro-kernel asked for by name, and one warning line (then XLA) under
'auto', as for the float32 kernels.

The library is built at first use (``native_build``) for baseline x86-64;
only the two fast micro-kernels and vector helpers used after a check of the
CPU's features carry their instructions.
"""

import ctypes
import functools
import os
import platform
from typing import Optional

from absl import logging
import jax
import jax.numpy as jnp
import numpy as np

from jax_resnet import errors
from jax_resnet.ops import canonical_conv
from jax_resnet.ops import cpu_kernels

ENV = 'JAX_RESNET_BF16_ISA'
CHOICES = ('auto', 'amx', 'avx512_bf16', 'reference', 'none')
# The micro-kernel codes of cpu_conv_bf16.cc.
_CODES = {'reference': 0, 'avx512_bf16': 1, 'amx': 2}
_FORWARD = 'jax_resnet_conv_bf16_forward'
_INPUT_GRAD = 'jax_resnet_conv_bf16_input_grad'
_KERNEL_GRAD = 'jax_resnet_conv_bf16_kernel_grad'
_SOURCE = os.path.join(os.path.dirname(os.path.abspath(__file__)),
                       'cpu_conv_bf16.cc')
_FLAGS = ('-O3', '-std=c++17', '-fno-math-errno')


def features_isa(features: frozenset[str], amx_permitted: bool) -> str:
  """The best micro-kernel for CPU ``features`` (Linux's flag names):
  'amx', 'avx512_bf16' or 'none'."""
  if {'amx_tile', 'amx_bf16'} <= features and amx_permitted:
    return 'amx'
  if {'avx512f', 'avx512_bf16'} <= features:
    return 'avx512_bf16'
  return 'none'


@functools.cache
def _library() -> ctypes.CDLL:
  """Builds (or finds), loads and registers the library.

  Raises:
    errors.ConfigError: not x86-64, or the build failed.
  """
  if platform.machine().lower() not in ('x86_64', 'amd64'):
    raise errors.ConfigError(
        f'The bf16 CPU kernels need x86-64; this CPU is {platform.machine()}.')
  # Imported here: the import is heavy and building needs no JAX backend.
  from jax_resnet.ops import native_build  # pylint: disable=g-import-not-at-top
  flags = _FLAGS + ('-isystem', jax.ffi.include_dir())
  try:
    path = native_build.build(
        _SOURCE, flags, f'jaxlib {jax.lib.__version__}',
        [os.path.join(os.path.dirname(_SOURCE), header)
         for header in cpu_kernels.HEADERS])
  except native_build.BuildError as e:
    raise errors.ConfigError(f'Building the bf16 CPU kernels: {e}.') from e
  library = ctypes.CDLL(path)
  for target in (_FORWARD, _INPUT_GRAD, _KERNEL_GRAD):
    jax.ffi.register_ffi_target(
        target, jax.ffi.pycapsule(getattr(library, target)), platform='cpu')
  return library


def requested() -> str:
  """``$JAX_RESNET_BF16_ISA`` (default 'auto'), checked on every machine,
  whether or not it has bf16 kernels to choose from.

  Raises:
    errors.ConfigError: an unknown value.
  """
  chosen = os.environ.get(ENV, 'auto').strip().lower() or 'auto'
  if chosen not in CHOICES:
    raise errors.ConfigError(f'Unknown ${ENV} {chosen!r}; valid: '
                             f'{", ".join(CHOICES)}.')
  return chosen


def wanted(chosen: str) -> bool:
  """Whether a bf16 micro-kernel is to be built for ``$JAX_RESNET_BF16_ISA``
  value ``chosen`` on this CPU, from its features alone: one named, or
  under 'auto' a CPU with AVX512-BF16 or AMX-BF16."""
  if chosen == 'auto':
    return bool({'avx512_bf16', 'amx_bf16'} & cpu_kernels.cpu_features())
  return chosen != 'none'


@functools.cache
def isa() -> str:
  """The micro-kernel of this process: 'amx', 'avx512_bf16', 'reference' or
  'none' (no bf16 kernels), from ``$JAX_RESNET_BF16_ISA`` and the CPU.

  With 'auto', a library that does not build, or a micro-kernel that
  disagrees with the reference, prints one warning line and leaves bf16
  convolutions to XLA, as the float32 kernels do (``cpu_kernels``).

  Raises:
    errors.ConfigError: an unknown value; or, for a micro-kernel asked for by
      name, a CPU without it, a failed build or a failed check.
  """
  chosen = requested()
  if not wanted(chosen):
    return 'none'  # Nothing to build on this CPU.
  try:
    return _checked(chosen)
  except errors.ConfigError as e:
    if chosen != 'auto':
      raise
    logging.warning('bf16 CPU kernels unavailable (%s); bf16 convolutions '
                    'run on XLA.', e)
    return 'none'


def _checked(chosen: str) -> str:
  """``isa`` for a value other than 'none': built, chosen and checked."""
  library = _library()
  best = features_isa(cpu_kernels.cpu_features(),
                      bool(library.jax_resnet_amx_permitted()))
  if chosen == 'auto':
    chosen = best
  elif chosen != 'reference' and best not in (chosen, 'amx'):
    raise errors.ConfigError(
        f'${ENV}={chosen} but this CPU (or Linux, for AMX) does not offer it; '
        f'the best here is {best!r}.')
  if chosen in ('amx', 'avx512_bf16') and (
      not library.jax_resnet_bf16_self_check(_CODES[chosen])):
    raise errors.ConfigError(
        f'The {chosen} bf16 micro-kernel disagrees with the reference on this '
        f'CPU; set ${ENV}=none to use XLA, and report the CPU model.')
  return chosen


def available() -> bool:
  """Whether bf16 convolutions run on the kernels in this process."""
  return isa() != 'none'


def supported(x_shape, w_shape, strides, padding) -> bool:
  """Whether the kernels run this canonical convolution (forward and both
  gradients): input and output channels multiples of 16, padding smaller
  than the kernel, at most 16 kernel rows. ``conv2d`` also takes the input
  channels of such a shape unpadded."""
  _, h, w, c = x_shape
  kh, kw, _, k = w_shape
  (pt, pb), (pl, pr) = padding
  return (c % 16 == 0 and k % 16 == 0 and kh <= 16 and min(strides) >= 1 and
          0 <= pt < kh and 0 <= pb < kh and 0 <= pl < kw and 0 <= pr < kw and
          h + pt + pb >= kh and w + pl + pr >= kw)


def call(target: str, shape, a: jax.Array, b: jax.Array, strides, padding,
         micro_kernel: Optional[str] = None) -> jax.Array:
  """FFI ``target`` on bf16 ``a``, ``b``: an array of ``shape``, bf16 for
  the forward and input gradient, float32 for the kernel gradient."""
  micro_kernel = micro_kernel or isa()
  if micro_kernel == 'none':
    raise RuntimeError('No bf16 CPU kernels in this process.')
  _library()
  (pt, pb), (pl, pr) = padding
  attributes = dict(stride_h=strides[0], stride_w=strides[1], pad_top=pt,
                    pad_bottom=pb, pad_left=pl, pad_right=pr,
                    threads=cpu_kernels.threads(),
                    isa=_CODES[micro_kernel])
  dtype = jnp.float32 if target == _KERNEL_GRAD else jnp.bfloat16
  return jax.ffi.ffi_call(
      target, jax.ShapeDtypeStruct(shape, dtype),
      vmap_method='sequential')(
          a.astype(jnp.bfloat16), b.astype(jnp.bfloat16),
          **{k: np.int64(v) for k, v in attributes.items()})


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def conv2d(x: jax.Array, w: jax.Array, strides: tuple[int, int],
           padding: tuple[tuple[int, int], ...]) -> jax.Array:
  """NHWC x HWIO bf16 convolution on the kernels (``supported`` shapes, with
  any number of input channels: the forward reads them as they are, and
  the gradients pad them with zeros to a multiple of 16 and slice the
  padding off; an evaluation copies nothing)."""
  out = canonical_conv.output_shape(x.shape, w.shape, strides, padding)
  return call(_FORWARD, out, x, w, strides, padding)


def _conv2d_fwd(x, w, strides, padding):
  return conv2d(x, w, strides, padding), (x, w)


def _conv2d_bwd(strides, padding, residuals, g):
  x, w = residuals
  c = cpu_kernels.lanes(x.shape[-1])
  x_padded = cpu_kernels.pad_channels(x, 3, c)
  w_padded = cpu_kernels.pad_channels(w, 2, c)
  dx = call(_INPUT_GRAD, x_padded.shape, g, w_padded, strides, padding)
  dw = call(_KERNEL_GRAD, w_padded.shape, x_padded, g, strides, padding)
  return (dx[..., :x.shape[-1]].astype(x.dtype),
          dw[:, :, :x.shape[-1]].astype(w.dtype))


conv2d.defvjp(_conv2d_fwd, _conv2d_bwd)
