"""Prefix-LM VLM (LLaVA / PaliGemma): projected image tokens prepended to the text.

image -> ViT (all tokens of `vision_layer`, CLS dropped) -> projector -> prefix float[B, N, D]
[prefix ; BOS prompt] attend each other fully (prefix_attention="bidirectional", PaliGemma) or causally like
the answer after them ("causal", LLaVA); the loss is on the answer only.
"""

import flax.linen as nn
import jax.numpy as jnp

from vlm_jax import flops, losses
from vlm_jax.errors import UserError
from vlm_jax.models import layers, projector, text, towers, vit

# What the rest of vlm_jax needs to know (models/__init__.py lists these declarations).
FEATURES = ("image", "text", "prefix_len", "answer_mask")  # answer_mask: the positions the loss predicts
DATA_TASK = "vqa"  # captions are the answers to data.pipeline.DESCRIBE_PROMPT
LOSS_TERMS = ("answer",)
EVAL_TYPES = ("captioning", "vqa", "pope", "hardneg")  # hardneg: by the caption's likelihood (no embeddings)
DEFAULT_EVALS = EVAL_TYPES
PREDICT_TASKS = ("caption", "answer")
GENERATES = True
HF_EXPORT = "llava"  # python -m vlm_jax.export: a LlavaForConditionalGeneration (CLIP/SigLIP tower, Llama decoder)


class PrefixLM(nn.Module):
  """`__call__(batch)` -> (outputs, intermediates); batch has "image", "text" int[B, T] and "prefix_len" int[B]."""
  vision: vit.ViT
  projector: projector.Projector
  decoder: text.TextTransformer
  # -1: the final encoder output (after its norm); k <= -2: HF's hidden_states[k], the output of block
  # depth + k + 1 before any norm (-2: the penultimate block, LLaVA-1.5's vision_feature_layer; -(depth + 1): the
  # embedded tokens the first block reads).
  vision_layer: int = -1
  dtype: layers.Dtype = jnp.float32

  def image_tokens(self, images):
    """float[B, H, W, 3] -> projected image tokens float[B, N, D_decoder]."""
    _, intermediates = self.vision(images)
    if self.vision_layer == -1:
      tokens = intermediates["encoded"]
    else:
      # HF's hidden_states are [embeddings, block 1, ..., block depth]: hidden_states[k] = blocks[depth + k], and
      # hidden_states[-(depth + 1)] the embedded tokens (intermediates["blocks"] float[depth, B, N, D]).
      if not -self.vision.depth - 1 <= self.vision_layer < -1:
        raise ValueError(f"vision_layer {self.vision_layer} is outside [-{self.vision.depth + 1}, -1] for a "
                         f"{self.vision.depth}-block ViT")
      index = self.vision.depth + self.vision_layer
      tokens = intermediates["embedded"] if index < 0 else intermediates["blocks"][index]
    if self.vision.cls_token:
      tokens = tokens[:, 1:]
    return self.projector(tokens)

  def caption_logits(self, image_tokens, tokens, prefix_len):
    """Next-token logits float[B, T, V] for `tokens` after the image prefix."""
    logits, _ = self.decoder(tokens, prefix=image_tokens, prefix_len=prefix_len)
    return logits

  def token_log_probs(self, image_tokens, tokens, prefix_len):
    """Teacher-forced log p(tokens[b, k, t + 1] | image b, tokens[b, k, :t + 1]), float32[B, K, T - 1], for K
    texts int[B, K, T] per image given its projected `image_tokens` float[B, N, D], each text with its prompt
    length prefix_len int[B, K] (the prompt seen with the image, as in training)."""
    b, k, t = tokens.shape
    flat = tokens.reshape(b * k, t)
    logits = self.caption_logits(jnp.repeat(image_tokens, k, axis=0), flat[:, :-1], prefix_len.reshape(b * k))
    return losses.target_log_probs(logits, flat[:, 1:]).reshape(b, k, t - 1)

  def __call__(self, batch):
    image_tokens = self.image_tokens(batch["image"])
    logits, intermediates = self.decoder(batch["text"][:, :-1], prefix=image_tokens, prefix_len=batch["prefix_len"])
    return dict(logits=logits), {"text": intermediates}

  def prefill(self, tokens, start, image_tokens):
    """Decoding (vlm_jax.decoding): [image tokens ; text] once, prefix (image + prompt) seen whole.
    -> (logits float[B, L, V] of the text positions, cache)."""
    return self.decoder.prefill(tokens, start, prefix=image_tokens)

  def decode_step(self, cache, token, position):
    """token int[B] at text position int[B] -> (logits float[B, V], cache)."""
    return self.decoder.decode_step(cache, token, position)


PREFIX_ATTENTION = ("bidirectional", "causal")


def prefix_attention(config) -> str:
  """config.model.prefix_attention (absent in configs written before it: "bidirectional")."""
  kind = config.get("prefix_attention", "bidirectional")
  if kind not in PREFIX_ATTENTION:
    raise UserError(f"config.model.prefix_attention={kind!r} is not one of {PREFIX_ATTENTION}")
  return kind


def build(config, *, vocab_size: int, max_len: int, eos_id: int, pad_id: int, dtype, remat: str,
          scan: bool = True, attention: str = "auto") -> PrefixLM:
  """config: the run config's `model` section; the projector maps the ViT's width to the decoder's."""
  del eos_id  # generation stops at EOS; the model itself never looks for it
  return PrefixLM(vision=towers.build_vit(config.vision, dtype, remat, scan, attention),
                  projector=projector.Projector(config.text.width, config.projector.type,
                                                config.projector.hidden_dim, dtype),
                  decoder=towers.build_text(config.text, vocab_size, max_len, dtype, remat, scan, compute_logits=True,
                                            tied_embedding=config.text.tied_embedding, pad_id=pad_id,
                                            causal_prefix=prefix_attention(config) == "causal", attention=attention),
                  vision_layer=config.vision_layer, dtype=dtype)


def forward_flops(config, vocab_size: int, batch_size: int) -> dict:
  """Forward FLOPs of one example by component (flops.py's conventions)."""
  del batch_size  # nothing is shared across the batch
  m, t = config.model, config.data.max_text_len
  n_image = (config.data.image_size // m.vision.patch_size) ** 2
  hidden = m.projector.hidden_dim or m.text.width
  if m.projector.type == "mlp":
    projector_flops = flops.dense_flops(n_image, m.vision.width, hidden) + flops.dense_flops(n_image, hidden, m.text.width)
  else:
    projector_flops = flops.dense_flops(n_image, m.vision.width, m.text.width)
  return {"vision": flops.vit_forward_flops(m.vision, config.data.image_size),
          "projector": projector_flops,
          "decoder": (flops.text_forward_flops(m.text, n_image + t - 1, m.text.depth)
                      + flops.dense_flops(t - 1, m.text.width, vocab_size))}


def predict_fns(model: PrefixLM) -> dict:
  return {"image_tokens": lambda params, images: model.apply({"params": params}, images, method="image_tokens"),
          "token_log_probs": lambda params, image_tokens, tokens, prefix_len: model.apply(
              {"params": params}, image_tokens, tokens, prefix_len, method="token_log_probs")}
