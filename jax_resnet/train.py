"""TrainState, the train and eval steps, and the training loop."""

import dataclasses
import functools
import json
import math
import os
import signal
import sys
import time
from typing import Any, Callable, NamedTuple, Optional, Sequence

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
from jax_resnet import distributed
from jax_resnet.augment import pipeline as augment_pipeline
from jax_resnet import errors
from jax_resnet import input_pipeline
from jax_resnet import metric_logging
from jax_resnet import optimizers
from jax_resnet import platforms
from jax_resnet import preemption
from jax_resnet import sam
from jax_resnet import schedules
from jax_resnet.models import layers
from jax_resnet.models import registry
from jax_resnet.ops import canonical_conv
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


def shuffle_key(seed: Any) -> jax.Array:
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


def compiled_init(model: Any) -> Callable[..., dict[str, Any]]:
  """``model.init`` (in eval mode), jitted: ``(rng, images) -> variables``.
  One such function compiles once, however many states it starts (a
  ResNet-56's init takes about as long to compile as its train step)."""
  return jax.jit(functools.partial(model.init, train=False))


def create_train_state(config: ml_collections.ConfigDict, model: Any,
                       steps_per_epoch: int, seed: Optional[int] = None,
                       init: Optional[Callable[..., dict[str, Any]]] = None
                       ) -> TrainState:
  """Initialises parameters, BatchNorm statistics and optimiser state from
  ``seed`` (default ``config.seed``), with ``init`` (default: a fresh
  ``compiled_init(model)``; pass one to share its compile among states).

  Under ``jax.eval_shape`` it gives the state's shapes without computing.
  """
  seed = config.seed if seed is None else seed
  init_rng, state_rng, _ = jax.random.split(jax.random.PRNGKey(seed), 3)
  init = compiled_init(model) if init is None else init
  variables = init(init_rng, jnp.zeros((2, 32, 32, 3),
                                       layers.DTYPES[config.model.dtype]))
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


def epoch_order(step: jax.Array, seed: jax.Array, num_examples: int,
                steps_per_epoch: int) -> jax.Array:
  """The shuffled example order of the epoch that train step ``step``
  belongs to: a permutation from the seed and the epoch alone, so every
  process, every resumed run and every packed seed draws what its own run
  would. ``step`` and ``seed`` are device scalars."""
  epoch = step // steps_per_epoch
  return jax.random.permutation(jax.random.fold_in(shuffle_key(seed), epoch),
                                num_examples)


def train_steps(state: TrainState, images: jax.Array, labels: jax.Array,
                order: jax.Array, teacher_variables: Optional[Any], *,
                cfg: StepConfig, mesh: Optional[Mesh],
                teacher: Optional[distillation.Teacher], batch_size: int,
                steps_per_epoch: int, count: int,
                data_sharding: Optional[NamedSharding] = None
                ) -> tuple[TrainState, dict[str, jax.Array]]:
  """``count`` train steps: each gathers its batch from the device-resident
  training set (``images``, ``labels``) at its place in the epoch's
  ``order`` (from ``state.step``), split over ``data_sharding``, then runs
  ``train_step``. One step, or a ``lax.scan`` over ``count``; the metrics
  are stacked, ``[count]`` each. ``teacher_variables``: the distillation
  teacher's (with ``teacher``), else None."""
  if teacher is not None:
    teacher = dataclasses.replace(teacher, variables=teacher_variables)

  def one_step(state, _):
    index = state.step % steps_per_epoch
    idx = jax.lax.dynamic_slice_in_dim(order, index * batch_size, batch_size)
    batch = {'image': images[idx], 'label': labels[idx]}
    if data_sharding is not None:
      batch = jax.lax.with_sharding_constraint(batch, data_sharding)
    return train_step(state, batch, cfg, mesh, teacher)

  if count == 1:
    state, metrics = one_step(state, None)
    return state, jax.tree.map(lambda x: x[None], metrics)
  # XLA:CPU needs the convolution gradients of a loop body in canonical form.
  with canonical_conv.loop_body():
    return jax.lax.scan(one_step, state, length=count)


def evaluate_batches(state: TrainState, batches: dict[str, jax.Array],
                     cfg: StepConfig, weights: str = 'raw'
                     ) -> dict[str, jax.Array]:
  """``eval_step``'s sums over all of ``batches`` ([batches, eval batch]
  arrays), scanned in one compiled call."""

  def add(totals, batch):
    sums = eval_step(state, batch, cfg, weights)
    return jax.tree.map(jnp.add, totals, sums), None

  shapes = jax.eval_shape(
      functools.partial(eval_step, cfg=cfg, weights=weights), state,
      jax.tree.map(lambda x: x[0], batches))
  zeros = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)
  totals, _ = jax.lax.scan(add, zeros, batches)
  return totals


