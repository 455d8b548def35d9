"""Caption scores from greedy decoding: exact match and per-position token accuracy against the reference."""

import numpy as np


def caption_scores(predicted_ids: list, reference_ids: list, eos_id: int) -> dict:
  """predicted_ids, reference_ids: lists of token-id lists without BOS/EOS.

  exact match: the whole caption is the reference. token accuracy: the fraction of reference positions
  (its EOS included) where the prediction has the same token.
  """
  exact, correct, total = [], 0, 0
  for predicted, reference in zip(predicted_ids, reference_ids):
    exact.append(predicted == reference)
    predicted, reference = list(predicted) + [eos_id], list(reference) + [eos_id]
    correct += sum(p == r for p, r in zip(predicted, reference))
    total += len(reference)
  return {"caption_exact_match": float(np.mean(exact)), "caption_token_accuracy": correct / max(total, 1)}
