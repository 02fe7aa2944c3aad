"""Runs main.py on synthetic CIFAR data (tests/synthetic_cifar.py), for tests
that drive the command line.

With COUNT_CALLS=1 it also counts, and prints as the last line of stderr,
how often the command resolved a network (``registry.resolve``) and really
initialised one (``train.Trainer.init_state``): a main.py train command
resolves once, and initialises only when there is no checkpoint to resume.
With PAUSE_AFTER_FIRST_EPOCH=S it sleeps S seconds before each epoch after
the first, and with PAUSE_MARKER=P also creates the file P.<pid> as it
starts sleeping. SIGNAL_AFTER_STEPS and SIGNALS_IN_MID_EPOCH_SAVE send the
process signals at set moments (tests/signal_hooks.py).
"""

import atexit
import collections
import json
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

# pylint: disable=g-import-not-at-top,wrong-import-position
from absl import app
import main
from jax_resnet import config_overrides
from jax_resnet import preemption
import signal_hooks
import synthetic_cifar


def count_calls() -> None:
  """Wraps the functions counted and prints the counts at exit."""
  from jax_resnet import train
  from jax_resnet.models import registry
  counts = collections.Counter()

  def counted(owner, name):
    original = getattr(owner, name)

    def wrapper(*args, **kwargs):
      counts[name] += 1
      return original(*args, **kwargs)

    setattr(owner, name, wrapper)

  counted(registry, 'resolve')
  counted(train.Trainer, 'init_state')
  atexit.register(lambda: print('calls ' + json.dumps(counts),
                                file=sys.stderr, flush=True))


def pause_after_first_epoch(seconds: float) -> None:
  """Sleeps before every epoch but the first: a window in which a test can
  kill the run right after epoch 1's checkpoint."""
  import time
  from jax_resnet import train
  original = train.Trainer.run_steps

  def paused(self, state, epoch, progress, *args, **kwargs):
    if epoch >= 1 and progress.done == 0:
      if os.environ.get('PAUSE_MARKER'):
        open(f'{os.environ["PAUSE_MARKER"]}.{os.getpid()}', 'w').close()
      time.sleep(seconds)
    return original(self, state, epoch, progress, *args, **kwargs)

  train.Trainer.run_steps = paused


if __name__ == '__main__':
  num_examples = int(os.environ.get('MOCK_EXAMPLES', '40'))
  if os.environ.get('COUNT_CALLS'):
    count_calls()
  if os.environ.get('PAUSE_AFTER_FIRST_EPOCH'):
    pause_after_first_epoch(float(os.environ['PAUSE_AFTER_FIRST_EPOCH']))
  signal_hooks.install_from_environment()
  # As main.main does first: the synthetic data imports JAX before it runs.
  preemption.install()
  with synthetic_cifar.synthetic_cifar(num_examples):
    config_overrides.check_command_line(sys.argv)
    app.run(main.main)
