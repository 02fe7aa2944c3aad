"""Train-step and eval throughput of CIFAR ResNets, JAX against PyTorch.

  python -m jax_resnet.benchmark                  # ResNet-20/56/110, both
  python -m jax_resnet.benchmark --depths=20 --frameworks=jax --steps=20
  python -m jax_resnet.benchmark --set=model.scan_blocks=True    # a lever
  python -m jax_resnet.benchmark --depths=20 --ops   # + per-op budget

Every (framework, depth) runs in its own child process, so compile caches and
peak memory (max RSS of that child) are its own. JAX times the project's
jitted ``train.train_step`` (on-device crop + flip + normalisation, forward,
backward, SGD update) with the project's platform settings; PyTorch times the
same option-A network (channels_last, forward, backward, SGD step) on an
already normalised batch. Throughput is steady state: compile and warm-up
steps are excluded and reported separately.
"""

import json
import os
import subprocess
import sys
import time

from absl import app
from absl import flags

from jax_resnet import op_profile

_DEPTHS = flags.DEFINE_list('depths', ['20', '56', '110'],
                            'CIFAR ResNet depths (6n+2).')
_FRAMEWORKS = flags.DEFINE_list('frameworks', ['jax', 'torch'],
                                'jax and/or torch.')
_BATCH_SIZE = flags.DEFINE_integer('batch_size', 128, 'Training batch size.')
_EVAL_BATCH_SIZE = flags.DEFINE_integer('eval_batch_size', 500,
                                        'Evaluation batch size.')
_STEPS = flags.DEFINE_integer('steps', 20, 'Timed training steps.')
_EVAL_STEPS = flags.DEFINE_integer('eval_steps', 10, 'Timed eval batches.')
_WARMUP = flags.DEFINE_integer('warmup', 3, 'Untimed steps after compile.')
_THREADS = flags.DEFINE_integer('torch_threads', 0,
                                'PyTorch intra-op threads; 0 = all cores.')
_SET = flags.DEFINE_multi_string(
    'set', [], 'Config override for the JAX runs, e.g. model.dtype=bfloat16.')
_NO_PROJECT_FLAGS = flags.DEFINE_bool(
    'no_project_flags', False, 'JAX without the project XLA CPU flags (XLA '
    'defaults), to measure what they give.')
_OPS = flags.DEFINE_bool(
    'ops', False, 'Also time every op of the step on its own (convolution '
    'forward / input / kernel gradient, BatchNorm, add+ReLU) in both '
    'frameworks and print where the step time goes (op_profile).')
_WORKER = flags.DEFINE_string('worker', None, 'Internal: FRAMEWORK:DEPTH '
                              '(jax, torch, jax_ops, torch_ops); prints one '
                              'JSON line.')


def _apply_override(config, assignment: str):
  key, _, text = assignment.partition('=')
  *parents, leaf = key.split('.')
  node = config
  for parent in parents:
    node = node[parent]
  current = node[leaf]
  if isinstance(current, bool):
    value = text.lower() in ('1', 'true', 'yes')
  elif current is None:
    value = float(text)
  else:
    value = type(current)(text)
  node[leaf] = value


def _time_loop(run, steps: int, sync) -> float:
  start = time.perf_counter()
  out = None
  for _ in range(steps):
    out = run()
  sync(out)
  return time.perf_counter() - start


def _setup_jax() -> None:
  """The project's XLA CPU flags unless --no_project_flags (before JAX)."""
  from jax_resnet import platform  # pylint: disable=g-import-not-at-top
  if not _NO_PROJECT_FLAGS.value:
    platform.configure()


def _setup_torch():
  """Imports torch with the --torch_threads setting; returns the module."""
  import torch  # pylint: disable=g-import-not-at-top
  if _THREADS.value:
    torch.set_num_threads(_THREADS.value)
  return torch


def jax_worker(depth: int) -> dict[str, float]:
  """Times the project's train and eval steps for one depth."""
  _setup_jax()
  # pylint: disable=g-import-not-at-top
  import functools
  import jax
  import numpy as np
  from configs import default
  from jax_resnet import models
  from jax_resnet import train
  # pylint: enable=g-import-not-at-top

  config = default.get_config()
  config.model.depth = depth
  config.batch_size = _BATCH_SIZE.value
  for assignment in _SET.value:
    _apply_override(config, assignment)
  model = models.create_model(config.model, 10)
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

  train_seconds = _time_loop(train_once, _STEPS.value, jax.block_until_ready)

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
  eval_seconds = _time_loop(lambda: evaluate_compiled(state, eval_batch),
                            _EVAL_STEPS.value, jax.block_until_ready)
  return {
      'train_images_per_sec': _STEPS.value * config.batch_size / train_seconds,
      'eval_images_per_sec':
          _EVAL_STEPS.value * _EVAL_BATCH_SIZE.value / eval_seconds,
      'compile_seconds': compile_seconds,
      'eval_compile_seconds': eval_compile_seconds,
      'step_ms': 1000 * train_seconds / _STEPS.value,
  }


