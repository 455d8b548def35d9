"""Test setup: 8 simulated CPU devices and the tests' XLA flags (set before jax initialises its backend)."""

import os

from xla_env import xla_flags  # tests/ is on sys.path: pytest puts a conftest's folder there to import it

os.environ.setdefault("XLA_FLAGS", xla_flags(devices=8))  # with the quick compile and one kernel thread: xla_env.py
os.environ.setdefault("JAX_PLATFORMS", "cpu")
# Fashion-MNIST: the slice shipped in tests/fixtures (MIT licensed, made by scripts/make_fashion_mnist_fixture.py
# from Debian's package), so its tests run on every machine; point the variable at the full files to test those.
FASHION_MNIST_FIXTURE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fixtures", "fashion_mnist")
os.environ.setdefault("VLM_JAX_FASHION_MNIST_DIR", FASHION_MNIST_FIXTURE)

import pytest  # noqa: E402  (after the environment above, before anything imports jax)


def pytest_configure(config):
  """One persistent compilation cache for the whole test session: its xdist workers, the processes tests
  start and successive tests that build the same programs share compiled executables. A fresh folder per
  session (under the session's base temp), so nothing carries over between runs."""
  import tempfile
  from vlm_jax import compilation_cache
  worker = os.environ.get("PYTEST_XDIST_TESTRUNUID") or str(os.getpid())
  directory = os.path.join(tempfile.gettempdir(), f"vlm_jax_test_compilation_{worker}")
  os.environ["VLM_JAX_COMPILATION_CACHE"] = directory
  # Tests build the same small programs again and again (tiny runs, evaluators, the processes they start):
  # keep every one of them.
  os.environ["VLM_JAX_COMPILATION_CACHE_MIN_S"] = "0"
  compilation_cache.enable(directory)


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory):
  """The "tiny" shapes variant, prepared once per test session."""
  from vlm_jax.data import pipeline
  path = str(tmp_path_factory.mktemp("data"))
  pipeline.prepare_shapes(path, "tiny")
  return path
