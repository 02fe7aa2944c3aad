"""Shared test setup and helpers: project XLA flags, tiny configs, synthetic
CIFAR data, and the command line run as a user runs it."""

import atexit
import contextlib
import os
import shutil
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

# One persistent compilation cache for the whole session: the pytest workers
# and every command a test runs (they inherit the environment) compile the
# same tiny programs again and again; a hit skips XLA. Created by the first
# process (pytest's controller), removed when it exits.
if 'JAX_COMPILATION_CACHE_DIR' not in os.environ:
  os.environ['JAX_COMPILATION_CACHE_DIR'] = tempfile.mkdtemp(
      prefix='jax_resnet_tests_cache_')
  atexit.register(shutil.rmtree, os.environ['JAX_COMPILATION_CACHE_DIR'],
                  ignore_errors=True)
os.environ.setdefault('JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS', '0')
os.environ.setdefault('JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES', '0')

# pylint: disable=g-import-not-at-top,wrong-import-position
from jax_resnet import runtime

runtime.configure()

import jax
import numpy as np
import pytest

# Tiny models compile faster without XLA's heavier optimisation passes.
jax.config.update('jax_disable_most_optimizations', True)

# The CPU kernels are built once, here in pytest's controller, before its
# workers and the commands they run start: on a machine with no cached
# library yet, each of them would compile it at once (about 15 s).
if 'PYTEST_XDIST_WORKER' not in os.environ:
  from jax_resnet.ops import cpu_kernels
  cpu_kernels.load()

import ml_collections

from configs import default
from jax_resnet import metric_logging
import synthetic_cifar

MOCK_EXAMPLES = 40
MOCK_MAIN = os.path.join(ROOT, 'tests', 'mock_main.py')
# main.py arguments of a ResNet-8 run on mock data (tests/mock_main.py).
TINY = ['--config', os.path.join(ROOT, 'configs', 'resnet20_cifar10.py'),
        '--config.model.depth=8', '--config.batch_size=16',
        '--config.eval_batch_size=16', '--config.log_every_steps=1',
        '--config.data.download=False',
        '--config.data_dir=' + os.path.join(ROOT, 'tests', 'no_such_tfds_dir')]
TIMING_KEYS = ('images_per_sec', 'epoch_seconds')


def tiny_config(dataset: str = 'cifar10', **overrides):
  """A ResNet-8 config that trains in seconds on synthetic data (mock_cifar)."""
  config = default.get_config()
  config.dataset = dataset
  config.data_dir = os.path.join(ROOT, 'tests', 'no_such_tfds_dir')
  config.data.download = False
  config.model.depth = 8
  config.num_epochs = 2
  config.batch_size = 16
  config.eval_batch_size = 16
  config.log_every_steps = 1
  for key, value in overrides.items():
    node = config
    *parents, leaf = key.split('.')
    for parent in parents:
      node = node[parent]
    node[leaf] = value
  return config


@pytest.fixture
def mock_cifar():
  """Random CIFAR-shaped data in place of the real TFDS files, the same
  as the commands a test runs read (tests/synthetic_cifar.py)."""
  with synthetic_cifar.synthetic_cifar(MOCK_EXAMPLES):
    yield


def model_config(**overrides) -> ml_collections.ConfigDict:
  """``config.model`` of the defaults with ``overrides`` (block_kwargs as a
  dict)."""
  config = default.get_config().model
  config.update(overrides)
  return config


def command_env(devices: int = 1, examples: int = MOCK_EXAMPLES,
                pythonpath: str = '') -> dict[str, str]:
  """Environment of a command run by a test: mock data size, devices."""
  env = dict(os.environ)
  env['MOCK_EXAMPLES'] = str(examples)
  env['JAX_DISABLE_MOST_OPTIMIZATIONS'] = '1'
  env['XLA_FLAGS'] = (f'--xla_force_host_platform_device_count={devices}'
                      if devices > 1 else '')
  env['TF_CPP_MIN_LOG_LEVEL'] = '2'
  if pythonpath:
    env['PYTHONPATH'] = os.pathsep.join(
        p for p in (pythonpath, env.get('PYTHONPATH', '')) if p)
  return env


