"""Benchmark shape "small": CLIP (softmax loss, AdamW, float32) on random 64 px images, batch 64.

    python -m vlm_jax.benchmark --config configs/bench_small.py
    python benchmarks/open_clip_bench.py          # the same shape in open_clip, and the ratio

ViT: patch 8 (64 tokens), width 256, depth 6, 4 heads, MLP 1024. Text: width 256, depth 4, 4 heads,
context 32, vocabulary 4096 (config.bench_vocab_size: the benchmark has no tokenizer). Embedding 256.
"""

from vlm_jax.run_config import base_config


def get_config(arg=None):
  del arg
  config = base_config()
  config.model.name = "two_tower"
  config.loss.contrastive = "softmax"
  config.batch_size = 64
  config.data.image_size = 64
  config.data.max_text_len = 32
  config.model.embed_dim = 256
  config.model.vision.update(dict(patch_size=8, width=256, depth=6, num_heads=4, mlp_dim=1024))
  config.model.text.update(dict(width=256, depth=4, num_heads=4, mlp_dim=1024))
  config.bench_vocab_size = 4096  # benchmark only: the vocabulary without a tokenizer
  # The blocks as a loop: at these depths XLA:CPU ran the scanned stack's step ~12% (bench_small) to ~17%
  # (bench_ti16) slower (its stacked residuals zero-filled and copied in and out), and compiled it only ~2 s
  # faster (PROFILE_NOTES.md / experiments/README.md, issue 17).
  config.model.scan = False
  return config
