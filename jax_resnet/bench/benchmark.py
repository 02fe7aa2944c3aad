"""Train-step and eval throughput: JAX with XLA's convolutions, JAX with the
project's CPU kernels, and PyTorch, side by side.

  python -m jax_resnet.bench.benchmark                  # ResNet-20/56/110, all three
  python -m jax_resnet.bench.benchmark --depths=20 --frameworks=jax_kernels,torch
  python -m jax_resnet.bench.benchmark --depths= --networks=wrn16_8_cifar10
  python -m jax_resnet.bench.benchmark --config.model.scan_blocks=True  # a lever
  python -m jax_resnet.bench.benchmark --depths=20 --ops   # + per-op budget
  python -m jax_resnet.bench.benchmark --dtypes=float32,bfloat16  # + bf16

Frameworks: ``jax_xla`` (``model.conv_backend=xla``, with the project's XLA
CPU flags), ``jax_kernels`` (``model.conv_backend=cpu_kernels``, the
``cpu_conv`` kernels) and ``torch``. Networks: CIFAR ResNets by depth
(``--depths``, option A) and any config under ``configs/`` with a PyTorch
reference (``--networks``: cifar_resnet, wide_resnet, pyramidnet
and densenet configs).
Dtypes (``--dtypes``): ``float32``, and ``bfloat16``, which is
``model.dtype=bfloat16`` for JAX (mixed precision: bf16 activations and
convolution operands, float32 parameters) and ``torch.autocast`` to bf16 for
PyTorch; each row's ratio is to PyTorch in the same dtype, and a bf16 row's
last ratio is to PyTorch in float32.

Every (framework, network) runs in its own child process, so compile caches
and peak memory (max RSS of that child) are its own. JAX times the project's
jitted ``train.train_step`` (on-device crop + flip + normalisation, forward,
backward, SGD update) with the project's platform settings; PyTorch times the
same network (channels_last, forward, backward, SGD step) on an already
normalised batch. Throughput is steady state: compile and warm-up steps are
excluded and reported separately, and each figure is the median of
``--repeats`` timed windows of ``--steps`` steps (``--eval_steps`` batches),
which keeps a one-off stall out of it (``timing``); a worker's JSON also
lists every training window (``step_window_ms``), to tell a stall from a
process that is slower throughout.
"""

import json
import os
import statistics
import subprocess
import sys
import time

from absl import app
from absl import flags

from jax_resnet.bench import op_profile
from jax_resnet.bench import timing

_DEPTHS = flags.DEFINE_list('depths', ['20', '56', '110'],
                            'CIFAR ResNet depths (6n+2).')
_NETWORKS = flags.DEFINE_list(
    'networks', [], 'More networks: config names under configs/ (e.g. '
    'wrn16_8_cifar10, densenet_bc100_k12_cifar10).')
FRAMEWORKS = ('jax_xla', 'jax_kernels', 'torch')
_FRAMEWORKS = flags.DEFINE_list('frameworks', list(FRAMEWORKS),
                                'Any of ' + ', '.join(FRAMEWORKS) + '.')
DTYPES = ('float32', 'bfloat16')
_DTYPES = flags.DEFINE_list('dtypes', ['float32'],
                            'Any of float32, bfloat16 (JAX: model.dtype; '
                            'PyTorch: autocast).')
_BATCH_SIZE = flags.DEFINE_integer('batch_size', 128, 'Training batch size.')
_EVAL_BATCH_SIZE = flags.DEFINE_integer('eval_batch_size', 500,
                                        'Evaluation batch size.')
_STEPS = flags.DEFINE_integer('steps', 8, 'Timed training steps per window.',
                              lower_bound=1)
_EVAL_STEPS = flags.DEFINE_integer('eval_steps', 4,
                                   'Timed eval batches per window.',
                                   lower_bound=1)
_REPEATS = flags.DEFINE_integer(
    'repeats', 5, 'Timed windows; each figure is the median window\'s.',
    lower_bound=1)
_WARMUP = flags.DEFINE_integer('warmup', 3, 'Untimed steps after compile.')
_THREADS = flags.DEFINE_integer('torch_threads', 0,
                                'PyTorch intra-op threads; 0 = all cores.')
_NO_PROJECT_FLAGS = flags.DEFINE_bool(
    'no_project_flags', False, 'JAX without the project XLA CPU flags (XLA '
    'defaults), to measure what they give.')
_OPS = flags.DEFINE_bool(
    'ops', False, 'Also time every op of the step on its own (convolution '
    'forward / input / kernel gradient, BatchNorm, add+ReLU) in every '
    'framework and print where the step time goes (op_profile; CIFAR '
    'ResNets, float32 only).')
