"""Metrics to DIR/metrics.jsonl (one JSON object per line, each with "step") and TensorBoard events."""

import json
import math
import os

import numpy as np


def _plain(value):
  value = np.asarray(value).item() if hasattr(value, "shape") or isinstance(value, np.generic) else value
  return None if isinstance(value, float) and not math.isfinite(value) else value


def _summary_writer():
  """tensorboardX's SummaryWriter, imported without torch. tensorboardX imports torch whenever it is installed,
  only to accept torch tensors as values (2-3 s at the start of every run on a machine with torch; this one writes
  Python floats): `import torch` fails while sys.modules maps it to None, and tensorboardX falls back to numpy."""
  import sys
  block = "torch" not in sys.modules
  if block:
    sys.modules["torch"] = None
  try:
    from tensorboardX import SummaryWriter
  finally:
    if block:
      del sys.modules["torch"]  # torch stays importable for whoever wants it
  return SummaryWriter


class MetricsWriter:
  """Only process 0 writes; other processes get a writer that does nothing."""

  def __init__(self, workdir: str, enabled: bool = True):
    self.enabled = enabled
    self.path = os.path.join(workdir, "metrics.jsonl")
    self._tensorboard = None
    if enabled:
      self._tensorboard = _summary_writer()(os.path.join(workdir, "tensorboard"))

  def truncate_after(self, step: int) -> None:
    """On resume, drop lines a killed run logged after the checkpoint it resumes from."""
    if not self.enabled or not os.path.exists(self.path):
      return
    with open(self.path) as f:
      lines = [line for line in f if line.strip() and json.loads(line)["step"] <= step]
    with open(self.path + ".tmp", "w") as f:
      f.writelines(lines)
    os.replace(self.path + ".tmp", self.path)

  def write(self, step: int, metrics: dict) -> None:
    if not self.enabled:
      return
    record = {"step": int(step), **{k: _plain(v) for k, v in metrics.items()}}
    with open(self.path, "a") as f:
      f.write(json.dumps(record) + "\n")
    for key, value in record.items():
      if key != "step" and isinstance(value, (int, float)):
        self._tensorboard.add_scalar(key, value, step)
    self._tensorboard.flush()

  def close(self) -> None:
    if self._tensorboard is not None:
      self._tensorboard.close()
