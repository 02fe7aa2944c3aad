"""Checkpoints: one write per epoch, what a checkpoint must match, a refused
command, unreadable checkpoints, and workdirs of earlier versions."""

import logging
import os
import shutil

import pytest

from conftest import ROOT, records, tiny_config, workdir_bytes
from jax_resnet import checkpoints
from jax_resnet import metric_logging
from jax_resnet import train

# Written by the code before the single checkpoint manager (its README says
# how): best/ beside checkpoints/, signatures without a version.
LEGACY_WORKDIR = os.path.join(ROOT, 'tests', 'data', 'legacy_workdir')


def test_state_is_written_once_per_epoch(mock_cifar, tmp_path, monkeypatch):
  del mock_cifar
  saves = []
  save = checkpoints.Checkpointer.save
  monkeypatch.setattr(checkpoints.Checkpointer, 'save',
                      lambda self, step, *a, **k: saves.append(step) or
                      save(self, step, *a, **k))
  config = tiny_config(num_epochs=3, checkpoints_to_keep=1)
  train.train_and_evaluate(config, str(tmp_path))
  history = metric_logging.read_metrics(str(tmp_path))
  assert saves == [r['step'] for r in history] == [2, 4, 6]
  # One directory: the newest step and the best one (ties: the later).
  best = max(history, key=lambda r: (r['test_accuracy'], r['epoch']))
  assert sorted(os.listdir(tmp_path / checkpoints.CHECKPOINT_DIR)) == sorted(
      {str(best['step']), '6'})
  assert not os.path.exists(tmp_path / checkpoints.LEGACY_BEST_DIR)
  config.eval_checkpoint = 'best'
  assert train.evaluate(config, str(tmp_path))['checkpoint_step'] == (
      best['step'])


def test_checkpoint_of_another_setting_is_refused(mock_cifar, tmp_path):
  """Refused, and the refused command leaves the workdir byte-identical."""
  del mock_cifar
  train.train_and_evaluate(tiny_config(num_epochs=1), str(tmp_path))
  before = workdir_bytes(tmp_path)
  assert 'config.json' in before
  other = tiny_config(num_epochs=2)
  other.model.depth = 14
  with pytest.raises(checkpoints.CheckpointMismatchError,
                     match='depth: checkpoint 8, command 14'):
    train.train_and_evaluate(other, str(tmp_path))
  assert workdir_bytes(tmp_path) == before
  other = tiny_config(num_epochs=2)
  other.model.block = 'preact'
  with pytest.raises(checkpoints.CheckpointMismatchError, match='block'):
    train.evaluate(other, str(tmp_path))
  other = tiny_config(num_epochs=2, batch_size=8)
  with pytest.raises(checkpoints.CheckpointMismatchError,
                     match='steps per epoch'):
    train.train_and_evaluate(other, str(tmp_path))
  other = tiny_config(num_epochs=2)
  other.optimizer.name = 'adam'
  with pytest.raises(checkpoints.CheckpointMismatchError,
                     match="optimizer: checkpoint 'sgd', command 'adam'"):
    train.train_and_evaluate(other, str(tmp_path))
  other = tiny_config(num_epochs=2)
  other.model.block = 'resnext'
  other.model.block_kwargs.cardinality = 2
  with pytest.raises(checkpoints.CheckpointMismatchError,
                     match="block_kwargs: checkpoint {}, command"):
    train.train_and_evaluate(other, str(tmp_path))
  assert workdir_bytes(tmp_path) == before


def test_corrupted_latest_falls_back_to_previous(mock_cifar, tmp_path,
                                                 caplog):
  del mock_cifar
  config = tiny_config(num_epochs=2)
  train.train_and_evaluate(config, str(tmp_path))
  latest = tmp_path / checkpoints.CHECKPOINT_DIR / '4' / 'state'
  for root, _, files in os.walk(latest):
    for name in files:
      with open(os.path.join(root, name), 'wb') as f:
        f.write(b'corrupt')
  config.eval_checkpoint = 'latest'
  result = train.evaluate(config, str(tmp_path))
  assert result['checkpoint_step'] == 2 and result['checkpoint_epoch'] == 1
  assert 'unreadable' in caplog.text


@pytest.fixture
def tfds_mock_cifar():
  """TFDS's own mock data (40 examples), which the legacy workdir was
  trained and evaluated on."""
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  with tfds.testing.mock_data(num_examples=40):
    yield


class TestLegacyWorkdir:
  """A workdir written before this layout evaluates and resumes as it was."""

  def config(self, **overrides):
    # The command that wrote it (tests/data/legacy_workdir/README.md).
    return tiny_config(**{'num_epochs': 2, 'seed': 6,
                          'checkpoints_to_keep': 1, **overrides})

  def test_evaluates_unchanged(self, tfds_mock_cifar, tmp_path):
    del tfds_mock_cifar
    workdir = shutil.copytree(LEGACY_WORKDIR, tmp_path / 'legacy')
    before = workdir_bytes(workdir)
    history = metric_logging.read_metrics(str(workdir))
    best = train.evaluate(self.config(), str(workdir))
    assert (best['checkpoint_step'], best['test_accuracy']) == (
        history[0]['step'], history[0]['test_accuracy'])
    latest = train.evaluate(self.config(eval_checkpoint='latest'),
                            str(workdir))
    assert (latest['checkpoint_step'], latest['test_accuracy']) == (
        history[1]['step'], history[1]['test_accuracy'])
    assert latest['test_loss'] == pytest.approx(history[1]['test_loss'],
                                                rel=1e-6)
    assert workdir_bytes(workdir) == before

  def test_resumes(self, tfds_mock_cifar, tmp_path):
    del tfds_mock_cifar
    workdir = str(shutil.copytree(LEGACY_WORKDIR, tmp_path / 'legacy'))
    train.train_and_evaluate(self.config(num_epochs=3), workdir)
    history = records(workdir)
    assert [r['epoch'] for r in history] == [1, 2, 3]
    best = max(history, key=lambda r: (r['test_accuracy'], r['epoch']))
    result = train.evaluate(self.config(num_epochs=3), workdir)
    assert (result['checkpoint_step'], result['test_accuracy']) == (
        best['step'], best['test_accuracy'])

  def test_other_setting_is_refused_with_the_differences(self, tfds_mock_cifar,
                                                         tmp_path):
    del tfds_mock_cifar
    workdir = str(shutil.copytree(LEGACY_WORKDIR, tmp_path / 'legacy'))
    with pytest.raises(checkpoints.CheckpointMismatchError,
                       match="block: checkpoint 'basic', command 'preact'"):
      train.evaluate(self.config(**{'model.block': 'preact'}), workdir)


def test_leftovers_of_a_failed_read_stay_quiet(caplog):
  """After a failed restore (reported in one line), asyncio's report of
  Orbax's unretrieved failed reads is dropped; other asyncio errors print."""
  checkpoints._drop_leftovers_of_failed_reads()
  asyncio_logger = logging.getLogger('asyncio')
  asyncio_logger.error(
      'Task exception was never retrieved\nfuture: <Task finished '
      "name='Task-112' coro=<async_deserialize() done, defined at "
      '.../serialization.py:394> exception=ValueError(...)>')
  asyncio_logger.error('Task exception was never retrieved\nfuture: <Task '
                       "finished name='Task-7' coro=<mine() done>>")
  messages = [r.getMessage() for r in caplog.records]
  assert len(messages) == 1 and 'coro=<mine()' in messages[0]
