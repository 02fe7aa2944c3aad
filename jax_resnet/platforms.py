"""What runs where: the work the project does only on the CPU backend, and
the train steps per dispatch, chosen from JAX's platform.

On the CPU backend the project reshapes its programs for XLA:CPU:

* the XLA CPU flags (``runtime.CPU_XLA_FLAGS``), where XLA's convolutions
  run;
* ``lax.optimization_barrier`` around BatchNorm's per-channel vectors
  (``ops.batch_norm``);
* convolution gradients stated as canonical convolutions inside loops
  (``ops.canonical_conv``);
* the project's C++ kernels (``ops.cpu_kernels``);
* packed seeds one after the other rather than vmapped (``pack_by_vmap``).

On GPU and TPU none of these apply: the network lowers to its plain
formulation (``jax.lax.conv_general_dilated``, autodiff gradients, no
barriers), which those compilers fuse and schedule on their own. Every such
choice goes through ``cpu_work``, so one function decides, and tests check
it for every platform without the platform present.
"""

import importlib.util
import os
from typing import Optional, Union

import jax

from jax_resnet import errors

# Steps per dispatch that ``'auto'`` gives off the CPU. On the CPU a step
# (tens of milliseconds and more) dwarfs the dispatch, and XLA:CPU's
# convolution gradients inside loops are slower (README, Performance), so
# 'auto' is 1 there. On an accelerator a small-network step lasts a few
# milliseconds and the host's dispatch decides the speed: on an H200
# (bench/device_check.sh; README, The accelerator check) 8 steps per
# dispatch trained 1.28x (ResNet-20 fp32) to 2.28x (ResNet-56 fp32) the
# images/sec of 1. Larger values were not measured.
ACCELERATOR_STEPS_PER_DISPATCH = 8
# Python packages of JAX's accelerator plugins, by the platform they serve.
_PLUGINS = (('tpu', 'libtpu'), ('gpu', 'jax_cuda13_plugin'),
            ('gpu', 'jax_cuda12_plugin'), ('gpu', 'jax_rocm7_plugin'),
            ('gpu', 'jax_rocm60_plugin'))


def platform() -> str:
  """JAX's default platform: 'cpu', 'gpu' or 'tpu' (starts the backend)."""
  return jax.default_backend()


def cpu_work(platform_name: Optional[str] = None) -> bool:
  """Whether the project's CPU-specific work (module docstring) applies on
  ``platform_name`` (default: JAX's platform)."""
  return (platform_name or platform()) == 'cpu'


def pack_by_vmap(platform_name: Optional[str] = None) -> bool:
  """How packed seeds (``config.pack_seeds``) share a program: vmapped off
  the CPU; on the CPU one after the other in a ``lax.map``. Vmapping turns
  each convolution into one grouped convolution over the seeds, which
  XLA:CPU runs slowly: 4 packed ResNet-20 seeds trained at 0.38x the images
  per second of one unpacked run (README, Performance)."""
  return not cpu_work(platform_name)


def expected_platform(environ=None) -> str:
  """The platform JAX will choose, known before its backend starts (the
  XLA flags must be set before then): the first of ``JAX_PLATFORMS`` when
  set, else 'tpu' or 'gpu' where such a plugin is installed, else 'cpu'."""
  environ = os.environ if environ is None else environ
  chosen = environ.get('JAX_PLATFORMS', '').split(',')[0].strip().lower()
  if chosen:
    return {'cuda': 'gpu', 'rocm': 'gpu'}.get(chosen, chosen)
  for name, package in _PLUGINS:
    try:
      if importlib.util.find_spec(package) is not None:
        return name
    except (ImportError, ValueError):
      continue
  return 'cpu'


def steps_per_dispatch(value: Union[int, str],
                       platform_name: Optional[str] = None) -> int:
  """``config.steps_per_dispatch`` resolved: an int as given, ``'auto'`` 1
  on the CPU and ``ACCELERATOR_STEPS_PER_DISPATCH`` elsewhere.

  Raises:
    errors.ConfigError: neither 'auto' nor a positive int.
  """
  if value == 'auto':
    return 1 if cpu_work(platform_name) else ACCELERATOR_STEPS_PER_DISPATCH
  if isinstance(value, bool) or not isinstance(value, int) or value < 1:
    raise errors.ConfigError(
        f"steps_per_dispatch must be 'auto' or a positive int; got {value!r}.")
  return value
