"""Write a training workdir's latest checkpoint as a Hugging Face transformers directory.

    python -m vlm_jax.export --workdir DIR --out OUT

A prefix-LM with a CLIP or SigLIP vision tower and a Llama decoder becomes a LlavaForConditionalGeneration
(with its tokenizer, chat template and processor); a two-tower model a CLIPModel; anything transformers cannot
represent is refused in one line naming what (vlm_jax/pretrained/export.py). Flags only: the work is there.
"""

import argparse
import sys

from vlm_jax.errors import UserError


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(prog="python -m vlm_jax.export", description=__doc__.split("\n\n")[0])
  parser.add_argument("--workdir", required=True, help="training workdir (config.json, checkpoints/)")
  parser.add_argument("--out", required=True, help="a new or empty folder for the transformers directory")
  args = parser.parse_args(argv)
  from absl import logging  # noqa: PLC0415
  logging.set_verbosity(logging.ERROR)  # orbax notes that the checkpoints are opened read-only, as asked
  try:
    from vlm_jax.pretrained import export  # noqa: PLC0415  (jax loads after the flags are good)
    written = export.export_workdir(args.workdir, args.out)
  except UserError as e:
    print(f"vlm_jax.export: error: {e}", file=sys.stderr, flush=True)
    return 1
  print(f"wrote {args.out}: {written}", flush=True)
  return 0


if __name__ == "__main__":
  sys.exit(main())
