"""Process-wide settings that must be made before JAX starts its backend."""

import os
from typing import Sequence

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


def configure(conv_backend: str = 'auto') -> None:
  """Sets XLA_FLAGS for ``model.conv_backend`` (before JAX starts a backend).

  The project's XLA CPU flags are added, unless already chosen, when the
  convolutions will be XLA's: ``conv_backend='xla'`` or a CPU the project's
  kernels do not run on.
  """
  from jax_resnet import cpu_conv  # pylint: disable=g-import-not-at-top
  xla_flags = os.environ.get('XLA_FLAGS', '')
  wanted = CPU_XLA_FLAGS
  if conv_backend != 'xla' and cpu_conv.cpu_can_run()[0]:
    wanted = ()
  for flag in wanted:
    name = flag.split('=')[0]
    if name not in xla_flags:
      xla_flags = f'{xla_flags} {flag}'.strip()
  os.environ['XLA_FLAGS'] = xla_flags
  # TensorFlow only reads TFDS files here; its start-up notices are noise.
  os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')


def start_command(argv: Sequence[str], conv_backend: str = 'auto') -> None:
  """Preamble of every command: no stray arguments, XLA flags, quiet logs."""
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  configure(conv_backend)
  if not flags.FLAGS['verbosity'].present:
    logging.set_verbosity(logging.WARNING)
