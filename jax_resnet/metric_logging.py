"""Per-epoch metrics: a readable line, metrics.jsonl and TensorBoard events."""

import json
import os
from typing import Any

from absl import logging

from jax_resnet import errors
from jax_resnet import event_writer

METRICS_FILE = 'metrics.jsonl'
# What every epoch record holds. selected_test_accuracy: the test accuracy
# (of the weights config.eval_weights names) at the epoch the best
# checkpoint comes from, chosen on validation_accuracy with a validation
# split, else on the test accuracy itself.
EPOCH_KEYS = ('epoch', 'step', 'train_loss', 'train_accuracy', 'test_loss',
              'test_accuracy', 'best_test_accuracy', 'selected_test_accuracy',
              'learning_rate', 'images_per_sec', 'epoch_seconds')


class MetricsFileError(errors.Error, ValueError):
  """A line of metrics.jsonl that is not a record."""


def read_metrics(workdir: str) -> list[dict[str, Any]]:
  """The epoch records of a workdir's metrics.jsonl, in order.

  A last line cut off (no newline at its end: a write interrupted by a kill)
  is dropped with a warning; its epoch is trained again from the
  checkpoint. Any other line that is not a JSON record is an error.
  """
  path = os.path.join(workdir, METRICS_FILE)
  if not os.path.exists(path):
    return []
  with open(path) as f:
    lines = f.read().split('\n')
  records = []
  for number, line in enumerate(lines, start=1):
    if not line.strip():
      continue
    try:
      record = json.loads(line)
    except ValueError as e:
      if number == len(lines):
        logging.warning('Ignoring the last line of %s, cut off by an '
                        'interrupted write: %r', path, line[:80])
        continue
      raise MetricsFileError(
          f'{path}, line {number}, is not a JSON record ({e}). The '
          'checkpoints are not affected: fix or delete that line (one '
          'record per epoch) and rerun.') from None
    if not isinstance(record, dict):
      raise MetricsFileError(f'{path}, line {number}, is not a JSON record '
                             '(an object). Fix or delete that line and '
                             'rerun.')
    records.append(record)
  return records


def format_epoch(record: dict[str, Any], num_epochs: int,
                 mixed_targets: bool = False) -> str:
  """One readable line for an epoch record; ``mixed_targets``: the train
  accuracy is lam-weighted (Mixup, CutMix), and the line says so."""
  accuracy = 'lam-weighted acc' if mixed_targets else 'acc'
  parts = [f'epoch {record["epoch"]:>3d}/{num_epochs}',
           f'train loss {record["train_loss"]:.4f} '
           f'{accuracy} {record["train_accuracy"]:6.2f}%',
           f'test loss {record["test_loss"]:.4f} '
           f'acc {record["test_accuracy"]:6.2f}% '
           f'(best {record["best_test_accuracy"]:6.2f}%)']
  if 'validation_accuracy' in record:
    parts.append(f'val acc {record["validation_accuracy"]:6.2f}% '
                 f'(best {record["best_validation_accuracy"]:6.2f}%)')
  for average in ('ema', 'swa'):
    if f'{average}_test_accuracy' in record:
      parts.append(
          f'{average} acc {record[f"{average}_test_accuracy"]:6.2f}% '
          f'(best {record[f"best_{average}_test_accuracy"]:6.2f}%)')
  parts += [f'lr {record["learning_rate"]:.5f}',
            f'{record["images_per_sec"]:7.1f} img/s',
            f'{record["epoch_seconds"]:6.1f} s']
  return ' | '.join(parts)


class MetricLogger:
  """Writes epoch records; on resume, drops records past the checkpoint."""

  def __init__(self, workdir: str, resumed_epoch: int,
               mixed_targets: bool = False, prefix: str = ''):
    self._mixed_targets = mixed_targets
    self._prefix = prefix  # Of the printed line, e.g. 'seed 1: '.
    self._path = os.path.join(workdir, METRICS_FILE)
    # Records of epochs after the restored checkpoint come from a run that was
    # killed before it saved them; that epoch runs again and is rewritten.
    kept = [r for r in read_metrics(workdir) if r['epoch'] <= resumed_epoch]
    tmp = self._path + '.tmp'
    with open(tmp, 'w') as f:
      for record in kept:
        f.write(json.dumps(record) + '\n')
    os.replace(tmp, self._path)
    self._summary_writer = event_writer.SummaryWriter(workdir)

  def write(self, record: dict[str, Any], num_epochs: int):
    """Logs one epoch: readable line, JSON line, TensorBoard scalars."""
    missing = set(EPOCH_KEYS) - set(record)
    if missing:
      raise ValueError(f'Epoch record lacks {sorted(missing)}.')
    print(self._prefix + format_epoch(record, num_epochs,
                                      self._mixed_targets), flush=True)
    with open(self._path, 'a') as f:
      f.write(json.dumps(record) + '\n')
      f.flush()
      os.fsync(f.fileno())
    for key, value in record.items():
      if key not in ('epoch', 'step') and value is not None:
        self._summary_writer.scalar(key, value, record['step'])
    self._summary_writer.flush()

  def close(self):
    self._summary_writer.close()
