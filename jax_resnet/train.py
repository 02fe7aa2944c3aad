"""TrainState, the train and eval steps, and the training loop."""

import dataclasses
import functools
import json
import math
import os
import sys
import time
from typing import Any, NamedTuple, Optional

from absl import logging
from flax.training import train_state
import jax
import jax.numpy as jnp
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
import ml_collections
import numpy as np
import optax

from jax_resnet import checkpoints
from jax_resnet import distillation
from jax_resnet.augment import pipeline as augment_pipeline
from jax_resnet import errors
from jax_resnet import input_pipeline
from jax_resnet import metric_logging
from jax_resnet import optimizers
from jax_resnet import sam
from jax_resnet import schedules
from jax_resnet.models import layers
from jax_resnet.models import registry
from jax_resnet import validation
from jax_resnet import weight_averaging


class TrainState(train_state.TrainState):
  """Flax TrainState plus BatchNorm statistics and the run's base RNG key."""
  batch_stats: Any
  rng: jax.Array

  def kept_averages(self) -> dict[str, Any]:
    """The weight averages kept beside the trained weights, by name (none
    here; see AveragingTrainState)."""
    return getattr(self, 'averages', {})

  def variables(self, weights: str = 'raw') -> dict[str, Any]:
    """The network's variables: the trained ones, or an average's
    (``'ema'``, ``'swa'``)."""
    if weights == 'raw':
      return {'params': self.params, 'batch_stats': self.batch_stats}
    if weights not in self.kept_averages():
      raise ValueError(f'This train state keeps no {weights!r} weights.')
    return weight_averaging.network_variables(self.kept_averages()[weights])


class AveragingTrainState(TrainState):
  """A TrainState that also keeps weight averages (weight_averaging.py):
  ``averages['ema']`` (``config.ema_decay``), the EMA of the network's
  variables, and ``averages['swa']`` (``config.swa_start_epoch``), the SWA
  parameters, their recomputed BatchNorm statistics and count. (A separate
  class, so that the checkpoints of runs without averages keep their
  layout.)"""
  averages: dict[str, Any]


# Folded into the run's key for the SWA BatchNorm passes (the train steps
# fold their step numbers into the same key, which never reach this).
SWA_BN_STREAM = 2**32 - 1
# The mesh axis the batch is split over.
DATA_AXIS = 'data'
# The weights a state can be evaluated with (TrainState.variables).
WEIGHTS = ('raw', 'ema', 'swa')


class NonFiniteLossError(errors.Error, FloatingPointError):
  """The training loss became NaN or infinite."""


@dataclasses.dataclass(frozen=True)
class StepConfig:
  """Static settings of the compiled train and eval steps."""
  mean: tuple[float, ...]
  std: tuple[float, ...]
  augment: augment_pipeline.AugmentConfig
  label_smoothing: float
  dtype: Any
  num_classes: int
  ema_decay: float = 0.0
  sam_rho: float = 0.0
  distill_alpha: float = 0.0
  distill_temperature: float = 1.0


def step_config(config: ml_collections.ConfigDict) -> StepConfig:
  """The static step settings of a config."""
  mean, std = input_pipeline.normalization_stats(config.data.normalization,
                                                 config.dataset)
  return StepConfig(mean=tuple(mean.tolist()), std=tuple(std.tolist()),
                    augment=augment_pipeline.augment_config(config),
                    label_smoothing=config.optimizer.label_smoothing,
                    dtype=layers.DTYPES[config.model.dtype],
                    num_classes=input_pipeline.num_classes(config.dataset),
                    ema_decay=float(config.ema_decay),
                    sam_rho=float(config.optimizer.sam_rho),
                    distill_alpha=float(config.distill.alpha),
                    distill_temperature=float(config.distill.temperature))


def shuffle_key(seed: int) -> jax.Array:
  """Key of the per-epoch data order, independent of the step keys."""
  return jax.random.split(jax.random.PRNGKey(seed), 3)[2]


def resolve_model(config: ml_collections.ConfigDict
                  ) -> registry.ResolvedModel:
  """The network of ``config.model`` for ``config.dataset``, resolved once."""
  return registry.resolve(config.model,
                          input_pipeline.num_classes(config.dataset))


