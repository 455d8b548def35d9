"""vlm_jax's training step beside open_clip's CLIP (torch, CPU) on the same shapes, and the speed ratio.

    pip install -r benchmarks/requirements-open_clip.txt --no-deps   # open_clip_torch, ftfy (torch: CPU build)
    python benchmarks/open_clip_bench.py [--configs configs/bench_small.py,configs/bench_ti16.py] [--steps 10]
        [--repeats 3]

For each config, one after the other, two subprocesses with the same environment (thread settings
included): `python -m vlm_jax.benchmark --config CONFIG`, then this script in --worker mode, which builds
open_clip.CLIP from a config dict (no pretrained weights, nothing downloaded) with the config's shape and
times forward + ClipLoss + backward + AdamW on random inputs, float32, the same batch, after 2 warm-up
steps. Each prints one JSON line; the last line printed here is a summary with vlm_jax / open_clip img/s.
--repeats N runs the pair N times, interleaved, and keeps each one's best run (on a shared machine the
best run is the one least slowed by other work); each run records the load average after it.

What open_clip runs is its standard CLIP: a conv patch stem, a CLS token, learned positions, ln_pre,
CLS pooling; exact GELU (quick_gelu=False; vlm_jax's default activation is the tanh GELU); its text tower
is causal with argmax pooling. vlm_jax's bench configs use mean pooling without a CLS token (one token
fewer per image: 64 vs 65 and 196 vs 197). The FLOPs (hence MFU) of both are counted by
`vlm_jax.flops.train_flops_per_step` from the same config (the model module's forward_flops), and both MFUs
in the summary divide by the matmul peak measured in vlm_jax's process.

torch threads: torch.set_num_threads(os.cpu_count()) unless OMP_NUM_THREADS is set; XLA:CPU likewise uses
all cores. open_clip imports torchvision at import time but its CLIP never calls it; where torchvision is
missing or does not load beside the CPU torch (PyPI's torchvision wheels need PyPI's CUDA torch), a stub
module stands in for it, for the import only.
"""

import argparse
import importlib.machinery
import json
import os
import subprocess
import sys
import time
import types

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_CONFIGS = "configs/bench_small.py,configs/bench_ti16.py"
EOS_ID, BOS_ID = 2, 1


def _stub_torchvision() -> None:
  """Lets `import open_clip` succeed without a working torchvision (used only by its image transforms)."""
  try:
    import torchvision  # noqa: F401
    return
  except Exception:  # missing, or PyPI's CUDA build failing to register its ops beside the CPU torch
    for name in [m for m in sys.modules if m == "torchvision" or m.startswith("torchvision.")]:
      del sys.modules[name]

  class _Unavailable:
    def __init__(self, *args, **kwargs):
      raise RuntimeError("torchvision is not available (stubbed for open_clip's import)")

  class _Enum:
    def __getattr__(self, name):
      return name

  def _attribute(attr):
    if attr.startswith("__"):
      raise AttributeError(attr)
    return _Enum() if attr == "InterpolationMode" else _Unavailable

  def module(name):
    mod = types.ModuleType(name)
    mod.__path__ = []
    mod.__spec__ = importlib.machinery.ModuleSpec(name, None, is_package=True)
    mod.__getattr__ = _attribute
    sys.modules[name] = mod
    parent, _, child = name.rpartition(".")
    if parent:
      setattr(sys.modules[parent], child, mod)
    return mod

  for name in ("torchvision", "torchvision.ops", "torchvision.ops.misc", "torchvision.transforms",
               "torchvision.transforms.functional"):
    module(name)


