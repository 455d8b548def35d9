"""Image<->text retrieval recall@k on a split where image i is described by caption i.

A retrieved item counts as a hit when its caption is the same text as the query's (scenes with the same
description are indistinguishable by text), so the chance level is computed with the same rule.
"""

import math

import numpy as np


def _same_text_matrix(captions: list) -> np.ndarray:
  ids = {c: i for i, c in enumerate(dict.fromkeys(captions))}
  labels = np.array([ids[c] for c in captions])
  return labels[:, None] == labels[None, :]


def recall_at_k(similarity: np.ndarray, relevant: np.ndarray, k: int) -> float:
  """Fraction of queries (rows) with a relevant item among their k most similar columns."""
  top = np.argsort(-similarity, axis=1, kind="stable")[:, :k]
  return float(np.mean(np.any(np.take_along_axis(relevant, top, axis=1), axis=1)))


def chance_recall_at_k(relevant: np.ndarray, k: int) -> float:
  """Expected recall@k of a uniformly random ranking: 1 - C(N - m, k) / C(N, k) for m relevant items."""
  n = relevant.shape[1]
  if k >= n:  # every item is retrieved
    return 1.0
  misses = [math.comb(n - int(m), k) / math.comb(n, k) for m in relevant.sum(axis=1)]
  return float(1.0 - np.mean(misses))


def _owned_text_matrix(texts: list, text_images: list, num_images: int) -> np.ndarray:
  """bool[N images, M texts]: text j is one of image i's texts (or the same words as one of them)."""
  ids = {c: i for i, c in enumerate(dict.fromkeys(texts))}
  owned = np.zeros((num_images, len(ids)), bool)
  owned[np.asarray(text_images), [ids[t] for t in texts]] = True
  return owned[:, [ids[t] for t in texts]]


def retrieval_metrics(image_embedding: np.ndarray, text_embedding: np.ndarray, captions: list,
                      ks=(1, 5), text_images=None) -> dict:
  """image_embedding float[N, E], text_embedding float[M, E] (normalised); captions[j] is text j's words.

  text_images: the image text j describes (int[M]); None: text i describes image i (M = N). An image with
  several texts (COCO's five captions) finds one of them, and each of them finds it.
  """
  similarity = image_embedding @ text_embedding.T
  if text_images is None:
    relevant = _same_text_matrix(captions)
  else:
    relevant = _owned_text_matrix(captions, text_images, len(image_embedding))
  metrics = {}
  for k in ks:
    metrics[f"img2txt_recall@{k}"] = recall_at_k(similarity, relevant, k)
    metrics[f"txt2img_recall@{k}"] = recall_at_k(similarity.T, relevant.T, k)
    metrics[f"chance/img2txt_recall@{k}"] = chance_recall_at_k(relevant, k)
    metrics[f"chance/txt2img_recall@{k}"] = chance_recall_at_k(relevant.T, k)
  return metrics
