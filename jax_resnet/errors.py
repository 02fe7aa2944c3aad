"""Errors the commands report in one line, without a traceback.

Anything else (an exception raised inside a user's own block or module, or a
bug) keeps its traceback, so the user sees where it came from.
"""

import errno
import os
from typing import Optional

# What an OS error when writing means, by errno.
WRITE_FAILURES = {
    errno.ENOSPC: 'no space left on the device',
    errno.EDQUOT: 'the disk quota is exceeded',
    errno.EACCES: 'permission denied',
    errno.EPERM: 'operation not permitted',
    errno.EROFS: 'the file system is read-only',
}


class Error(Exception):
  """An expected failure with a message that says what to do."""


class ConfigError(Error, ValueError):
  """A configuration value (or a combination of them) that cannot run."""


def write_failure(error: Optional[BaseException]) -> Optional[str]:
  """What went wrong, in words, if ``error`` (or an error it came from) is
  a failure to write a file (``WRITE_FAILURES``); else None. Orbax reports
  its writes' OS errors in messages, with the errno."""
  while error is not None:
    if isinstance(error, OSError) and error.errno in WRITE_FAILURES:
      return WRITE_FAILURES[error.errno]
    text = str(error)
    for code, words in WRITE_FAILURES.items():
      if f"os_error_code='{code}'" in text or os.strerror(code) in text:
        return words
    error = error.__cause__ or error.__context__
  return None
