"""Training objectives: softmax (CLIP) and sigmoid (SigLIP) contrastive, next-token cross-entropy, classification.

A model lists its loss terms (LOSS_TERMS, names in TERMS); config.loss switches and weighs each.

Embeddings are L2-normalised float[B, E]; `positives` bool[B, B] marks which (image i, text j) pairs
match. By default only the diagonal does; when a batch holds the same caption twice (e.g. "two shapes"),
passing `same_text_mask(tokens)` makes every copy a positive instead of a false negative.
"""

import dataclasses
from typing import Callable

import jax
import jax.numpy as jnp
import optax

MAX_LOGIT_SCALE = 100.0  # CLIP clamps exp(scale) at 100 so the temperature cannot run away.


def same_text_mask(tokens: jnp.ndarray) -> jnp.ndarray:
  """bool[B, B]: True where text i and text j are the same token sequence."""
  return jnp.all(tokens[:, None, :] == tokens[None, :, :], axis=-1)


@dataclasses.dataclass(frozen=True)
class HardNegatives:
  """Extra text columns for the image->text direction (NegCLIP): embedding float[B, E] of the texts made false
  from the batch's own (one per row), valid bool[B] (False: row i has none, its column is left out), and
  positives bool[B, B]: [i, c] where negative c happens to be the very text of image i (a swap that gives another
  image's true caption), a positive of row i like every copy of its text; ignored bool[B, B] or None: [i, c] where
  negative c is also true of image i (true_pairs), left out of the loss."""
  embedding: jnp.ndarray
  valid: jnp.ndarray
  positives: jnp.ndarray
  ignored: jnp.ndarray | None = None

  def columns(self) -> jnp.ndarray:
    """bool[B, B]: the pairs (row i, negative c) in the loss: every valid column, less the ignored pairs that are
    not row i's own text."""
    valid = jnp.broadcast_to(self.valid[None, :], self.positives.shape)
    return valid if self.ignored is None else valid & (~self.ignored | self.positives)

  def metrics(self, logits, negative_logits) -> dict:
    """hard_negative_accuracy: the share of rows with a negative whose own text outscores their own negative."""
    n = logits.shape[0]
    wins = jnp.diagonal(logits) > negative_logits[jnp.arange(n), jnp.arange(n)]
    return {"hard_negative_accuracy": jnp.sum(wins & self.valid) / jnp.maximum(jnp.sum(self.valid), 1)}


def true_pairs(object_count, text_count) -> jnp.ndarray:
  """bool[B, B]: [i, j] where text j states a count (text_count[j] > 0: "two shapes") that image i has
  (object_count[i]): a pair the data knows to be true whether or not j is i's own text."""
  return (text_count[None, :] > 0) & (text_count[None, :] == object_count[:, None])


def contrastive_softmax_loss(image_embedding, text_embedding, logit_scale, positives=None, negatives=None,
                             ignored=None):
  """Symmetric InfoNCE (CLIP): mean of image->text and text->image cross-entropies.

  With several positives per row the target is uniform over them. `negatives` (HardNegatives): more columns in
  the image->text direction only, as NegCLIP (a negative has no image of its own). `ignored` bool[B, B]: pairs
  left out of both softmaxes (texts also true of an image that are not its positives). Returns (loss, metrics).
  """
  n = image_embedding.shape[0]
  positives = jnp.eye(n, dtype=bool) if positives is None else positives
  scale = jnp.minimum(jnp.exp(logit_scale), MAX_LOGIT_SCALE)
  logits = scale * image_embedding @ text_embedding.T
  # A finite floor, not -inf: the cross-entropy multiplies it by a zero target.
  kept = logits if ignored is None else jnp.where(ignored & ~positives, -1e9, logits)
  row_logits, row_positives, metrics = kept, positives, {}
  if negatives is not None:
    negative_logits = scale * image_embedding @ negatives.embedding.T
    metrics = negatives.metrics(logits, negative_logits)
    hidden = jnp.where(negatives.columns(), negative_logits, -1e9)
    row_logits = jnp.concatenate([kept, hidden], axis=1)
    row_positives = jnp.concatenate([positives, negatives.positives & negatives.valid[None, :]], axis=1)
  targets = row_positives / jnp.sum(row_positives, axis=1, keepdims=True)
  image_to_text = optax.softmax_cross_entropy(row_logits, targets)
  targets_t = positives.T / jnp.sum(positives.T, axis=1, keepdims=True)
  text_to_image = optax.softmax_cross_entropy(kept.T, targets_t)
  loss = 0.5 * (jnp.mean(image_to_text) + jnp.mean(text_to_image))
  correct = positives[jnp.arange(n), jnp.argmax(logits, axis=1)]
  return loss, {"contrastive_loss": loss, "contrastive_accuracy": jnp.mean(correct), "temperature_scale": scale,
                **metrics}


