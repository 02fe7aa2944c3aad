"""Gradient norms reaching the stem and each block, at init and after SGD.

  python -m jax_resnet.tools.gradflow --config configs/plain20_cifar10.py
  python -m jax_resnet.tools.gradflow --config configs/resnet20_cifar10.py \
      --blocks plain,basic --depths 20,56,110 --steps 50 \
      --out runs/gradflow/plain_vs_basic

Both are measured on one fixed batch of training images (the first
``batch_size`` of the configured dataset, normalised, not augmented), for the
batch's mean cross-entropy L, with BatchNorm in training mode as in a train
step:

- activation gradient: ||dL/dh||, the L2 norm over the whole batch of the
  gradient with respect to the output h of the stem (the first block's input)
  and of every block: the signal that reaches that depth from the loss.
- parameter gradient: ||dL/dθ|| over the parameters of the stem (stem_conv,
  stem_bn) and of each block: the gradient SGD applies to them, before weight
  decay and momentum.

Each is measured at initialisation and, with ``--steps N``, again after N
training steps of the config's optimiser (``train.train_step``, with its
augmentation) on the following training images. ``--blocks``, ``--depths`` and
``--compare`` (more config files) put several networks in one figure;
``--config.FIELD=VALUE`` overrides apply to all. Writes ``gradflow.json`` and
``gradflow.png`` (norm against position, log scale: 0 is the stem, b block b)
into ``--out``.
"""

import functools
import json
import os
import sys
from typing import Any, Optional, Sequence

from absl import app
from absl import flags
import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
from ml_collections import config_flags
import numpy as np

from jax_resnet.models import blocks
from jax_resnet import config_overrides
from jax_resnet import errors
from jax_resnet import input_pipeline
from jax_resnet.models import layers
from jax_resnet import runtime
from jax_resnet import train

STEM = 'stem'
KINDS = ('activation', 'parameter')
KIND_LABELS = {'activation': '‖∂L/∂h‖, h = output of the stem / block',
               'parameter': '‖∂L/∂θ‖, θ = parameters of the stem / block'}
# Training examples of both CIFAR datasets: the optimiser's schedule is that of
# a full run, whose epoch has this many examples.
CIFAR_TRAIN_EXAMPLES = 50_000


def _probe_shapes(model: nn.Module, variables: Any,
                  images: jax.Array) -> dict[str, tuple[int, ...]]:
  """Shapes of the stem's output and every block's output, in call order."""
  shapes = {}

  def record(next_fun, args, kwargs, context):
    out = next_fun(*args, **kwargs)
    if _is_block_call(context):
      if not shapes:
        shapes[STEM] = args[0].shape
      shapes[context.module.name] = out.shape
    return out

  def forward():
    with nn.intercept_methods(record):
      return model.apply(variables, images, train=True,
                         mutable=['batch_stats'],
                         rngs={layers.TRAINING_RNG: jax.random.PRNGKey(0)})

  jax.eval_shape(forward)
  return shapes


def _is_block_call(context) -> bool:
  # Blocks are the backbone's direct children; a block's own submodules and
  # methods pass through untouched.
  return (context.method_name == '__call__' and
          isinstance(context.module, blocks.ResidualBlock) and
          len(context.module.scope.path) == 1)


def _tree_norm(tree: Any) -> jax.Array:
  return jnp.sqrt(sum(jnp.sum(jnp.square(x.astype(jnp.float32)))
                      for x in jax.tree.leaves(tree)))


def gradient_norm_fn(model: nn.Module, variables: Any, images: jax.Array):
  """A jitted ``(params, batch_stats, images, labels, rng) -> norms``.

  Returns:
    The function, whose dict holds the loss, the head's parameter-gradient
    norm and 'activation' / 'parameter' norm arrays over the positions; and
    the position names: 'stem', then the blocks in call order.
  """
  shapes = _probe_shapes(model, variables, images)
  if not shapes:
    raise errors.ConfigError(
        'No residual blocks found: gradient flow needs a network built from '
        'jax_resnet.blocks (cifar_resnet, resnet, resnext, wide_resnet, '
        'pyramidnet).')
  positions = list(shapes)
  first_block = positions[1]
  num_classes = model.num_classes

  def loss_fn(params, probes, batch_stats, images, labels, rng):
    # A zero probe added to an activation receives the activation's gradient.
    def add_probes(next_fun, args, kwargs, context):
      if not _is_block_call(context):
        return next_fun(*args, **kwargs)
      x, *rest = args
      if context.module.name == first_block:
        x = x + probes[STEM]
      return next_fun(x, *rest, **kwargs) + probes[context.module.name]

    with nn.intercept_methods(add_probes):
      logits, _ = model.apply(
          {'params': params, 'batch_stats': batch_stats}, images, train=True,
          mutable=['batch_stats'], rngs={layers.TRAINING_RNG: rng})
    return train.cross_entropy(logits, labels, num_classes).mean()

  def norms(params, batch_stats, images, labels, rng):
    probes = {name: jnp.zeros(shape, jnp.float32)
              for name, shape in shapes.items()}
    loss, (param_grads, probe_grads) = jax.value_and_grad(
        loss_fn, argnums=(0, 1))(params, probes, batch_stats, images, labels,
                                 rng)
    param_grads = dict(param_grads)
    param_grads[STEM] = {k: v for k, v in param_grads.items()
                         if k.startswith(STEM)}
    return {
        'loss': loss,
        'activation': jnp.stack([_tree_norm(probe_grads[p])
                                 for p in positions]),
        'parameter': jnp.stack([_tree_norm(param_grads[p])
                                for p in positions]),
        'head': _tree_norm(param_grads.get('head', {})),
    }

  return jax.jit(norms), positions


