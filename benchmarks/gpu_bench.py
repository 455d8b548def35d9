"""The accelerator benchmark: training img/s, TFLOP/s per device, MFU against the chip's dense bf16 peak and peak
memory for bench_ti16 and a CLIP ViT-B/16 at batch 256, and a Llama decoder's decode tokens/s; a markdown table.

    bash benchmarks/gpu.sh [--out gpu_bench.md] [--steps 20] [--cases train_b16,decode_b1]
    bash benchmarks/gpu.sh --dry-run --out /tmp/gpu_dry.md     # the whole script on CPU at tiny sizes

Cases (each in its own process, so that each peak memory is its own and one failure leaves the others):
- train_ti16: configs/bench_ti16.py, the training step of vlm_jax.benchmark.run_benchmark (loss, gradients,
  clipping, AdamW), random inputs;
- train_b16: configs/bench_b16.py, CLIP ViT-B/16 at batch 256 (the issue's target: >= 50% bf16 MFU on an H100);
- decode_b1, decode_b32: a Llama-3.2-1B-shaped causal LM (width 2048, 16 layers, 32 query and 8 key/value
  heads of 64, SwiGLU 8192, vocabulary 128256; random weights) decoding greedily with the key/value cache
  (decoding.make_generate), prompts of 128 tokens, 128 new tokens per row, EOS disabled; tokens/s count new
  tokens, prefill included in the time.
Every case computes in bfloat16 (--config.model.dtype=bfloat16); config.model.param_dtype (--param_dtype) and
config.model.attention (--attention) are set where the config has those keys, and the table says what ran.

FLOPs: vlm_jax.flops (training: 3x the forward pass; causal attention counted half, as MaxText counts;
decoding: flops.decode_flops). MFU = TFLOP/s per device / the chip's dense bf16 peak (flops.PEAK_FLOPS by
device_kind); a chip not in that table (CPUs among them) gets no MFU, and a note says so. Peak memory: the
allocator's peak_bytes_in_use (jax memory_stats), where the device reports it. Compile: the step's (or
generate's) trace, lowering and XLA seconds, and whether the persistent compilation cache served it.
--dry-run: CPU, tiny shapes, 2 timed steps: checks that the script runs end to end, not a measurement.
Writes --out (markdown) and the same rows as JSON beside it (--out with .json).
"""

import argparse
import ast
import datetime
import json
import math
import os
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TRAIN_CASES = {"train_ti16": "configs/bench_ti16.py", "train_b16": "configs/bench_b16.py"}
DECODE_CASES = {"decode_b1": 1, "decode_b32": 32}
CASES = tuple(TRAIN_CASES) + tuple(DECODE_CASES)

# The decoder: Llama 3.2 1B's shape. Dry run: a tiny one of the same kind.
LLAMA = dict(width=2048, depth=16, num_heads=32, num_kv_heads=8, head_dim=64, mlp_dim=8192, vocab=128256,
             rope_theta=500_000.0, prompt=128, new=128)
TINY_LLAMA = dict(width=64, depth=2, num_heads=4, num_kv_heads=2, head_dim=16, mlp_dim=128, vocab=256,
                  rope_theta=10_000.0, prompt=8, new=8)
TINY_TRAIN = {"batch_size": 4, "data.image_size": 32, "data.max_text_len": 8, "model.embed_dim": 16,
              "model.vision.width": 32, "model.vision.depth": 1, "model.vision.num_heads": 2,
              "model.vision.mlp_dim": 64, "model.text.width": 32, "model.text.depth": 1, "model.text.num_heads": 2,
              "model.text.mlp_dim": 64, "bench_vocab_size": 64}

COLUMNS = ("case", "model", "batch", "compute / params", "throughput", "step ms", "TFLOP/s/device", "MFU",
           "peak memory GiB", "compile s")


def set_if_present(config, key: str, value, notes: list) -> None:
  """config.KEY = value where the config has KEY (dotted); a note where it does not (an older vlm_jax)."""
  *parents, last = key.split(".")
  node = config
  for name in parents:
    node = node.get(name) if hasattr(node, "get") else None
  if node is not None and last in node:
    node[last] = value
  else:
    notes.append(f"config.{key} does not exist in this vlm_jax: left out")


def _literal(text: str):
  """A --set value as Python reads it (3, 0.5, True, "dots"), else the text itself."""
  try:
    return ast.literal_eval(text)
  except (ValueError, SyntaxError):
    return text


