"""Trace + compile seconds of a ViT train step, blocks as a Python loop vs one nn.scan (config.model.scan).

    python benchmarks/compile_time.py [--small]

ViT-B width (768, 12 heads, MLP 3072), 224 px, patch 16, batch 8, depth 12 / 24 / 48; the step is a
classifier's full train step (forward, backward, AdamW update), traced and compiled from abstract inputs,
so no weights are allocated. --small: width 192, 3 heads, MLP 768, 64 px, depth 4 / 8 / 16 (a quick run).
Prints one JSON line per (depth, variant) and the depth-48 (or deepest) scan/loop ratio.
"""

import argparse
import json
import platform
import time

import jax
import jax.numpy as jnp
import optax
from flax import linen as nn

from vlm_jax.models.classifier import ViTClassifier
from vlm_jax.models.vit import ViT

FULL = dict(width=768, num_heads=12, mlp_dim=3072, image=224, patch=16, depths=(12, 24, 48), batch=8)
SMALL = dict(width=192, num_heads=3, mlp_dim=768, image=64, patch=16, depths=(4, 8, 16), batch=8)


def train_step_seconds(shape: dict, depth: int, scan: bool) -> dict:
  """{"trace_s", "compile_s"} of one jit'd train step of a fresh model (nothing cached between calls)."""
  model = ViTClassifier(vision=ViT(patch_size=shape["patch"], width=shape["width"], depth=depth,
                                   num_heads=shape["num_heads"], mlp_dim=shape["mlp_dim"], scan=scan),
                        num_classes=10)
  batch = {"image": jax.ShapeDtypeStruct((shape["batch"], shape["image"], shape["image"], 3), jnp.float32),
           "label": jax.ShapeDtypeStruct((shape["batch"],), jnp.int32)}
  tx = optax.adamw(1e-3)
  params = nn.meta.unbox(jax.eval_shape(lambda b: model.init(jax.random.key(0), b), batch)["params"])
  opt_state = jax.eval_shape(tx.init, params)

  def step(params, opt_state, batch):
    def loss_fn(params):
      outputs, _ = model.apply({"params": params}, batch)
      return optax.softmax_cross_entropy_with_integer_labels(outputs["class_logits"], batch["label"]).mean()
    loss, grads = jax.value_and_grad(loss_fn)(params)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss

  begin = time.perf_counter()
  lowered = jax.jit(step, donate_argnums=(0, 1)).trace(params, opt_state, batch).lower()
  traced = time.perf_counter()
  lowered.compile()
  done = time.perf_counter()
  return {"trace_s": round(traced - begin, 2), "compile_s": round(done - traced, 2),
          "total_s": round(done - begin, 2)}


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--small", action="store_true", help="a small ViT, for a quick run")
  args = parser.parse_args()
  shape = SMALL if args.small else FULL
  totals = {}
  for depth in shape["depths"]:
    for scan in (False, True):
      seconds = train_step_seconds(shape, depth, scan)
      totals[depth, scan] = seconds["total_s"]
      print(json.dumps({"depth": depth, "blocks": "scan" if scan else "loop", **seconds}), flush=True)
  deepest = shape["depths"][-1]
  print(json.dumps({"summary": {f"depth_{d}": {"loop_s": totals[d, False], "scan_s": totals[d, True]}
                                for d in shape["depths"]},
                    f"scan_over_loop_depth_{deepest}": round(totals[deepest, True] / totals[deepest, False], 3),
                    "shape": {k: v for k, v in shape.items() if k != "depths"}, "cpu": platform.processor() or None,
                    "jax": jax.__version__, "device": jax.devices()[0].platform}))


if __name__ == "__main__":
  main()