_CONVS = flags.DEFINE_list(
    'convs', [], 'Also time the 3x3 stride-1 convolution from C to C '
    'channels at these HxC shapes (e.g. 8x512,16x256; forward, input '
    'gradient and kernel gradient, each jitted on its own, batch '
    '--batch_size) in every framework and dtype.')
_WORKER = flags.DEFINE_string('worker', None, 'Internal: FRAMEWORK:NETWORK:'
                              'DTYPE (FRAMEWORK, FRAMEWORK_ops or '
                              'FRAMEWORK_convs, whose NETWORK is the '
                              '--convs shapes); prints one JSON line.')

# The conv backend of each JAX framework.
CONV_BACKENDS = {'jax_xla': 'xla', 'jax_kernels': 'cpu_kernels'}


def define_config_flag() -> None:
  """``--config.FIELD=VALUE``: overrides of every JAX run's config.

  Defined by the command only (a process, such as the tests, may import
  modules that define ``--config`` too).
  """
  from jax_resnet import config_overrides  # pylint: disable=g-import-not-at-top
  config_overrides.define_config_dict(
      config_overrides.default_config(),
      'Overrides of the network (both frameworks) and of the JAX step, '
      'e.g. --config.model.block=gated, --config.model.scan_blocks=True '
      '(the dtype is --dtypes).')


def config_overrides_given() -> dict[str, object]:
  """The ``--config.FIELD`` values of the command line ({} without one)."""
  from ml_collections import config_flags  # pylint: disable=g-import-not-at-top
  if 'config' not in flags.FLAGS:
    return {}
  return dict(config_flags.get_override_values(flags.FLAGS['config']))


def _setup_jax(framework: str, dtype: str = 'float32') -> None:
  """XLA flags for the framework's conv backend and the dtype, unless
  --no_project_flags."""
  from jax_resnet import runtime  # pylint: disable=g-import-not-at-top
  if not _NO_PROJECT_FLAGS.value:
    runtime.configure(CONV_BACKENDS[framework], dtype)


def _setup_torch():
  """Imports torch with the --torch_threads setting; returns the module."""
  import torch  # pylint: disable=g-import-not-at-top
  if _THREADS.value:
    torch.set_num_threads(_THREADS.value)
  return torch


def network_config(network: str):
  """The config of a network key (a CIFAR ResNet depth or a config name),
  with the command line's ``--config.FIELD`` overrides: the JAX step's
  settings, and the network both frameworks build."""
  import importlib  # pylint: disable=g-import-not-at-top
  from configs import default  # pylint: disable=g-import-not-at-top
  from jax_resnet import config_overrides  # pylint: disable=g-import-not-at-top
  if network.isdigit():
    config = default.get_config()
    config.model.depth = int(network)
  else:
    config = importlib.import_module(f'configs.{network}').get_config()
  return config_overrides.apply(config, config_overrides_given())


def resolve_network(network: str):
  """The resolved network of a network key (XLA convolutions: nothing is
  computed or loaded, so the parent process leaves JAX alone)."""
  from jax_resnet.models import registry  # pylint: disable=g-import-not-at-top
  model_config = network_config(network).model
  model_config.conv_backend = 'xla'
  return registry.resolve(model_config, 10)


def network_name(network: str) -> str:
  """A display name, e.g. 'ResNet-20' or 'WRN-16-8'."""
  if network.isdigit():
    return f'ResNet-{network}'
  return resolve_network(network).description


def torch_model(network: str, num_classes: int = 10):
  """The PyTorch reference of a network key."""
  from jax_resnet.interop import torch_reference  # pylint: disable=g-import-not-at-top
  resolved = resolve_network(network)
  block, depth = resolved.settings.block, resolved.settings.depth
  kwargs = resolved.hyperparameters
  if (resolved.name == 'cifar_resnet' and block in torch_reference.BLOCKS and
      resolved.module.stem == 'cifar'):
    # The config's layout: stages, widths, shortcut and block settings.
    module = resolved.module
    return torch_reference.ResNet(
        torch_reference.BLOCKS[block], module.stage_sizes, num_classes,
        module.shortcut_type, module.final_survival_probability,
        stage_planes=module.stage_planes, stem_planes=module.stem_planes,
        **dict(module.block_kwargs))
  if resolved.name == 'wide_resnet':
    return torch_reference.WideResNet(depth, kwargs['widen_factor'],
                                      num_classes, kwargs['dropout_rate'])
  if resolved.name == 'densenet' and block == 'bottleneck':
    return torch_reference.DenseNetBC(depth, kwargs['growth_rate'],
                                      kwargs['compression'], num_classes,
                                      kwargs['dropout_rate'])
  if resolved.name == 'pyramidnet':
    return torch_reference.PyramidNet(depth, kwargs['pyramid_alpha'],
                                      num_classes,
                                      bottleneck=block == 'bottleneck')
  raise app.UsageError(f'No PyTorch reference for {network!r} in the '
                       'benchmark: use cifar_resnet (with a built-in block '
                       'and the CIFAR stem), wide_resnet, pyramidnet or '
                       'densenet (bottleneck) configs.')


