"""CoCa: one ViT, a unimodal text half for the contrastive embedding, a multimodal half that captions.

image -> ViT -> tokens ─┬─ pooled -> Dense -> image embedding ──────────┐ contrastive loss
text  -> unimodal causal half + CLS appended at the end -> CLS -> Dense ─┘
caption -> unimodal half -> multimodal half (causal, cross-attends image tokens) -> next-token logits
"""

import flax.linen as nn
import jax.numpy as jnp
import numpy as np

from vlm_jax.models import layers, text, vit
from vlm_jax.models.two_tower import ContrastiveHead, l2_normalize


class MultimodalDecoder(nn.Module):
  """Causal blocks over the unimodal text states, each cross-attending image tokens; then logits."""
  vocab_size: int
  depth: int = 2
  num_heads: int = 3
  mlp_dim: int = 384
  remat: str = ""
  dtype: layers.Dtype = jnp.float32

  @nn.compact
  def __call__(self, x, image_tokens):
    x, out = layers.Transformer(self.depth, self.num_heads, self.mlp_dim, cross_attention_every=1,
                                remat=self.remat, dtype=self.dtype, name="transformer")(
                                    x, mask=layers.causal_mask(x.shape[1]), context=image_tokens)
    x = layers.layer_norm("final_norm", self.dtype)(x)
    return layers.dense(self.vocab_size, ("embed", "vocab"), self.dtype, "logits")(x), out


class CoCa(nn.Module):
  """`__call__(batch)` -> (outputs, out); batch has "image", "text" (contrastive), "caption" (to generate)."""
  vision: vit.ViT
  unimodal: text.TextTransformer
  multimodal: MultimodalDecoder
  embed_dim: int = 128
  scale_init: float = float(np.log(1 / 0.07))
  bias_init: float = 0.0
  dtype: layers.Dtype = jnp.float32

  def setup(self):
    self.image_projection = layers.dense(self.embed_dim, ("embed", "embed_out"), self.dtype, "image_projection")
    self.text_projection = layers.dense(self.embed_dim, ("embed", "embed_out"), self.dtype, "text_projection")
    self.head = ContrastiveHead(self.scale_init, self.bias_init)

  def encode_image(self, images):
    """-> (normalised float32[B, E], vision intermediates; out["encoded"] are the image tokens)."""
    pooled, out = self.vision(images)
    return l2_normalize(layers.at_least_float32(self.image_projection(pooled))), out

  def encode_text(self, tokens):
    _, out = self.unimodal(tokens)
    return l2_normalize(layers.at_least_float32(self.text_projection(out["pooled"]))), out

  def image_tokens(self, images):
    """float[B, H, W, 3] -> the tokens the multimodal half cross-attends, float[B, N, D]."""
    return self.vision(images)[1]["encoded"]

  def caption_logits(self, image_tokens, tokens):
    """Next-token logits float[B, T, V] for text `tokens` int[B, T] given precomputed image tokens."""
    _, text_out = self.unimodal(tokens)
    logits, _ = self.multimodal(text_out["hidden"], image_tokens)
    return logits

  def __call__(self, batch):
    image_embedding, image_out = self.encode_image(batch["image"])
    text_embedding, text_out = self.encode_text(batch["text"])
    logits = self.caption_logits(image_out["encoded"], batch["caption"][:, :-1])
    scale, bias = self.head()
    outputs = dict(image_embedding=image_embedding, text_embedding=text_embedding,
                   logit_scale=scale, logit_bias=bias, logits=logits)
    return outputs, {"image": image_out, "text": text_out}