def swa_average(state: AveragingTrainState, images: jax.Array,
                cfg: StepConfig, momentum: float, batch_size: int,
                num_batches: int,
                data_sharding: Optional[NamedSharding] = None
                ) -> AveragingTrainState:
  """Adds the parameters to the SWA, then recomputes its BatchNorm
  statistics: the mean of each training batch's, the batches in the data's
  order without augmentation (the last partial batch left out). The
  network runs in training mode, as torch's update_bn runs it, with
  stochastic depth and dropout drawn afresh for every batch (a key of their
  own, from the run's key, the SWA count and the batch)."""
  swa = weight_averaging.swa_update(state.averages['swa'], state.params)
  zero_stats = weight_averaging.zero_stats(swa['batch_stats'])
  key = jax.random.fold_in(jax.random.fold_in(state.rng, SWA_BN_STREAM),
                           swa['count'])

  def add(total, index):
    batch = jax.lax.dynamic_slice_in_dim(images, index * batch_size,
                                         batch_size)
    if data_sharding is not None:
      batch = jax.lax.with_sharding_constraint(batch, data_sharding)
    _, new = state.apply_fn(
        {'params': swa['params'], 'batch_stats': zero_stats},
        input_pipeline.normalize(batch, np.asarray(cfg.mean),
                                 np.asarray(cfg.std), cfg.dtype),
        train=True, mutable=['batch_stats'],
        rngs={'stochastic_depth': jax.random.fold_in(key, index)})
    stats = weight_averaging.batch_statistics(new['batch_stats'], momentum)
    return jax.tree.map(jnp.add, total, stats), None

  total, _ = jax.lax.scan(add, jax.tree.map(jnp.zeros_like, zero_stats),
                          jnp.arange(num_batches))
  mean = jax.tree.map(lambda s: s / num_batches, total)
  return state.replace(averages={**state.averages,
                                 'swa': {**swa, 'batch_stats': mean}})


