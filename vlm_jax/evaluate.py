"""Command line of checkpoint scoring (vlm_jax.evaluation.evaluate_checkpoint); flags only.

    python -m vlm_jax.evaluate --config configs/NAME.py --workdir DIR

restores the latest checkpoint in DIR/checkpoints and writes DIR/eval.json. Flags: vlm_jax/cli.py.
"""

from vlm_jax import cli

if __name__ == "__main__":
  cli.main("evaluate")
