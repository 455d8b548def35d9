"""JAX's persistent compilation cache: a rerun, a resumed run or another process compiling the same
program (same HLO, same flags, same jax) loads the executable from disk instead of compiling it again.

Where: $VLM_JAX_COMPILATION_CACHE if set ("" or "off" disables it), else ~/.cache/vlm_jax/jax_compilation.
Programs that compile in under $VLM_JAX_COMPILATION_CACHE_MIN_S seconds (default 1) are not stored.
Entry points (python -m vlm_jax.train | evaluate | predict) call `enable()`; tests point it at a folder of
their own session and store every program. Each compile's seconds and cache outcome: vlm_jax/compile_log.py.
"""

import os

ENV = "VLM_JAX_COMPILATION_CACHE"
MIN_SECONDS_ENV = "VLM_JAX_COMPILATION_CACHE_MIN_S"
DEFAULT_DIR = "~/.cache/vlm_jax/jax_compilation"


def enable(directory: str | None = None) -> str | None:
  """Turns the cache on in `directory` (default: see the module docstring); returns it, or None if off."""
  import jax
  directory = directory if directory is not None else os.environ.get(ENV, DEFAULT_DIR)
  if directory in ("", "off"):
    return None
  directory = os.path.abspath(os.path.expanduser(directory))
  try:
    os.makedirs(directory, exist_ok=True)
  except OSError as e:  # a read-only home, say: run without the cache rather than fail
    print(f"warning: compilation cache {directory} cannot be created ({e.strerror}); compiling without it",
          flush=True)
    return None
  jax.config.update("jax_compilation_cache_dir", directory)
  # Programs that compile in under a second are cheaper to compile again than to read back.
  try:
    minimum = float(os.environ.get(MIN_SECONDS_ENV, "1.0"))
  except ValueError:
    print(f"warning: {MIN_SECONDS_ENV}={os.environ[MIN_SECONDS_ENV]!r} is not a number of seconds; using 1",
          flush=True)
    minimum = 1.0
  jax.config.update("jax_persistent_cache_min_compile_time_secs", minimum)
  return directory