def _map_over_seeds(fn, in_axes: tuple[Optional[int], ...], *args):
  """``jax.vmap(fn, in_axes)(*args)`` computed one seed after the other
  (``lax.map``), each seed's work the unpacked program's."""
  stacked = tuple(a if axis == 0 else None for a, axis in zip(args, in_axes))

  def one(xs):
    return fn(*(x if axis == 0 else a
                for x, a, axis in zip(xs, args, in_axes)))

  # A loop body: XLA:CPU needs its convolution gradients in canonical form.
  with canonical_conv.loop_body():
    return jax.lax.map(one, stacked)


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
               validation_split: Optional[input_pipeline.Split] = None,
               seeds: Optional[Sequence[int]] = None):
    self.config = config
    # Packed seeds (``pack_seeds``): the train state of each seed stacked on
    # a leading axis and every compiled call vmapped over it. None: one
    # seed, config.seed, unstacked.
    self.seeds = None if seeds is None else tuple(seeds)
    self.mesh = Mesh(np.asarray(jax.devices()), (DATA_AXIS,))
    self.replicated = NamedSharding(self.mesh, P())
    self.data_sharding = NamedSharding(self.mesh, P(DATA_AXIS))
    self.model = model.module
    self.step_cfg = step_config(config)
    self.num_train = train_split.num_examples if train_split else 0
    self.steps_per_epoch = self.num_train // config.batch_size
    if train_split is not None:
      self.train_images = distributed.place(train_split.images,
                                            self.replicated)
      self.train_labels = distributed.place(train_split.labels,
                                            self.replicated)
    # The sets evaluated each epoch, by the name their metrics carry.
    self.eval_sets = {'test': self._eval_set(test_split)}
    if validation_split is not None:
      self.eval_sets['validation'] = self._eval_set(validation_split)

    self._seed = distributed.place(
        np.asarray(self.seeds if self.packed else config.seed, np.int32),
        self.replicated)
    self._permutation = jax.jit(
        self._over_seeds(functools.partial(
            epoch_order, num_examples=self.num_train,
            steps_per_epoch=max(self.steps_per_epoch, 1)), (0, 0)),
        out_shardings=self.replicated)
    self.teacher = None
    if train_split is not None and config.distill.teacher_workdir:
      self.teacher = distillation.load_teacher(config)
    self._teacher_variables = (
        None if self.teacher is None else
        distributed.place(self.teacher.variables, self.replicated))
    self.steps_per_dispatch = platforms.steps_per_dispatch(
        config.steps_per_dispatch)
    # The compiled dispatches of the training loop, by their step count.
    self._dispatches = {}
    self._evaluations = {}
    self.learning_rate = schedules.learning_rate_fn(
        config, max(self.steps_per_epoch, 1))
    self._swa_average = jax.jit(
        self._over_seeds(functools.partial(swa_average, cfg=self.step_cfg,
                          momentum=config.model.bn_momentum,
                          batch_size=config.batch_size,
                          num_batches=self.steps_per_epoch,
                          data_sharding=self.data_sharding), (0, None)),
        donate_argnums=0, out_shardings=self.replicated)

  @property
  def packed(self) -> bool:
    return self.seeds is not None

  @property
  def num_members(self) -> int:
    """The runs trained together: the packed seeds, or one."""
    return len(self.seeds) if self.packed else 1

  def _over_seeds(self, fn, in_axes):
    """``fn`` over the packed seeds when packed (``in_axes``: 0 for the
    stacked arguments, None for the shared ones): vmapped, or on the CPU a
    ``lax.map`` (``platforms.pack_by_vmap``)."""
    if not self.packed:
      return fn
    if platforms.pack_by_vmap():
      return jax.vmap(fn, in_axes=in_axes)
    return functools.partial(_map_over_seeds, fn, tuple(in_axes))

  def member_state(self, state: TrainState, index: int) -> TrainState:
    """The train state of one packed seed (the state itself unpacked)."""
    if not self.packed:
      return state
    return jax.tree.map(lambda x: x[index], state)

  def stack(self, states: Sequence[TrainState]) -> TrainState:
    """The state of the members' states (``member_state``'s inverse)."""
    if not self.packed:
      (state,) = states
      return state
    # Leaf by leaf: each state carries its own (equal) optimiser object.
    leaves = [np.stack(xs) for xs in
              zip(*(jax.tree.leaves(jax.device_get(s)) for s in states))]
    return distributed.place(
        jax.tree.unflatten(jax.tree.structure(states[0]), leaves),
        self.replicated)

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
    return EvalSet(distributed.place(
        {'image': images.reshape(shape + images.shape[1:]),
         'label': labels.reshape(shape), 'mask': mask.reshape(shape)},
        NamedSharding(self.mesh, P(None, DATA_AXIS))), n, num_batches)

  @property
  def num_test(self) -> int:
    return self.eval_sets['test'].num_examples

  def init_state(self) -> TrainState:
    """A fresh, replicated train state (stacked, when packed)."""
    # Computed by every process alike, then placed on its devices once. The
    # packed seeds share one compiled init.
    init = compiled_init(self.model)
    states = [jax.device_get(create_train_state(
        self.config, self.model, max(self.steps_per_epoch, 1), seed, init))
              for seed in (self.seeds or (self.config.seed,))]
    if not self.packed:
      return distributed.place(states[0], self.replicated)
    return self.stack(states)

  def abstract_state(self) -> TrainState:
    """The train state's shapes, dtypes and shardings, nothing computed (of
    one member, as each workdir saves it)."""
    return checkpoints.with_sharding(
        jax.eval_shape(functools.partial(
            create_train_state, self.config, self.model,
            max(self.steps_per_epoch, 1))), self.replicated)

  def evaluate(self, state: TrainState, weights: str = 'raw',
               split: str = 'test') -> dict[str, float]:
    """Loss and accuracy (percent) over the whole of an eval set ('test' or
    'validation'), of the trained weights or (``weights='ema'``) their
    average, as ``{split}_loss`` and ``{split}_accuracy``: one compiled call
    over all of the set's batches. Of an unpacked state; see
    ``evaluate_members``."""
    (result,) = self.evaluate_members(state, weights, split)
    return result

  def evaluate_members(self, state: TrainState, weights: str = 'raw',
                       split: str = 'test') -> list[dict[str, float]]:
    """``evaluate`` for each member (packed seed) of ``state``, in one
    call."""
    eval_set = self.eval_sets[split]
    if weights not in self._evaluations:
      self._evaluations[weights] = jax.jit(
          self._over_seeds(functools.partial(
              evaluate_batches, cfg=self.step_cfg, weights=weights),
                           (0, None)),
          out_shardings=self.replicated)
    with jax.transfer_guard('disallow'):
      totals = jax.device_get(self._evaluations[weights](state,
                                                         eval_set.batches))
    results = []
    for i in range(self.num_members):
      count, loss_sum, correct_sum = (
          float(np.reshape(totals[key], -1)[i])
          for key in ('count', 'loss_sum', 'correct_sum'))
      if count != eval_set.num_examples:
        raise AssertionError(f'Evaluated {count} of {eval_set.num_examples} '
                             f'{split} examples.')
      results.append({f'{split}_loss': loss_sum / count,
                      f'{split}_accuracy': 100.0 * correct_sum / count})
    return results

  def average_swa(self, state: AveragingTrainState) -> AveragingTrainState:
    """Adds the parameters to the SWA, then recomputes its BatchNorm
    statistics over the training set (``swa_average``), in one call."""
    with jax.transfer_guard('disallow'):
      return self._swa_average(state, self.train_images)

  def dispatch(self, state: TrainState, order: jax.Array, count: int
               ) -> tuple[TrainState, dict[str, jax.Array]]:
    """``count`` train steps in one compiled call (``train_steps``) from the
    step ``state.step`` is at, in the epoch's ``order``; their metrics are
    stacked, one row per step."""
    if count not in self._dispatches:
      self._dispatches[count] = jax.jit(
          self._over_seeds(functools.partial(
              train_steps, cfg=self.step_cfg, mesh=self.mesh,
              teacher=self.teacher, batch_size=self.config.batch_size,
              steps_per_epoch=self.steps_per_epoch, count=count,
              data_sharding=self.data_sharding), (0, None, None, 0, None)),
          donate_argnums=0, out_shardings=(self.replicated, self.replicated))
    return self._dispatches[count](state, self.train_images,
                                   self.train_labels, order,
                                   self._teacher_variables)

  def train_epoch(self, state: TrainState, epoch: int
                  ) -> tuple[TrainState, list[dict[str, float]]]:
    """One pass over the shuffled training set (0-based ``epoch``); the
    epoch's mean train loss and accuracy of each member (packed seed)."""
    state, progress = self.run_steps(state, epoch, EpochProgress.start(
        self.num_members))
    return state, progress.metrics(self.steps_per_epoch)

  def run_steps(self, state: TrainState, epoch: int, progress: 'EpochProgress',
                until: Optional[int] = None,
                should_stop: Optional[Callable[[], bool]] = None
                ) -> tuple[TrainState, 'EpochProgress']:
    """Trains epoch ``epoch`` (0-based) from ``progress.done`` steps into it
    up to ``until`` steps into it (default: its end), or until
    ``should_stop()`` says so after a dispatch; returns the state and the
    progress made, with the epoch's partial train metric sums.

    Each dispatch runs ``steps_per_dispatch`` steps (fewer where ``until``
    or the epoch's end comes first); nothing goes from the host to the
    devices (a transfer guard says so), and the metrics come back every
    ``log_every_steps`` steps (at the first dispatch boundary from there),
    and whenever it stops, for the NaN check and the progress bar.

    On a run of several processes ``should_stop`` is a collective that
    waits for the step before it, so it is asked only where the metrics
    come back anyway: between those points the dispatches queue up.
    """
    log_every = max(1, self.config.log_every_steps)
    ask_every_dispatch = not distributed.is_multi_process()
    members = self.num_members
    until = self.steps_per_epoch if until is None else until
    loss_sums, acc_sums = list(progress.loss_sums), list(progress.acc_sums)
    pending, pending_steps, done = [], 0, progress.done
    bar = _progress_bar(self.steps_per_epoch, epoch + 1, done)
    first_step = int(np.reshape(jax.device_get(state.step), -1)[0])
    if first_step != epoch * self.steps_per_epoch + done:
      raise AssertionError(f'Step {done} of epoch {epoch + 1} is step '
                           f'{epoch * self.steps_per_epoch + done}; the '
                           f'state is at step {first_step}.')
    stop = False
    with jax.transfer_guard('disallow'):
      order = self._permutation(state.step, self._seed)
      while done < until and not stop:
        count = min(self.steps_per_dispatch, until - done)
        state, metrics = self.dispatch(state, order, count)
        pending.append(metrics)
        pending_steps += count
        done += count
        fetch = pending_steps >= log_every or done >= until
        if should_stop is not None and (fetch or ask_every_dispatch):
          stop = should_stop()
        if not (fetch or stop):
          continue
        fetched = jax.device_get(pending)
        # [members, steps] each.
        losses = np.concatenate(
            [np.reshape(m['train_loss'], (members, -1)) for m in fetched], 1)
        accuracies = np.concatenate(
            [np.reshape(m['train_accuracy'], (members, -1)) for m in fetched],
            1)
        first = done - losses.shape[1]
        bad = np.argwhere(~np.isfinite(losses))
        if bad.size:
          member, j = bad[0]
          where = (f' (seed {self.seeds[member]})' if self.packed else '')
          raise NonFiniteLossError(
              f'Training loss is {losses[member, j]}{where} at epoch '
              f'{epoch + 1}, step {epoch * self.steps_per_epoch + first + j + 1}'
              f' (step {first + j + 1} of the epoch). Stopped without '
              'saving: the last checkpoint is from before this step.')
        for member in range(members):
          # Summed in step order, as one step at a time would.
          for loss, accuracy in zip(losses[member].tolist(),
                                    accuracies[member].tolist()):
            loss_sums[member] += loss
            acc_sums[member] += accuracy
        if bar is not None:
          bar.update(losses.shape[1])
          bar.set_postfix(loss=f'{losses[0, -1]:.3f}')
        pending, pending_steps = [], 0
    if bar is not None:
      bar.close()
    return state, EpochProgress(done, tuple(loss_sums), tuple(acc_sums))


