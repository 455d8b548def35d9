"""Test setup: 8 simulated CPU devices (must be set before jax initialises its backend)."""

import os

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import pytest  # noqa: E402  (after the environment above, before anything imports jax)


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory):
  """The "tiny" shapes variant, prepared once per test session."""
  from vlm_jax.data import pipeline
  path = str(tmp_path_factory.mktemp("data"))
  pipeline.prepare_shapes(path, "tiny")
  return path