def torch_worker(depth: int) -> dict[str, float]:
  """Times the same network's training and eval in PyTorch (CPU)."""
  torch = _setup_torch()
  from jax_resnet import torch_reference  # pylint: disable=g-import-not-at-top
  torch.manual_seed(0)
  model = torch_reference.cifar_resnet('basic', depth).to(
      memory_format=torch.channels_last)
  optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9,
                              weight_decay=5e-4)
  images = torch.randn(_BATCH_SIZE.value, 3, 32, 32).to(
      memory_format=torch.channels_last)
  labels = torch.randint(0, 10, (_BATCH_SIZE.value,))
  loss_fn = torch.nn.CrossEntropyLoss()

  def train_once():
    optimizer.zero_grad(set_to_none=True)
    loss = loss_fn(model(images), labels)
    loss.backward()
    optimizer.step()
    return loss

  model.train()
  for _ in range(_WARMUP.value):
    train_once()
  train_seconds = _time_loop(train_once, _STEPS.value, lambda loss: loss.item())
  model.eval()
  eval_images = torch.randn(_EVAL_BATCH_SIZE.value, 3, 32, 32).to(
      memory_format=torch.channels_last)
  with torch.no_grad():
    model(eval_images)
    eval_seconds = _time_loop(lambda: model(eval_images), _EVAL_STEPS.value,
                              lambda out: out.sum().item())
  return {
      'train_images_per_sec':
          _STEPS.value * _BATCH_SIZE.value / train_seconds,
      'eval_images_per_sec':
          _EVAL_STEPS.value * _EVAL_BATCH_SIZE.value / eval_seconds,
      'step_ms': 1000 * train_seconds / _STEPS.value,
      'threads': torch.get_num_threads(),
  }


def jax_ops_worker(depth: int) -> dict[str, float]:
  _setup_jax()
  return op_profile.jax_ops(depth, _BATCH_SIZE.value)


def torch_ops_worker(depth: int) -> dict[str, float]:
  _setup_torch()
  return op_profile.torch_ops(depth, _BATCH_SIZE.value)


WORKERS = {'jax': jax_worker, 'torch': torch_worker,
           'jax_ops': jax_ops_worker, 'torch_ops': torch_ops_worker}


def run_worker(framework: str, depth: int) -> dict[str, float]:
  """Runs one measurement in a child process of its own."""
  args = [sys.executable, '-m', 'jax_resnet.benchmark',
          f'--worker={framework}:{depth}'] + [
              a for a in sys.argv[1:] if not a.startswith('--worker')]
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL='2')
  env['PYTHONPATH'] = os.pathsep.join(
      [root] + [p for p in [env.get('PYTHONPATH')] if p])
  proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          text=True, cwd=root, env=env)
  stdout, stderr = proc.communicate()
  if proc.returncode:
    raise RuntimeError(f'{framework} ResNet-{depth} failed:\n{stderr}')
  return json.loads(stdout.strip().splitlines()[-1])


def format_table(rows: list[dict[str, object]]) -> str:
  """A markdown table of the measurements, with JAX/PyTorch ratios."""
  lines = ['| network | JAX train img/s | PyTorch train img/s | ratio | '
           'JAX eval img/s | PyTorch eval img/s | eval ratio | '
           'JAX compile s | JAX peak MB | PyTorch peak MB |',
           '|---|---|---|---|---|---|---|---|---|---|']

  def fmt(value, spec):
    return '-' if value is None else format(value, spec)

  for row in rows:
    jax_r, torch_r = row.get('jax') or {}, row.get('torch') or {}
    ratio = eval_ratio = None
    if jax_r and torch_r:
      ratio = jax_r['train_images_per_sec'] / torch_r['train_images_per_sec']
      eval_ratio = (jax_r['eval_images_per_sec'] /
                    torch_r['eval_images_per_sec'])
    lines.append(
        f'| ResNet-{row["depth"]} '
        f'| {fmt(jax_r.get("train_images_per_sec"), ".1f")} '
        f'| {fmt(torch_r.get("train_images_per_sec"), ".1f")} '
        f'| {fmt(ratio, ".2f")} '
        f'| {fmt(jax_r.get("eval_images_per_sec"), ".1f")} '
        f'| {fmt(torch_r.get("eval_images_per_sec"), ".1f")} '
        f'| {fmt(eval_ratio, ".2f")} '
        f'| {fmt(jax_r.get("compile_seconds"), ".1f")} '
        f'| {fmt(jax_r.get("peak_mb"), ".0f")} '
        f'| {fmt(torch_r.get("peak_mb"), ".0f")} |')
  return '\n'.join(lines)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  if _WORKER.value:
    framework, _, depth = _WORKER.value.partition(':')
    result = WORKERS[framework](int(depth))
    if framework in ('jax', 'torch'):
      import resource  # pylint: disable=g-import-not-at-top
      result['peak_mb'] = resource.getrusage(
          resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps(result), flush=True)
    return
  unknown = set(_FRAMEWORKS.value) - {'jax', 'torch'}
  if unknown:
    raise app.UsageError(f'Unknown frameworks {sorted(unknown)}; valid: '
                         'jax, torch.')
  if _OPS.value and set(_FRAMEWORKS.value) != {'jax', 'torch'}:
    raise app.UsageError('--ops compares the frameworks: it needs '
                         '--frameworks=jax,torch.')
  rows = []
  for depth in _DEPTHS.value:
    row = {'depth': int(depth)}
    for framework in _FRAMEWORKS.value:
      row[framework] = run_worker(framework, int(depth))
      print(f'{framework} ResNet-{depth}: {json.dumps(row[framework])}',
            file=sys.stderr, flush=True)
    rows.append(row)
  print(format_table(rows))
  if _OPS.value:
    for row in rows:
      row['jax_ops'] = run_worker('jax_ops', row['depth'])
      row['torch_ops'] = run_worker('torch_ops', row['depth'])
      print()
      print(op_profile.format_table(row['depth'], row['jax_ops'],
                                    row['torch_ops'], row['jax']['step_ms'],
                                    row['torch']['step_ms']))
  print(json.dumps(rows))


if __name__ == '__main__':
  app.run(main)
