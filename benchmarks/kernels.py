"""The step's non-matmul kernels alone, forward + backward, in vlm_jax (jax) and open_clip's library (torch).

    OMP_NUM_THREADS=1 taskset -c 1 python benchmarks/kernels.py [--configs configs/bench_small.py,configs/bench_ti16.py]
        [--repeats 20] [--rounds 3] [--json FILE]

For each bench config, the shapes its vision tower runs (the tower that dominates both steps), and for each
kernel every formulation of it in each library, timed forward + backward (a vjp against a fixed cotangent) on
the same random inputs, in this one process, rounds interleaved, median CPU ms per call (time.process_time(),
all threads of the process; run it on one pinned core as above to compare kernels, not thread pools):

  attention core  q, k, v float[B*heads, T, hd] -> softmax(q k^T) v (the 1/sqrt(hd) folded into q, as vlm_jax):
    jax   explicit      two batched matmuls and jax.nn.softmax (layers._softmax_weights), autodiff backward (what
                        layers._attend_flat runs where S <= hd)
    jax   flash_vjp     layers._attention_core: the same forward, the flash-attention backward by hand (custom_vjp:
                        the softmax gradient from rowsum(dO * O) over hd instead of rowsum(dP * P) over S; what
                        layers._attend_flat runs where S > hd)
    jax   dot_product   jax.nn.dot_product_attention(implementation="xla")
    torch sdpa          torch.nn.functional.scaled_dot_product_attention (what open_clip's attention calls: one
                        fused flash-attention CPU kernel each way)
    torch explicit      matmul, softmax, matmul
  layer norm      x float[B*T, width]: jax flax.linen.LayerNorm (vlm_jax's), jax a custom_vjp LayerNorm with the
                  closed-form backward; torch torch.nn.functional.layer_norm (one native kernel each way)
  gelu            x float[B*T, mlp]: jax tanh (vlm_jax's default) and erf; torch tanh and erf (open_clip's)
  softmax         the attention core's logits float[B*heads, T, T] alone: jax.nn.softmax vs torch.softmax

The summary line ("kernels") gives, for each kernel, the best of each library and (per step) the best
difference times the number of calls in one training step of the vision tower (depth attention cores and
GELUs, 2 * depth + 1 layer norms): how much of the step's gap to open_clip that kernel explains.
"""

import argparse
import json
import os
import statistics
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

DEFAULT_CONFIGS = "configs/bench_small.py,configs/bench_ti16.py"


# ----------------------------------------------------------------------------------------------- jax kernels

def _layer_norm_forward(x, scale, bias, eps=1e-6):
  mean = jnp.mean(x, axis=-1, keepdims=True)
  centred = x - mean
  rstd = jax.lax.rsqrt(jnp.mean(centred * centred, axis=-1, keepdims=True) + eps)
  normed = centred * rstd
  return normed * scale + bias, (normed, rstd, scale)


def _layer_norm_backward(residuals, d_y):
  normed, rstd, scale = residuals
  d_normed = d_y * scale
  d_x = rstd * (d_normed - jnp.mean(d_normed, axis=-1, keepdims=True)
                - normed * jnp.mean(d_normed * normed, axis=-1, keepdims=True))
  rows = tuple(range(d_y.ndim - 1))
  return d_x, jnp.sum(d_y * normed, axis=rows), jnp.sum(d_y, axis=rows)


@jax.custom_vjp
def custom_layer_norm(x, scale, bias):
  return _layer_norm_forward(x, scale, bias)[0]


custom_layer_norm.defvjp(_layer_norm_forward, _layer_norm_backward)


