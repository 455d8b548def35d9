"""A ViT with a linear classification head: the supervised baseline beside zero-shot classification.

image -> ViT -> pooled float[B, D] -> Dense -> class logits float32[B, C]   (softmax cross-entropy)
"""

import flax.linen as nn
import jax.numpy as jnp

from vlm_jax.models import layers, vit


class ViTClassifier(nn.Module):
  """`__call__(batch)` returns ({"class_logits": float32[B, C]}, {"image": vision intermediates})."""
  vision: vit.ViT
  num_classes: int
  dtype: layers.Dtype = jnp.float32

  @nn.compact
  def __call__(self, batch):
    pooled, out = self.vision(batch["image"])
    # Zero-initialised head (big_vision's choice): every class starts at the same logit.
    head = nn.Dense(self.num_classes, dtype=self.dtype, name="head",
                    kernel_init=layers.partitioned(nn.initializers.zeros, ("embed", "classes")),
                    bias_init=layers.partitioned(nn.initializers.zeros, ("classes",)))
    return {"class_logits": layers.at_least_float32(head(pooled))}, {"image": out}
