"""The benchmark CLI runs a tiny override for 2 steps and prints its JSON keys (no timing asserted); the per-op
profile (benchmarks/profile_ops.py) puts each op of either library in its row."""

import json
import os
import subprocess
import sys

from xla_env import subprocess_env

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
KEYS = ("img_per_s", "step_s", "tflops_per_device", "mfu", "matmul_peak_tflops")


def test_benchmark_cli_prints_json():
  env = subprocess_env(devices=1)
  cmd = [sys.executable, "-m", "vlm_jax.benchmark", "--config", os.path.join(REPO, "configs", "bench_small.py"),
         "--steps=2", "--warmup=1", "--config.batch_size=4", "--config.data.image_size=16",
         "--config.data.max_text_len=8", "--config.model.vision.width=32", "--config.model.vision.depth=1",
         "--config.model.vision.num_heads=2", "--config.model.vision.mlp_dim=64",
         "--config.model.text.width=32", "--config.model.text.depth=1", "--config.model.text.num_heads=2",
         "--config.model.text.mlp_dim=64", "--config.model.embed_dim=16", "--config.bench_vocab_size=64"]
  proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, proc.stderr[-2000:]
  result = json.loads(proc.stdout.strip().splitlines()[-1])
  for key in KEYS:
    assert key in result and result[key] > 0, (key, result)
  assert result["steps"] == 2 and result["batch_size"] == 4


def test_benchmark_needs_vocab_size():
  env = {**os.environ, "JAX_PLATFORMS": "cpu"}
  cmd = [sys.executable, "-m", "vlm_jax.benchmark", "--config", os.path.join(REPO, "configs", "shapes_clip.py"),
         "--steps=1", "--warmup=1"]
  proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
  assert proc.returncode == 1
  assert "vocabulary size" in proc.stderr


def _profile_ops():
  """benchmarks/profile_ops.py as a module (benchmarks/ is scripts, not a package)."""
  import importlib.util
  spec = importlib.util.spec_from_file_location("profile_ops", os.path.join(REPO, "benchmarks", "profile_ops.py"))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def test_profile_ops_puts_traced_thunks_in_their_rows(tmp_path):
  """Every XLA:CPU thunk of a traced program is found in its compiled HLO, and a matmul's thunks land in the
  row of its sizes: the three sorted (M, K, N) of x float[64, 32] @ w float[32, 16], forward and backward."""
  import jax
  import jax.numpy as jnp
  po = _profile_ops()
  x, w = jnp.ones((64, 32)), jnp.ones((32, 16))
  model = jax.named_call(lambda x, w: jnp.tanh(x @ w), name="Model")  # op names "jvp(Model)/...", as flax's
  fn = jax.jit(jax.grad(lambda x, w: jnp.sum(model(x, w)), argnums=(0, 1)))
  compiled = fn.lower(x, w).compile()
  hlo = po.parse_hlo(compiled.as_text())
  jax.block_until_ready(compiled(x, w))
  jax.profiler.start_trace(str(tmp_path))
  jax.block_until_ready(compiled(x, w))
  jax.profiler.stop_trace()
  thunks = po.trace_thunks(str(tmp_path))
  assert thunks and all(op in hlo for op in thunks), sorted(thunks)
  rows = {po.categorize_thunk(hlo, op) for op in thunks}
  assert po.matmul_key(64, 32, 16) in rows, rows
  assert not {r for r in rows if r and r.startswith(po.MATMUL)} - {po.matmul_key(64, 32, 16)}, rows


def test_profile_ops_torch_rows_match_the_jax_rows():
  """open_clip's ops land in the rows vlm_jax's do: addmm and mm by their sizes, the stride-p patch
  convolution (forward and backward) in the row of the patch Dense [B*N, 3p^2] x [3p^2, D], the fused
  attention in the attention core, and the loss and optimizer by their record_function ranges."""
  po = _profile_ops()
  dense = po.matmul_key(4096, 192, 256)  # 64 images of 64 px in patches of 8: [4096, 192] x [192, 256]
  assert po.categorize_torch("aten::addmm", [[256], [4096, 192], [192, 256]], "") == dense
  assert po.categorize_torch("aten::mm", [[192, 4096], [4096, 256]], "backward") == dense
  assert po.categorize_torch("aten::mkldnn_convolution", [[64, 3, 64, 64], [256, 3, 8, 8], [256]], "") == dense
  assert po.categorize_torch("aten::convolution_backward", [[64, 256, 8, 8], [64, 3, 64, 64], [256, 3, 8, 8]],
                             "backward") == dense
  assert po.categorize_torch("aten::_scaled_dot_product_flash_attention_for_cpu", [], "") == po.ATTENTION
  assert po.categorize_torch("aten::mm", [[64, 256], [256, 64]], "loss") == po.LOSS
  assert po.categorize_torch("aten::_foreach_mul_", [], "optimizer") == po.OPTIMIZER
  assert po.categorize_torch("aten::native_layer_norm", [[64, 65, 256]], "") == po.NORMS
