"""FLOPs of one training step, counted from the config, and the hardware peaks that MFU divides by.

Each model module counts its own forward pass (`forward_flops`) with the helpers here.

Conventions (MaxText / PaLM style): a multiply-add is 2 FLOPs; matmuls only: layer norms, softmax,
activations and the optimizer are left out (they are a few percent at these widths). Attention scores and
their weighted sum (QK^T, AV) count the full T x S rectangle for bidirectional and cross-attention and half
the T x T square for causal self-attention, as MaxText counts it (the masked half is work a flash kernel
skips). Every text stack of vlm_jax is causal; a prefix-LM's bidirectional prefix is counted as causal too
(a slight undercount). Grouped-query attention projects keys and values to num_kv_heads * head_dim; a
SwiGLU MLP is three matmuls (gate, up, down), a GELU MLP two. Training costs 3x the forward pass
(forward, then gradients with respect to activations and to weights); frozen parameters only need the
gradient with respect to activations, so a frozen tower costs 2x when gradients flow through it and 1x
when nothing trainable sits before it.
"""

import time

import numpy as np


def dense_flops(tokens: int, d_in: int, d_out: int) -> int:
  return 2 * tokens * d_in * d_out


def attention_projection_flops(queries: int, keys: int, width: int, key_width: int | None = None, *,
                               heads_width: int = 0, kv_width: int = 0) -> int:
  """The Q, K, V, O projections of one attention layer (arguments as attention_flops)."""
  key_width = width if key_width is None else key_width
  heads_width = heads_width or width
  kv_width = kv_width or heads_width
  return (dense_flops(queries, width, heads_width) + dense_flops(queries, heads_width, width)
          + 2 * dense_flops(keys, key_width, kv_width))


