"""Where a training step's time goes, vlm_jax beside open_clip on the same shapes: one table, ms per step by kind of op.

    python benchmarks/profile_ops.py [--configs configs/bench_small.py,configs/bench_ti16.py] [--steps 3]
        [--matmuls 4] [--skip_torch] [--tiny] [--jax_flags=--xla_cpu_...] [--json out.json]

For each config, in separate processes (as benchmarks/open_clip_bench.py does, so one library's threads never
slow the other's): vlm_jax's train step (vlm_jax.benchmark.prepare_step: the trainer's step) is compiled,
warmed up and traced with jax.profiler for --steps steps; every XLA:CPU thunk of the trace (its "hlo_op") is
looked up in the compiled HLO and put in a category by what it computes and where in the program it comes
from (the op_name metadata: the model's forward "jvp(Model)/...", its backward "transpose(jvp(Model))/...",
the loss "jvp()/...", everything outside the gradient is the optimizer update). open_clip's step
(open_clip_bench.open_clip_step) runs under torch.profiler with input shapes; each aten op's self time goes
to the same categories (the loss and the optimizer by their record_function ranges).

Categories: "matmul M·K·N" (one row per matmul family: the three sizes sorted, so a layer's forward matmul
and its two backward ones share a row, as do a stride-p patch convolution and the patch Dense), "attention
core" (QKᵀ, mask, softmax, AV and their gradients, or torch's fused scaled_dot_product_attention),
"layout copies / transposes", "slices / stacking / broadcasts" (dynamic slices and updates, and broadcasts
written out: a scanned stack's zero-filled stacked residuals, the broadcast operands of XLA:CPU's YNNPACK
fusions), "norms", "GELU / MLP elementwise", "other elementwise" (residual adds,
embeddings, pooling, biases), "optimizer update" (gradient norm, clipping, AdamW, the non-finite guard),
"loss". A thunk's time is the wall time of its event, so on a loaded machine the shares mean more than the
milliseconds; "sum of ops / step" says how much of the step the ops cover.

--matmuls N adds, for the N matmul families vlm_jax spends the most on, a microbenchmark of the same
shapes in both libraries (each family's three orientations: X·W, dY·Wᵀ, Xᵀ·dY), in GFLOP/s: whether
XLA:CPU's dot kernels or the program around them make the difference. --tiny shrinks the configs to a
width-32, depth-1 model (the test's mode); --skip_torch profiles vlm_jax only.
"""

import argparse
import collections
import glob
import json
import os
import re
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_CONFIGS = "configs/bench_small.py,configs/bench_ti16.py"

MATMUL = "matmul"
ATTENTION = "attention core (QKᵀ, mask, softmax, AV)"
LAYOUT = "layout copies / transposes"
SCAN = "slices / stacking / broadcasts"
NORMS = "norms"
GELU = "GELU / MLP elementwise"
ELEMENTWISE = "other elementwise"
OPTIMIZER = "optimizer update (norm, clip, AdamW)"
LOSS = "loss"
CATEGORIES = (ATTENTION, LAYOUT, SCAN, NORMS, GELU, ELEMENTWISE, OPTIMIZER, LOSS)

TINY = dict(batch_size=4, image_size=16, patch_size=8, width=32, depth=1, heads=2, mlp=64, text_len=8, vocab=64)


def matmul_key(m: int, k: int, n: int, batch: int = 1) -> str:
  """The row of a matmul family: its three sizes sorted (forward and both backward matmuls of a layer
  share it), with the batch count in front when batched."""
  sizes = "·".join(str(s) for s in sorted((m, k, n), reverse=True))
  return f"{MATMUL} {batch}×{sizes}" if batch > 1 else f"{MATMUL} {sizes}"


