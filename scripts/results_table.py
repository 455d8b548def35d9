"""Prints the markdown results table of experiments/README.md from runs' eval.json and wall_seconds.txt.

    python scripts/results_table.py runs/
"""

import json
import os
import sys

COLUMNS = ["img2txt_recall@1", "img2txt_recall@5", "txt2img_recall@1", "txt2img_recall@5", "hardneg/count",
           "hardneg/binding", "hardneg/left_right", "hardneg/above_below", "caption_exact_match",
           "caption_token_accuracy", "bleu4", "cider", "rouge_l", "vqa_accuracy", "pope/accuracy", "pope/f1",
           "fashion_mnist/zero_shot/top1", "fashion_mnist/zero_shot/top5", "accuracy"]


def chance_of(result: dict, key: str):
  """The chance level stored beside `key` ("chance/<key>" or "<prefix>/chance/<rest>"), or None."""
  parts = key.split("/")
  for i in range(len(parts)):
    candidate = "/".join(parts[:i] + ["chance"] + parts[i:])
    if candidate in result:
      return result[candidate]
  return None


def main(runs: str):
  order = ["shapes_clip", "shapes_siglip", "shapes_coca", "shapes_llava", "shapes_lm", "llava_stage1", "llava_stage2",
           "fashion_mnist_coca", "fashion_mnist_vit"]
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
    # One chance level for the row when the runs agree on it; otherwise each cell carries its own.
    chances = {chance_of(results[n], column) for n in rows if column in results[n]} - {None}
    uniform = len(chances) == 1
    chance = f" ({max(chances):.3f})" if uniform else ""
    cells = []
    for n in rows:
      if column not in results[n]:
        cells.append("–")
        continue
      own = chance_of(results[n], column)
      cells.append(f"{results[n][column]:.3f}" + (f" ({own:.3f})" if own is not None and not uniform else ""))
    print(f"| {column}{chance} | " + " | ".join(cells) + " |")
  for prefix in ("compositional/",):
    for column in ("img2txt_recall@1", "hardneg/binding", "caption_exact_match", "vqa_accuracy"):
      key = prefix + column
      if any(key in r for r in results.values()):
        cells = [f"{results[n][key]:.3f}" + (f" ({chance_of(results[n], key):.3f})" if chance_of(results[n], key)
                                             is not None else "") if key in results[n] else "–" for n in rows]
        print(f"| {key} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
  main(sys.argv[1] if len(sys.argv) > 1 else "runs")