def validated_model(config: ml_collections.ConfigDict
                    ) -> registry.ResolvedModel:
  """Checks the whole config, then resolves its network: what a command
  does once before it trains or evaluates."""
  validation.validate_config(config)
  return resolve_model(config)


def initial_averages(config: ml_collections.ConfigDict,
                     variables: dict[str, Any]) -> dict[str, Any]:
  """The weight averages a run starts with from ``variables``: the EMA at
  them, an empty SWA."""
  averages = {}
  if config.ema_decay > 0:
    averages['ema'] = weight_averaging.copy_of(variables)
  if config.swa_start_epoch > 0:
    averages['swa'] = weight_averaging.swa_init(variables)
  return averages


def create_train_state(config: ml_collections.ConfigDict, model: Any,
                       steps_per_epoch: int) -> TrainState:
  """Initialises parameters, BatchNorm statistics and optimiser state.

  Under ``jax.eval_shape`` it gives the state's shapes without computing.
  """
  init_rng, state_rng, _ = jax.random.split(jax.random.PRNGKey(config.seed), 3)
  dtype = layers.DTYPES[config.model.dtype]
  variables = jax.jit(functools.partial(model.init, train=False))(
      init_rng, jnp.zeros((2, 32, 32, 3), dtype))
  fields = dict(
      apply_fn=model.apply, params=variables['params'],
      batch_stats=variables['batch_stats'],
      tx=optimizers.create_optimizer(config, steps_per_epoch), rng=state_rng)
  averages = initial_averages(config, dict(variables))
  if averages:
    return AveragingTrainState.create(**fields, averages=averages)
  return TrainState.create(**fields)


def cross_entropy(logits: jax.Array, labels: jax.Array, num_classes: int,
                  label_smoothing: float = 0.0) -> jax.Array:
  """Per-example cross-entropy with optional label smoothing."""
  return soft_cross_entropy(logits, jax.nn.one_hot(labels, num_classes),
                            label_smoothing)


def soft_cross_entropy(logits: jax.Array, targets: jax.Array,
                       label_smoothing: float = 0.0) -> jax.Array:
  """Per-example cross-entropy against target distributions (one-hot or
  mixed), smoothed as torch's ``CrossEntropyLoss(label_smoothing=...)``."""
  if label_smoothing:
    targets = optax.smooth_labels(targets, label_smoothing)
  return optax.softmax_cross_entropy(logits, targets)


def _gradients(state: TrainState, images: jax.Array, targets: jax.Array,
               teacher_logits: Optional[jax.Array], depth_rng: jax.Array,
               cfg: StepConfig, mesh: Optional[Mesh]):
  """``((loss, (logits, new batch_stats)), grads)`` of the step: plain, or
  SAM's (``cfg.sam_rho``), per device of ``mesh`` (sam.py); with
  ``teacher_logits``, the distillation loss (distillation.py)."""

  def loss_fn(params, batch_stats, images, targets, teacher_logits,
              depth_rng=depth_rng):
    logits, new_variables = state.apply_fn(
        {'params': params, 'batch_stats': batch_stats}, images,
        train=True, mutable=['batch_stats'],
        rngs={'stochastic_depth': depth_rng})
    loss = soft_cross_entropy(logits, targets, cfg.label_smoothing)
    if teacher_logits is not None:
      alpha = cfg.distill_alpha
      loss = (1.0 - alpha) * loss + alpha * distillation.kd_loss(
          logits, teacher_logits, cfg.distill_temperature)
    return loss.mean(), (logits, new_variables['batch_stats'])

  inputs = (images, targets, teacher_logits)
  if not cfg.sam_rho:
    return jax.value_and_grad(loss_fn, has_aux=True)(
        state.params, state.batch_stats, *inputs)

  def per_device(params, batch_stats, images, targets, teacher_logits):
    # Each device draws its own stochastic depth and dropout for its part of
    # the batch, as under pmap with a key per device.
    rng = (depth_rng if mesh is None or mesh.size == 1 else
           jax.random.fold_in(depth_rng, jax.lax.axis_index(DATA_AXIS)))
    (loss, (logits, new_stats)), grads = sam.sam_gradient(
        lambda p: loss_fn(p, batch_stats, images, targets, teacher_logits,
                          rng),
        params, cfg.sam_rho)
    if mesh is None:
      return (loss, (logits, new_stats)), grads
    mean = functools.partial(jax.lax.pmean, axis_name=DATA_AXIS)
    return (mean(loss), (logits, mean(new_stats))), mean(grads)

  if mesh is None:
    return per_device(state.params, state.batch_stats, *inputs)
  # check_vma off: the gradients are taken inside, each device's of its own
  # part of the batch (the project's BatchNorm and convolution VJPs do not
  # annotate per-device values), and averaged explicitly.
  return jax.shard_map(
      per_device, mesh=mesh,
      in_specs=(P(), P(), P(DATA_AXIS), P(DATA_AXIS), P(DATA_AXIS)),
      out_specs=((P(), (P(DATA_AXIS), P())), P()), check_vma=False)(
          state.params, state.batch_stats, *inputs)