def load_config(path: str, tiny: bool, overrides: str = ""):
  """The bench config at `path`, shrunk by --tiny, then --override "model.scan=False,batch_size=8" applied."""
  import ast
  from vlm_jax import run_config
  config = run_config.load_config(path)
  if tiny:
    t = TINY
    config.batch_size, config.data.image_size, config.data.max_text_len = t["batch_size"], t["image_size"], t["text_len"]
    config.model.embed_dim, config.bench_vocab_size = 16, t["vocab"]
    config.model.vision.update(dict(patch_size=t["patch_size"], width=t["width"], depth=t["depth"],
                                    num_heads=t["heads"], mlp_dim=t["mlp"]))
    config.model.text.update(dict(width=t["width"], depth=t["depth"], num_heads=t["heads"], mlp_dim=t["mlp"]))
  for item in filter(None, overrides.split(",")):
    key, _, value = item.partition("=")
    *parents, last = key.strip().split(".")
    section = config
    for parent in parents:
      section = section[parent]
    try:
      section[last] = ast.literal_eval(value)
    except (ValueError, SyntaxError):
      section[last] = value
  return config


# ---------------------------------------------------------------------------------------------------------
# vlm_jax: the compiled HLO and a jax.profiler trace.

_INSTRUCTION = re.compile(r"^\s*(?:ROOT )?%(\S+) = (.*?) ([a-z][a-z0-9-]*)\((.*)$")
_COMPUTATION = re.compile(r"^(?:ENTRY )?%(\S+) ")
_SHAPE = re.compile(r"[a-z]+[0-9]*\[([0-9,]*)\]")


def _dims(text: str) -> list:
  return [int(d) for d in text.split(",") if d]


def parse_hlo(text: str) -> dict:
  """{instruction name: {"opcode", "shape" (the text before the opcode), "operands" (names), "calls"
  (computation names), "op_name", "attrs" (the text after the operands)}} and "__computations__": {name:
  [instruction names]} of an optimized HLO module's text."""
  instructions, computations, current = {}, {}, None
  for line in text.splitlines():
    if not line.startswith(" "):
      match = _COMPUTATION.match(line)
      if match and line.rstrip().endswith("{"):
        current = match.group(1)
        computations[current] = []
      continue
    match = _INSTRUCTION.match(line)
    if not match:
      continue
    name, shape, opcode, rest = match.groups()
    op_name = re.search(r'op_name="([^"]*)"', rest)
    calls = re.findall(r"(?:calls|body|condition|to_apply|branch_computations)=\{?%([\w.-]+)", rest)
    instructions[name] = dict(opcode=opcode, shape=shape, operands=re.findall(r"%([\w.-]+)", rest.split(")", 1)[0]),
                              calls=calls, op_name=op_name.group(1) if op_name else "", attrs=rest)
    computations.setdefault(current, []).append(name)
  instructions["__computations__"] = computations
  return instructions


_LAYOUT_OPS = {"transpose", "copy", "bitcast", "reshape", "slice", "concatenate", "pad", "reverse", "parameter",
               "tuple", "get-tuple-element", "constant", "iota"}
_SCAN_OPS = {"dynamic-slice", "dynamic-update-slice", "broadcast"}
_CONTROL = {"while", "call", "conditional"}


def _fused_instructions(hlo: dict, name: str) -> list:
  """The instructions a thunk computes: the instruction itself, or those of the computations it calls."""
  inst = hlo[name]
  if inst["opcode"] != "fusion":
    return [inst]
  out = []
  for computation in inst["calls"]:
    for inner in hlo["__computations__"].get(computation, []):
      out.extend(_fused_instructions(hlo, inner) if hlo[inner]["opcode"] == "fusion" else [hlo[inner]])
  return out


def _shape_of(hlo: dict, name: str) -> list:
  match = _SHAPE.search(hlo[name]["shape"]) if name in hlo else None
  return _dims(match.group(1)) if match else []


def _dot_sizes(hlo: dict, inst: dict):
  """(batch, M, K, N) of a dot or convolution instruction, or None."""
  lhs, rhs = (_shape_of(hlo, o) for o in inst["operands"][:2])
  if inst["opcode"] == "dot":
    attr = lambda key: _dims(re.search(key + r"=\{([0-9,]*)\}", inst["attrs"]).group(1)) \
        if re.search(key + r"=\{", inst["attrs"]) else []
    lb, lc, rb, rc = (attr(k) for k in ("lhs_batch_dims", "lhs_contracting_dims", "rhs_batch_dims",
                                        "rhs_contracting_dims"))
    prod = lambda shape, dims: int(__import__("math").prod(shape[d] for d in dims))
    batch, k = prod(lhs, lb), prod(lhs, lc)
    m = prod(lhs, [d for d in range(len(lhs)) if d not in lb + lc])
    n = prod(rhs, [d for d in range(len(rhs)) if d not in rb + rc])
    return batch, m, k, n
  out = _dims(_SHAPE.search(inst["shape"]).group(1))  # convolution: output [b, ..., features] (dim_labels aside)
  import math
  k = math.prod(rhs) // out[-1] if rhs else 1
  return 1, math.prod(out) // out[-1], k, out[-1]


