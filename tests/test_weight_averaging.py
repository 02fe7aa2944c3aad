"""EMA (and its evaluation, checkpoints and selection)."""

import functools
import jax
import numpy as np
import pytest

from conftest import TINY, records, run_main, tiny_config
from jax_resnet import checkpoints
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


def test_swa_running_mean():
  swa = weight_averaging.swa_init({'params': {'w': np.zeros(2, np.float32)},
                                   'batch_stats': {}})
  seen = [np.float32([1.0, 2.0]), np.float32([3.0, -2.0]),
          np.float32([5.0, 3.0])]
  for params in seen:
    swa = weight_averaging.swa_update(swa, {'w': params})
  assert int(swa['count']) == 3
  np.testing.assert_allclose(swa['params']['w'], np.mean(seen, 0), rtol=1e-6)


def test_swa_training_rate_average_and_bn_recompute(mock_cifar, tmp_path):
  """SWA from epoch 2 of 3: the rate, the count, the BatchNorm statistics
  recomputed for the averaged weights, the evaluation and the selection."""
  del mock_cifar
  config = tiny_config(num_epochs=3, swa_start_epoch=2,
                       swa_learning_rate=0.02, eval_weights='swa')
  workdir = str(tmp_path / 'swa')
  train.train_and_evaluate(config, workdir)
  history = records(workdir)
  assert 'swa_test_accuracy' not in history[0]
  assert [r['learning_rate'] for r in history] == pytest.approx(
      [0.1, 0.02, 0.02])
  for r in history[1:]:
    assert 0 <= r['swa_test_accuracy'] <= 100
  chosen = max(history[1:], key=lambda r: (r['swa_test_accuracy'],
                                           r['epoch']))
  assert history[-1]['selected_test_accuracy'] == chosen['swa_test_accuracy']
  result = train.evaluate(config, workdir)
  assert (result['weights'], result['checkpoint_epoch']) == ('swa',
                                                             chosen['epoch'])
  assert result['test_accuracy'] == pytest.approx(chosen['swa_test_accuracy'])

  # The recomputed statistics of the first BatchNorm (after the stem
  # convolution) are the mean over training batches of each batch's channel
  # mean and (biased) variance, in data order, without augmentation.
  model = train.resolve_model(config)
  splits = train.load_data(config)
  trainer = train.Trainer(config, model, *splits)
  from jax_resnet import checkpoints  # pylint: disable=g-import-not-at-top
  ckpt = checkpoints.Checkpointer(workdir, read_only=True)
  state, _ = ckpt.restore('latest', trainer.abstract_state(),
                          train.checkpoint_fit(config, model))
  ckpt.close()
  swa = state.averages['swa']
  assert int(swa['count']) == 2
  cfg = trainer.step_cfg
  kernel = np.asarray(swa['params']['stem_conv']['kernel'])
  means, variances = [], []
  for i in range(trainer.steps_per_epoch):
    images = splits.train.images[i * 16:(i + 1) * 16]
    x = (images.astype(np.float32) - np.asarray(cfg.mean)) / np.asarray(
        cfg.std)
    y = np.asarray(jax.lax.conv_general_dilated(
        x, kernel, (1, 1), 'SAME', dimension_numbers=('NHWC', 'HWIO',
                                                      'NHWC')))
    means.append(y.mean((0, 1, 2)))
    variances.append(y.var((0, 1, 2)))
  np.testing.assert_allclose(swa['batch_stats']['stem_bn']['mean'],
                             np.mean(means, 0), rtol=1e-3, atol=1e-4)
  np.testing.assert_allclose(swa['batch_stats']['stem_bn']['var'],
                             np.mean(variances, 0), rtol=1e-3, atol=1e-4)


def test_swa_settings_are_checked():
  with pytest.raises(errors.ConfigError, match='swa_start_epoch must be in'):
    train.validated_model(tiny_config(swa_start_epoch=3))
  with pytest.raises(errors.ConfigError, match="eval_weights='swa' needs"):
    train.validated_model(tiny_config(eval_weights='swa'))


def test_resume_refuses_another_selection(mock_cifar, tmp_path):
  """Checkpoints ranked by the raw accuracy are not continued with the EMA's
  ranking: one best checkpoint would mix the two."""
  del mock_cifar
  workdir = str(tmp_path / 'ema_raw')
  train.train_and_evaluate(tiny_config(num_epochs=1, ema_decay=0.9), workdir)
  with pytest.raises(checkpoints.CheckpointMismatchError,
                     match='ranked by test_accuracy; this command ranks by '
                     'ema_test_accuracy'):
    train.train_and_evaluate(
        tiny_config(num_epochs=2, ema_decay=0.9, eval_weights='ema'), workdir)
