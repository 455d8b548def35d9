"""Training objectives: softmax (CLIP) and sigmoid (SigLIP) contrastive, next-token cross-entropy, CoCa sum.

Embeddings are L2-normalised float[B, E]; `positives` bool[B, B] marks which (image i, text j) pairs
match. By default only the diagonal does; when a batch holds the same caption twice (e.g. "two shapes"),
passing `same_text_mask(tokens)` makes every copy a positive instead of a false negative.
"""

import jax
import jax.numpy as jnp
import optax

MAX_LOGIT_SCALE = 100.0  # CLIP clamps exp(scale) at 100 so the temperature cannot run away.


def same_text_mask(tokens: jnp.ndarray) -> jnp.ndarray:
  """bool[B, B]: True where text i and text j are the same token sequence."""
  return jnp.all(tokens[:, None, :] == tokens[None, :, :], axis=-1)


def contrastive_softmax_loss(image_embedding, text_embedding, logit_scale, positives=None):
  """Symmetric InfoNCE (CLIP): mean of image->text and text->image cross-entropies.

  With several positives per row the target is uniform over them. Returns (loss, metrics).
  """
  n = image_embedding.shape[0]
  positives = jnp.eye(n, dtype=bool) if positives is None else positives
  scale = jnp.minimum(jnp.exp(logit_scale), MAX_LOGIT_SCALE)
  logits = scale * image_embedding @ text_embedding.T
  targets = positives / jnp.sum(positives, axis=1, keepdims=True)
  image_to_text = optax.softmax_cross_entropy(logits, targets)
  targets_t = positives.T / jnp.sum(positives.T, axis=1, keepdims=True)
  text_to_image = optax.softmax_cross_entropy(logits.T, targets_t)
  loss = 0.5 * (jnp.mean(image_to_text) + jnp.mean(text_to_image))
  correct = positives[jnp.arange(n), jnp.argmax(logits, axis=1)]
  return loss, {"contrastive_loss": loss, "contrastive_accuracy": jnp.mean(correct), "temperature_scale": scale}


def contrastive_sigmoid_loss(image_embedding, text_embedding, logit_scale, logit_bias, positives=None):
  """SigLIP: -sum_ij log sigmoid(z_ij (t x_i.y_j + b)) / B, z = +1 for positives, -1 otherwise."""
  n = image_embedding.shape[0]
  positives = jnp.eye(n, dtype=bool) if positives is None else positives
  logits = jnp.exp(logit_scale) * image_embedding @ text_embedding.T + logit_bias
  signs = jnp.where(positives, 1.0, -1.0)
  loss = -jnp.sum(jax.nn.log_sigmoid(signs * logits)) / n
  correct = positives[jnp.arange(n), jnp.argmax(logits, axis=1)]
  return loss, {"contrastive_loss": loss, "contrastive_accuracy": jnp.mean(correct),
                "temperature_scale": jnp.exp(logit_scale), "logit_bias": logit_bias}


def contrastive_sigmoid_loss_chunked(image_embedding, text_embedding, logit_scale, logit_bias, text_tokens,
                                     num_chunks: int):
  """The sigmoid loss with positives = same_text_mask(text_tokens), B x B/num_chunks logits at a time.

  A scan over chunks of texts: with the batch sharded over D devices and num_chunks = D, each device holds
  a [B/D, B/D] block of logits whatever D is, where the dense loss would materialise [B/D, B]. Equal to
  `contrastive_sigmoid_loss(..., positives=same_text_mask(text_tokens))` in value and gradient.
  """
  n = image_embedding.shape[0]
  if n % num_chunks:
    raise ValueError(f"batch {n} is not divisible into {num_chunks} chunks")
  chunk = n // num_chunks
  scale = jnp.exp(logit_scale)
  texts = text_embedding.reshape(num_chunks, chunk, -1)
  tokens = text_tokens.reshape(num_chunks, chunk, -1)

  def body(total, block):
    text_block, token_block = block
    logits = scale * image_embedding @ text_block.T + logit_bias  # [B, chunk]
    positives = jnp.all(text_tokens[:, None, :] == token_block[None, :, :], axis=-1)
    signs = jnp.where(positives, 1.0, -1.0)
    return total + jnp.sum(jax.nn.log_sigmoid(signs * logits)), None

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


def answer_weights(text: jnp.ndarray, prefix_len: jnp.ndarray, pad_id: int) -> jnp.ndarray:
  """float[B, T-1]: 1 for the targets text[:, 1:] that follow the prompt and are not padding."""
  target_positions = jnp.arange(1, text.shape[1])[None, :]
  return ((target_positions >= prefix_len[:, None]) & (text[:, 1:] != pad_id)).astype(jnp.float32)


def compute_loss(loss_config, outputs, batch, pad_id: int):
  """The objective the config asks for, as a weighted sum. Returns (loss, metrics)."""
  total, metrics = 0.0, {}
  if loss_config.contrastive:
    positives = same_text_mask(batch["text"])
    if loss_config.contrastive == "softmax":
      loss, m = contrastive_softmax_loss(outputs["image_embedding"], outputs["text_embedding"],
                                         outputs["logit_scale"], positives)
    elif loss_config.contrastive == "sigmoid" and loss_config.sigmoid_chunks > 1:
      loss, m = contrastive_sigmoid_loss_chunked(
          outputs["image_embedding"], outputs["text_embedding"], outputs["logit_scale"], outputs["logit_bias"],
          batch["text"], loss_config.sigmoid_chunks)
    elif loss_config.contrastive == "sigmoid":
      loss, m = contrastive_sigmoid_loss(outputs["image_embedding"], outputs["text_embedding"],
                                         outputs["logit_scale"], outputs["logit_bias"], positives)
    else:
      raise ValueError(f"config.loss.contrastive={loss_config.contrastive!r}: expected softmax, sigmoid or ''")
    total += loss_config.contrastive_weight * loss
    metrics.update(m)
  if "logits" in outputs and loss_config.caption_weight:
    if "prefix_len" in batch:  # prefix-LM: the loss is on what follows the prompt
      targets = batch["text"][:, 1:]
      weights = answer_weights(batch["text"], batch["prefix_len"], pad_id)
    else:
      targets = batch["caption"][:, 1:]
      weights = (targets != pad_id)
    loss, m = next_token_loss(outputs["logits"], targets, weights)
    total += loss_config.caption_weight * loss
    metrics.update(m)
  if "class_logits" in outputs:  # the supervised classifier: softmax cross-entropy on integer labels
    logits = outputs["class_logits"]
    loss = jnp.mean(optax.softmax_cross_entropy_with_integer_labels(logits, batch["label"]))
    total += loss
    metrics.update(classification_loss=loss, accuracy=jnp.mean(jnp.argmax(logits, -1) == batch["label"]))
  metrics["loss"] = total
  return total, metrics
