"""Learning-rate schedules, stepped per epoch (as the CIFAR recipes step
PyTorch's schedulers) or per step.

After an optional linear warmup every schedule is ``base * factor(epoch)``.
With granularity 'epoch' the epoch is a whole number, so the rate is constant
within an epoch and equals the PyTorch scheduler below, stepped once per
epoch, at every epoch (``tests/test_torch_training.py`` checks each):

- 'cosine': CosineAnnealingLR(T_max=num_epochs - warmup_epochs).
- 'multistep': MultiStepLR(milestones, gamma); the milestones are epochs of
  the whole run, by default He et al.'s 50% and 75% of training.
- 'cosine_restarts': CosineAnnealingWarmRestarts(T_0=restart_period,
  T_mult=restart_mult), Loshchilov & Hutter's SGDR.
- 'constant': the base rate.

Warmup epoch e (0-based) of w uses base * (e + 1) / w (LinearLR from 1/w,
stepped per epoch, then SequentialLR into the schedule); the schedule's own
epochs count from the end of warmup, except multistep's milestones.
"""

from typing import Callable

import jax
import jax.numpy as jnp
import ml_collections

SCHEDULES = ('cosine', 'multistep', 'cosine_restarts', 'constant')
GRANULARITIES = ('epoch', 'step')


def milestones(config: ml_collections.ConfigDict) -> tuple[int, ...]:
  """``optimizer.milestones``, or 50% and 75% of ``num_epochs`` if empty."""
  if config.optimizer.milestones:
    return tuple(config.optimizer.milestones)
  return (config.num_epochs // 2, config.num_epochs * 3 // 4)


def cosine_restarts_factor(epoch: jax.Array, period: float,
                           mult: float) -> jax.Array:
  """SGDR: cosine from 1 to 0 over cycles of ``period * mult**i`` epochs."""
  if mult == 1:
    start = jnp.floor(epoch / period) * period
    length = period
  else:
    # Cycle i starts at period * (mult**i - 1) / (mult - 1); the small
    # offset keeps an epoch that starts a cycle from rounding into the last.
    cycle = jnp.floor(jnp.log(epoch / period * (mult - 1) + 1) /
                      jnp.log(mult) + 1e-6)
    start = period * (mult ** cycle - 1) / (mult - 1)
    length = period * mult ** cycle
  return 0.5 * (1.0 + jnp.cos(jnp.pi * (epoch - start) / length))


def _factor(config: ml_collections.ConfigDict
            ) -> Callable[[jax.Array], jax.Array]:
  """The schedule's multiplier of the base rate by epoch after warmup."""
  opt = config.optimizer
  warmup = opt.warmup_epochs
  if opt.schedule == 'cosine':
    decay_epochs = config.num_epochs - warmup
    return lambda e: 0.5 * (1.0 + jnp.cos(jnp.pi * jnp.clip(
        e / decay_epochs, 0, 1)))
  if opt.schedule == 'multistep':
    steps = jnp.asarray(milestones(config), jnp.float32)
    # Milestones count from the start of the run.
    return lambda e: opt.gamma ** jnp.sum(e + warmup >= steps)
  if opt.schedule == 'cosine_restarts':
    return lambda e: cosine_restarts_factor(e, opt.restart_period,
                                            opt.restart_mult)
  return lambda e: jnp.ones_like(e)


def learning_rate_fn(config: ml_collections.ConfigDict,
                     steps_per_epoch: int) -> Callable[[jax.Array], jax.Array]:
  """The rate at a step (a jnp function, traceable inside the train step)."""
  opt = config.optimizer
  base, warmup = opt.learning_rate, opt.warmup_epochs
  per_epoch = opt.schedule_granularity == 'epoch'
  factor = _factor(config)

  def schedule(step):
    epoch = jnp.asarray(step, jnp.float32) / steps_per_epoch
    if per_epoch:
      epoch = jnp.floor(epoch)
    warm = base * (epoch + 1 if per_epoch else epoch) / max(warmup, 1)
    rate = jnp.where(epoch < warmup, warm,
                     base * factor(jnp.maximum(epoch - warmup, 0.0)))
    if config.swa_start_epoch:
      # SWA: the constant swa_learning_rate from epoch swa_start_epoch
      # (1-based) on.
      swa = jnp.floor(jnp.asarray(step, jnp.float32) / steps_per_epoch
                      ) >= config.swa_start_epoch - 1
      rate = jnp.where(swa, config.swa_learning_rate, rate)
    return rate

  return schedule
