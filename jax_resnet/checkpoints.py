"""Orbax checkpoints: the latest few epochs and the best one, with resume.

A checkpoint holds everything exact continuation needs: the train state
(params, batch_stats, optimiser state, step, RNG key) and JSON metadata (epoch,
best test accuracy, and the run's signature: the settings a checkpoint must
match to be restored into a run).
"""

import os
from typing import Any, Optional

from absl import logging
import jax
import orbax.checkpoint as ocp

LATEST_DIR = 'checkpoints'
BEST_DIR = 'best'
CHECKPOINT_KINDS = ('best', 'latest')


class CheckpointMismatchError(ValueError):
  """The workdir's checkpoint was written by a different run setting."""


class NoCheckpointError(FileNotFoundError):
  """No checkpoint to restore."""


def _manager(directory: str, max_to_keep: Optional[int],
             read_only: bool = False) -> ocp.CheckpointManager:
  options = ocp.CheckpointManagerOptions(
      max_to_keep=max_to_keep, create=not read_only, read_only=read_only,
      enable_async_checkpointing=False, cleanup_tmp_directories=not read_only)
  return ocp.CheckpointManager(os.path.abspath(directory), options=options,
                               item_names=('state', 'meta'))


def _describe_mismatch(saved: dict[str, Any], current: dict[str, Any]) -> str:
  keys = sorted(set(saved) | set(current))
  return '; '.join(f'{k}: checkpoint {saved.get(k)!r}, command {current.get(k)!r}'
                   for k in keys if saved.get(k) != current.get(k))


class Checkpointer:
  """Saves and restores the latest and the best checkpoints of a workdir."""

  def __init__(self, workdir: str, keep: int = 3, read_only: bool = False):
    self.workdir = workdir
    self._read_only = read_only
    self._managers = {
        'latest': _manager(os.path.join(workdir, LATEST_DIR), keep, read_only),
        'best': _manager(os.path.join(workdir, BEST_DIR), 1, read_only),
    }

  def steps(self, kind: str = 'latest') -> list[int]:
    """Saved steps of one kind, oldest first."""
    return sorted(self._managers[kind].all_steps())

  def save(self, kind: str, step: int, state: Any, meta: dict[str, Any]):
    """Saves ``state`` and ``meta`` under ``step``; a saved step is kept as is.

    A run resumed after a kill repeats the epoch it lost; that epoch is
    deterministic, so a checkpoint that already exists for its step is equal.
    """
    manager = self._managers[kind]
    if step in manager.all_steps():
      return
    manager.save(step, args=ocp.args.Composite(
        state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)))
    manager.wait_until_finished()

  def restore(self, kind: str, abstract_state: Any,
              signature: dict[str, Any]) -> tuple[Any, dict[str, Any]]:
    """Restores the newest readable checkpoint of ``kind``.

    Args:
      kind: 'latest' or 'best'.
      abstract_state: the state's structure, shapes, dtypes and shardings.
      signature: the current run's signature; a checkpoint with another one
        raises CheckpointMismatchError.

    Returns:
      (state, meta).

    Raises:
      NoCheckpointError: there is no readable checkpoint of that kind.
      CheckpointMismatchError: the checkpoint belongs to another setting.
    """
    if kind not in CHECKPOINT_KINDS:
      raise ValueError(f'Unknown checkpoint {kind!r}; valid: '
                       f'{", ".join(CHECKPOINT_KINDS)}.')
    manager = self._managers[kind]
    steps = sorted(manager.all_steps(), reverse=True)
    directory = os.path.join(self.workdir,
                             LATEST_DIR if kind == 'latest' else BEST_DIR)
    if not steps:
      raise NoCheckpointError(f'No {kind} checkpoint in {directory}.')
    errors = []
    for step in steps:
      try:
        meta = manager.restore(step, args=ocp.args.Composite(
            meta=ocp.args.JsonRestore()))['meta']
      except Exception as e:  # pylint: disable=broad-except
        errors.append(f'step {step}: {type(e).__name__}: {e}')
        logging.warning('Checkpoint %s/%d is unreadable (%s); trying the '
                        'previous one.', directory, step, e)
        continue
      if meta.get('signature') != signature:
        raise CheckpointMismatchError(
            f'The checkpoint in {directory} (step {step}) was written by a '
            'different setting and cannot continue this run: '
            f'{_describe_mismatch(meta.get("signature") or {}, signature)}. '
            'Use another --workdir, or the command that wrote it.')
      try:
        restored = manager.restore(step, args=ocp.args.Composite(
            state=ocp.args.StandardRestore(abstract_state)))
      except Exception as e:  # pylint: disable=broad-except
        errors.append(f'step {step}: {type(e).__name__}: {e}')
        logging.warning('Checkpoint %s/%d is unreadable (%s); trying the '
                        'previous one.', directory, step, e)
        continue
      if step != steps[0]:
        logging.warning('Restored the older checkpoint %s/%d instead of the '
                        'unreadable newer ones.', directory, step)
      return restored['state'], meta
    raise NoCheckpointError(f'No readable {kind} checkpoint in {directory}: '
                            + ' | '.join(errors))

  def close(self):
    for manager in self._managers.values():
      manager.close()


def abstract(tree: Any) -> Any:
  """Shape/dtype/sharding structs of a pytree of arrays, for restoring."""
  return jax.tree.map(ocp.utils.to_shape_dtype_struct, tree)
