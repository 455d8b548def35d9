"""POPE-style object hallucination probe (Li et al. 2023): yes/no questions "is there a X?" about objects
that are in the image (truth yes) and objects that are not (truth no). A model that hallucinates says yes
to absent objects: low precision, a yes-ratio above the true share of yes.
"""

import numpy as np

POSITIVE = "yes"


def with_article(name: str) -> str:
  return ("an " if name[:1] in "aeiou" else "a ") + name


def pope_questions(present: list, absent_pool: list, rng: np.random.Generator, template="is there {}?") -> list:
  """(question, truth) pairs for one image: one per present object, and as many absent objects drawn
  uniformly without replacement from absent_pool minus the present ones (POPE's 'random' setting).
  """
  absent = [o for o in dict.fromkeys(absent_pool) if o not in set(present)]
  chosen = rng.choice(len(absent), size=min(len(present), len(absent)), replace=False) if absent else []
  pairs = [(template.format(with_article(o)), "yes") for o in present]
  return pairs + [(template.format(with_article(absent[i])), "no") for i in chosen]


def parse_yes_no(answer: str) -> str:
  """POPE's rule: the first sentence; 'no' if it has the word no or not, else 'yes'."""
  words = answer.strip().lower().split(".")[0].replace(",", " ").split()
  return "no" if ("no" in words or "not" in words) else "yes"


def pope_metrics(answers: list, truths: list) -> dict:
  """answers: the model's free-text answers; truths: "yes"/"no" (or bool). "yes" is the positive class.

  Returns pope/{accuracy, precision, recall, f1, yes_ratio}; precision is 0 when the model never says yes.
  """
  if len(answers) != len(truths) or not answers:
    raise ValueError(f"{len(answers)} answers for {len(truths)} truths")
  said_yes = np.array([parse_yes_no(a) == POSITIVE for a in answers])
  is_yes = np.array([t if isinstance(t, (bool, np.bool_)) else str(t).strip().lower() == POSITIVE for t in truths])
  true_positive = np.sum(said_yes & is_yes)
  precision = true_positive / max(said_yes.sum(), 1)
  recall = true_positive / max(is_yes.sum(), 1)
  f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
  share_yes = float(is_yes.mean())
  return {"pope/accuracy": float(np.mean(said_yes == is_yes)), "pope/precision": float(precision),
          "pope/recall": float(recall), "pope/f1": float(f1), "pope/yes_ratio": float(said_yes.mean()),
          # A blind model: the majority answer for accuracy; always "yes" for precision / recall / F1.
          "chance/pope/accuracy": max(share_yes, 1 - share_yes), "chance/pope/precision": share_yes,
          "chance/pope/recall": 1.0, "chance/pope/f1": 2 * share_yes / (1 + share_yes)}
