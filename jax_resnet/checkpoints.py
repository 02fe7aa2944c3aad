"""Orbax checkpoints: the latest few epochs and the best one, with resume.

One Orbax ``CheckpointManager`` writes the train state once per epoch into
``<workdir>/checkpoints/<step>``; its preservation policy keeps the newest
``checkpoints_to_keep`` steps and the step with the best test accuracy (the
checkpoint's Orbax metric). A checkpoint holds everything exact continuation
needs: the train state (params, batch_stats, optimiser state, step, RNG key)
and JSON metadata (epoch, best test accuracy, steps per epoch and the run's
signature: the settings a checkpoint must match to be restored into a run).

Workdirs written before the single manager also have ``<workdir>/best``; it
is read (never written) as a candidate for the best checkpoint, and their
metadata carries the older signature layout (``legacy_signature``).
"""

import dataclasses
import inspect
import json
import logging as logging_lib
import os
import re
import shutil
import sys
from typing import Any, Callable, Optional

from absl import logging
import jax
import orbax.checkpoint as ocp
from orbax.checkpoint import checkpoint_managers

from jax_resnet import errors

CHECKPOINT_DIR = 'checkpoints'
LEGACY_BEST_DIR = 'best'
# Checkpoints saved inside an epoch: on a graceful stop (preemption.py) and
# every config.checkpoint_every_steps; only the newest is kept.
MID_EPOCH_DIR = 'mid_epoch'
CHECKPOINT_KINDS = ('best', 'latest')
# The Orbax metric the best checkpoint is chosen by: the accuracy of the
# run's selection (train.selection_metric). Checkpoints written before it had
# this name hold it as 'test_accuracy'.
BEST_METRIC = 'selection_accuracy'
LEGACY_BEST_METRIC = 'test_accuracy'
# Room a checkpoint needs beyond the last one's size (or the state's bytes,
# if larger): a tenth more and this many bytes, for Orbax's metadata and the
# epoch's log lines.
SPACE_MARGIN_BYTES = 64 << 10


class CheckpointMismatchError(errors.Error, ValueError):
  """The workdir's checkpoint was written by a different run setting."""


class CheckpointWriteError(errors.Error, OSError):
  """A checkpoint could not be written: a full disk, no permission."""


def _size(count: float) -> str:
  for unit in ('bytes', 'KB', 'MB', 'GB'):
    if count < 1024 or unit == 'GB':
      return f'{count:.0f} {unit}' if unit == 'bytes' else f'{count:.1f} {unit}'
    count /= 1024
  return ''


def _directory_bytes(path: str) -> int:
  total = 0
  for root, _, files in os.walk(path):
    for name in files:
      try:
        total += os.path.getsize(os.path.join(root, name))
      except OSError:
        pass
  return total


class NoCheckpointError(errors.Error, FileNotFoundError):
  """No checkpoint to restore."""


def _best_metric(metrics: Any) -> float:
  if BEST_METRIC in metrics:
    return metrics[BEST_METRIC]
  return metrics[LEGACY_BEST_METRIC]


def _manager(directory: str, keep: Optional[int],
             read_only: bool, ranked: bool = True) -> ocp.CheckpointManager:
  policies = []
  if ranked:
    policies.append(checkpoint_managers.BestN(
        get_metric_fn=_best_metric, n=1,
        keep_checkpoints_without_metrics=False))
  if keep is not None:
    policies.append(checkpoint_managers.LatestN(n=keep))
  options = ocp.CheckpointManagerOptions(
      create=not read_only, read_only=read_only,
      enable_async_checkpointing=False, cleanup_tmp_directories=not read_only,
      best_fn=_best_metric if ranked else None, best_mode='max',
      preservation_policy=checkpoint_managers.AnyPreservationPolicy(policies))
  try:
    return ocp.CheckpointManager(os.path.abspath(directory), options=options)
  except Exception as e:  # pylint: disable=broad-except
    # Orbax reads every step's metrics as it starts: one damaged file stops
    # it (a JSONDecodeError from a thread pool).
    damaged = _damaged_metadata(directory)
    what = (f'damaged: {", ".join(damaged)}' if damaged else _reason(e))
    raise UnreadableCheckpointsError(
        f'Cannot read the checkpoints in {directory}: {what}. Move the '
        'damaged step folder out of it to resume from the other steps, or '
        'use another --workdir.') from e


