"""Test setup: 8 simulated CPU devices (must be set before jax initialises its backend)."""

import os

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
# Fashion-MNIST: the slice shipped in tests/fixtures (MIT licensed, made by scripts/make_fashion_mnist_fixture.py
# from Debian's package), so its tests run on every machine; point the variable at the full files to test those.
FASHION_MNIST_FIXTURE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fixtures", "fashion_mnist")
os.environ.setdefault("VLM_JAX_FASHION_MNIST_DIR", FASHION_MNIST_FIXTURE)

import pytest  # noqa: E402  (after the environment above, before anything imports jax)


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory):
  """The "tiny" shapes variant, prepared once per test session."""
  from vlm_jax.data import pipeline
  path = str(tmp_path_factory.mktemp("data"))
  pipeline.prepare_shapes(path, "tiny")
  return path
