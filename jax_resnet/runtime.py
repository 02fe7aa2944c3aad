"""Process-wide settings that must be made before JAX starts its backend."""

import os
import platform as python_platform
import sys
from typing import Any, Mapping, Optional, Sequence

from absl import app
from absl import flags
from absl import logging

# XLA CPU options that speed up XLA's own convolutions and fused element-wise
# work on the CPU backend; GPU and TPU backends ignore them. With the project's
# CPU convolution kernels they slow the step down (README, Performance), so
# they are set only where the convolutions are XLA's.
CPU_XLA_FLAGS = (
    '--xla_cpu_experimental_ynn_fusion_type=dot,eltwise,reduce',
    '--xla_cpu_use_onednn=true',
)


def cpu_xla_flags(platform_name: str, conv_backend: str,
                  kernels_run: bool) -> tuple[str, ...]:
  """The project's XLA flags for a process on ``platform_name`` with
  ``model.conv_backend``, where the CPU kernels can run or not
  (``kernels_run``): ``CPU_XLA_FLAGS`` on the CPU when the convolutions are
  XLA's, none otherwise."""
  from jax_resnet import platforms  # pylint: disable=g-import-not-at-top
  if not platforms.cpu_work(platform_name):
    return ()
  if conv_backend != 'xla' and kernels_run:
    return ()
  return CPU_XLA_FLAGS


def kernels_run(dtype: str = 'float32') -> bool:
  """Whether the project's CPU kernels can run the convolutions of a
  network in ``model.dtype`` on this CPU, judged from its features before
  anything is built: the float32 kernels (AVX-512 or AVX2), and for
  bfloat16 also the bf16 ones (AMX or AVX512-BF16, or one named by
  ``$JAX_RESNET_BF16_ISA``). Without them a bf16 network's convolutions are
  XLA's."""
  # pylint: disable=g-import-not-at-top
  from jax_resnet import errors
  from jax_resnet.ops import cpu_kernels
  # pylint: enable=g-import-not-at-top
  if not cpu_kernels.cpu_can_run()[0]:
    return False
  if str(dtype) != 'bfloat16':
    return True
  from jax_resnet.ops import cpu_conv_bf16  # pylint: disable=g-import-not-at-top
  try:
    return cpu_conv_bf16.wanted(cpu_conv_bf16.requested())
  except errors.ConfigError:
    return False  # Reported, in one line, when the network is built.


def configure(conv_backend: str = 'auto', dtype: str = 'float32') -> None:
  """Sets XLA_FLAGS for ``model.conv_backend`` and ``model.dtype`` (before
  JAX starts a backend).

  The project's XLA CPU flags are added, unless already chosen, when JAX
  will run on the CPU (``platforms.expected_platform``) and the convolutions
  will be XLA's: ``conv_backend='xla'``, or a CPU the project's kernels do
  not run on for that dtype (``kernels_run``).
  """
  from jax_resnet import platforms  # pylint: disable=g-import-not-at-top
  xla_flags = os.environ.get('XLA_FLAGS', '')
  wanted = cpu_xla_flags(platforms.expected_platform(), conv_backend,
                         kernels_run(dtype))
  for flag in wanted:
    name = flag.split('=')[0]
    if name not in xla_flags:
      xla_flags = f'{xla_flags} {flag}'.strip()
  os.environ['XLA_FLAGS'] = xla_flags
  # TensorFlow only reads TFDS files here; its start-up notices are noise.
  os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')


# glibc's malloc serves every allocation above 32 MB with a fresh mmap, and
# XLA:CPU allocates a step's temporaries as one such buffer, so every step
# faults in tens of thousands of zeroed 4 KB pages. With this glibc tunable
# those buffers are backed by transparent huge pages, a hundred times fewer
# faults (README, Performance, has the measurement). glibc reads tunables
# only at process start.
MALLOC_TUNABLE = 'glibc.malloc.hugetlb=1'
# Even in huge pages the kernel zeroes each step's fresh buffer again, a
# tenth of a deep network's step. ``ops/large_block_cache.cc``, preloaded,
# serves blocks of 32 MB or more from one reserved range and keeps a freed
# block's pages for the next step. A user's own LD_PRELOAD (say, jemalloc)
# is left alone.
_CACHE_SOURCE = os.path.join(os.path.dirname(os.path.abspath(__file__)),
                             'ops', 'large_block_cache.cc')


def large_block_cache() -> str:
  """The path of the built large-block cache library, building it at first
  use (``native_build``; raises its ``BuildError``)."""
  from jax_resnet.ops import native_build  # pylint: disable=g-import-not-at-top
  return native_build.build(
      _CACHE_SOURCE, ('-O2', '-std=c++17', '-Wall'),
      key=f'{python_platform.machine()} {python_platform.libc_ver()}')


def process_environment(env: Mapping[str, str]) -> dict[str, str]:
  """``env`` with the malloc tunable added to GLIBC_TUNABLES (if not set)
  and, on Linux with glibc where LD_PRELOAD is unset, the large-block cache
  preloaded. A failed build of the cache prints one warning line and leaves
  LD_PRELOAD unset."""
  env = dict(env)
  tunables = env.get('GLIBC_TUNABLES', '')
  if MALLOC_TUNABLE.split('=')[0] not in tunables:
    env['GLIBC_TUNABLES'] = ':'.join(t for t in (tunables, MALLOC_TUNABLE)
                                     if t)
  if not env.get('LD_PRELOAD') and _on_glibc():
    from jax_resnet.ops import native_build  # pylint: disable=g-import-not-at-top
    try:
      env['LD_PRELOAD'] = large_block_cache()
    except native_build.BuildError as e:
      logging.warning('Large-block cache not built (%s); each step\'s '
                      'temporaries are zeroed afresh.', e)
  return env


def _on_glibc() -> bool:
  return (sys.platform == 'linux' and
          python_platform.libc_ver()[0] == 'glibc')


def restart_with_process_settings() -> None:
  """Re-executes this command once with ``process_environment`` on glibc.

  Call first thing in a command's ``__main__``; a no-op when the
  environment already has those settings (GLIBC_TUNABLES chooses
  ``glibc.malloc.hugetlb`` and LD_PRELOAD is set), off glibc, or with
  JAX_RESNET_NO_RESTART set.
  """
  if not _on_glibc() or os.environ.get('JAX_RESNET_NO_RESTART'):
    return
  env = process_environment(os.environ)
  if all(env.get(k) == os.environ.get(k)
         for k in ('GLIBC_TUNABLES', 'LD_PRELOAD')):
    return
  sys.stdout.flush()
  sys.stderr.flush()
  os.execve(sys.executable, [sys.executable] + sys.orig_argv[1:], env)


def start_command(argv: Sequence[str],
                  model: Optional[Mapping[str, Any]] = None) -> None:
  """Preamble of every command: no stray arguments, XLA flags (for the
  ``conv_backend`` and ``dtype`` of ``model``, the config's ``model``
  fields; the defaults without), quiet logs."""
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  model = model or {}
  configure(model.get('conv_backend', 'auto'), model.get('dtype', 'float32'))
  if not flags.FLAGS['verbosity'].present:
    logging.set_verbosity(logging.WARNING)
