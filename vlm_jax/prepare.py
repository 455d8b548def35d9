"""Prepare a config's data once, before training: `python -m vlm_jax.prepare --config configs/NAME.py [--config.x=y]`.

The same preparation the first training run does (a source prepared before is reused; report.json and
skipped.txt beside the prepared data say what was kept and what was skipped).
"""

from vlm_jax import cli

if __name__ == "__main__":
  cli.main("prepare")