class UnreadableCheckpointsError(errors.Error):
  """A checkpoint folder Orbax cannot even list."""


def _reason(error: BaseException) -> str:
  """An exception in one short line: its type and its message's first
  sentence (TensorStore appends its whole multi-line spec)."""
  text = str(error).strip().split('\n', 1)[0]
  text = text.split(' See full TensorStore details', 1)[0].rstrip('.')
  if len(text) > 300:
    text = text[:300] + '...'
  return f'{type(error).__name__}: {text}'


def _damaged_metadata(directory: str) -> list[str]:
  """The JSON files of ``directory``'s step folders that do not parse."""
  damaged = []
  if not os.path.isdir(directory):
    return damaged
  for step in sorted(os.listdir(directory)):
    if not step.isdigit():
      continue
    for name in ('_CHECKPOINT_METADATA', os.path.join('metrics', 'metrics'),
                 os.path.join('meta', 'metadata')):
      path = os.path.join(directory, step, name)
      if not os.path.isfile(path):
        continue
      try:
        with open(path, 'rb') as f:
          json.loads(f.read())
      except (ValueError, OSError):
        damaged.append(path)
  return damaged


@dataclasses.dataclass(frozen=True)
class Fit:
  """What a checkpoint must match to continue or evaluate this command.

  Attributes:
    signature: the run signature (``train.run_signature``).
    legacy_signature: the same settings in the layout of checkpoints written
      before signatures had a version (``legacy_signature``).
    steps_per_epoch: the command's steps per epoch; None (evaluation)
      accepts any.
  """

  signature: dict[str, Any]
  legacy_signature: Optional[dict[str, Any]] = None
  steps_per_epoch: Optional[int] = None

  def check(self, meta: dict[str, Any], where: str) -> None:
    """Raises CheckpointMismatchError naming every difference."""
    saved = meta.get('signature') or {}
    current = (self.signature if 'version' in saved or
               self.legacy_signature is None else self.legacy_signature)
    if saved != current:
      raise CheckpointMismatchError(
          f'The checkpoint in {where} was written by a different setting and '
          f'cannot continue this run: {_describe_mismatch(saved, current)}. '
          'Use another --workdir, or the command that wrote it.')
    if (self.steps_per_epoch is not None and
        meta['steps_per_epoch'] != self.steps_per_epoch):
      raise CheckpointMismatchError(
          f'The checkpoint in {where} was written with '
          f'{meta["steps_per_epoch"]} steps per epoch; this command has '
          f'{self.steps_per_epoch} (batch_size or data.train_examples '
          'differ). Use another --workdir, or the command that wrote it.')


def _describe_mismatch(saved: dict[str, Any], current: dict[str, Any]) -> str:
  keys = sorted(set(saved) | set(current))
  return '; '.join(f'{k}: checkpoint {saved.get(k)!r}, command '
                   f'{current.get(k)!r}'
                   for k in keys if saved.get(k) != current.get(k))


