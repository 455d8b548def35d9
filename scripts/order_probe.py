"""Linear probes of trained models' image embeddings for the left-right and above-below order of two named objects.

    python scripts/order_probe.py runs/shapes_clip [runs/OTHER ...] [--scenes 4000]

For each workdir (a contrastive model trained on shapes: two_tower or coca) prints the held-out accuracy of a
logistic regression from the pooled image embedding to "the alphabetically first object lies left of / above the
other" on two-object scenes it has never seen (vlm_jax/probes.py), chance 0.5, and writes them to
DIR/order_probe.json. A tower with x order but not y order learned scores high on x only.
"""

import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from vlm_jax import probes  # noqa: E402
from vlm_jax.errors import UserError  # noqa: E402


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("workdirs", nargs="+")
  parser.add_argument("--scenes", type=int, default=4000, help="two-object scenes drawn (3/4 fit, 1/4 scored)")
  args = parser.parse_args(argv)
  try:
    for workdir in args.workdirs:
      result = probes.order_probe(workdir, args.scenes)
      with open(os.path.join(workdir, "order_probe.json"), "w") as f:
        json.dump(result, f, indent=1, sort_keys=True)
      print(f"{workdir}: x order {result['order_probe/x']:.3f} (train {result['order_probe/x/train']:.3f}), "
            f"y order {result['order_probe/y']:.3f} (train {result['order_probe/y/train']:.3f}); chance 0.5", flush=True)
  except UserError as e:
    print(f"order_probe: error: {e}", file=sys.stderr)
    return 1
  return 0


if __name__ == "__main__":
  sys.exit(main())
