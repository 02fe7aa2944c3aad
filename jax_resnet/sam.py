"""Sharpness-aware minimisation (Foret et al. 2021), as google-research/sam.

The gradient of a step is taken twice: first at the weights w, giving g; then
at the perturbed weights ``w + rho * g / ||g||`` (``||.||`` the global L2
norm over all parameters). The optimiser (SGD, Adam, AdamW, with their weight
decay) then updates w with the second gradient. The perturbation uses the
loss gradient only, without weight decay, as the PyTorch SAM (davda54/sam)
does with the decay in its base optimiser; google-research/sam puts the L2
penalty in the loss, so its perturbation includes the decay's gradient.
BatchNorm statistics are updated from the first pass only: the second
pass's are discarded.

Across devices each device perturbs with the gradient of its own part of the
batch, and the second gradients are then averaged (``jax.lax.pmean``), as
google-research/sam does under ``pmap``: with m devices this is m-sharpness
at m = the per-device batch, the variant Foret et al. found to generalise
better than perturbing with the global gradient. Inside that per-device
computation BatchNorm normalises each device's part of the batch alone, and
the new running statistics are the mean over devices; each device draws its
own stochastic depth and dropout. On one device all of this is plain SAM over
the whole batch.
"""

from typing import Any, Callable

import jax
import optax

# Added to the gradient norm, as the PyTorch SAM does, so that a zero
# gradient perturbs nothing instead of dividing by zero.
NORM_EPSILON = 1e-12


def perturbation(grads: Any, rho: float) -> Any:
  """``rho * g / ||g||``: the step to the (first-order) worst nearby
  weights."""
  scale = rho / (optax.tree.norm(grads) + NORM_EPSILON)
  return jax.tree.map(lambda g: g * scale.astype(g.dtype), grads)


def sam_gradient(loss_fn: Callable[[Any], tuple[jax.Array, Any]],
                 params: Any, rho: float
                 ) -> tuple[tuple[jax.Array, Any], Any]:
  """The SAM gradient of ``loss_fn`` (``params -> (loss, aux)``) at
  ``params``.

  Returns:
    ``((loss, aux), grads)``: the loss and aux of the first pass, at
    ``params``, and the gradient at the perturbed parameters.
  """
  (loss, aux), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
  perturbed = jax.tree.map(lambda p, e: p + e, params,
                           perturbation(grads, rho))
  sam_grads, _ = jax.grad(loss_fn, has_aux=True)(perturbed)
  return (loss, aux), sam_grads
