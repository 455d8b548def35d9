"""Two-tower contrastive model (CLIP with the softmax loss, SigLIP with the sigmoid loss).

image -> ViT -> pooled -> Dense -> L2-normalised image embedding float[B, E]
text  -> causal TextTransformer -> hidden state at EOS -> Dense -> L2-normalised text embedding float[B, E]
"""

import flax.linen as nn
import jax.numpy as jnp
import numpy as np

from vlm_jax.models import layers, text, vit


def l2_normalize(x, eps=1e-6):
  return x / jnp.sqrt(jnp.sum(jnp.square(x), axis=-1, keepdims=True) + eps)


class ContrastiveHead(nn.Module):
  """The learned temperature (log scale) and, for SigLIP, bias of the contrastive logits."""
  scale_init: float = float(np.log(1 / 0.07))
  bias_init: float = 0.0

  @nn.compact
  def __call__(self):
    scale = self.param("logit_scale", layers.partitioned(nn.initializers.constant(self.scale_init), ()), ())
    bias = self.param("logit_bias", layers.partitioned(nn.initializers.constant(self.bias_init), ()), ())
    return scale, bias


class TwoTower(nn.Module):
  """CLIP / SigLIP. `__call__(batch)` returns (outputs, out) with outputs for the contrastive loss."""
  vision: vit.ViT
  text: text.TextTransformer
  embed_dim: int = 128
  scale_init: float = float(np.log(1 / 0.07))
  bias_init: float = 0.0
  dtype: layers.Dtype = jnp.float32

  def setup(self):
    self.image_projection = layers.dense(self.embed_dim, ("embed", "embed_out"), self.dtype, "image_projection")
    self.text_projection = layers.dense(self.embed_dim, ("embed", "embed_out"), self.dtype, "text_projection")
    self.head = ContrastiveHead(self.scale_init, self.bias_init)

  def encode_image(self, images):
    """float[B, H, W, 3] -> (normalised float32[B, E], vision intermediates)."""
    pooled, out = self.vision(images)
    return l2_normalize(layers.at_least_float32(self.image_projection(pooled))), out

  def encode_text(self, tokens):
    """int[B, T] -> (normalised float32[B, E], text intermediates)."""
    _, out = self.text(tokens)
    return l2_normalize(layers.at_least_float32(self.text_projection(out["pooled"]))), out

  def __call__(self, batch):
    image_embedding, image_out = self.encode_image(batch["image"])
    text_embedding, text_out = self.encode_text(batch["text"])
    scale, bias = self.head()
    outputs = dict(image_embedding=image_embedding, text_embedding=text_embedding,
                   logit_scale=scale, logit_bias=bias)
    return outputs, {"image": image_out, "text": text_out}
