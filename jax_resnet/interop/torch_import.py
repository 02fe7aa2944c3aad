"""Imports a PyTorch checkpoint of a CIFAR network as this project's checkpoint.

  python -m jax_resnet.interop.torch_import --torch-checkpoint resnet20.th \\
      --config configs/resnet20_cifar10.py --workdir runs/resnet20_imported
  python main.py --config configs/resnet20_cifar10.py \\
      --workdir runs/resnet20_imported --mode eval

The checkpoint is a ``state_dict`` (bare, or under 'state_dict', 'model' or
'net'; a DataParallel 'module.' prefix is dropped) in the layout common PyTorch
code gives the configured network:

- CIFAR ResNets, ResNet-18..152, PreAct-ResNets, ResNeXt-29 and PyramidNet:
  ``conv1``, ``bn1``, ``layer{s}.{k}.conv1`` ..., ``shortcut.0`` /
  ``shortcut.1`` (or ``downsample.0/1``) for projections (``shortcut.1/2``
  after the average pool ``shortcut.0`` of option D), ``bn`` (or
  ``bn_final``) for the final BN of pre-activation networks, ``linear`` or
  ``fc`` for the head; option-A shortcuts have no keys. Res2Net splits are
  ``convs.{i}`` / ``bns.{i}``, a ResNeSt split-attention convolution is
  ``conv2`` (``conv``, ``bn0``, ``fc1``, ``bn1``, ``fc2``).
- Wide ResNets: ``conv1``, ``block{s}.layer.{k}.bn1`` ..., ``convShortcut``,
  ``bn1``, ``fc``.
- DenseNets: ``conv1``, ``block{s}.layer.{l}.bn1`` ..., ``trans{s}.bn1`` /
  ``trans{s}.conv1``, ``bn1``, ``fc``.

Convolution weights go from OIHW to HWIO and linear weights from (out, in) to
(in, out); ``num_batches_tracked`` is ignored. Every other key must fit the
configured network: otherwise nothing is written and the error lists the
missing, unexpected and mis-shaped keys. Set ``--config.data.normalization``
to the normalisation the PyTorch model was trained with (e.g. 'imagenet').
"""

import functools
import itertools
import json
import os
import re
import sys
from typing import Any, Mapping

from absl import app
from absl import flags
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from jax_resnet import checkpoints
from jax_resnet import config_overrides
from jax_resnet import errors
from jax_resnet import exits
from jax_resnet import runtime
from jax_resnet import train
from jax_resnet import workdir_lock
from jax_resnet.models import backbone
from jax_resnet.models import densenet
from jax_resnet.models import wide_resnet

# Keys a checkpoint may nest its state_dict under (training scripts save the
# epoch and optimiser next to it).
WRAPPER_KEYS = ('state_dict', 'model', 'net')
# Prefix that torch.nn.DataParallel adds to every key.
PARALLEL_PREFIX = 'module.'
# BatchNorm's update counter: PyTorch bookkeeping with no Flax counterpart.
IGNORED_SUFFIX = 'num_batches_tracked'

