"""EMA (and its evaluation, checkpoints and selection)."""

import functools
import jax
import numpy as np
import pytest

from conftest import TINY, records, run_main, tiny_config
from jax_resnet import errors
from jax_resnet import train
from jax_resnet import weight_averaging


def test_ema_arithmetic():
  ema = {'params': {'w': np.float32([1.0, 2.0])},
         'batch_stats': {'mean': np.float32([0.0])}}
  new = {'params': {'w': np.float32([3.0, 0.0])},
         'batch_stats': {'mean': np.float32([10.0])}}
  out = weight_averaging.ema_update(ema, new, 0.75)
  np.testing.assert_allclose(out['params']['w'], [1.5, 1.5])
  np.testing.assert_allclose(out['batch_stats']['mean'], [2.5])


def test_ema_in_the_train_step_follows_every_step():
  config = tiny_config(ema_decay=0.9)
  model = train.validated_model(config)
  state = train.create_train_state(config, model.module, 10)
  assert isinstance(state, train.AveragingTrainState)
  initial = jax.tree.map(np.asarray, state.variables())
  for a, b in zip(jax.tree.leaves(initial),
                  jax.tree.leaves(state.variables('ema'))):
    np.testing.assert_array_equal(a, b)
  rng = np.random.default_rng(0)
  batch = {'image': rng.integers(0, 256, (16, 32, 32, 3), np.uint8),
           'label': rng.integers(0, 10, (16,), np.int32)}
  step = jax.jit(functools.partial(train.train_step,
                                   cfg=train.step_config(config)))
  expected = initial
  for _ in range(2):
    state, _ = step(state, batch)
    expected = jax.tree.map(lambda e, v: 0.9 * e + 0.1 * np.asarray(v),
                            expected, state.variables())
  for a, b in zip(jax.tree.leaves(expected),
                  jax.tree.leaves(state.variables('ema'))):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
  # Without ema_decay the state is the plain one.
  plain = train.create_train_state(tiny_config(), model.module, 10)
  assert type(plain) is train.TrainState and not plain.kept_averages()
  with pytest.raises(ValueError, match="no 'ema' weights"):
    plain.variables('ema')


def test_ema_is_evaluated_checkpointed_and_selectable(tmp_path, mock_cifar):
  """The log holds both accuracies; eval_weights='ema' picks the best
  checkpoint on the EMA's accuracy and evaluates the EMA."""
  del mock_cifar
  workdir = str(tmp_path / 'ema')
  config = tiny_config(num_epochs=3, ema_decay=0.5, eval_weights='ema')
  train.train_and_evaluate(config, workdir)
  history = records(workdir)
  for r in history:
    assert 0 <= r['ema_test_accuracy'] <= 100 and 'ema_test_loss' in r
  assert history[-1]['best_ema_test_accuracy'] == max(
      r['ema_test_accuracy'] for r in history)
  best = max(history, key=lambda r: (r['ema_test_accuracy'], r['epoch']))
  result = train.evaluate(config, workdir)
  assert result['weights'] == 'ema'
  assert result['checkpoint_epoch'] == best['epoch']
  assert result['test_accuracy'] == pytest.approx(best['ema_test_accuracy'])
  assert result['test_loss'] == pytest.approx(best['ema_test_loss'],
                                              rel=1e-6)
  raw = train.evaluate(tiny_config(num_epochs=3, ema_decay=0.5,
                                   eval_checkpoint='latest'), workdir)
  assert raw['weights'] == 'raw'
  assert raw['test_accuracy'] == pytest.approx(history[-1]['test_accuracy'])


def test_ema_settings_are_checked(tmp_path, mock_cifar):
  del mock_cifar
  with pytest.raises(errors.ConfigError, match='ema_decay must be in'):
    train.validated_model(tiny_config(ema_decay=1.0))
  with pytest.raises(errors.ConfigError, match="eval_weights='ema' needs"):
    train.validated_model(tiny_config(eval_weights='ema'))
  # A workdir trained without an EMA cannot continue with one.
  workdir = str(tmp_path / 'plain')
  train.train_and_evaluate(tiny_config(num_epochs=1), workdir)
  result = run_main(TINY + ['--config.model.depth=8', f'--workdir={workdir}',
                           '--config.num_epochs=2', '--config.ema_decay=0.9'],
                    check=False)
  assert result.returncode != 0
  assert 'ema: checkpoint None, command True' in result.stderr