def train_step(state: TrainState, batch: dict[str, jax.Array],
               cfg: StepConfig, mesh: Optional[Mesh] = None,
               teacher: Optional[distillation.Teacher] = None
               ) -> tuple[TrainState, dict[str, jax.Array]]:
  """One step on a uint8 batch: augment, normalise, forward, update.

  The step's randomness is ``fold_in(state.rng, state.step)``, so a resumed
  run draws exactly what an uninterrupted one would. With Mixup or CutMix
  the loss is taken against the mixed targets and ``train_accuracy`` is the
  lam-weighted accuracy (``mix.MixedLabels.accuracy``). ``mesh``: the
  devices the batch is split over (its axis ``DATA_AXIS``), where SAM
  perturbs per device; None: SAM over the whole batch. ``teacher``: the
  distillation teacher (its variables may be tracers), run in eval mode on
  the same augmented images.
  """
  rng = jax.random.fold_in(state.rng, state.step)
  augment_rng, depth_rng = jax.random.split(rng)
  labels = batch['label']
  images, mixed = augment_pipeline.train_batch(
      augment_rng, batch['image'], labels, cfg.augment, np.asarray(cfg.mean),
      np.asarray(cfg.std), cfg.dtype)
  targets = (jax.nn.one_hot(labels, cfg.num_classes) if mixed is None else
             mixed.targets(cfg.num_classes))
  teacher_logits = (None if teacher is None else teacher.logits(
      images, np.asarray(cfg.mean), np.asarray(cfg.std)))
  (loss, (logits, batch_stats)), grads = _gradients(
      state, images, targets, teacher_logits, depth_rng, cfg, mesh)
  new_state = state.apply_gradients(grads=grads, batch_stats=batch_stats)
  if cfg.ema_decay:
    new_state = new_state.replace(averages={
        **state.averages, 'ema': weight_averaging.ema_update(
            state.averages['ema'], new_state.variables(), cfg.ema_decay)})
  accuracy = (jnp.mean(jnp.argmax(logits, -1) == labels) * 100.0
              if mixed is None else mixed.accuracy(logits))
  metrics = {'train_loss': loss, 'train_accuracy': accuracy}
  return new_state, metrics


def eval_step(state: TrainState, batch: dict[str, jax.Array],
              cfg: StepConfig, weights: str = 'raw') -> dict[str, jax.Array]:
  """Sums of loss and correct predictions over the unmasked examples, with
  the trained weights or their average (``TrainState.variables``)."""
  images = input_pipeline.normalize(batch['image'], np.asarray(cfg.mean),
                                    np.asarray(cfg.std), cfg.dtype)
  logits = state.apply_fn(state.variables(weights), images, train=False)
  mask = batch['mask']
  loss = cross_entropy(logits, batch['label'], logits.shape[-1])
  correct = jnp.argmax(logits, -1) == batch['label']
  return {'loss_sum': jnp.sum(loss * mask),
          'correct_sum': jnp.sum(correct * mask),
          'count': jnp.sum(mask)}