# Flax module name -> PyTorch module names, the preferred spelling first. The
# residual layout is the common CIFAR ResNet / ResNet-18 / PyramidNet one.
_RESIDUAL_MODULES = {
    'stem_conv': ('conv1',),
    'stem_bn': ('bn1',),
    'final_bn': ('bn', 'bn_final'),
    'head': ('linear', 'fc'),
    'shortcut_conv': ('shortcut.0', 'downsample.0'),
    'shortcut_bn': ('shortcut.1', 'downsample.1'),
    # ResNeSt: the split-attention convolution is the bottleneck's conv2.
    'split_attention': ('conv2', 'split_attention'),
}
# Option-D shortcuts (ResNeSt's avg_down): the average pool is shortcut.0.
_AVG_DOWN_MODULES = {
    **_RESIDUAL_MODULES,
    'shortcut_conv': ('shortcut.1', 'downsample.1'),
    'shortcut_bn': ('shortcut.2', 'downsample.2'),
}
# Wide ResNets: conv1, block{s}.layer.{k} with convShortcut, bn1 before fc.
_WIDE_MODULES = {
    'stem_conv': ('conv1',),
    'final_bn': ('bn1', 'bn'),
    'head': ('fc', 'linear'),
    'shortcut_conv': ('convShortcut', 'shortcut.0'),
}
# DenseNets: conv1, block{s}.layer.{l}, trans{s}.{bn1,conv1}, bn1 before fc.
_DENSE_MODULES = {
    'stem_conv': ('conv1',),
    'final_bn': ('bn1', 'bn'),
    'head': ('fc', 'linear'),
}
_TRANSITION_MODULES = {'bn': ('bn1',), 'conv': ('conv1',)}
_LEAF_NAMES = {
    ('params', 'kernel'): 'weight',
    ('params', 'scale'): 'weight',
    ('batch_stats', 'mean'): 'running_mean',
    ('batch_stats', 'var'): 'running_var',
}
# Res2Net's split convolutions: Flax conv2_{i} / bn2_{i}, PyTorch convs.{i-1}.
_RES2NET_SPLIT = re.compile(r'(conv|bn)2_(\d+)')
_STAGE_BLOCK = re.compile(r'stage(\d+)_block(\d+)')
_STAGE_LAYER = re.compile(r'stage(\d+)_layer(\d+)')
_STAGE_TRANSITION = re.compile(r'stage(\d+)_transition')


def _residual_module(name: str, parent: str,
                     modules: Mapping[str, tuple[str, ...]] = _RESIDUAL_MODULES
                     ) -> tuple[str, ...]:
  del parent
  match = _STAGE_BLOCK.fullmatch(name)
  if match:
    return (f'layer{match[1]}.{int(match[2]) - 1}',)
  match = _RES2NET_SPLIT.fullmatch(name)
  if match:
    return (f'{match[1]}s.{int(match[2]) - 1}',)
  return modules.get(name, (name,))


_avg_down_module = functools.partial(_residual_module,
                                     modules=_AVG_DOWN_MODULES)


def _wide_module(name: str, parent: str) -> tuple[str, ...]:
  del parent
  match = _STAGE_BLOCK.fullmatch(name)
  if match:
    return (f'block{match[1]}.layer.{int(match[2]) - 1}',)
  return _WIDE_MODULES.get(name, (name,))


def _dense_module(name: str, parent: str) -> tuple[str, ...]:
  match = _STAGE_LAYER.fullmatch(name)
  if match:
    return (f'block{match[1]}.layer.{int(match[2]) - 1}',)
  match = _STAGE_TRANSITION.fullmatch(name)
  if match:
    return (f'trans{match[1]}',)
  if _STAGE_TRANSITION.fullmatch(parent):
    return _TRANSITION_MODULES.get(name, (name,))
  return _DENSE_MODULES.get(name, (name,))


# Layout name -> (module namer, what the PyTorch keys look like).
LAYOUTS = {
    'residual': (_residual_module,
                 'conv1, bn1, layer{s}.{k}.conv1, ..., shortcut.0/1, '
                 'bn (pre-activation), linear or fc'),
    'residual_avg_down': (_avg_down_module,
                          'conv1, bn1, layer{s}.{k}.conv1, ..., shortcut.1/2 '
                          '(after the shortcut.0 average pool), linear or fc'),
    'wide_resnet': (_wide_module,
                    'conv1, block{s}.layer.{k}.bn1, ..., convShortcut, bn1, '
                    'fc'),
    'densenet': (_dense_module,
                 'conv1, block{s}.layer.{l}.bn1, ..., trans{s}.bn1/conv1, '
                 'bn1, fc'),
}


def torch_layout(model: Any) -> str:
  """The PyTorch layout (a LAYOUTS key) of a Flax network."""
  if isinstance(model, densenet.DenseNet):
    return 'densenet'
  if getattr(model, 'block_cls', None) is wide_resnet.WideBlock:
    return 'wide_resnet'
  if getattr(model, 'shortcut_type', None) == 'D':
    return 'residual_avg_down'
  return 'residual'


