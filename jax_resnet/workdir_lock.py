"""One command per workdir: a POSIX advisory lock on ``<workdir>/lock``.

Training, the PyTorch import and each run of a grid hold their workdir's
lock for as long as they write to it. A second such command on the same
workdir stops at once (``WorkdirLocked``), naming the holder's process id,
host and command, which the lock file holds while it is locked. The lock is
``fcntl.lockf``'s: the kernel releases it when the holder dies, so a
``kill -9`` never leaves a stale lock (at most a stale file, which the next
command takes over). A holder removes the file when it lets go.

``--mode eval`` takes no lock: it only reads, the latest complete
checkpoint, and may run while the workdir trains (``holder`` says by whom).

Network file systems: POSIX locks reach across hosts on NFSv4 (and NFSv3
with its lock daemon); on FUSE mounts of object stores (gcsfuse, s3fs) a
lock is seen by the processes of its own host only.
"""

import datetime
import fcntl
import json
import os
import socket
import sys
from typing import Any, Optional

from jax_resnet import errors

LOCK_FILE = 'lock'


def describe(record: Optional[dict[str, Any]]) -> str:
  """A lock holder's record in words."""
  if not record:
    return 'another process (it has not written its name yet)'
  return (f'process {record.get("pid")} on host {record.get("host")} '
          f'({record.get("command")}, since {record.get("started")})')


class WorkdirLocked(errors.Error):
  """Another process holds the workdir's lock (``holder``: its record)."""

  def __init__(self, message: str, holder_record: Optional[dict[str, Any]]):
    super().__init__(message)
    self.holder = holder_record


def holder(workdir: str) -> Optional[dict[str, Any]]:
  """Who holds ``workdir``'s lock now, or None if no one does."""
  path = os.path.join(workdir, LOCK_FILE)
  own = WorkdirLock.held.get(os.path.realpath(path))
  if own is not None:
    return own.record
  try:
    fd = os.open(path, os.O_RDONLY)
  except FileNotFoundError:
    return None
  try:
    # A read lock is refused while someone holds the (write) lock. (Not
    # for a lock of this process, answered above: fcntl locks are per
    # process, and closing any descriptor of the file would drop them.)
    try:
      fcntl.lockf(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except OSError:
      return _read(fd) or {}
    fcntl.lockf(fd, fcntl.LOCK_UN)
    return None
  finally:
    os.close(fd)


def _read(fd: int) -> Optional[dict[str, Any]]:
  try:
    text = os.pread(fd, 4096, 0).decode()
    return json.loads(text) if text.strip() else None
  except (OSError, ValueError):
    return None


class WorkdirLock:
  """The exclusive lock of one workdir, held by this process.

  ``acquire`` raises ``WorkdirLocked`` at once (no waiting) if another
  process holds it. A process must not open the lock file otherwise while
  it holds the lock: POSIX drops a process's locks on a file when any of
  its descriptors of that file closes (``holder`` answers for this
  process's own locks from ``held``).
  """

  # The locks this process holds, by the lock file's real path.
  held: dict[str, 'WorkdirLock'] = {}

  def __init__(self, workdir: str, command: str):
    self.workdir = workdir
    self.command = command
    self.path = os.path.join(workdir, LOCK_FILE)
    self._fd: Optional[int] = None
    self._created = False
    self.record: dict[str, Any] = {}

  def acquire(self) -> 'WorkdirLock':
    key = os.path.realpath(self.path)
    if key in WorkdirLock.held:
      raise WorkdirLocked(f'{self.workdir} is already locked by this '
                          f'process ({WorkdirLock.held[key].command}).',
                          WorkdirLock.held[key].record)
    self._created = not os.path.exists(self.workdir)
    while True:
      try:
        os.makedirs(self.workdir, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
      except OSError as e:
        why = errors.write_failure(e)
        if why is None:
          raise
        raise errors.Error(f'Cannot write to the workdir {self.workdir}: '
                           f'{why} ({e.strerror}). Use a writable '
                           '--workdir.') from None
      try:
        fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
      except OSError:
        found = _read(fd)
        os.close(fd)
        raise WorkdirLocked(
            f'{self.workdir} is in use by {describe(found)}. One command '
            'at a time per workdir: wait for it, stop it, or use another '
            '--workdir. (--mode eval may run beside it.)', found) from None
      # The holder before us may have removed the file between our open
      # and our lock: then the lock is on a file no one else will see.
      try:
        same = os.path.samestat(os.fstat(fd), os.stat(self.path))
      except FileNotFoundError:
        same = False
      if same:
        break
      os.close(fd)
    self.record = {'pid': os.getpid(), 'host': socket.gethostname(),
                   'command': self.command,
                   'started': datetime.datetime.now().astimezone().isoformat(
                       timespec='seconds')}
    os.ftruncate(fd, 0)
    os.pwrite(fd, (json.dumps(self.record) + '\n').encode(), 0)
    self._fd = fd
    WorkdirLock.held[key] = self
    return self

  def release(self) -> None:
    if self._fd is None:
      return
    WorkdirLock.held.pop(os.path.realpath(self.path), None)
    # Removed while still locked, so no one locks the old file after us.
    try:
      os.unlink(self.path)
    except FileNotFoundError:
      pass
    os.close(self._fd)
    self._fd = None
    if self._created:
      # A command that stopped before writing anything leaves no trace.
      try:
        os.rmdir(self.workdir)
      except OSError:
        pass

  def __enter__(self) -> 'WorkdirLock':
    return self.acquire()

  def __exit__(self, *exc_info) -> None:
    self.release()


def command_name() -> str:
  """This process's command line, shortened, for the lock file."""
  text = ' '.join(os.path.basename(a) if i == 0 else a
                  for i, a in enumerate(sys.argv))
  return text if len(text) <= 200 else text[:197] + '...'
