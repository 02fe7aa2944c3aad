"""Compiles the project's C++ kernels at first use and caches the library.

The library is built with the system C++ compiler (``$CXX``, else ``g++``)
and explicit ISA flags, never ``-march=native``, and cached under
``$JAX_RESNET_CACHE`` (default ``$XDG_CACHE_HOME/jax_resnet``, i.e.
``~/.cache/jax_resnet``). The file name is a hash of the source and its
headers, the compiler command, the CPU's features and the jaxlib version whose
FFI headers it was built against, so any change builds a new library and never
loads a stale one. The compiler writes to a temporary file that is renamed
into place, so two processes compiling at once each end with a whole library.
"""

import hashlib
import os
import shlex
import subprocess
import tempfile
from typing import Sequence


class BuildError(RuntimeError):
  """The C++ compiler is missing or failed."""


def cache_dir() -> str:
  """Where compiled libraries are kept."""
  explicit = os.environ.get('JAX_RESNET_CACHE')
  if explicit:
    return explicit
  base = os.environ.get('XDG_CACHE_HOME') or os.path.join(
      os.path.expanduser('~'), '.cache')
  return os.path.join(base, 'jax_resnet')


def compiler() -> list[str]:
  """The C++ compiler command: ``$CXX`` (may carry flags) or ``g++``."""
  return shlex.split(os.environ.get('CXX') or 'g++')


def library_path(source: str, flags: Sequence[str], key: str,
                 depends: Sequence[str] = ()) -> str:
  """The cached library's path for this source (and the headers it includes,
  ``depends``), compiler command and machine key."""
  texts = []
  for path in (source, *depends):
    with open(path, 'rb') as f:
      texts.append(f.read())
  digest = hashlib.sha256()
  for part in (*texts, ' '.join(compiler() + list(flags)).encode(),
               key.encode()):
    digest.update(part)
    digest.update(b'\0')
  name = os.path.splitext(os.path.basename(source))[0]
  return os.path.join(cache_dir(), f'{name}-{digest.hexdigest()[:16]}.so')


def build(source: str, flags: Sequence[str], key: str,
          depends: Sequence[str] = ()) -> str:
  """Returns the path of the compiled ``source``, compiling it if needed.

  Args:
    source: the C++ file.
    flags: compiler flags (ISA, include paths, optimisation).
    key: what else the library depends on (CPU features, jaxlib version).
    depends: headers the source includes.

  Returns:
    The shared library's path.

  Raises:
    BuildError: no compiler, or the compile failed (with its first errors).
  """
  path = library_path(source, flags, key, depends)
  if os.path.exists(path):
    return path
  os.makedirs(os.path.dirname(path), exist_ok=True)
  fd, tmp = tempfile.mkstemp(suffix='.so.tmp', dir=os.path.dirname(path))
  os.close(fd)
  command = compiler() + list(flags) + ['-shared', '-fPIC', source, '-o', tmp]
  try:
    try:
      proc = subprocess.run(command, capture_output=True, text=True,
                            check=False)
    except OSError as e:
      raise BuildError(f'no C++ compiler ({command[0]}: {e.strerror})') from e
    if proc.returncode:
      first = '; '.join(proc.stderr.strip().splitlines()[:3])
      raise BuildError(f'{command[0]} failed (exit {proc.returncode}): '
                       f'{first}')
    os.replace(tmp, path)  # Atomic: readers see no library or a whole one.
  finally:
    if os.path.exists(tmp):
      os.unlink(tmp)
  return path