class Checkpointer:
  """Saves and restores the checkpoints of a workdir."""

  def __init__(self, workdir: str, keep: int = 3, read_only: bool = False,
               subdir: str = CHECKPOINT_DIR, ranked: bool = True):
    """``subdir``: the checkpoints' folder in the workdir; ``ranked``: the
    best one is kept and found (by ``save``'s accuracy), as for the epoch
    checkpoints; unranked (mid-epoch checkpoints), only the newest
    ``keep``."""
    self.workdir = workdir
    self.directory = os.path.join(workdir, subdir)
    self.ranked = ranked
    if not read_only:
      self._remove_unfinished()
    self._manager = _manager(self.directory, None if read_only else keep,
                             read_only, ranked)
    legacy = os.path.join(workdir, LEGACY_BEST_DIR)
    self._legacy_best = (_manager(legacy, None, read_only=True)
                         if ranked and os.path.isdir(legacy) else None)

  def _remove_unfinished(self) -> None:
    """Deletes what a killed or failed save left (``<step>.orbax-checkpoint-
    tmp*``). Only a writer does it: it holds the workdir (workdir_lock), so
    no save is under way."""
    if not os.path.isdir(self.directory):
      return
    for name in os.listdir(self.directory):
      if re.fullmatch(r'\d+\.orbax-checkpoint-tmp.*', name):
        logging.warning('Removing %s, left by a checkpoint save that did '
                        'not finish.', os.path.join(self.directory, name))
        shutil.rmtree(os.path.join(self.directory, name), ignore_errors=True)

  def steps(self) -> list[int]:
    """Saved steps, oldest first."""
    return sorted(self._manager.all_steps())

  def metadata(self, step: int) -> dict[str, Any]:
    """The metadata saved with ``step``."""
    return _restore_meta(self._manager, step)

  def save(self, step: int, state: Any, meta: dict[str, Any],
           selection_accuracy: Optional[float] = None):
    """Saves ``state`` and ``meta`` under ``step``; a saved step is kept as is.

    The best checkpoint is the one of the highest ``selection_accuracy``.

    A run resumed after a kill repeats the epoch it lost; that epoch is
    deterministic, so a checkpoint that already exists for its step is equal.
    """
    if step in self._manager.all_steps():
      return
    # A full disk is found before Orbax starts writing: its failure midway
    # is reported by several threads at once.
    previous = self.steps()
    size = max(
        sum(getattr(x, 'nbytes', 0) for x in jax.tree.leaves(state)),
        _directory_bytes(os.path.join(self.directory, str(previous[-1])))
        if previous else 0)
    needed = size + size // 10 + SPACE_MARGIN_BYTES
    usage = shutil.disk_usage(self.directory)
    if usage.free < needed:
      raise self._write_error(
          step, meta, f'no space left on the device ({_size(usage.free)} '
          f'free of {_size(usage.total)}; it needs about {_size(needed)})')
    try:
      self._manager.save(
          step, args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                        meta=ocp.args.JsonSave(meta)),
          metrics=({BEST_METRIC: selection_accuracy} if self.ranked else
                   None))
      self._manager.wait_until_finished()
    except Exception as e:  # pylint: disable=broad-except
      why = errors.write_failure(e)
      if why is None:
        raise
      # What was written of it is useless; its space is the user's.
      self._remove_unfinished()
      usage = shutil.disk_usage(self.directory)
      raise self._write_error(step, meta, f'{why} ({_size(usage.free)} '
                              f'free of {_size(usage.total)})') from None

  def delete_all(self) -> None:
    """Deletes every checkpoint of this folder (mid-epoch checkpoints, once
    their epoch's checkpoint is saved)."""
    for step in self._manager.all_steps():
      self._manager.delete(step)

  def _write_error(self, step: int, meta: dict[str, Any],
                   why: str) -> CheckpointWriteError:
    """The error of a checkpoint not written, with what still stands."""
    previous = self.steps()
    per_epoch = meta.get('steps_per_epoch') or 1
    if previous:
      stands = (f'The previous checkpoint (epoch {previous[-1] // per_epoch},'
                f' step {previous[-1]}) is intact: free some space (or move '
                'the workdir) and rerun the same command to resume from it.')
    else:
      stands = ('There is no earlier checkpoint: free some space (or move '
                'the workdir) and rerun the same command to start again.')
    return CheckpointWriteError(
        f'Could not write the checkpoint of epoch {meta.get("epoch")} (step '
        f'{step}) to {self.directory}: {why}. {stands}')

  def _candidates(self, kind: str, max_step: Optional[int] = None
                  ) -> list[tuple[ocp.CheckpointManager, int, str]]:
    """(manager, step, directory) to try for ``kind``, most wanted first."""
    if kind == 'latest':
      return [(self._manager, step, self.directory)
              for step in sorted(self._manager.all_steps(), reverse=True)
              if max_step is None or step <= max_step]
    ranked = []
    for step in self._manager.all_steps():
      metrics = self._manager.metrics(step)
      if metrics is not None:
        ranked.append((_best_metric(metrics), step, self._manager,
                       self.directory))
    if self._legacy_best is not None:
      where = os.path.join(self.workdir, LEGACY_BEST_DIR)
      for step in self._legacy_best.all_steps():
        try:
          meta = _restore_meta(self._legacy_best, step)
        except Exception:  # pylint: disable=broad-except
          meta = {'test_accuracy': -1.0}  # Unreadable: tried last.
        ranked.append((meta['test_accuracy'], step, self._legacy_best, where))
    ranked.sort(key=lambda item: (item[0], item[1]), reverse=True)
    return [(manager, step, where) for _, step, manager, where in ranked]

  def restore(self, kind: str, abstract_state: Any, fit: Fit,
              max_step: Optional[int] = None) -> tuple[Any, dict[str, Any]]:
    """Restores the newest (or best) readable checkpoint.

    Args:
      kind: 'latest' or 'best'.
      abstract_state: the state's structure, shapes, dtypes and shardings
        (e.g. ``jax.eval_shape`` of the initialiser).
      fit: what the checkpoint must match.
      max_step: 'latest' only: the newest at or before this step.

    Returns:
      (state, meta).

    Raises:
      NoCheckpointError: there is no readable checkpoint of that kind.
      CheckpointMismatchError: the checkpoint belongs to another setting.
    """
    if kind not in CHECKPOINT_KINDS:
      raise errors.ConfigError(f'Unknown checkpoint {kind!r}; valid: '
                               f'{", ".join(CHECKPOINT_KINDS)}.')
    candidates = self._candidates(kind, max_step)
    if not candidates:
      at = '' if max_step is None else f' at or before step {max_step}'
      raise NoCheckpointError(f'No {kind} checkpoint{at} in '
                              f'{self.directory}.')
    errors_seen = []
    for i, (manager, step, where) in enumerate(candidates):
      meta, why = _attempt(lambda: _restore_meta(manager, step))  # pylint: disable=cell-var-from-loop
      if why is None:
        fit.check(meta, f'{where} (step {step})')
        restored, why = _attempt(lambda: manager.restore(  # pylint: disable=cell-var-from-loop
            step, args=ocp.args.Composite(
                state=ocp.args.StandardRestore(abstract_state))))
      if why is not None:
        errors_seen.append(f'step {step}: {why}')
        logging.warning('Checkpoint %s/%d is unreadable (%s)%s', where, step,
                        why, '; trying the previous one.'
                        if i + 1 < len(candidates) else '.')
        continue
      if (manager, step, where) != candidates[0]:
        logging.warning('Restored the older checkpoint %s/%d instead of the '
                        'unreadable newer ones.', where, step)
      return restored['state'], meta
    raise NoCheckpointError(
        f'No readable {kind} checkpoint in {self.directory}: ' +
        ' | '.join(errors_seen) + '. Its files are damaged; use another '
        '--workdir, or move the damaged step folders aside.')

  def close(self):
    self._manager.close()
    if self._legacy_best is not None:
      self._legacy_best.close()