def _program_part(op_name: str) -> str:
  """"model", "loss" or "optimizer" by where an op's op_name says it comes from."""
  if re.search(r"jvp\([A-Z]", op_name):
    return "model"
  if "jvp(" in op_name:
    return "loss"
  return "optimizer"


def categorize_thunk(hlo: dict, name: str):
  """The category of the thunk `name` (None for control flow, whose body thunks are counted themselves)."""
  inst = hlo.get(name)
  if inst is None:
    return ELEMENTWISE
  if inst["opcode"] in _CONTROL:
    return None
  ops = _fused_instructions(hlo, name)
  op_name = inst["op_name"] or next((o["op_name"] for o in reversed(ops) if o["op_name"]), "")
  part = _program_part(op_name)
  dots = [o for o in ops if o["opcode"] in ("dot", "convolution")]
  if part == "optimizer" and not dots:
    return OPTIMIZER
  if part == "loss":
    return LOSS
  if dots:
    batch, m, k, n = _dot_sizes(hlo, dots[0])
    if batch > 1 and "attention" in (dots[0]["op_name"] or op_name):
      return ATTENTION
    return matmul_key(m, k, n, batch)
  opcodes = {o["opcode"] for o in ops}
  if opcodes <= _LAYOUT_OPS | _SCAN_OPS:
    return SCAN if opcodes & _SCAN_OPS else LAYOUT
  if "attention" in op_name and not re.search(r"/(add|concatenate|split|slice|squeeze)\b", op_name):
    return ATTENTION
  if re.search(r"/\w*norm\w*/", op_name):
    return NORMS
  if "gelu" in op_name or "/mlp/" in op_name:
    return GELU
  return ELEMENTWISE


def trace_thunks(trace_dir: str) -> dict:
  """{hlo_op: total ns} over the XLA:CPU thunk events of the trace written to `trace_dir`."""
  import jax
  path = sorted(glob.glob(os.path.join(trace_dir, "**", "*.xplane.pb"), recursive=True))[-1]
  totals = collections.Counter()
  for plane in jax.profiler.ProfileData.from_file(path).planes:
    for line in plane.lines:
      for event in line.events:
        op = dict(event.stats).get("hlo_op")
        if op:
          totals[op] += event.duration_ns
  return totals


def jax_worker(config_path: str, steps: int, tiny: bool, overrides: str = "") -> dict:
  import flax.linen as nn
  import jax
  from vlm_jax import benchmark, sharding
  config = load_config(config_path, tiny, overrides)
  prepared = benchmark.prepare_step(config)
  state, mesh, rules = prepared["state"], prepared["mesh"], prepared["rules"]
  with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
    batch = sharding.global_batch(prepared["host_batch"], mesh)
    jitted = getattr(prepared["step_fn"], "__wrapped__", prepared["step_fn"])  # compile_log.named wraps it
    compiled = jitted.lower(state, batch).compile()
    hlo = parse_hlo(compiled.as_text())
    for _ in range(2):
      state, metrics = compiled(state, batch)
    jax.block_until_ready((state, metrics))
    with tempfile.TemporaryDirectory() as trace_dir:
      jax.profiler.start_trace(trace_dir)
      state, metrics, times, cpu_s = benchmark.timed_steps(compiled, state, batch, steps)
      cpu_ms = 1e3 * cpu_s
      jax.profiler.stop_trace()
      thunks = trace_thunks(trace_dir)
  categories = collections.Counter()
  for op, ns in thunks.items():
    category = categorize_thunk(hlo, op)
    if category:
      categories[category] += ns / 1e6 / steps
  return {"library": "vlm_jax", "step_ms": 1e3 * min(times), "cpu_ms": cpu_ms, "categories": dict(categories)}