def jax_worker(framework: str, network: str, dtype: str
               ) -> dict[str, float]:
  """Times the project's train and eval steps for one network."""
  _setup_jax(framework, dtype)
  # pylint: disable=g-import-not-at-top
  import functools
  import jax
  import numpy as np
  from jax_resnet import config_overrides
  from jax_resnet import train
  # pylint: enable=g-import-not-at-top

  config = network_config(network)
  config.dataset = 'cifar10'
  config.batch_size = _BATCH_SIZE.value
  config.model.conv_backend = CONV_BACKENDS[framework]
  config.model.dtype = dtype
  config = config_overrides.apply(config, config_overrides_given())
  model = train.resolve_model(config).module
  state = train.create_train_state(config, model, steps_per_epoch=390)
  cfg = train.step_config(config)
  rng = np.random.default_rng(0)
  batch = jax.device_put({
      'image': rng.integers(0, 256, (config.batch_size, 32, 32, 3), np.uint8),
      'label': rng.integers(0, 10, (config.batch_size,), np.int32)})
  step = jax.jit(functools.partial(train.train_step, cfg=cfg),
                 donate_argnums=0)
  start = time.perf_counter()
  compiled = step.lower(state, batch).compile()
  compile_seconds = time.perf_counter() - start
  for _ in range(_WARMUP.value):
    state, metrics = compiled(state, batch)
  jax.block_until_ready(metrics)

  def train_once():
    nonlocal state
    state, m = compiled(state, batch)
    return m

  step_windows = timing.window_seconds(train_once, _STEPS.value,
                                       _REPEATS.value, jax.block_until_ready)
  step_seconds = statistics.median(step_windows)

  eval_batch = jax.device_put({
      'image': rng.integers(0, 256, (_EVAL_BATCH_SIZE.value, 32, 32, 3),
                            np.uint8),
      'label': rng.integers(0, 10, (_EVAL_BATCH_SIZE.value,), np.int32),
      'mask': np.ones((_EVAL_BATCH_SIZE.value,), np.float32)})
  evaluate = jax.jit(functools.partial(train.eval_step, cfg=cfg))
  start = time.perf_counter()
  evaluate_compiled = evaluate.lower(state, eval_batch).compile()
  eval_compile_seconds = time.perf_counter() - start
  jax.block_until_ready(evaluate_compiled(state, eval_batch))
  batch_seconds = timing.time_windows(
      lambda: evaluate_compiled(state, eval_batch), _EVAL_STEPS.value,
      _REPEATS.value, jax.block_until_ready)
  return {
      'train_images_per_sec': config.batch_size / step_seconds,
      'eval_images_per_sec': _EVAL_BATCH_SIZE.value / batch_seconds,
      'compile_seconds': compile_seconds,
      'eval_compile_seconds': eval_compile_seconds,
      'step_ms': 1000 * step_seconds,
      'step_window_ms': [round(1000 * w, 3) for w in step_windows],
  }


def torch_worker(framework: str, network: str, dtype: str
                 ) -> dict[str, float]:
  """Times the same network's training and eval in PyTorch (CPU), under
  autocast to bf16 for ``dtype='bfloat16'``."""
  del framework
  torch = _setup_torch()
  autocast = lambda: torch.autocast('cpu', dtype=torch.bfloat16,
                                    enabled=dtype == 'bfloat16')
  torch.manual_seed(0)
  model = torch_model(network).to(memory_format=torch.channels_last)
  optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9,
                              weight_decay=5e-4)
  images = torch.randn(_BATCH_SIZE.value, 3, 32, 32).to(
      memory_format=torch.channels_last)
  labels = torch.randint(0, 10, (_BATCH_SIZE.value,))
  loss_fn = torch.nn.CrossEntropyLoss()

  def train_once():
    optimizer.zero_grad(set_to_none=True)
    with autocast():
      loss = loss_fn(model(images), labels)
    loss.backward()
    optimizer.step()
    return loss

  model.train()
  for _ in range(_WARMUP.value):
    train_once()
  step_windows = timing.window_seconds(train_once, _STEPS.value,
                                       _REPEATS.value, lambda loss: loss.item())
  step_seconds = statistics.median(step_windows)
  model.eval()
  eval_images = torch.randn(_EVAL_BATCH_SIZE.value, 3, 32, 32).to(
      memory_format=torch.channels_last)
  with torch.no_grad(), autocast():
    model(eval_images)
    batch_seconds = timing.time_windows(
        lambda: model(eval_images), _EVAL_STEPS.value, _REPEATS.value,
        lambda out: out.float().sum().item())
  return {
      'train_images_per_sec': _BATCH_SIZE.value / step_seconds,
      'eval_images_per_sec': _EVAL_BATCH_SIZE.value / batch_seconds,
      'step_ms': 1000 * step_seconds,
      'step_window_ms': [round(1000 * w, 3) for w in step_windows],
      'threads': torch.get_num_threads(),
  }