@dataclasses.dataclass(frozen=True)
class EpochProgress:
  """How far an epoch has come: ``done`` steps, and each member's sums of
  their train loss and accuracy (in step order, so that an epoch stopped
  and continued sums exactly as one that was not)."""
  done: int
  loss_sums: tuple[float, ...]
  acc_sums: tuple[float, ...]

  @classmethod
  def start(cls, members: int) -> 'EpochProgress':
    return cls(0, (0.0,) * members, (0.0,) * members)

  def metrics(self, steps_per_epoch: int) -> list[dict[str, float]]:
    """Each member's epoch means (of a finished epoch)."""
    return [{'train_loss': loss / steps_per_epoch,
             'train_accuracy': acc / steps_per_epoch}
            for loss, acc in zip(self.loss_sums, self.acc_sums)]


def _progress_bar(total: int, epoch: int, done: int = 0):
  if not sys.stderr.isatty() or not distributed.is_primary():
    return None
  import tqdm  # pylint: disable=g-import-not-at-top
  return tqdm.tqdm(total=total, initial=done, desc=f'epoch {epoch}',
                   leave=False, file=sys.stderr)


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


def evaluate_all(trainer: Trainer, state: TrainState
                 ) -> list[dict[str, float]]:
  """The metrics of every eval set (test, validation) for the trained
  weights, and for their EMA when the state keeps one (``ema_test_loss``,
  ``ema_validation_accuracy``, ...), for each member (packed seed)."""
  metrics = [{} for _ in range(trainer.num_members)]
  for weights, average in (('raw', None), *state.kept_averages().items()):
    if average is not None and 'count' in average and not int(
        np.reshape(jax.device_get(average['count']), -1)[0]):
      continue  # SWA before its first epoch: nothing averaged yet.
    prefix = '' if weights == 'raw' else f'{weights}_'
    for split in trainer.eval_sets:
      for member, result in zip(
          metrics, trainer.evaluate_members(state, weights, split)):
        member.update({prefix + key: value for key, value in result.items()})
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