# ---------------------------------------------------------------------------------------------------------
# open_clip: torch.profiler.

_TORCH_LAYOUT = re.compile(r"aten::(copy_|clone|contiguous|cat|stack|permute|transpose|t|view|reshape|_unsafe_view|"
                           r"expand|as_strided|select|slice|unbind|chunk|split|squeeze|unsqueeze|flatten|"
                           r"unflatten|narrow|_reshape_alias|detach|alias)$")


def _torch_matmul_sizes(name: str, shapes: list):
  """(batch, M, K, N) of an aten matmul or convolution from its input shapes, or None."""
  import math
  if name == "aten::addmm" and len(shapes) >= 3 and len(shapes[1]) == 2:
    (m, k), (_, n) = shapes[1], shapes[2]
    return 1, m, k, n
  if name == "aten::mm" and len(shapes[0]) == 2:
    (m, k), (_, n) = shapes[0], shapes[1]
    return 1, m, k, n
  if name in ("aten::bmm", "aten::baddbmm") and len(shapes) >= 2:
    a, b = (shapes[1], shapes[2]) if name == "aten::baddbmm" else (shapes[0], shapes[1])
    return a[0], a[1], a[2], b[2]
  if "convolution" in name and len(shapes) >= 3:
    if "backward" in name:  # (grad_output [B, O, H', W'], input, weight [O, C, kh, kw])
      grad, weight = shapes[0], shapes[2]
    else:  # (input, weight, ...): the output size from the stride-p patch stem's weight
      weight = shapes[1]
      grad = [shapes[0][0], weight[0], shapes[0][2] // weight[2], shapes[0][3] // weight[3]]
    if len(weight) != 4 or len(grad) != 4:
      return None
    return 1, grad[0] * grad[2] * grad[3], math.prod(weight[1:]), weight[0]
  return None


def categorize_torch(name: str, shapes: list, region: str) -> str:
  """The category of an aten op's self time; `region` the record_function range it ran in ("" if none)."""
  if region == "optimizer":
    return OPTIMIZER
  if region == "loss":
    return LOSS
  if "scaled_dot_product" in name or "flash_attention" in name or "softmax" in name:
    return ATTENTION
  sizes = _torch_matmul_sizes(name, shapes)
  if sizes:
    batch, m, k, n = sizes
    return ATTENTION if batch > 1 else matmul_key(m, k, n)
  if "layer_norm" in name:
    return NORMS
  if "gelu" in name:
    return GELU
  if _TORCH_LAYOUT.match(name):
    return LAYOUT
  return ELEMENTWISE


def torch_worker(config_path: str, steps: int, tiny: bool, overrides: str = "") -> dict:
  sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
  import open_clip_bench
  import torch
  config = load_config(config_path, tiny, overrides)
  step, _ = open_clip_bench.open_clip_step(config, regions=True)
  for _ in range(2):
    step()
  times = []
  with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU], record_shapes=True) as prof:
    cpu_start = time.process_time()
    for _ in range(steps):
      start = time.perf_counter()
      step()
      times.append(time.perf_counter() - start)
    cpu_ms = 1e3 * (time.process_time() - cpu_start) / steps
  categories = collections.Counter()
  regions = ("loss", "backward", "optimizer")
  for event in prof.events():
    if event.name in regions or event.name.startswith(("ProfilerStep", "autograd::engine")):
      continue
    parent, region = event.cpu_parent, ""
    while parent is not None:
      if parent.name in regions:
        region = parent.name
        break
      parent = parent.cpu_parent
    self_us = event.self_cpu_time_total
    if self_us > 0:
      categories[categorize_torch(event.name, event.input_shapes or [], region)] += self_us / 1e3 / steps
  return {"library": "open_clip", "step_ms": 1e3 * min(times), "cpu_ms": cpu_ms, "categories": dict(categories)}


# ---------------------------------------------------------------------------------------------------------
# The same matmul shapes in both libraries.


