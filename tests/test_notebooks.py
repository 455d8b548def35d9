"""The notebooks in colabs/ run top to bottom without an error in fast mode (VLM_JAX_FAST=1).

Each notebook is executed with nbclient in a fresh kernel that runs *this* interpreter (a kernelspec
written to a temporary folder, so no globally registered `python3` kernel can substitute another Python),
with the tiny data variant prepared once in a temporary folder shared by the three notebooks.
The three together are meant to take under 120 s on 2 CPU cores.
"""

import glob
import json
import os
import resource
import sys
import time

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")
from jupyter_client import KernelManager  # noqa: E402  (installed with nbclient)
from jupyter_client.kernelspec import KernelSpecManager  # noqa: E402
from xla_env import xla_flags  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
COLABS = os.path.join(REPO, "colabs")
NOTEBOOKS = sorted(glob.glob(os.path.join(COLABS, "*.ipynb")))
TIMINGS = {}


def kernel_manager(kernels_dir: str) -> KernelManager:
  """A manager whose `python3` kernel is sys.executable -m ipykernel_launcher, nothing else."""
  spec_dir = os.path.join(kernels_dir, "python3")
  os.makedirs(spec_dir, exist_ok=True)
  with open(os.path.join(spec_dir, "kernel.json"), "w") as f:
    json.dump({"argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
               "display_name": "Python 3 (vlm_jax tests)", "language": "python"}, f)
  specs = KernelSpecManager(kernel_dirs=[kernels_dir], ensure_native_kernel=False)
  km = KernelManager(kernel_name="python3", kernel_spec_manager=specs)
  assert km.kernel_spec.argv[0] == sys.executable, km.kernel_spec.argv
  return km


def kernel_env(data_dir: str, tmp_dir: str) -> dict:
  """Fast mode, the shared data folder, and TMPDIR (the notebooks' workdirs) under pytest's tmp_path."""
  env = dict(os.environ, VLM_JAX_FAST="1", VLM_JAX_DATA_DIR=data_dir, TMPDIR=tmp_dir, JAX_PLATFORMS="cpu",
             PYTHONPATH=os.pathsep.join(filter(None, [REPO, os.environ.get("PYTHONPATH")])))
  env.pop("MPLBACKEND", None)  # the kernel's inline backend: figures become outputs
  env["XLA_FLAGS"] = xla_flags(devices=1)  # conftest's 8 simulated devices are for the sharding tests
  # The session's compilation cache (conftest) for the kernels too, through jax's own variables (the notebooks
  # call the trainer, not the CLI that enables it): programs the notebooks share compile once.
  cache = os.environ.get("VLM_JAX_COMPILATION_CACHE")
  if cache:
    env.update(JAX_COMPILATION_CACHE_DIR=cache, JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0")
  return env


def test_there_are_notebooks():
  names = {os.path.basename(p) for p in NOTEBOOKS}
  assert {"how_a_vlm_sees.ipynb", "train_clip_and_captioner.ipynb", "llava_two_stage.ipynb"} <= names


@pytest.mark.parametrize("path", NOTEBOOKS, ids=os.path.basename)
def test_notebook_is_committed_without_outputs(path):
  nb = nbformat.read(path, as_version=4)
  nbformat.validate(nb)
  for cell in nb.cells:
    if cell.cell_type == "code":
      assert not cell.outputs and cell.execution_count is None, f"{path}: strip the outputs before committing"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=os.path.basename)
def test_notebook_runs_in_fast_mode(path, tmp_path, tmp_path_factory):
  data_dir = str(tmp_path_factory.getbasetemp() / "notebook_data")  # shared: prepared by the first notebook
  nb = nbformat.read(path, as_version=4)
  client = nbclient.NotebookClient(
      nb, km=kernel_manager(str(tmp_path_factory.mktemp("kernels"))), timeout=300,
      resources={"metadata": {"path": COLABS}})
  km = client.km
  start, cpu = time.time(), resource.getrusage(resource.RUSAGE_CHILDREN)
  try:
    client.execute(env=kernel_env(data_dir, str(tmp_path)))  # raises CellExecutionError naming the cell on any error
  finally:
    km.shutdown_kernel(now=False)  # the client does not shut down a kernel it was given
  after = resource.getrusage(resource.RUSAGE_CHILDREN)
  name = os.path.basename(path)
  TIMINGS[name] = time.time() - start
  print(f"{name} ran in {TIMINGS[name]:.1f} s wall, kernel CPU {after.ru_utime + after.ru_stime - cpu.ru_utime - cpu.ru_stime:.1f} s")
  if os.environ.get("VLM_JAX_NOTEBOOK_OUTPUTS"):  # a folder to keep the executed notebooks in, to look at
    os.makedirs(os.environ["VLM_JAX_NOTEBOOK_OUTPUTS"], exist_ok=True)
    nbformat.write(nb, os.path.join(os.environ["VLM_JAX_NOTEBOOK_OUTPUTS"], name))
  errors = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs if o.output_type == "error"]
  assert not errors
  images = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs
            if o.output_type == "display_data" and "image/png" in o.get("data", {})]
  assert images, "the notebook shows no plot"
