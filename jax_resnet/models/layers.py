"""Layer settings every network shares: init, dtypes, conv / norm partials.

Networks build their ``conv`` and ``norm`` partials here so that PyTorch's
initialisation and BatchNorm conventions are written down once.
"""

import dataclasses
import functools
import math
from typing import Any, Callable, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp

from jax_resnet import errors
from jax_resnet import platforms
from jax_resnet.ops import batch_norm
from jax_resnet.ops import canonical_conv
from jax_resnet.ops import cpu_conv
from jax_resnet.ops import cpu_conv_bf16
from jax_resnet.ops import cpu_kernels

DTYPES = {'float32': jnp.float32, 'bfloat16': jnp.bfloat16}

# The trainer hands every training step one random stream, named after its
# first user; dropout draws from it too, so no network needs a second stream.
TRAINING_RNG = 'stochastic_depth'

# PyTorch's kaiming_normal_(fan_in, relu), as the reference CIFAR networks use.
conv_kernel_init = nn.initializers.variance_scaling(2.0, 'fan_in', 'normal')


def torch_linear_bias_init(fan_in: int):
  """PyTorch's nn.Linear bias init: U(-1/sqrt(fan_in), 1/sqrt(fan_in))."""
  bound = 1.0 / math.sqrt(fan_in)

  def init(key, shape, dtype=jnp.float32):
    return jax.random.uniform(key, shape, dtype, -bound, bound)

  return init


def dtype_of(name: str) -> Any:
  """The computation dtype named by ``model.dtype``."""
  if name not in DTYPES:
    raise errors.ConfigError(f'Unknown model.dtype {name!r}; valid: '
                             f'{", ".join(DTYPES)}.')
  return DTYPES[name]


# PyTorch's kaiming_normal_(fan_out, relu): the WRN, PyramidNet and DenseNet
# reference code.
conv_kernel_init_fan_out = nn.initializers.variance_scaling(
    2.0, 'fan_out', 'normal')

# PyTorch's default nn.Linear and nn.Conv2d weight: kaiming_uniform_(a=sqrt(5)),
# i.e. U(-1/sqrt(fan_in), 1/sqrt(fan_in)).
torch_linear_kernel_init = nn.initializers.variance_scaling(
    1.0 / 3.0, 'fan_in', 'uniform')


@dataclasses.dataclass(frozen=True)
class Init:
  """How a network initialises its convolutions and its dense head.

  Attributes:
    conv: kernel initialiser of every convolution.
    head_kernel: kernel initialiser of the dense head.
    zero_head_bias: zeros for the head bias; otherwise PyTorch's default
      U(-1/sqrt(fan_in), 1/sqrt(fan_in)).
  """
  conv: Callable[..., Any] = conv_kernel_init
  head_kernel: Callable[..., Any] = conv_kernel_init
  zero_head_bias: bool = False


# The CIFAR ResNet code re-initialises convolutions and the head with
# kaiming_normal_(fan_in) and keeps the default head bias.
CIFAR_RESNET_INIT = Init()
# ResNet-18..152 and PreAct-ResNet-18 (the widely used CIFAR code): PyTorch's
# default init everywhere, U(-1/sqrt(fan_in), 1/sqrt(fan_in)).
TORCH_DEFAULT_INIT = Init(conv=torch_linear_kernel_init,
                          head_kernel=torch_linear_kernel_init)
# WRN: kaiming_normal_(fan_out) convolutions, default fc weight, zero fc bias.
WIDE_RESNET_INIT = Init(conv=conv_kernel_init_fan_out,
                        head_kernel=torch_linear_kernel_init,
                        zero_head_bias=True)
# PyramidNet: N(0, 2/fan_out) convolutions, PyTorch's default fc.
PYRAMIDNET_INIT = Init(conv=conv_kernel_init_fan_out,
                       head_kernel=torch_linear_kernel_init)
