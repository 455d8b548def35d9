"""Prints the markdown results table of experiments/README.md from runs' eval.json and wall_seconds.txt.

    python scripts/results_table.py runs/

Each score has its chance level beside it, and a hard-negative probe its blind baseline (blind/hardneg/<type>:
text alone, a word trigram model of the training captions, vlm_jax/evaluators/blind.py). A probe score that
text alone comes close to is marked † (BLIND_MARK): the blind baseline reaches BLIND_SOLVES, or comes within
BLIND_MARGIN of the score; a footnote under the table says so.
"""

import json
import os
import sys

PROBES = ["count", "binding", "left_right", "above_below"]
COLUMNS = (["img2txt_recall@1", "img2txt_recall@5", "txt2img_recall@1", "txt2img_recall@5"]
           + [f"hardneg/{p}" for p in PROBES] + [f"hardneg_likelihood/{p}" for p in PROBES]
           + ["caption_exact_match", "caption_token_accuracy", "bleu4", "cider", "rouge_l", "vqa_accuracy",
              "pope/accuracy", "pope/f1", "fashion_mnist/zero_shot/top1", "fashion_mnist/zero_shot/top5", "accuracy"])
COMPOSITIONAL = ["img2txt_recall@1", "hardneg/binding", "hardneg_likelihood/binding", "caption_exact_match",
                 "vqa_accuracy"]
# A probe that text alone (nearly) solves: its blind baseline reaches BLIND_SOLVES, or comes within BLIND_MARGIN
# of the model's score (the image then adds little the caption's words do not already say).
BLIND_SOLVES, BLIND_MARGIN, BLIND_MARK = 0.6, 0.05, "†"


def baseline_of(result: dict, key: str, baseline: str = "chance"):
  """The `baseline` level stored beside `key` ("<baseline>/<key>" or "<prefix>/<baseline>/<rest>"), or None.
  One blind baseline serves a probe scored either way: blind/hardneg/<type> for hardneg_likelihood/<type> too
  (as vlm_jax.evaluation.baseline_keys)."""
  parts = key.split("/")
  if baseline == "blind":
    parts = ["hardneg" if part == "hardneg_likelihood" else part for part in parts]
  for i in range(len(parts)):
    candidate = "/".join(parts[:i] + [baseline] + parts[i:])
    if candidate in result:
      return result[candidate]
  return None


def chance_of(result: dict, key: str):
  return baseline_of(result, key, "chance")


def text_alone_suffices(score: float, blind) -> bool:
  """The BLIND_MARK rule: blind >= BLIND_SOLVES or blind >= score - BLIND_MARGIN."""
  return blind is not None and (blind >= BLIND_SOLVES or blind >= score - BLIND_MARGIN)


def cell(result: dict, key: str, own_chance: bool, own_blind: bool) -> str:
  """'0.912', with the run's own chance / blind levels where the row has none for all runs, and the mark."""
  if key not in result:
    return "–"
  score, blind = result[key], baseline_of(result, key, "blind")
  levels = [f"{chance_of(result, key):.3f}"] if own_chance and chance_of(result, key) is not None else []
  levels += [f"blind {blind:.3f}"] if own_blind and blind is not None else []
  return (f"{score:.3f}" + (BLIND_MARK if text_alone_suffices(score, blind) else "")
          + (f" ({'; '.join(levels)})" if levels else ""))


def row(results: dict, names: list, key: str) -> tuple:
  """The markdown line of `key`, and whether a cell of it is marked. One chance (and blind) level in the row's
  name when the runs agree on it; otherwise each cell carries its own."""
  present = [n for n in names if key in results[n]]
  chances = {chance_of(results[n], key) for n in present} - {None}
  blinds = {baseline_of(results[n], key, "blind") for n in present} - {None}
  levels = [f"{max(chances):.3f}"] if len(chances) == 1 else []
  levels += [f"blind {max(blinds):.3f}"] if len(blinds) == 1 else []
  cells = [cell(results[n], key, len(chances) > 1, len(blinds) > 1) for n in names]
  label = key + (f" ({'; '.join(levels)})" if levels else "")
  return f"| {label} | " + " | ".join(cells) + " |", any(BLIND_MARK in c for c in cells)


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
  print("| metric (chance; blind) | " + " | ".join(rows) + " |")
  print("|---|" + "---|" * len(rows))
  walls = []
  for name in rows:
    path = os.path.join(runs, name, "wall_seconds.txt")
    walls.append(f"{float(open(path).read()) / 60:.1f} min" if os.path.exists(path) else "–")
  print("| wall time (train + eval) | " + " | ".join(walls) + " |")
  print("| steps | " + " | ".join(str(results[n]["step"]) for n in rows) + " |")
  marked = False
  for key in columns + [f"{prefix}{c}" for prefix in ("compositional/",) for c in COMPOSITIONAL]:
    if any(key in r for r in results.values()):
      line, flagged = row(results, rows, key)
      print(line)
      marked |= flagged
  if marked:
    print(f"\n{BLIND_MARK} text alone comes close: the probe's blind baseline (blind/hardneg/<type>, a word trigram "
          f"model of the training captions scoring the true and the false caption without the image) reaches "
          f"{BLIND_SOLVES}, or is within {BLIND_MARGIN} of the score.")


if __name__ == "__main__":
  main(sys.argv[1] if len(sys.argv) > 1 else "runs")
