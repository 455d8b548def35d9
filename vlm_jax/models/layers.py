"""Transformer building blocks shared by the vision and text towers.

Every parameter carries logical axis names (`nn.with_logical_partitioning`), so how parameters are laid
out over a device mesh is decided by the rules table in the config, never here. The logical names used:

  embed   model width              mlp       MLP hidden width
  heads   attention heads          kv_heads  key/value heads of grouped-query attention (fewer than heads)
  kv      per-head width           vocab     vocabulary
  patch   flattened patch (p * p * 3)
  position  sequence positions of learned position embeddings
  layers  the leading axis of scanned blocks' params (Stack with scan=True)
"""

from typing import Any, Callable

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

Dtype = Any


def at_least_float32(x):
  """x in float32, or in its own dtype when that is wider (float64 in numerical tests)."""
  return x.astype(jnp.promote_types(x.dtype, jnp.float32))


def partitioned(init: Callable, names: tuple) -> Callable:
  """An initializer whose parameter carries logical axis `names`."""
  return nn.with_logical_partitioning(init, names)


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


def matmul(x, kernel, precision=None, preferred_element_type=None):
  """x float[..., K] times kernel float[K, ...] (its first axis contracted) as ONE 2D matmul [rows, K] x [K, N]
  over the leading axes flattened, reshaped back to float[..., *kernel.shape[1:]].

  XLA:CPU ran the same contraction written over [B, T, K] (a dot_general with the batch axes left apart, as
  nn.Dense and einsum write it) ~1.2x slower forward + backward on the bench configs' MLP shapes: the weight
  gradient then contracts two axes, which it ran as a slower dot after transposing the activations. On GPU
  and TPU the reshapes are free."""
  lead, k = x.shape[:-1], x.shape[-1]
  out = jax.lax.dot_general(x.reshape(-1, k), kernel.reshape(k, -1), (((1,), (0,)), ((), ())),
                            precision=precision, preferred_element_type=preferred_element_type)
  return out.reshape(lead + kernel.shape[1:])


def _dense_dot_general(lhs, rhs, dimension_numbers, precision=None, preferred_element_type=None):
  """nn.Dense's contraction (the last axis of lhs with the first of rhs float[K, N]) as `matmul`."""
  (lhs_contracting, rhs_contracting), batch = dimension_numbers
  if tuple(lhs_contracting) != (lhs.ndim - 1,) or tuple(rhs_contracting) != (0,) or any(batch) or rhs.ndim != 2:
    return jax.lax.dot_general(lhs, rhs, dimension_numbers, precision=precision,
                               preferred_element_type=preferred_element_type)
  return matmul(lhs, rhs, precision, preferred_element_type)


