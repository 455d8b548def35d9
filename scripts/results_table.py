"""Prints the markdown results table of experiments/README.md from runs' eval.json and wall_seconds.txt.

    python scripts/results_table.py runs/
"""

import json
import os
import sys

COLUMNS = ["img2txt_recall@1", "img2txt_recall@5", "txt2img_recall@1", "txt2img_recall@5", "hardneg/count",
           "hardneg/binding", "hardneg/left_right", "hardneg/above_below", "caption_exact_match",
           "caption_token_accuracy", "bleu4", "cider", "rouge_l", "vqa_accuracy", "pope/f1"]


def main(runs: str):
  order = ["shapes_clip", "shapes_siglip", "shapes_coca", "shapes_llava", "shapes_lm", "llava_stage1", "llava_stage2"]
  rows = sorted((d for d in os.listdir(runs) if os.path.exists(os.path.join(runs, d, "eval.json"))),
                key=lambda d: (order.index(d) if d in order else len(order), d))
  results = {}
  for name in rows:
    with open(os.path.join(runs, name, "eval.json")) as f:
      results[name] = json.load(f)
  columns = [c for c in COLUMNS if any(c in r for r in results.values())]
  print("| metric (chance) | " + " | ".join(rows) + " |")
  print("|---|" + "---|" * len(rows))
  walls = []
  for name in rows:
    path = os.path.join(runs, name, "wall_seconds.txt")
    walls.append(f"{float(open(path).read()) / 60:.1f} min" if os.path.exists(path) else "–")
  print("| wall time (train + eval) | " + " | ".join(walls) + " |")
  print("| steps | " + " | ".join(str(results[n]["step"]) for n in rows) + " |")
  for column in columns:
    chances = {r.get(f"chance/{column}") for r in results.values()} - {None}
    chance = f" ({max(chances):.3f})" if len(chances) == 1 else (" (see eval.json)" if chances else "")
    cells = [f"{results[n][column]:.3f}" if column in results[n] else "–" for n in rows]
    print(f"| {column}{chance} | " + " | ".join(cells) + " |")
  for prefix in ("compositional/",):
    for column in ("img2txt_recall@1", "hardneg/binding", "caption_exact_match", "vqa_accuracy"):
      key = prefix + column
      if any(key in r for r in results.values()):
        print(f"| {key} | " + " | ".join(f"{results[n][key]:.3f}" if key in results[n] else "–" for n in rows) + " |")


if __name__ == "__main__":
  main(sys.argv[1] if len(sys.argv) > 1 else "runs")