def _pair_weights(positives, shared: bool, extra_positives=None):
  """Weights of the sigmoid loss's pairs: 1 for every pair ("each", SigLIP as published); with `shared`, the
  positives of image i weigh 1/k_i (k_i of them, counting extra_positives, e.g. hard-negative columns that are
  its text), so that each image's positives together weigh 1, as the softmax loss's uniform target does (a
  caption repeated k times in the batch would otherwise pull k times as hard as a caption seen once)."""
  if not shared:
    return 1.0, 1.0
  count = jnp.sum(positives, axis=1, keepdims=True)
  if extra_positives is not None:
    count = count + jnp.sum(extra_positives, axis=1, keepdims=True)
  weight = lambda mask: jnp.where(mask, 1.0 / jnp.maximum(count, 1), 1.0)
  return weight(positives), (1.0 if extra_positives is None else weight(extra_positives))


def contrastive_sigmoid_loss(image_embedding, text_embedding, logit_scale, logit_bias, positives=None,
                             negatives=None, shared_positives: bool = False, ignored=None):
  """SigLIP: -sum_ij w_ij log sigmoid(z_ij (t x_i.y_j + b)) / B, z = +1 for positives, -1 otherwise; w = 1, or
  with shared_positives 1/k_i on image i's k_i positives (_pair_weights). `negatives` (HardNegatives) add their
  valid columns to the sum, z = -1 except where a negative is row i's own text. `ignored` bool[B, B]: negative
  pairs left out of the sum (w = 0: texts also true of the image)."""
  n = image_embedding.shape[0]
  positives = jnp.eye(n, dtype=bool) if positives is None else positives
  logits = jnp.exp(logit_scale) * image_embedding @ text_embedding.T + logit_bias
  signs = jnp.where(positives, 1.0, -1.0)
  extra = None if negatives is None else negatives.positives & negatives.valid[None, :]
  weights, negative_weights = _pair_weights(positives, shared_positives, extra)
  if ignored is not None:
    weights = jnp.where(ignored & ~positives, 0.0, weights)
  total, metrics = jnp.sum(weights * jax.nn.log_sigmoid(signs * logits)), {}
  if negatives is not None:
    negative_logits = jnp.exp(logit_scale) * image_embedding @ negatives.embedding.T + logit_bias
    metrics = negatives.metrics(logits, negative_logits)
    negative_signs = jnp.where(negatives.positives, 1.0, -1.0)
    total += jnp.sum(jnp.where(negatives.columns(),
                               negative_weights * jax.nn.log_sigmoid(negative_signs * negative_logits), 0.0))
  loss = -total / n
  correct = positives[jnp.arange(n), jnp.argmax(logits, axis=1)]
  return loss, {"contrastive_loss": loss, "contrastive_accuracy": jnp.mean(correct),
                "temperature_scale": jnp.exp(logit_scale), "logit_bias": logit_bias, **metrics}


