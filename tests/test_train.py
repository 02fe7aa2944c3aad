"""Training loop: schedule, optimiser, evaluation, checkpoints and resume."""

import json
import os
import re

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from conftest import (MOCK_EXAMPLES, Interrupt, interrupted_at_dispatch,
                      records, tiny_config)
from jax_resnet import checkpoints
from jax_resnet import errors
from jax_resnet import input_pipeline
from jax_resnet import metric_logging
from jax_resnet import optimizers
from jax_resnet import schedules
from jax_resnet import train
from jax_resnet import validation


def restore_latest(config, workdir):
  model = train.resolve_model(config)
  trainer = train.Trainer(config, model, *train.load_data(config))
  ckpt = checkpoints.Checkpointer(workdir, read_only=True)
  try:
    return ckpt.restore('latest', trainer.abstract_state(),
                        train.checkpoint_fit(config, model))
  finally:
    ckpt.close()


class TestSchedule:
  """Cosine annealing, per epoch or per step, with optional warmup."""

  def test_per_epoch_cosine_matches_pytorch_formula(self):
    config = tiny_config(num_epochs=10)
    lr = schedules.learning_rate_fn(config, steps_per_epoch=7)
    for epoch in range(10):
      expected = 0.05 * (1 + np.cos(np.pi * epoch / 10))
      for step in (epoch * 7, epoch * 7 + 6):  # Constant within the epoch.
        assert float(lr(step)) == pytest.approx(expected, abs=1e-7)

  def test_per_step_cosine(self):
    config = tiny_config(num_epochs=4)
    config.optimizer.schedule_granularity = 'step'
    lr = schedules.learning_rate_fn(config, steps_per_epoch=10)
    assert float(lr(0)) == pytest.approx(0.1)
    assert float(lr(5)) == pytest.approx(0.05 * (1 + np.cos(np.pi * 5 / 40)))
    assert float(lr(40)) == pytest.approx(0.0, abs=1e-8)

  def test_warmup_then_cosine(self):
    config = tiny_config(num_epochs=12)
    config.optimizer.warmup_epochs = 2
    lr = schedules.learning_rate_fn(config, steps_per_epoch=5)
    assert [float(lr(s)) for s in (0, 5, 10)] == pytest.approx(
        [0.05, 0.1, 0.1])
    assert float(lr(15)) == pytest.approx(0.05 * (1 + np.cos(np.pi / 10)))


@pytest.mark.parametrize('nesterov', [False, True])
def test_sgd_is_pytorch_sgd_with_l2_before_momentum(nesterov):
  config = tiny_config(num_epochs=3)
  config.optimizer.nesterov = nesterov
  tx = optimizers.create_optimizer(config, steps_per_epoch=1)
  rng = np.random.default_rng(0)
  params = {'w': rng.normal(size=(3, 3)).astype(np.float32)}
  grads = [{'w': rng.normal(size=(3, 3)).astype(np.float32)} for _ in range(3)]
  state = tx.init(params)
  p, buf = params['w'].astype(np.float64), None
  for step, g in enumerate(grads):
    updates, state = tx.update(g, state, params)
    params = optax.apply_updates(params, updates)
    # torch.optim.SGD(lr, momentum=0.9, weight_decay=5e-4, nesterov):
    d = g['w'] + 5e-4 * p
    buf = d if buf is None else 0.9 * buf + d
    lr = 0.05 * (1 + np.cos(np.pi * step / 3))
    p = p - lr * (d + 0.9 * buf if nesterov else buf)
    np.testing.assert_allclose(params['w'], p, rtol=1e-5)


