"""Where a CIFAR ResNet training step spends its time, op by op.

Each operation of the step is timed on its own at the network's exact shapes
(batch 128 by default): convolution forward, input gradient and kernel
gradient per layer shape, BatchNorm(+ReLU) forward+backward, and the residual
add + ReLU forward+backward (on the project's CPU kernels that add and ReLU
run inside the block's last BatchNorm pass, ``ResidualBlock.finish``, and
are timed there). Multiplied by how often the network uses each,
they give a per-op budget; what the step takes beyond their sum is
scheduling, memory traffic between ops, the head, loss and optimiser. The
same is measured for PyTorch, so the two budgets can be compared line by
line. Run through ``python -m jax_resnet.bench.benchmark --ops``.
"""

import collections
import time
from typing import Callable

# (height, in channels, out channels, stride, count) of the 3x3 convolutions
# of a 6n+2 CIFAR ResNet with option-A shortcuts.


def conv_layers(depth: int) -> list[tuple[int, int, int, int, int]]:
  n = (depth - 2) // 6
  return [(32, 3, 16, 1, 1), (32, 16, 16, 1, 2 * n), (32, 16, 32, 2, 1),
          (16, 32, 32, 1, 2 * n - 1), (16, 32, 64, 2, 1),
          (8, 64, 64, 1, 2 * n - 1)]


def norm_layers(depth: int) -> list[tuple[int, int, bool, int]]:
  """(height, channels, fused ReLU, count) of the BatchNorm layers."""
  n = (depth - 2) // 6
  return [(32, 16, True, n + 1), (32, 16, False, n), (16, 32, True, n),
          (16, 32, False, n), (8, 64, True, n), (8, 64, False, n)]


def add_relu_layers(depth: int) -> list[tuple[int, int, int]]:
  """(height, channels, count) of the residual add + ReLU."""
  n = (depth - 2) // 6
  return [(32, 16, n), (16, 32, n), (8, 64, n)]


def _best_ms(run: Callable[[], object], sync: Callable[[object], object],
             reps: int = 10, rounds: int = 3) -> float:
  sync(run())
  best = float('inf')
  for _ in range(rounds):
    start = time.perf_counter()
    out = None
    for _ in range(reps):
      out = run()
    sync(out)
    best = min(best, (time.perf_counter() - start) / reps * 1000)
  return best


CATEGORIES = ('conv forward', 'conv input gradient', 'conv kernel gradient',
              'BatchNorm(+ReLU) fwd+bwd', 'residual add+ReLU fwd+bwd')


def _budget(depth: int, time_conv, time_norm, time_add_relu,
            fused_block_end: bool = False) -> dict:
  """{category: total ms per step} from per-shape op timers.

  With ``fused_block_end`` a block's last BatchNorm is timed with the
  residual add and ReLU it performs (``time_norm(h, c, True,
  residual=True)``) and the residual category is 0.
  """
  totals = collections.Counter()
  for h, cin, cout, stride, count in conv_layers(depth):
    fwd, dgrad, wgrad = time_conv(h, cin, cout, stride)
    totals['conv forward'] += count * fwd
    if cin != 3:  # The image needs no gradient.
      totals['conv input gradient'] += count * dgrad
    totals['conv kernel gradient'] += count * wgrad
  for h, c, relu, count in norm_layers(depth):
    # The BatchNorms without ReLU are the blocks' last ones.
    ms = (time_norm(h, c, True, residual=True) if fused_block_end and not relu
          else time_norm(h, c, relu))
    totals['BatchNorm(+ReLU) fwd+bwd'] += count * ms
  totals['residual add+ReLU fwd+bwd'] = 0.0
  if not fused_block_end:
    for h, c, count in add_relu_layers(depth):
      totals['residual add+ReLU fwd+bwd'] += count * time_add_relu(h, c)
  return dict(totals)


def _jax_setup(conv_backend: str, dtype: str):
  """(normal, timed, conv_general_dilated, kernels) of the JAX timers."""
  # pylint: disable=g-import-not-at-top
  import jax
  import jax.numpy as jnp
  from jax import lax
  import numpy as np
  from jax_resnet.ops import cpu_conv
  from jax_resnet.ops import cpu_kernels
  # pylint: enable=g-import-not-at-top
  kernels = cpu_kernels.resolve(conv_backend) == 'cpu_kernels'
  dtype = jnp.dtype(dtype)
  conv_general_dilated = (cpu_conv.conv_general_dilated if kernels
                          else lax.conv_general_dilated)
  rng = np.random.default_rng(0)

  def normal(*shape):
    return jnp.asarray(rng.standard_normal(shape), dtype)

  def timed(fn, *args):
    compiled = jax.jit(fn).lower(*args).compile()
    return _best_ms(lambda: compiled(*args), jax.block_until_ready)
  return normal, timed, conv_general_dilated, kernels