class EvalSet(NamedTuple):
  """An evaluation split on the devices: [batches, eval batch] arrays of
  images, labels and a mask that is 0 on the padding."""
  batches: dict[str, jax.Array]
  num_examples: int
  num_batches: int


class Trainer:
  """Holds the device mesh, the device-resident data and compiled steps."""

  def __init__(self, config: ml_collections.ConfigDict,
               model: registry.ResolvedModel,
               train_split: Optional[input_pipeline.Split],
               test_split: input_pipeline.Split,
               validation_split: Optional[input_pipeline.Split] = None):
    self.config = config
    self.mesh = Mesh(np.asarray(jax.devices()), (DATA_AXIS,))
    self.replicated = NamedSharding(self.mesh, P())
    self.data_sharding = NamedSharding(self.mesh, P(DATA_AXIS))
    self.model = model.module
    self.step_cfg = step_config(config)
    self.num_train = train_split.num_examples if train_split else 0
    self.steps_per_epoch = self.num_train // config.batch_size
    if train_split is not None:
      self.train_images = jax.device_put(train_split.images, self.replicated)
      self.train_labels = jax.device_put(train_split.labels, self.replicated)
    # The sets evaluated each epoch, by the name their metrics carry.
    self.eval_sets = {'test': self._eval_set(test_split)}
    if validation_split is not None:
      self.eval_sets['validation'] = self._eval_set(validation_split)

    batch_size = config.batch_size

    def gather(images, labels, order, index):
      idx = jax.lax.dynamic_slice_in_dim(order, index * batch_size, batch_size)
      return {'image': images[idx], 'label': labels[idx]}

    self._gather = jax.jit(gather, out_shardings=self.data_sharding)
    self._permutation = jax.jit(
        lambda epoch: jax.random.permutation(
            jax.random.fold_in(shuffle_key(config.seed), epoch),
            self.num_train),
        out_shardings=self.replicated)
    self.teacher = None
    if train_split is not None and config.distill.teacher_workdir:
      self.teacher = distillation.load_teacher(config)
    if self.teacher is None:
      self.train_step = jax.jit(
          functools.partial(train_step, cfg=self.step_cfg, mesh=self.mesh),
          donate_argnums=0, out_shardings=(self.replicated, self.replicated))
    else:
      teacher = self.teacher
      teacher_variables = jax.device_put(teacher.variables, self.replicated)

      def distilling_step(state, batch, variables):
        return train_step(state, batch, cfg=self.step_cfg, mesh=self.mesh,
                          teacher=dataclasses.replace(teacher,
                                                      variables=variables))

      step = jax.jit(distilling_step, donate_argnums=0,
                     out_shardings=(self.replicated, self.replicated))
      self.train_step = lambda state, batch: step(state, batch,
                                                  teacher_variables)
    self.eval_steps = {
        weights: jax.jit(functools.partial(eval_step, cfg=self.step_cfg,
                                           weights=weights),
                         out_shardings=self.replicated)
        for weights in WEIGHTS}
    self.learning_rate = schedules.learning_rate_fn(
        config, max(self.steps_per_epoch, 1))
    self._swa_update = jax.jit(
        lambda state: state.replace(averages={
            **state.averages, 'swa': weight_averaging.swa_update(
                state.averages['swa'], state.params)}),
        donate_argnums=0, out_shardings=self.replicated)
    momentum = config.model.bn_momentum

    def bn_pass(state, images, index):
      """One batch's BatchNorm statistics under the SWA parameters. The
      network runs in training mode, as torch's update_bn runs it, with
      stochastic depth and dropout drawn afresh for every batch (a key of
      their own, from the run's key, the SWA count and the batch)."""
      swa = state.averages['swa']
      rng = jax.random.fold_in(jax.random.fold_in(
          jax.random.fold_in(state.rng, SWA_BN_STREAM), swa['count']), index)
      _, new = state.apply_fn(
          {'params': swa['params'],
           'batch_stats': weight_averaging.zero_stats(swa['batch_stats'])},
          input_pipeline.normalize(images, np.asarray(self.step_cfg.mean),
                                   np.asarray(self.step_cfg.std),
                                   self.step_cfg.dtype),
          train=True, mutable=['batch_stats'],
          rngs={'stochastic_depth': rng})
      return weight_averaging.batch_statistics(new['batch_stats'], momentum)

    self._bn_pass = jax.jit(bn_pass, out_shardings=self.replicated)

  def _eval_set(self, split: input_pipeline.Split) -> EvalSet:
    """A split on the devices in whole eval batches; padding is masked
    out."""
    n = split.num_examples
    batch = self.config.eval_batch_size
    num_batches = math.ceil(n / batch)
    pad = num_batches * batch - n
    images = np.concatenate(
        [split.images, np.zeros((pad, 32, 32, 3), np.uint8)])
    labels = np.concatenate([split.labels, np.zeros((pad,), np.int32)])
    mask = np.concatenate([np.ones((n,), np.float32),
                           np.zeros((pad,), np.float32)])
    shape = (num_batches, batch)
    return EvalSet(jax.device_put(
        {'image': images.reshape(shape + images.shape[1:]),
         'label': labels.reshape(shape), 'mask': mask.reshape(shape)},
        NamedSharding(self.mesh, P(None, DATA_AXIS))), n, num_batches)

  @property
  def num_test(self) -> int:
    return self.eval_sets['test'].num_examples

  def init_state(self) -> TrainState:
    """A fresh, replicated train state."""
    state = create_train_state(self.config, self.model,
                               max(self.steps_per_epoch, 1))
    return jax.device_put(state, self.replicated)

  def abstract_state(self) -> TrainState:
    """The train state's shapes, dtypes and shardings, nothing computed."""
    return checkpoints.with_sharding(
        jax.eval_shape(functools.partial(
            create_train_state, self.config, self.model,
            max(self.steps_per_epoch, 1))), self.replicated)

  def evaluate(self, state: TrainState, weights: str = 'raw',
               split: str = 'test') -> dict[str, float]:
    """Loss and accuracy (percent) over the whole of an eval set ('test' or
    'validation'), of the trained weights or (``weights='ema'``) their
    average, as ``{split}_loss`` and ``{split}_accuracy``."""
    eval_set = self.eval_sets[split]
    totals = None
    for i in range(eval_set.num_batches):
      batch = jax.tree.map(lambda x, i=i: x[i], eval_set.batches)
      sums = self.eval_steps[weights](state, batch)
      totals = sums if totals is None else jax.tree.map(jnp.add, totals, sums)
    totals = jax.device_get(totals)
    count = float(totals['count'])
    if count != eval_set.num_examples:
      raise AssertionError(f'Evaluated {count} of {eval_set.num_examples} '
                           f'{split} examples.')
    return {f'{split}_loss': float(totals['loss_sum']) / count,
            f'{split}_accuracy': 100.0 * float(totals['correct_sum']) / count}

  def average_swa(self, state: AveragingTrainState) -> AveragingTrainState:
    """Adds the parameters to the SWA, then recomputes its BatchNorm
    statistics: the mean of each training batch's, in the data's order,
    without augmentation (the last partial batch is left out)."""
    state = self._swa_update(state)
    order = jnp.arange(self.num_train)
    total = None
    for i in range(self.steps_per_epoch):
      batch = self._gather(self.train_images, self.train_labels, order, i)
      stats = self._bn_pass(state, batch['image'], i)
      total = stats if total is None else jax.tree.map(jnp.add, total, stats)
    mean = jax.tree.map(lambda s: s / self.steps_per_epoch, total)
    return state.replace(averages={
        **state.averages, 'swa': {**state.averages['swa'],
                                  'batch_stats': mean}})

  def train_epoch(self, state: TrainState, epoch: int
                  ) -> tuple[TrainState, dict[str, float]]:
    """One pass over the shuffled training set (0-based ``epoch``)."""
    order = self._permutation(epoch)
    log_every = max(1, self.config.log_every_steps)
    loss_sum = acc_sum = 0.0
    pending = []
    progress = _progress_bar(self.steps_per_epoch, epoch + 1)
    for i in range(self.steps_per_epoch):
      batch = self._gather(self.train_images, self.train_labels, order, i)
      state, metrics = self.train_step(state, batch)
      pending.append(metrics)
      if len(pending) == log_every or i == self.steps_per_epoch - 1:
        fetched = jax.device_get(pending)
        first = i + 1 - len(fetched)
        for j, m in enumerate(fetched):
          if not np.isfinite(m['train_loss']):
            raise NonFiniteLossError(
                f'Training loss is {m["train_loss"]} at epoch {epoch + 1}, '
                f'step {epoch * self.steps_per_epoch + first + j + 1} '
                f'(step {first + j + 1} of the epoch). Stopped; the last '
                'checkpoint is from before this epoch.')
          loss_sum += float(m['train_loss'])
          acc_sum += float(m['train_accuracy'])
        if progress is not None:
          progress.update(len(fetched))
          progress.set_postfix(loss=f'{fetched[-1]["train_loss"]:.3f}')
        pending = []
    if progress is not None:
      progress.close()
    return state, {'train_loss': loss_sum / self.steps_per_epoch,
                   'train_accuracy': acc_sum / self.steps_per_epoch}


