"""SIGTERM / SIGINT handling: finish the current step, save a checkpoint, exit cleanly.

Preemptible machines send SIGTERM and allow some seconds; Ctrl-C sends SIGINT. Either sets a flag that
the training loop reads after each step. In a multi-process run every process must save at the same
step, so the flag is agreed on across processes (any process asked to stop -> all stop).
"""

import signal

import jax
import numpy as np
from jax.experimental import multihost_utils


class StopRequest:
  """Context manager installing the handlers; `agreed()` says whether to stop after this step."""

  SIGNALS = (signal.SIGTERM, signal.SIGINT)

  def __init__(self):
    self.signal_name = None
    self._previous = {}

  def _handle(self, signum, frame):
    del frame
    self.signal_name = signal.Signals(signum).name

  def __enter__(self):
    for sig in self.SIGNALS:
      self._previous[sig] = signal.signal(sig, self._handle)
    return self

  def __exit__(self, *exc):
    for sig, handler in self._previous.items():
      signal.signal(sig, handler)
    return False

  def agreed(self) -> bool:
    requested = self.signal_name is not None
    if jax.process_count() > 1:
      requested = bool(np.any(multihost_utils.process_allgather(np.array(requested))))
      if requested and self.signal_name is None:
        self.signal_name = "another process's signal"
    return requested