def jax_conv_timer(batch: int, conv_backend: str = 'auto',
                   dtype: str = 'float32'):
  """``time_conv(h, cin, cout, stride)``: ms of the forward, input gradient
  and kernel gradient of a 3x3 convolution (padding 1) of the project's JAX
  code on ``conv_backend``, each jitted on its own (call after platform
  setup)."""
  return _conv_timer(batch, _jax_setup(conv_backend, dtype))


def _conv_timer(batch: int, setup):
  """``jax_conv_timer`` on ``_jax_setup``'s ``setup``."""
  import jax  # pylint: disable=g-import-not-at-top
  normal, timed, conv_general_dilated, _ = setup
  dn = ('NHWC', 'HWIO', 'NHWC')

  def time_conv(h, cin, cout, stride):
    x, w = normal(batch, h, h, cin), normal(3, 3, cin, cout) * 0.1
    g = normal(batch, h // stride, h // stride, cout)

    def conv(x, w):
      return conv_general_dilated(x, w, (stride, stride), ((1, 1), (1, 1)),
                                  dimension_numbers=dn)
    return (timed(conv, x, w),
            timed(lambda w, g: jax.vjp(lambda x: conv(x, w), x)[1](g)[0],
                  w, g),
            timed(lambda x, g: jax.vjp(lambda w: conv(x, w), w)[1](g)[0],
                  x, g))
  return time_conv


def jax_ops(depth: int, batch: int, conv_backend: str = 'auto',
            dtype: str = 'float32') -> dict:
  """Per-op budget of the project's JAX step (call after platform setup).

  Convolutions run on ``conv_backend`` (``cpu_kernels.BACKENDS``). With
  ``dtype='bfloat16'`` activations, gradients and convolution operands are
  bf16, as under ``model.dtype=bfloat16``; BatchNorm computes in float32.
  """
  # pylint: disable=g-import-not-at-top
  import jax
  import jax.numpy as jnp
  from jax_resnet.ops import batch_norm
  # pylint: enable=g-import-not-at-top
  setup = _jax_setup(conv_backend, dtype)
  normal, timed, _, kernels = setup
  dtype = jnp.dtype(dtype)
  time_conv = _conv_timer(batch, setup)

  def time_norm(h, c, relu, residual=False):
    x, g = normal(batch, h, h, c), normal(batch, h, h, c)
    r = normal(batch, h, h, c) if residual else None

    def fwd_bwd(x, scale, bias, r, g):
      out, vjp = jax.vjp(lambda x, s, b, r: batch_norm.normalize(
          x, s, b, 1e-5, relu, dtype, kernels, r)[0], x, scale, bias, r)
      return out, vjp(g)
    return timed(fwd_bwd, x, jnp.ones(c), jnp.zeros(c), r, g)

  def time_add_relu(h, c):
    a, b, g = (normal(batch, h, h, c) for _ in range(3))

    def fwd_bwd(a, b, g):
      out, vjp = jax.vjp(lambda a, b: jax.nn.relu(a + b), a, b)
      return out, vjp(g)
    return timed(fwd_bwd, a, b, g)

  return _budget(depth, time_conv, time_norm, time_add_relu,
                 fused_block_end=kernels)


def _torch_setup(dtype: str):
  """(torch, normal, autocast, sync) of the PyTorch timers."""
  import contextlib  # pylint: disable=g-import-not-at-top
  import torch  # pylint: disable=g-import-not-at-top
  torch.manual_seed(0)
  bf16 = dtype == 'bfloat16'
  activations = torch.bfloat16 if bf16 else torch.float32

  def normal(*shape):
    return torch.randn(*shape).to(dtype=activations,
                                  memory_format=torch.channels_last)

  def autocast():
    return (torch.autocast('cpu', dtype=torch.bfloat16) if bf16
            else contextlib.nullcontext())

  def sync(out):
    del out
  return torch, normal, autocast, sync


def torch_conv_timer(batch: int, dtype: str = 'float32'):
  """``jax_conv_timer`` for PyTorch (oneDNN, channels_last, bf16 operands
  for 'bfloat16'): ``aten.convolution`` and its backward, one gradient at a
  time."""
  torch, normal, _, sync = _torch_setup(dtype)

  def time_conv(h, cin, cout, stride):
    x, w = normal(batch, cin, h, h), normal(cout, cin, 3, 3) * 0.1
    g = normal(batch, cout, h // stride, h // stride)
    conv_bwd = torch.ops.aten.convolution_backward

    def grad(mask):
      return lambda: conv_bwd(g, x, w, None, [stride] * 2, [1, 1], [1, 1],
                              False, [0, 0], 1, mask)
    with torch.no_grad():
      fwd = _best_ms(lambda: torch.nn.functional.conv2d(x, w, None, stride, 1),
                     sync)
      return (fwd, _best_ms(grad([True, False, False]), sync),
              _best_ms(grad([False, True, False]), sync))
  return time_conv


def torch_ops(depth: int, batch: int, dtype: str = 'float32') -> dict:
  """The same budget for PyTorch (oneDNN, channels_last); with
  ``dtype='bfloat16'``, under ``torch.autocast`` with bf16 activations, as
  in its bf16 training step."""
  torch, normal, autocast, sync = _torch_setup(dtype)
  time_conv = torch_conv_timer(batch, dtype)

  def time_norm(h, c, relu):
    bn = torch.nn.BatchNorm2d(c)
    x = normal(batch, c, h, h).requires_grad_()
    g = normal(batch, c, h, h)

    def run():
      with autocast():
        y = bn(x)
        if relu:
          y = torch.relu(y)
      y.backward(g.to(y.dtype))
    return _best_ms(run, sync)

  def time_add_relu(h, c):
    a = normal(batch, c, h, h).requires_grad_()
    b = normal(batch, c, h, h).requires_grad_()
    g = normal(batch, c, h, h)

    def run():
      with autocast():
        y = torch.relu(a + b)
      y.backward(g)
    return _best_ms(run, sync)

  return _budget(depth, time_conv, time_norm, time_add_relu)


def parse_conv_shape(text: str) -> tuple[int, int]:
  """'8x512' -> (8, 512): a HxC shape of ``conv_shapes``."""
  parts = text.split('x')
  if len(parts) != 2 or not all(p.isdigit() and int(p) > 0 for p in parts):
    raise ValueError(f'A convolution shape is HxC (e.g. 8x512); got {text!r}.')
  return int(parts[0]), int(parts[1])


def conv_shapes(time_conv, shapes: list[str]) -> dict[str, list[float]]:
  """{shape: [forward, input gradient, kernel gradient ms]} of the 3x3
  stride-1 convolution from C to C channels at each HxC shape."""
  results = {}
  for shape in shapes:
    h, c = parse_conv_shape(shape)
    results[shape] = [round(ms, 3) for ms in time_conv(h, c, c, 1)]
  return results


def format_conv_table(dtype: str, batch: int,
                      results: dict[str, dict[str, list[float]]]) -> str:
  """Markdown: one line per (shape, framework): the three ops' ms, their
  sum, and the sum's ratio to PyTorch's (where 'torch' was measured)."""
  lines = [f'3x3 convolutions, stride 1, C to C channels, batch {batch}, '
           f'{dtype}, ms:', '',
           '| shape | framework | forward | input gradient | kernel gradient '
           '| sum | / PyTorch |', '|---|---|---:|---:|---:|---:|---:|']
  for shape in next(iter(results.values())):
    torch_sum = sum(results['torch'][shape]) if 'torch' in results else None
    for framework, by_shape in results.items():
      ops = by_shape[shape]
      ratio = (f'{sum(ops) / torch_sum:.2f}' if torch_sum else '-')
      lines.append(f'| {shape} | {framework} | ' +
                   ' | '.join(f'{ms:.2f}' for ms in ops) +
                   f' | {sum(ops):.2f} | {ratio} |')
  return '\n'.join(lines)


def format_table(depth: int, dtype: str, budgets: dict[str, dict],
                 step_ms: dict[str, float]) -> str:
  """Markdown: per-op ms per step of each framework, and the remainder.

  Args:
    depth: the CIFAR ResNet's depth.
    dtype: 'float32' or 'bfloat16' (``jax_ops``, ``torch_ops``).
    budgets: framework name -> per-op budget; 'torch' is the reference of the
      ratio column, and the last other framework is compared with it.
    step_ms: framework name -> measured step time.

  Returns:
    The table, one column per framework.
  """
  names = list(budgets)
  compared = [n for n in names if n != 'torch']
  ratio_of = compared[-1] if compared and 'torch' in budgets else None
  header = ' | '.join(f'{n} ms' for n in names)
  lines = [f'ResNet-{depth}, {dtype}, ms per training step:', '',
           f'| op | {header} |' + (f' {ratio_of} / torch |' if ratio_of
                                   else ''),
           '|---|' + '---:|' * (len(names) + bool(ratio_of))]

  def row(label, values):
    cells = ' | '.join(f'{values[n]:.1f}' for n in names)
    extra = ''
    if ratio_of:
      ref = values['torch']
      extra = f' {values[ratio_of] / ref:.2f} |' if ref else ' - |'
    return f'| {label} | {cells} |{extra}'

  for name in CATEGORIES:
    lines.append(row(name, {n: budgets[n][name] for n in names}))
  sums = {n: sum(budgets[n].values()) for n in names}
  lines.append(row('sum of ops', sums))
  rest = {n: step_ms[n] - sums[n] for n in names}
  label = 'rest of step (head, loss, optimiser, data, scheduling)'
  cells = ' | '.join(f'{rest[n]:.1f}' for n in names)
  lines.append(f'| {label} | {cells} |' + (' - |' if ratio_of else ''))
  lines.append(row('measured step', step_ms))
  fused = [n for n in names if not budgets[n]['residual add+ReLU fwd+bwd']]
  if fused:
    lines += ['', f'{", ".join(fused)}: the residual add+ReLU runs inside '
              "the block's last BatchNorm pass, timed in the BatchNorm row."]
  return '\n'.join(lines)