def ranked(config: ml_collections.ConfigDict, metrics: dict[str, float],
           best: dict[str, float], selected: Optional[float]
           ) -> tuple[dict[str, float], Optional[float], float]:
  """A run's ranking after an evaluation ``metrics`` (``evaluate_all``),
  from the ``best`` metrics and the ``selected`` test accuracy so far:
  ``(best, selected, selection accuracy)``, the last what the evaluated
  checkpoint ranks by (-1 for weights not evaluated yet, SWA before its
  start, which are not selectable)."""
  selection = selection_metric(config)
  selection_accuracy = metrics.get(selection, -1.0)
  # Ties go to the later epoch, as the best checkpoint does.
  if (selection in metrics and
      selection_accuracy >= best.get(f'best_{selection}', -1.0)):
    selected = metrics[selected_test_metric(config)]
  best = dict(best)
  for key, value in metrics.items():
    if key.endswith('_accuracy'):
      best[f'best_{key}'] = max(best.get(f'best_{key}', 0.0), value)
  return best, selected, selection_accuracy


def seed_config(config: ml_collections.ConfigDict, seed: int
                ) -> ml_collections.ConfigDict:
  """The one-seed run a packed seed equals: ``seed`` and no packing. Its
  workdir holds it as config.json, so eval, report and resume treat the
  workdir as that run's."""
  config = ml_collections.ConfigDict(config.to_dict())
  config.seed = seed
  config.pack_seeds = ''
  return config


