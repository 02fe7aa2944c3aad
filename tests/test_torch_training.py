"""The train step, the optimisers and the learning-rate schedules against
torch.optim and torch.optim.lr_scheduler.

The SGD comparison runs on ResNet-8. Compiled the way these tests compile
(conftest's ``jax_disable_most_optimizations`` plus the project's XLA CPU
flags), the train step of ResNet-14 and deeper has ~1e-3 relative error in
its first-stage gradients; compiled the way training compiles, ResNet-14
matches PyTorch to 3e-7 after three steps.
"""

import functools

import jax
import numpy as np
import optax
import pytest

torch = pytest.importorskip('torch')

# pylint: disable=g-import-not-at-top,wrong-import-position
from conftest import tiny_config
from jax_resnet import input_pipeline
from jax_resnet import optimizers
from jax_resnet import schedules
from jax_resnet import train
from jax_resnet.interop import torch_import
from torch_cases import (BATCH, leaves_named, make_pair, max_abs_diff,
                         max_rel_diff, report, to_torch)


@pytest.mark.parametrize('nesterov', [False, True])
def test_three_sgd_steps_match_torch_sgd(nesterov):
  """train_step (the optimiser, the schedule) vs torch.optim.SGD."""
  num_steps = 3
  # ResNet-8: see the module docstring on the precision of deeper networks
  # under the tests' jax_disable_most_optimizations.
  config, model, reference, variables = make_pair('basic', depth=8)
  config.num_epochs = num_steps
  config.optimizer.nesterov = nesterov
  config.data.crop_padding = 0  # No augmentation: both see the same batch.
  config.data.random_flip = False
  # The imported weights; the key is unused without augmentation or
  # stochastic depth.
  state = train.TrainState.create(
      apply_fn=model.apply, params=variables['params'],
      batch_stats=variables['batch_stats'],
      tx=optimizers.create_optimizer(config, steps_per_epoch=1),
      rng=jax.random.PRNGKey(0))
  step = jax.jit(functools.partial(train.train_step,
                                   cfg=train.step_config(config)))

  reference.train()
  optimizer = torch.optim.SGD(reference.parameters(), lr=0.1, momentum=0.9,
                              weight_decay=5e-4, nesterov=nesterov)
  # One step per "epoch", so the cosine schedule changes at every step.
  scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer,
                                                         T_max=num_steps)
  mean, std = input_pipeline.normalization_stats('dataset', 'cifar10')
  rng = np.random.default_rng(2)
  for _ in range(num_steps):
    images = rng.integers(0, 256, (BATCH, 32, 32, 3), dtype=np.uint8)
    labels = rng.integers(0, 10, (BATCH,)).astype(np.int32)
    state, _ = step(state, {'image': images, 'label': labels})
    optimizer.zero_grad()
    normalized = (images.astype(np.float32) - mean) / std
    loss = torch.nn.functional.cross_entropy(
        reference(to_torch(normalized)), torch.from_numpy(labels).long())
    loss.backward()
    optimizer.step()
    scheduler.step()

  expected = torch_import.torch_to_flax(reference.state_dict(), model)
  diff = max_rel_diff(state.params, expected['params'])
  report(f'params after {num_steps} SGD steps (nesterov={nesterov}), '
         'max rel diff', diff)
  assert diff < 1e-5
  moved = max_rel_diff(variables['params'], expected['params'])
  assert moved > 1e-3  # The steps did change the parameters.
  mean_diff = max_abs_diff(dict(leaves_named(state.batch_stats, 'mean')),
                           dict(leaves_named(expected['batch_stats'],
                                              'mean')))
  report('BN running_mean after the steps, max abs diff', mean_diff)
  assert mean_diff < 1e-5


def test_per_step_schedule_matches_cosine_annealing_per_step():
  num_epochs, steps_per_epoch = 4, 5
  config = tiny_config(num_epochs=num_epochs)
  config.optimizer.schedule_granularity = 'step'
  schedule = jax.jit(schedules.learning_rate_fn(config, steps_per_epoch))
  optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)
  scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(
      optimizer, T_max=num_epochs * steps_per_epoch)
  diff = 0.0
  for s in range(num_epochs * steps_per_epoch):
    diff = max(diff, abs(float(schedule(s)) -
                         optimizer.param_groups[0]['lr']))
    optimizer.step()
    scheduler.step()
  report('per-step learning rate vs torch, max abs diff', diff)
  assert diff < 1e-6


