"""XLA flags of the test processes (this one and every process a test starts).

The tests run tiny models for a few steps: compiling is nearly all of their time, running the compiled
program almost none. So they ask XLA:CPU for its quick backend (no LLVM optimisation passes), which
compiles about a third faster, and for single-threaded kernels: pytest-xdist already runs one test process
per core, and a second kernel thread per process only spins against the other process. Both compute the
same IEEE operations; every tolerance in tests/ already allows for operations in another order
(tests/tolerances.py), and bit-for-bit comparisons are between processes started with these same flags.
User runs keep XLA's defaults.
"""

import os

TEST_XLA_FLAGS = (
    "--xla_backend_optimization_level=0 --xla_llvm_disable_expensive_passes=true --xla_cpu_multi_thread_eigen=false")


def xla_flags(devices: int = 1) -> str:
  """XLA_FLAGS for a test process with `devices` simulated CPU devices."""
  return f"--xla_force_host_platform_device_count={devices} {TEST_XLA_FLAGS}"


def subprocess_env(devices: int = 1, **extra) -> dict:
  """os.environ for a process a test starts: CPU only, `devices` simulated devices, the fast compile."""
  return {**os.environ, "JAX_PLATFORMS": "cpu", "XLA_FLAGS": xla_flags(devices), **extra}
