"""Command line of inference (vlm_jax.inference): caption, answer a question, or classify zero-shot.

    python -m vlm_jax.predict --workdir DIR --image PATH [--prompt TEXT] [--labels "a,b,c"] [--json]

DIR is a training workdir: its config.json rebuilds the model, its tokenizer.model tokenizes, and the
parameters of the latest checkpoint in DIR/checkpoints are restored (nothing else: no data is prepared).
PATH is an image file or a folder (every image file in it, in name order, run in batches).
- no --prompt, no --labels: a caption (CoCa; a prefix-LM is asked "describe the image.").
- --prompt TEXT: the prefix-LM's answer to TEXT.
- --labels "a,b,c": zero-shot classification (two-tower or CoCa), each label in prompt templates averaged.
With --json, one JSON object per image: {"image", "caption" | "answer" | "label", "scores"}; scores are the
label probabilities, or the generated text's log-likelihood. A mistake (missing file, not an image, a model
that cannot do the task) is one line on stderr and exit status 1. In a folder, an image that cannot be read
(undecodable, above config.data.max_image_pixels) is one warning line on stderr and skipped; exit status 1
only when none could be read.
"""

import argparse
import json
import sys

from absl import logging

from vlm_jax import inference
from vlm_jax.errors import UserError


def _format(result: dict) -> str:
  if "label" in result:
    return f"{result['image']}: {result['label']} (p={result['scores'][result['label']]:.3f})"
  key = "caption" if "caption" in result else "answer"
  return f"{result['image']}: {result[key]}"


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(prog="python -m vlm_jax.predict", description=__doc__.split("\n\n")[0])
  parser.add_argument("--workdir", required=True, help="training workdir (config.json, checkpoints/)")
  parser.add_argument("--image", required=True, help="an image file or a folder of them")
  parser.add_argument("--prompt", help="a question for a prefix-LM")
  parser.add_argument("--labels", help="comma-separated class names for zero-shot classification")
  parser.add_argument("--beams", type=int, default=1, help="beam search with this many beams (1: greedy)")
  parser.add_argument("--json", action="store_true", help="one JSON object per image")
  args = parser.parse_args(argv)
  # orbax notes that the checkpoints are opened read-only, as asked: stderr is for the user's mistakes.
  logging.set_verbosity(logging.ERROR)
  try:
    if args.beams < 1:
      raise UserError(f"--beams must be >= 1, got {args.beams}")
    labels = inference.parse_labels(args.labels) if args.labels is not None else None
    from vlm_jax import compilation_cache  # noqa: PLC0415
    compilation_cache.enable()
    for result in inference.predict(args.workdir, args.image, args.prompt, labels, args.beams):
      print(json.dumps(result) if args.json else _format(result), flush=True)
  except UserError as e:
    print(f"vlm_jax.predict: error: {e}", file=sys.stderr, flush=True)
    return 1
  return 0


if __name__ == "__main__":
  sys.exit(main())
