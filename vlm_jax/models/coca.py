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
  mlp: str = "gelu"
  norm_eps: float = 1e-6
  scan: bool = True

  def setup(self):
    self.transformer = layers.Stack(self.depth, self.num_heads, self.mlp_dim, cross_attention_every=1,
                                    mlp=self.mlp, norm_eps=self.norm_eps, scan=self.scan, remat=self.remat,
                                    dtype=self.dtype)
    self.final_norm = layers.layer_norm("final_norm", self.dtype, self.norm_eps)
    self.logits = layers.dense(self.vocab_size, ("embed", "vocab"), self.dtype, "logits")

  def __call__(self, x, image_tokens):
    x, out, _ = self.transformer(x, mask=layers.causal_mask(x.shape[1]), context=image_tokens)
    return self.logits(self.final_norm(x)), out

  def prefill(self, x, image_tokens):
    """Text states float[B, L, D] -> (logits float[B, L, V], cache {"layers": Stack cache}); the image
    tokens' keys/values are projected here, once."""
    x, _, cache = self.transformer(x, mask=layers.causal_mask(x.shape[1]), context=image_tokens, cache={})
    return self.logits(self.final_norm(x)), {"layers": cache}

  def decode_step(self, cache, x, position):
    """One text state float[B, D] per row at position int[B] -> (logits float[B, V], cache)."""
    length = cache["layers"]["self"]["key"].shape[-2]
    x, _, stack_cache = self.transformer(
        x[:, None], mask=text.decode_mask(length, position, jnp.zeros_like(position)), cache=cache["layers"],
        cache_index=position)
    return self.logits(self.final_norm(x))[:, 0], {"layers": stack_cache}


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
    return l2_normalize(self.image_projection(pooled).astype(jnp.float32)), out

  def encode_text(self, tokens):
    _, out = self.unimodal(tokens)
    return l2_normalize(self.text_projection(out["pooled"]).astype(jnp.float32)), out

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

  def prefill(self, tokens, start, image_tokens):
    """Decoding (vlm_jax.decoding): the text through the unimodal half, then the multimodal half, which
    cross-attends `image_tokens`. -> (logits float[B, L, V], cache)."""
    hidden, unimodal = self.unimodal.prefill(tokens, start)
    logits, multimodal = self.multimodal.prefill(hidden, image_tokens)
    return logits, {"unimodal": unimodal, "multimodal": multimodal}

  def decode_step(self, cache, token, position):
    """token int[B] at text position int[B] -> (logits float[B, V], cache)."""
    hidden, unimodal = self.unimodal.decode_step(cache["unimodal"], token, position)
    logits, multimodal = self.multimodal.decode_step(cache["multimodal"], hidden, position)
    return logits, {"unimodal": unimodal, "multimodal": multimodal}
