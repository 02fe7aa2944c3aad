"""Command-line config overrides: ml_collections' own, for every command.

Every command defines its ``--config`` flag here (``define_config_file`` or
``define_config_dict``), so ml_collections parses ``--config.FIELD=VALUE``
the same way everywhere, typed by the field's value. Tools that run several
configs with one set of overrides (grid, gradflow, benchmark) take the parsed
values (``config_flags.get_override_values``) and ``apply`` them to each.

``model.block_kwargs`` is open: its keys are the fields of whatever block
the run uses, so ``--config.model.block_kwargs.NAME=VALUE`` may add a key
(parsed as a Python literal, else a string); the block then checks the name.
Every other unknown field stops before flag parsing (``check_fields``) with
the valid ones listed rather than with ml_collections' traceback.
"""

import copy
import difflib
import functools
import importlib.util
import os
import sys
import traceback
from typing import Any, Iterator, Mapping, Optional, Sequence

import ml_collections
from ml_collections import config_flags

from jax_resnet import errors

PREFIXES = ('--config.', '--noconfig.')
# ConfigDicts whose keys the command line may add.
OPEN_FIELDS = ('model.block_kwargs',)
CONFIG_DIR = os.path.join(
    os.path.dirname(os.path.dirname(os.path.abspath(__file__))), 'configs')


class UnknownFieldError(errors.ConfigError):
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


# Fields of earlier versions, and where they went.
MOVED_FIELDS = {f'model.{name}': f'model.block_kwargs.{name}' for name in (
    'cardinality', 'base_width', 'scale', 'se_reduction', 'radix')}


def _check_names(names: Sequence[str], valid: set[str]) -> None:
  for field in names:
    if field in valid or field.startswith(tuple(f + '.'
                                                for f in OPEN_FIELDS)):
      continue
    if field in MOVED_FIELDS:
      raise UnknownFieldError(f'config field {field!r} is now '
                              f'{MOVED_FIELDS[field]!r}.')
    close = difflib.get_close_matches(field, valid, n=3)
    hint = f' Did you mean {", ".join(close)}?' if close else ''
    raise UnknownFieldError(
        f'unknown config field {field!r}.{hint} Valid fields: '
        f'{", ".join(sorted(valid))}.')


def check_fields(argv: Sequence[str],
                 config: ml_collections.ConfigDict) -> None:
  """Raises UnknownFieldError listing the valid fields for an unknown one."""
  _check_names(overridden_fields(argv), set(field_names(config)))


def check_config_fields(config: ml_collections.ConfigDict) -> None:
  """Raises UnknownFieldError for a field configs/default.py does not have.

  A config file that sets an unknown field (a typo, a field of an earlier
  version) would otherwise have it silently ignored.
  """
  _check_names(list(field_names(config)), set(_default_field_names()))


@functools.lru_cache(maxsize=None)
def _default_field_names() -> frozenset[str]:
  """The fields of configs/default.py, read once per process."""
  return frozenset(field_names(default_config()))


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
  try:
    config = load_config_file(path)
  except errors.ConfigError as e:
    print(f'error: {e}', file=sys.stderr)
    sys.exit(2)
  exit_on_unknown_fields(argv, config)


def define_config_file(help_string: str, name: str = 'config'):
  """``--config`` as a config file with ``--config.FIELD`` overrides."""
  return config_flags.DEFINE_config_file(
      name, None, help_string, lock_config=False, accept_new_attributes=True)


def define_config_dict(config: ml_collections.ConfigDict, help_string: str,
                       name: str = 'config'):
  """``--config.FIELD`` overrides of ``config`` (no file)."""
  return config_flags.DEFINE_config_dict(
      name, config, help_string, lock_config=False,
      accept_new_attributes=True)


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
    raise errors.ConfigError(f'No config file {path}.')
  root = os.path.dirname(os.path.dirname(os.path.abspath(path)))
  # Config files import ``configs.default`` from the repository root.
  if root not in sys.path:
    sys.path.insert(0, root)
  spec = importlib.util.spec_from_file_location(
      '_config_' + os.path.splitext(os.path.basename(path))[0], path)
  module = importlib.util.module_from_spec(spec)
  try:
    spec.loader.exec_module(module)
    if not callable(getattr(module, 'get_config', None)):
      raise errors.ConfigError(
          f'config file {path} defines no get_config(); a config file '
          'returns its ConfigDict from get_config() (see configs/).')
    return module.get_config()
  except errors.Error:
    raise
  except Exception as e:  # pylint: disable=broad-except
    raise errors.ConfigError(
        f'config file {path} raised {type(e).__name__}: {e}\n'
        f'  {_where(e, path)}') from e


def _where(error: BaseException, path: str) -> str:
  """Where in the config files (``path`` or one it imports) ``error``
  arose: the innermost frame outside this project's own code, else the
  innermost one."""
  if isinstance(error, SyntaxError) and error.filename:
    return (f'at {error.filename}, line {error.lineno}: '
            f'{(error.text or "").strip()}')
  frames = traceback.extract_tb(error.__traceback__)
  package = os.path.dirname(os.path.abspath(__file__))
  own = [f for f in frames if not os.path.abspath(f.filename).startswith(
      package + os.sep) and '<frozen' not in f.filename]
  frame = (own or frames)[-1] if frames else None
  if frame is None:
    return f'at {path}'
  return f'at {frame.filename}, line {frame.lineno}, in {frame.name}: ' + (
      frame.line or '').strip()


def default_config() -> ml_collections.ConfigDict:
  """configs/default.py's config: the fields every config has."""
  return load_config_file(os.path.join(CONFIG_DIR, 'default.py'))