def dense(features: int, names: tuple, dtype: Dtype, name: str, use_bias: bool = True) -> nn.Dense:
  """Dense layer with xavier-uniform kernel named `names` and zero bias named `names[-1]`; its matmul is
  `matmul` (one 2D matmul over the leading axes flattened)."""
  return nn.Dense(
      features, dtype=dtype, name=name, use_bias=use_bias, dot_general=_dense_dot_general,
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


@flax.struct.dataclass
class Causal:
  """The causal mask of a self-attention whose keys are its own T queries, left for the attention to make:
  causal_mask(T) on the explicit path, `is_causal=True` on the dot_product path (where cuDNN flash attention
  skips the masked half instead of reading a mask). A pytree without leaves: static through scan and remat."""


CAUSAL = Causal()


# ---------------------------------------------------------------------------------------------------------
# Norms, MLPs, rotary positions.


class RMSNorm(nn.Module):
  """x / sqrt(mean(x^2) + eps) * scale, in float32 whatever the compute dtype (as HF Llama); scale `embed`."""
  epsilon: float = 1e-6
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    scale = self.param("scale", partitioned(nn.initializers.ones, ("embed",)), (x.shape[-1],))
    x32 = at_least_float32(x)
    normed = x32 * jax.lax.rsqrt(jnp.mean(jnp.square(x32), axis=-1, keepdims=True) + self.epsilon)
    return scale.astype(self.dtype) * normed.astype(self.dtype)


NORMS = ("layernorm", "rmsnorm")


def norm(kind: str, name: str, dtype: Dtype, epsilon: float = 1e-6) -> nn.Module:
  """A LayerNorm (scale and bias) or an RMSNorm (scale only) over the model width."""
  if kind == "layernorm":
    return layer_norm(name, dtype, epsilon)
  if kind == "rmsnorm":
    return RMSNorm(epsilon, dtype, name=name)
  raise ValueError(f"unknown norm {kind!r}; expected one of {NORMS}")


MLP_TYPES = tuple(ACTIVATIONS) + ("swiglu",)


class DenseParams(nn.Module):
  """The params of `dense(features, names, ...)` (same names, shapes, initializers and so the same initial
  values), returned as (kernel float[in, features], bias float[features] or None) for a caller that
  multiplies several of them at once."""
  features: int
  names: tuple
  use_bias: bool = True

  @nn.compact
  def __call__(self, in_features: int):
    kernel = self.param("kernel", partitioned(nn.initializers.xavier_uniform(), self.names),
                        (in_features, self.features))
    bias = None
    if self.use_bias:
      bias = self.param("bias", partitioned(nn.initializers.zeros, self.names[-1:]), (self.features,))
    return kernel, bias


class MlpBlock(nn.Module):
  """Dense -> activation -> Dense (fc1, fc2), or SwiGLU down(silu(gate(x)) * up(x)); back to the input width."""
  mlp_dim: int
  activation: str = "gelu"  # one of MLP_TYPES
  use_bias: bool = True
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    width = x.shape[-1]
    linear = lambda features, names, name: dense(features, names, self.dtype, name, self.use_bias)
    if self.activation == "swiglu":
      # gate and up as ONE matmul over their kernels stacked on the fly (the parameters stay separate, as
      # HF names them; stacked on a new axis, so an "mlp"-sharded kernel stays local): one [D, 2F] matmul
      # is faster than two [D, F] ones, and in decoding XLA hoists the stacking out of the token loop.
      names = ("embed", "mlp")
      gate, up = (DenseParams(self.mlp_dim, names, self.use_bias, name=name)(width) for name in ("gate", "up"))
      kernel = jnp.stack([gate[0], up[0]], axis=1).astype(self.dtype)  # [D, 2, F]
      h = matmul(x.astype(self.dtype), kernel)
      if self.use_bias:
        h = h + jnp.stack([gate[1], up[1]]).astype(self.dtype)
      h = nn.silu(h[..., 0, :]) * h[..., 1, :]
      return linear(width, ("mlp", "embed"), "down")(h)
    if self.activation not in ACTIVATIONS:
      raise ValueError(f"unknown mlp {self.activation!r}; expected one of {MLP_TYPES}")
    h = ACTIVATIONS[self.activation](linear(self.mlp_dim, ("embed", "mlp"), "fc1")(x))
    return linear(width, ("mlp", "embed"), "fc2")(h)


def apply_rotary(x: jnp.ndarray, positions: jnp.ndarray, theta: float) -> jnp.ndarray:
  """x float[B, T, ..., hd] rotated by positions int[B|1, T]: HF Llama's default rotary embedding.

  Angle t * theta**(-2i/hd) for i < hd/2, shared by feature i and feature i + hd/2 (`rotate_half`: the
  first half of a head pairs with the second half, not even with odd features); float32 angles, as HF.
  """
  head_dim = x.shape[-1]
  inv_freq = (1.0 / theta ** (np.arange(0, head_dim, 2, dtype=np.float64) / head_dim)).astype(np.float32)
  angles = positions.astype(jnp.float32)[..., None] * inv_freq  # [B, T, hd/2]
  angles = jnp.concatenate([angles, angles], axis=-1)
  shape = angles.shape[:2] + (1,) * (x.ndim - 3) + (head_dim,)
  cos, sin = (f(angles).reshape(shape).astype(x.dtype) for f in (jnp.cos, jnp.sin))
  x1, x2 = jnp.split(x, 2, axis=-1)
  return x * cos + jnp.concatenate([-x2, x1], axis=-1) * sin


# ---------------------------------------------------------------------------------------------------------
# Attention.


def _write(cache: jnp.ndarray, new: jnp.ndarray, index: jnp.ndarray) -> jnp.ndarray:
  """cache float[B, H, S, hd] with new float[B, H, T, hd] written at positions index[b] ... index[b] + T - 1."""
  if new.shape[2] == 1:  # one decoding step: a scatter of one position per row
    return cache.at[jnp.arange(cache.shape[0]), :, index].set(new[:, :, 0])
  return jax.vmap(lambda c, n, i: jax.lax.dynamic_update_slice(c, n, (0, i, 0)))(cache, new, index)


# How attention weights are computed (config.model.attention): "explicit" the einsums of Attention, "dot_product"
# jax.nn.dot_product_attention (cuDNN flash attention on a GPU where it fits, else its XLA path), "auto" dot_product
# on a GPU or TPU and explicit on CPU, where dot_product's XLA path measured no faster on the bench configs' train
# step (the same einsums, vmapped over the query groups) and the explicit path is what CPU runs were tuned on.
ATTENTION = ("auto", "explicit", "dot_product")


def attention_path(kind: str) -> str:
  """"explicit" or "dot_product": what attention `kind` (one of ATTENTION) runs on the default backend."""
  if kind not in ATTENTION:
    raise ValueError(f"unknown attention {kind!r}; expected one of {ATTENTION}")
  if kind == "auto":
    return "explicit" if jax.default_backend() == "cpu" else "dot_product"
  return kind


def _fits_cudnn(query, mask) -> bool:
  """Whether cuDNN flash attention takes query float[B, T, N, hd] with `mask` (jax 0.10.2 raises, rather than
  falls back, on what it refuses): a GPU, bf16 or fp16, hd a multiple of 8 and <= 128 (what every GPU generation
  takes; Hopper also takes 256), and no mask array.

  Masks (openxla/xla#11444): cuDNN's mask input multiplied the logits instead of setting them to -inf, so XLA
  dropped it; a mask now reaches cuDNN only as an additive bias (jax makes a bool mask -2**41 where False), and
  that bias must have the full [T, S] (a [B, 1, 1, S] padding mask is refused, jax#28974), is read by every
  head, and gets a gradient computed (dbias, refused for batch > 1 by later jax, jax#30593). So a mask array
  (padding, prefix-LM, cross-attention padding) takes the XLA implementation, the causal mask goes to cuDNN
  as `is_causal` (its own mask type, which skips the upper triangle), and no mask (the ViT) needs nothing.
  """
  _, _, _, head_dim = query.shape
  return (jax.default_backend() == "gpu" and query.dtype in (jnp.bfloat16, jnp.float16) and mask is None
          and head_dim % 8 == 0 and head_dim <= 128)


def _dot_product_attention(query, key, value, mask):
  """jax.nn.dot_product_attention of query float[B, T, N, hd] (the 1/sqrt(hd) already in it) over key, value
  float[B, S, K, hd] (K = N: multi-head; K < N: query head n reads key/value head n // (N / K), as Attention),
  mask None, CAUSAL or bool[B|1, 1, T, S] -> float[B, T, N, hd].

  A fully masked row (cross-attention to a context that is all padding) gets uniform weights over its keys on
  both paths: the explicit one sets every logit to finfo.min, jax's XLA one to -0.7 * finfo.max."""
  is_causal = isinstance(mask, Causal)
  mask = None if is_causal else mask
  implementation = "cudnn" if _fits_cudnn(query, mask) else "xla"
  return jax.nn.dot_product_attention(query, key, value, mask=mask, scale=1.0, is_causal=is_causal,
                                      implementation=implementation)


def _softmax_weights(queries, keys, mask):
  """softmax(queries keys^T) over the keys, masked: queries float[R, M, hd], keys float[R, S, hd], mask None or
  bool[R, M, S] -> float32 (or wider) [R, M, S]. A fully masked row (every logit finfo.min) gets uniform weights."""
  logits = jnp.matmul(queries, keys.swapaxes(1, 2))
  if mask is not None:
    logits = jnp.where(mask, logits, jnp.finfo(logits.dtype).min)
  # Softmax in float32 whatever the compute dtype: bf16 exponentials lose the small weights.
  return jax.nn.softmax(at_least_float32(logits), axis=-1)


@jax.custom_vjp
def _attention_core(queries, keys, values, mask):
  """softmax(queries keys^T, masked) values: queries float[R, M, hd], keys, values float[R, S, hd], mask None or
  bool[R, M, S] -> float[R, M, hd], with the flash-attention backward written out (custom_vjp).

  The softmax's backward needs, per query, sum_s P_s dP_s; with O = P V that equals sum_d dO_d O_d, a reduction
  over hd instead of over the S keys, and the logits' gradient is then one pass P * (dP - D) over [M, S].
  Measured on CPU, one core (benchmarks/kernels.py, bench_ti16's [96, 196, 64]): forward + backward 67.7 -> 45.8 ms
  per call (torch's fused kernel: 53.7 ms); the whole bench_ti16 step 0-5% faster (within that machine's noise).
  Equal to autodiff of the same forward within float32 rounding (tests/test_attention.py)."""
  return _attention_core_forward(queries, keys, values, mask)[0]


def _attention_core_forward(queries, keys, values, mask):
  weights = _softmax_weights(queries, keys, mask).astype(queries.dtype)
  out = jnp.matmul(weights, values)
  return out, (queries, keys, values, mask, weights, out)


def _attention_core_backward(residuals, d_out):
  queries, keys, values, mask, weights, out = residuals
  d_values = jnp.matmul(weights.swapaxes(1, 2), d_out)
  d_weights = jnp.matmul(d_out, values.swapaxes(1, 2))
  row_dot = jnp.sum(at_least_float32(d_out) * at_least_float32(out), axis=-1, keepdims=True)  # = sum_s P dP
  d_logits = at_least_float32(weights) * (at_least_float32(d_weights) - row_dot)
  if mask is not None:  # the masked logits are constants (where): no gradient, also in a fully masked row
    d_logits = jnp.where(mask, d_logits, 0)
  d_logits = d_logits.astype(queries.dtype)
  # The mask (bool) gets no cotangent: None stands for zeros.
  return jnp.matmul(d_logits, keys), jnp.matmul(d_logits.swapaxes(1, 2), queries), d_values, None


_attention_core.defvjp(_attention_core_forward, _attention_core_backward)


def _attend_flat(q, k, v, mask, weights_wanted: bool = True):
  """The explicit attention weights and their weighted values as two plain batched matmuls over B * kv_heads:
  q float[B, T, K, G, hd] (scaled), k, v float[B, K, S, hd], mask None or bool[B|1, 1, T, S] -> (out
  float[B, T, K, G, hd], weights float[B, K * G, T, S] (head h = k * G + g), or None unless weights_wanted).

  Each (row, key/value head) is one [G * T, hd] x [hd, S] matmul: the G query heads of a group are stacked
  along the rows, so grouped-query attention needs no repeated keys. Measured on CPU (one core, the bench
  configs' shapes): the attention sublayer's forward + backward ~1.3-1.7x faster than einsums with the
  batch axes (b, k, g) left apart, which XLA:CPU transposed around every dot. With more keys than hd the core is
  _attention_core (its backward written out); the weights, when wanted (attention maps), are the same forward's,
  computed beside it.
  """
  b, t, kv_heads, group, head_dim = q.shape
  s = k.shape[2]
  rows = b * kv_heads
  queries = q.transpose(0, 2, 3, 1, 4).reshape(rows, group * t, head_dim)
  keys, values = k.reshape(rows, s, head_dim), v.reshape(rows, s, head_dim)
  if mask is not None:
    mask = jnp.broadcast_to(mask[:, :, None], (b, kv_heads, group, t, s)).reshape(rows, group * t, s)
  weights = None
  if s > head_dim:  # the written-out backward's saving: a reduction over hd instead of over the S keys
    out = _attention_core(queries, keys, values, mask)
    if weights_wanted:  # the core keeps its weights inside: computed again, only when attention maps are asked for
      weights = _softmax_weights(queries, keys, mask).astype(q.dtype)
  else:  # no faster at S <= hd (bench_small's [256, 64, 64]: 15.6 vs 15.4 ms per call): autodiff
    weights = _softmax_weights(queries, keys, mask).astype(q.dtype)
    out = jnp.matmul(weights, values)
  out = out.reshape(b, kv_heads, group, t, head_dim).transpose(0, 3, 1, 2, 4)
  if weights_wanted:
    return out, weights.reshape(b, kv_heads * group, t, s)
  return out, None


class Attention(nn.Module):
  """Dot-product attention: self-attention, or with `cross` cross-attention to `context`.

  Multi-head, or grouped-query with `num_kv_heads` < `num_heads` (query head h reads key/value head
  h // (num_heads / num_kv_heads), HF's `repeat_kv` grouping); rotary positions on queries and keys when
  `rope_theta` > 0 (self-attention only). The attention weights float[B, heads, Tq, Tk] are sown as
  intermediates ("attention_weights") so attention maps can be read with `mutable=["intermediates"]`.

  `attention` (one of ATTENTION) picks how the weights are computed; the explicit einsums run whatever it says
  where the weights are asked for (the "intermediates" collection mutable) and in one-step decoding against a
  cache (there jax.nn.dot_product_attention wants the keys [B, S, kv_heads, hd]: a transpose of the whole cache
  at every token, what the heads-first cache layout avoids).

  The key/value cache is an argument and a result, so prefill and one-step decoding run this same module:
    cache=None   training: nothing kept, returns (y, None).
    cache={}     prefill: returns the keys/values computed here as the cache, {"key", "value"}.
    cache={"key", "value"} float[B, kv_heads, S, head_dim]: self-attention writes this call's keys/values
                 at positions cache_index int[B] (+ t) and attends the whole cache (masked by `mask`);
                 cross-attention (context None) reuses the cached keys/values of the context.
  The cache is heads-first: the attention matmuls read it as it lies (a [B, S, heads, head_dim] cache cost
  a transpose of every layer's keys and values at every step, ~40% of a decoding step on CPU).
  """
  num_heads: int
  num_kv_heads: int = 0  # 0: num_heads
  head_dim: int = 0  # 0: width // num_heads
  rope_theta: float = 0.0  # > 0: rotary positions
  use_bias: bool = True
  cross: bool = False
  dtype: Dtype = jnp.float32
  attention: str = "auto"  # one of ATTENTION

  @nn.compact
  def __call__(self, x, *, context=None, mask=None, positions=None, cache=None, cache_index=None):
    """x float[B, T, D]; context float[B, N, Dc]; mask bool[B|1, 1, T, S], or CAUSAL (self-attention over this
    call's own keys only); positions int[B|1, T]. Returns (float[B, T, D], the new cache or None)."""
    self_attention = not self.cross
    if self.cross and context is None and not cache:
      raise ValueError("cross-attention needs `context` (or, when decoding, the cache made from it)")
    width, dtype = x.shape[-1], self.dtype
    kv_heads = self.num_kv_heads or self.num_heads
    if self.num_heads % kv_heads:
      raise ValueError(f"num_heads {self.num_heads} is not a multiple of num_kv_heads {kv_heads}")
    if not self.head_dim and width % self.num_heads:
      raise ValueError(f"width {width} is not divisible by num_heads {self.num_heads}")
    head_dim = self.head_dim or width // self.num_heads
    group = self.num_heads // kv_heads
    kv_names = "heads" if kv_heads == self.num_heads else "kv_heads"
    # Keys and values project the context (cross-attention) or x (self-attention).
    in_width = width if context is None else context.shape[-1]

    def params(name, in_width, heads, heads_name):
      """The `name` projection's kernel float[in, heads, head_dim] and bias float[heads, head_dim] (or 0)."""
      kernel = self.param(f"{name}_kernel",
                          partitioned(nn.initializers.xavier_uniform(in_axis=0, out_axis=(1, 2)),
                                      ("embed", heads_name, "kv")), (in_width, heads, head_dim))
      bias = jnp.zeros((heads, head_dim), dtype)
      if self.use_bias:
        bias = self.param(f"{name}_bias", partitioned(nn.initializers.zeros, (heads_name, "kv")), (heads, head_dim))
      return kernel.astype(dtype), bias.astype(dtype)

    # 1/sqrt(head_dim) is folded into the query projection (a [D, D] multiply, not one per logit).
    scale = np.float32(1.0 / np.sqrt(head_dim)).astype(dtype)
    query_kernel, query_bias = params("query", width, self.num_heads, "heads")
    query = (query_kernel.reshape(width, kv_heads, group, head_dim) * scale,
             query_bias.reshape(kv_heads, group, head_dim) * scale)

    def key_value():
      """The key and value (kernel float[in, kv_heads, 1, hd], bias float[kv_heads, 1, hd]) pairs."""
      return [tuple(a[:, :, None] if a.ndim == 3 else a[:, None] for a in params(name, in_width, kv_heads, kv_names))
              for name in ("key", "value")]

    def project(inputs, *kernels_and_biases):
      """float[B, T, D] -> float[B, T, kv_heads, n, head_dim] from ONE matmul over the kernels concatenated
      on the fly (the parameters stay separate): one [D, n*D] matmul is faster than n [D, D] ones, most of
      all in the backward pass (one input-gradient matmul instead of n matmuls and n-1 additions)."""
      kernel = jnp.concatenate([k for k, _ in kernels_and_biases], axis=2)
      bias = jnp.concatenate([b for _, b in kernels_and_biases], axis=1)
      return matmul(inputs.astype(dtype), kernel) + bias

    if self_attention:
      fused = project(x, query, *key_value())
      q, k, v = fused[..., :group, :], fused[..., group, :], fused[..., group + 1, :]
      if self.rope_theta:
        if positions is None:
          positions = jnp.arange(x.shape[1])[None]
        q, k = apply_rotary(q, positions, self.rope_theta), apply_rotary(k, positions, self.rope_theta)
    else:
      q = project(x, query)
    heads_first = cache is not None
    # The keys are this call's own (training, prefill), not read from or written into a cache.
    fresh = not cache
    if isinstance(mask, Causal) and not (fresh and self_attention):
      raise ValueError("CAUSAL masks a self-attention over its own keys; with a cache pass the mask array")
    if self_attention or context is not None:
      if not self_attention:
        kv = project(context, *key_value())
        k, v = kv[..., 0, :], kv[..., 1, :]
      sequence_major = k, v  # float[B, S, kv_heads, hd], what jax.nn.dot_product_attention reads
      if heads_first:  # [B, S, kv_heads, hd] -> the cache layout; in decoding only the new tokens move
        k, v = k.transpose(0, 2, 1, 3), v.transpose(0, 2, 1, 3)
        if self_attention and cache:
          k, v = _write(cache["key"], k, cache_index), _write(cache["value"], v, cache_index)
    else:  # cross-attention during decoding: the context's keys/values were cached at prefill
      k, v = cache["key"], cache["value"]
    new_cache = {"key": k, "value": v} if heads_first else None

    b, t = x.shape[0], x.shape[1]
    if (fresh and attention_path(self.attention) == "dot_product"
        and not self.is_mutable_collection("intermediates")):
      out = _dot_product_attention(q.reshape(b, t, self.num_heads, head_dim), *sequence_major, mask)
      return self._output(out, width), new_cache
    if isinstance(mask, Causal):
      mask = causal_mask(t)
    if not (heads_first and t == 1):
      if not heads_first:
        k, v = k.transpose(0, 2, 1, 3), v.transpose(0, 2, 1, 3)
      wanted = self.is_mutable_collection("intermediates")
      out, weights = _attend_flat(q, k, v, mask, weights_wanted=wanted)
      if wanted:
        self.sow("intermediates", "attention_weights", weights)
      return self._output(out.reshape(b, t, self.num_heads, head_dim), width), new_cache
    # Decoding one token against the cache.
    logits = jnp.einsum("bkgh,bksh->bkgs", q[:, 0], k)[:, :, :, None]
    if mask is not None:
      logits = jnp.where(mask[:, :, None], logits, jnp.finfo(logits.dtype).min)
    weights = jax.nn.softmax(at_least_float32(logits), axis=-1).astype(dtype)
    s = weights.shape[-1]
    self.sow("intermediates", "attention_weights", weights.reshape(b, self.num_heads, t, s))
    # A weighted sum over the cached positions (one fused loop reading the cache as it lies) instead of a
    # batched [S] x [S, hd] matmul per row and head: on CPU ~6x faster at batch 8, and the result comes out
    # heads-major, so the output projection reads its kernel as it lies (the matmul's [B, kv, hd, group]
    # result made XLA transpose that kernel at every step).
    out = jnp.sum(weights[:, :, :, 0, :, None] * v[:, :, None], axis=3).reshape(b, t, self.num_heads, head_dim)
    return self._output(out, width), new_cache

  def _output(self, out, width: int):
    """The output projection: float[B, T, heads, head_dim] -> float[B, T, width]."""
    b, t, heads, head_dim = out.shape
    out_kernel = self.param("out_kernel",
                            partitioned(nn.initializers.xavier_uniform(in_axis=(0, 1), out_axis=2),
                                        ("heads", "kv", "embed")), (heads, head_dim, width))
    # One contraction over heads * head_dim, flattened here: given the two axes, XLA:CPU flattened them in
    # the other order and transposed the kernel and the activations at every call.
    y = matmul(out.reshape(b, t, -1), out_kernel.astype(self.dtype).reshape(-1, width))
    if self.use_bias:
      y = y + self.param("out_bias", partitioned(nn.initializers.zeros, ("embed",)), (width,)).astype(self.dtype)
    return y


# ---------------------------------------------------------------------------------------------------------
# Blocks and the stack.


# Rematerialisation: trade recomputation in the backward pass for activation memory.
REMAT_POLICIES = {"full": None, "dots": jax.checkpoint_policies.checkpoint_dots_with_no_batch_dims}


def cache_length(cache) -> int:
  """S, the number of positions a Stack cache (either layout) holds for self-attention."""
  for path, leaf in jax.tree_util.tree_leaves_with_path(cache):
    if any(isinstance(k, jax.tree_util.DictKey) and k.key == "self" for k in path):
      return leaf.shape[-2]
  raise ValueError("the cache holds no self-attention keys")


class Block(nn.Module):
  """Pre-norm block: self-attention, optional (gated) cross-attention to `context`, MLP; each residual.

  `cross_attention_gate`: the cross-attention output is scaled by tanh(g), g a learned scalar initialised
  at 0 (Flamingo, Llama-3.2-Vision), so cross-attention added to a pretrained LM leaves it unchanged at
  step 0. Returns (x, cache): cache None in training, else {"self": ..., "cross": ...} (see Attention).
  """
  num_heads: int
  mlp_dim: int
  cross_attention: bool = False
  cross_attention_gate: bool = False
  num_kv_heads: int = 0
  head_dim: int = 0
  norm: str = "layernorm"  # one of NORMS
  mlp: str = "gelu"  # one of MLP_TYPES
  norm_eps: float = 1e-6
  rope_theta: float = 0.0
  attention_bias: bool = True
  mlp_bias: bool = True
  dtype: Dtype = jnp.float32
  attention: str = "auto"  # one of ATTENTION

  @nn.compact
  def __call__(self, x, mask=None, context=None, context_mask=None, positions=None, cache=None, cache_index=None):
    normed = lambda name: norm(self.norm, name, self.dtype, self.norm_eps)
    attention = lambda name, cross, rope: Attention(
        self.num_heads, self.num_kv_heads, self.head_dim, rope, self.attention_bias, cross, self.dtype,
        self.attention, name=name)
    decoding = cache is not None
    h, self_cache = attention("self_attention", False, self.rope_theta)(
        normed("norm_self_attention")(x), mask=mask, positions=positions,
        cache=cache.get("self", {}) if decoding else None, cache_index=cache_index)
    x = x + h
    new_cache = {"self": self_cache} if decoding else None
    if self.cross_attention:
      h, cross_cache = attention("cross_attention", True, 0.0)(
          normed("norm_cross_attention")(x), context=context, mask=context_mask,
          cache=cache.get("cross", {}) if decoding else None)
      if self.cross_attention_gate:
        gate = self.param("cross_attention_gate", partitioned(nn.initializers.zeros, ()), ())
        h = h * jnp.tanh(gate).astype(self.dtype)
      x = x + h
      if decoding:
        new_cache["cross"] = cross_cache
    x = x + MlpBlock(self.mlp_dim, self.mlp, self.mlp_bias, self.dtype, name="mlp")(normed("norm_mlp")(x))
    return x, new_cache


class _ScannedBlock(Block):
  """A Block in nn.scan's form: (carry, per-layer outputs) = (x, (x, cache))."""

  def __call__(self, x, *args):
    x, cache = super().__call__(x, *args)
    return x, (x, cache)


class _BlockGroup(nn.Module):
  """`size` blocks in a row, only the last cross-attending: the unit scanned when cross-attention comes
  every size-th block. Returns (x, (float[size, B, T, D] after each block, caches stacked over the group))."""
  size: int
  block: dict  # Block fields (cross_attention excluded)
  remat: str = ""

  @nn.compact
  def __call__(self, x, mask, context, context_mask, positions, cache, cache_index):
    outputs, self_caches, cross_cache = [], [], None
    for j in range(self.size):
      cross = j == self.size - 1
      block_cache = None
      if cache is not None:
        block_cache = {"self": jax.tree.map(lambda a: a[j], cache["self"]) if cache.get("self") else {},
                       "cross": cache.get("cross", {}) if cross else {}}
      x, new = _remat(Block, self.remat, in_scan=True)(cross_attention=cross, **self.block, name=f"block_{j:02d}")(
          x, mask, context, context_mask, positions, block_cache, cache_index)
      outputs.append(x)
      if new is not None:
        self_caches.append(new["self"])
        cross_cache = new.get("cross", cross_cache)
    caches = None
    if cache is not None:
      caches = {"self": jax.tree.map(lambda *a: jnp.stack(a), *self_caches), "cross": cross_cache}
    return x, (jnp.stack(outputs), caches)


def _remat(cls, policy: str, in_scan: bool = False):
  """cls rematerialised with `policy` ("" : as it is). Inside a scan CSE cannot undo the recomputation,
  so the barriers that prevent it are left out (what jax.checkpoint's docs advise)."""
  if not policy:
    return cls
  if policy not in REMAT_POLICIES:
    raise ValueError(f"unknown remat policy {policy!r}; expected one of {sorted(REMAT_POLICIES)}")
  return nn.remat(cls, policy=REMAT_POLICIES[policy], prevent_cse=not in_scan)


def _stack(trees):
  return jax.tree.map(lambda *a: jnp.stack(a), *trees)


class Stack(nn.Module):
  """`depth` Blocks; cross-attention in every `cross_attention_every`-th block (0: none), counted from the
  top, so "every 2nd" includes the last block, the one that feeds the output.

  scan=True runs the blocks as one nn.scan (compile time flat in depth), params stacked on a leading
  "layers" axis. Scanning needs identical steps, so with cross-attention every k-th block (k > 1) the
  unit is a group of k blocks (k - 1 plain, then one cross-attending), params under "groups/block_JJ"
  float[depth // k, ...]; the depth % k blocks left over at the bottom (the last of them cross-attends)
  run before it unscanned, as "block_II". With k <= 1 the unit is one block, params under "blocks".
  scan=False: a Python loop, params under "block_II" (the layout of checkpoints written before scan).

  The params' layout decides how the blocks run: a scan=True Stack given params in the loop layout
  (`to_loop_layout`) runs them as the loop. Decoding on CPU does that (vlm_jax.decoding): a scanned step
  copies every layer's weights out of the stacked arrays at every token (XLA:CPU does not fuse that
  dynamic slice into the matmul), a loop reads them where they lie.

  Returns (x, out, cache): out["blocks"] float[depth, B, T, D] is the residual stream after each block,
  out["block_II"] the same one by one. cache (decoding; see Attention), in the layout of the params:
  scanned {"self": {"key", "value"} float[depth, B, kv_heads, S, hd], "cross": the same over the
  cross-attending blocks, [n_cross, B, ...]}; loop {"block_II": {"self": {"key", "value"} float[B, kv_heads,
  S, hd], "cross": ... (cross-attending blocks)}}, one entry per block, so a step updates each block's
  arrays in place instead of slicing and restacking the whole cache. Pass {} to prefill (the cache is
  what the call computes), None to train (None comes back).
  """
  depth: int
  num_heads: int
  mlp_dim: int
  cross_attention_every: int = 0
  cross_attention_gate: bool = False
  num_kv_heads: int = 0
  head_dim: int = 0
  norm: str = "layernorm"
  mlp: str = "gelu"
  norm_eps: float = 1e-6
  rope_theta: float = 0.0
  attention_bias: bool = True
  mlp_bias: bool = True
  scan: bool = True
  remat: str = ""  # "": keep activations; "full": recompute each block; "dots": keep only matmul outputs
  dtype: Dtype = jnp.float32
  attention: str = "auto"  # one of ATTENTION

  def block_fields(self) -> dict:
    return dict(num_heads=self.num_heads, mlp_dim=self.mlp_dim, cross_attention_gate=self.cross_attention_gate,
                num_kv_heads=self.num_kv_heads, head_dim=self.head_dim, norm=self.norm, mlp=self.mlp,
                norm_eps=self.norm_eps, rope_theta=self.rope_theta, attention_bias=self.attention_bias,
                mlp_bias=self.mlp_bias, dtype=self.dtype, attention=self.attention)

  def is_cross(self, i: int) -> bool:
    every = self.cross_attention_every
    return every > 0 and (self.depth - 1 - i) % every == 0

  @nn.compact
  def __call__(self, x, mask=None, context=None, context_mask=None, positions=None, cache=None, cache_index=None):
    if self.cross_attention_every and context is None and not cache:
      raise ValueError("a cross-attention block needs image tokens as `context`")
    args = (mask, context, context_mask, positions)
    if self.scan and not self._params_in_loop_layout():
      x, outputs, new_cache = self._scanned(x, args, cache, cache_index)
    else:
      x, outputs, new_cache = self._loop(x, args, cache, cache_index)
    out = {"blocks": outputs, **{f"block_{i:02d}": outputs[i] for i in range(self.depth)}}
    return x, out, new_cache

  def _params_in_loop_layout(self) -> bool:
    """Whether this Stack's params hold the blocks one by one ("block_II") rather than scanned."""
    if self.is_initializing():
      return False
    params = self.variables.get("params", {})
    return bool(params) and "blocks" not in params and "groups" not in params

  def _block_cache(self, cache, i: int, cross_index: int):
    """Block i's part of a stack cache ({} at prefill, None in training): its own entry in the loop layout,
    its slice of the stacked arrays in the scanned one."""
    if cache is None:
      return None
    if not cache:
      return {}
    if f"block_{i:02d}" in cache:
      return cache[f"block_{i:02d}"]
    block = {"self": jax.tree.map(lambda a: a[i], cache["self"])}
    if self.is_cross(i):
      block["cross"] = jax.tree.map(lambda a: a[cross_index], cache["cross"])
    return block

  @staticmethod
  def _join(block_caches):
    """Per-block caches (in depth order) -> the stack cache, or None in training."""
    if not block_caches or block_caches[0] is None:
      return None
    joined = {"self": _stack([c["self"] for c in block_caches])}
    cross = [c["cross"] for c in block_caches if "cross" in c]
    if cross:
      joined["cross"] = _stack(cross)
    return joined

  def _loop(self, x, args, cache, cache_index):
    outputs, caches, crosses = [], [], 0
    for i in range(self.depth):
      x, new = _remat(Block, self.remat)(cross_attention=self.is_cross(i), **self.block_fields(),
                                         name=f"block_{i:02d}")(
          x, *args, self._block_cache(cache, i, crosses), cache_index)
      crosses += self.is_cross(i)
      outputs.append(x)
      caches.append(new)
    new_cache = None if cache is None else {f"block_{i:02d}": c for i, c in enumerate(caches)}
    return x, jnp.stack(outputs), new_cache

  def _scanned(self, x, args, cache, cache_index):
    every = self.cross_attention_every
    size = every if every > 1 else 1
    lead, steps = self.depth % size, self.depth // size
    outputs, caches = [], []
    for i in range(lead):  # the leftover blocks at the bottom, the last of them cross-attending
      x, new = _remat(Block, self.remat)(cross_attention=self.is_cross(i), **self.block_fields(),
                                         name=f"block_{i:02d}")(x, *args, self._block_cache(cache, i, 0), cache_index)
      outputs.append(x[None])
      caches.append(new)
    lead_cross = sum(self.is_cross(i) for i in range(lead))

    scanned_cache = None  # per step: {"self": [size, ...] or [...], "cross": [...]}
    if cache is not None:
      scanned_cache = {}
      if cache:
        self_cache = jax.tree.map(lambda a: a[lead:], cache["self"])
        if size > 1:
          self_cache = jax.tree.map(lambda a: a.reshape((steps, size) + a.shape[1:]), self_cache)
        scanned_cache = {"self": self_cache}
        if every:
          scanned_cache["cross"] = jax.tree.map(lambda a: a[lead_cross:], cache["cross"])
    if size > 1:
      unit = _BlockGroup
      fields = dict(size=size, block=self.block_fields(), remat=self.remat)
      name = "groups"
    else:
      unit = _remat(_ScannedBlock, self.remat, in_scan=True)
      fields = dict(cross_attention=every == 1, **self.block_fields())
      name = "blocks"
    broadcast = nn.broadcast
    scan = nn.scan(unit, variable_axes={"params": 0, "intermediates": 0}, split_rngs={"params": True},
                   in_axes=(broadcast, broadcast, broadcast, broadcast, 0, broadcast), length=steps,
                   metadata_params={nn.PARTITION_NAME: "layers"})
    x, (stacked, step_caches) = scan(**fields, name=name)(x, *args, scanned_cache, cache_index)
    if size > 1:
      stacked = stacked.reshape((steps * size,) + stacked.shape[2:])
    outputs.append(stacked)

    new_cache = None
    if cache is not None:
      lead_cache = self._join(caches) if caches else None
      self_steps = step_caches["self"]
      if size > 1:
        self_steps = jax.tree.map(lambda a: a.reshape((steps * size,) + a.shape[2:]), self_steps)
      parts = [lead_cache["self"]] if lead_cache else []
      new_cache = {"self": jax.tree.map(lambda *a: jnp.concatenate(a), *parts, self_steps)}
      if every:
        cross_parts = [lead_cache["cross"]] if lead_cache and "cross" in lead_cache else []
        new_cache["cross"] = jax.tree.map(lambda *a: jnp.concatenate(a), *cross_parts, step_caches["cross"])
    return x, jnp.concatenate(outputs) if len(outputs) > 1 else outputs[0], new_cache


# ---------------------------------------------------------------------------------------------------------
# Old checkpoints: loop layout -> scanned layout.


def in_loop_layout(source, target) -> bool:
  """Whether `source` (nested dicts) holds blocks as "block_II" where `target` holds them scanned."""
  if not isinstance(target, dict) or not isinstance(source, dict):
    return False
  if ("blocks" in target or "groups" in target) and "block_00" in source and "blocks" not in source:
    return True
  return any(in_loop_layout(source[key], target[key]) for key in source if key in target)


def to_loop_layout(params):
  """`params` (nested dicts: a model's params or any tree holding them) with every scanned stack ("blocks"
  float[steps, ...] or "groups/block_JJ", see Stack) split into its blocks "block_II", as scan=False lays
  them out; the inverse of to_scanned_layout. A scan=True model runs these params as a loop."""
  if not isinstance(params, dict):
    return params
  if "blocks" not in params and "groups" not in params:
    return {key: to_loop_layout(value) for key, value in params.items()}
  out = {key: value for key, value in params.items() if key not in ("blocks", "groups")}
  lead = sum(key.startswith("block_") for key in out)  # the unscanned blocks below the scan
  index = lambda tree, i: jax.tree.map(lambda a: a[i], tree)
  if "blocks" in params:
    steps = jax.tree.leaves(params["blocks"])[0].shape[0]
    out.update({f"block_{lead + i:02d}": index(params["blocks"], i) for i in range(steps)})
  else:
    groups = params["groups"]
    size, steps = len(groups), jax.tree.leaves(groups)[0].shape[0]
    out.update({f"block_{lead + g * size + j:02d}": index(groups[f"block_{j:02d}"], g)
                for g in range(steps) for j in range(size)})
  return out


def to_scanned_layout(source, target):
  """`source` (nested dicts, block params under "block_II", as scan=False writes them) rearranged into the
  layout of `target` (a scanned model's params or any tree holding them, e.g. optimizer moments): the
  "block_II" subtrees stacked along a new axis 0 where target has "blocks" or "groups" (see Stack).
  Other subtrees are kept as they are; leaves of target are only read for their structure.
  """
  if not isinstance(target, dict) or not isinstance(source, dict):
    return source
  if ("blocks" in target or "groups" in target) and "block_00" in source:
    converted = {}
    lead = sum(1 for key in target if key.startswith("block_"))
    for key in target:
      if key == "blocks":
        steps = len([k for k in source if k.startswith("block_")]) - lead
        converted[key] = _stack([source[f"block_{lead + i:02d}"] for i in range(steps)])
      elif key == "groups":
        size = len(target["groups"])
        steps = (len([k for k in source if k.startswith("block_")]) - lead) // size
        converted[key] = {f"block_{j:02d}": _stack([source[f"block_{lead + g * size + j:02d}"] for g in range(steps)])
                          for j in range(size)}
      else:
        converted[key] = to_scanned_layout(source[key], target[key])
    return converted
  return {key: to_scanned_layout(source[key], target[key]) if key in target else source[key] for key in source}
