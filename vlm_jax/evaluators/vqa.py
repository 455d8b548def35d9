"""VQA accuracy: exact match of the generated answer, overall and per question type."""

import collections

import numpy as np


def vqa_scores(predicted: list, answers: list, question_types: list) -> dict:
  """Returns vqa_accuracy, vqa/<type> and, beside each, the majority-answer baseline chance/vqa/<type>."""
  hits = [p.strip() == a.strip() for p, a in zip(predicted, answers)]
  metrics = {"vqa_accuracy": float(np.mean(hits))}
  by_type = collections.defaultdict(list)
  for hit, answer, kind in zip(hits, answers, question_types):
    by_type[kind].append((hit, answer))
  majorities = 0
  for kind, rows in sorted(by_type.items()):
    metrics[f"vqa/{kind}"] = float(np.mean([h for h, _ in rows]))
    majority = collections.Counter(a for _, a in rows).most_common(1)[0][1]
    metrics[f"chance/vqa/{kind}"] = majority / len(rows)
    majorities += majority
  # A blind model that gives each question type its most common answer.
  metrics["chance/vqa_accuracy"] = majorities / max(len(hits), 1)
  return metrics
