"""Weight averages kept beside the trained weights: EMA and SWA.

Both average the parameters and the BatchNorm statistics, ``{'params': ...,
'batch_stats': ...}``, the variables the network is evaluated with.

- EMA (``config.ema_decay``): after every step,
  ``ema = decay * ema + (1 - decay) * weights``, from the initial weights on,
  as timm's ModelEmaV2 keeps it (parameters and BatchNorm buffers alike).
- SWA (``config.swa_start_epoch``, Izmailov et al. 2018): from that epoch on
  the learning rate is the constant ``config.swa_learning_rate``, and after
  each epoch the parameters join an equal-weight running mean
  (torch.optim.swa_utils.AveragedModel). The averaged weights' BatchNorm
  statistics are then recomputed over the training set (``bn_statistics``,
  as torch.optim.swa_utils.update_bn), since averaged weights make other
  activations than any of the averaged models.
"""

from typing import Any

import jax
import jax.numpy as jnp

Variables = dict[str, Any]


def copy_of(variables: Variables) -> Variables:
  """A copy in buffers of its own (the train state's buffers are donated
  to each step, so an average must not share them)."""
  return jax.tree.map(jnp.array, variables)


def ema_update(ema: Variables, variables: Variables, decay: float
               ) -> Variables:
  """One EMA step: ``decay * ema + (1 - decay) * variables``."""
  return jax.tree.map(lambda e, v: decay * e + (1.0 - decay) * v, ema,
                      variables)


def swa_init(variables: Variables) -> Variables:
  """An empty SWA: a copy of the variables (never evaluated) and count 0."""
  return {**copy_of(variables), 'count': jnp.zeros((), jnp.int32)}


def swa_update(swa: Variables, params: Any) -> Variables:
  """Adds the current parameters to the running mean of the averaged ones
  (torch.optim.swa_utils.AveragedModel's default average)."""
  count = swa['count'] + 1
  mean = jax.tree.map(
      lambda s, p: s + (p - s) / count.astype(s.dtype), swa['params'], params)
  return {**swa, 'params': mean, 'count': count}


def network_variables(average: Variables) -> Variables:
  """What the network is applied with: the average's parameters and
  BatchNorm statistics (without SWA's count)."""
  return {'params': average['params'], 'batch_stats': average['batch_stats']}


def batch_statistics(new_stats: Variables, momentum: float) -> Variables:
  """A batch's own BatchNorm statistics, from the running statistics a
  train-mode pass made starting at zero: ``new = momentum * batch`` (the
  PyTorch momentum, the new batch's weight)."""
  return jax.tree.map(lambda s: s / momentum, new_stats)


def zero_stats(batch_stats: Variables) -> Variables:
  return jax.tree.map(jnp.zeros_like, batch_stats)
