"""Llama-style causal decoder: RMSNorm, rotary positions, grouped-query attention, SwiGLU MLP.

tokens int[B, T] -> embed -> depth x [x + Attn(RMSNorm(x)); x + SwiGLU(RMSNorm(x))] -> RMSNorm -> logits.

Follows the math of HF `LlamaForCausalLM` with the default rotary embedding: rotation by halves
(`rotate_half`: the first half of each head's features pairs with the second half, not even/odd), RMSNorm
computed in float32, attention scaled by head_dim ** -0.5. Logical axis names: as in layers.py, plus
"kv_heads" for the key/value heads of grouped-query attention (fewer than "heads").
"""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from vlm_jax.models import layers


def rotary_tables(length: int, head_dim: int, theta: float) -> tuple:
  """(cos, sin), each float32[T, head_dim]: angle t * theta**(-2i/head_dim), repeated for both halves."""
  inv_freq = 1.0 / theta ** (np.arange(0, head_dim, 2, dtype=np.float64) / head_dim)
  angles = np.arange(length, dtype=np.float64)[:, None] * inv_freq[None, :]
  angles = np.concatenate([angles, angles], axis=-1)
  return np.cos(angles).astype(np.float32), np.sin(angles).astype(np.float32)


def apply_rotary(x: jnp.ndarray, cos: jnp.ndarray, sin: jnp.ndarray) -> jnp.ndarray:
  """float[B, T, H, hd] rotated by position: x * cos + rotate_half(x) * sin, rotate_half = [-x2, x1]."""
  x1, x2 = jnp.split(x, 2, axis=-1)
  rotated = jnp.concatenate([-x2, x1], axis=-1)
  return x * cos[None, :, None, :] + rotated * sin[None, :, None, :]


class RMSNorm(nn.Module):
  """x / sqrt(mean(x^2) + eps) * scale, in float32 whatever the compute dtype; scale named `embed`."""
  epsilon: float = 1e-6
  dtype: layers.Dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    scale = self.param("scale", layers.partitioned(nn.initializers.ones, ("embed",)), (x.shape[-1],))
    x32 = x.astype(jnp.float32)
    normed = x32 * jax.lax.rsqrt(jnp.mean(jnp.square(x32), axis=-1, keepdims=True) + self.epsilon)
    return scale.astype(self.dtype) * normed.astype(self.dtype)


class GroupedQueryAttention(nn.Module):
  """Causal self-attention with `num_kv_heads` key/value heads shared by groups of query heads.

  x float[B, T, D] -> float[B, T, D]. Query head h reads key/value head h // (num_heads / num_kv_heads),
  the grouping of HF's `repeat_kv`.
  """
  num_heads: int
  num_kv_heads: int
  head_dim: int
  rope_theta: float = 10_000.0
  use_bias: bool = False
  dtype: layers.Dtype = jnp.float32

  def projection(self, name, x, heads, head_names):
    """float[B, T, D] -> float[B, T, heads, head_dim]."""
    kernel = self.param(f"{name}_kernel",
                        layers.partitioned(nn.initializers.xavier_uniform(in_axis=0, out_axis=(1, 2)),
                                           ("embed", head_names, "kv")),
                        (x.shape[-1], heads, self.head_dim))
    y = jnp.einsum("btd,dhk->bthk", x, kernel.astype(self.dtype))
    if self.use_bias:
      bias = self.param(f"{name}_bias", layers.partitioned(nn.initializers.zeros, (head_names, "kv")),
                        (heads, self.head_dim))
      y = y + bias.astype(self.dtype)
    return y

  @nn.compact
  def __call__(self, x, mask):
    if self.num_heads % self.num_kv_heads:
      raise ValueError(f"num_heads {self.num_heads} is not a multiple of num_kv_heads {self.num_kv_heads}")
    b, t, width = x.shape
    x = x.astype(self.dtype)
    cos, sin = (jnp.asarray(a, self.dtype) for a in rotary_tables(t, self.head_dim, self.rope_theta))
    q = apply_rotary(self.projection("query", x, self.num_heads, "heads"), cos, sin)
    k = apply_rotary(self.projection("key", x, self.num_kv_heads, "kv_heads"), cos, sin)
    v = self.projection("value", x, self.num_kv_heads, "kv_heads")
    group = self.num_heads // self.num_kv_heads
    q = q.reshape(b, t, self.num_kv_heads, group, self.head_dim)
    logits = jnp.einsum("bqngd,bknd->bngqk", q, k) * np.float32(self.head_dim ** -0.5).astype(self.dtype)
    logits = jnp.where(mask[:, :, None], logits, jnp.finfo(logits.dtype).min)
    weights = jax.nn.softmax(logits.astype(jnp.float32), axis=-1).astype(self.dtype)
    out = jnp.einsum("bngqk,bknd->bqngd", weights, v).reshape(b, t, self.num_heads, self.head_dim)
    out_kernel = self.param("out_kernel",
                            layers.partitioned(nn.initializers.xavier_uniform(in_axis=(0, 1), out_axis=2),
                                               ("heads", "kv", "embed")),
                            (self.num_heads, self.head_dim, width))
    y = jnp.einsum("bqhd,hde->bqe", out, out_kernel.astype(self.dtype))
    if self.use_bias:
      y = y + self.param("out_bias", layers.partitioned(nn.initializers.zeros, ("embed",)),
                         (width,)).astype(self.dtype)
    return y