def jax_ops_worker(framework: str, network: str, dtype: str
                   ) -> dict[str, float]:
  _setup_jax(framework, dtype)
  return op_profile.jax_ops(int(network), _BATCH_SIZE.value,
                            CONV_BACKENDS[framework], dtype)


def torch_ops_worker(framework: str, network: str, dtype: str
                     ) -> dict[str, float]:
  del framework
  _setup_torch()
  return op_profile.torch_ops(int(network), _BATCH_SIZE.value, dtype)


def jax_convs_worker(framework: str, shapes: str, dtype: str
                     ) -> dict[str, list[float]]:
  _setup_jax(framework, dtype)
  return op_profile.conv_shapes(
      op_profile.jax_conv_timer(_BATCH_SIZE.value, CONV_BACKENDS[framework],
                                dtype), shapes.split(','))


def torch_convs_worker(framework: str, shapes: str, dtype: str
                       ) -> dict[str, list[float]]:
  del framework
  _setup_torch()
  return op_profile.conv_shapes(
      op_profile.torch_conv_timer(_BATCH_SIZE.value, dtype),
      shapes.split(','))


_KINDS = {'': (jax_worker, torch_worker),
          '_ops': (jax_ops_worker, torch_ops_worker),
          '_convs': (jax_convs_worker, torch_convs_worker)}


def _split_kind(framework: str) -> tuple[str, str]:
  """'jax_kernels_convs' -> ('jax_kernels', '_convs')."""
  for kind in ('_ops', '_convs'):
    if framework.endswith(kind):
      return framework.removesuffix(kind), kind
  return framework, ''


def _worker(framework: str):
  base, kind = _split_kind(framework)
  return _KINDS[kind][base == 'torch']


def run_worker(framework: str, network: str, dtype: str = 'float32'
               ) -> dict[str, float]:
  """Runs one measurement in a child process of its own."""
  args = [sys.executable, '-m', 'jax_resnet.bench.benchmark',
          f'--worker={framework}:{network}:{dtype}'] + [
              a for a in sys.argv[1:] if not a.startswith('--worker')]
  root = os.path.dirname(os.path.dirname(os.path.dirname(
      os.path.abspath(__file__))))
  from jax_resnet import runtime  # pylint: disable=g-import-not-at-top
  env = runtime.process_environment(dict(os.environ,
                                          TF_CPP_MIN_LOG_LEVEL='2'))
  env['PYTHONPATH'] = os.pathsep.join(
      [root] + [p for p in [env.get('PYTHONPATH')] if p])
  proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          text=True, cwd=root, env=env)
  stdout, stderr = proc.communicate()
  if proc.returncode:
    raise RuntimeError(f'{framework} {network} failed:\n{stderr}')
  return json.loads(stdout.strip().splitlines()[-1])


_LABELS = {'jax_xla': 'JAX, XLA convolutions',
           'jax_kernels': 'JAX, own CPU kernels', 'torch': 'PyTorch'}