def contrastive_sigmoid_loss_chunked(image_embedding, text_embedding, logit_scale, logit_bias, text_tokens,
                                     num_chunks: int, shared_positives: bool = False):
  """The sigmoid loss with positives = same_text_mask(text_tokens), B x B/num_chunks logits at a time.

  A scan over chunks of texts: with the batch sharded over D devices and num_chunks = D, each device holds
  a [B/D, B/D] block of logits whatever D is, where the dense loss would materialise [B/D, B]. Equal to
  `contrastive_sigmoid_loss(..., positives=same_text_mask(text_tokens), shared_positives=...)` in value and
  gradient (with shared_positives, each image's count of positives comes from a first pass over the chunks of
  tokens, B ints).
  """
  n = image_embedding.shape[0]
  if n % num_chunks:
    raise ValueError(f"batch {n} is not divisible into {num_chunks} chunks")
  chunk = n // num_chunks
  scale = jnp.exp(logit_scale)
  texts = text_embedding.reshape(num_chunks, chunk, -1)
  tokens = text_tokens.reshape(num_chunks, chunk, -1)
  same = lambda token_block: jnp.all(text_tokens[:, None, :] == token_block[None, :, :], axis=-1)  # [B, chunk]
  count = jax.lax.scan(lambda c, block: (c + jnp.sum(same(block), axis=1, dtype=jnp.int32), None),
                       jnp.zeros(n, jnp.int32), tokens)[0][:, None]

  def body(total, block):
    text_block, token_block = block
    logits = scale * image_embedding @ text_block.T + logit_bias  # [B, chunk]
    positives = same(token_block)
    signs = jnp.where(positives, 1.0, -1.0)
    weights = jnp.where(positives, 1.0 / count, 1.0) if shared_positives else 1.0
    return total + jnp.sum(weights * jax.nn.log_sigmoid(signs * logits)), None

  total, _ = jax.lax.scan(body, jnp.zeros((), jnp.promote_types(image_embedding.dtype, jnp.float32)), (texts, tokens))
  loss = -total / n
  return loss, {"contrastive_loss": loss, "temperature_scale": scale, "logit_bias": logit_bias}


def next_token_loss(logits, targets, weights):
  """Mean cross-entropy over the tokens with weight 1 (padding and prompts weigh 0).

  logits float[B, T, V], targets int[B, T], weights float[B, T]. Returns (loss, metrics).
  """
  weights = weights.astype(jnp.float32)
  token_loss = optax.softmax_cross_entropy_with_integer_labels(
      logits.astype(jnp.promote_types(logits.dtype, jnp.float32)), targets)
  total = jnp.maximum(jnp.sum(weights), 1.0)
  loss = jnp.sum(token_loss * weights) / total
  accuracy = jnp.sum((jnp.argmax(logits, -1) == targets) * weights) / total
  return loss, {"caption_loss": loss, "token_accuracy": accuracy}


def target_log_probs(logits, targets):
  """float32[...]: log softmax(logits)[..., target], each target token's log-probability (logits float[..., V],
  targets int[...]); the negated terms of next_token_loss, for scoring a text by its likelihood."""
  log_probs = jax.nn.log_softmax(logits.astype(jnp.promote_types(logits.dtype, jnp.float32)), axis=-1)
  return jnp.take_along_axis(log_probs, targets[..., None], axis=-1)[..., 0]


def answer_weights(text: jnp.ndarray, prefix_len: jnp.ndarray, pad_id: int) -> jnp.ndarray:
  """float[B, T-1]: 1 for the targets text[:, 1:] that follow the prompt and are not padding."""
  target_positions = jnp.arange(1, text.shape[1])[None, :]
  return ((target_positions >= prefix_len[:, None]) & (text[:, 1:] != pad_id)).astype(jnp.float32)


# ----------------------------------------------------------------------------- the terms models declare

def contrastive_term(loss_config, outputs, batch, pad_id: int):
  """config.loss.contrastive ('softmax' | 'sigmoid') between the image and text embeddings; every copy of
  a text in the batch is a positive of its images."""
  del pad_id
  image, text, scale = outputs["image_embedding"], outputs["text_embedding"], outputs["logit_scale"]
  # config.data.ignore_true_counts: the batch says which texts state a count and how many objects each image has.
  ignored = true_pairs(batch["object_count"], batch["text_count"]) if "text_count" in batch else None
  negatives = None
  if "text_negative_embedding" in outputs:  # config.data.hard_negatives
    negatives = HardNegatives(outputs["text_negative_embedding"], batch["text_negative_valid"] > 0,
                              jnp.all(batch["text"][:, None, :] == batch["text_negative"][None, :, :], axis=-1),
                              None if ignored is None else true_pairs(batch["object_count"],
                                                                      batch["text_negative_count"]))
  shared = loss_config.get("sigmoid_positives", "each") == "shared"
  if loss_config.contrastive == "softmax":
    return contrastive_softmax_loss(image, text, scale, same_text_mask(batch["text"]), negatives, ignored)
  if loss_config.contrastive == "sigmoid" and loss_config.sigmoid_chunks > 1:
    if negatives is not None or ignored is not None:
      raise ValueError("the chunked sigmoid loss takes no hard negatives and no ignored pairs (run_config.validate "
                       "refuses both)")
    return contrastive_sigmoid_loss_chunked(image, text, scale, outputs["logit_bias"], batch["text"],
                                            loss_config.sigmoid_chunks, shared)
  if loss_config.contrastive == "sigmoid":
    return contrastive_sigmoid_loss(image, text, scale, outputs["logit_bias"], same_text_mask(batch["text"]),
                                    negatives, shared, ignored)
  raise ValueError(f"config.loss.contrastive={loss_config.contrastive!r}: expected softmax, sigmoid or ''")


