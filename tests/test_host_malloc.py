"""vlm_jax.host_malloc: freed memory is reused rather than handed back to the kernel and faulted in again."""

import os
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# A child process: allocate and write 64 MB (over glibc's largest mmap threshold, 32 MB) twice, freeing it in
# between, and print the page faults of the second time.
CHILD = """
import resource, sys
import numpy as np
from vlm_jax import host_malloc
print(host_malloc.keep_freed_memory())
np.ones(64 << 20, np.uint8)  # allocated, written, freed
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
np.ones(64 << 20, np.uint8)
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""
# 64 MB faulted in anew takes at least one fault per 2 MB page (numpy asks for transparent huge pages), 4 KB pages
# without them: 32 faults at the fewest.
FRESH_FAULTS = (64 << 20) // (2 << 20)


def _second_allocation(**env) -> tuple:
  environ = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_") and k != "VLM_JAX_HOST_MALLOC"}
  result = subprocess.run([sys.executable, "-c", CHILD], cwd=REPO, capture_output=True, text=True, timeout=60,
                          env={**environ, **env})
  assert result.returncode == 0, result.stderr
  applied, faults = result.stdout.split()
  return applied == "True", int(faults)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_a_freed_block_is_reused_without_page_faults_unless_switched_off():
  applied, faults = _second_allocation()
  if not applied:
    pytest.skip("this C library has no glibc mallopt")
  assert faults < FRESH_FAULTS // 4, faults  # the heap's pages are still mapped: (almost) nothing to fault in
  applied, faults = _second_allocation(VLM_JAX_HOST_MALLOC="system")
  assert not applied and faults >= FRESH_FAULTS, faults  # glibc's default: mmap'd anew, every page faulted in


# A child process: four threads alive at once each allocate 1 MB, then glibc's malloc_info (XML, one <heap> per
# arena) is written to a file and its arenas counted.
ARENAS_CHILD = """
import ctypes, sys, tempfile, threading
import numpy as np
from vlm_jax import host_malloc
host_malloc.keep_freed_memory()
barrier, kept = threading.Barrier(4), []
def work():
  barrier.wait()
  kept.append(np.ones(1 << 20, np.uint8))
  barrier.wait()
threads = [threading.Thread(target=work) for _ in range(4)]
[t.start() for t in threads]
[t.join() for t in threads]
libc = ctypes.CDLL(None)
libc.fopen.restype = ctypes.c_void_p
libc.fopen.argtypes = (ctypes.c_char_p, ctypes.c_char_p)
libc.malloc_info.argtypes = (ctypes.c_int, ctypes.c_void_p)
libc.fclose.argtypes = (ctypes.c_void_p,)
path = tempfile.mktemp()
stream = libc.fopen(path.encode(), b"w")
libc.malloc_info(0, stream)
libc.fclose(stream)
print(open(path).read().count("<heap nr="))
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_threads_share_the_main_arena_unless_switched_off():
  environ = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_") and k != "VLM_JAX_HOST_MALLOC"}
  run = lambda **env: subprocess.run([sys.executable, "-c", ARENAS_CHILD], cwd=REPO, capture_output=True, text=True,
                                     timeout=60, env={**environ, **env})
  if not _second_allocation()[0]:
    pytest.skip("this C library has no glibc mallopt")
  one, system = run(), run(VLM_JAX_HOST_MALLOC="system")
  assert one.returncode == 0 and system.returncode == 0, one.stderr + system.stderr
  assert int(one.stdout) == 1  # every thread allocates from the main arena
  assert int(system.stdout) > 1  # glibc's default: threads get arenas of their own

