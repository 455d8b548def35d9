"""Decoding speed: the SAME Llama in vlm_jax (key/value cache) and in transformers' `generate`, greedy and
top-p, batch 1 and 8.

    python benchmarks/decode_benchmark.py [--repeats 5] [--uncached]

A Llama (width 256, 4 layers, 4 query heads sharing 2 key/value heads, SwiGLU MLP 1024, vocabulary 4096)
made by transformers' LlamaForCausalLM with a fixed seed (weights scaled to O(1) outputs, so greedy
choices are not near-ties), saved with save_pretrained to a temporary folder and imported with
vlm_jax.pretrained.from_hf, decoded by decoding.make_generate (what Pretrained.generate runs: prefill of the
prompt, then a jitted while loop with the key/value cache, the params prepared once). Both continue the
same prompts of 16 tokens by 64 new tokens, EOS disabled (no id can end a row, so every run writes exactly
64 per row):
- greedy: both must write the same tokens (checked, printed);
- top-p: temperature 1.0, top_p 0.9, no top-k, on speed only (the two engines' random streams differ).
Each cell runs both engines once to warm up (compilation excluded), then `repeats` times interleaved
(vlm_jax, transformers, vlm_jax, ...), so a machine shared with other work slows both alike; the best
time of each counts. transformers runs with torch's default threads and with one (on a busy machine
OpenMP's spinning threads can collapse), and its faster figure counts. Tokens/s count new tokens only
(prefill included in the time). `--uncached` also times vlm_jax recomputing the whole buffer at every
step (greedy, batch 8). Prints a table and one JSON line, with the CPU model and the load average.
Needs torch and transformers (benchmarks/requirements.txt).
"""

import argparse
import json
import os
import platform
import tempfile
import time

import jax
import jax.numpy as jnp
import numpy as np

from vlm_jax import decoding, pretrained

WIDTH, DEPTH, HEADS, KV_HEADS, MLP, VOCAB = 256, 4, 4, 2, 1024, 4096
PROMPT, NEW = 16, 64
TOP_P, TEMPERATURE = 0.9, 1.0
BATCHES, METHODS = (1, 8), ("greedy", "top-p")


def cpu_model() -> str:
  """The CPU's model name (lscpu's "Model name"), from /proc/cpuinfo where there is one."""
  try:
    with open("/proc/cpuinfo") as f:
      for line in f:
        if line.startswith("model name"):
          return line.split(":", 1)[1].strip()
  except OSError:
    pass
  return platform.processor() or "unknown"


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


def _timed(fn) -> tuple:
  begin = time.perf_counter()
  out = fn()
  return time.perf_counter() - begin, out