class ConversionError(errors.Error, ValueError):
  """The PyTorch checkpoint does not fit the configured network."""


def to_numpy(tensor: Any) -> np.ndarray:
  """A PyTorch tensor (any float dtype, any device) or array as numpy."""
  if hasattr(tensor, 'detach'):
    tensor = tensor.detach().cpu()
    if tensor.is_floating_point():
      # bfloat16 has no numpy dtype; float32 is what the Flax model holds.
      tensor = tensor.float()
    # A copy: JAX may alias host memory on CPU, and PyTorch updates its
    # tensors (BatchNorm statistics, optimiser steps) in place.
    return tensor.numpy().copy()
  return np.array(tensor)


def unwrap_state_dict(checkpoint: Mapping[str, Any]) -> dict[str, np.ndarray]:
  """The bare state_dict of a loaded checkpoint, as numpy, without 'module.'."""
  if not isinstance(checkpoint, Mapping):
    raise ConversionError(f'Expected a state_dict (a dict of tensors); got '
                          f'{type(checkpoint).__name__}.')
  for key in WRAPPER_KEYS:
    if isinstance(checkpoint.get(key), Mapping):
      checkpoint = checkpoint[key]
      break
  not_tensors = sorted(k for k, v in checkpoint.items()
                       if not hasattr(v, 'shape'))
  if not_tensors:
    raise ConversionError(
        'The checkpoint is not a state_dict: '
        f'{", ".join(map(str, not_tensors[:10]))} are not tensors, and it has '
        f'none of {", ".join(WRAPPER_KEYS)} holding one.')
  if checkpoint and all(k.startswith(PARALLEL_PREFIX) for k in checkpoint):
    checkpoint = {k[len(PARALLEL_PREFIX):]: v for k, v in checkpoint.items()}
  return {k: to_numpy(v) for k, v in checkpoint.items()}


def load_torch_checkpoint(path: str) -> dict[str, np.ndarray]:
  """Reads a ``torch.save``d checkpoint and returns its bare state_dict."""
  try:
    import torch  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    raise ConversionError('Reading a PyTorch checkpoint needs PyTorch: '
                          'pip install torch (the CPU build is enough).') from e
  if not os.path.isfile(path):
    raise ConversionError(f'No PyTorch checkpoint at {path}.')
  try:
    # weights_only: a checkpoint is data; never run code pickled into it.
    checkpoint = torch.load(path, map_location='cpu', weights_only=True)
  except Exception as e:  # pylint: disable=broad-except
    # torch.load raises pickle, zip and runtime errors alike.
    raise ConversionError(
        f'Cannot read {path} as a PyTorch checkpoint ({type(e).__name__}: '
        f'{str(e).splitlines()[0] if str(e) else ""}). It must be written by '
        'torch.save and hold tensors (a state_dict), not pickled modules.'
    ) from e
  return unwrap_state_dict(checkpoint)


def torch_names(layout: str, collection: str,
                path: tuple[str, ...]) -> list[str]:
  """PyTorch keys that may hold one Flax variable, the preferred one first."""
  namer = LAYOUTS[layout][0]
  *modules, leaf = path
  parents = [''] + modules[:-1]
  choices = [namer(name, parent) for name, parent in zip(modules, parents)]
  leaf = _LEAF_NAMES.get((collection, leaf), leaf)
  return ['.'.join(parts + (leaf,)) for parts in itertools.product(*choices)]


def torch_shape(flax_shape: tuple[int, ...]) -> tuple[int, ...]:
  """The PyTorch shape of a variable with this Flax shape."""
  if len(flax_shape) == 4:  # HWIO <- OIHW.
    h, w, i, o = flax_shape
    return (o, i, h, w)
  if len(flax_shape) == 2:  # (in, out) <- (out, in).
    return tuple(reversed(flax_shape))
  return tuple(flax_shape)