def open_clip_model(config):
  _stub_torchvision()
  import open_clip
  m = config.model
  vision_cfg = dict(image_size=config.data.image_size, patch_size=m.vision.patch_size, width=m.vision.width,
                    layers=m.vision.depth, head_width=m.vision.width // m.vision.num_heads,
                    mlp_ratio=m.vision.mlp_dim / m.vision.width)
  text_cfg = dict(context_length=config.data.max_text_len, vocab_size=config.bench_vocab_size,
                  width=m.text.width, heads=m.text.num_heads, layers=m.text.depth,
                  mlp_ratio=m.text.mlp_dim / m.text.width)
  model = open_clip.CLIP(embed_dim=m.embed_dim, vision_cfg=vision_cfg, text_cfg=text_cfg, quick_gelu=False)
  return model, open_clip.ClipLoss(), open_clip.__version__


def open_clip_step(config, regions: bool = False):
  """(step, version): `step()` runs one open_clip training step (forward, ClipLoss, backward, gradient
  clipping, AdamW) on random inputs of the config's shape and returns the loss. regions=True wraps the loss,
  the backward pass and the optimizer update in torch.profiler.record_function ranges ("loss", "backward",
  "optimizer") for benchmarks/profile_ops.py."""
  import contextlib
  import numpy as np
  import torch
  if "OMP_NUM_THREADS" not in os.environ:
    torch.set_num_threads(os.cpu_count())
  torch.manual_seed(config.seed)
  model, loss_fn, version = open_clip_model(config)
  model.train()
  o = config.optimizer
  decay = [p for p in model.parameters() if p.ndim >= 2]
  no_decay = [p for p in model.parameters() if p.ndim < 2]
  optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": o.weight_decay},
                                 {"params": no_decay, "weight_decay": 0.0}],
                                lr=o.learning_rate, betas=(o.b1, o.b2))
  b, size, t = config.batch_size, config.data.image_size, config.data.max_text_len
  rng = np.random.default_rng(0)
  images = torch.from_numpy(rng.normal(size=(b, 3, size, size)).astype(np.float32))
  tokens = rng.integers(EOS_ID + 1, config.bench_vocab_size - 1, size=(b, t))
  tokens[:, 0] = BOS_ID
  for row, end in enumerate(rng.integers(t // 2, t, size=b)):
    tokens[row, end] = config.bench_vocab_size - 1  # open_clip pools at argmax: EOS is the largest id
    tokens[row, end + 1:] = 0
  text = torch.from_numpy(tokens.astype(np.int64))
  region = (lambda name: torch.profiler.record_function(name)) if regions else (lambda name: contextlib.nullcontext())

  def step():
    optimizer.zero_grad(set_to_none=True)
    image_features, text_features, logit_scale = model(images, text)
    with region("loss"):
      loss = loss_fn(image_features, text_features, logit_scale)
    with region("backward"):
      loss.backward()
    with region("optimizer"):
      torch.nn.utils.clip_grad_norm_(model.parameters(), o.grad_clip_norm)
      optimizer.step()
    return loss

  return step, version


def worker(config_path: str, steps: int, warmup: int) -> dict:
  import numpy as np
  from vlm_jax import flops, models, run_config
  # The peak is measured first: once torch has run, its OpenMP threads spin for a while and slow jax down.
  peak = flops.measure_matmul_peak()  # the measurement vlm_jax.benchmark reports (jax, float32)
  import torch
  config = run_config.load_config(config_path)
  step, version = open_clip_step(config)
  b = config.batch_size

  start = time.perf_counter()
  for _ in range(warmup):
    step()
  warmup_s = time.perf_counter() - start
  times, cpu_start = [], time.process_time()
  for _ in range(steps):
    start = time.perf_counter()
    loss = step()
    times.append(time.perf_counter() - start)
  cpu_s = (time.process_time() - cpu_start) / steps

  step_s = float(np.median(times))
  forward = models.get(config.model.name).forward_flops(config, config.bench_vocab_size, config.batch_size)
  step_flops = flops.train_flops_per_step(forward, config.batch_size)
  return {"benchmark": "open_clip", "open_clip_version": version, "torch_version": torch.__version__,
          "torch_threads": torch.get_num_threads(), "batch_size": b, "steps": steps,
          "img_per_s": b / step_s, "step_s": step_s, "step_s_min": float(np.min(times)), "warmup_s": warmup_s,
          "cpu_s_per_step": cpu_s,
          "gflops_per_step": step_flops / 1e9, "tflops_per_device": step_flops / step_s / 1e12,
          "mfu": step_flops / step_s / peak, "matmul_peak_tflops": peak / 1e12, "loss": float(loss)}


def _last_json(stdout: str) -> dict:
  for line in reversed(stdout.strip().splitlines()):
    if line.startswith("{"):
      return json.loads(line)
  raise RuntimeError(f"no JSON line in:\n{stdout[-2000:]}")


def _run(cmd: list) -> dict:
  proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
  if proc.returncode:
    sys.stderr.write(proc.stdout[-3000:] + proc.stderr[-3000:])
    raise SystemExit(f"failed ({proc.returncode}): {' '.join(cmd)}")
  return _last_json(proc.stdout)


def _load() -> float:
  """The 1-minute load average (os.getloadavg), recorded with each figure: other work on the machine."""
  return os.getloadavg()[0]


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--configs", default=DEFAULT_CONFIGS, help="comma-separated bench config files")
  parser.add_argument("--steps", type=int, default=10)
  parser.add_argument("--warmup", type=int, default=2)
  parser.add_argument("--worker", default="", help=argparse.SUPPRESS)  # internal: time open_clip on one config
  parser.add_argument("--skip_vlm_jax", action="store_true", help="time open_clip only")
  parser.add_argument("--repeats", type=int, default=1,
                      help="runs of each, interleaved; the summary keeps each one's best (highest img/s)")
  args = parser.parse_args()
  if args.worker:
    print(json.dumps(worker(args.worker, args.steps, args.warmup)), flush=True)
    return

  if args.repeats < 1:
    raise SystemExit("--repeats must be at least 1")
  summary = {}
  for path in args.configs.split(","):
    name = os.path.splitext(os.path.basename(path))[0]
    runs = {"vlm_jax": [], "open_clip": []}
    for _ in range(args.repeats):  # interleaved, so a change in the machine's load hits both alike
      if not args.skip_vlm_jax:
        runs["vlm_jax"].append({**_run([sys.executable, "-m", "vlm_jax.benchmark", "--config", path,
                                        f"--steps={args.steps}", f"--warmup={args.warmup}"]), "load_avg": _load()})
        print(json.dumps({"config": name, **runs["vlm_jax"][-1]}), flush=True)
      runs["open_clip"].append({**_run([sys.executable, os.path.abspath(__file__), "--worker", path,
                                        f"--steps={args.steps}", f"--warmup={args.warmup}"]), "load_avg": _load()})
      print(json.dumps({"config": name, **runs["open_clip"][-1]}), flush=True)
    row = {k: max(v, key=lambda r: r["img_per_s"]) for k, v in runs.items() if v}  # best of the repeats
    if "vlm_jax" in row:  # one peak for both MFUs: the one measured by vlm_jax's process
      row["open_clip"]["mfu"] = row["open_clip"]["tflops_per_device"] / row["vlm_jax"]["matmul_peak_tflops"]
    summary[name] = {f"{k}_{key}": round(v[key], 4) for k, v in row.items()
                     for key in ("img_per_s", "step_s", "cpu_s_per_step", "tflops_per_device", "mfu", "load_avg")}
    summary[name]["matmul_peak_tflops"] = round(row.get("vlm_jax", row["open_clip"])["matmul_peak_tflops"], 4)
    summary[name]["repeats"] = args.repeats
    if "vlm_jax" in row:
      summary[name]["ratio_img_per_s"] = round(row["vlm_jax"]["img_per_s"] / row["open_clip"]["img_per_s"], 3)
  print(json.dumps({"summary": summary}), flush=True)


if __name__ == "__main__":
  main()