def _progress_bar(total: int, epoch: int):
  if not sys.stderr.isatty():
    return None
  import tqdm  # pylint: disable=g-import-not-at-top
  return tqdm.tqdm(total=total, desc=f'epoch {epoch}', leave=False,
                   file=sys.stderr)


def run_signature(config: ml_collections.ConfigDict,
                  model: registry.ResolvedModel) -> dict[str, Any]:
  """Settings a checkpoint must share with the run that restores it: the
  network's, the optimiser and the weight averages (its state's
  structure)."""
  signature = {**model.signature(config.dataset),
               'optimizer': config.optimizer.name}
  if config.ema_decay > 0:
    signature['ema'] = True
  if config.swa_start_epoch > 0:
    signature['swa'] = True
  return signature


def checkpoint_fit(config: ml_collections.ConfigDict,
                   model: registry.ResolvedModel,
                   steps_per_epoch: Optional[int] = None) -> checkpoints.Fit:
  """What the workdir's checkpoint must match to serve this command."""
  signature = run_signature(config, model)
  # Checkpoints before signature versions were all SGD's, with no averages.
  plain = (config.optimizer.name == 'sgd' and not config.ema_decay and
           not config.swa_start_epoch)
  legacy = (checkpoints.legacy_signature(
      signature, dict(model.settings.block_kwargs),
      dict(model.network_kwargs)) if plain else None)
  return checkpoints.Fit(signature=signature, legacy_signature=legacy,
                         steps_per_epoch=steps_per_epoch)


