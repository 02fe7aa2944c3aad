"""Process-wide settings that must be made before JAX starts its backend."""

import os

# XLA CPU options that speed up convolutions and fused element-wise work on the
# CPU backend; GPU and TPU backends ignore them.
CPU_XLA_FLAGS = (
    '--xla_cpu_experimental_ynn_fusion_type=dot,eltwise,reduce',
    '--xla_cpu_use_onednn=true',
)


def configure() -> None:
  """Adds the project's XLA CPU flags to XLA_FLAGS unless already chosen."""
  flags = os.environ.get('XLA_FLAGS', '')
  for flag in CPU_XLA_FLAGS:
    name = flag.split('=')[0]
    if name not in flags:
      flags = f'{flags} {flag}'.strip()
  os.environ['XLA_FLAGS'] = flags
  # TensorFlow only reads TFDS files here; its start-up notices are noise.
  os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
