"""Soak test of exact resumption: kill a training run N times at random moments, then compare.

    python scripts/soak_resume.py --kills 5 --steps 60 [--config configs/shapes_clip.py] [--seed 0]

Runs the config (small overrides, tiny data) once uninterrupted, then again while sending SIGKILL at
random moments (after the process has started logging) and restarting the same command until it
finishes. Prints whether the final parameters are bit-for-bit equal and whether every logged loss
matches. Not part of CI (minutes of CPU); its result is recorded in experiments/README.md.
"""

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time

import jax
import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SMALL = ["--config.batch_size=16", "--config.model.vision.width=32", "--config.model.vision.depth=2",
         "--config.model.vision.num_heads=2", "--config.model.text.width=32", "--config.model.text.depth=1",
         "--config.model.text.num_heads=2", "--config.data.builder_config=tiny", "--config.log_every_steps=1",
         "--config.eval_every_steps=100000", "--config.eval.extra_splits=()", "--config.eval.batch_size=64"]


def losses(workdir):
  path = os.path.join(workdir, "metrics.jsonl")
  if not os.path.exists(path):
    return {}
  with open(path) as f:
    return {m["step"]: m["loss"] for m in map(json.loads, [l for l in f if l.endswith("\n")]) if "loss" in m}


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--config", default=os.path.join(REPO, "configs/shapes_clip.py"))
  parser.add_argument("--kills", type=int, default=5)
  parser.add_argument("--steps", type=int, default=60)
  parser.add_argument("--checkpoint_every", type=int, default=5)
  parser.add_argument("--seed", type=int, default=0)
  args = parser.parse_args()
  rng = random.Random(args.seed)
  root = tempfile.mkdtemp(prefix="vlm_jax_soak_")
  env = {**os.environ, "PYTHONPATH": REPO}

  def command(workdir):
    return [sys.executable, "-m", "vlm_jax.train", "--config", args.config, "--workdir", workdir,
            f"--config.data.data_dir={os.path.join(root, 'data')}", f"--config.total_steps={args.steps}",
            f"--config.checkpoint_every_steps={args.checkpoint_every}", *SMALL]

  straight, killed = os.path.join(root, "straight"), os.path.join(root, "killed")
  start = time.time()
  subprocess.run(command(straight), env=env, check=True, capture_output=True)
  kills = 0
  while True:
    process = subprocess.Popen(command(killed), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    if kills < args.kills:
      # Any moment: a third of the kills during start-up and restore, the rest once this attempt has
      # trained some steps (mid-step, or while an asynchronous checkpoint is being written).
      if rng.random() < 1 / 3:
        time.sleep(rng.uniform(0.5, 6.0))
      else:
        already = max(losses(killed), default=0)
        while max(losses(killed), default=0) <= already and process.poll() is None:
          time.sleep(0.05)
        time.sleep(rng.uniform(0.0, 2.0))
      if process.poll() is None:
        process.send_signal(signal.SIGKILL)
        process.wait()
        kills += 1
        print(f"kill {kills}: after step {max(losses(killed), default=0)}", flush=True)
        continue
    if process.wait() != 0:
      sys.exit(f"restarted run failed with exit code {process.returncode}")
    break

  from vlm_jax import checkpointing
  _, a = checkpointing.read_params(straight)
  _, b = checkpointing.read_params(killed)
  params_equal = jax.tree.all(jax.tree.map(np.array_equal, a, b))
  losses_equal = losses(straight) == losses(killed)
  print(json.dumps({"kills": kills, "steps": args.steps, "params_bit_equal": bool(params_equal),
                    "losses_equal_every_step": losses_equal, "seconds": round(time.time() - start, 1)}))
  sys.exit(0 if params_equal and losses_equal else 1)


if __name__ == "__main__":
  main()
