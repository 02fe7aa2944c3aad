"""Errors the commands report in one line, without a traceback.

Anything else (an exception raised inside a user's own block or module, or a
bug) keeps its traceback, so the user sees where it came from.
"""


class Error(Exception):
  """An expected failure with a message that says what to do."""


class ConfigError(Error, ValueError):
  """A configuration value (or a combination of them) that cannot run."""
