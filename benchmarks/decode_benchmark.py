"""Decoding speed: the SAME Llama in vlm_jax (key/value cache) and in transformers' `generate`.

    python benchmarks/decode_benchmark.py [--repeats 3]

A Llama (width 256, 4 layers, 4 query heads sharing 2 key/value heads, SwiGLU MLP 1024, vocabulary 4096)
made by transformers' LlamaForCausalLM with a fixed seed (weights scaled to O(1) outputs, so greedy
choices are not near-ties), saved with save_pretrained to a temporary folder and imported with
vlm_jax.pretrained.from_hf. Both decode the same 8 prompts of 16 tokens greedily, 64 new tokens each
(EOS disabled, so every run writes exactly 64); vlm_jax without the cache (the whole buffer recomputed at
every step) is timed too. Tokens/s count new tokens only, best of `repeats` after a warm-up run
(compilation excluded). Prints one JSON line, with whether vlm_jax and transformers wrote the same tokens.
Needs torch and transformers (benchmarks/requirements.txt).
"""

import argparse
import json
import tempfile
import time

import jax
import jax.numpy as jnp
import numpy as np

from vlm_jax import decoding, pretrained

WIDTH, DEPTH, HEADS, KV_HEADS, MLP, VOCAB = 256, 4, 4, 2, 1024, 4096
BATCH, PROMPT, NEW = 8, 16, 64


def _best_seconds(fn, repeats: int) -> float:
  fn()  # warm-up: compilation, caches
  times = []
  for _ in range(repeats):
    begin = time.perf_counter()
    fn()
    times.append(time.perf_counter() - begin)
  return min(times)


def make_llama(directory: str):
  """A seeded random LlamaForCausalLM saved in `directory`; returns the torch model."""
  import torch
  import transformers
  config = transformers.LlamaConfig(vocab_size=VOCAB, hidden_size=WIDTH, intermediate_size=MLP,
                                    num_hidden_layers=DEPTH, num_attention_heads=HEADS,
                                    num_key_value_heads=KV_HEADS, max_position_embeddings=PROMPT + NEW,
                                    pad_token_id=0, bos_token_id=1, eos_token_id=2)
  torch.manual_seed(0)
  model = transformers.LlamaForCausalLM(config).eval()
  generator = torch.Generator().manual_seed(0)
  with torch.no_grad():
    for name, p in model.named_parameters():
      noise = torch.randn(p.shape, generator=generator)
      p.copy_(noise / np.sqrt(p[0].numel()) if p.ndim >= 2 else 1.0 + 0.2 * noise)
  model.save_pretrained(directory, safe_serialization=True)
  return model


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--repeats", type=int, default=3)
  args = parser.parse_args()
  try:
    import torch
    import transformers
  except ImportError as e:
    raise SystemExit(f"{e.name} is not installed: pip install -r benchmarks/requirements.txt")

  prompts = np.random.default_rng(0).integers(3, VOCAB, (BATCH, PROMPT)).astype(np.int32)
  with tempfile.TemporaryDirectory() as directory:
    hf_model = make_llama(directory)
    llama = pretrained.from_hf(directory)

  # vlm_jax: the imported decoder, cached (decoding.generate) and uncached (greedy_decode recomputing all).
  params = llama.params["params"]
  tokens = np.zeros((BATCH, PROMPT + NEW), np.int32)
  tokens[:, :PROMPT] = prompts
  tokens, start = jnp.asarray(tokens), jnp.full((BATCH,), PROMPT, jnp.int32)
  cached = decoding.make_generate(llama.module, decoding.DecodeConfig(method="greedy", max_steps=NEW), eos_id=-1)

  @jax.jit
  def uncached(params, tokens, start):
    logits_fn = lambda t: llama.module.apply({"params": params}, t)[0]
    return decoding.greedy_decode(logits_fn, tokens, start, NEW, eos_id=-1)

  key = jax.random.key(0)
  run_cached = lambda: np.asarray(jax.block_until_ready(cached(params, None, tokens, start, key))[0])
  run_uncached = lambda: np.asarray(jax.block_until_ready(uncached(params, tokens, start)))

  # transformers: the same weights, prompts and number of new tokens; EOS never stops a row.
  hf_prompts = torch.from_numpy(prompts).long()

  def run_hf():
    with torch.inference_mode():
      out = hf_model.generate(hf_prompts, attention_mask=torch.ones_like(hf_prompts), max_new_tokens=NEW,
                              min_new_tokens=NEW, do_sample=False, use_cache=True, pad_token_id=0, eos_token_id=None)
    assert out.shape == (BATCH, PROMPT + NEW)
    return out.numpy()

  new_tokens = BATCH * NEW
  rates = {"vlm_jax_cached": new_tokens / _best_seconds(run_cached, args.repeats),
           "vlm_jax_uncached": new_tokens / _best_seconds(run_uncached, args.repeats),
           "transformers": new_tokens / _best_seconds(run_hf, args.repeats)}
  jax_tokens, hf_tokens = run_cached(), run_hf()
  print(json.dumps({
      "tokens_per_s": {k: round(v, 1) for k, v in rates.items()},
      "vlm_jax_over_transformers": round(rates["vlm_jax_cached"] / rates["transformers"], 2),
      "cached_speedup": round(rates["vlm_jax_cached"] / rates["vlm_jax_uncached"], 2),
      "same_tokens_vlm_jax_transformers": bool(np.array_equal(jax_tokens, hf_tokens)),
      "same_tokens_cached_uncached": bool(np.array_equal(jax_tokens, run_uncached())),
      "transformers": f"transformers {transformers.__version__}, torch {torch.__version__}, "
                      f"{torch.get_num_threads()} threads",
      "shape": dict(width=WIDTH, depth=DEPTH, heads=HEADS, kv_heads=KV_HEADS, mlp=MLP, vocab=VOCAB, batch=BATCH,
                    prompt=PROMPT, new=NEW),
      "jax_device": str(jax.devices()[0].platform)}))


if __name__ == "__main__":
  main()