def run_main(args, devices=1, examples=MOCK_EXAMPLES, mock=True, check=True,
             pythonpath='', script=None, extra_env=None):
  """Runs main.py (on mock data unless mock=False); returns the process."""
  script = script or (MOCK_MAIN if mock else os.path.join(ROOT, 'main.py'))
  env = {**command_env(devices, examples, pythonpath), **(extra_env or {})}
  proc = subprocess.run([sys.executable, script] + args, cwd=ROOT, env=env,
                        capture_output=True, text=True, timeout=600)
  if check and proc.returncode:
    raise AssertionError(f'{os.path.basename(script)} {args} exited '
                         f'{proc.returncode}:\n{proc.stdout}\n{proc.stderr}')
  return proc


class Interrupt(Exception):
  """Raised in place of a dispatch by ``interrupted_at_dispatch``."""


@contextlib.contextmanager
def interrupted_at_dispatch(monkeypatch, n: int):
  """Trainers made inside raise ``Interrupt`` at the ``n``-th dispatch
  (counted over all of them), as a kill would stop the run there; yields
  the count so far, ``{'n': ...}``."""
  from jax_resnet import train  # pylint: disable=g-import-not-at-top
  original_init = train.Trainer.__init__
  calls = {'n': 0}

  def init(self, *args, **kwargs):
    original_init(self, *args, **kwargs)
    dispatch = self.dispatch

    def interrupting(state, order, count):
      calls['n'] += 1
      if calls['n'] == n:
        raise Interrupt()
      return dispatch(state, order, count)

    self.dispatch = interrupting

  with monkeypatch.context() as m:
    m.setattr(train.Trainer, '__init__', init)
    yield calls


def fake_x86_cpu(monkeypatch, features) -> None:
  """This process sees an x86-64 CPU with (only) Linux feature flags
  ``features``, as the CPU kernels' choices read them."""
  from jax_resnet.ops import cpu_kernels  # pylint: disable=g-import-not-at-top
  monkeypatch.setattr(cpu_kernels, 'cpu_features',
                      lambda: frozenset(features))
  monkeypatch.setattr(cpu_kernels.platform, 'machine', lambda: 'x86_64')


def error_lines(stderr: str) -> list[str]:
  """A command's stderr lines but the one warning a CPU without the
  kernels' instructions prints with every command (the XLA fallback)."""
  return [line for line in stderr.strip().splitlines()
          if 'CPU kernels unavailable' not in line]


def records(workdir):
  """metrics.jsonl without the timing fields."""
  return [{k: v for k, v in r.items() if k not in TIMING_KEYS}
          for r in metric_logging.read_metrics(str(workdir))]


def workdir_bytes(workdir) -> dict[str, bytes]:
  """Every file under ``workdir``, by relative path."""
  out = {}
  for root, _, files in os.walk(workdir):
    for name in files:
      path = os.path.join(root, name)
      with open(path, 'rb') as f:
        out[os.path.relpath(path, workdir)] = f.read()
  return out


def step_images(state, batch, cfg):
  """What ``train.train_step`` feeds the network, by hand: the augmented,
  normalised images (and mixed labels) and the stochastic-depth key."""
  from jax_resnet.augment import pipeline  # pylint: disable=g-import-not-at-top
  augment_rng, depth_rng = jax.random.split(
      jax.random.fold_in(state.rng, state.step))
  images, mixed = pipeline.train_batch(
      augment_rng, batch['image'], batch['label'], cfg.augment,
      np.asarray(cfg.mean), np.asarray(cfg.std), cfg.dtype)
  return images, mixed, depth_rng
