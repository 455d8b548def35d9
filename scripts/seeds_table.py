"""Prints a markdown table of scores over seeds: mean ± sample standard deviation of each key, per group of runs.

    python scripts/seeds_table.py shapes_clip=runs/clipS0,runs/clipS1,runs/clipS2 \
        shapes_siglip=runs/sigS0,runs/sigS1,runs/sigS2 [--keys img2txt_recall@1,hardneg/binding]

Each group is LABEL=DIR,DIR,... (one training run per seed, each with its eval.json); a row per group, a column
per key (default: KEYS, those present in some run). A cell is "mean ± sd (v1 / v2 / v3)", the sample standard
deviation (n - 1 in the denominator) over the runs that have the key; a single run gives its value alone. A group
whose runs differ in `step` is refused: their scores are of different training lengths.
"""

import argparse
import json
import math
import os
import sys

KEYS = ("img2txt_recall@1", "txt2img_recall@1", "hardneg/count", "hardneg/binding", "hardneg/left_right",
        "hardneg/above_below", "caption_exact_match", "vqa_accuracy", "pope/accuracy",
        "fashion_mnist/zero_shot/top1", "accuracy")


def mean_sd(values):
  """(mean, sample standard deviation; None for one value)."""
  n = len(values)
  mean = sum(values) / n
  if n == 1:
    return mean, None
  return mean, math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))


def cell(values) -> str:
  if not values:
    return "–"
  mean, sd = mean_sd(values)
  if sd is None:
    return f"{mean:.3f}"
  return f"{mean:.3f} ± {sd:.3f} ({' / '.join(f'{v:.3f}' for v in values)})"


def parse_group(spec: str) -> tuple[str, list[str]]:
  """'LABEL=DIR,DIR' -> (label, [DIR, DIR]); SystemExit naming the spec if it is not of that form."""
  label, sep, dirs = spec.partition("=")
  if not sep or not label or not dirs:
    raise SystemExit(f"error: group {spec!r} is not LABEL=DIR,DIR,...")
  return label, dirs.split(",")


def read_group(spec: str) -> tuple[str, list[dict]]:
  """'LABEL=DIR,DIR' -> (label, [eval.json of each DIR]); SystemExit naming the group or file on a bad one."""
  label, runs = parse_group(spec)
  results = []
  for run in runs:
    path = os.path.join(run, "eval.json")
    if not os.path.exists(path):
      raise SystemExit(f"error: {path} (group {label}) does not exist: has the run finished its final evaluation?")
    with open(path) as f:
      results.append(json.load(f))
  steps = {r.get("step") for r in results}
  if len(steps) > 1:
    raise SystemExit(f"error: the runs of group {label} stopped at different steps {sorted(steps)}")
  return label, results


def table(groups: list[tuple[str, list[dict]]], keys) -> str:
  keys = [k for k in keys if any(k in r for _, results in groups for r in results)]
  lines = ["| run (seeds) | " + " | ".join(keys) + " |", "|---|" + "---|" * len(keys)]
  for label, results in groups:
    cells = [cell([float(r[k]) for r in results if k in r]) for k in keys]
    lines.append(f"| {label} ({len(results)}) | " + " | ".join(cells) + " |")
  return "\n".join(lines)


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("groups", nargs="+", help="LABEL=DIR,DIR,... (one run per seed)")
  parser.add_argument("--keys", default=",".join(KEYS), help="comma-separated eval.json keys")
  args = parser.parse_args(argv)
  print(table([read_group(g) for g in args.groups], [k for k in args.keys.split(",") if k]))


if __name__ == "__main__":
  main(sys.argv[1:])
