"""Zero-shot classification with a two-tower / CoCa model: each class is the text of its name in prompt
templates, the template embeddings averaged and renormalised (the CLIP recipe), and an image takes the
class whose embedding is most similar to its own.
"""

import numpy as np

# Shaped like the shapes captions ("a red circle"); CLIP's "a photo of a {}." set would suit photos.
DEFAULT_TEMPLATES = ("{}", "a {}", "an image of a {}")


def class_prompts(labels: list, templates=DEFAULT_TEMPLATES) -> list:
  """Every (label, template) text, label-major: prompts[c * T + t] = templates[t].format(labels[c])."""
  return [template.format(label) for label in labels for template in templates]


def class_embeddings(prompt_embedding: np.ndarray, num_templates: int) -> np.ndarray:
  """float[C * T, E] embeddings of `class_prompts` -> float[C, E]: the mean over templates, renormalised.

  Renormalising matters: the mean of unit vectors is shorter the more the templates disagree, which would
  otherwise weigh classes by how consistent their prompts are.
  """
  mean = prompt_embedding.reshape(-1, num_templates, prompt_embedding.shape[-1]).mean(axis=1)
  return mean / np.maximum(np.linalg.norm(mean, axis=-1, keepdims=True), 1e-12)


def zero_shot_probabilities(image_embedding: np.ndarray, class_embedding: np.ndarray,
                            scale: float = 100.0) -> np.ndarray:
  """float[N, E] normalised images x float[C, E] classes -> float[N, C], softmax of scale * cosine.

  scale: the model's exp(logit_scale) (CLIP's 100 after training); it changes the scores, not the ranks.
  """
  logits = scale * image_embedding @ class_embedding.T
  logits -= logits.max(axis=-1, keepdims=True)
  probs = np.exp(logits)
  return probs / probs.sum(axis=-1, keepdims=True)


def zero_shot_metrics(image_embedding: np.ndarray, class_embedding: np.ndarray, labels, ks=(1, 5)) -> dict:
  """Top-k accuracy of labels int[N] (class indices) with chance/… beside each (k / C)."""
  similarity = image_embedding @ class_embedding.T
  order = np.argsort(-similarity, axis=-1, kind="stable")
  labels = np.asarray(labels)
  num_classes = class_embedding.shape[0]
  metrics = {}
  for k in ks:
    if k > num_classes:
      continue
    metrics[f"zero_shot/top{k}"] = float(np.mean(np.any(order[:, :k] == labels[:, None], axis=-1)))
    metrics[f"chance/zero_shot/top{k}"] = k / num_classes
  return metrics
