"""How a command ends: its exit status and last words.

  0    done, or stopped by SIGTERM after saving (a clean stop for schedulers)
  1    an error (one line, ``error: ...``), or a lost process of a
       multi-host run
  2    a bad command line (unknown config field, missing config file, bad
       grid flags)
  130  stopped by SIGINT (Ctrl-C) after saving
  128+N  a third signal N: exited at once, the previous checkpoint stands

``reported`` wraps the work of main.py and of the grid so that both end the
same way.
"""

import contextlib
import sys
from typing import Iterator

from jax_resnet import distributed
from jax_resnet import errors
from jax_resnet import preemption

ERROR = 1
COMMAND_LINE = 2


@contextlib.contextmanager
def reported(workdir: str, error_status: int = ERROR) -> Iterator[None]:
  """Runs a command's work; ends the process as the module docstring says.

  The project's own errors (``errors.Error``) print one line and exit with
  ``error_status``; anything else keeps its traceback (a user's block
  raising, a bug). A signal's stop prints its line (process 0) and exits
  with its status; a JAX runtime error in a multi-host run (a lost process)
  ends this process at once (``distributed.exit_after_runtime_error``).
  Whatever the ending, signals are ignored from then on
  (``preemption.finished``).
  """
  import jax  # pylint: disable=g-import-not-at-top
  try:
    yield
  except errors.Error as e:
    print(f'error: {e}', file=sys.stderr)
    sys.exit(error_status)
  except preemption.Stopped as e:
    if distributed.is_primary():
      print(e, flush=True)
    sys.exit(e.exit_code)
  except (jax.errors.JaxRuntimeError, ValueError) as e:
    # A lost process fails the next collective: most raise a
    # JaxRuntimeError, a host-level all-gather a ValueError with the status.
    if not (distributed.is_multi_process() and
            distributed.is_runtime_error(e)):
      raise
    distributed.exit_after_runtime_error(e, workdir)
  finally:
    preemption.finished()