def jax_kernels(shapes: dict) -> dict:
  """name -> (fn(*inputs) -> outputs of the vjp, inputs): jit-compiled forward + backward of each jax form."""
  import flax.linen as nn

  from vlm_jax.models import layers

  rows, t, hd = shapes["attention"]
  n, width = shapes["norm"]
  _, mlp = shapes["gelu"]
  rng = np.random.default_rng(0)
  normal = lambda *shape: jnp.asarray(rng.normal(size=shape).astype(np.float32))
  qkv = [normal(rows, t, hd) / (1.0 if i else np.sqrt(hd)) for i in range(3)]

  def explicit(q, k, v):  # the core's forward with jax's autodiff backward
    return jnp.matmul(layers._softmax_weights(q, k, None), v)

  def dot_product(q, k, v):
    return jax.nn.dot_product_attention(q[:, :, None], k[:, :, None], v[:, :, None], scale=1.0,
                                        implementation="xla")[:, :, 0]

  ln = nn.LayerNorm(epsilon=1e-6)
  ln_params = ln.init(jax.random.PRNGKey(0), jnp.zeros((1, width)))
  norm_in = [normal(n, width), ln_params["params"]["scale"], ln_params["params"]["bias"]]

  def flax_layer_norm(x, scale, bias):
    return ln.apply({"params": {"scale": scale, "bias": bias}}, x)

  def vjp(fn, inputs):
    cotangent = jax.eval_shape(fn, *inputs)
    cotangent = jnp.asarray(rng.normal(size=cotangent.shape).astype(np.float32))
    return jax.jit(lambda *a: jax.vjp(fn, *a)[1](cotangent)), inputs

  logits = [normal(rows, t, t)]
  return {
      "attention core/explicit": vjp(explicit, qkv),
      "attention core/flash_vjp": vjp(lambda q, k, v: layers._attention_core(q, k, v, None), qkv),
      "attention core/dot_product": vjp(dot_product, qkv),
      "layer norm/flax": vjp(flax_layer_norm, norm_in),
      "layer norm/custom_vjp": vjp(custom_layer_norm, norm_in),
      "gelu/tanh": vjp(lambda x: nn.gelu(x, approximate=True), [normal(n, mlp)]),
      "gelu/erf": vjp(lambda x: nn.gelu(x, approximate=False), [normal(n, mlp)]),
      "softmax/softmax": vjp(lambda x: jax.nn.softmax(x, axis=-1), logits),
  }


# --------------------------------------------------------------------------------------------- torch kernels

def torch_kernels(shapes: dict) -> dict:
  """name -> (fn() running forward + backward, None) for each torch form."""
  import torch
  import torch.nn.functional as F

  if "OMP_NUM_THREADS" not in os.environ:
    torch.set_num_threads(os.cpu_count())
  rows, t, hd = shapes["attention"]
  n, width = shapes["norm"]
  _, mlp = shapes["gelu"]
  gen = torch.Generator().manual_seed(0)
  leaf = lambda *shape: torch.randn(*shape, generator=gen).requires_grad_(True)
  q, k, v = (leaf(1, rows, t, hd) for _ in range(3))
  x_norm, weight, bias = leaf(n, width), leaf(width), leaf(width)
  x_gelu, logits = leaf(n, mlp), leaf(rows, t, t)

  def explicit(q, k, v):
    return torch.matmul(torch.softmax(torch.matmul(q, k.transpose(-1, -2)), dim=-1), v)

  def vjp(fn, *inputs):
    out = fn(*inputs)
    cotangent = torch.randn(out.shape, generator=gen)

    def run():
      for a in inputs:
        a.grad = None
      fn(*inputs).backward(cotangent)
    return run, None

  return {
      "attention core/sdpa": vjp(lambda q, k, v: F.scaled_dot_product_attention(q, k, v, scale=1.0), q, k, v),
      "attention core/explicit": vjp(explicit, q, k, v),
      "layer norm/native": vjp(lambda x, w, b: F.layer_norm(x, (width,), w, b, 1e-6), x_norm, weight, bias),
      "gelu/tanh": vjp(lambda x: F.gelu(x, approximate="tanh"), x_gelu),
      "gelu/erf": vjp(lambda x: F.gelu(x), x_gelu),
      "softmax/softmax": vjp(lambda x: torch.softmax(x, dim=-1), logits),
  }


