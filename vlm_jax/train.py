"""Command line of the trainer (vlm_jax.trainer.train_and_evaluate); flags only.

    python -m vlm_jax.train --config configs/shapes_coca.py --workdir /tmp/coca [--config.key=value ...]

Re-running the same command resumes from the latest checkpoint in DIR/checkpoints/. Flags: vlm_jax/cli.py.
"""

from vlm_jax import cli

if __name__ == "__main__":
  cli.main("train")
