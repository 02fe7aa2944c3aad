"""Weight averages kept beside the trained weights: EMA and SWA.

Both average the parameters and the BatchNorm statistics, ``{'params': ...,
'batch_stats': ...}``, the variables the network is evaluated with.

- EMA (``config.ema_decay``): after every step,
  ``ema = decay * ema + (1 - decay) * weights``, from the initial weights on,
  as timm's ModelEmaV2 keeps it (parameters and BatchNorm buffers alike).
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
