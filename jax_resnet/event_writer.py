"""TensorBoard scalars written without TensorFlow.

An event file is a TFRecord file of TensorBoard's ``Event`` protocol
buffers: a version record, then one record per scalar. The protocol buffers
and the record framing (length, masked CRC-32C) come from the ``tensorboard``
package, which needs no TensorFlow; writing through ``tf.summary`` (as
``flax.metrics.tensorboard`` does) would import TensorFlow, seconds of every
command's start. TensorBoard shows these scalars as it shows any other.
"""

import itertools
import os
import socket
import time

from tensorboard.compat.proto import event_pb2
from tensorboard.compat.proto import summary_pb2
from tensorboard.summary.writer import record_writer

# The event file format's version string, the first record of every file.
FILE_VERSION = 'brain.Event:2'
# Numbers the files this process opens: two writers in one second (a run
# resumed at once by the grid) never share a name.
_opened = itertools.count()


class SummaryWriter:
  """Scalars into a new event file in ``logdir``: ``scalar``, ``flush``,
  ``close``, as ``flax.metrics.tensorboard.SummaryWriter``."""

  def __init__(self, logdir: str):
    os.makedirs(logdir, exist_ok=True)
    # TensorBoard reads every file named *tfevents* in a run's directory,
    # in name order: the time first, as TensorFlow names them.
    self.path = os.path.join(
        logdir, f'events.out.tfevents.{int(time.time())}.'
        f'{socket.gethostname()}.{os.getpid()}.{next(_opened)}.v2')
    self._records = record_writer.RecordWriter(open(self.path, 'wb'))
    self._write(event_pb2.Event(file_version=FILE_VERSION))

  def _write(self, event: event_pb2.Event) -> None:
    event.wall_time = time.time()
    self._records.write(event.SerializeToString())

  def scalar(self, tag: str, value: float, step: int) -> None:
    """Logs ``value`` as ``tag`` at ``step``."""
    summary = summary_pb2.Summary(
        value=[summary_pb2.Summary.Value(tag=tag, simple_value=float(value))])
    self._write(event_pb2.Event(step=int(step), summary=summary))

  def flush(self) -> None:
    self._records.flush()

  def close(self) -> None:
    if not self._records.closed:
      self._records.close()
