"""Parameters, multiply-accumulates and per-stage shapes of a network.

Nothing here computes on data: parameters come from ``jax.eval_shape`` of the
initialiser and multiply-accumulates (MACs) from the jaxpr of one image's
evaluation forward pass. MACs count the convolutions (grouped ones at their
reduced cost) and dense layers: output elements times the inputs each one
sums over, a scanned block once per scan step. BatchNorm, activations,
pooling, additions, concatenations and attention softmaxes are not counted;
they add well under 1% on these networks.
"""

import collections
import functools
import math
import re
from typing import Any, Optional

import jax
import jax.numpy as jnp
import ml_collections

from jax_resnet import input_pipeline
from jax_resnet.models import registry

IMAGE_SHAPE = (32, 32, 3)


def count_params(params) -> int:
  """Number of scalars in a parameter tree."""
  return sum(int(x.size) for x in jax.tree.leaves(params))


def abstract_variables(model: Any) -> dict[str, Any]:
  """Shapes and dtypes of the model's variables, without initialising them."""
  x = jnp.zeros((1,) + IMAGE_SHAPE, jnp.float32)
  return jax.eval_shape(
      lambda: model.init(jax.random.PRNGKey(0), x, train=False))


def _as_written(model: Any) -> Any:
  """The model on XLA's convolutions, where it has a ``conv_backend``: the
  CPU kernels pad channel counts to 16 lanes (``cpu_conv``), arithmetic that
  is not the network's, so MACs are counted on the plain formulation."""
  if 'conv_backend' in getattr(model, '__dataclass_fields__', {}):
    return model.clone(conv_backend='xla')
  return model


def macs_by_module(model: Any, variables: Any) -> dict[str, int]:
  """MACs of one image's evaluation pass per top-level submodule name."""
  model = _as_written(model)
  closed = jax.make_jaxpr(functools.partial(model.apply, train=False))(
      variables, jax.ShapeDtypeStruct((1,) + IMAGE_SHAPE, jnp.float32))
  counts = collections.Counter()
  _count_jaxpr(closed.jaxpr, '', 1, counts)
  return dict(counts)


def count_macs(model: Any, variables: Any) -> int:
  """Multiply-accumulates of one image's evaluation forward pass."""
  return sum(macs_by_module(model, variables).values())


def params_and_macs(model: Any) -> tuple[int, int]:
  """(parameters, MACs of one image's forward pass) from one trace.

  ``init`` runs the evaluation forward pass to create the variables, so the
  jaxpr of ``init`` holds exactly the convolutions and dense layers that
  ``count_macs`` counts (the initialisers add none), and its output shapes
  are the variables: half the tracing of ``abstract_variables`` followed by
  ``count_macs``, which matters for the deepest networks of the zoo.
  """
  model = _as_written(model)
  x = jnp.zeros((1,) + IMAGE_SHAPE, jnp.float32)
  # Without jit the initialisers' and layers' own jitted functions are
  # traced inline, not each as a nested jaxpr: the same counts in less
  # time (PyramidNet-272: 5.3 -> 3.3 s; the whole zoo page: 34 -> 29 s).
  with jax.disable_jit():
    closed, variables = jax.make_jaxpr(
        lambda: model.init(jax.random.PRNGKey(0), x, train=False),
        return_shape=True)()
  counts = collections.Counter()
  _count_jaxpr(closed.jaxpr, '', 1, counts)
  return count_params(variables['params']), sum(counts.values())


def _eqn_macs(eqn) -> int:
  """MACs of one convolution (XLA's or the CPU kernel's) or dot product; 0
  for any other primitive."""
  name = eqn.primitive.name
  if (name == 'ffi_call' and
      eqn.params.get('target_name') == 'jax_resnet_conv_forward'):
    # The project's CPU convolution kernel: NHWC x HWIO, one group.
    kernel = eqn.invars[1].aval.shape
    return math.prod(eqn.outvars[0].aval.shape) * math.prod(kernel[:3])
  if name not in ('conv_general_dilated', 'dot_general'):
    return 0
  out_size = math.prod(eqn.outvars[0].aval.shape)
  if name == 'conv_general_dilated':
    kernel = eqn.invars[1].aval.shape
    spec = eqn.params['dimension_numbers'].rhs_spec
    # The kernel's input-feature axis already holds in_features / groups.
    return out_size * kernel[spec[1]] * math.prod(kernel[d] for d in spec[2:])
  (contracting, _), _ = eqn.params['dimension_numbers']
  lhs = eqn.invars[0].aval.shape
  return out_size * math.prod(lhs[d] for d in contracting)