class _Member:
  """One seed's run in a training command: its workdir, checkpoints, log
  and best metrics."""

  def __init__(self, config: ml_collections.ConfigDict, seed: int,
               workdir: str, label: str):
    self.config = seed_config(config, seed)
    self.seed, self.workdir, self.label = seed, workdir, label
    self.selection = selection_metric(config)
    self.selected_key = selected_test_metric(config)
    # A metrics.jsonl that cannot be read stops the command before it
    # writes anything.
    metric_logging.read_metrics(workdir)
    os.makedirs(workdir, exist_ok=True)
    self.ckpt = checkpoints.Checkpointer(workdir,
                                         keep=config.checkpoints_to_keep)
    # Mid-epoch checkpoints: opened when there are some, or one is saved.
    self._mid = None
    if os.path.isdir(os.path.join(workdir, checkpoints.MID_EPOCH_DIR)):
      self._mid = self._mid_epoch()
    self.best, self.selected, self.logger, self.last = {}, None, None, None

  def _mid_epoch(self) -> checkpoints.Checkpointer:
    return checkpoints.Checkpointer(self.workdir, keep=1,
                                    subdir=checkpoints.MID_EPOCH_DIR,
                                    ranked=False)

  def restore_mid_epoch(self, trainer: Trainer, fit: checkpoints.Fit
                        ) -> Optional[tuple[TrainState, dict[str, Any]]]:
    """The mid-epoch checkpoint, or None."""
    if self._mid is None or not self._mid.steps():
      return None
    return self._mid.restore('latest', trainer.abstract_state(), fit)

  def save_mid_epoch(self, step: int, state: TrainState, epoch: int,
                     done: int, loss_sum: float, acc_sum: float,
                     fit: checkpoints.Fit, steps_per_epoch: int) -> None:
    """Saves the state ``done`` steps into epoch ``epoch`` (0-based), with
    the epoch's partial train metric sums and the best metrics so far."""
    if self._mid is None:
      self._mid = self._mid_epoch()
    meta = {'epoch': epoch, 'step_in_epoch': done,
            'train_loss_sum': loss_sum, 'train_accuracy_sum': acc_sum,
            **self.best, 'selected_test_accuracy': self.selected,
            'selection_metric': self.selection,
            'steps_per_epoch': steps_per_epoch, 'signature': fit.signature}
    self._mid.save(step, state, meta)

  def restore(self, trainer: Trainer, fit: checkpoints.Fit,
              max_step: Optional[int] = None
              ) -> Optional[tuple[TrainState, dict[str, Any]]]:
    """The latest checkpoint (at or before ``max_step``), or None."""
    if not self.ckpt.steps():
      return None
    state, meta = self.ckpt.restore('latest', trainer.abstract_state(), fit,
                                    max_step=max_step)
    if meta.get('selection_metric', self.selection) != self.selection:
      raise checkpoints.CheckpointMismatchError(
          f'The checkpoints in {self.workdir} were ranked by '
          f"{meta['selection_metric']}; this command ranks by "
          f'{self.selection} (eval_weights or data.validation_examples '
          'differ), which would mix the two in one best checkpoint. Use '
          'another --workdir, or the settings that wrote it.')
    self.best = {key: meta[key] for key in meta if key.startswith('best_')}
    # Checkpoints from before the selection was recorded selected on the
    # test accuracy.
    self.selected = meta.get('selected_test_accuracy',
                             meta['best_test_accuracy'])
    return state, meta

  def start(self, resumed_epoch: int, mixes: bool):
    """Writes config.json and opens the log (after the checkpoints were
    found to fit: a refused command leaves the workdir as it was); on
    process 0 only."""
    if not distributed.is_primary():
      return
    with open(os.path.join(self.workdir, 'config.json'), 'w') as f:
      f.write(self.config.to_json(indent=2))
    self.logger = metric_logging.MetricLogger(
        self.workdir, resumed_epoch=resumed_epoch, mixed_targets=mixes,
        prefix=self.label)

  def end_epoch(self, epoch: int, step: int, state: TrainState,
                train_metrics: dict[str, float],
                test_metrics: dict[str, float], fit: checkpoints.Fit,
                steps_per_epoch: int, timing: dict[str, float]):
    """Logs the epoch's record and saves its checkpoint."""
    self.best, self.selected, selection_accuracy = ranked(
        self.config, test_metrics, self.best, self.selected)
    record = {'epoch': epoch + 1, 'step': step, **train_metrics,
              **test_metrics, **self.best,
              'selected_test_accuracy': self.selected, **timing}
    self.last = record
    if self.logger is not None:
      self.logger.write(record, self.config.num_epochs)
    meta = {'epoch': epoch + 1, **self.best,
            'selected_test_accuracy': self.selected,
            'selection_metric': self.selection,
            'test_accuracy': test_metrics['test_accuracy'],
            'steps_per_epoch': steps_per_epoch, 'signature': fit.signature}
    self.ckpt.save(step, state, meta, selection_accuracy)
    if self._mid is not None:
      # The epoch's checkpoint supersedes its mid-epoch ones.
      self._mid.delete_all()

  def close(self):
    if self.logger is not None:
      self.logger.close()
    self.ckpt.close()
    if self._mid is not None:
      self._mid.close()

  def final(self) -> dict[str, Any]:
    history = (metric_logging.read_metrics(self.workdir)
               if distributed.is_primary() else [self.last])
    if not history or history[-1] is None:
      raise RuntimeError(f'No epochs recorded in {self.workdir}.')
    final = dict(history[-1])
    final['final_test_accuracy'] = final['test_accuracy']
    chosen_on = ('validation' if self.config.data.validation_examples else
                 'test')
    distributed.say(
        f'{self.label}Final test accuracy {final["test_accuracy"]:.2f}%, '
        f'best {final["best_test_accuracy"]:.2f}%; the best checkpoint '
        f'(selected on {chosen_on}) has '
        f'{final["selected_test_accuracy"]:.2f}% '
        f'({self.config.num_epochs} epochs).')
    logging.info('Finished: %s', json.dumps(final))
    return final


def _resume(members: list[_Member], trainer: Trainer, fit: checkpoints.Fit
            ) -> tuple[Optional[TrainState], int, EpochProgress]:
  """Restores the members' latest checkpoints at one step: (the state,
  stacked when packed, its epoch and the progress into that epoch), or
  (None, 0, none) to start afresh. A mid-epoch checkpoint newer than the
  epoch checkpoints, at the same step for every member, comes first."""
  state, epoch = _resume_epoch(members, trainer, fit)
  mids = [member.restore_mid_epoch(trainer, fit) for member in members]
  start = EpochProgress.start(len(members))
  if any(mid is None for mid in mids):
    return state, epoch, start
  steps = {mid[1]['epoch'] * trainer.steps_per_epoch +
           mid[1]['step_in_epoch'] for mid in mids}
  if len(steps) != 1 or steps.pop() <= epoch * trainer.steps_per_epoch:
    return state, epoch, start
  for member, (_, meta) in zip(members, mids):
    member.best = {k: meta[k] for k in meta if k.startswith('best_')}
    member.selected = meta['selected_test_accuracy']
  meta = mids[0][1]
  progress = EpochProgress(
      meta['step_in_epoch'],
      tuple(mid[1]['train_loss_sum'] for mid in mids),
      tuple(mid[1]['train_accuracy_sum'] for mid in mids))
  return (trainer.stack([mid[0] for mid in mids]), meta['epoch'], progress)