def _attempt(read: Callable[[], Any]) -> tuple[Any, Optional[str]]:
  """(read(), None), or (None, why) when reading fails."""
  # Before the read: its leftovers may report while it is still failing.
  _drop_leftovers_of_failed_reads()
  try:
    return read(), None
  except Exception as e:  # pylint: disable=broad-except
    return None, _reason(e)


# After a failed restore, three kinds of leftovers would each print a
# traceback (and TensorStore's whole spec) about the failure already
# reported in one line: Orbax's array reads
# (serialization._read_array_index_and_device_put catch BaseException, so
# closing the unfinished ones raises again), TensorStore's callbacks of the
# reads still in flight, which find Orbax's event loop closed, and asyncio's
# "Task exception was never retrieved" for Orbax's other failed reads
# (serialization.async_deserialize), logged when the task is collected.
_ORBAX_READ = '_read_array_index_and_device_put'
_ORBAX_DESERIALIZE = 'coro=<async_deserialize()'


class _UnretrievedOrbaxReads(logging_lib.Filter):
  """Drops asyncio's reports of Orbax reads that failed unretrieved."""

  def filter(self, record: logging_lib.LogRecord) -> bool:
    message = record.getMessage()
    return not ('Task exception was never retrieved' in message and
                (_ORBAX_DESERIALIZE in message or _ORBAX_READ in message))


