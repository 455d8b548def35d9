"""Transformer building blocks shared by the vision and text towers.

Every parameter carries logical axis names (`nn.with_logical_partitioning`), so how parameters are laid
out over a device mesh is decided by the rules table in the config, never here. The logical names used:

  embed   model width              mlp     MLP hidden width
  heads   attention heads          kv      per-head width
  vocab   vocabulary               patch   flattened patch (p * p * 3)
  position  sequence positions of learned position embeddings
"""

from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

Dtype = Any


def partitioned(init: Callable, names: tuple) -> Callable:
  """An initializer whose parameter carries logical axis `names`."""
  return nn.with_logical_partitioning(init, names)


def at_least_float32(x):
  """x in float32, or in its own dtype when that is wider (float64 in numerical tests)."""
  return x.astype(jnp.promote_types(x.dtype, jnp.float32))


def quick_gelu(x):
  """The sigmoid approximation of GELU used by OpenAI CLIP: x * sigmoid(1.702 x)."""
  return x * jax.nn.sigmoid(1.702 * x)


ACTIVATIONS = {"gelu": nn.gelu, "gelu_exact": lambda x: nn.gelu(x, approximate=False),
               "quick_gelu": quick_gelu, "relu": nn.relu}


def layer_norm(name: str, dtype: Dtype, epsilon: float = 1e-6) -> nn.LayerNorm:
  """LayerNorm over the model width, its scale and bias named `embed`."""
  return nn.LayerNorm(
      epsilon=epsilon, dtype=dtype, name=name,
      scale_init=partitioned(nn.initializers.ones, ("embed",)),
      bias_init=partitioned(nn.initializers.zeros, ("embed",)))


def dense(features: int, names: tuple, dtype: Dtype, name: str) -> nn.Dense:
  """Dense layer with xavier-uniform kernel named `names` and zero bias named `names[-1]`."""
  return nn.Dense(
      features, dtype=dtype, name=name,
      kernel_init=partitioned(nn.initializers.xavier_uniform(), names),
      bias_init=partitioned(nn.initializers.zeros, names[-1:]))


# ---------------------------------------------------------------------------------------------------------
# Attention masks: bool[B, 1, Tq, Tk], True where a query may attend a key.


def causal_mask(length: int) -> jnp.ndarray:
  """bool[1, 1, T, T]: position i attends positions j <= i."""
  return jnp.tril(jnp.ones((length, length), dtype=bool))[None, None]


def padding_mask(tokens: jnp.ndarray, pad_id: int = 0) -> jnp.ndarray:
  """bool[B, 1, 1, T]: every query may attend the keys that are not padding."""
  return (tokens != pad_id)[:, None, None, :]


def prefix_lm_mask(prefix_len: jnp.ndarray, length: int) -> jnp.ndarray:
  """bool[B, 1, T, T]: full attention inside the first `prefix_len[b]` positions, causal after them.

  Key j is visible from query i when j <= i (causal) or j < prefix_len (the prefix is seen whole, so the
  image and the prompt are encoded bidirectionally, as in PaliGemma).
  """
  positions = jnp.arange(length)
  causal = positions[None, :, None] >= positions[None, None, :]
  in_prefix = positions[None, None, :] < prefix_len[:, None, None]
  return (causal | in_prefix)[:, None]


# ---------------------------------------------------------------------------------------------------------


# Rematerialisation: trade recomputation in the backward pass for activation memory.
REMAT_POLICIES = {"full": None, "dots": jax.checkpoint_policies.checkpoint_dots_with_no_batch_dims}


class MlpBlock(nn.Module):
  """Dense -> activation -> Dense, back to the input width."""
  mlp_dim: int
  activation: str = "gelu"
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    width = x.shape[-1]
    h = dense(self.mlp_dim, ("embed", "mlp"), self.dtype, "fc1")(x)
    h = ACTIVATIONS[self.activation](h)
    return dense(width, ("mlp", "embed"), self.dtype, "fc2")(h)


