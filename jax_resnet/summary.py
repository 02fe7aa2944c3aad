"""Parameter count and per-stage output shapes of a configured network."""

import jax
import jax.numpy as jnp
import ml_collections

from jax_resnet import input_pipeline
from jax_resnet import models


def count_params(params) -> int:
  """Number of scalars in a parameter tree."""
  return sum(int(x.size) for x in jax.tree.leaves(params))


def summarize(config: ml_collections.ConfigDict) -> str:
  """A table of parameters and output shapes per stage; no compute."""
  model = models.create_model(config.model,
                              input_pipeline.num_classes(config.dataset))
  x = jnp.zeros((1, 32, 32, 3), jnp.float32)
  variables = jax.eval_shape(
      lambda: model.init(jax.random.PRNGKey(0), x, train=False))
  _, state = jax.eval_shape(
      lambda v: model.apply(v, x, train=False, capture_intermediates=True,
                            mutable=['intermediates']), variables)
  params = variables['params']
  intermediates = state['intermediates']

  def shape_of(name):
    return 'x'.join(str(d) for d in intermediates[name]['__call__'][0].shape[1:])

  rows = [('stem', '-', shape_of('stem_conv'),
           sum(count_params(v) for k, v in params.items()
               if k.startswith('stem_')))]
  for stage, size in enumerate(model.stage_sizes, start=1):
    prefix = f'stage{stage}_'
    rows.append((f'stage{stage}', str(size), shape_of(f'{prefix}block{size}'),
                 sum(count_params(v) for k, v in params.items()
                     if k.startswith(prefix))))
  head = ['head'] + (['final_bn'] if 'final_bn' in params else [])
  rows.append(('pool+head', '-', str(model.num_classes),
               sum(count_params(params[k]) for k in head)))
  total = count_params(params)
  lines = [
      f'{config.dataset} ResNet-{config.model.depth}, block '
      f'{config.model.block}, shortcut {model.shortcut_type}: '
      f'{total:,} parameters',
      f'{"layer":<10} {"blocks":>6} {"output":>10} {"parameters":>12}',
  ]
  lines += [f'{n:<10} {b:>6} {s:>10} {p:>12,}' for n, b, s, p in rows]
  return '\n'.join(lines)