@pytest.mark.parametrize('fields,message', [
    (dict(name='rmsprop'),
     "Unknown optimizer.name 'rmsprop'; valid: sgd, adam, adamw."),
    (dict(schedule='linear'),
     'valid: cosine, multistep, cosine_restarts, constant.'),
    (dict(name='adam', nesterov=True), 'nesterov applies to sgd only'),
    (dict(schedule='multistep', milestones=(20, 10)),
     'milestones must be increasing epochs from 1; got [20, 10]'),
    (dict(schedule='multistep', milestones=(1,), gamma=0.0),
     'gamma must be in (0, 1]'),
    (dict(schedule='cosine_restarts', restart_period=0),
     'restart_period must be at least 1'),
    (dict(betas=(0.9, 1.0)), 'betas must be two numbers in [0, 1)'),
])
def test_optimizer_settings_are_checked(fields, message):
  config = tiny_config()
  config.optimizer.update(fields)
  with pytest.raises(errors.ConfigError, match=re.escape(message)):
    validation.validate_config(config)


def test_multistep_defaults_to_he_et_al():
  """lr 0.1, divided by 10 at 50% and 75% of training."""
  config = tiny_config(num_epochs=200)
  config.optimizer.schedule = 'multistep'
  lr = schedules.learning_rate_fn(config, steps_per_epoch=391)
  rates = [float(lr(e * 391)) for e in (0, 99, 100, 149, 150, 199)]
  np.testing.assert_allclose(rates, [0.1, 0.1, 0.01, 0.01, 0.001, 0.001],
                             rtol=1e-6)


def test_weight_decay_on_kernels_only():
  config = tiny_config()
  config.optimizer.weight_decay_on = 'conv_dense'
  config.optimizer.momentum = 0.0
  tx = optimizers.create_optimizer(config, steps_per_epoch=1)
  params = {'kernel': jnp.ones((2, 2)), 'bias': jnp.ones((2,))}
  zeros = jax.tree.map(jnp.zeros_like, params)
  updates, _ = tx.update(zeros, tx.init(params), params)
  assert float(jnp.abs(updates['bias']).sum()) == 0.0
  np.testing.assert_allclose(updates['kernel'], -0.1 * 5e-4, rtol=1e-6)


def test_evaluation_covers_a_partial_last_batch(mock_cifar):
  del mock_cifar
  config = tiny_config(eval_batch_size=16)  # 40 = 16 + 16 + 8 (padded).
  _, test_split, _ = train.load_data(config, train=False)
  trainer = train.Trainer(config, train.resolve_model(config), None,
                          test_split)
  assert trainer.eval_sets['test'].num_batches == 3
  state = trainer.init_state()
  result = trainer.evaluate(state)
  mean, std = input_pipeline.normalization_stats('dataset', 'cifar10')
  images = input_pipeline.normalize(jnp.asarray(test_split.images), mean, std)
  logits = trainer.model.apply(
      {'params': state.params, 'batch_stats': state.batch_stats}, images)
  labels = test_split.labels
  expected_acc = 100.0 * np.mean(np.argmax(logits, -1) == labels)
  expected_loss = float(train.cross_entropy(logits, labels, 10).mean())
  assert result['test_accuracy'] == pytest.approx(expected_acc)
  assert result['test_loss'] == pytest.approx(expected_loss, rel=1e-5)
  assert MOCK_EXAMPLES % 16 != 0


@pytest.mark.parametrize('dataset', ['cifar10', 'cifar100'])
def test_training_writes_metrics_and_checkpoints(mock_cifar, tmp_path,
                                                 dataset):
  del mock_cifar
  config = tiny_config(dataset)
  final = train.train_and_evaluate(config, str(tmp_path))
  history = metric_logging.read_metrics(str(tmp_path))
  assert [r['epoch'] for r in history] == [1, 2]
  assert [r['step'] for r in history] == [2, 4]  # 40 // 16 = 2 steps.
  for r in history:
    assert set(r) == set(metric_logging.EPOCH_KEYS)
    assert all(np.isfinite(v) for v in r.values())
    assert 0 <= r['test_accuracy'] <= 100
  assert history[1]['best_test_accuracy'] == max(
      r['test_accuracy'] for r in history)
  assert history[0]['learning_rate'] == pytest.approx(0.1)
  assert history[1]['learning_rate'] == pytest.approx(0.05)
  assert final['final_test_accuracy'] == history[-1]['test_accuracy']
  ckpt = checkpoints.Checkpointer(str(tmp_path), read_only=True)
  assert ckpt.steps() == [2, 4]
  ckpt.close()
  assert any(f.startswith('events.out.tfevents') for f in os.listdir(tmp_path))
  with open(tmp_path / 'config.json') as f:
    assert json.load(f)['dataset'] == dataset


