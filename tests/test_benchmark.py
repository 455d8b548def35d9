"""The benchmark CLI runs a tiny override for 2 steps and prints its JSON keys (no timing asserted)."""

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