def to_flax_layout(array: np.ndarray) -> np.ndarray:
  """PyTorch OIHW conv / (out, in) linear weights to Flax HWIO / (in, out)."""
  if array.ndim == 4:
    return np.transpose(array, (2, 3, 1, 0))
  if array.ndim == 2:
    return array.T
  return array


def unrolled(model: Any) -> Any:
  """The model with every block its own module (the PyTorch layout)."""
  if getattr(model, 'scan_blocks', False):
    return model.clone(scan_blocks=False)
  return model


def torch_to_flax(state_dict: Mapping[str, np.ndarray], model: Any
                  ) -> dict[str, Any]:
  """Flax ``{'params', 'batch_stats'}`` of ``model`` from a PyTorch state_dict.

  Args:
    state_dict: a bare state_dict (see unwrap_state_dict), tensors or arrays.
    model: the Flax network, e.g. ``train.resolve_model(config).module``;
      scanned blocks are filled from the per-block PyTorch keys.

  Returns:
    The variables, in the model's own layout (scanned or not).

  Raises:
    ConversionError: listing every missing, unexpected or mis-shaped key; no
      variables are returned unless all of them fit.
  """
  state_dict = {k: to_numpy(v) for k, v in state_dict.items()}
  layout = torch_layout(model)
  flat_model = unrolled(model)
  abstract = jax.eval_shape(
      lambda: flat_model.init(jax.random.PRNGKey(0),
                              jnp.zeros((1, 32, 32, 3), jnp.float32)))
  used, missing, mismatched = set(), [], []
  variables = {}
  for collection in ('params', 'batch_stats'):
    flat = {}
    leaves = jax.tree_util.tree_flatten_with_path(
        abstract.get(collection, {}))[0]
    for key_path, leaf in leaves:
      path = tuple(k.key for k in key_path)
      names = torch_names(layout, collection, path)
      name = next((n for n in names if n in state_dict), None)
      if name is None:
        missing.append(' or '.join(names))
        continue
      used.add(name)
      array = state_dict[name]
      expected = torch_shape(leaf.shape)
      if tuple(array.shape) != expected:
        mismatched.append(f'{name}: checkpoint {tuple(array.shape)}, '
                          f'network {expected}')
        continue
      flat[path] = jnp.asarray(to_flax_layout(array), leaf.dtype)
    variables[collection] = flat
  unexpected = sorted(k for k in state_dict
                      if k not in used and not k.endswith(IGNORED_SUFFIX))
  if missing or unexpected or mismatched:
    problems = []
    for title, keys in (('missing', missing), ('unexpected', unexpected),
                        ('wrong shape', mismatched)):
      if keys:
        problems.append(f'{len(keys)} {title}: ' + ', '.join(keys))
    raise ConversionError(
        'The PyTorch checkpoint does not fit the configured network '
        f'({type(model).__name__}, PyTorch keys {LAYOUTS[layout][1]}); '
        'nothing was converted. ' + '; '.join(problems) + '. Check '
        'config.model (name, block, depth, shortcut, widths) and the dataset '
        '(number of classes).')
  out = {}
  for collection, flat in variables.items():
    tree = _unflatten(flat)
    if flat_model is not model:
      tree = backbone.stack_scanned_blocks(tree)
    out[collection] = tree
  return out


def _unflatten(flat: dict[tuple[str, ...], Any]) -> dict[str, Any]:
  tree = {}
  for path, value in flat.items():
    node = tree
    for name in path[:-1]:
      node = node.setdefault(name, {})
    node[path[-1]] = value
  return tree


