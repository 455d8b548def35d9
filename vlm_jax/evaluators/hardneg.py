"""Hard-negative probes: does the image sit closer to its true caption than to a minimally edited false one?

Types: count (number changed), binding (colours swapped between two objects), left_right and above_below
(relation reversed). A plain bag-of-words text encoder cannot tell a binding or relation pair apart.

Two ways to score a probe: by embeddings (hardneg/<type>: image-text similarity, a contrastive model) and by
likelihood (hardneg_likelihood/<type>: the caption decoder's log-likelihood of each caption given the image,
CapPa's scoring classifier, Tschannen et al. 2023). blind.py gives the text-only baseline of both.
"""

import numpy as np

HARDNEG_TYPES = ("count", "binding", "left_right", "above_below")


def hardneg_accuracy(image_embedding, positive_embedding, negative_embedding) -> float:
  """Fraction of rows where sim(image, positive) > sim(image, negative); 0.5 is chance."""
  positive = np.sum(image_embedding * positive_embedding, axis=-1)
  negative = np.sum(image_embedding * negative_embedding, axis=-1)
  return float(np.mean(positive > negative))


def caption_log_likelihood(token_log_probs, tokens, prefix_len, pad_id: int) -> np.ndarray:
  """Sum of the log-probabilities of a text's tokens after its prompt, EOS included, padding excluded.

  token_log_probs float[..., T - 1]: log p(tokens[..., t + 1] | tokens[..., :t + 1]) (a model's token_log_probs);
  tokens int[..., T] (BOS + prompt + caption + EOS + padding); prefix_len int[...], BOS + prompt's length.
  """
  targets = np.asarray(tokens)[..., 1:]
  positions = np.arange(1, targets.shape[-1] + 1)
  weights = (positions >= np.asarray(prefix_len)[..., None]) & (targets != pad_id)
  return np.sum(np.where(weights, token_log_probs, 0.0), axis=-1)


def likelihood_accuracy(positive_log_likelihood, negative_log_likelihood) -> float:
  """Fraction of rows where the true caption is the more likely one given the image; 0.5 is chance."""
  return float(np.mean(np.asarray(positive_log_likelihood) > np.asarray(negative_log_likelihood)))
