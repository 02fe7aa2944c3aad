"""Throughput of the project's training loop itself, on synthetic data.

  python -m jax_resnet.bench.loop --depths=20 --steps_per_dispatch=1,4
  python -m jax_resnet.bench.loop --dtypes=float32,bfloat16 --json=out.json
  python -m jax_resnet.bench.loop --packs=1,4 --torch_dtypes=float32

Where ``jax_resnet.bench.benchmark`` times one compiled train step against
PyTorch, this times ``train.Trainer.train_epoch``: the dispatches, the
on-device batch gather, the metric fetches and the NaN check, as a run
trains. The data are random uint8 images held on the device, so neither
TensorFlow nor TFDS is needed (the GPU check, ``bench/device_check.sh``,
runs where they are absent).

For each (network, dtype, steps per dispatch, packed seeds) it reports
train images/sec in the median of ``--epochs`` timed epochs of ``--steps``
steps (after one untimed epoch that compiles; ``timing``), the compile time
of that first epoch, the seconds the Trainer and its initial state took
(``init_seconds``, JSON only), the dispatches per step and the host
milliseconds per step: the time the Python loop spends inside the dispatch
calls (which return before the device finishes, unless launching the
program's kernels or a full launch queue holds the host). With
``--packs=P`` the P seeds train as one program (``config.pack_seeds``) and
images/sec counts the images of all of them.
``--torch_dtypes`` adds the same networks in PyTorch on its best device
(CUDA when there is one; channels_last, SGD, bfloat16 under autocast) on an
already normalised batch.
"""

import json
import time

from absl import app
from absl import flags

from jax_resnet.bench import timing

_DEPTHS = flags.DEFINE_list('depths', ['20', '56', '110'],
                            'CIFAR ResNet depths (6n+2).')
_DTYPES = flags.DEFINE_list('dtypes', ['float32'],
                            'model.dtype values: float32, bfloat16.')
_DISPATCH = flags.DEFINE_list('steps_per_dispatch', ['1'],
                              'config.steps_per_dispatch values.')
_BATCH_SIZE = flags.DEFINE_integer('batch_size', 128, 'Training batch size.')
_STEPS = flags.DEFINE_integer('steps', 40, 'Steps per (synthetic) epoch.')
_EPOCHS = flags.DEFINE_integer('epochs', 3, 'Timed epochs; the median one '
                              'counts.', lower_bound=1)
_PACKS = flags.DEFINE_list('packs', ['1'],
                           'Seeds trained together (config.pack_seeds).')
_TORCH_DTYPES = flags.DEFINE_list(
    'torch_dtypes', [], 'PyTorch rows too, in these dtypes (float32, '
    'bfloat16 = autocast).')
_CONV_BACKEND = flags.DEFINE_string('conv_backend', 'auto',
                                    'model.conv_backend.')
_JSON = flags.DEFINE_string('json', None, 'Also write the rows here.')
_MARKDOWN = flags.DEFINE_string('markdown', None,
                                'Also write the Markdown table here.')


def synthetic_split(num_examples: int, seed: int = 0):
  """Random CIFAR-shaped uint8 images and labels."""
  import numpy as np  # pylint: disable=g-import-not-at-top
  from jax_resnet import input_pipeline  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(seed)
  return input_pipeline.Split(
      rng.integers(0, 256, (num_examples, 32, 32, 3), np.uint8),
      rng.integers(0, 10, (num_examples,), np.int32))


class _CountingTrainer:
  """Wraps a Trainer's dispatch to count calls and the host time in them."""

  def __init__(self, trainer):
    self.calls = 0
    self.host_seconds = 0.0
    dispatch = trainer.dispatch

    def counted(state, order, count):
      start = time.perf_counter()
      result = dispatch(state, order, count)
      self.host_seconds += time.perf_counter() - start
      self.calls += 1
      return result

    trainer.dispatch = counted


def time_loop(depth: int, dtype: str, steps_per_dispatch: int,
              batch_size: int, steps: int, epochs: int,
              conv_backend: str = 'auto', pack: int = 1
              ) -> dict[str, object]:
  """One row: the loop's throughput for a CIFAR ResNet of ``depth``, its
  seeds packed ``pack`` at a time (1: unpacked)."""
  # pylint: disable=g-import-not-at-top
  import jax
  from configs import default
  from jax_resnet import train
  # pylint: enable=g-import-not-at-top
  config = default.get_config()
  config.dataset = 'cifar10'
  config.model.depth = depth
  config.model.dtype = dtype
  config.model.conv_backend = conv_backend
  config.batch_size = batch_size
  config.steps_per_dispatch = steps_per_dispatch
  config.log_every_steps = 50
  model = train.validated_model(config)
  start = time.perf_counter()
  trainer = train.Trainer(config, model, synthetic_split(batch_size * steps),
                          synthetic_split(batch_size, seed=1),
                          seeds=tuple(range(pack)) if pack > 1 else None)
  state = trainer.init_state()
  jax.block_until_ready(state)
  init_seconds = time.perf_counter() - start
  start = time.perf_counter()
  state, _ = trainer.train_epoch(state, 0)
  jax.block_until_ready(state)
  first_epoch = time.perf_counter() - start
  counter = _CountingTrainer(trainer)
  epoch = 0

  def train_epoch():
    nonlocal state, epoch
    epoch += 1
    state, _ = trainer.train_epoch(state, epoch)
    return state

  epoch_seconds = timing.time_windows(train_epoch, 1, epochs,
                                      jax.block_until_ready)
  timed_steps = epochs * steps
  return {
      'framework': 'jax', 'depth': depth, 'dtype': dtype,
      'steps_per_dispatch': trainer.steps_per_dispatch, 'seeds': pack,
      'batch_size': batch_size,
      'train_images_per_sec': pack * steps * batch_size / epoch_seconds,
      'step_ms': 1000 * epoch_seconds / steps,
      'host_ms_per_step': 1000 * counter.host_seconds / timed_steps,
      'dispatches_per_step': counter.calls / timed_steps,
      # The first epoch compiles; its steps at the timed speed are taken off.
      'compile_seconds': max(0.0, first_epoch - epoch_seconds),
      # The Trainer and its initial state (the init's compile included).
      'init_seconds': init_seconds,
      'platform': jax.default_backend(),
  }