def _leftover_of_failed_read(unraisable) -> bool:
  if (inspect.iscoroutine(unraisable.object) and
      unraisable.object.__name__ == _ORBAX_READ):
    return True
  return (unraisable.exc_type is RuntimeError and
          str(unraisable.exc_value) == 'Event loop is closed')


def _drop_leftovers_of_failed_reads() -> None:
  """From now on, drops just those reports (other ones still print)."""
  previous = sys.unraisablehook
  if getattr(previous, 'drops_leftovers_of_failed_reads', False):
    return

  def hook(unraisable):
    if not _leftover_of_failed_read(unraisable):
      previous(unraisable)

  hook.drops_leftovers_of_failed_reads = True
  sys.unraisablehook = hook
  logging_lib.getLogger('asyncio').addFilter(_UnretrievedOrbaxReads())


def _restore_meta(manager: ocp.CheckpointManager, step: int) -> dict[str, Any]:
  return manager.restore(step, args=ocp.args.Composite(
      meta=ocp.args.JsonRestore()))['meta']


def with_sharding(abstract_tree: Any, sharding: Any) -> Any:
  """Shape/dtype structs of an abstract pytree, placed on ``sharding``."""
  return jax.tree.map(
      lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding),
      abstract_tree)


# The model fields of the signature before it had a version, in order; a
# None there meant "not set in the config".
_LEGACY_BLOCK_FIELDS = ('cardinality', 'base_width', 'scale', 'se_reduction',
                        'radix')
_LEGACY_NETWORK_FIELDS = ('widen_factor', 'dropout_rate', 'pyramid_alpha',
                          'growth_rate', 'compression')
# What the networks without a shortcut_type field recorded.
_LEGACY_SHORTCUTS = {'pyramidnet': 'pyramid', 'densenet': 'none'}


def legacy_signature(signature: dict[str, Any],
                     given_block_kwargs: dict[str, Any],
                     given_network_kwargs: dict[str, Any]
                     ) -> Optional[dict[str, Any]]:
  """The signature checkpoints written before signature versions would hold.

  None when the settings could not have been written then (a block or
  network hyper-parameter that had no config field).
  """
  if (set(given_block_kwargs) - set(_LEGACY_BLOCK_FIELDS) or
      set(given_network_kwargs) - set(_LEGACY_NETWORK_FIELDS)):
    return None
  legacy = {'dataset': signature['dataset'], 'name': signature['name'],
            'block': signature['block'], 'depth': signature['depth'],
            'scan_blocks': signature['scan_blocks']}
  for field in _LEGACY_BLOCK_FIELDS:
    legacy[field] = given_block_kwargs.get(field)
  for field in _LEGACY_NETWORK_FIELDS:
    legacy[field] = given_network_kwargs.get(field)
  legacy['shortcut'] = (signature['shortcut'] if signature['shortcut']
                        is not None else _LEGACY_SHORTCUTS[signature['name']])
  legacy['final_survival_probability'] = (
      signature['final_survival_probability']
      if signature['final_survival_probability'] is not None else 1.0)
  return legacy