def _orientations(m: int, k: int, n: int) -> list:
  """A layer's three matmuls for X float[m, k] · W float[k, n]: (a shape, b shape, transpose a, transpose b)."""
  return [((m, k), (k, n), False, False), ((m, n), (k, n), False, True), ((m, k), (m, n), True, False)]


def matmul_worker(library: str, families: list, repeats: int = 5, cpu_time: bool = False) -> dict:
  """{family key: GFLOP/s} over each family's three orientations (best of `repeats` each), by the wall clock
  or, with cpu_time, by this process's CPU time (all threads: on a loaded machine, what the work costs)."""
  import numpy as np
  clock = time.process_time if cpu_time else time.perf_counter
  rng = np.random.default_rng(0)
  out = {}
  if library == "torch":
    import torch
    if "OMP_NUM_THREADS" not in os.environ:
      torch.set_num_threads(os.cpu_count())
  else:
    import jax
    import jax.numpy as jnp
  for key, (m, k, n) in families:
    flops, seconds = 0.0, 0.0
    for a_shape, b_shape, ta, tb in _orientations(m, k, n):
      a = rng.normal(size=a_shape).astype(np.float32)
      b = rng.normal(size=b_shape).astype(np.float32)
      if library == "torch":
        a, b = torch.from_numpy(a), torch.from_numpy(b)
        run = lambda: (a.t() if ta else a) @ (b.t() if tb else b)
      else:
        a, b = jnp.asarray(a), jnp.asarray(b)
        fn = jax.jit(lambda a, b: (a.T if ta else a) @ (b.T if tb else b))
        run = lambda: fn(a, b).block_until_ready()
      run()
      best = float("inf")
      for _ in range(repeats):
        start = clock()
        run()
        best = min(best, clock() - start)
      flops += 2.0 * m * k * n
      seconds += best
    out[key] = flops / seconds / 1e9
  return out


# ---------------------------------------------------------------------------------------------------------


def _run(args: list) -> dict:
  proc = subprocess.run([sys.executable, os.path.abspath(__file__)] + args, cwd=REPO, capture_output=True, text=True)
  if proc.returncode:
    sys.stderr.write(proc.stdout[-3000:] + proc.stderr[-3000:])
    raise SystemExit(f"profile_ops: the worker {' '.join(args)} failed ({proc.returncode})")
  for line in reversed(proc.stdout.strip().splitlines()):
    if line.startswith("{"):
      return json.loads(line)
  raise SystemExit(f"profile_ops: no JSON line from the worker {' '.join(args)}")


def _family_sizes(key: str) -> tuple:
  return tuple(int(s) for s in key.split(" ", 1)[1].split("·"))


def scale_to_cpu(result: dict) -> dict:
  """`result` with its categories rescaled to sum to the process's CPU ms per step: on a loaded machine an
  op's wall time includes the time other processes held the core, the CPU time only this process's work."""
  total = sum(result["categories"].values())
  factor = result["cpu_ms"] / max(total, 1e-9)
  return {**result, "categories": {k: v * factor for k, v in result["categories"].items()}}