def _subjaxprs(value):
  """The jaxprs held by an equation parameter (a jaxpr, or a tuple of them)."""
  if hasattr(value, 'eqns'):
    yield value
  elif hasattr(value, 'jaxpr') and hasattr(value.jaxpr, 'eqns'):
    yield value.jaxpr
  elif isinstance(value, (tuple, list)):
    for item in value:
      yield from _subjaxprs(item)


def _count_jaxpr(jaxpr, scope: str, repeat: int,
                 counts: collections.Counter) -> None:
  """Adds the jaxpr's MACs, times ``repeat``, to counts by top-level module."""
  for eqn in jaxpr.eqns:
    # Name stacks inside a sub-jaxpr are relative to the calling equation.
    stack = '/'.join(filter(None, (scope, str(eqn.source_info.name_stack))))
    macs = _eqn_macs(eqn)
    if macs:
      parts = stack.split('/')
      # parts[0] is the network itself; parts[1] its direct submodule.
      counts[parts[1] if len(parts) > 1 else parts[0]] += repeat * macs
    if eqn.primitive.name == 'cond':
      # One branch runs: count the costliest.
      options = []
      for branch in _subjaxprs(eqn.params['branches']):
        option = collections.Counter()
        _count_jaxpr(branch, stack, repeat, option)
        options.append(option)
      counts.update(max(options, key=lambda c: sum(c.values())))
      continue
    times = repeat * (eqn.params['length'] if eqn.primitive.name == 'scan'
                      else 1)
    for value in eqn.params.values():
      for sub in _subjaxprs(value):
        _count_jaxpr(sub, stack, times, counts)


def _natural_order(name: str) -> list[tuple[int, Any]]:
  return [(0, int(t)) if t.isdigit() else (1, t)
          for t in re.split(r'(\d+)', name)]


def _format_macs(macs: int) -> str:
  return f'{macs / 1e6:,.2f}M'


def summarize(config: ml_collections.ConfigDict,
              resolved: Optional[registry.ResolvedModel] = None) -> str:
  """Parameters and MACs, plus per-stage rows where the network has stages.

  ``resolved`` is the config's network if the caller has resolved it.
  """
  resolved = resolved or registry.resolve(
      config.model, input_pipeline.num_classes(config.dataset))
  model = resolved.module
  variables = abstract_variables(model)
  x = jnp.zeros((1,) + IMAGE_SHAPE, jnp.float32)
  _, state = jax.eval_shape(
      lambda v: model.apply(v, x, train=False, capture_intermediates=True,
                            mutable=['intermediates']), variables)
  params = variables['params']
  intermediates = state['intermediates']
  macs = macs_by_module(model, variables)
  total = count_params(params)
  if resolved.name == 'cifar_resnet':
    title = (f'{config.dataset} ResNet-{resolved.settings.depth}, block '
             f'{resolved.settings.block}, shortcut {model.shortcut_type}')
  else:
    title = f'{config.dataset} {resolved.description} ({resolved.name})'
  if resolved.block_kwargs:
    title += ', ' + ', '.join(f'{k}={v}'
                              for k, v in sorted(resolved.block_kwargs.items()))
  lines = [
      f'{title}: {total:,} parameters',
      f'{sum(macs.values()):,} multiply-accumulates per image (convolutions '
      'and dense layers)',
  ]
  stage_sizes = getattr(model, 'stage_sizes', None)
  if not stage_sizes:
    return '\n'.join(lines)

  def output_shape(module_names):
    # A stage's output is its last module's: in natural order (block2 <
    # block10, layer16 < transition), which is the order they run in.
    last = max((n for n in intermediates if n in module_names),
               key=_natural_order)
    output = jax.tree.leaves(intermediates[last]['__call__'][0])[0]
    return 'x'.join(str(d) for d in output.shape[1:])

  def row(label, size, prefixes):
    names = [k for k in params if k.startswith(prefixes)]
    return (label, size, output_shape(names),
            sum(count_params(params[k]) for k in names),
            sum(v for k, v in macs.items() if k.startswith(prefixes)))

  rows = [row('stem', '-', ('stem_',))]
  rows += [row(f'stage{s}', str(size), (f'stage{s}_',))
           for s, size in enumerate(stage_sizes, start=1)]
  head = ('pool+head', '-', str(model.num_classes),
          sum(count_params(params[k]) for k in ('head', 'final_bn')
              if k in params),
          macs.get('head', 0))
  rows.append(head)
  lines.append(f'{"layer":<10} {"blocks":>6} {"output":>10} '
               f'{"parameters":>12} {"MACs":>10}')
  lines += [f'{n:<10} {b:>6} {s:>10} {p:>12,} {_format_macs(m):>10}'
            for n, b, s, p, m in rows]
  return '\n'.join(lines)
