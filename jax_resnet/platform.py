"""Process-wide settings that must be made before JAX starts its backend."""

import os
from typing import Sequence

from absl import app
from absl import flags
from absl import logging

# XLA CPU options that speed up convolutions and fused element-wise work on the
# CPU backend; GPU and TPU backends ignore them.
CPU_XLA_FLAGS = (
    '--xla_cpu_experimental_ynn_fusion_type=dot,eltwise,reduce',
    '--xla_cpu_use_onednn=true',
)


def configure() -> None:
  """Adds the project's XLA CPU flags to XLA_FLAGS unless already chosen."""
  xla_flags = os.environ.get('XLA_FLAGS', '')
  for flag in CPU_XLA_FLAGS:
    name = flag.split('=')[0]
    if name not in xla_flags:
      xla_flags = f'{xla_flags} {flag}'.strip()
  os.environ['XLA_FLAGS'] = xla_flags
  # TensorFlow only reads TFDS files here; its start-up notices are noise.
  os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')


def start_command(argv: Sequence[str]) -> None:
  """Preamble of every command: no stray arguments, XLA flags, quiet logs."""
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  configure()
  if not flags.FLAGS['verbosity'].present:
    logging.set_verbosity(logging.WARNING)
