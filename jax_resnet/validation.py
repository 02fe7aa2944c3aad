"""Config validation: once, early, with messages that say what to do."""

import jax
import ml_collections

from jax_resnet import config_overrides
from jax_resnet import errors
from jax_resnet import input_pipeline
from jax_resnet import optimizers
from jax_resnet import platforms
from jax_resnet import schedules
from jax_resnet.augment import policies

EVAL_CHECKPOINTS = ('best', 'latest')
EVAL_WEIGHTS = ('raw', 'ema', 'swa')


def _choice(value, valid, field):
  if value not in valid:
    raise errors.ConfigError(
        f'Unknown {field} {value!r}; valid: {", ".join(valid)}.')


def _at_least(value, minimum, field):
  if value < minimum:
    raise errors.ConfigError(
        f'{field} must be at least {minimum}; got {value}.')


def validate_config(config: ml_collections.ConfigDict) -> None:
  """Raises errors.ConfigError naming the field and the valid choices.

  The model fields are checked where the network is resolved
  (``registry.resolve``), once per command.
  """
  config_overrides.check_config_fields(config)
  input_pipeline.num_classes(config.dataset)
  input_pipeline.normalization_stats(config.data.normalization, config.dataset)
  _check_optimizer(config)
  _choice(config.eval_checkpoint, EVAL_CHECKPOINTS, 'eval_checkpoint')
  _choice(config.eval_weights, EVAL_WEIGHTS, 'eval_weights')
  if not 0.0 <= config.ema_decay < 1.0:
    raise errors.ConfigError(
        f'ema_decay must be in [0, 1) (0 = off); got {config.ema_decay}.')
  if config.eval_weights == 'ema' and not config.ema_decay:
    raise errors.ConfigError(
        "eval_weights='ema' needs an EMA: set ema_decay (e.g. 0.999).")
  _at_least(config.num_epochs, 1, 'num_epochs')
  if not 0 <= config.swa_start_epoch <= config.num_epochs:
    raise errors.ConfigError(
        f'swa_start_epoch must be in [0, num_epochs={config.num_epochs}] '
        f'(0 = off); got {config.swa_start_epoch}.')
  if config.swa_start_epoch:
    _at_least(config.swa_learning_rate, 0.0, 'swa_learning_rate')
  if config.eval_weights == 'swa' and not config.swa_start_epoch:
    raise errors.ConfigError(
        "eval_weights='swa' needs SWA: set swa_start_epoch.")
  _at_least(config.optimizer.warmup_epochs, 0, 'optimizer.warmup_epochs')
  if config.optimizer.warmup_epochs >= config.num_epochs:
    raise errors.ConfigError('optimizer.warmup_epochs must be below num_epochs; got '
                     f'{config.optimizer.warmup_epochs} >= '
                     f'{config.num_epochs}.')
  _at_least(config.optimizer.learning_rate, 0.0, 'optimizer.learning_rate')
  _at_least(config.optimizer.weight_decay, 0.0, 'optimizer.weight_decay')
  if not 0.0 <= config.optimizer.momentum < 1.0:
    raise errors.ConfigError('optimizer.momentum must be in [0, 1); got '
                     f'{config.optimizer.momentum}.')
  if not 0.0 <= config.optimizer.label_smoothing < 1.0:
    raise errors.ConfigError('optimizer.label_smoothing must be in [0, 1); got '
                     f'{config.optimizer.label_smoothing}.')
  _at_least(config.data.train_examples, 0, 'data.train_examples')
  if 0 < config.data.train_examples < config.batch_size:
    # Known before any data is read (the dataset's own size is checked
    # where it is loaded).
    raise errors.ConfigError(
        f'data.train_examples={config.data.train_examples} makes no batch of '
        f'batch_size={config.batch_size}; lower batch_size or raise '
        'data.train_examples.')
  if not 0.0 < config.model.bn_momentum <= 1.0:
    raise errors.ConfigError('model.bn_momentum must be in (0, 1] (PyTorch '
                             "convention: the new batch's weight); got "
                             f'{config.model.bn_momentum}.')
  _at_least(config.data.validation_examples, 0, 'data.validation_examples')
  _at_least(config.data.crop_padding, 0, 'data.crop_padding')
  _at_least(config.data.cutout, 0, 'data.cutout')
  _choice(config.data.policy, policies.POLICIES, 'data.policy')
  _at_least(config.data.randaugment_n, 0, 'data.randaugment_n')
  if not 0 <= config.data.randaugment_m <= policies.RANDAUGMENT_BINS - 1:
    raise errors.ConfigError(
        f'data.randaugment_m must be in [0, {policies.RANDAUGMENT_BINS - 1}]; '
        f'got {config.data.randaugment_m}.')
  _at_least(config.data.mixup_alpha, 0.0, 'data.mixup_alpha')
  _at_least(config.data.cutmix_alpha, 0.0, 'data.cutmix_alpha')
  if not 0.0 <= config.data.mix_switch_prob <= 1.0:
    raise errors.ConfigError('data.mix_switch_prob must be in [0, 1]; got '
                             f'{config.data.mix_switch_prob}.')
  _check_distill(config)
  _at_least(config.log_every_steps, 1, 'log_every_steps')
  platforms.steps_per_dispatch(config.steps_per_dispatch)
  pack_seeds(config)
  _at_least(config.checkpoints_to_keep, 1, 'checkpoints_to_keep')
  _at_least(config.checkpoint_every_steps, 0, 'checkpoint_every_steps')
  devices = jax.device_count()
  for field in ('batch_size', 'eval_batch_size'):
    value = config[field]
    _at_least(value, 1, field)
    if value % devices:
      raise errors.ConfigError(f'{field}={value} does not split over {devices} '
                       f'devices; use a multiple of {devices}.')