def format_table(name: str, results: dict, gflops: dict) -> str:
  """A markdown table: category -> ms per step and share, one column pair per library."""
  libraries = list(results)
  keys = set()
  for r in results.values():
    keys |= set(r["categories"])
  matmuls = sorted((k for k in keys if k.startswith(MATMUL)),
                   key=lambda k: -max(r["categories"].get(k, 0.0) for r in results.values()))
  rows = matmuls + [c for c in CATEGORIES if c in keys]
  header = "| " + name + " | " + " | ".join(f"{lib} ms | {lib} %" for lib in libraries) + " |"
  lines = [header, "|---" * (1 + 2 * len(libraries)) + "|"]
  totals = {lib: sum(r["categories"].values()) for lib, r in results.items()}
  for row in rows:
    cells = []
    for lib in libraries:
      ms = results[lib]["categories"].get(row, 0.0)
      cells += [f"{ms:.1f}", f"{100 * ms / max(totals[lib], 1e-9):.1f}"]
    label = row
    if row in gflops:
      label += " (GFLOP/s: " + ", ".join(f"{lib} {v:.0f}" for lib, v in gflops[row].items()) + ")"
    lines.append(f"| {label} | " + " | ".join(cells) + " |")
  matmul_total = {lib: sum(v for k, v in r["categories"].items() if k.startswith(MATMUL)) for lib, r in results.items()}
  lines.append("| all matmuls | " + " | ".join(f"{matmul_total[lib]:.1f} | {100 * matmul_total[lib] / max(totals[lib], 1e-9):.1f}"
                                            for lib in libraries) + " |")
  lines.append("| sum of ops (ms) / wall step (ms) | " + " | ".join(f"{totals[lib]:.0f} | {results[lib]['step_ms']:.0f}"
                                                                  for lib in libraries) + " |")
  lines.append("| CPU ms per step (all threads) | " + " | ".join(f"{results[lib]['cpu_ms']:.0f} | "
                                                                 for lib in libraries) + " |")
  return "\n".join(lines)


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--configs", default=DEFAULT_CONFIGS, help="comma-separated bench config files")
  parser.add_argument("--steps", type=int, default=3, help="profiled steps (after 2 warm-up steps)")
  parser.add_argument("--matmuls", type=int, default=4, help="matmul families to microbenchmark in both (0: none)")
  parser.add_argument("--skip_torch", action="store_true", help="profile vlm_jax only")
  parser.add_argument("--tiny", action="store_true", help="a width-32, depth-1 model (for the test)")
  parser.add_argument("--jax_flags", default="", help="XLA_FLAGS added for the vlm_jax workers")
  parser.add_argument("--cpu_scale", action="store_true",
                      help="show each library's ms rescaled to its CPU time per step (for a loaded machine)")
  parser.add_argument("--override", default="", help='config overrides for both, e.g. "model.scan=False"')
  parser.add_argument("--json", default="", help="also write the results as JSON to this file")
  parser.add_argument("--worker", default="", help=argparse.SUPPRESS)  # internal: jax:CONFIG, torch:CONFIG, ...
  args = parser.parse_args()
  if args.worker:
    kind, _, arg = args.worker.partition(":")
    if kind == "jax":
      result = jax_worker(arg, args.steps, args.tiny, args.override)
    elif kind == "torch":
      result = torch_worker(arg, args.steps, args.tiny, args.override)
    else:  # matmul_jax / matmul_torch: arg is JSON [[key, [m, k, n]], ...]
      result = matmul_worker(kind.split("_", 1)[1], json.loads(arg), cpu_time=args.cpu_scale)
    print(json.dumps(result), flush=True)
    return
  if args.steps < 1:
    raise SystemExit("profile_ops: --steps must be at least 1")
  if args.jax_flags:
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " " + args.jax_flags).strip()
  common = [f"--steps={args.steps}", f"--override={args.override}"] + (["--tiny"] if args.tiny else [])
  everything = {}
  for path in args.configs.split(","):
    name = os.path.splitext(os.path.basename(path))[0]
    results = {"vlm_jax": _run(["--worker", f"jax:{path}"] + common)}
    if not args.skip_torch:
      results["open_clip"] = _run(["--worker", f"torch:{path}"] + common)
    gflops = {}
    if args.matmuls:
      top = sorted((k for k in results["vlm_jax"]["categories"] if k.startswith(MATMUL) and "×" not in k),
                   key=lambda k: -results["vlm_jax"]["categories"][k])[:args.matmuls]
      families = json.dumps([[k, _family_sizes(k)] for k in top])
      for lib, kind in (("vlm_jax", "matmul_jax"), ("open_clip", "matmul_torch")):
        if lib in results:
          for key, value in _run(["--worker", f"{kind}:{families}"] + (["--cpu_scale"] if args.cpu_scale else [])).items():
            gflops.setdefault(key, {})[lib] = value
    shown = {lib: scale_to_cpu(r) for lib, r in results.items()} if args.cpu_scale else results
    print(format_table(name, shown, gflops) + "\n", flush=True)
    everything[name] = {"results": results, "matmul_gflops": gflops}
  if args.json:
    with open(args.json, "w") as f:
      json.dump(everything, f, indent=1)


if __name__ == "__main__":
  main()
