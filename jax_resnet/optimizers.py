"""The optimisers, with PyTorch's semantics (torch.optim) in optax.

- 'sgd': torch.optim.SGD: L2 weight decay added to the gradient before
  momentum, optional Nesterov.
- 'adam': torch.optim.Adam: L2 weight decay added to the gradient, then Adam.
- 'adamw': torch.optim.AdamW: decoupled weight decay, ``p -= lr * wd * p``
  beside the Adam step (Loshchilov & Hutter).

The learning rate follows ``schedules.learning_rate_fn``.
"""

import jax
import ml_collections
import optax

from jax_resnet import schedules

OPTIMIZERS = ('sgd', 'adam', 'adamw')
WEIGHT_DECAY_TARGETS = ('all', 'conv_dense')


def _decay_mask(config: ml_collections.ConfigDict):
  if config.optimizer.weight_decay_on == 'conv_dense':
    return lambda params: jax.tree.map(lambda p: p.ndim > 1, params)
  return None


def create_optimizer(config: ml_collections.ConfigDict,
                     steps_per_epoch: int) -> optax.GradientTransformation:
  """The optimiser of ``config.optimizer`` on its learning-rate schedule."""
  opt = config.optimizer
  learning_rate = schedules.learning_rate_fn(config, steps_per_epoch)
  decay = optax.add_decayed_weights(opt.weight_decay,
                                    mask=_decay_mask(config))
  if opt.name == 'sgd':
    return optax.chain(decay, optax.sgd(learning_rate=learning_rate,
                                        momentum=opt.momentum or None,
                                        nesterov=opt.nesterov))
  b1, b2 = opt.betas
  adam = optax.scale_by_adam(b1=b1, b2=b2, eps=opt.eps)
  # Adam: the decay joins the gradient; AdamW: it joins the Adam step.
  parts = [decay, adam] if opt.name == 'adam' else [adam, decay]
  return optax.chain(*parts, optax.scale_by_learning_rate(learning_rate))