def device_summary() -> dict:
  import jax
  from vlm_jax import flops
  device = jax.devices()[0]
  return {"platform": device.platform, "device_kind": device.device_kind, "devices": jax.device_count(),
          "jax": jax.__version__, "bf16_peak_tflops": (flops.dense_bf16_peak(device.device_kind) or 0) / 1e12 or None}


def mfu(tflops_per_device: float, summary: dict) -> float | None:
  peak = summary["bf16_peak_tflops"]
  return tflops_per_device / peak if peak else None


def run_train_case(name: str, args) -> dict:
  from vlm_jax import benchmark, run_config
  notes = []
  config = run_config.load_config(os.path.join(REPO, TRAIN_CASES[name]))
  config.model.dtype = "bfloat16"
  if args.param_dtype:
    set_if_present(config, "model.param_dtype", args.param_dtype, notes)
  if args.attention:
    set_if_present(config, "model.attention", args.attention, notes)
  if args.dry_run:
    for key, value in TINY_TRAIN.items():
      set_if_present(config, key, value, notes)
  for setting in args.set or ():
    key, _, value = setting.partition("=")
    set_if_present(config, key, _literal(value), notes)
  result = benchmark.run_benchmark(config, steps=args.steps, warmup=args.warmup)
  summary = device_summary()
  m = config.model
  return {**summary, "case": name, "notes": notes, "batch": config.batch_size,
          "model": (f"{m.name} ViT w{m.vision.width}-d{m.vision.depth}/{m.vision.patch_size} "
                    f"{config.data.image_size}px {m.vision.pool}, "
                    f"text w{m.text.width}-d{m.text.depth}-ctx{config.data.max_text_len}"),
          "compute_dtype": m.dtype, "param_dtype": m.get("param_dtype", "float32"),
          "attention": m.get("attention", None), "throughput": result["img_per_s"], "unit": "img/s",
          "step_ms": result["step_s"] * 1e3, "tflops_per_device": result["tflops_per_device"],
          "mfu": mfu(result["tflops_per_device"], summary), "peak_memory_bytes": result["peak_memory_bytes"],
          "compile_s": result["train_step_compile_s"], "cache": result["train_step_cache"],
          "gflops_per_step": result["gflops_per_step"], "loss": result["loss"]}


def run_decode_case(name: str, args) -> dict:
  import jax
  import jax.numpy as jnp
  import numpy as np
  from vlm_jax import benchmark, compile_log, decoding, flops, models, train_state
  from vlm_jax.models import towers
  from vlm_jax.run_config import base_config
  notes = []
  shape = TINY_LLAMA if args.dry_run else LLAMA
  batch = 2 if args.dry_run and DECODE_CASES[name] > 1 else DECODE_CASES[name]
  prompt, new = shape["prompt"], shape["new"]
  config = base_config()
  config.model.name = "causal_lm"
  config.model.dtype = "bfloat16"
  config.model.text.update(width=shape["width"], depth=shape["depth"], num_heads=shape["num_heads"],
                           num_kv_heads=shape["num_kv_heads"], head_dim=shape["head_dim"], mlp_dim=shape["mlp_dim"],
                           mlp="swiglu", norm="rmsnorm", posemb="rope", rope_theta=shape["rope_theta"],
                           use_bias=False, tied_embedding=True, norm_eps=1e-5)
  config.data.max_text_len = prompt + new
  if args.param_dtype:
    set_if_present(config, "model.param_dtype", args.param_dtype, notes)
  if args.attention:
    set_if_present(config, "model.attention", args.attention, notes)
  model_module = models.get(config.model.name)
  model = models.build_model(config.model, vocab_size=shape["vocab"], max_len=prompt + new, eos_id=2, pad_id=0)
  sample = models.sample_batch(model_module.FEATURES, 1, config.data.image_size, prompt + new)
  params = jax.jit(lambda rng: train_state.init_params(model, rng, sample, towers.param_dtype_of(config.model)))(
      jax.random.key(0))
  decode_params = jax.jit(decoding.prepare_params)(params)
  del params  # the decoder reads its own layout; one copy of the weights on the device
  param_dtypes = sorted({str(x.dtype) for x in jax.tree.leaves(decode_params)})
  n_params = sum(x.size for x in jax.tree.leaves(decode_params))
  generate = decoding.make_generate(model, decoding.DecodeConfig(method="greedy", max_steps=new), eos_id=-1,
                                    prompt_len=prompt)
  tokens = np.zeros((batch, prompt + new), np.int32)
  tokens[:, :prompt] = np.random.default_rng(0).integers(3, shape["vocab"], (batch, prompt))
  tokens, start, key = jnp.asarray(tokens), jnp.full((batch,), prompt, jnp.int32), jax.random.key(0)
  compile_log.LOG.programs.pop("generate", None)
  run = lambda: jax.block_until_ready(generate(decode_params, None, tokens, start, key))
  for _ in range(args.warmup):
    out = run()
  written = np.asarray(out[0])[:, prompt:]
  if not (written != 0).all():
    notes.append("some rows wrote padding: fewer new tokens than counted")
  times = []
  for _ in range(args.steps):
    begin = time.perf_counter()
    run()
    times.append(time.perf_counter() - begin)
  seconds = float(np.median(times))
  summary = device_summary()
  total_flops = batch * flops.decode_flops(config.model.text, prompt, new, shape["vocab"])
  tflops = total_flops / seconds / summary["devices"] / 1e12
  compiled = compile_log.LOG.programs.get("generate")
  return {**summary, "case": name, "notes": notes, "batch": batch,
          "model": (f"Llama {_count(n_params)} w{shape['width']}-d{shape['depth']} "
                    f"{shape['num_heads']}/{shape['num_kv_heads']} heads, prompt {prompt} + {new} new"),
          "compute_dtype": config.model.dtype, "param_dtype": "/".join(param_dtypes),
          "attention": config.model.get("attention", None), "throughput": batch * new / seconds, "unit": "tok/s",
          "step_ms": seconds / new * 1e3, "tflops_per_device": tflops, "mfu": mfu(tflops, summary),
          "peak_memory_bytes": benchmark.peak_memory_bytes(), "compile_s": compiled.compile_s if compiled else None,
          "cache": compiled.cache if compiled else None, "gflops_per_call": total_flops / 1e9}