def format_table(rows: list[dict[str, object]]) -> str:
  """Markdown: one line per (network, dtype, framework), train and eval
  ratios to PyTorch in the same dtype; with bf16 rows, also the train ratio
  to PyTorch in float32."""
  mixed = any(row.get('dtype', 'float32') != 'float32' for row in rows)
  float32_torch = {row['network']: row.get('torch') or {} for row in rows
                   if row.get('dtype', 'float32') == 'float32'}
  extra = ' / PyTorch fp32 |' if mixed else ''
  lines = ['| network | dtype | framework | train img/s | / PyTorch | '
           'eval img/s | / PyTorch | compile s | peak MB |' + extra,
           '|---|---|---|---:|---:|---:|---:|---:|---:|' +
           ('---:|' if mixed else '')]

  def fmt(value, spec):
    return '-' if value is None else format(value, spec)

  def ratio(result, reference, key):
    return (result[key] / reference[key]) if reference and result else None

  for row in rows:
    reference = row.get('torch') or {}
    for framework in FRAMEWORKS:
      result = row.get(framework)
      if not result:
        continue
      line = (
          f'| {row["name"]} | {row.get("dtype", "float32")} '
          f'| {_LABELS[framework]} '
          f'| {fmt(result.get("train_images_per_sec"), ".1f")} '
          f'| {fmt(ratio(result, reference, "train_images_per_sec"), ".2f")} '
          f'| {fmt(result.get("eval_images_per_sec"), ".1f")} '
          f'| {fmt(ratio(result, reference, "eval_images_per_sec"), ".2f")} '
          f'| {fmt(result.get("compile_seconds"), ".1f")} '
          f'| {fmt(result.get("peak_mb"), ".0f")} |')
      if mixed:
        line += ' ' + fmt(ratio(result, float32_torch.get(row['network']),
                                'train_images_per_sec'), '.2f') + ' |'
      lines.append(line)
  return '\n'.join(lines)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  if _WORKER.value:
    framework, network, dtype = _WORKER.value.split(':')
    result = _worker(framework)(_split_kind(framework)[0], network, dtype)
    if not _split_kind(framework)[1]:
      import resource  # pylint: disable=g-import-not-at-top
      result['peak_mb'] = resource.getrusage(
          resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps(result), flush=True)
    return
  unknown = set(_FRAMEWORKS.value) - set(FRAMEWORKS)
  if unknown:
    raise app.UsageError(f'Unknown frameworks {sorted(unknown)}; valid: '
                         f'{", ".join(FRAMEWORKS)}.')
  unknown = set(_DTYPES.value) - set(DTYPES)
  if unknown or not _DTYPES.value:
    raise app.UsageError(f'Unknown dtypes {sorted(unknown)}; valid: '
                         f'{", ".join(DTYPES)}.')
  if 'model.dtype' in config_overrides_given():
    raise app.UsageError('Give the dtype as --dtypes (it sets PyTorch\'s '
                         'too), not --config.model.dtype.')
  if _OPS.value and 'torch' not in _FRAMEWORKS.value:
    raise app.UsageError('--ops compares with PyTorch: --frameworks must '
                         'include torch.')
  networks = [d for d in _DEPTHS.value if d] + list(_NETWORKS.value)
  if not networks and not _CONVS.value:
    raise app.UsageError('Nothing to measure: give --depths, --networks or '
                         '--convs.')
  try:
    for shape in _CONVS.value:
      op_profile.parse_conv_shape(shape)
  except ValueError as e:
    raise app.UsageError(str(e)) from e
  for network in _NETWORKS.value:
    torch_model(network)  # A network without a reference fails now.
  rows = []
  for network in networks:
    for dtype in _DTYPES.value:
      row = {'network': network, 'name': network_name(network),
             'dtype': dtype}
      for framework in _FRAMEWORKS.value:
        row[framework] = run_worker(framework, network, dtype)
        print(f'{framework} {row["name"]} {dtype}: '
              f'{json.dumps(row[framework])}', file=sys.stderr, flush=True)
      rows.append(row)
  if rows:
    print(format_table(rows))
  if _OPS.value:
    for row in rows:
      if not row['network'].isdigit():
        continue
      budgets = {f: run_worker(f + '_ops', row['network'], row['dtype'])
                 for f in _FRAMEWORKS.value}
      row.update({f + '_ops': b for f, b in budgets.items()})
      print()
      print(op_profile.format_table(
          int(row['network']), row['dtype'], budgets,
          {f: row[f]['step_ms'] for f in _FRAMEWORKS.value}))
  for dtype in _DTYPES.value if _CONVS.value else ():
    results = {f: run_worker(f + '_convs', ','.join(_CONVS.value), dtype)
               for f in _FRAMEWORKS.value}
    rows.append({'convs': results, 'dtype': dtype})
    print()
    print(op_profile.format_conv_table(dtype, _BATCH_SIZE.value, results))
  print(json.dumps(rows))


if __name__ == '__main__':
  # pylint: disable=g-import-not-at-top
  from jax_resnet import config_overrides as _overrides
  # pylint: enable=g-import-not-at-top
  _overrides.exit_on_unknown_fields(sys.argv, _overrides.default_config())
  define_config_flag()
  app.run(main)
