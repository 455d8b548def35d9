"""Hard-negative probes: does the image sit closer to its true caption than to a minimally edited false one?

Types: count (number changed), binding (colours swapped between two objects), left_right and above_below
(relation reversed). A plain bag-of-words text encoder cannot tell a binding or relation pair apart.
"""

import numpy as np

HARDNEG_TYPES = ("count", "binding", "left_right", "above_below")


def hardneg_accuracy(image_embedding, positive_embedding, negative_embedding) -> float:
  """Fraction of rows where sim(image, positive) > sim(image, negative); 0.5 is chance."""
  positive = np.sum(image_embedding * positive_embedding, axis=-1)
  negative = np.sum(image_embedding * negative_embedding, axis=-1)
  return float(np.mean(positive > negative))
