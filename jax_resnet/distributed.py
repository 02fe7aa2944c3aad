"""Several processes (hosts) training one run: start-up, data placement and
who writes.

A multi-host run starts one process per host (per GPU node, per TPU VM
worker), each with the same command. ``initialize`` connects them through
``jax.distributed``: automatically on TPU pod slices and under SLURM
(``--distributed=auto``), or from ``--coordinator_address``,
``--num_processes`` and ``--process_id``. Then ``jax.devices()`` lists every
device of every process and the training mesh spans them all.

Every process reads the dataset itself (CIFAR is small) and puts on its own
devices only their part of each array (``place``), never a global
``device_put`` of host data. The data order comes from the seed, the same
everywhere. Only process 0 writes metrics.jsonl, TensorBoard events,
config.json and the printed lines (``is_primary``); Orbax writes the
checkpoints, every process taking part.

A process that is lost (killed, preempted, its host gone) ends the others:
their next collective fails, or, where a collective waits instead of failing,
jax.distributed's heartbeat check (``HEARTBEAT_TIMEOUT_SECONDS``) terminates
them. ``exit_after_runtime_error`` turns the first case into one clear
message and skips the shutdown barrier, which would wait for the lost
process.

JAX is imported inside the functions: the commands define these flags
before the platform settings that must precede JAX.
"""

import json
import os
import re
import sys
from typing import Any, Callable, NoReturn, Optional

from absl import flags
import numpy as np

from jax_resnet import errors
from jax_resnet import preemption

# --distributed values.
MODES = ('off', 'auto')
# The exit status of a process that ends because the run lost a process.
LOST_PROCESS_EXIT_CODE = 1
# A process that stops answering is declared lost after this long; the
# others then end with jax.distributed's error instead of waiting forever.
HEARTBEAT_TIMEOUT_SECONDS = 60


def define_flags() -> None:
  """The multi-host flags of main.py and the grid."""
  flags.DEFINE_enum(
      'distributed', 'off', list(MODES),
      'auto: one process per host of a TPU pod slice or SLURM job, found by '
      'jax.distributed; off: one process, unless the three flags below.')
  flags.DEFINE_string(
      'coordinator_address', None, 'HOST:PORT of process 0 of a multi-host '
      'run (with --num_processes and --process_id).')
  flags.DEFINE_integer('num_processes', None,
                       'Processes of a multi-host run.')
  flags.DEFINE_integer('process_id', None, "This process's index, 0 to N-1.")


def initialize_from_flags() -> bool:
  """``initialize`` with the values of the ``define_flags`` flags."""
  values = flags.FLAGS
  return initialize(values.distributed, values.coordinator_address,
                    values.num_processes, values.process_id)


def initialize(mode: str = 'off', coordinator_address: Optional[str] = None,
               num_processes: Optional[int] = None,
               process_id: Optional[int] = None) -> bool:
  """Connects the processes of a multi-host run; returns whether it did.

  ``mode='auto'``: JAX's cluster detection (TPU pod slices, SLURM). An
  explicit ``coordinator_address`` (HOST:PORT of process 0) needs
  ``num_processes`` and ``process_id`` too. Call before anything starts a
  JAX backend.

  Raises:
    errors.ConfigError: an unknown mode or an incomplete set of flags.
  """
  if mode not in MODES:
    raise errors.ConfigError(f'Unknown --distributed={mode!r}; valid: '
                             f'{", ".join(MODES)}.')
  explicit = (coordinator_address, num_processes, process_id)
  if any(value is not None for value in explicit):
    if any(value is None for value in explicit):
      raise errors.ConfigError(
          '--coordinator_address, --num_processes and --process_id go '
          'together: give all three (or --distributed=auto).')
    if not 0 <= process_id < num_processes:
      raise errors.ConfigError(
          f'--process_id={process_id} is not in [0, {num_processes}).')
  elif mode == 'off':
    return False
  import jax  # pylint: disable=g-import-not-at-top
  # CPU processes exchange their collectives over gloo (TCP).
  jax.config.update('jax_cpu_collectives_implementation', 'gloo')
  jax.distributed.initialize(
      coordinator_address=coordinator_address, num_processes=num_processes,
      process_id=process_id,
      heartbeat_timeout_seconds=HEARTBEAT_TIMEOUT_SECONDS)
  # Connecting installs a SIGTERM handler of JAX's own (its preemption
  # notifier, in C: Python's signal.getsignal still names the old one), and
  # a SIGTERM would no longer ask the run to save and stop.
  preemption.reclaim()
  return True


