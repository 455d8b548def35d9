"""The FLOP count (vlm_jax.flops) against closed forms: a Llama block's SwiGLU and grouped-query projections,
causal attention counted half, decoding with a cache, and the chips' peaks MFU divides by."""

import flax.linen as nn
import jax
import numpy as np

from vlm_jax import flops, models
from vlm_jax.run_config import base_config

VOCAB = 50


def llama_config(tokens: int = 9):
  """A two-layer Llama: width 16, 4 query heads of head_dim 8 (so heads * head_dim = 32, not the width),
  2 key/value heads, SwiGLU MLP 24, untied logits."""
  config = base_config()
  config.model.name = "causal_lm"
  config.model.text.update(width=16, depth=2, num_heads=4, num_kv_heads=2, head_dim=8, mlp_dim=24, mlp="swiglu",
                           norm="rmsnorm", posemb="rope", use_bias=False, tied_embedding=False)
  config.data.max_text_len = tokens
  return config


def test_llama_forward_flops_match_a_hand_count():
  config = llama_config(tokens=9)
  # 8 positions (the caption shifted by one). Per layer: Q 2*8*16*32 = 8192, O 8192, K and V 2 * 2*8*16*16 = 8192
  # (2 kv heads * 8), SwiGLU gate, up and down 3 * 2*8*16*24 = 18432, QK^T and AV 2 * 2*8*8*32 = 8192 halved
  # (causal) = 4096 -> 47104. Two layers 94208, logits 2*8*16*50 = 12800.
  parts = models.get("causal_lm").forward_flops(config, VOCAB, batch_size=4)
  assert parts == {"decoder": 94208 + 12800}
  assert flops.train_flops_per_step(parts, 4) == 3 * (94208 + 12800) * 4


def test_dense_flops_are_two_per_weight_per_token_of_the_built_model():
  """Every matmul weight of the model as built (SwiGLU's three kernels, the grouped key/value kernels) is one
  multiply-add per token; the FLOP count minus the attention matmuls must be 2 * tokens * those weights."""
  config = llama_config(tokens=9)
  model = models.build_model(config.model, vocab_size=VOCAB, max_len=9, eos_id=2, pad_id=0)
  sample = models.sample_batch(models.get("causal_lm").FEATURES, 2, 8, 9)
  shapes = nn.meta.unbox(jax.eval_shape(lambda: model.init(jax.random.key(0), sample))["params"])
  # Kernels only: the token embedding is a lookup (no FLOPs), norm scales are elementwise.
  weights = sum(int(np.prod(leaf.shape)) for path, leaf in jax.tree_util.tree_leaves_with_path(shapes)
                if path[-1].key.endswith("kernel"))
  tokens, text = 8, config.model.text
  attention_matmuls = text.depth * 2 * 2 * tokens * tokens * text.num_heads * text.head_dim // 2  # causal: half
  counted = models.get("causal_lm").forward_flops(config, VOCAB, batch_size=1)["decoder"]
  assert counted - attention_matmuls == 2 * tokens * weights


def test_the_conv_stem_counts_two_flops_per_kernel_weight_per_output_position_of_the_built_tower():
  config = base_config()
  config.model.vision.update(patch_size=7, stem="conv", stem_width=48, width=32, depth=1, num_heads=2, mlp_dim=64)
  patch = base_config().model.vision
  patch.update(patch_size=7, width=32, depth=1, num_heads=2, mlp_dim=64)
  model = models.towers.build_vit(config.model.vision, np.float32, scan=False)
  shapes = nn.meta.unbox(jax.eval_shape(lambda: model.init(jax.random.key(0), np.zeros((1, 28, 28, 3))))["params"])
  # SAME padding, stride 2: 28 -> 14 -> 7 -> 4 positions a side, each a full 3 x 3 window (padding included);
  # channels 12, 24, 48 (stem_width 48), then the embedding to the width 32.
  assert [shapes[f"stem_conv_{i}"]["kernel"].shape[-1] for i in range(3)] == [12, 24, 48]
  convs = sum(2 * side * side * int(np.prod(shapes[f"stem_conv_{i}"]["kernel"].shape))
              for i, side in enumerate((14, 7, 4)))
  embedding = 2 * 16 * int(np.prod(shapes["embedding"]["kernel"].shape))
  blocks = flops.vit_forward_flops(patch, 28) - flops.dense_flops(16, 7 * 7 * 3, 32)  # the same blocks
  assert flops.vit_forward_flops(config.model.vision, 28) == convs + embedding + blocks


def test_causal_attention_counts_half_of_the_square_and_cross_attention_all_of_it():
  full = flops.attention_flops(10, 10, 16)
  causal = flops.attention_flops(10, 10, 16, causal=True)
  assert full - causal == 2 * 10 * 10 * 16  # half of QK^T and AV: 2 matmuls * 2 FLOPs * 10*10*16 / 2
  assert flops.mlp_flops(10, 16, 64, "swiglu") == 3 * 2 * 10 * 16 * 64
  assert flops.mlp_flops(10, 16, 64, "quick_gelu") == 2 * 2 * 10 * 16 * 64


def test_decode_flops_match_a_closed_form():
  """Prefill of P positions, then N - 1 steps of one position each over P + 1, ..., P + N - 1 keys."""
  text = llama_config().model.text
  p, n = 5, 4
  prefill = flops.text_forward_flops(text, p, text.depth, vocab_size=VOCAB)
  # One position: Q + O 2 * 2*16*32 = 2048, K + V 2 * 2*16*16 = 1024, SwiGLU 3 * 2*16*24 = 2304 -> 5376 a layer;
  # logits 2*16*50 = 1600. Attention over c keys: 2 * 2*c*32 = 128 c a layer; sum of c = 6 + 7 + 8 = 21.
  steps = (n - 1) * (2 * 5376 + 1600) + 2 * 128 * 21
  assert flops.decode_flops(text, p, n, VOCAB) == prefill + steps


def test_peaks_by_device_kind():
  assert flops.dense_bf16_peak("NVIDIA H100 80GB HBM3") == 989e12  # SXM
  assert flops.dense_bf16_peak("NVIDIA H100 PCIe") == 756e12
  assert flops.dense_bf16_peak("NVIDIA H200") == 989e12
  assert flops.dense_bf16_peak("NVIDIA A100-SXM4-80GB") == 312e12
  assert flops.dense_bf16_peak("NVIDIA L4") == 121e12
  assert flops.dense_bf16_peak("NVIDIA L40S") is None  # not an L4
  assert flops.dense_bf16_peak("TPU v5 lite") == 197e12 and flops.dense_bf16_peak("TPU v5") == 459e12
  assert flops.dense_bf16_peak("TPU v6 lite") == 918e12 and flops.dense_bf16_peak("TPU v4") == 275e12
  assert flops.dense_bf16_peak("cpu") is None
