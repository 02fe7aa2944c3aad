"""The project's CPU kernel backend: build, registration, and the switch.

The C++ kernels (``cpu_conv.cc``: convolutions; ``cpu_batch_norm.cc``:
training-mode BatchNorm passes) are x86-64 SIMD code called from jitted JAX
programs as XLA FFI custom calls. They are written once on 16-lane vectors
(``cpu_simd.h``) and built for the best instruction set of ``ISAS`` the CPU
has: AVX-512 (F, DQ, BW, VL), else AVX2 with FMA. ``$JAX_RESNET_CPU_ISA``
('auto', the default, 'avx512' or 'avx2') picks one by name, e.g. to
compare the two on one machine. They are compiled at first use
(``native_build``), never inside a traced function, and split each call over
the CPUs this process may run on (``os.sched_getaffinity``) on XLA's own
intra-op thread pool. The bf16 convolutions (``cpu_conv_bf16``: AMX or
AVX512-BF16) are a library of their own, built the same way, that
``cpu_conv`` calls for bf16 operands.

``model.conv_backend`` chooses, once per process, through ``resolve``:

* ``'auto'`` (default): the kernels on the CPU backend of an x86-64 CPU with
  AVX-512 or AVX2 where they compile, XLA everywhere else (GPU, TPU, other
  CPUs). A failed build prints one warning line and uses XLA.
* ``'xla'``: XLA's convolutions and BatchNorm.
* ``'cpu_kernels'``: the kernels, or a clear error where they cannot run.

An unknown ``$JAX_RESNET_CPU_ISA`` is an error with any backend; an
instruction set named there that the CPU lacks is one with 'auto' and
'cpu_kernels'.
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
from jax_resnet import platforms

BACKENDS = ('auto', 'xla', 'cpu_kernels')

_HERE = os.path.dirname(os.path.abspath(__file__))
# Sources and the FFI targets each defines; any source (these and
# cpu_conv_bf16.cc) may include HEADERS.
_LIBRARIES = {
    'cpu_conv.cc': ('jax_resnet_conv_forward', 'jax_resnet_conv_input_grad',
                    'jax_resnet_conv_kernel_grad'),
    'cpu_batch_norm.cc': tuple(
        f'jax_resnet_bn_{name}{suffix}' for suffix in ('', '_bf16')
        for name in ('stats', 'apply', 'grad_sums', 'grad_apply',
                     'apply_residual', 'grad_apply_residual')),
}
HEADERS = ('cpu_parallel.h', 'cpu_conv_shared.h', 'cpu_simd.h')
# The instruction sets the libraries are built for, best first: the CPU
# features each needs (as /proc/cpuinfo names them) and its compiler flags.
ISAS = {
    'avx512': (('avx512f', 'avx512dq', 'avx512bw', 'avx512vl', 'fma'),
               ('-mavx512f', '-mavx512dq', '-mavx512bw', '-mavx512vl',
                '-mfma')),
    'avx2': (('avx2', 'fma'), ('-mavx2', '-mfma')),
}
ISA_ENV = 'JAX_RESNET_CPU_ISA'
_FLAGS = ('-O3', '-std=c++17', '-fno-math-errno')
# float32 lanes of a kernel vector (a zmm register, or two ymm); the kernels'
# channel counts are multiples.
LANES = 16


def lanes(n: int) -> int:
  """``n`` rounded up to a multiple of ``LANES``."""
  return -(-n // LANES) * LANES


def pad_channels(a: jax.Array, axis: int, size: int) -> jax.Array:
  """``a`` with zeros appended along ``axis`` up to ``size``."""
  if a.shape[axis] == size:
    return a
  widths = [(0, 0)] * a.ndim
  widths[axis] = (0, size - a.shape[axis])
  return jnp.pad(a, widths)


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


def requested_isa() -> str:
  """``$JAX_RESNET_CPU_ISA``: 'auto' (default) or a name of ``ISAS``.

  Raises:
    errors.ConfigError: any other value.
  """
  chosen = os.environ.get(ISA_ENV, 'auto').strip().lower() or 'auto'
  if chosen != 'auto' and chosen not in ISAS:
    raise errors.ConfigError(f'Unknown ${ISA_ENV} {chosen!r}; valid: auto, '
                             f'{", ".join(ISAS)}.')
  return chosen


def cpu_isa() -> tuple[Optional[str], str]:
  """The instruction set the kernels are built for here, ``(name, '')``, or
  ``(None, why not)``: the one ``$JAX_RESNET_CPU_ISA`` names, else the best
  of ``ISAS`` this CPU has. An unknown name is a reason, not an error, here
  (``resolve`` raises it)."""
  if platform.machine().lower() not in ('x86_64', 'amd64'):
    return None, f'the CPU is {platform.machine()}, not x86-64'
  try:
    chosen = requested_isa()
  except errors.ConfigError as e:
    return None, str(e)
  features = cpu_features()
  names = ISAS if chosen == 'auto' else (chosen,)
  for name in names:
    if all(f in features for f in ISAS[name][0]):
      return name, ''
  needed = ' or '.join('+'.join(ISAS[n][0]) for n in names)
  return None, f'the CPU lacks {needed}'


def cpu_can_run() -> tuple[bool, str]:
  """Whether this CPU has the kernels' instructions; ``(ok, why not)``."""
  name, reason = cpu_isa()
  return name is not None, reason