class MultiHeadAttention(nn.Module):
  """Multi-head dot-product attention; self-attention when `context` is None, else cross-attention.

  The attention weights float[B, heads, Tq, Tk] are sown as intermediates ("attention_weights") so attention
  maps can be read with `mutable=["intermediates"]` and no hooks.
  """
  num_heads: int
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x, context=None, mask=None):
    self_attention = context is None
    context = x if context is None else context
    width = x.shape[-1]
    if width % self.num_heads:
      raise ValueError(f"width {width} is not divisible by num_heads {self.num_heads}")
    head_dim = width // self.num_heads
    dtype = self.dtype

    def params(name, in_width):
      """The `name` projection's kernel float[in, heads, head_dim] and bias float[heads, head_dim]."""
      kernel = self.param(f"{name}_kernel",
                          partitioned(nn.initializers.xavier_uniform(in_axis=0, out_axis=(1, 2)),
                                      ("embed", "heads", "kv")),
                          (in_width, self.num_heads, head_dim))
      bias = self.param(f"{name}_bias", partitioned(nn.initializers.zeros, ("heads", "kv")),
                        (self.num_heads, head_dim))
      return kernel.astype(dtype), bias.astype(dtype)

    def project(inputs, *kernels_and_biases):
      """float[B, T, D] -> one float[B, T, heads, head_dim] per (kernel, bias), from ONE matmul.

      The kernels are concatenated on the fly (the parameters stay separate): one [D, n*D] matmul is
      faster than n [D, D] ones, most of all in the backward pass, where the input gradient is one
      matmul instead of n matmuls and n-1 additions.
      """
      kernels = [k for k, _ in kernels_and_biases]
      biases = [b for _, b in kernels_and_biases]
      if len(kernels) == 1:
        return (jnp.einsum("btd,dhk->bthk", inputs.astype(dtype), kernels[0]) + biases[0],)
      fused = jnp.einsum("btd,dnhk->btnhk", inputs.astype(dtype), jnp.stack(kernels, axis=1)) + jnp.stack(biases)
      return tuple(fused[:, :, i] for i in range(len(kernels)))

    # 1/sqrt(head_dim) is folded into the query projection (a [D, D] multiply, not one per logit).
    scale = np.float32(1.0 / np.sqrt(head_dim)).astype(dtype)
    query_kernel, query_bias = params("query", width)
    query = (query_kernel * scale, query_bias * scale)
    key = params("key", context.shape[-1])
    value = params("value", context.shape[-1])
    if self_attention:
      q, k, v = project(x, query, key, value)
    else:
      (q,) = project(x, query)
      k, v = project(context, key, value)
    logits = jnp.einsum("bqhd,bkhd->bhqk", q, k)
    if mask is not None:
      logits = jnp.where(mask, logits, jnp.finfo(logits.dtype).min)
    # Softmax in float32 whatever the compute dtype: bf16 exponentials lose the small weights.
    weights = jax.nn.softmax(at_least_float32(logits), axis=-1).astype(dtype)
    self.sow("intermediates", "attention_weights", weights)
    out = jnp.einsum("bhqk,bkhd->bqhd", weights, v)
    out_kernel = self.param("out_kernel",
                            partitioned(nn.initializers.xavier_uniform(in_axis=(0, 1), out_axis=2),
                                        ("heads", "kv", "embed")),
                            (self.num_heads, head_dim, width))
    out_bias = self.param("out_bias", partitioned(nn.initializers.zeros, ("embed",)), (width,))
    return jnp.einsum("bqhd,hde->bqe", out, out_kernel.astype(dtype)) + out_bias.astype(dtype)


class TransformerBlock(nn.Module):
  """Pre-LayerNorm block: self-attention, optional cross-attention to `context`, MLP; each residual."""
  num_heads: int
  mlp_dim: int
  cross_attention: bool = False
  activation: str = "gelu"
  layer_norm_eps: float = 1e-6
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x, mask=None, context=None, context_mask=None):
    norm = lambda name: layer_norm(name, self.dtype, self.layer_norm_eps)
    x = x + MultiHeadAttention(self.num_heads, self.dtype, name="self_attention")(
        norm("norm_self_attention")(x), mask=mask)
    if self.cross_attention:
      if context is None:
        raise ValueError("a cross-attention block needs image tokens as `context`")
      x = x + MultiHeadAttention(self.num_heads, self.dtype, name="cross_attention")(
          norm("norm_cross_attention")(x), context=context, mask=context_mask)
    x = x + MlpBlock(self.mlp_dim, self.activation, self.dtype, name="mlp")(norm("norm_mlp")(x))
    return x


class Transformer(nn.Module):
  """A stack of `depth` blocks. Cross-attention in every `cross_attention_every`-th block (0: none).

  Returns (x, out) where out[f"block_{i:02d}"] is the residual stream after block i.
  """
  depth: int
  num_heads: int
  mlp_dim: int
  cross_attention_every: int = 0
  activation: str = "gelu"
  layer_norm_eps: float = 1e-6
  remat: str = ""  # "": keep activations; "full": recompute each block; "dots": keep only matmul outputs
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x, mask=None, context=None, context_mask=None):
    out = {}
    block = TransformerBlock
    if self.remat:
      if self.remat not in REMAT_POLICIES:
        raise ValueError(f"unknown remat policy {self.remat!r}; expected one of {sorted(REMAT_POLICIES)}")
      block = nn.remat(TransformerBlock, policy=REMAT_POLICIES[self.remat])
    for i in range(self.depth):
      # Counted from the top, so "every 2nd" includes the last block, the one that feeds the output.
      cross = self.cross_attention_every > 0 and (self.depth - 1 - i) % self.cross_attention_every == 0
      x = block(
          self.num_heads, self.mlp_dim, cross_attention=cross, activation=self.activation,
          layer_norm_eps=self.layer_norm_eps, dtype=self.dtype, name=f"block_{i:02d}")(
              x, mask=mask, context=context, context_mask=context_mask)
      out[f"block_{i:02d}"] = x
    return x, out