def is_primary() -> bool:
  """Whether this process writes the run's logs (process 0)."""
  import jax  # pylint: disable=g-import-not-at-top
  return jax.process_index() == 0


def say(line: str) -> None:
  """Prints a line of the command's output, on process 0 only (every
  process of a multi-host run runs the same code)."""
  if is_primary():
    print(line, flush=True)


def is_multi_process() -> bool:
  """Whether this run spans several processes."""
  import jax  # pylint: disable=g-import-not-at-top
  return jax.process_count() > 1


def any_process(flag: bool) -> bool:
  """Whether ``flag`` is true on any process of the run (a collective:
  every process must call it)."""
  import jax  # pylint: disable=g-import-not-at-top
  from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
  if jax.process_count() == 1:
    return flag
  with jax.transfer_guard('allow'):
    return bool(np.max(multihost_utils.process_allgather(np.int32(flag))))


def from_primary(compute: Callable[[], Any]) -> Any:
  """Process 0's ``compute()`` (JSON-serialisable) on every process; the
  others do not call it. For decisions read from shared files: taken once,
  followed by all."""
  import jax  # pylint: disable=g-import-not-at-top
  from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
  if jax.process_count() == 1:
    return compute()
  data = np.frombuffer(json.dumps(compute() if is_primary() else None
                                  ).encode(), np.uint8)
  size = int(multihost_utils.broadcast_one_to_all(np.int32(data.size)))
  buffer = data if is_primary() else np.zeros(size, np.uint8)
  buffer = np.asarray(multihost_utils.broadcast_one_to_all(buffer))
  return json.loads(buffer.tobytes().decode())


# The status codes of a failed collective's error (e.g. 'UNKNOWN: Gloo
# AllGather failed: ... Connection closed by peer').
_RUNTIME_STATUS = re.compile(
    r'(UNKNOWN|UNAVAILABLE|INTERNAL|ABORTED|CANCELLED|DEADLINE_EXCEEDED|'
    r'FAILED_PRECONDITION|DATA_LOSS): ')


def is_runtime_error(error: BaseException) -> bool:
  """Whether ``error`` comes from JAX's runtime: a ``JaxRuntimeError``, or
  the ValueError carrying a runtime status that a failed host-level
  collective (``multihost_utils.process_allgather``) raises."""
  import jax  # pylint: disable=g-import-not-at-top
  if isinstance(error, jax.errors.JaxRuntimeError):
    return True
  return (isinstance(error, ValueError) and
          _RUNTIME_STATUS.match(str(error)) is not None)


def exit_after_runtime_error(error: Exception, workdir: str) -> NoReturn:
  """Ends this process of a multi-host run after a JAX runtime error.

  Such an error in a multi-host run is almost always a lost process (a
  collective whose peer is gone); the run cannot go on without it. One
  message, then ``os._exit``: the normal exit would wait at
  jax.distributed's shutdown barrier for the lost process and abort there.
  """
  import jax  # pylint: disable=g-import-not-at-top
  lines = str(error).strip().splitlines()
  print(f'error: process {jax.process_index()} of {jax.process_count()} '
        f'stopped: {lines[0] if lines else type(error).__name__}\n'
        'A process of this multi-host run was probably lost (killed, '
        'preempted, its host gone); the run cannot go on without it. The '
        f'last complete checkpoint in {workdir} stands: start the same '
        'command on every host to resume.', file=sys.stderr)
  sys.stdout.flush()
  sys.stderr.flush()
  os._exit(LOST_PROCESS_EXIT_CODE)  # pylint: disable=protected-access


def place(tree: Any, sharding: Any) -> Any:
  """Host arrays (the same on every process) as global arrays of
  ``sharding`` (a jax.sharding.Sharding): each process puts on its own
  devices only their shards."""
  import jax  # pylint: disable=g-import-not-at-top

  def one(x):
    x = np.asarray(x)
    return jax.make_array_from_callback(x.shape, sharding,
                                        lambda index: x[index])

  return jax.tree.map(one, tree)