@functools.cache
def load() -> tuple[bool, str]:
  """Builds (or finds) and registers the kernels; ``(ok, why not)``."""
  isa, reason = cpu_isa()
  if isa is None:
    return False, reason
  # Imported here: building needs no JAX backend, and the import is heavy.
  from jax_resnet.ops import native_build  # pylint: disable=g-import-not-at-top
  flags = _FLAGS + ISAS[isa][1] + ('-isystem', jax.ffi.include_dir())
  key = (' '.join(sorted(cpu_features())) +
         f' jaxlib {jax.lib.__version__}')
  headers = [os.path.join(_HERE, h) for h in HEADERS]
  libraries = {}
  for source in _LIBRARIES:
    try:
      path = native_build.build(os.path.join(_HERE, source), flags, key,
                                headers)
    except native_build.BuildError as e:
      return False, f'building {source}: {e}'
    libraries[source] = ctypes.CDLL(path)
  conv = libraries['cpu_conv.cc']
  conv.jax_resnet_cpu_isa.restype = ctypes.c_char_p
  built_for = conv.jax_resnet_cpu_isa().decode()
  if built_for != isa:
    return False, f'cpu_conv.cc was compiled for {built_for}, not {isa}'
  if not conv.jax_resnet_cpu_supported():
    return False, 'the CPU does not run the compiled instructions'
  for source, targets in _LIBRARIES.items():
    for target in targets:
      jax.ffi.register_ffi_target(
          target, jax.ffi.pycapsule(getattr(libraries[source], target)),
          platform='cpu')
  return True, ''


@functools.cache
def _warn_fallback(reason: str) -> None:
  logging.warning('CPU kernels unavailable (%s); using XLA convolutions '
                  'and BatchNorm.', reason)


def resolve(backend: str) -> str:
  """``model.conv_backend`` -> the backend used here: 'xla' or 'cpu_kernels'.

  Raises:
    errors.ConfigError: an unknown name or ``$JAX_RESNET_CPU_ISA``; or
      'cpu_kernels', or an instruction set named by ``$JAX_RESNET_CPU_ISA``,
      where the kernels cannot run.
  """
  if backend not in BACKENDS:
    raise errors.ConfigError(f'Unknown model.conv_backend {backend!r}; '
                             f'valid: {", ".join(BACKENDS)}.')
  named = requested_isa()
  if backend == 'xla':
    return 'xla'
  if not platforms.cpu_work():
    if backend == 'cpu_kernels':
      raise errors.ConfigError(
          "model.conv_backend='cpu_kernels' runs on the CPU backend only; "
          f"JAX's backend here is {jax.default_backend()!r}. Use 'auto' or "
          "'xla'.")
    return 'xla'
  ok, reason = load()
  if ok:
    return 'cpu_kernels'
  if named != 'auto':
    raise errors.ConfigError(
        f'${ISA_ENV}={named}: the CPU kernels cannot run here: {reason}. '
        f'Unset it to use the best this CPU has.')
  if backend == 'cpu_kernels':
    raise errors.ConfigError(
        f"model.conv_backend='cpu_kernels' cannot run here: {reason}. Use "
        "'auto' or 'xla'.")
  _warn_fallback(reason)
  return 'xla'


def call(target: str, results, *operands, **attributes):
  """Calls FFI ``target`` (float32 ``results`` shapes) with int attributes.

  The kernels are loaded on first use; ``threads`` is added.
  """
  ok, reason = load()
  if not ok:
    raise RuntimeError(f'The CPU kernels cannot run here: {reason}.')
  attributes = {k: np.int64(v) for k, v in attributes.items()}
  return jax.ffi.ffi_call(
      target, results, vmap_method='sequential')(
          *operands, threads=np.int64(threads()), **attributes)
