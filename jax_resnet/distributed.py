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
"""

from typing import Any, Optional

import jax
import numpy as np

from jax_resnet import errors

# --distributed values.
MODES = ('off', 'auto')
# A process that stops answering is declared lost after this long; the
# others then end with jax.distributed's error instead of waiting forever.
HEARTBEAT_TIMEOUT_SECONDS = 60


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
  # CPU processes exchange their collectives over gloo (TCP).
  jax.config.update('jax_cpu_collectives_implementation', 'gloo')
  jax.distributed.initialize(
      coordinator_address=coordinator_address, num_processes=num_processes,
      process_id=process_id,
      heartbeat_timeout_seconds=HEARTBEAT_TIMEOUT_SECONDS)
  return True


def is_primary() -> bool:
  """Whether this process writes the run's logs (process 0)."""
  return jax.process_index() == 0


def place(tree: Any, sharding: jax.sharding.Sharding) -> Any:
  """Host arrays (the same on every process) as global arrays of
  ``sharding``: each process puts on its own devices only their shards."""

  def one(x):
    x = np.asarray(x)
    return jax.make_array_from_callback(x.shape, sharding,
                                        lambda index: x[index])

  return jax.tree.map(one, tree)