# A recipe whose every part draws random numbers or keeps state: EMA and SWA
# in the train state, RandAugment, Cutout and Mixup/CutMix in the step, SAM's
# two passes.
RECIPE = {'ema_decay': 0.9, 'swa_start_epoch': 2, 'data.mixup_alpha': 0.2,
          'data.cutmix_alpha': 1.0, 'data.cutout': 8,
          'data.policy': 'randaugment', 'optimizer.sam_rho': 0.05}


# The plain run stops in epoch 2; the recipe in epoch 3, so that the
# checkpoint it resumes from holds a non-empty SWA.
# The plain run is mixed precision (model.dtype=bfloat16), so that both
# dtypes resume bitwise; the recipe is float32.
@pytest.mark.parametrize('recipe,stop', [({'model.dtype': 'bfloat16'}, 4),
                                         (RECIPE, 6)],
                         ids=['plain_bfloat16', 'recipe'])
def test_resume_after_interruption_equals_uninterrupted(mock_cifar, tmp_path,
                                                        monkeypatch, recipe,
                                                        stop):
  del mock_cifar
  config = tiny_config(num_epochs=3, **recipe)
  config.model.block = 'stochastic_depth'  # RNG-dependent training too.
  full_dir, resumed_dir = str(tmp_path / 'full'), str(tmp_path / 'resumed')
  train.train_and_evaluate(config, full_dir)

  with interrupted_at_dispatch(monkeypatch, stop) as calls:
    with pytest.raises(Interrupt):  # The second step of an epoch.
      train.train_and_evaluate(config, resumed_dir)
  assert calls['n'] == stop
  assert len(metric_logging.read_metrics(resumed_dir)) == stop // 2 - 1
  train.train_and_evaluate(config, resumed_dir)

  assert records(full_dir) == records(resumed_dir)
  full_state, _ = restore_latest(config, full_dir)
  resumed_state, _ = restore_latest(config, resumed_dir)
  for a, b in zip(jax.tree.leaves(full_state), jax.tree.leaves(resumed_state)):
    np.testing.assert_array_equal(a, b)  # Bitwise.


# An infinite learning rate from step 3 (epoch 2's first, 2 steps an epoch):
# step 4's loss is NaN. With 4 steps per dispatch and 5 steps an epoch (batch
# 8), from step 7: step 8 is third in epoch 2's first dispatch.
@pytest.mark.parametrize('batch,dispatch,inf_from,message,steps', [
    (16, 1, 2, r'at epoch 2, step 4 \(step 2 of the epoch\)', 2),
    (8, 4, 6, r'at epoch 2, step 8 \(step 3 of the epoch\)', 5)],
                         ids=['one_step', 'inside_a_dispatch'])
def test_nan_loss_stops_with_epoch_and_step(mock_cifar, tmp_path,
                                            monkeypatch, batch, dispatch,
                                            inf_from, message, steps):
  del mock_cifar
  schedule = schedules.learning_rate_fn

  def exploding(config, steps_per_epoch):
    base = schedule(config, steps_per_epoch)
    return lambda step: jnp.where(step >= inf_from, jnp.inf, base(step))

  monkeypatch.setattr(schedules, 'learning_rate_fn', exploding)
  config = tiny_config(num_epochs=2, batch_size=batch,
                       steps_per_dispatch=dispatch)
  with pytest.raises(train.NonFiniteLossError, match=message):
    train.train_and_evaluate(config, str(tmp_path))
  assert len(metric_logging.read_metrics(str(tmp_path))) == 1
  state, meta = restore_latest(config, str(tmp_path))
  assert meta['epoch'] == 1 and int(state.step) == steps
  assert all(bool(jnp.all(jnp.isfinite(x))) for x in jax.tree.leaves(state))