def time_torch(depth: int, dtype: str, batch_size: int, steps: int,
               epochs: int) -> dict[str, object]:
  """One row: the PyTorch reference network's train steps on PyTorch's
  best device."""
  # pylint: disable=g-import-not-at-top
  import torch
  from jax_resnet.interop import torch_reference
  # pylint: enable=g-import-not-at-top
  device = 'cuda' if torch.cuda.is_available() else 'cpu'
  torch.manual_seed(0)
  model = torch_reference.cifar_resnet('basic', depth, 10).to(
      device=device, memory_format=torch.channels_last)
  optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9,
                              weight_decay=5e-4)
  images = torch.randn(batch_size, 3, 32, 32, device=device).to(
      memory_format=torch.channels_last)
  labels = torch.randint(0, 10, (batch_size,), device=device)
  autocast = torch.autocast(device, dtype=torch.bfloat16,
                            enabled=dtype == 'bfloat16')

  def step():
    optimizer.zero_grad(set_to_none=True)
    with autocast:
      loss = torch.nn.functional.cross_entropy(model(images), labels)
    loss.backward()
    optimizer.step()
    return loss

  model.train()
  start = time.perf_counter()
  for _ in range(steps):
    loss = step()
  loss.item()
  first_epoch = time.perf_counter() - start
  step_seconds = timing.time_windows(step, steps, epochs,
                                     lambda loss: loss.item())
  return {
      'framework': 'torch', 'depth': depth, 'dtype': dtype,
      'steps_per_dispatch': 1, 'seeds': 1, 'batch_size': batch_size,
      'train_images_per_sec': batch_size / step_seconds,
      'step_ms': 1000 * step_seconds,
      'host_ms_per_step': None, 'dispatches_per_step': None,
      'compile_seconds': max(0.0, first_epoch - steps * step_seconds),
      'platform': device,
  }


def format_table(rows: list[dict[str, object]]) -> str:
  """Markdown: one line per row, with images/sec relative to the first JAX
  row of the same network (fp32, one step per dispatch, one seed)."""
  lines = ['| network | framework | dtype | steps/dispatch | seeds | '
           'train img/s | relative | step ms | host ms/step | compile s |',
           '|---|---|---|---:|---:|---:|---:|---:|---:|---:|']
  base = {}
  for row in rows:
    if row['framework'] == 'jax':
      base.setdefault(row['depth'], row['train_images_per_sec'])

  def fmt(value, spec):
    return '' if value is None else format(value, spec)

  for row in rows:
    lines.append(
        f"| ResNet-{row['depth']} | {row['framework']} ({row['platform']}) "
        f"| {row['dtype']} | {row['steps_per_dispatch']} | {row['seeds']} | "
        f"{row['train_images_per_sec']:.0f} | "
        f"{fmt(row['train_images_per_sec'] / base[row['depth']], '.2f') if row['depth'] in base else ''} | "
        f"{row['step_ms']:.2f} | {fmt(row['host_ms_per_step'], '.3f')} | "
        f"{row['compile_seconds']:.1f} |")
  return '\n'.join(lines)


def main(argv):
  del argv
  # pylint: disable=g-import-not-at-top
  from jax_resnet import runtime
  runtime.configure(_CONV_BACKEND.value)
  # pylint: enable=g-import-not-at-top
  rows = []

  def add(row):
    print(json.dumps(row), flush=True)
    rows.append(row)
    # Written as they come: a run cut short keeps what it measured.
    if _JSON.value:
      with open(_JSON.value, 'w') as f:
        json.dump(rows, f, indent=1)
    if _MARKDOWN.value:
      with open(_MARKDOWN.value, 'w') as f:
        f.write(format_table(rows) + '\n')

  for depth in _DEPTHS.value:
    for dtype in _DTYPES.value:
      for k in _DISPATCH.value:
        for pack in _PACKS.value:
          add(time_loop(int(depth), dtype, k if k == 'auto' else int(k),
                        _BATCH_SIZE.value, _STEPS.value, _EPOCHS.value,
                        _CONV_BACKEND.value, int(pack)))
    for dtype in _TORCH_DTYPES.value:
      add(time_torch(int(depth), dtype, _BATCH_SIZE.value, _STEPS.value,
                     _EPOCHS.value))
  print(format_table(rows))


if __name__ == '__main__':
  app.run(main)
