"""The benchmark and its per-op budget run end to end on tiny settings."""

import collections
import functools
import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import pytest

from conftest import ROOT
from configs import default
from jax_resnet.bench import benchmark
from jax_resnet.bench import op_profile
from jax_resnet.bench import timing
from jax_resnet.ops import cpu_kernels
from jax_resnet.models import registry


@pytest.mark.parametrize('depth', [8, 20, 56])
def test_layer_tables_match_the_network(depth):
  """The op tables list exactly the model's convolutions and BatchNorms."""
  config = default.get_config().model
  config.depth = depth
  model = registry.create_model(config, 10)
  params = jax.eval_shape(functools.partial(model.init, train=False),
                          jax.random.PRNGKey(0),
                          jnp.zeros((1, 32, 32, 3)))['params']
  flat = jax.tree_util.tree_flatten_with_path(params)[0]
  kernels = collections.Counter(
      leaf.shape[2:] for path, leaf in flat
      if path[-1].key == 'kernel' and leaf.ndim == 4)
  table = collections.Counter()
  for _, cin, cout, _, count in op_profile.conv_layers(depth):
    table[(cin, cout)] += count
  assert kernels == table
  norms = collections.Counter(
      leaf.shape[0] for path, leaf in flat if path[-1].key == 'scale')
  table = collections.Counter()
  for _, channels, _, count in op_profile.norm_layers(depth):
    table[channels] += count
  assert norms == table
  adds = sum(count for *_, count in op_profile.add_relu_layers(depth))
  assert adds == 3 * ((depth - 2) // 6)  # one per block


@pytest.mark.parametrize('fused', [False, True])
def test_budget_of_a_fused_block_end(fused):
  """On the kernels a block's last BatchNorm is timed with the residual
  add and ReLU it performs, and the residual category is 0."""
  calls = []

  def time_norm(h, c, relu, residual=False):
    calls.append((h, c, relu, residual))
    return 1.0

  budget = op_profile._budget(  # pylint: disable=protected-access
      20, lambda *_: (1.0, 1.0, 1.0), time_norm, lambda h, c: 5.0,
      fused_block_end=fused)
  ends = {(32, 16), (16, 32), (8, 64)}
  assert {(h, c) for h, c, _, residual in calls if residual} == (
      ends if fused else set())
  assert all(relu for *_, relu, residual in calls if residual)
  assert budget['residual add+ReLU fwd+bwd'] == (0.0 if fused else 5.0 * 9)
  assert budget['BatchNorm(+ReLU) fwd+bwd'] == 19.0  # 19 BatchNorms


def test_format_table_sums_and_remainder():
  jax_budget = dict.fromkeys(op_profile.CATEGORIES, 0.0)
  torch_budget = dict.fromkeys(op_profile.CATEGORIES, 0.0)
  jax_budget.update({'conv forward': 10.0, 'conv kernel gradient': 20.0})
  torch_budget.update({'conv forward': 5.0, 'conv kernel gradient': 10.0})
  xla_budget = {k: 2 * v for k, v in jax_budget.items()}
  table = op_profile.format_table(
      20, 'bfloat16', {'jax_xla': xla_budget, 'jax_kernels': jax_budget,
                       'torch': torch_budget},
      {'jax_xla': 70.0, 'jax_kernels': 40.0, 'torch': 20.0})
  assert table.startswith('ResNet-20, bfloat16, ms per training step:')
  assert '| op | jax_xla ms | jax_kernels ms | torch ms | jax_kernels / torch |' in table
  assert '| conv kernel gradient | 40.0 | 20.0 | 10.0 | 2.00 |' in table
  assert '| sum of ops | 60.0 | 30.0 | 15.0 | 2.00 |' in table
  assert '| 10.0 | 10.0 | 5.0 | - |' in table  # 70 - 60, 40 - 30, 20 - 15
  assert '| measured step | 70.0 | 40.0 | 20.0 | 2.00 |' in table


def test_time_windows_is_the_median_window(monkeypatch):
  """One stalled call (the first touch of new memory, say) moves one window,
  not the figure; every window ends with a sync of its last result."""
  clock = [0.0]
  calls, synced = [], []

  def run():
    calls.append(None)
    clock[0] += 50.0 if len(calls) == 7 else 1.0  # call 7 stalls
    return len(calls)

  monkeypatch.setattr(timing.time, 'perf_counter', lambda: clock[0])
  seconds = timing.time_windows(run, steps=4, repeats=5, sync=synced.append)
  assert len(calls) == 20
  assert synced == [4, 8, 12, 16, 20]
  assert seconds == 1.0  # the stalled window took 53 / 4 per call
  calls.clear()
  assert timing.window_seconds(run, steps=4, repeats=3,
                               sync=synced.append) == [1.0, 53 / 4, 1.0]
  with pytest.raises(ValueError, match='at least one step'):
    timing.time_windows(run, steps=0, repeats=5, sync=synced.append)


def test_benchmark_with_ops_and_bf16():
  """The kernels against PyTorch in float32 and bf16 (autocast), per-op
  budgets included for both dtypes (the jax_xla framework is the same worker
  with another conv_backend)."""
  pytest.importorskip('torch')
  # The kernels where this CPU runs them, else XLA's convolutions.
  jax_framework = ('jax_kernels' if cpu_kernels.cpu_can_run()[0] else
                   'jax_xla')
  proc = subprocess.run(
      [sys.executable, '-m', 'jax_resnet.bench.benchmark', '--depths=8',
       '--batch_size=4', '--eval_batch_size=4', '--steps=1', '--eval_steps=1',
       '--repeats=1', '--warmup=1', '--ops', f'--frameworks={jax_framework},torch',
       '--dtypes=float32,bfloat16'],
      cwd=ROOT, capture_output=True, text=True, timeout=600, check=False,
      # Its workers compile a dozen tiny programs each: faster without
      # XLA's heavier passes (the test checks the tables, not the speed).
      env=dict(os.environ, JAX_DISABLE_MOST_OPTIMIZATIONS='1'))
  assert proc.returncode == 0, proc.stderr
  rows = json.loads(proc.stdout.strip().splitlines()[-1])
  assert [(r['network'], r['name'], r['dtype']) for r in rows] == [
      ('8', 'ResNet-8', 'float32'), ('8', 'ResNet-8', 'bfloat16')]
  for framework in (jax_framework, 'torch'):
    assert all(r[framework]['train_images_per_sec'] > 0 for r in rows)
    # --repeats=1: one window, whose time is the figure.
    assert all(r[framework]['step_window_ms'] ==
               [pytest.approx(r[framework]['step_ms'], abs=1e-3)]
               for r in rows)
    for row in rows:
      assert set(row[framework + '_ops']) == set(op_profile.CATEGORIES)
      budget = dict(row[framework + '_ops'])
      if framework == 'jax_kernels':
        # Timed inside the block's last BatchNorm pass, in both dtypes.
        assert budget.pop('residual add+ReLU fwd+bwd') == 0.0
      assert all(v > 0 for v in budget.values())
  assert (f"{jax_framework}: the residual add+ReLU runs inside the block's "
          'last BatchNorm pass' in proc.stdout) == (
              jax_framework == 'jax_kernels')
  label = benchmark._LABELS[jax_framework]  # pylint: disable=protected-access
  assert '/ PyTorch fp32 |' in proc.stdout
  for dtype in ('float32', 'bfloat16'):
    for name in (label, 'PyTorch'):
      assert f'| ResNet-8 | {dtype} | {name} |' in proc.stdout
  bf16_torch = [line for line in proc.stdout.splitlines()
                if line.startswith('| ResNet-8 | bfloat16 | PyTorch |')][0]
  fp32_ratio = (rows[1]['torch']['train_images_per_sec'] /
                rows[0]['torch']['train_images_per_sec'])
  assert bf16_torch.endswith(f' | {fp32_ratio:.2f} |')
  for dtype in ('float32', 'bfloat16'):
    assert f'ResNet-8, {dtype}, ms per training step:' in proc.stdout
  assert '| measured step |' in proc.stdout


def test_convolution_shapes_against_pytorch():
  """--convs: the three ops of a 3x3 convolution at HxC shapes, in JAX and
  PyTorch, with the sums' ratio; no network is measured."""
  pytest.importorskip('torch')
  jax_framework = ('jax_kernels' if cpu_kernels.cpu_can_run()[0] else
                   'jax_xla')
  proc = subprocess.run(
      [sys.executable, '-m', 'jax_resnet.bench.benchmark', '--depths=',
       '--convs=4x16,2x40', '--batch_size=2',
       f'--frameworks={jax_framework},torch', '--dtypes=bfloat16'],
      cwd=ROOT, capture_output=True, text=True, timeout=300, check=False,
      env=dict(os.environ, JAX_DISABLE_MOST_OPTIMIZATIONS='1'))
  assert proc.returncode == 0, proc.stderr
  rows = json.loads(proc.stdout.strip().splitlines()[-1])
  assert [(sorted(r['convs']), r['dtype']) for r in rows] == [
      (sorted([jax_framework, 'torch']), 'bfloat16')]
  for framework, by_shape in rows[0]['convs'].items():
    assert list(by_shape) == ['4x16', '2x40']
    assert all(len(ops) == 3 and min(ops) > 0 for ops in by_shape.values())
  assert '3x3 convolutions, stride 1, C to C channels, batch 2, bfloat16' in (
      proc.stdout)
  for shape in ('4x16', '2x40'):
    ours = rows[0]['convs'][jax_framework][shape]
    theirs = rows[0]['convs']['torch'][shape]
    assert f'| {shape} | torch |' in proc.stdout
    assert (f'| {shape} | {jax_framework} | ' in proc.stdout and
            f' | {sum(ours) / sum(theirs):.2f} |' in proc.stdout)
  assert '| network |' not in proc.stdout


@pytest.mark.parametrize('args,message', [
    (['--frameworks=jax_kernels', '--ops'], '--frameworks must include torch'),
    (['--dtypes=float16'], "Unknown dtypes ['float16']"),
    (['--config.model.dtype=bfloat16'], 'Give the dtype as --dtypes'),
    (['--repeats=0'], 'flag --repeats=0: 0 is not a positive integer'),
    (['--convs=8by512'], "A convolution shape is HxC (e.g. 8x512); got "
     "'8by512'"),
])
def test_refused_arguments(args, message):
  proc = subprocess.run(
      [sys.executable, '-m', 'jax_resnet.bench.benchmark', '--depths=8'] +
      args, cwd=ROOT, capture_output=True, text=True, timeout=120,
      check=False)
  assert proc.returncode != 0
  assert message in proc.stderr



@pytest.mark.parametrize('network', [
    '20', 'plain20_cifar10', 'tutorial_resnet_cifar10', 'wrn16_8_cifar10',
    'densenet_bc100_k12_cifar10', 'pyramidnet110_a48_cifar10'])
def test_torch_reference_is_the_network(network):
  """The PyTorch network the benchmark times has the JAX network's
  parameter count (the zoo's)."""
  from jax_resnet.tools import zoo  # pylint: disable=g-import-not-at-top
  config = benchmark.network_config(network).model
  torch_params = sum(p.numel() for p in benchmark.torch_model(
      network).parameters())
  assert torch_params == zoo.measure(config)[0]


def test_overrides_reach_the_torch_reference(monkeypatch):
  """``--config.model.*`` changes the network PyTorch times as well."""
  from jax_resnet.tools import zoo  # pylint: disable=g-import-not-at-top
  monkeypatch.setattr(benchmark, 'config_overrides_given',
                      lambda: {'model.block': 'se', 'model.shortcut': 'B'})
  model = benchmark.torch_model('20')
  assert type(model.layer1[0]).__name__ == 'SEBasicBlock'
  assert sum(p.numel() for p in model.parameters()) == zoo.measure(
      benchmark.network_config('20').model)[0] != zoo.measure_config(
          'resnet20_cifar10')[0]


def test_network_without_a_torch_reference_is_refused():
  with pytest.raises(Exception, match='No PyTorch reference for'):
    benchmark.torch_model('resnet18_cifar10')


def test_config_overrides_reach_the_jax_runs():
  """--config.FIELD overrides, the same mechanism as main.py's."""
  args = [sys.executable, '-m', 'jax_resnet.bench.benchmark', '--depths=8',
          '--frameworks=jax_xla', '--batch_size=4', '--eval_batch_size=4',
          '--steps=1', '--eval_steps=1', '--repeats=1', '--warmup=1',
          '--config.model.block=resnext']
  proc = subprocess.run(args + ['--config.model.block_kwargs.cardinality=0'],
                        cwd=ROOT, capture_output=True, text=True,
                        timeout=300, check=False)
  assert proc.returncode != 0
  assert 'block_kwargs.cardinality must be at least 1; got 0' in proc.stderr
  proc = subprocess.run(args + ['--config.model.dept=8'], cwd=ROOT,
                        capture_output=True, text=True, timeout=120,
                        check=False)
  assert proc.returncode == 2
  assert "unknown config field 'model.dept'" in proc.stderr


def test_loop_benchmark_counts_dispatches(tmp_path):
  """The training-loop benchmark (the accelerator check's tool) on the CPU:
  one dispatch per step, or one per k steps, and its tables."""
  pytest.importorskip('torch')
  out = tmp_path / 'loop.json'
  proc = subprocess.run(
      [sys.executable, '-m', 'jax_resnet.bench.loop', '--depths=8',
       '--batch_size=4', '--steps=3', '--epochs=3',
       '--steps_per_dispatch=1,3', '--torch_dtypes=float32',
       f'--json={out}', f'--markdown={tmp_path / "loop.md"}'],
      cwd=ROOT, capture_output=True, text=True, timeout=300, check=False,
      env=dict(os.environ, JAX_DISABLE_MOST_OPTIMIZATIONS='1'))
  assert proc.returncode == 0, proc.stderr
  rows = json.loads(out.read_text())
  assert [(r['framework'], r['steps_per_dispatch']) for r in rows] == [
      ('jax', 1), ('jax', 3), ('torch', 1)]
  assert [r['dispatches_per_step'] for r in rows[:2]] == pytest.approx(
      [1.0, 1 / 3])
  for row in rows:
    assert row['train_images_per_sec'] == pytest.approx(
        1000 * 4 / row['step_ms'])
  table = (tmp_path / 'loop.md').read_text()
  assert table.count('| ResNet-8 |') == 3
  assert '| ResNet-8 | jax (cpu) | float32 | 3 | 1 |' in table
