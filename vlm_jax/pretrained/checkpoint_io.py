"""Reading and writing transformers-format directories: config.json plus safetensors, no torch.

Tensors are read with the `safetensors` package's numpy API. NumPy has no bfloat16, which that API
rejects, so bfloat16 files are decoded from the (documented, simple) safetensors layout with ml_dtypes.
Every tensor comes back as float32 (or its integer type): import computes in float32.
"""

import json
import os
import struct

import ml_dtypes
import numpy as np
import safetensors.numpy

from vlm_jax import hf_configs
from vlm_jax.errors import UserError

CONFIG = "config.json"
WEIGHTS = "model.safetensors"
INDEX = "model.safetensors.index.json"


def read_config(directory: str) -> dict:
  """The parsed config.json of a transformers checkpoint directory."""
  return hf_configs.read_config(directory, CONFIG)


def _read_bfloat16_file(path: str) -> dict:
  """Decode a safetensors file holding bfloat16 tensors: u64 header size, JSON header, raw bytes."""
  with open(path, "rb") as f:
    (header_size,) = struct.unpack("<Q", f.read(8))
    header = json.loads(f.read(header_size))
    data = f.read()
  dtypes = {"BF16": ml_dtypes.bfloat16, "F16": np.float16, "F32": np.float32, "F64": np.float64,
            "I64": np.int64, "I32": np.int32, "BOOL": np.bool_}
  tensors = {}
  for name, info in header.items():
    if name == "__metadata__":
      continue
    if info["dtype"] not in dtypes:
      raise UserError(f"{path}: tensor {name} has unsupported dtype {info['dtype']}")
    start, end = info["data_offsets"]
    tensors[name] = np.frombuffer(data[start:end], dtype=dtypes[info["dtype"]]).reshape(info["shape"])
  return tensors


def _read_file(path: str) -> dict:
  try:
    tensors = safetensors.numpy.load_file(path)
  except TypeError as e:  # "data type 'bfloat16' not understood"
    if "bfloat16" not in str(e):
      raise
    tensors = _read_bfloat16_file(path)
  return {k: v.astype(np.float32) if np.issubdtype(v.dtype, np.floating) or v.dtype == ml_dtypes.bfloat16
          else v for k, v in tensors.items()}


def read_tensors(directory: str) -> dict:
  """All tensors of model.safetensors, or of the shards its index lists: name -> np.ndarray."""
  single, index = os.path.join(directory, WEIGHTS), os.path.join(directory, INDEX)
  if os.path.isfile(single):
    return _read_file(single)
  if os.path.isfile(index):
    with open(index) as f:
      shards = sorted(set(json.load(f)["weight_map"].values()))
    tensors = {}
    for shard in shards:
      tensors.update(_read_file(os.path.join(directory, shard)))
    return tensors
  raise UserError(f"{directory} has neither {WEIGHTS} nor {INDEX} (only safetensors weights are read)")


def write_checkpoint(directory: str, config: dict, tensors: dict) -> None:
  """Write config.json and model.safetensors (float32, contiguous) into `directory`."""
  os.makedirs(directory, exist_ok=True)
  with open(os.path.join(directory, CONFIG), "w") as f:
    json.dump(config, f, indent=2, sort_keys=True)
  # np.array, not np.ascontiguousarray: the latter turns a scalar (CLIP logit_scale) into shape [1].
  arrays = {k: np.array(v, np.float32, order="C") for k, v in tensors.items()}
  safetensors.numpy.save_file(arrays, os.path.join(directory, WEIGHTS), metadata={"format": "pt"})


class TensorSource:
  """Hands out checkpoint tensors by name and remembers which were missing or never used.

  Conversion code asks for every tensor it needs; `check()` then raises one UserError naming all the
  missing tensors (and the unexpected ones), so a wrong checkpoint is diagnosed in a single run.
  """
  # Buffers some transformers versions saved; they hold no learned values.
  IGNORED_SUFFIXES = (".position_ids", "rotary_emb.inv_freq")

  def __init__(self, tensors: dict, architecture: str):
    self.tensors = tensors
    self.architecture = architecture
    self.used = set()
    self.missing = []

  def __contains__(self, name):
    return name in self.tensors

  def get(self, name: str):
    """The tensor `name`, or None when missing (then reported by `check`)."""
    if name not in self.tensors:
      if name not in self.missing:  # a fused tensor is asked for once per chunk
        self.missing.append(name)
      return None
    self.used.add(name)
    return self.tensors[name]

  def check(self) -> None:
    """Raise UserError naming missing tensors and tensors the conversion did not use."""
    unused = sorted(n for n in self.tensors if n not in self.used and not n.endswith(self.IGNORED_SUFFIXES))
    problems = []
    if self.missing:
      problems.append(f"missing tensors: {', '.join(self.missing)}")
    if unused:
      problems.append(f"unexpected tensors (not part of a supported {self.architecture}): {', '.join(unused)}")
    if problems:
      raise UserError(f"{self.architecture} checkpoint does not match its config; " + "; ".join(problems))
