"""Blind baselines of the hard-negative probes: how often text alone, without the image, prefers the true caption.

SugarCrepe's lesson (Hsieh et al. 2023): on older hard-negative benchmarks a text-only model beats the VLMs,
because the negatives are less fluent or less frequent word orders than the positives. The blind scorer here
is an interpolated Kneser-Ney word n-gram model (Chen & Goodman 1998; order 3, discount 0.75) fitted on
every true caption of every training scene, the texts the models train on; it scores the positive and the
negative caption of a probe without the image, and its accuracy is the share of probes where the positive
is the more probable one, a tie counting one half (a coin flip). What it can exploit in the shapes scenes:
colour/shape pairs never seen in training (the compositional split's held-out pairs) make a binding negative
improbable (on the test split 261 of 570 binding negatives name one, and it rejects all of them), and any skew
in how often a count or an ordering is written. The left/right and above/below negatives only swap the
relation word of captions whose both directions training writes equally often: it is at chance there.
"""

import collections
import math

import numpy as np

from vlm_jax.evaluators.caption_metrics import normalize

BOS, EOS, UNKNOWN = "<s>", "</s>", "<unk>"


def words(text: str) -> list:
  """A caption's words: lowercased, punctuation removed (caption_metrics.normalize), split on spaces."""
  return normalize(text).split()


class NgramModel:
  """An interpolated Kneser-Ney word n-gram model.

  For a history h of n - 1 words (the sentence is padded with n - 1 BOS and ends with EOS, which is predicted):
    P_n(w | h) = max(c(h w) - D, 0) / c(h) + D * T(h) / c(h) * P_{n-1}(w | h'),   h' = h without its first word,
  with c the counts of the training n-grams, c(h) = sum_w c(h w) and T(h) = #{w : c(h w) > 0}; a history never
  seen falls back to P_{n-1}(w | h'). The lower orders 1 < k < n use continuation counts instead of counts:
  N(g w) = #{v : c(v g w) > 0}, the number of words a k-gram follows. The unigram level interpolates with the
  uniform distribution over the vocabulary (the training words, EOS and one unknown word that stands for every
  word not seen), so every word has a probability > 0 and the probabilities of a history sum to 1.
  """

  def __init__(self, sentences, order: int = 3, discount: float = 0.75):
    if order < 1 or not 0 < discount < 1:
      raise ValueError(f"order {order} must be >= 1 and discount {discount} in (0, 1)")
    self.order, self.discount = order, discount
    # counts[k]: {(history of k - 1 words): Counter(next word)} for k = 1..order; the top order holds raw counts,
    # the lower orders continuation counts.
    top = collections.defaultdict(collections.Counter)
    for sentence in sentences:
      padded = [BOS] * (order - 1) + list(sentence) + [EOS]
      for i in range(order - 1, len(padded)):
        top[tuple(padded[i - order + 1:i])][padded[i]] += 1
    self.counts = {order: top}
    for k in range(order - 1, 0, -1):
      lower = collections.defaultdict(collections.Counter)
      for history, following in self.counts[k + 1].items():
        for word in following:  # one continuation per distinct preceding word
          lower[history[1:]][word] += 1
      self.counts[k] = lower
    self.vocabulary = {w for following in self.counts[1].values() for w in following} | {EOS, UNKNOWN}
    self.totals = {k: {h: sum(f.values()) for h, f in counts.items()} for k, counts in self.counts.items()}

  def probability(self, word: str, history) -> float:
    """P(word | the last order - 1 words of history), history padded with BOS on the left as needed."""
    padded = [BOS] * (self.order - 1) + list(history)
    word = word if word in self.vocabulary else UNKNOWN
    probability = 1.0 / len(self.vocabulary)
    for k in range(1, self.order + 1):  # from the unigram up, each order interpolating the one below
      context = tuple(padded[len(padded) - k + 1:]) if k > 1 else ()
      following, total = self.counts[k].get(context), self.totals[k].get(context, 0)
      if not total:
        continue  # an unseen history: the lower order's probability as it is
      probability = (max(following[word] - self.discount, 0) / total
                     + self.discount * len(following) / total * probability)
    return probability

  def log_likelihood(self, sentence) -> float:
    """sum_i log P(w_i | w_{i-n+1..i-1}) over the sentence's words and the final EOS."""
    sentence = list(sentence)
    return sum(math.log(self.probability(w, sentence[:i])) for i, w in enumerate(sentence + [EOS]))


def fit(captions, order: int = 3, discount: float = 0.75) -> NgramModel:
  """The blind scorer of a dataset: an NgramModel of the words of `captions` (its training captions)."""
  return NgramModel([words(c) for c in captions], order, discount)


def blind_accuracy(model: NgramModel, positives, negatives) -> float:
  """Share of (positive, negative) caption pairs where the model gives the positive the higher likelihood,
  ties counting 1/2; 0.5 is chance."""
  positive = np.array([model.log_likelihood(words(p)) for p in positives])
  negative = np.array([model.log_likelihood(words(n)) for n in negatives])
  return float(np.mean((positive > negative) + 0.5 * (positive == negative)))
