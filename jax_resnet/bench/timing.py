"""Steady-state timing shared by the benchmarks: the median of several
windows, so that a one-off stall does not decide a figure.

Such a stall is real and happens once per process: the first time a step
needs memory the process never touched (e.g. when XLA first starts a step
before the previous step's buffer is freed, so the allocator needs a second
buffer), every new page costs a fault, which on a virtual machine can be many
times the cost of zeroing the page (a 268 MB ResNet-56 bf16 buffer: 0.65 s,
once, against a 0.22 s step).
"""

import statistics
import time


def window_seconds(run, steps: int, repeats: int, sync) -> list[float]:
  """Seconds per call of ``run`` in each of ``repeats`` windows of ``steps``
  calls, every window ending with ``sync`` of its last result."""
  if steps < 1 or repeats < 1:
    raise ValueError(f'Need at least one step and one window; got {steps} '
                     f'steps x {repeats} windows.')
  windows = []
  for _ in range(repeats):
    start = time.perf_counter()
    for _ in range(steps):
      out = run()
    sync(out)
    windows.append((time.perf_counter() - start) / steps)
  return windows


def time_windows(run, steps: int, repeats: int, sync) -> float:
  """Seconds per call of ``run``: the median of ``window_seconds``."""
  return statistics.median(window_seconds(run, steps, repeats, sync))