def convert(config: ml_collections.ConfigDict, torch_checkpoint: str,
            workdir: str) -> dict[str, Any]:
  """Writes a PyTorch checkpoint as the workdir's first checkpoint (step 0).

  The train state is what a fresh run would start from (optimiser state,
  step 0, the seed's RNG key) with the imported parameters and BatchNorm
  statistics, so ``main.py --mode eval`` evaluates it and ``--mode train``
  fine-tunes it over the configured schedule.

  Args:
    config: the run configuration the checkpoint is evaluated with.
    torch_checkpoint: path of a ``torch.save``d state_dict.
    workdir: run directory; must not hold checkpoints yet.

  Returns:
    The checkpoint's metadata.

  Raises:
    ConversionError: the checkpoint does not fit the configured network, or
      the workdir already holds checkpoints.
  """
  model = train.validated_model(config)
  for directory in (checkpoints.CHECKPOINT_DIR, checkpoints.LEGACY_BEST_DIR):
    path = os.path.join(workdir, directory)
    if os.path.isdir(path) and os.listdir(path):
      # Checkpointer.save keeps an existing step as is, so writing step 0
      # again would silently keep the old weights.
      raise ConversionError(f'{path} already holds checkpoints; import into '
                            'a new --workdir.')
  state_dict = load_torch_checkpoint(torch_checkpoint)
  variables = torch_to_flax(state_dict, model.module)

  # The training split sets steps_per_epoch, which a later --mode train
  # checks against the checkpoint.
  trainer = train.Trainer(config, model, *train.load_data(config))
  state = trainer.init_state()
  state = state.replace(params=variables['params'],
                        batch_stats=variables['batch_stats'],
                        opt_state=state.tx.init(variables['params']))
  averages = train.initial_averages(config, dict(variables))
  if averages:
    # The EMA starts at the imported weights, as a run's at its initial ones.
    state = state.replace(averages=averages)
  state = jax.device_put(state, trainer.replicated)
  # Evaluated as an epoch's end is, so that the imported network ranks by
  # its own accuracy: a fine-tuned epoch replaces it as the best checkpoint
  # only by equalling or beating it.
  metrics = train.evaluate_all(trainer, state)[0]
  best, selected, selection_accuracy = train.ranked(config, metrics, {}, None)
  meta = {'epoch': 0, **best, 'selected_test_accuracy': selected,
          'selection_metric': train.selection_metric(config),
          'test_accuracy': metrics['test_accuracy'],
          'steps_per_epoch': trainer.steps_per_epoch,
          'signature': train.run_signature(config, model),
          'imported_from': os.path.abspath(torch_checkpoint)}

  os.makedirs(workdir, exist_ok=True)
  with open(os.path.join(workdir, 'config.json'), 'w') as f:
    f.write(config.to_json(indent=2))
  ckpt = checkpoints.Checkpointer(workdir, keep=config.checkpoints_to_keep)
  try:
    ckpt.save(0, state, meta, selection_accuracy=selection_accuracy)
  finally:
    ckpt.close()
  return meta


def define_flags() -> None:
  """Defines the command-line flags of the convert command."""
  # Called by the entry points only: main.py defines --config and --workdir
  # too, and a process may import both modules.
  config_overrides.define_config_file(
      'Config file of the network to import into, e.g. '
      'configs/resnet20_cifar10.py; --config.X overrides apply.')
  flags.DEFINE_string('torch-checkpoint', None,
                      'PyTorch checkpoint (torch.save of a state_dict).')
  flags.DEFINE_string('workdir', None,
                      'Run directory to write the checkpoint into.')
  flags.mark_flags_as_required(['config', 'torch-checkpoint', 'workdir'])


def main(argv):
  runtime.start_command(argv, flags.FLAGS.config.model)
  config = flags.FLAGS.config
  workdir = flags.FLAGS.workdir
  with exits.reported(workdir), workdir_lock.WorkdirLock(
      workdir, workdir_lock.command_name()):
    meta = convert(config, flags.FLAGS['torch-checkpoint'].value, workdir)
  print(f'Imported {meta["imported_from"]} into {workdir} (checkpoint of '
        f'step 0, test accuracy {meta["test_accuracy"]:.2f}%). Evaluate it '
        f'with main.py --mode eval, the same --config and --workdir '
        f'{workdir}.')
  print(json.dumps({'workdir': workdir, 'signature': meta['signature'],
                    'test_accuracy': meta['test_accuracy']}))


def run() -> None:
  """The command: checks --config.X field names, parses flags, converts."""
  config_overrides.check_command_line(sys.argv)
  define_flags()
  app.run(main)


if __name__ == '__main__':
  run()
