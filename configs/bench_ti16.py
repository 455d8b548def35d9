"""Benchmark shape "ti16": CLIP ViT-Ti/16 (softmax loss, AdamW, float32) on random 224 px images, batch 32.

    python -m vlm_jax.benchmark --config configs/bench_ti16.py
    python benchmarks/open_clip_bench.py          # the same shape in open_clip, and the ratio

ViT: patch 16 (196 tokens), width 192, depth 12, 3 heads, MLP 768. Text: width 192, depth 6, 3 heads,
MLP 768, context 32, vocabulary 4096 (config.bench_vocab_size: the benchmark has no tokenizer). Embedding 256.
"""

from vlm_jax.run_config import base_config


def get_config(arg=None):
  del arg
  config = base_config()
  config.model.name = "two_tower"
  config.loss.contrastive = "softmax"
  config.batch_size = 32
  config.data.image_size = 224
  config.data.max_text_len = 32
  config.model.embed_dim = 256
  config.model.vision.update(dict(patch_size=16, width=192, depth=12, num_heads=3, mlp_dim=768))
  config.model.text.update(dict(width=192, depth=6, num_heads=3, mlp_dim=768))
  config.bench_vocab_size = 4096  # benchmark only: the vocabulary without a tokenizer
  # The blocks as a loop: at these depths XLA:CPU ran the scanned stack's step ~12% (bench_small) to ~17%
  # (bench_ti16) slower (its stacked residuals zero-filled and copied in and out), and compiled it only ~2 s
  # faster (PROFILE_NOTES.md / experiments/README.md, issue 17).
  config.model.scan = False
  return config