class Splits(NamedTuple):
  """The data of a command: what it trains on (None for evaluation), the
  test set, and the validation set held out of the training split (None
  without ``data.validation_examples``)."""
  train: Optional[input_pipeline.Split]
  test: input_pipeline.Split
  validation: Optional[input_pipeline.Split] = None


def load_data(config: ml_collections.ConfigDict, train: bool = True
              ) -> Splits:
  """Reads the splits of the configured dataset.

  With ``data.validation_examples = N`` the last N training examples are the
  validation set and training uses the others (their first
  ``data.train_examples``, if set).
  """
  kwargs = dict(data_dir=config.data_dir or None,
                download=config.data.download)
  train_split = validation_split = None
  if train:
    held_out = config.data.validation_examples
    limit = config.data.train_examples or None
    train_split = input_pipeline.load_split(
        config.dataset, 'train', max_examples=None if held_out else limit,
        **kwargs)
    if held_out:
      train_split, validation_split = input_pipeline.hold_out(train_split,
                                                              held_out)
      if limit:
        if limit > train_split.num_examples:
          raise errors.ConfigError(
              f'data.train_examples={limit} is more than the '
              f'{train_split.num_examples} training examples left after '
              f'data.validation_examples={held_out}.')
        train_split = input_pipeline.Split(train_split.images[:limit],
                                           train_split.labels[:limit])
    if train_split.num_examples < config.batch_size:
      raise errors.ConfigError(
          f'{train_split.num_examples} training examples make no batch of '
          f'{config.batch_size}; lower batch_size or raise '
          'data.train_examples.')
  test_split = input_pipeline.load_split(config.dataset, 'test', **kwargs)
  return Splits(train_split, test_split, validation_split)