def race(fns: dict, repeats: int) -> tuple:
  """{name: fn() -> tokens}: one warm-up each, then `repeats` rounds in turn; -> ({name: best seconds},
  {name: last tokens})."""
  outs = {name: fn() for name, fn in fns.items()}
  best = {name: float("inf") for name in fns}
  for _ in range(repeats):
    for name, fn in fns.items():
      seconds, outs[name] = _timed(fn)
      best[name] = min(best[name], seconds)
  return best, outs


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--repeats", type=int, default=5)
  parser.add_argument("--uncached", action="store_true", help="also time vlm_jax without the cache")
  parser.add_argument("--torch-threads", type=int, default=0,
                      help="torch threads for transformers (0: race 1 and torch's default, keep the faster)")
  args = parser.parse_args()
  try:
    import torch
    import transformers
  except ImportError as e:
    raise SystemExit(f"{e.name} is not installed: pip install -r benchmarks/requirements.txt")

  with tempfile.TemporaryDirectory() as directory:
    hf_model = make_llama(directory)
    llama = pretrained.from_hf(directory)
  params = llama.params["params"]
  # As Pretrained.generate does: the params in the layout decoding reads, made once, not at every call.
  decode_params = jax.jit(decoding.prepare_params)(params)
  key = jax.random.key(0)

  def vlm_jax_fn(method: str, prompts: np.ndarray):
    config = (decoding.DecodeConfig(method="greedy", max_steps=NEW) if method == "greedy" else
              decoding.DecodeConfig(method="sample", max_steps=NEW, temperature=TEMPERATURE, top_p=TOP_P))
    generate = decoding.make_generate(llama.module, config, eos_id=-1, prompt_len=PROMPT)
    b = len(prompts)
    tokens = np.zeros((b, PROMPT + NEW), np.int32)
    tokens[:, :PROMPT] = prompts
    tokens, start = jnp.asarray(tokens), jnp.full((b,), PROMPT, jnp.int32)
    return lambda: np.asarray(jax.block_until_ready(generate(decode_params, None, tokens, start, key))[0])

  def hf_fn(method: str, prompts: np.ndarray, threads: int):
    hf_prompts = torch.from_numpy(prompts).long()
    choose = (dict(do_sample=False) if method == "greedy" else
              dict(do_sample=True, temperature=TEMPERATURE, top_p=TOP_P, top_k=0))

    def run():
      torch.set_num_threads(threads)
      with torch.inference_mode():
        out = hf_model.generate(hf_prompts, attention_mask=torch.ones_like(hf_prompts), max_new_tokens=NEW,
                                min_new_tokens=NEW, use_cache=True, pad_token_id=0, eos_token_id=None, **choose)
      assert out.shape == (len(prompts), PROMPT + NEW)
      return out.numpy()
    return run

  # transformers at its best: torch's default (every core) and one thread, which a machine running other
  # work can favour (OpenMP's spinning threads collapse when they share cores).
  thread_counts = sorted({1, torch.get_num_threads()}) if args.torch_threads == 0 else [args.torch_threads]
  cells, uncached = [], None
  for batch in BATCHES:
    prompts = np.random.default_rng(0).integers(3, VOCAB, (batch, PROMPT)).astype(np.int32)
    for method in METHODS:
      fns = {"vlm_jax": vlm_jax_fn(method, prompts)}
      fns.update({f"transformers@{n}": hf_fn(method, prompts, n) for n in thread_counts})
      best, outs = race(fns, args.repeats)
      rates = {name: batch * NEW / seconds for name, seconds in best.items()}
      hf_best = max((name for name in rates if name != "vlm_jax"), key=rates.get)
      cell = dict(method=method, batch=batch, vlm_jax=round(rates["vlm_jax"], 1),
                  transformers=round(rates[hf_best], 1), transformers_threads=int(hf_best.split("@")[1]),
                  transformers_by_threads={name.split("@")[1]: round(r, 1) for name, r in rates.items()
                                           if name != "vlm_jax"},
                  ratio=round(rates["vlm_jax"] / rates[hf_best], 2))
      if method == "greedy":
        cell["same_tokens"] = all(np.array_equal(outs["vlm_jax"], outs[name]) for name in outs if name != "vlm_jax")
      cells.append(cell)

      if args.uncached and method == "greedy" and batch == max(BATCHES):
        tokens = jnp.asarray(np.pad(prompts, ((0, 0), (0, NEW))))
        start = jnp.full((batch,), PROMPT, jnp.int32)

        @jax.jit
        def recompute(params, tokens, start):
          logits_fn = lambda t: llama.module.apply({"params": params}, t)[0]
          return decoding.greedy_decode(logits_fn, tokens, start, NEW, eos_id=-1)
        run = lambda: np.asarray(jax.block_until_ready(recompute(params, tokens, start)))
        best, outs_uncached = race({"uncached": run}, args.repeats)
        uncached = dict(batch=batch, tokens_per_s=round(batch * NEW / best["uncached"], 1),
                        same_tokens_as_cached=bool(np.array_equal(outs_uncached["uncached"], outs["vlm_jax"])))

  cpu, load = cpu_model(), os.getloadavg()
  print(f"CPU: {cpu}, {os.cpu_count()} cores")
  print(f"transformers {transformers.__version__}, torch {torch.__version__} (threads raced: {thread_counts}); "
        f"jax {jax.__version__} on {jax.devices()[0].platform}; load average {load[0]:.1f}")
  print("| decoding | batch | vlm_jax tok/s | transformers tok/s (threads) | vlm_jax / transformers | same tokens |")
  print("|---|---|---|---|---|---|")
  for c in cells:
    same = {True: "yes", False: "NO"}.get(c.get("same_tokens"), "n/a (sampled)")
    hf = f"{c['transformers']:.0f} ({c['transformers_threads']})"
    print(f"| {c['method']} | {c['batch']} | {c['vlm_jax']:.0f} | {hf} | {c['ratio']:.2f}x | {same} |")
  if uncached:
    print(f"vlm_jax without the cache (greedy, batch {uncached['batch']}): {uncached['tokens_per_s']:.0f} tok/s, "
          f"same tokens as cached: {uncached['same_tokens_as_cached']}")
  print(json.dumps({
      "cells": cells, "uncached": uncached, "cpu": cpu, "cores": os.cpu_count(),
      "load_average_1_5_15": [round(x, 2) for x in load],
      "transformers": f"transformers {transformers.__version__}, torch {torch.__version__}",
      "shape": dict(width=WIDTH, depth=DEPTH, heads=HEADS, kv_heads=KV_HEADS, mlp=MLP, vocab=VOCAB, prompt=PROMPT,
                    new=NEW, top_p=TOP_P, temperature=TEMPERATURE),
      "jax_device": str(jax.devices()[0].platform), "repeats": args.repeats}))


if __name__ == "__main__":
  main()
