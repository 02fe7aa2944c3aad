"""Train, evaluate or summarise a CIFAR ResNet.

  python main.py --config configs/resnet56_cifar100.py                # train
  python main.py --config configs/resnet56_cifar100.py --mode eval    # evaluate
  python main.py --config configs/resnet110_cifar100.py --mode summary
"""

import difflib
import importlib.util
import json
import os
import sys

from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags

from jax_resnet import platform

_CONFIG = config_flags.DEFINE_config_file(
    'config', None, 'Config file, e.g. configs/resnet20_cifar10.py.',
    lock_config=True)
_WORKDIR = flags.DEFINE_string(
    'workdir', None, 'Run directory; default runs/<config file name>.')
_MODE = flags.DEFINE_enum('mode', 'train', ['train', 'eval', 'summary'],
                          'train (resumes if the workdir has a checkpoint), '
                          'eval (restore and evaluate) or summary.')
flags.mark_flags_as_required(['config'])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  platform.configure()
  if not flags.FLAGS['verbosity'].present:
    logging.set_verbosity(logging.WARNING)
  # Imported after the platform settings, which must precede JAX's backend.
  from jax_resnet import summary  # pylint: disable=g-import-not-at-top
  from jax_resnet import train  # pylint: disable=g-import-not-at-top
  from jax_resnet import validation  # pylint: disable=g-import-not-at-top

  config = _CONFIG.value
  config_name = os.path.splitext(os.path.basename(
      config_flags.get_config_filename(flags.FLAGS['config'])))[0]
  workdir = _WORKDIR.value or os.path.join('runs', config_name)
  try:
    validation.validate_config(config)
    if _MODE.value == 'summary':
      print(summary.summarize(config))
    elif _MODE.value == 'eval':
      result = train.evaluate(config, workdir)
      print(f'test loss {result["test_loss"]:.4f}, test accuracy '
            f'{result["test_accuracy"]:.2f}% ({config.eval_checkpoint} '
            f'checkpoint, epoch {result["checkpoint_epoch"]}, step '
            f'{result["checkpoint_step"]})')
      print(json.dumps({k: result[k] for k in
                        ('test_accuracy', 'test_loss', 'checkpoint_step')}))
    else:
      train.train_and_evaluate(config, workdir)
  except (ValueError, FileNotFoundError, RuntimeError,
          FloatingPointError) as e:
    print(f'error: {e}', file=sys.stderr)
    sys.exit(1)


def check_overrides(argv: list[str]) -> None:
  """Exits with the valid field names if a --config.X override is unknown."""
  config_path = next((a.split('=', 1)[1] for a in argv
                      if a.startswith('--config=')), None)
  if config_path is None and '--config' in argv[:-1]:
    config_path = argv[argv.index('--config') + 1]
  if not config_path or not os.path.exists(config_path):
    return
  sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
  spec = importlib.util.spec_from_file_location('_run_config', config_path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  valid = set(_flatten(module.get_config()))
  for arg in argv:
    if arg.startswith('--config.'):
      field = arg[len('--config.'):].split('=', 1)[0]
      if field not in valid:
        close = difflib.get_close_matches(field, valid, n=3)
        hint = f' Did you mean {", ".join(close)}?' if close else ''
        print(f'error: unknown config field {field!r}.{hint} Valid fields: '
              f'{", ".join(sorted(valid))}.', file=sys.stderr)
        sys.exit(2)


def _flatten(config, prefix=''):
  for key, value in config.items():
    if hasattr(value, 'items'):
      yield from _flatten(value, f'{prefix}{key}.')
    else:
      yield f'{prefix}{key}'


if __name__ == '__main__':
  check_overrides(sys.argv)
  app.run(main)
