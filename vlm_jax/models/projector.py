"""Projector from vision-encoder width to decoder width: `linear`, or `mlp` (Linear-GELU-Linear, LLaVA-1.5)."""

import flax.linen as nn
import jax.numpy as jnp

from vlm_jax.models import layers

PROJECTOR_TYPES = ("linear", "mlp")


class Projector(nn.Module):
  """float[..., D_vision] -> float[..., out_dim]."""
  out_dim: int
  type: str = "mlp"
  hidden_dim: int = 0  # 0: use out_dim
  dtype: layers.Dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    if self.type == "linear":
      return layers.dense(self.out_dim, ("embed", "embed_out"), self.dtype, "linear")(x)
    if self.type == "mlp":
      hidden = self.hidden_dim or self.out_dim
      x = layers.dense(hidden, ("embed", "mlp"), self.dtype, "fc1")(x)
      x = nn.gelu(x, approximate=False)
      return layers.dense(self.out_dim, ("mlp", "embed_out"), self.dtype, "fc2")(x)
    raise ValueError(f"unknown projector type {self.type!r}; expected one of {PROJECTOR_TYPES}")
