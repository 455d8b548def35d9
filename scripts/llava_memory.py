"""Memory per device of the real-size LLaVA recipe: SigLIP So400m/14 at 384 px + Llama-3-8B (configs/llava_hf.py).

    python scripts/llava_memory.py [--vision configs/hf/siglip-so400m-patch14-384] [--lm configs/hf/meta-llama-3-8b]

Loads configs/llava_hf.py for stage 1 and stage 2 with mesh=gpu8 (one host of 8 x 80 GB H100) and mesh=v5p-128
(64 TPU v5p chips of 95 GB), and prints params / optimizer / gradients / activations per device
(vlm_jax.memory.estimate: its docstring says what is counted). Only config.json files are read: no weights.
"""

import argparse
import os
import sys

os.environ.setdefault("JAX_PLATFORMS", "cpu")
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

sys.path.insert(0, REPO)  # this checkout's vlm_jax, run from anywhere
from vlm_jax import hf_configs, memory, run_config  # noqa: E402

HARDWARE = {"gpu8": (8, 80), "v5p-128": (64, 95)}  # mesh= argument -> (devices, GB of memory per device)


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--vision", default=os.path.join(REPO, "configs", "hf", "siglip-so400m-patch14-384"))
  parser.add_argument("--lm", default=os.path.join(REPO, "configs", "hf", "meta-llama-3-8b"))
  args = parser.parse_args()
  vocab = hf_configs.read_config(args.lm)["vocab_size"]
  print("| stage | hardware | mesh (data, fsdp, tensor) | batch/device x accum | sequence | params | Adam | grads | "
        "activations | total GB/device | of |")
  print("|---|---|---|---|---|---|---|---|---|---|---|")
  for stage in ("1", "2"):
    for hardware, (devices, capacity) in HARDWARE.items():
      arg = f"vision={args.vision},lm={args.lm},stage={stage}" + (",stage1=unused" if stage == "2" else "")
      config = run_config.load_config(os.path.join(REPO, "configs", "llava_hf.py") + f":{arg},mesh={hardware}")
      r = memory.estimate(config, vocab, devices)
      mesh = r["mesh"]
      print(f"| {stage} | {hardware} | {mesh['data']}, {mesh['fsdp']}, {mesh['tensor']} | "
            f"{r['per_device_batch']} x {config.grad_accum_steps} | {r['sequence']} | {r['params']:.1f} | "
            f"{r['optimizer']:.1f} | {r['gradients']:.1f} | {r['activations']:.1f} | {r['total']:.1f} | {capacity} |")
  print(f"\n{r['params_b']:.2f}B parameters; trained in stage 2: {r['trained_b']:.2f}B")


if __name__ == "__main__":
  main()