def attention_flops(queries: int, keys: int, width: int, key_width: int | None = None, *, heads_width: int = 0,
                    kv_width: int = 0, causal: bool = False) -> int:
  """One attention layer: the Q, K, V, O projections and the two attention matmuls (QK^T, AV).

  width: the queries' model width; key_width: the keys' (cross-attention; default width). heads_width:
  num_heads * head_dim (default width); kv_width: num_kv_heads * head_dim (default heads_width, fewer with
  grouped-query attention). causal: self-attention under a causal mask, its score matmuls counted half.
  """
  projections = attention_projection_flops(queries, keys, width, key_width, heads_width=heads_width,
                                           kv_width=kv_width)
  scores = 2 * 2 * queries * keys * (heads_width or width)
  return projections + (scores // 2 if causal else scores)


def mlp_flops(tokens: int, width: int, mlp_dim: int, kind: str = "gelu") -> int:
  """The MLP of one block: SwiGLU (kind "swiglu") has three matmuls, gate and up to mlp_dim and down; any
  other kind (an activation between two matmuls) two."""
  return (3 if kind == "swiglu" else 2) * dense_flops(tokens, width, mlp_dim)


def block_flops(tokens: int, width: int, mlp_dim: int, cross_keys: int = 0, cross_width: int = 0, *,
                mlp: str = "gelu", causal: bool = False, heads_width: int = 0, kv_width: int = 0) -> int:
  """One pre-LN transformer block: self-attention (causal or not), optional cross-attention, MLP."""
  heads = dict(heads_width=heads_width, kv_width=kv_width)
  flops = attention_flops(tokens, tokens, width, causal=causal, **heads) + mlp_flops(tokens, width, mlp_dim, mlp)
  if cross_keys:
    flops += attention_flops(tokens, cross_keys, width, cross_width, **heads)
  return flops


def vit_forward_flops(vision, image_size: int) -> int:
  n = (image_size // vision.patch_size) ** 2
  tokens = n + int(vision.cls_token)
  if vision.get("stem", "patch") == "conv":
    from vlm_jax.models import vit  # noqa: PLC0415  (here: vit imports flax)
    side, inputs, flops = image_size, 3, 0
    for channels in vit.conv_stem_channels(vision.patch_size, vision.get("stem_width", 0) or vision.width):
      side = -(-side // 2)
      flops += dense_flops(side * side, 9 * inputs, channels)
      inputs = channels
    flops += dense_flops(n, inputs, vision.width)
  else:
    flops = dense_flops(n, vision.patch_size ** 2 * 3, vision.width)
  flops += vision.depth * block_flops(tokens, vision.width, vision.mlp_dim)
  if vision.pool == "map":
    flops += attention_flops(1, tokens, vision.width) + 2 * dense_flops(1, vision.width, vision.mlp_dim)
  return flops


def text_head_widths(text) -> dict:
  """heads_width and kv_width of a config.model.text section (head_dim 0: width // num_heads; num_kv_heads
  0: num_heads), the keyword arguments of attention_flops / block_flops."""
  head_dim = text.get("head_dim", 0) or text.width // text.num_heads
  kv_heads = text.get("num_kv_heads", 0) or text.num_heads
  return dict(heads_width=text.num_heads * head_dim, kv_width=kv_heads * head_dim)


def text_forward_flops(text, tokens: int, depth: int, *, cross_every: int = 0, cross_keys: int = 0,
                       cross_width: int = 0, vocab_size: int = 0, causal: bool = True) -> int:
  """A text stack of `depth` blocks over `tokens` positions (+ logits if vocab_size): causal self-attention
  (every vlm_jax text stack), the MLP kind and the heads' widths of config.model.text `text`."""
  flops = 0
  widths = text_head_widths(text)
  for i in range(depth):
    cross = cross_every > 0 and (depth - 1 - i) % cross_every == 0
    flops += block_flops(tokens, text.width, text.mlp_dim, cross_keys if cross else 0, cross_width,
                         mlp=text.get("mlp", "gelu"), causal=causal, **widths)
  return flops + dense_flops(tokens, text.width, vocab_size)


def decode_flops(text, prompt_len: int, new_tokens: int, vocab_size: int) -> int:
  """FLOPs of generating `new_tokens` after a `prompt_len` prompt with a key/value cache, for one row: the
  prefill (the prompt's causal forward pass with its logits; its last logits choose the first new token),
  then for each further token one position through the stack, attending every position so far (no causal
  halving: every key it reads is visible), and its logits."""
  widths = text_head_widths(text)
  one_position = (attention_projection_flops(1, 1, text.width, **widths)
                  + mlp_flops(1, text.width, text.mlp_dim, text.get("mlp", "gelu")))
  flops = text_forward_flops(text, prompt_len, text.depth, vocab_size=vocab_size)
  for step in range(1, new_tokens):
    context = prompt_len + step  # the token fed at this step sits at position prompt_len + step - 1
    flops += text.depth * (one_position + 2 * 2 * context * widths["heads_width"])
    flops += dense_flops(1, text.width, vocab_size)
  return flops


def train_flops_per_step(forward_parts: dict, batch_size: int, multipliers: dict | None = None) -> float:
  """FLOPs of one training step of the global batch, from one example's forward FLOPs by component
  (a model module's `forward_flops`, e.g. {"vision": ..., "text": ...}).

  Each component costs 3x its forward pass unless `multipliers` says otherwise, e.g. for LLaVA stage 1
  {"vision": 1, "decoder": 2}: the frozen ViT runs forward only, the frozen LM also passes gradients back.
  """
  multipliers = multipliers or {}
  per_example = sum(multipliers.get(name, 3) * flops for name, flops in forward_parts.items())
  return float(per_example * batch_size)


def tokens_per_example(config, features) -> int:
  """Sequence positions a step processes per example: image tokens and text tokens, for the batch
  `features` the model reads (a model module's FEATURES)."""
  image = (config.data.image_size // config.model.vision.patch_size) ** 2 if "image" in features else 0
  text = config.data.max_text_len if {"text", "caption"} & set(features) else 0
  return image + text


# Dense (no sparsity) bf16 peak FLOP/s per chip, by the start of jax's device_kind ("NVIDIA H100 80GB HBM3" is
# an H100 SXM, "TPU v5 lite" a v5e, "TPU v6 lite" a v6e). Looked up in this order: the specific names first.
PEAK_FLOPS = {
    "NVIDIA H100 PCIe": 756e12, "NVIDIA H100": 989e12, "NVIDIA H200": 989e12, "NVIDIA A100": 312e12,
    "NVIDIA L4": 121e12,
    "TPU v4": 275e12, "TPU v5 lite": 197e12, "TPU v5e": 197e12, "TPU v5p": 459e12, "TPU v5": 459e12,
    "TPU v6 lite": 918e12, "TPU v6e": 918e12,
}


def dense_bf16_peak(device_kind: str) -> float | None:
  """The chip's dense bf16 peak FLOP/s from PEAK_FLOPS, or None for a kind not in it (CPUs among them).
  A name matches the kind's start up to a word boundary: "NVIDIA L4" is not an "NVIDIA L40S"."""
  for name, peak in PEAK_FLOPS.items():
    if device_kind.startswith(name) and not device_kind[len(name):len(name) + 1].isalnum():
      return peak
  return None


_measured_cpu_peak = None


def measure_matmul_peak(size: int = 1024, seconds: float = 1.0) -> float:
  """FLOP/s of float32 matmuls through jax on this host's CPU, best of a short series."""
  import jax
  import jax.numpy as jnp
  a = jnp.asarray(np.random.default_rng(0).normal(size=(size, size)), jnp.float32)
  matmul = jax.jit(lambda x: x @ x)
  cpu = jax.devices("cpu")[0]
  a = jax.device_put(a, cpu)
  matmul(a).block_until_ready()
  best, deadline = 0.0, time.time() + seconds
  while time.time() < deadline:
    start = time.perf_counter()
    matmul(a).block_until_ready()
    best = max(best, 2 * size ** 3 / (time.perf_counter() - start))
  return best


def peak_flops_per_device(device) -> float:
  """Per-device peak: the chip's dense bf16 peak (dense_bf16_peak); on CPU the measured float32 matmul peak
  shared by the simulated devices of the host; NaN for an accelerator not in the table."""
  peak = dense_bf16_peak(getattr(device, "device_kind", ""))
  if peak is not None:
    return peak
  if device.platform == "cpu":
    import jax
    global _measured_cpu_peak
    if _measured_cpu_peak is None:
      _measured_cpu_peak = measure_matmul_peak()
    return _measured_cpu_peak / max(jax.local_device_count(), 1)
  return float("nan")