def _resume_epoch(members: list[_Member], trainer: Trainer,
                  fit: checkpoints.Fit) -> tuple[Optional[TrainState], int]:
  """Restores the members' latest epoch checkpoints at one epoch: (the
  state, stacked when packed, and its epoch), or (None, 0) to start
  afresh."""
  restored = [member.restore(trainer, fit) for member in members]
  if any(r is None for r in restored):
    # A packed group killed during its first saves: all start afresh (the
    # epochs are deterministic; the saved steps are kept as they are).
    if len(members) > 1 and any(r is not None for r in restored):
      distributed.say('Some seeds of the group have no checkpoint; the group '
                      'starts from epoch 0.')
    for member in members:
      member.best, member.selected = {}, None
    return None, 0
  epochs = [meta['epoch'] for _, meta in restored]
  epoch = min(epochs)
  if max(epochs) != epoch:
    # Killed while saving one epoch's checkpoints: the group goes back to
    # the last epoch all of its seeds saved.
    step = epoch * trainer.steps_per_epoch
    restored = [r if r[1]['epoch'] == epoch else
                member.restore(trainer, fit, max_step=step)
                for member, r in zip(members, restored)]
  return trainer.stack([state for state, _ in restored]), epoch


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str,
                       model: Optional[registry.ResolvedModel] = None
                       ) -> dict[str, Any]:
  """Trains (resuming from the workdir's latest checkpoint) and evaluates.

  With ``config.pack_seeds`` the seeds train together (``train_seeds``),
  each in ``<workdir>/seed<k>``.

  Args:
    config: the run configuration (see configs/default.py).
    workdir: where checkpoints, metrics.jsonl and TensorBoard events go.
    model: ``validated_model(config)``, if the caller has it already.

  Returns:
    The last epoch's record plus 'final_test_accuracy' (of the first seed,
    when packed).
  """
  workdirs = run_workdirs(config, workdir)
  results = train_seeds(config, workdirs, model,
                        packed=bool(validation.pack_seeds(config)))
  return results[next(iter(workdirs))]


def run_workdirs(config: ml_collections.ConfigDict, workdir: str
                 ) -> dict[int, str]:
  """Where ``train_and_evaluate`` writes, by seed: ``workdir`` itself, or
  ``<workdir>/seed<k>`` for each seed of ``config.pack_seeds``."""
  seeds = validation.pack_seeds(config)
  if not seeds:
    return {config.seed: workdir}
  return {seed: os.path.join(workdir, f'seed{seed}') for seed in seeds}


