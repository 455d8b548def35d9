"""Prefix-LM VLM (LLaVA / PaliGemma): projected image tokens prepended to the text.

image -> ViT (all tokens of `vision_layer`, CLS dropped) -> projector -> prefix float[B, N, D]
[prefix ; BOS prompt] attend each other fully; the answer after them is causal; loss on the answer only.
"""

import flax.linen as nn
import jax.numpy as jnp

from vlm_jax.models import layers, projector, text, vit


class PrefixLM(nn.Module):
  """`__call__(batch)` -> (outputs, out); batch has "image", "text" int[B, T] and "prefix_len" int[B]."""
  vision: vit.ViT
  projector: projector.Projector
  decoder: text.TextTransformer
  vision_layer: int = -1  # -1: the final encoder output; -2: the penultimate block (LLaVA-1.5); ...
  dtype: layers.Dtype = jnp.float32

  def image_tokens(self, images):
    """float[B, H, W, 3] -> projected image tokens float[B, N, D_decoder]."""
    _, out = self.vision(images)
    if self.vision_layer == -1:
      tokens = out["encoded"]
    else:  # out["blocks"] float[depth, B, N, D]: -2 is the last block's output, before the final norm
      tokens = out["blocks"][self.vision.depth + self.vision_layer + 1]
    if self.vision.cls_token:
      tokens = tokens[:, 1:]
    return self.projector(tokens)

  def caption_logits(self, image_tokens, tokens, prefix_len):
    """Next-token logits float[B, T, V] for `tokens` after the image prefix."""
    logits, _ = self.decoder(tokens, prefix=image_tokens, prefix_len=prefix_len)
    return logits

  def __call__(self, batch):
    image_tokens = self.image_tokens(batch["image"])
    logits, out = self.decoder(batch["text"][:, :-1], prefix=image_tokens, prefix_len=batch["prefix_len"])
    return dict(logits=logits), {"text": out}

  def prefill(self, tokens, start, image_tokens):
    """Decoding (vlm_jax.decoding): [image tokens ; text] once, prefix (image + prompt) seen whole.
    -> (logits float[B, L, V] of the text positions, cache)."""
    return self.decoder.prefill(tokens, start, prefix=image_tokens)

  def decode_step(self, cache, token, position):
    """token int[B] at text position int[B] -> (logits float[B, V], cache)."""
    return self.decoder.decode_step(cache, token, position)