def _count(n: int) -> str:
  return f"{n / 1e9:.2f}B" if n >= 1e8 else f"{n / 1e6:.2f}M"


def run_case(name: str, args) -> dict:
  from vlm_jax import compilation_cache
  compilation_cache.enable()
  return run_train_case(name, args) if name in TRAIN_CASES else run_decode_case(name, args)


def _number(value, digits: int) -> str:
  return "" if value is None or (isinstance(value, float) and not math.isfinite(value)) else f"{value:.{digits}f}"


def _significant(value) -> str:
  """Four significant digits: 412.3 on a GPU, 0.0002134 in a dry run."""
  return _number(value, 0) and f"{value:.4g}"


def markdown(rows: list, header: dict) -> str:
  """The table and the notes under it."""
  lines = [f"# vlm_jax accelerator benchmark ({header['mode']})", "",
           f"{header['date']}; device {header['device_kind']} x {header['devices']} ({header['platform']}); "
           f"jax {header['jax']}; dense bf16 peak {_number(header['bf16_peak_tflops'], 0) or 'unknown'} TFLOP/s; "
           f"`{header['command']}`", "",
           "| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
  notes, row_notes = list(header["notes"]), {}
  for row in rows:
    if "error" in row:
      lines.append(f"| {row['case']} | failed: {row['error']} |" + " |" * (len(COLUMNS) - 2))
      continue
    memory = row["peak_memory_bytes"]
    dtypes = f"{row['compute_dtype']} / {row['param_dtype']}"
    if row.get("attention"):
      dtypes += f", attention {row['attention']}"
    compile_s = _number(row["compile_s"], 1)
    if compile_s and row.get("cache"):
      compile_s += f" ({row['cache']})"
    cells = [row["case"], row["model"], str(row["batch"]), dtypes, f"{_number(row['throughput'], 1)} {row['unit']}",
             _number(row["step_ms"], 2), _significant(row["tflops_per_device"]),
             f"{row['mfu']:.1%}" if row["mfu"] is not None else "", _number(memory / 2**30, 2) if memory else "",
             compile_s]
    lines.append("| " + " | ".join(cells) + " |")
    for note in row["notes"]:
      row_notes.setdefault(note, []).append(row["case"])
  done = [r["case"] for r in rows if "error" not in r]
  notes += [f"{note} ({'every case' if cases == done else ', '.join(cases)})" for note, cases in row_notes.items()]
  if rows and all(r.get("mfu") is None for r in rows if "error" not in r):
    notes.append(f"MFU blank: {header['device_kind']} has no dense bf16 peak in vlm_jax.flops.PEAK_FLOPS")
  if rows and all(not r.get("peak_memory_bytes") for r in rows if "error" not in r):
    notes.append(f"peak memory blank: {header['platform']} devices report no memory_stats")
  notes.append("step ms: one training step; for decoding, one new token of the batch (prefill included)")
  lines += [""] + [f"- {note}" for note in notes]
  return "\n".join(lines) + "\n"


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--out", default="gpu_bench.md", help="markdown table (and FILE.json beside it)")
  parser.add_argument("--dry-run", action="store_true", help="CPU, tiny shapes, a few steps")
  parser.add_argument("--steps", type=int, default=0, help="timed steps or decode calls (0: 20, dry run 2)")
  parser.add_argument("--warmup", type=int, default=0, help="untimed first steps (0: 3, dry run 1)")
  parser.add_argument("--cases", default=",".join(CASES), help=f"comma-separated, of {', '.join(CASES)}")
  parser.add_argument("--param_dtype", default="bfloat16", help="config.model.param_dtype, where the key exists")
  parser.add_argument("--attention", default="", help="config.model.attention, where the key exists ('': default)")
  parser.add_argument("--set", action="append", metavar="KEY=VALUE",
                      help="a training config override where the key exists, e.g. --set model.remat=dots (repeatable)")
  parser.add_argument("--case", help=argparse.SUPPRESS)  # internal: run one case in this process
  parser.add_argument("--result", help=argparse.SUPPRESS)  # internal: where that case writes its JSON
  args = parser.parse_args()
  args.steps = args.steps or (2 if args.dry_run else 20)
  args.warmup = args.warmup or (1 if args.dry_run else 3)
  if args.dry_run:
    os.environ["JAX_PLATFORMS"] = "cpu"

  if args.case:  # a child: one case, its row as JSON
    row = run_case(args.case, args)
    with open(args.result, "w") as f:
      json.dump(row, f)
    return

  cases = [c.strip() for c in args.cases.split(",") if c.strip()]
  unknown = [c for c in cases if c not in CASES]
  if unknown:
    raise SystemExit(f"gpu_bench: unknown case {unknown[0]!r}; expected some of {', '.join(CASES)}")
  rows, env = [], {**os.environ, "PYTHONPATH": REPO + os.pathsep + os.environ.get("PYTHONPATH", "")}
  with tempfile.TemporaryDirectory() as scratch:
    for case in cases:
      result = os.path.join(scratch, f"{case}.json")
      command = [sys.executable, os.path.abspath(__file__), "--case", case, "--result", result,
                 f"--steps={args.steps}", f"--warmup={args.warmup}", f"--param_dtype={args.param_dtype}",
                 f"--attention={args.attention}"] + [f"--set={s}" for s in args.set or ()]
      command += ["--dry-run"] if args.dry_run else []
      print(f"gpu_bench: {case} ...", flush=True)
      begin = time.time()
      proc = subprocess.run(command, env=env, capture_output=True, text=True)
      if proc.returncode != 0 or not os.path.exists(result):
        last = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        print(f"gpu_bench: {case} failed ({time.time() - begin:.0f} s): {last}", flush=True)
        rows.append({"case": case, "error": last[:200]})
        continue
      with open(result) as f:
        row = json.load(f)
      rows.append(row)
      print(f"gpu_bench: {case}: {row['throughput']:.1f} {row['unit']}, {row['tflops_per_device']:.3f} TFLOP/s/device"
            f" ({time.time() - begin:.0f} s)", flush=True)

  done = [r for r in rows if "error" not in r]
  first = done[0] if done else {"platform": "?", "device_kind": "?", "devices": 0, "jax": "?", "bf16_peak_tflops": None}
  header = {key: first[key] for key in ("platform", "device_kind", "devices", "jax", "bf16_peak_tflops")}
  header.update(mode="dry run: CPU, tiny shapes, not a measurement" if args.dry_run else "measured",
                date=datetime.datetime.now().strftime("%Y-%m-%d %H:%M"), notes=[],
                command="bash benchmarks/gpu.sh " + " ".join(sys.argv[1:]))
  table = markdown(rows, header)
  out = os.path.abspath(args.out)
  os.makedirs(os.path.dirname(out), exist_ok=True)
  with open(out, "w") as f:
    f.write(table)
  with open(os.path.splitext(out)[0] + ".json", "w") as f:
    json.dump({"header": header, "rows": rows}, f, indent=1)
  print(table, flush=True)
  if not done:
    sys.exit(1)


if __name__ == "__main__":
  main()