def pack_seeds(config: ml_collections.ConfigDict) -> tuple[int, ...]:
  """The seeds of ``config.pack_seeds`` ('0,1,2,3'); () when unset.

  Raises:
    errors.ConfigError: not a comma-separated list of distinct seeds.
  """
  text = str(config.pack_seeds).strip()
  if not text:
    return ()
  try:
    seeds = tuple(int(part) for part in text.split(','))
  except ValueError:
    raise errors.ConfigError(
        f'pack_seeds must list seeds, e.g. 0,1,2,3; got {text!r}.') from None
  if len(set(seeds)) != len(seeds) or min(seeds) < 0:
    raise errors.ConfigError(
        f'pack_seeds must list distinct seeds >= 0; got {text!r}.')
  return seeds


def _check_distill(config: ml_collections.ConfigDict) -> None:
  distill = config.distill
  if distill.teacher_config and not distill.teacher_workdir:
    raise errors.ConfigError(
        'distill.teacher_config needs distill.teacher_workdir, the workdir '
        "holding the teacher's checkpoints.")
  if not 0.0 <= distill.alpha <= 1.0:
    raise errors.ConfigError(
        f'distill.alpha must be in [0, 1]; got {distill.alpha}.')
  if distill.temperature <= 0:
    raise errors.ConfigError(
        f'distill.temperature must be positive; got {distill.temperature}.')


def _check_optimizer(config: ml_collections.ConfigDict) -> None:
  """The optimiser and its schedule."""
  opt = config.optimizer
  _choice(opt.name, optimizers.OPTIMIZERS, 'optimizer.name')
  _choice(opt.schedule, schedules.SCHEDULES, 'optimizer.schedule')
  _choice(opt.schedule_granularity, schedules.GRANULARITIES,
          'optimizer.schedule_granularity')
  _choice(opt.weight_decay_on, optimizers.WEIGHT_DECAY_TARGETS,
          'optimizer.weight_decay_on')
  if opt.name != 'sgd' and opt.nesterov:
    raise errors.ConfigError(
        f'optimizer.nesterov applies to sgd only; optimizer.name is '
        f'{opt.name!r}.')
  if len(opt.betas) != 2 or not all(0.0 <= b < 1.0 for b in opt.betas):
    raise errors.ConfigError(
        f'optimizer.betas must be two numbers in [0, 1); got {opt.betas}.')
  _at_least(opt.sam_rho, 0.0, 'optimizer.sam_rho')
  if opt.eps <= 0:
    raise errors.ConfigError(f'optimizer.eps must be positive; got {opt.eps}.')
  if opt.schedule == 'multistep':
    marks = schedules.milestones(config)
    if list(marks) != sorted(set(marks)) or marks[0] < 1:
      raise errors.ConfigError(
          'optimizer.milestones must be increasing epochs from 1; got '
          f'{list(marks)}.')
    if not 0.0 < opt.gamma <= 1.0:
      raise errors.ConfigError(
          f'optimizer.gamma must be in (0, 1]; got {opt.gamma}.')
  if opt.schedule == 'cosine_restarts':
    _at_least(opt.restart_period, 1, 'optimizer.restart_period')
    _at_least(opt.restart_mult, 1, 'optimizer.restart_mult')
