"""Plots an eval.json score against a config field over runs: one line per group, mean ± sample sd per x.

    python scripts/plot_sweep.py --field batch_size --key img2txt_recall@1 --logx --out experiments/siglip_batch.png \
        CLIP=runs/clipB32lr05,runs/clipB64lr07,runs/clipS0 SigLIP=runs/sigB32lr025,runs/sigB64lr035,runs/sigS0

A group is LABEL=DIR,DIR,... (training runs, each with config.json and eval.json); its runs with the same value of
`--field` (a dotted config key: batch_size, optimizer.learning_rate) are seeds of one point, drawn at their mean
with the sample standard deviation as an error bar (none for a single run). Prints the points as a table too.
"""

import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from seeds_table import mean_sd, parse_group  # noqa: E402  (scripts/ is not a package)


def field_of(config: dict, field: str, path: str):
  """config[field] for a dotted field; SystemExit naming the field and the config.json `path` without it."""
  value = config
  for part in field.split("."):
    if not isinstance(value, dict) or part not in value:
      raise SystemExit(f"error: config.{field} is not in {path}")
    value = value[part]
  return value


def sweep_points(groups: dict, field: str, key: str) -> dict:
  """{label: [(x, mean, sd or None, n), ...] sorted by x} from {label: [run dir, ...]}."""
  points = {}
  for label, runs in groups.items():
    by_x = {}
    for run in runs:
      paths = [os.path.join(run, name) for name in ("config.json", "eval.json")]
      for path in paths:
        if not os.path.exists(path):
          raise SystemExit(f"error: {path} (group {label}) does not exist")
      with open(paths[0]) as f:
        x = field_of(json.load(f), field, paths[0])
      with open(paths[1]) as f:
        scores = json.load(f)
      if key not in scores:
        raise SystemExit(f"error: {paths[1]} (group {label}) has no {key!r}")
      by_x.setdefault(x, []).append(float(scores[key]))
    points[label] = [(x, *mean_sd(v), len(v)) for x, v in sorted(by_x.items())]
  return points


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("groups", nargs="+", help="LABEL=DIR,DIR,...")
  parser.add_argument("--field", required=True, help="dotted config key on the x axis (batch_size, ...)")
  parser.add_argument("--key", required=True, help="eval.json key on the y axis")
  parser.add_argument("--out", required=True, help="the PNG to write")
  parser.add_argument("--logx", action="store_true", help="a log-scaled x axis (base 2)")
  args = parser.parse_args(argv)
  points = sweep_points(dict(map(parse_group, args.groups)), args.field, args.key)

  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  fig, ax = plt.subplots(figsize=(5, 3.4))
  print(f"| group | {args.field} | {args.key} (mean ± sd) | runs |\n|---|---|---|---|")
  for label, rows in points.items():
    xs, means, sds = [r[0] for r in rows], [r[1] for r in rows], [r[2] or 0.0 for r in rows]
    ax.errorbar(xs, means, yerr=sds, marker="o", capsize=3, label=label)
    for x, mean, sd, n in rows:
      print(f"| {label} | {x} | {mean:.3f}" + (f" ± {sd:.3f}" if sd is not None else "") + f" | {n} |")
  if args.logx:
    ax.set_xscale("log", base=2)
  ax.set_xticks(sorted({r[0] for rows in points.values() for r in rows}))
  ax.get_xaxis().set_major_formatter(matplotlib.ticker.ScalarFormatter())
  ax.set_xlabel(args.field), ax.set_ylabel(args.key), ax.legend(), ax.grid(alpha=0.3)
  fig.tight_layout()
  fig.savefig(args.out, dpi=120)
  print(f"wrote {args.out}")


if __name__ == "__main__":
  main(sys.argv[1:])
