"""Command-line config overrides shared by the tools that run many configs.

``main.py`` takes one config file and ml_collections parses its
``--config.FIELD=VALUE`` overrides. The grid and the gradient-flow tool run
several configs with one set of overrides: ml_collections parses the values
(typed by the config the flag was defined with) and ``apply`` copies them into
every config. ``check_fields`` runs before flag parsing, so an unknown field
stops with the valid ones listed rather than with ml_collections' traceback.
"""

import copy
import difflib
import importlib.util
import os
import sys
from typing import Any, Iterator, Mapping, Optional, Sequence

import ml_collections

PREFIXES = ('--config.', '--noconfig.')
CONFIG_DIR = os.path.join(
    os.path.dirname(os.path.dirname(os.path.abspath(__file__))), 'configs')


class UnknownFieldError(ValueError):
  """A ``--config.FIELD`` override names no field of the config."""


def field_names(config: ml_collections.ConfigDict,
                prefix: str = '') -> Iterator[str]:
  """Dotted names of every leaf field, e.g. 'model.depth'."""
  for key, value in config.items():
    if hasattr(value, 'items'):
      yield from field_names(value, f'{prefix}{key}.')
    else:
      yield f'{prefix}{key}'


def overridden_fields(argv: Sequence[str]) -> list[str]:
  """Fields named by ``--config.FIELD[=VALUE]`` arguments, in order."""
  names = []
  for arg in argv:
    for prefix in PREFIXES:
      if arg.startswith(prefix):
        names.append(arg[len(prefix):].split('=', 1)[0])
  return names


def check_fields(argv: Sequence[str],
                 config: ml_collections.ConfigDict) -> None:
  """Raises UnknownFieldError listing the valid fields for an unknown one."""
  valid = set(field_names(config))
  for field in overridden_fields(argv):
    if field not in valid:
      close = difflib.get_close_matches(field, valid, n=3)
      hint = f' Did you mean {", ".join(close)}?' if close else ''
      raise UnknownFieldError(
          f'unknown config field {field!r}.{hint} Valid fields: '
          f'{", ".join(sorted(valid))}.')


def exit_on_unknown_fields(argv: Sequence[str],
                           config: ml_collections.ConfigDict) -> None:
  """check_fields for a command line: prints the error and exits with 2."""
  try:
    check_fields(argv, config)
  except UnknownFieldError as e:
    print(f'error: {e}', file=sys.stderr)
    sys.exit(2)


def config_file_argument(argv: Sequence[str]) -> Optional[str]:
  """The value of ``--config=PATH`` or ``--config PATH`` in argv, if any."""
  for i, arg in enumerate(argv):
    if arg.startswith('--config='):
      return arg.split('=', 1)[1]
    if arg == '--config' and i + 1 < len(argv):
      return argv[i + 1]
  return None


def check_command_line(argv: Sequence[str]) -> None:
  """Exits with one line if ``--config`` names no file or a --config.X none.

  For commands whose ``--config`` is a config file; without one the flag
  parser reports the problem.
  """
  path = config_file_argument(argv)
  if not path:
    return
  if not os.path.isfile(path):
    folder = os.path.dirname(path) or '.'
    names = sorted(f for f in os.listdir(folder) if f.endswith('.py') and
                   not f.startswith('_')) if os.path.isdir(folder) else []
    hint = (f' Config files in {folder}/: {", ".join(names)}.' if names
            else '')
    print(f'error: no config file {path}.{hint}', file=sys.stderr)
    sys.exit(2)
  exit_on_unknown_fields(argv, load_config_file(path))


def apply(config: ml_collections.ConfigDict,
          values: Mapping[str, Any]) -> ml_collections.ConfigDict:
  """A copy of ``config`` with flat ``{'model.depth': 8}`` values set."""
  config = copy.deepcopy(config)
  check_fields([f'--config.{name}' for name in values], config)
  for name, value in values.items():
    node = config
    *parents, leaf = name.split('.')
    for parent in parents:
      node = node[parent]
    node[leaf] = value
  return config


def load_config_file(path: str) -> ml_collections.ConfigDict:
  """``get_config()`` of a config file such as configs/resnet20_cifar10.py."""
  if not os.path.exists(path):
    raise FileNotFoundError(f'No config file {path}.')
  root = os.path.dirname(os.path.dirname(os.path.abspath(path)))
  # Config files import ``configs.default`` from the repository root.
  if root not in sys.path:
    sys.path.insert(0, root)
  spec = importlib.util.spec_from_file_location(
      '_config_' + os.path.splitext(os.path.basename(path))[0], path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config()


def default_config() -> ml_collections.ConfigDict:
  """configs/default.py's config: the fields every config has."""
  return load_config_file(os.path.join(CONFIG_DIR, 'default.py'))
