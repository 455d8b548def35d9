"""Benchmark shape "b16": CLIP ViT-B/16 (softmax loss, AdamW) on random 224 px images, batch 256.

    python -m vlm_jax.benchmark --config configs/bench_b16.py --config.model.dtype=bfloat16
    bash benchmarks/gpu.sh          # with bench_ti16 and a Llama's decoding, on a GPU or TPU: img/s, MFU, memory

The OpenAI CLIP ViT-B/16 layout: ViT patch 16 (196 tokens + CLS), width 768, depth 12, 12 heads, MLP 3072,
quick GELU, a LayerNorm before the blocks, pooled at the CLS token. Text: width 512, depth 12, 8 heads,
MLP 2048, context 77, vocabulary 49408 (config.bench_vocab_size: the benchmark has no tokenizer).
Embedding 512. Sized for an accelerator: on 2 CPU cores a step takes minutes.
"""

from vlm_jax.run_config import base_config


def get_config(arg=None):
  del arg
  config = base_config()
  config.model.name = "two_tower"
  config.loss.contrastive = "softmax"
  config.batch_size = 256
  config.data.image_size = 224
  config.data.max_text_len = 77
  config.model.embed_dim = 512
  config.model.vision.update(dict(patch_size=16, width=768, depth=12, num_heads=12, mlp_dim=3072,
                                  posemb="learned_with_cls", cls_token=True, pool="cls", activation="quick_gelu",
                                  pre_norm=True, layer_norm_eps=1e-5))
  config.model.text.update(dict(width=512, depth=12, num_heads=8, mlp_dim=2048, mlp="quick_gelu", norm_eps=1e-5))
  config.bench_vocab_size = 49408  # benchmark only: the vocabulary without a tokenizer
  return config