class SwiGLU(nn.Module):
  """float[B, T, D] -> down(silu(gate(x)) * up(x)), back to D."""
  mlp_dim: int
  use_bias: bool = False
  dtype: layers.Dtype = jnp.float32

  def dense(self, features, names, name):
    return nn.Dense(features, use_bias=self.use_bias, dtype=self.dtype, name=name,
                    kernel_init=layers.partitioned(nn.initializers.xavier_uniform(), names),
                    bias_init=layers.partitioned(nn.initializers.zeros, names[-1:]))

  @nn.compact
  def __call__(self, x):
    gate = self.dense(self.mlp_dim, ("embed", "mlp"), "gate")(x)
    up = self.dense(self.mlp_dim, ("embed", "mlp"), "up")(x)
    return self.dense(x.shape[-1], ("mlp", "embed"), "down")(nn.silu(gate) * up)


class LlamaBlock(nn.Module):
  """Pre-RMSNorm block: x + attention(norm(x)), then x + SwiGLU(norm(x))."""
  num_heads: int
  num_kv_heads: int
  head_dim: int
  mlp_dim: int
  rope_theta: float = 10_000.0
  norm_eps: float = 1e-6
  attention_bias: bool = False
  mlp_bias: bool = False
  dtype: layers.Dtype = jnp.float32

  @nn.compact
  def __call__(self, x, mask):
    x = x + GroupedQueryAttention(self.num_heads, self.num_kv_heads, self.head_dim, self.rope_theta,
                                  self.attention_bias, self.dtype, name="attention")(
        RMSNorm(self.norm_eps, self.dtype, name="norm_attention")(x), mask)
    x = x + SwiGLU(self.mlp_dim, self.mlp_bias, self.dtype, name="mlp")(
        RMSNorm(self.norm_eps, self.dtype, name="norm_mlp")(x))
    return x


class Llama(nn.Module):
  """Causal LM. `__call__(tokens int[B, T])` -> (logits float[B, T, V], out).

  out: "block_NN" the residual stream after block NN, "hidden" float[B, T, D] after the final RMSNorm.
  `num_kv_heads` < `num_heads` is grouped-query attention; `tied_embedding` reuses the token embedding
  as the output projection.
  """
  vocab_size: int
  width: int = 96
  depth: int = 2
  num_heads: int = 4
  num_kv_heads: int = 4
  head_dim: int = 0  # 0: width // num_heads
  mlp_dim: int = 256
  rope_theta: float = 10_000.0
  norm_eps: float = 1e-6
  attention_bias: bool = False
  mlp_bias: bool = False
  tied_embedding: bool = False
  dtype: layers.Dtype = jnp.float32

  @nn.compact
  def __call__(self, tokens):
    _, t = tokens.shape
    embed = nn.Embed(self.vocab_size, self.width, dtype=self.dtype, name="token_embedding",
                     embedding_init=layers.partitioned(nn.initializers.normal(0.02), ("vocab", "embed")))
    x = embed(tokens)
    mask = layers.causal_mask(t)
    head_dim = self.head_dim or self.width // self.num_heads
    out = {}
    for i in range(self.depth):
      x = LlamaBlock(self.num_heads, self.num_kv_heads, head_dim, self.mlp_dim, self.rope_theta,
                     self.norm_eps, self.attention_bias, self.mlp_bias, self.dtype, name=f"block_{i:02d}")(x, mask)
      out[f"block_{i:02d}"] = x
    x = RMSNorm(self.norm_eps, self.dtype, name="final_norm")(x)
    out["hidden"] = x
    if self.tied_embedding:
      logits = embed.attend(x)
    else:
      logits = nn.Dense(self.vocab_size, use_bias=False, dtype=self.dtype, name="logits",
                        kernel_init=layers.partitioned(nn.initializers.xavier_uniform(), ("embed", "vocab")))(x)
    return logits, out
