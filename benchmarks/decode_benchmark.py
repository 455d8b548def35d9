"""Decoding speed with and without the key/value cache, and transformers' Llama `generate` beside it.

    python benchmarks/decode_benchmark.py [--repeats 3]

A causal text decoder (vlm_jax TextTransformer: width 256, 4 layers, 4 heads, MLP 1024, vocabulary 4096),
batch 8, 16-token prompts, 64 new tokens, greedy, EOS disabled so every run writes exactly 64 tokens.
The Llama has the same width, depth, heads, MLP width and vocabulary (its MLP is SwiGLU: 3 matrices, not
2), run by torch on the CPU; it is skipped when torch or transformers is missing
(benchmarks/requirements.txt). Prints one JSON line: tokens_per_s for each, new tokens only, after a
warm-up run (compilation excluded).
"""

import argparse
import json
import time

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from vlm_jax import decoding
from vlm_jax.models.text import TextTransformer

WIDTH, DEPTH, HEADS, MLP, VOCAB = 256, 4, 4, 1024, 4096
BATCH, PROMPT, NEW = 8, 16, 64


def _best_seconds(fn, repeats: int) -> float:
  fn()  # warm-up: compilation, caches
  times = []
  for _ in range(repeats):
    begin = time.perf_counter()
    fn()
    times.append(time.perf_counter() - begin)
  return min(times)


def jax_decoders():
  """(cached, uncached) zero-argument functions that each decode the whole batch, blocking."""
  model = TextTransformer(vocab_size=VOCAB, width=WIDTH, depth=DEPTH, num_heads=HEADS, mlp_dim=MLP,
                          max_len=PROMPT + NEW, compute_logits=True)
  tokens = np.zeros((BATCH, PROMPT + NEW), np.int32)
  tokens[:, :PROMPT] = np.random.default_rng(0).integers(3, VOCAB, (BATCH, PROMPT))
  tokens = jnp.asarray(tokens)
  params = jax.jit(model.init)(jax.random.key(0), tokens[:1])["params"]
  params = nn.meta.unbox(params)
  start = jnp.full((BATCH,), PROMPT, jnp.int32)
  config = decoding.DecodeConfig(method="greedy", max_steps=NEW)
  cached = decoding.make_generate(model, config, eos_id=-1)

  @jax.jit
  def uncached(params, tokens, start):
    logits_fn = lambda t: model.apply({"params": params}, t)[0]
    return decoding.greedy_decode(logits_fn, tokens, start, NEW, eos_id=-1)

  key = jax.random.key(0)
  run_cached = lambda: jax.block_until_ready(cached(params, None, tokens, start, key))
  run_uncached = lambda: jax.block_until_ready(uncached(params, tokens, start))
  # Same tokens both ways: the benchmark compares like with like.
  same = np.array_equal(np.asarray(run_cached()[0]), np.asarray(run_uncached()))
  return run_cached, run_uncached, same


def transformers_decoder():
  """A zero-argument function running Llama `generate` on the same shapes, or None (with the reason)."""
  try:
    import torch
    import transformers
  except ImportError as e:
    return None, f"skipped: {e.name} is not installed (pip install -r benchmarks/requirements.txt)"
  config = transformers.LlamaConfig(vocab_size=VOCAB, hidden_size=WIDTH, intermediate_size=MLP,
                                    num_hidden_layers=DEPTH, num_attention_heads=HEADS, num_key_value_heads=HEADS,
                                    max_position_embeddings=PROMPT + NEW, pad_token_id=0, bos_token_id=1,
                                    eos_token_id=2)
  torch.manual_seed(0)
  model = transformers.LlamaForCausalLM(config).eval()
  prompt = torch.randint(3, VOCAB, (BATCH, PROMPT))

  def run():
    with torch.inference_mode():
      out = model.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=NEW,
                           min_new_tokens=NEW, do_sample=False, use_cache=True, pad_token_id=0)
    assert out.shape == (BATCH, PROMPT + NEW)

  return run, f"transformers {transformers.__version__}, torch {torch.__version__}, {torch.get_num_threads()} threads"


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--repeats", type=int, default=3)
  args = parser.parse_args()
  new_tokens = BATCH * NEW
  run_cached, run_uncached, same = jax_decoders()
  rates = {"jax_cached": new_tokens / _best_seconds(run_cached, args.repeats),
           "jax_uncached": new_tokens / _best_seconds(run_uncached, args.repeats)}
  run_hf, note = transformers_decoder()
  rates["transformers_llama"] = new_tokens / _best_seconds(run_hf, args.repeats) if run_hf else None
  print(json.dumps({"tokens_per_s": {k: (round(v, 1) if v else v) for k, v in rates.items()},
                    "cached_speedup": round(rates["jax_cached"] / rates["jax_uncached"], 2),
                    "same_tokens_cached_uncached": bool(same), "transformers": note,
                    "shape": dict(width=WIDTH, depth=DEPTH, heads=HEADS, mlp=MLP, vocab=VOCAB, batch=BATCH,
                                  prompt=PROMPT, new=NEW),
                    "jax_device": str(jax.devices()[0].platform)}))


if __name__ == "__main__":
  main()