def torch_rates(scheduler_fn, num_epochs, warmup_epochs=0, base=0.1):
  """The rate of each epoch under ``scheduler_fn(optimizer)``, after a
  LinearLR warmup as SequentialLR chains them, stepped once per epoch."""
  optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=base)
  scheduler = scheduler_fn(optimizer)
  if warmup_epochs:
    warmup = torch.optim.lr_scheduler.LinearLR(
        optimizer, start_factor=1.0 / warmup_epochs, end_factor=1.0,
        total_iters=warmup_epochs - 1)
    scheduler = torch.optim.lr_scheduler.SequentialLR(
        optimizer, [warmup, scheduler], milestones=[warmup_epochs])
  rates = []
  for _ in range(num_epochs):
    rates.append(optimizer.param_groups[0]['lr'])
    optimizer.step()
    scheduler.step()
  return np.asarray(rates)


@pytest.mark.parametrize('schedule,warmup,fields,reference', [
    *[('cosine', w, {}, lambda o, w=w: torch.optim.lr_scheduler
       .CosineAnnealingLR(o, T_max=30 - w)) for w in (0, 1, 5)],
    ('multistep', 0, {}, lambda o: torch.optim.lr_scheduler.MultiStepLR(
        o, milestones=[15, 22], gamma=0.1)),
    ('multistep', 3, dict(milestones=(10, 20), gamma=0.2),
     # SequentialLR restarts the scheduler's epochs after the warmup.
     lambda o: torch.optim.lr_scheduler.MultiStepLR(
         o, milestones=[7, 17], gamma=0.2)),
    ('cosine_restarts', 0, dict(restart_period=5, restart_mult=1),
     lambda o: torch.optim.lr_scheduler.CosineAnnealingWarmRestarts(
         o, T_0=5, T_mult=1)),
    ('cosine_restarts', 2, dict(restart_period=3, restart_mult=2),
     lambda o: torch.optim.lr_scheduler.CosineAnnealingWarmRestarts(
         o, T_0=3, T_mult=2)),
    ('constant', 4, {}, lambda o: torch.optim.lr_scheduler.ConstantLR(
        o, factor=1.0)),
])
def test_schedules_match_torch_schedulers(schedule, warmup, fields,
                                          reference):
  num_epochs, steps_per_epoch = 30, 7
  config = tiny_config(num_epochs=num_epochs)
  config.optimizer.schedule = schedule
  config.optimizer.warmup_epochs = warmup
  for key, value in fields.items():
    config.optimizer[key] = value
  rate = jax.jit(schedules.learning_rate_fn(config, steps_per_epoch))
  expected = torch_rates(reference, num_epochs, warmup)
  for offset in (0, steps_per_epoch - 1):  # First and last step of an epoch.
    ours = np.asarray([float(rate(e * steps_per_epoch + offset))
                       for e in range(num_epochs)])
    np.testing.assert_allclose(ours, expected, atol=1e-7)
  report(f'{schedule} (warmup {warmup}) vs torch, max abs diff',
         float(np.max(np.abs(ours - expected))))


@pytest.mark.parametrize('name,torch_optimizer', [
    ('adam', torch.optim.Adam), ('adamw', torch.optim.AdamW)])
def test_adam_steps_match_torch(name, torch_optimizer):
  """Five steps on a cosine schedule, weight decay large enough to matter."""
  num_steps = 5
  config = tiny_config(num_epochs=num_steps)
  config.optimizer.update(name=name, learning_rate=0.01, weight_decay=0.1,
                          betas=(0.8, 0.99), eps=1e-6)
  tx = optimizers.create_optimizer(config, steps_per_epoch=1)
  rng = np.random.default_rng(0)
  start = rng.normal(size=(4, 3)).astype(np.float32)
  params, state = {'w': start}, tx.init({'w': start})
  weight = torch.nn.Parameter(torch.from_numpy(start.copy()))
  optimizer = torch_optimizer([weight], lr=0.01, betas=(0.8, 0.99), eps=1e-6,
                              weight_decay=0.1)
  scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer,
                                                         T_max=num_steps)
  for _ in range(num_steps):
    grad = rng.normal(size=(4, 3)).astype(np.float32)
    updates, state = tx.update({'w': grad}, state, params)
    params = optax.apply_updates(params, updates)
    weight.grad = torch.from_numpy(grad.copy())
    optimizer.step()
    scheduler.step()
  expected = weight.detach().numpy()
  diff = max_rel_diff(params['w'], expected)
  report(f'{name}: parameters after {num_steps} steps, max rel diff', diff)
  assert diff < 1e-5
  assert max_rel_diff(start, expected) > 1e-2  # The steps moved them.