# ------------------------------------------------------------------------------------------------------ main

def vision_shapes(config) -> dict:
  """The vision tower's kernel shapes of a bench config: attention [B*heads, T, hd], norm [B*T, width],
  gelu [B*T, mlp_dim], and the calls per training step of each kernel."""
  vision = config.model.vision
  tokens = (config.data.image_size // vision.patch_size) ** 2 + int(vision.cls_token)
  rows = config.batch_size * tokens
  return {"attention": (config.batch_size * vision.num_heads, tokens, vision.width // vision.num_heads),
          "norm": (rows, vision.width), "gelu": (rows, vision.mlp_dim),
          "calls": {"attention core": vision.depth, "layer norm": 2 * vision.depth + 1, "gelu": vision.depth,
                    "softmax": vision.depth}}


def time_kernels(kernels: dict, repeats: int, is_jax: bool) -> dict:
  """name -> list of CPU ms per call (one entry per call of `repeats`), after one warm-up call."""
  out = {}
  for name, (fn, inputs) in kernels.items():
    call = (lambda: jax.block_until_ready(fn(*inputs))) if is_jax else fn
    call()
    times = []
    for _ in range(repeats):
      start = time.process_time()
      call()
      times.append((time.process_time() - start) * 1e3)
    out[name] = times
  return out


def run_config(path: str, repeats: int, rounds: int, skip_torch: bool) -> dict:
  from vlm_jax import run_config as configs

  shapes = vision_shapes(configs.load_config(path))
  libraries = {"jax": jax_kernels(shapes)}
  if not skip_torch:
    libraries["torch"] = torch_kernels(shapes)
  samples = {}
  for _ in range(rounds):  # interleaved: each round times every kernel of both libraries once more
    for library, kernels in libraries.items():
      for name, times in time_kernels(kernels, repeats, library == "jax").items():
        samples.setdefault(f"{library} {name}", []).extend(times)
  medians = {name: round(statistics.median(times), 3) for name, times in samples.items()}
  summary = {}
  for kernel, calls in shapes["calls"].items():
    best = {}
    for library in libraries:
      forms = {name.split("/", 1)[1]: ms for name, ms in medians.items() if name.startswith(f"{library} {kernel}/")}
      if forms:
        form = min(forms, key=forms.get)
        best[library] = {"form": form, "ms": forms[form]}
    if len(best) == 2:
      best["gap_ms_per_step"] = round((best["jax"]["ms"] - best["torch"]["ms"]) * calls, 1)
    summary[kernel] = {"calls_per_step": calls, **best}
  return {"shapes": {k: v for k, v in shapes.items() if k != "calls"}, "ms_per_call": medians, "best": summary}


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--configs", default=DEFAULT_CONFIGS, help="comma-separated bench config files")
  parser.add_argument("--repeats", type=int, default=20, help="timed calls of each kernel per round")
  parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds over both libraries")
  parser.add_argument("--skip_torch", action="store_true", help="time the jax kernels only")
  parser.add_argument("--json", default="", help="also write the results as JSON to this file")
  args = parser.parse_args()
  if not args.skip_torch:
    try:
      import torch  # noqa: F401
    except ImportError:
      parser.exit(2, "benchmarks/kernels.py: torch is not installed (pip install -r "
                     "benchmarks/requirements-open_clip.txt), or pass --skip_torch\n")
  results = {}
  for path in args.configs.split(","):
    name = os.path.splitext(os.path.basename(path))[0]
    results[name] = run_config(path, args.repeats, args.rounds, args.skip_torch)
    for kernel, ms in results[name]["ms_per_call"].items():
      print(f"{name:12s} {kernel:32s} {ms:9.2f} ms")
  if args.json:
    with open(args.json, "w") as f:
      json.dump(results, f, indent=1)
  print(json.dumps({"kernels": {name: r["best"] for name, r in results.items()}}))


if __name__ == "__main__":
  main()
