"""BLEU-4, CIDEr (CIDEr-D, as the COCO leaderboard reports it) and ROUGE-L from `pycocoevalcap`.

The scorers are the COCO caption evaluation code itself, so numbers compare with papers, with one stated
difference: the COCO toolkit first tokenizes with the Stanford PTB tokenizer, which needs Java; here the
texts are lowercased and split on spaces after removing punctuation (`normalize`), which gives the same
tokens for plain captions like the shapes ones. CIDEr's document frequencies come from the references of
the corpus scored, so it is a corpus score: score a whole split at once, never batch by batch.
"""

import contextlib
import io
import re

from vlm_jax.errors import UserError

_PUNCTUATION = re.compile(r"[^\w\s]")


def normalize(text: str) -> str:
  """Lowercased, punctuation removed, single spaces."""
  return " ".join(_PUNCTUATION.sub(" ", text.lower()).split())


def _scorers():
  try:
    from pycocoevalcap.bleu.bleu import Bleu
    from pycocoevalcap.cider.cider import Cider
    from pycocoevalcap.rouge.rouge import Rouge
  except ImportError as e:
    raise UserError("caption metrics need pycocoevalcap: pip install pycocoevalcap==1.2") from e
  return Bleu(4), Cider(), Rouge()


def caption_metrics(predictions: list, references: list) -> dict:
  """predictions: N strings; references: N lists of one or more strings (the true captions of item i).

  Returns {"bleu4", "cider", "rouge_l"}, corpus-level, each in the toolkit's scale (BLEU and ROUGE in
  [0, 1]; CIDEr-D up to 10, papers print it x100 as e.g. "CIDEr 120").
  """
  if len(predictions) != len(references) or not predictions:
    raise ValueError(f"{len(predictions)} predictions for {len(references)} reference lists")
  if any(not refs for refs in references):
    raise ValueError("every prediction needs at least one reference")
  results = {i: [normalize(p)] for i, p in enumerate(predictions)}
  truths = {i: [normalize(r) for r in refs] for i, refs in enumerate(references)}
  bleu, cider, rouge = _scorers()
  with contextlib.redirect_stdout(io.StringIO()):  # the BLEU scorer prints its n-gram counts
    bleu_scores, _ = bleu.compute_score(truths, results)
  cider_score, _ = cider.compute_score(truths, results)
  rouge_score, _ = rouge.compute_score(truths, results)
  return {"bleu4": float(bleu_scores[3]), "cider": float(cider_score), "rouge_l": float(rouge_score)}