def train_seeds(config: ml_collections.ConfigDict, workdirs: dict[int, str],
                model: Optional[registry.ResolvedModel] = None,
                packed: bool = True) -> dict[int, dict[str, Any]]:
  """Trains the seeds of ``workdirs`` (seed -> workdir) as one program: the
  train states stacked and every step vmapped over them (``packed``), each
  seed drawing what its own run would (initialisation, data order,
  augmentation, stochastic depth). Each workdir gets that seed's
  checkpoints, metrics.jsonl and config.json, as its own run writes them.
  An interrupted group resumes together, from the last epoch all of its
  seeds saved. ``packed=False``: the one seed trains unstacked.

  Returns:
    Each seed's last epoch record plus 'final_test_accuracy'.
  """
  model = model or validated_model(config)
  seeds = tuple(workdirs)
  if not packed and len(seeds) != 1:
    raise ValueError('Several seeds train packed.')
  trainer = Trainer(config, model, *load_data(config),
                    seeds=seeds if packed else None)
  fit = checkpoint_fit(config, model, trainer.steps_per_epoch)
  members = [_Member(config, seed, workdir,
                     f'seed {seed}: ' if packed else '')
             for seed, workdir in workdirs.items()]
  try:
    state, start_epoch, progress = _resume(members, trainer, fit)
    if state is None:
      state = trainer.init_state()
    else:
      where = ', '.join(m.workdir for m in members)
      steps = 'step' if progress.done == 1 else 'steps'
      into = (f', {progress.done} {steps} into epoch {start_epoch + 1}'
              if progress.done else '')
      step = start_epoch * trainer.steps_per_epoch + progress.done
      distributed.say(f'Resumed from epoch {start_epoch}{into} (step {step}) '
                      f'in {where}.')
    mixes = trainer.step_cfg.augment.mixes
    for member in members:
      member.start(start_epoch, mixes)
    packing = (f', seeds {",".join(map(str, seeds))} packed' if packed
               else '')
    distributed.say(f'{config.dataset} {model.description}: '
                    f'{trainer.num_train} train / {trainer.num_test} test '
                    f'images, {trainer.steps_per_epoch} steps per epoch, '
                    f'{jax.device_count()} device(s){packing}.')
    if trainer.teacher is not None:
      distributed.say(f'Distilling {trainer.teacher.description} '
                      f'({trainer.teacher.workdir}, best checkpoint, step '
                      f'{trainer.teacher.checkpoint_step}): alpha '
                      f'{config.distill.alpha}, temperature '
                      f'{config.distill.temperature}.')
    if mixes:
      distributed.say('Mixup/CutMix: the train loss is against the mixed '
                      'targets and the train accuracy is lam-weighted (a '
                      "prediction of the mixed-in example's class counts "
                      '1 - lam).')

    with preemption.training():
      for epoch in range(start_epoch, config.num_epochs):
        if epoch != start_epoch:
          _stop_if_asked(members, f'at the end of epoch {epoch} (step '
                         f'{epoch * trainer.steps_per_epoch}); its '
                         'checkpoint is saved')
          progress = EpochProgress.start(len(members))
        start = time.perf_counter()
        steps_run = trainer.steps_per_epoch - progress.done
        learning_rate = float(trainer.learning_rate(
            epoch * trainer.steps_per_epoch))
        state, progress = _train_epoch(trainer, state, epoch, progress,
                                       members, fit)
        train_seconds = time.perf_counter() - start
        train_metrics = progress.metrics(trainer.steps_per_epoch)
        if config.swa_start_epoch and epoch + 1 >= config.swa_start_epoch:
          state = trainer.average_swa(state)
        test_metrics = evaluate_all(trainer, state)
        step = (epoch + 1) * trainer.steps_per_epoch
        timing = {'learning_rate': learning_rate,
                  'images_per_sec': trainer.num_members * steps_run *
                                    config.batch_size / train_seconds,
                  'epoch_seconds': time.perf_counter() - start}
        for i, member in enumerate(members):
          member.end_epoch(epoch, step, trainer.member_state(state, i),
                           train_metrics[i], test_metrics[i], fit,
                           trainer.steps_per_epoch, timing)
  finally:
    for member in members:
      member.close()
  return {member.seed: member.final() for member in members}


def _stop_asked() -> bool:
  """Whether a signal asked this run to stop, on any of its processes."""
  return distributed.any_process(preemption.requested() is not None)


def _stop_if_asked(members: list[_Member], where: str) -> None:
  if _stop_asked():
    name = signal.Signals(preemption.requested() or signal.SIGTERM).name
    raise preemption.Stopped(
        f'Stopped by {name} {where} in '
        f'{", ".join(m.workdir for m in members)}. Rerun the same command '
        'to continue.', preemption.requested() or signal.SIGTERM)


def _train_epoch(trainer: Trainer, state: TrainState, epoch: int,
                 progress: EpochProgress, members: list[_Member],
                 fit: checkpoints.Fit) -> tuple[TrainState, EpochProgress]:
  """Trains the rest of an epoch; saves a mid-epoch checkpoint every
  ``checkpoint_every_steps`` steps, and where a signal stops it (then
  raises preemption.Stopped)."""
  steps_per_epoch = trainer.steps_per_epoch
  every = trainer.config.checkpoint_every_steps
  while progress.done < steps_per_epoch:
    until = steps_per_epoch
    if every:
      # The next multiple of ``every`` in the run's steps.
      global_done = epoch * steps_per_epoch + progress.done
      until = min(until, (global_done // every + 1) * every -
                  epoch * steps_per_epoch)
    state, progress = trainer.run_steps(state, epoch, progress, until,
                                        should_stop=_stop_asked)
    if progress.done == steps_per_epoch:
      break
    step = epoch * steps_per_epoch + progress.done
    for i, member in enumerate(members):
      member.save_mid_epoch(step, trainer.member_state(state, i), epoch,
                            progress.done, progress.loss_sums[i],
                            progress.acc_sums[i], fit, steps_per_epoch)
    _stop_if_asked(members, f'at epoch {epoch + 1}, step {step} '
                   f'({progress.done} of {steps_per_epoch} steps into the '
                   f'epoch), saved in {checkpoints.MID_EPOCH_DIR}/')
  return state, progress


def evaluate(config: ml_collections.ConfigDict, workdir: str,
             model: Optional[registry.ResolvedModel] = None
             ) -> dict[str, Any]:
  """Restores the best (or latest) checkpoint and evaluates the test set.

  ``model`` as in ``train_and_evaluate``.

  Raises:
    errors.ConfigError: ``pack_seeds`` is set; each seed's workdir is
      evaluated on its own.
  """
  seeds = validation.pack_seeds(config)
  if seeds:
    raise errors.ConfigError(
        f'Packed seeds are evaluated one at a time: --workdir '
        f'{os.path.join(workdir, f"seed{seeds[0]}")} '
        f'--config.seed={seeds[0]} --config.pack_seeds= (and so on for '
        f'{", ".join(map(str, seeds[1:])) or "the others"}).')
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