def caption_term(loss_config, outputs, batch, pad_id: int):
  """Next-token cross-entropy of outputs["logits"] on every token of batch["caption"] after BOS."""
  del loss_config
  targets = batch["caption"][:, 1:]
  return next_token_loss(outputs["logits"], targets, targets != pad_id)


def answer_term(loss_config, outputs, batch, pad_id: int):
  """Next-token cross-entropy on what follows the prompt in batch["text"] (prompt length batch["prefix_len"]);
  with batch["answer_mask"] int[B, T], on the positions it marks (every assistant turn of a conversation)."""
  del loss_config
  if "answer_mask" in batch:
    weights = (batch["answer_mask"][:, 1:] > 0) & (batch["text"][:, 1:] != pad_id)
  else:
    weights = answer_weights(batch["text"], batch["prefix_len"], pad_id)
  return next_token_loss(outputs["logits"], batch["text"][:, 1:], weights)


def classification_term(loss_config, outputs, batch, pad_id: int):
  """Softmax cross-entropy of outputs["class_logits"] on the integer labels batch["label"], the one-hot targets
  smoothed by config.loss.label_smoothing (eps: 1 - eps on the label, eps / K spread over all K classes)."""
  del pad_id
  logits = outputs["class_logits"]
  one_hot = jax.nn.one_hot(batch["label"], logits.shape[-1], dtype=logits.dtype)
  targets = optax.smooth_labels(one_hot, loss_config.get("label_smoothing", 0.0))
  loss = jnp.mean(optax.softmax_cross_entropy(logits, targets))
  return loss, {"classification_loss": loss, "accuracy": jnp.mean(jnp.argmax(logits, -1) == batch["label"])}


@dataclasses.dataclass(frozen=True)
class Term:
  """A loss term and the config.loss keys that drive it.

  `switch`: the key that turns the term off when it is falsy ('' or 0), with the value that does (`off`) and
  what turns it on (`on`, for messages); `weight`: the key of its weight. None for both: the model's only
  objective, always on with weight 1.
  """
  fn: Callable
  switch: str | None = None
  off: object = None
  on: str = ""
  weight: str | None = None

  def is_on(self, loss_config) -> bool:
    return self.switch is None or bool(loss_config[self.switch])

  def weight_of(self, loss_config) -> float:
    return 1.0 if self.weight is None else loss_config[self.weight]


# The names models list in their LOSS_TERMS. caption_weight weighs both next-token terms: a model has one.
TERMS = {
    "contrastive": Term(contrastive_term, "contrastive", "", "'softmax' or 'sigmoid'", "contrastive_weight"),
    "caption": Term(caption_term, "caption_weight", 0.0, "> 0", "caption_weight"),
    "answer": Term(answer_term, "caption_weight", 0.0, "> 0", "caption_weight"),
    "classification": Term(classification_term),
}
SWITCHES = {term.switch: term.off for term in TERMS.values() if term.switch}  # config.loss key -> its off value


def compute_loss(loss_config, terms, outputs, batch, pad_id: int):
  """The weighted sum of the model's loss `terms` (its LOSS_TERMS) that config.loss switches on.

  Returns (loss, metrics): metrics hold every term's own metrics and "loss", the total.
  """
  total, metrics = 0.0, {}
  for name in terms:
    term = TERMS[name]
    if term.is_on(loss_config):
      loss, term_metrics = term.fn(loss_config, outputs, batch, pad_id)
      total += term.weight_of(loss_config) * loss
      metrics.update(term_metrics)
  metrics["loss"] = total
  return total, metrics