def _as_floats(values: Any) -> Any:
  return np.asarray(values, np.float64).tolist()


def measure(config: ml_collections.ConfigDict, train_split: Any,
            batch_size: int, steps: int) -> dict[str, Any]:
  """Gradient norms of one configured network, at init and after ``steps``.

  Args:
    config: the run config (model, dataset, optimiser, seed).
    train_split: training examples; the first ``batch_size`` are the
      measured batch, the SGD steps take the following ones (cycling).
    batch_size: images in the measured batch and in each SGD step.
    steps: SGD steps between the two measurements (0: init only).

  Returns:
    A JSON-ready dict: the network, the position names, and for 'init' (and
    'trained') the loss and the 'activation' / 'parameter' norm lists.
  """
  config = config_overrides.apply(config, {'model.scan_blocks': False,
                                           'batch_size': batch_size})
  resolved = train.resolve_model(config)
  model = resolved.module
  print(f'{resolved.description} on {config.dataset}: {batch_size} images, '
        f'{steps} steps.', flush=True)
  steps_per_epoch = max(
      (config.data.train_examples or CIFAR_TRAIN_EXAMPLES) // batch_size, 1)
  state = train.create_train_state(config, model, steps_per_epoch)
  cfg = train.step_config(config)
  mean, std = np.asarray(cfg.mean), np.asarray(cfg.std)
  images = input_pipeline.normalize(train_split.images[:batch_size], mean,
                                    std, cfg.dtype)
  labels = jnp.asarray(train_split.labels[:batch_size])
  norms_fn, positions = gradient_norm_fn(
      model, {'params': state.params, 'batch_stats': state.batch_stats},
      images)
  measure_rng = jax.random.PRNGKey(config.seed + 1)

  def snapshot(state):
    result = jax.device_get(norms_fn(state.params, state.batch_stats, images,
                                     labels, measure_rng))
    return {'step': int(state.step), 'loss': float(result['loss']),
            'activation': _as_floats(result['activation']),
            'parameter': _as_floats(result['parameter']),
            'head_parameter': float(result['head'])}

  result = {
      'label': f'{config.model.block}-{config.model.depth}',
      'network': resolved.description,
      'block': config.model.block, 'depth': config.model.depth,
      'dataset': config.dataset, 'seed': config.seed,
      'positions': positions, 'init': snapshot(state),
  }
  if steps:
    step_fn = jax.jit(functools.partial(train.train_step, cfg=cfg),
                      donate_argnums=0)
    n = train_split.num_examples
    losses = []
    for i in range(steps):
      idx = np.arange(batch_size * (i + 1), batch_size * (i + 2)) % n
      state, metrics = step_fn(state, {
          'image': jnp.asarray(train_split.images[idx]),
          'label': jnp.asarray(train_split.labels[idx])})
      losses.append(metrics['train_loss'])
    result['train_loss'] = _as_floats(jax.device_get(losses))
    result['trained'] = snapshot(state)
  return result


def plot(path: str, results: Sequence[dict[str, Any]]) -> None:
  """Norm against position, log scale: a column per kind, a row per time."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top

  times = ['init'] + (['trained'] if all('trained' in r for r in results)
                      else [])
  fig, axes = plt.subplots(len(times), len(KINDS),
                           figsize=(6.5 * len(KINDS), 4.2 * len(times)),
                           squeeze=False)
  colors = plt.rcParams['axes.prop_cycle'].by_key()['color']
  depths = list(dict.fromkeys(r['depth'] for r in results))
  block_names = list(dict.fromkeys(r['block'] for r in results))
  styles = ('-', '--', ':', '-.')
  for row, time in enumerate(times):
    for col, kind in enumerate(KINDS):
      ax = axes[row, col]
      for r in results:
        values = r[time][kind]
        # Same depth, same colour; same block, same line style.
        ax.plot(range(len(values)), values,
                styles[block_names.index(r['block']) % len(styles)],
                color=colors[depths.index(r['depth']) % len(colors)],
                label=r['label'])
      ax.set_yscale('log')
      when = ('at initialisation' if time == 'init' else
              f'after {results[0][time]["step"]} SGD steps')
      ax.set_title(f'{KIND_LABELS[kind]}\n{when}')
      ax.set_xlabel('position (0 = stem, b = block b)')
      ax.set_ylabel('L2 norm')
      ax.grid(alpha=0.3, which='both')
      ax.legend(fontsize='small')
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)


def variants(configs: Sequence[ml_collections.ConfigDict],
             block_names: Sequence[str], depths: Sequence[int]
             ) -> list[ml_collections.ConfigDict]:
  """Every config with every block and depth (empty: the config's own)."""
  out = []
  for config in configs:
    for block in block_names or [config.model.block]:
      for depth in depths or [config.model.depth]:
        out.append(config_overrides.apply(
            config, {'model.block': block, 'model.depth': depth}))
  return out


def run(configs: Sequence[ml_collections.ConfigDict], out: str,
        steps: int = 0, batch_size: Optional[int] = None) -> dict[str, Any]:
  """Measures every config; writes gradflow.json and gradflow.png to ``out``.

  Args:
    configs: the networks to compare.
    out: output directory.
    steps: SGD steps between the two measurements.
    batch_size: images per batch; default the first config's batch_size.

  Returns:
    What gradflow.json holds.
  """
  batch_size = batch_size or configs[0].batch_size
  splits = {}
  results = []
  for config in configs:
    key = (config.dataset, config.data_dir, config.data.download)
    if key not in splits:
      available = config.data.train_examples or None
      wanted = batch_size * (steps + 1)
      splits[key] = input_pipeline.load_split(
          config.dataset, 'train', data_dir=config.data_dir or None,
          download=config.data.download,
          max_examples=min(wanted, available or wanted))
    if splits[key].num_examples < batch_size:
      raise errors.ConfigError(f'{splits[key].num_examples} training '
                               f'examples make no batch of {batch_size}.')
    results.append(measure(config, splits[key], batch_size, steps))
    jax.clear_caches()
  summary = {
      'batch_size': batch_size, 'steps': steps,
      'activation': 'L2 norm of dL/dh over the batch, h = output of the stem '
                    'and of each block; L = mean cross-entropy of the batch, '
                    'BatchNorm in training mode',
      'parameter': 'L2 norm of dL/dθ over the stem parameters and each '
                   "block's parameters",
      'results': results,
  }
  os.makedirs(out, exist_ok=True)
  with open(os.path.join(out, 'gradflow.json'), 'w') as f:
    json.dump(summary, f, indent=1)
  plot(os.path.join(out, 'gradflow.png'), results)
  return summary


def define_flags() -> None:
  """Defines the command-line flags of the gradflow command."""
  config_overrides.define_config_file(
      'Config file, e.g. configs/plain20_cifar10.py; --config.FIELD=VALUE '
      'overrides apply to every network.')
  flags.DEFINE_list('compare', [], 'More config files in the same figure.')
  flags.DEFINE_list('blocks', [], 'Blocks to compare, e.g. plain,basic '
                    "(default: each config's).")
  flags.DEFINE_list('depths', [], 'Depths to compare, e.g. 20,56,110 '
                    "(default: each config's).")
  flags.DEFINE_integer('steps', 0, 'SGD steps before the second '
                       'measurement; 0 measures at initialisation only.')
  flags.DEFINE_integer('batch_size', None, 'Images per batch (default: the '
                       "config's batch_size).")
  flags.DEFINE_string('out', None, 'Output directory (default: '
                      'runs/gradflow/<config file name>).')
  flags.mark_flags_as_required(['config'])


def main(argv):
  runtime.start_command(argv, flags.FLAGS.config.model)
  args = flags.FLAGS
  config_path = config_flags.get_config_filename(args['config'])
  name = os.path.splitext(os.path.basename(config_path))[0]
  out = args.out or os.path.join('runs', 'gradflow', name)
  try:
    overrides = config_flags.get_override_values(args['config'])
    configs = [args.config] + [
        config_overrides.apply(config_overrides.load_config_file(path),
                               overrides) for path in args.compare]
    try:
      depths = [int(d) for d in args.depths]
    except ValueError:
      raise errors.ConfigError(
          f'--depths must be integers; got {args.depths}.') from None
    configs = variants(configs, args.blocks, depths)
    from jax_resnet import validation  # pylint: disable=g-import-not-at-top
    for config in configs:
      validation.validate_config(config)
    if args.steps < 0:
      raise errors.ConfigError(
          f'--steps must be at least 0; got {args.steps}.')
    summary = run(configs, out, args.steps, args.batch_size)
  except errors.Error as e:
    print(f'error: {e}', file=sys.stderr)
    sys.exit(1)
  for result in summary['results']:
    for time in ('init', 'trained'):
      if time in result:
        r = result[time]
        print(f'{result["label"]:>16} {time:>7} (step {r["step"]}): stem '
              f'activation {r["activation"][0]:.3g}, parameter '
              f'{r["parameter"][0]:.3g}; last block activation '
              f'{r["activation"][-1]:.3g}; loss {r["loss"]:.3f}')
  print(f'Wrote {os.path.join(out, "gradflow.json")} and gradflow.png.')


if __name__ == '__main__':
  runtime.restart_with_process_settings()
  config_overrides.check_command_line(sys.argv)
  define_flags()
  app.run(main)
