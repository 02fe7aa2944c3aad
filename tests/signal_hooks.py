"""Signals a test command sends itself at set moments (tests/mock_main.py,
tests/mock_grid.py), from environment variables."""

import os
import signal


def _signal(name: str) -> None:
  os.kill(os.getpid(), getattr(signal, f'SIG{name}'))


def signal_after_steps(spec: str) -> None:
  """SIGNAL_AFTER_STEPS=N:NAME sends this process SIGNAME once it has
  dispatched N train steps (e.g. 6:TERM, 7:KILL)."""
  from jax_resnet import train
  steps, name = spec.split(':')
  original = train.Trainer.dispatch
  dispatched = [0]

  def counted(self, state, order, count):
    result = original(self, state, order, count)
    before = dispatched[0]
    dispatched[0] += count
    if before < int(steps) <= dispatched[0]:
      _signal(name)
    return result

  train.Trainer.dispatch = counted


def signals_in_mid_epoch_save(count: int) -> None:
  """SIGNALS_IN_MID_EPOCH_SAVE=N sends this process N more SIGTERMs as a
  mid-epoch checkpoint save starts."""
  from jax_resnet import checkpoints
  original = checkpoints.Checkpointer.save

  def save(self, *args, **kwargs):
    if not self.ranked:
      for _ in range(count):
        _signal('TERM')
    return original(self, *args, **kwargs)

  checkpoints.Checkpointer.save = save


def install_from_environment() -> None:
  """SIGNAL_AFTER_STEPS and SIGNALS_IN_MID_EPOCH_SAVE, where set."""
  if os.environ.get('SIGNAL_AFTER_STEPS'):
    signal_after_steps(os.environ['SIGNAL_AFTER_STEPS'])
  if os.environ.get('SIGNALS_IN_MID_EPOCH_SAVE'):
    signals_in_mid_epoch_save(int(os.environ['SIGNALS_IN_MID_EPOCH_SAVE']))
