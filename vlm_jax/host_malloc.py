"""glibc's malloc kept from handing freed memory back to the kernel, for runs on the CPU backend.

XLA:CPU allocates a step's buffers afresh every step. glibc serves a block over its mmap threshold (at most
32 MB) by mmap and unmaps it when it is freed, and gives the top of its heap back once more than the trim
threshold is free there: so every step writes to pages the kernel has to fault in anew. On the Fashion-MNIST ViT
(configs/fashion_mnist_vit.py, AMD EPYC, one core) that was ~15 000 page faults a step and a third of the step:
`python -m vlm_jax.benchmark --config configs/fashion_mnist_vit.py --vocab_size 256 --steps 200` pinned to one
core, 0.091 s a step with glibc's defaults, 0.056-0.059 s without mmap and trimming (experiments/README.md).

`keep_freed_memory()` turns both off (mallopt M_MMAP_MAX 0, M_TRIM_THRESHOLD 2 GB): freed blocks stay in the
heap and the next step reuses them. It also puts every thread on the one main arena (M_ARENA_MAX 1): XLA:CPU's
worker threads otherwise allocate from arenas of their own, whose heaps are mapped and faulted in anew as the work
moves between threads; with a convolution stem (config.model.vision.stem="conv") that was still ~12 000 faults a
step: 600 steps of the Fashion-MNIST ViT, one core, 10.8 M page faults and 106 CPU s -> 0.17 M and 65 CPU s (the
patch stem: 3.6 M and 60 CPU s -> 0.16 M and 45 CPU s; experiments/README.md). The price: the process keeps its
peak heap (up to 2 GB of free top) mapped, and threads take one lock to allocate.
The CLIs (vlm_jax/cli.py, vlm_jax/benchmark.py) call it through `keep_freed_memory_on_cpu()`. It does
nothing where the C library has no mallopt (not glibc), where $VLM_JAX_HOST_MALLOC is "system", or where the
user tunes glibc's malloc through its own MALLOC_* variables.
"""

import ctypes
import os

ENV = "VLM_JAX_HOST_MALLOC"  # "system": leave glibc's malloc as it is
M_TRIM_THRESHOLD, M_MMAP_MAX, M_ARENA_MAX = -1, -4, -8  # glibc's mallopt parameters (malloc.h)
TRIM_THRESHOLD = 2 ** 31 - 1  # mallopt takes an int: free top memory is given back only past 2 GB
_APPLIED = []


def _mallopt():
  """glibc's mallopt, or None where it must not or cannot be used (the opt-outs of the module docstring)."""
  if os.environ.get(ENV, "") == "system" or any(key.startswith("MALLOC_") for key in os.environ):
    return None
  try:
    mallopt = ctypes.CDLL(None).mallopt
  except (OSError, AttributeError):  # no C library to load, or one without mallopt
    return None
  mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
  return mallopt


def keep_freed_memory() -> bool:
  """Sets glibc's malloc to keep freed memory for reuse (see the module docstring); True if it did (now or in an
  earlier call), False where it does not apply. Threads that allocated before keep their own arenas."""
  if _APPLIED:
    return True
  mallopt = _mallopt()
  # glibc returns 1 on success; musl's stub returns 0 and changes nothing.
  if mallopt is None or (mallopt(M_MMAP_MAX, 0) != 1 or mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD) != 1
                         or mallopt(M_ARENA_MAX, 1) != 1):
    return False
  _APPLIED.append(True)
  return True


def keep_freed_memory_on_cpu() -> bool:
  """keep_freed_memory() where jax's default backend is the CPU (XLA:CPU's per-step buffers live in this heap);
  False, changing nothing, on an accelerator. Call it before jax starts its backend: the one-arena setting is made
  first, so that XLA:CPU's worker threads, started with the backend, allocate from the main arena too (an accelerator
  backend gets glibc's default back)."""
  mallopt = None if _APPLIED else _mallopt()
  if mallopt is not None:
    mallopt(M_ARENA_MAX, 1)
  import jax  # noqa: PLC0415 (keep_freed_memory itself needs no jax)
  if jax.default_backend() == "cpu":
    return keep_freed_memory()
  if mallopt is not None:
    mallopt(M_ARENA_MAX, 0)  # glibc's default: arenas as the threads need them
  return False