# DenseNet: N(0, 2/fan_out) convolutions, default fc weight, zero fc bias.
DENSENET_INIT = Init(conv=conv_kernel_init_fan_out,
                     head_kernel=torch_linear_kernel_init,
                     zero_head_bias=True)


def conv_backend_of(name: str) -> str:
  """``model.conv_backend`` resolved for this process: 'xla' or 'cpu_kernels'.

  Raises:
    errors.ConfigError: an unknown backend, 'cpu_kernels' where they cannot
      run, or an unknown ``$JAX_RESNET_BF16_ISA`` (``cpu_conv_bf16``).
  """
  cpu_conv_bf16.requested()
  return cpu_kernels.resolve(name)


def conv_partial(dtype: Any, init: Init = CIFAR_RESNET_INIT,
                 canonical_gradients: bool = False,
                 backend: str = 'auto') -> Any:
  """Bias-free, 3x3-padded ``nn.Conv`` in ``dtype`` with the network's init.

  ``backend`` (``cpu_kernels.BACKENDS``) picks the convolution: with
  'cpu_kernels' the project's CPU kernels run every convolution they support
  (``cpu_conv``; bf16 ones on the bf16 kernels, ``cpu_conv_bf16``, where the
  CPU has AMX or AVX512-BF16) and XLA the rest. ``canonical_gradients`` states
  XLA's convolution gradients as canonical convolutions (``canonical_conv``),
  which XLA:CPU needs inside the scan over blocks; networks traced inside a loop
  (``canonical_conv.loop_body``) take it too. On GPU and TPU it is ignored
  (``platforms.cpu_work``).
  """
  canonical = canonical_gradients or canonical_conv.in_loop_body()
  xla_conv = (canonical_conv.conv_general_dilated
              if canonical and platforms.cpu_work() else None)
  if cpu_kernels.resolve(backend) == 'cpu_kernels':
    if jnp.dtype(dtype) == jnp.bfloat16:
      cpu_conv_bf16.isa()  # Chosen, built and checked now, or a clear error.
    conv = functools.partial(cpu_conv.conv_general_dilated, fallback=xla_conv)
  else:
    conv = xla_conv
  extra = {} if conv is None else {'conv_general_dilated': conv}
  return functools.partial(nn.Conv, use_bias=False, padding=1,
                           kernel_init=init.conv, dtype=dtype, **extra)


def norm_partial(train: bool, momentum: float, epsilon: float,
                 dtype: Any, backend: str = 'auto') -> Any:
  """``batch_norm.BatchNorm`` with PyTorch's momentum convention (new-batch
  weight); call it as ``norm(name=...)(x)`` or ``(x, relu=True)`` for BN-ReLU.

  The batch variance is computed as E[(x - mean)^2], as PyTorch does, not as
  E[x^2] - mean^2, which cancels badly on small or offset inputs (the CPU
  kernels, with ``backend`` resolving to 'cpu_kernels', sum in double
  precision instead).
  """
  return functools.partial(
      batch_norm.BatchNorm, use_running_average=not train,
      momentum=1.0 - momentum, epsilon=epsilon, dtype=dtype,
      use_kernels=cpu_kernels.resolve(backend) == 'cpu_kernels')


def classifier(x: jax.Array, num_classes: int, dtype: Any,
               init: Optional[Init] = None) -> jax.Array:
  """Global average pool and the dense head ``head``; float32 logits.

  Call it inside a compact ``__call__``: the head becomes the caller's
  submodule.
  """
  init = init or CIFAR_RESNET_INIT
  x = jnp.mean(x, axis=(1, 2))
  bias_init = (nn.initializers.zeros if init.zero_head_bias
               else torch_linear_bias_init(x.shape[-1]))
  x = nn.Dense(num_classes, kernel_init=init.head_kernel,
               bias_init=bias_init, dtype=dtype, name='head')(x)
  return x.astype(jnp.float32)
