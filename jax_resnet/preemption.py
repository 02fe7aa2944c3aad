"""Graceful stops: SIGTERM and SIGINT end a run at a step, saved.

TPU VM preemption, SLURM time limits and ``docker stop`` send SIGTERM; Ctrl-C
sends SIGINT. While a command trains (``watch``), the first such signal asks
the training loop to stop: it finishes the step in flight, saves a
checkpoint at that step (the position in the epoch and the epoch's partial
train metrics with it, so the same command continues bitwise as if never
stopped), prints one line and exits. A second signal during that save is
ignored; a third ends the process at once, and the previous checkpoint
stands. Before training starts (importing JAX, data loading, compilation) a
signal ends the command at once (``os._exit``) with the same status: there
is nothing to save. main.py installs the handlers first thing, so only the
interpreter's own start (about half a second) is left to the default
action (status 143).

The exit statuses are listed once, in ``exits``.
"""

import contextlib
import os
import signal
import sys
from typing import Iterator, Optional

SIGNALS = (signal.SIGTERM, signal.SIGINT)
EXIT_CODES = {signal.SIGTERM: 0, signal.SIGINT: 130}


class Stopped(BaseException):
  """The run stopped on a signal (``signum``). A BaseException, as
  KeyboardInterrupt is: no ``except Exception`` on the way may take it for
  an error of its own."""

  def __init__(self, message: str, signum: int):
    super().__init__(message)
    self.signum = signum

  @property
  def exit_code(self) -> int:
    return EXIT_CODES.get(self.signum, 128 + self.signum)


class _State:
  signum: Optional[int] = None
  count = 0
  training = False


_STATE = _State()


def requested() -> Optional[int]:
  """The signal that asked the run to stop, or None."""
  return _STATE.signum


def _handle(signum, frame):
  del frame
  _STATE.count += 1
  if _STATE.count == 1:
    _STATE.signum = signum
    if not _STATE.training:
      # Nothing to save. At once, without unwinding: the signal may have
      # come in the middle of a library's start-up (TensorFlow, XLA), and
      # an exception raised there can crash the interpreter's exit.
      print(f'Stopped by {signal.Signals(signum).name} before training '
            'began; nothing to save.', flush=True)
      sys.stderr.flush()
      os._exit(EXIT_CODES.get(signum, 128 + signum))  # pylint: disable=protected-access
    return
  if _STATE.count == 2:
    print(f'{signal.Signals(signum).name} again: still saving; a third '
          'signal exits at once (the previous checkpoint stands).',
          file=sys.stderr, flush=True)
    return
  print(f'{signal.Signals(signum).name} a third time: exiting now; the '
        'previous checkpoint stands.', file=sys.stderr, flush=True)
  os._exit(128 + signum)  # pylint: disable=protected-access


def install() -> None:
  """Takes over SIGTERM and SIGINT for this command (main thread only)."""
  _STATE.signum, _STATE.count, _STATE.training = None, 0, False
  for signum in SIGNALS:
    signal.signal(signum, _handle)


def reclaim() -> None:
  """Puts ``install``'s handlers back in force where a library replaced
  them below Python (``jax.distributed.initialize`` does for SIGTERM); a
  signal already noted stays noted."""
  if installed():
    for signum in SIGNALS:
      signal.signal(signum, _handle)


@contextlib.contextmanager
def training() -> Iterator[None]:
  """While inside, a signal asks the loop to stop instead of ending the
  command at once."""
  _STATE.training = True
  try:
    yield
  finally:
    _STATE.training = False


def finished() -> None:
  """The command's work is over (done, stopped or failed): from now on a
  SIGTERM or SIGINT is ignored.

  What is left is the interpreter's exit (a few seconds of library
  teardown), during which Python puts back the default handlers: a signal
  then would kill the process (status 143) though nothing is lost, and a
  scheduler would count a finished run as killed. The exit status stays the
  command's own.
  """
  if installed():
    for signum in SIGNALS:
      signal.signal(signum, signal.SIG_IGN)


def installed() -> bool:
  """Whether ``install`` took the signals (the commands do; a library
  caller, e.g. a notebook or the tests, keeps its own handlers)."""
  return signal.getsignal(signal.SIGTERM) is _handle
