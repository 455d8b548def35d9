"""Hard-negative captions made from a true caption by a rule on its words (NegCLIP-style swaps).

A negative states what the image does not show but reads like a caption of some other image, so text alone
cannot tell it from the positive (a contrastive batch of such pairs trains what the words differ in):
  relation: the first spatial relation reversed ("a red circle above a blue square" -> "... below ...");
  count:    the number word one up or down, kept within one..four ("three shapes" -> "two shapes").
A caption with neither gives "" (no negative). These rules know English relation and number words only, so
they serve any dataset whose captions use them (shapes, Fashion-MNIST scenes); other captions get none.
"""

import re

import numpy as np

OPPOSITE = {"left of": "right of", "right of": "left of", "above": "below", "below": "above"}
NUMBERS = ("one", "two", "three", "four")
_RELATION = re.compile(r"\b(left of|right of|above|below)\b")
_NUMBER = re.compile(r"^(" + "|".join(NUMBERS) + r") (shapes?|items?)\b")


def states_relation(caption: str) -> bool:
  """Whether caption states a spatial relation ("a red circle above a blue square")."""
  return bool(_RELATION.search(caption))


def relation_negative(caption: str) -> str:
  """caption with its first relation reversed, or "" if it states none."""
  match = _RELATION.search(caption)
  if not match:
    return ""
  return caption[:match.start()] + OPPOSITE[match.group(1)] + caption[match.end():]


def count_negative(caption: str, rng: np.random.Generator) -> str:
  """A count caption ("two shapes") with the number one up or down (at random where both exist), or ""."""
  match = _NUMBER.match(caption)
  if not match:
    return ""
  n = NUMBERS.index(match.group(1))
  wrong = [m for m in (n - 1, n + 1) if 0 <= m < len(NUMBERS)]
  m = wrong[int(rng.integers(len(wrong)))]
  noun = match.group(2).rstrip("s") + ("" if m == 0 else "s")
  return f"{NUMBERS[m]} {noun}" + caption[match.end():]


def hard_negative(caption: str, rng: np.random.Generator) -> str:
  """The relation negative of caption, else its count negative, else ""."""
  return relation_negative(caption) or count_negative(caption, rng)