def evaluate_all(trainer: Trainer, state: TrainState) -> dict[str, float]:
  """The metrics of every eval set (test, validation) for the trained
  weights, and for their EMA when the state keeps one (``ema_test_loss``,
  ``ema_validation_accuracy``, ...)."""
  metrics = {}
  for weights, average in (('raw', None), *state.kept_averages().items()):
    if average is not None and 'count' in average and not int(
        average['count']):
      continue  # SWA before its first epoch: nothing averaged yet.
    prefix = '' if weights == 'raw' else f'{weights}_'
    for split in trainer.eval_sets:
      metrics.update({prefix + key: value for key, value in
                      trainer.evaluate(state, weights, split).items()})
  return metrics


def _weights_prefix(config: ml_collections.ConfigDict) -> str:
  return '' if config.eval_weights == 'raw' else f'{config.eval_weights}_'


def selection_metric(config: ml_collections.ConfigDict) -> str:
  """The metric the best checkpoint is chosen by: the accuracy of the
  weights ``config.eval_weights`` names, on the validation set when there is
  one, else on the test set."""
  split = 'validation' if config.data.validation_examples else 'test'
  return f'{_weights_prefix(config)}{split}_accuracy'


def selected_test_metric(config: ml_collections.ConfigDict) -> str:
  """The test accuracy of the weights ``config.eval_weights`` names."""
  return f'{_weights_prefix(config)}test_accuracy'


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str,
                       model: Optional[registry.ResolvedModel] = None
                       ) -> dict[str, Any]:
  """Trains (resuming from the workdir's latest checkpoint) and evaluates.

  Args:
    config: the run configuration (see configs/default.py).
    workdir: where checkpoints, metrics.jsonl and TensorBoard events go.
    model: ``validated_model(config)``, if the caller has it already.

  Returns:
    The last epoch's record plus 'final_test_accuracy'.
  """
  model = model or validated_model(config)
  trainer = Trainer(config, model, *load_data(config))
  fit = checkpoint_fit(config, model, trainer.steps_per_epoch)
  selection, selected_key = selection_metric(config), selected_test_metric(
      config)
  os.makedirs(workdir, exist_ok=True)
  ckpt = checkpoints.Checkpointer(workdir, keep=config.checkpoints_to_keep)
  start_epoch, best, selected = 0, {}, None
  if ckpt.steps():
    state, meta = ckpt.restore('latest', trainer.abstract_state(), fit)
    start_epoch = meta['epoch']
    best = {key: meta[key] for key in meta if key.startswith('best_')}
    # Checkpoints from before the selection was recorded selected on the
    # test accuracy.
    selected = meta.get('selected_test_accuracy', meta['best_test_accuracy'])
    if meta.get('selection_metric', selection) != selection:
      raise checkpoints.CheckpointMismatchError(
          f'The checkpoints in {workdir} were ranked by '
          f"{meta['selection_metric']}; this command ranks by {selection} "
          '(eval_weights or data.validation_examples differ), which would '
          'mix the two in one best checkpoint. Use another --workdir, or '
          'the settings that wrote it.')
    print(f'Resumed from epoch {start_epoch} (step {int(state.step)}) in '
          f'{workdir}.', flush=True)
  else:
    state = trainer.init_state()
  # Written only once the workdir's checkpoint is known to fit this command:
  # a refused command leaves the workdir as it was.
  with open(os.path.join(workdir, 'config.json'), 'w') as f:
    f.write(config.to_json(indent=2))
  mixes = trainer.step_cfg.augment.mixes
  logger = metric_logging.MetricLogger(workdir, resumed_epoch=start_epoch,
                                       mixed_targets=mixes)
  print(f'{config.dataset} {model.description}: '
        f'{trainer.num_train} train / {trainer.num_test} test images, '
        f'{trainer.steps_per_epoch} steps per epoch, '
        f'{jax.device_count()} device(s).', flush=True)
  if trainer.teacher is not None:
    print(f'Distilling {trainer.teacher.description} '
          f'({trainer.teacher.workdir}, best checkpoint, step '
          f'{trainer.teacher.checkpoint_step}): alpha '
          f'{config.distill.alpha}, temperature '
          f'{config.distill.temperature}.', flush=True)
  if mixes:
    print('Mixup/CutMix: the train loss is against the mixed targets and the '
          'train accuracy is lam-weighted (a prediction of the mixed-in '
          "example's class counts 1 - lam).", flush=True)

  record = None
  try:
    for epoch in range(start_epoch, config.num_epochs):
      start = time.perf_counter()
      learning_rate = float(trainer.learning_rate(
          epoch * trainer.steps_per_epoch))
      state, train_metrics = trainer.train_epoch(state, epoch)
      train_seconds = time.perf_counter() - start
      if config.swa_start_epoch and epoch + 1 >= config.swa_start_epoch:
        state = trainer.average_swa(state)
      test_metrics = evaluate_all(trainer, state)
      # Weights not evaluated yet (SWA before its start) are not selectable.
      selection_accuracy = test_metrics.get(selection, -1.0)
      # Ties go to the later epoch, as the best checkpoint does.
      if (selection in test_metrics and
          selection_accuracy >= best.get(f'best_{selection}', -1.0)):
        selected = test_metrics[selected_key]
      for key, value in test_metrics.items():
        if key.endswith('_accuracy'):
          best[f'best_{key}'] = max(best.get(f'best_{key}', 0.0), value)
      record = {
          'epoch': epoch + 1, 'step': int(state.step), **train_metrics,
          **test_metrics, **best, 'selected_test_accuracy': selected,
          'learning_rate': learning_rate,
          'images_per_sec': trainer.steps_per_epoch * config.batch_size /
                            train_seconds,
          'epoch_seconds': time.perf_counter() - start,
      }
      logger.write(record, config.num_epochs)
      meta = {'epoch': epoch + 1, **best, 'selected_test_accuracy': selected,
              'selection_metric': selection,
              'test_accuracy': test_metrics['test_accuracy'],
              'steps_per_epoch': trainer.steps_per_epoch,
              'signature': fit.signature}
      ckpt.save(int(state.step), state, meta, selection_accuracy)
  finally:
    logger.close()
    ckpt.close()

  history = metric_logging.read_metrics(workdir)
  if not history:
    raise RuntimeError(f'No epochs recorded in {workdir}.')
  final = dict(history[-1])
  final['final_test_accuracy'] = final['test_accuracy']
  chosen_on = 'validation' if config.data.validation_examples else 'test'
  print(f'Final test accuracy {final["test_accuracy"]:.2f}%, best '
        f'{final["best_test_accuracy"]:.2f}%; the best checkpoint '
        f'(selected on {chosen_on}) has {final["selected_test_accuracy"]:.2f}%'
        f' ({config.num_epochs} epochs).', flush=True)
  logging.info('Finished: %s', json.dumps(final))
  return final


def evaluate(config: ml_collections.ConfigDict, workdir: str,
             model: Optional[registry.ResolvedModel] = None
             ) -> dict[str, Any]:
  """Restores the best (or latest) checkpoint and evaluates the test set.

  ``model`` as in ``train_and_evaluate``.
  """
  model = model or validated_model(config)
  trainer = Trainer(config, model, *load_data(config, train=False))
  ckpt = checkpoints.Checkpointer(workdir, read_only=True)
  try:
    state, meta = ckpt.restore(config.eval_checkpoint,
                               trainer.abstract_state(),
                               checkpoint_fit(config, model))
  finally:
    ckpt.close()
  result = trainer.evaluate(state, config.eval_weights)
  result['weights'] = config.eval_weights
  result['checkpoint_step'] = int(state.step)
  result['checkpoint_epoch'] = meta['epoch']
  return result
