"""FLOPs of one training step, counted from the config, and the hardware peaks that MFU divides by.

Each model module counts its own forward pass (`forward_flops`) with the helpers here.

Conventions (MaxText / PaLM style): a multiply-add is 2 FLOPs; attention scores are counted over the full
T x T square even where a causal mask zeroes half of them; layer norms, softmax, activations and the
optimizer are left out (they are a few percent at these widths). Training costs 3x the forward pass
(forward, then gradients with respect to activations and to weights); frozen parameters only need the
gradient with respect to activations, so a frozen tower costs 2x when gradients flow through it and 1x
when nothing trainable sits before it.
"""

import time

import numpy as np


def dense_flops(tokens: int, d_in: int, d_out: int) -> int:
  return 2 * tokens * d_in * d_out


def attention_flops(queries: int, keys: int, width: int, key_width: int | None = None) -> int:
  """Q, K, V, O projections and the two attention matmuls (QK^T, AV) for one layer."""
  key_width = width if key_width is None else key_width
  projections = dense_flops(queries, width, width) * 2 + dense_flops(keys, key_width, width) * 2
  return projections + 2 * 2 * queries * keys * width


def block_flops(tokens: int, width: int, mlp_dim: int, cross_keys: int = 0, cross_width: int = 0) -> int:
  """One pre-LN transformer block: self-attention, optional cross-attention, MLP."""
  flops = attention_flops(tokens, tokens, width) + 2 * dense_flops(tokens, width, mlp_dim)
  if cross_keys:
    flops += attention_flops(tokens, cross_keys, width, cross_width)
  return flops


def vit_forward_flops(vision, image_size: int) -> int:
  n = (image_size // vision.patch_size) ** 2
  tokens = n + int(vision.cls_token)
  flops = dense_flops(n, vision.patch_size ** 2 * 3, vision.width)
  flops += vision.depth * block_flops(tokens, vision.width, vision.mlp_dim)
  if vision.pool == "map":
    flops += attention_flops(1, tokens, vision.width) + 2 * dense_flops(1, vision.width, vision.mlp_dim)
  return flops


def text_forward_flops(text, tokens: int, depth: int, *, cross_every: int = 0, cross_keys: int = 0,
                       cross_width: int = 0, vocab_size: int = 0) -> int:
  """A text stack of `depth` blocks over `tokens` positions (+ logits if vocab_size)."""
  flops = 0
  for i in range(depth):
    cross = cross_every > 0 and (depth - 1 - i) % cross_every == 0
    flops += block_flops(tokens, text.width, text.mlp_dim, cross_keys if cross else 0, cross_width)
  return flops + dense_flops(tokens, text.width, vocab_size)


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


# Dense bf16 peak FLOP/s per chip (float32 peaks where the chip has no bf16 advantage listed separately).
PEAK_FLOPS = {
    "TPU v4": 275e12, "TPU v5 lite": 197e12, "TPU v5e": 197e12, "TPU v5p": 459e12, "TPU v5": 459e12,
    "TPU v6 lite": 918e12, "TPU v6e": 918e12,
    "NVIDIA A100": 312e12, "NVIDIA H100": 989e12, "NVIDIA H200": 989e12,
}

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
  """Per-device peak; on CPU the measured matmul peak shared by the simulated devices of the host."""
  kind = getattr(device, "device_kind", "")
  for name, peak in PEAK_FLOPS.items():
    if kind.startswith(name):
      return peak
  if device.platform == "cpu":
    import jax
    global _measured_cpu_peak
    if _measured_cpu_peak is None:
      _measured_cpu_peak = measure_matmul_peak()
    return _measured_cpu_peak / max(jax.local_device_count(), 1)
  return float("nan")
