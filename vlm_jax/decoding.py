"""Text generation into a fixed-shape token buffer (one compiled program for any prompt lengths).

Two paths:
- `greedy_decode(logits_fn, ...)`: recomputes the whole sequence at every step. Exact and model-agnostic
  (`logits_fn(tokens int[B, L]) -> float[B, L, V]` is the model with its image features bound); it is the
  reference the cached path is tested against.
- `generate(model, params, images, tokens, start, config=...)`: keys/values cached, so a step costs one
  position; greedy, temperature / top-k / top-p sampling, and beam search with a length penalty; stops at
  EOS; rows have their own prompt lengths. Jit it with `make_generate` (evaluation and
  inference do). It runs the model's own modules:
  the model (PrefixLM, CoCa, CausalLM or a TextTransformer with compute_logits) has
  `prefill(tokens, start, image_tokens) -> (logits float[B, L, V], cache)` and
  `decode_step(cache, token, position) -> (logits float[B, V], cache)`. In a cache, the leaves under a
  "layers" key are attention caches float[..., B, kv_heads, S, head_dim] (see layers.Stack); every other
  leaf is [B] (rows on axis 0). On CPU the model runs with its blocks' params in the loop layout.

Buffers: tokens int[B, L] hold each row's prompt left-aligned with padding after it; start int[B] is where
each row's generated text begins (its prompt length). Generated tokens are written from `start` on; the
rest of the row is left as it was (padding), so `generated_ids` reads a row's text back.
"""

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from vlm_jax import compile_log
from vlm_jax.models import layers

METHODS = ("greedy", "sample", "beam")


def greedy_decode(logits_fn, tokens, start, num_steps: int, eos_id: int, pad_id: int = 0):
  """Fills tokens[b, start[b]:] greedily, one token per step, until EOS or the buffer ends.

  tokens int[B, L]: the prompt of each row, left-aligned, padding after it. start int[B]: where each row's
  generated text begins (its prompt length). Returns int[B, L] with pad after each row's EOS.
  """
  b, length = tokens.shape
  rows = jnp.arange(b)

  def step(carry):
    i, tokens, done = carry
    position = start + i
    logits = logits_fn(tokens)
    previous = jnp.clip(position - 1, 0, length - 1)
    next_token = jnp.argmax(logits[rows, previous], axis=-1).astype(tokens.dtype)
    writable = (~done) & (position < length)
    target = jnp.clip(position, 0, length - 1)
    tokens = tokens.at[rows, target].set(jnp.where(writable, next_token, tokens[rows, target]))
    done = done | (writable & (next_token == eos_id)) | (position >= length - 1)
    return i + 1, tokens, done

  def not_finished(carry):
    i, _, done = carry
    return (i < num_steps) & ~jnp.all(done)

  # A while loop rather than a fixed count: one-word answers stop after two steps, not `num_steps`.
  done = jnp.zeros((b,), bool)
  _, tokens, _ = jax.lax.while_loop(not_finished, step, (0, tokens, done))
  return tokens


def generated_ids(tokens, start: int, eos_id: int, pad_id: int = 0) -> list:
  """The generated ids of one row (python list), from `start` up to and excluding EOS."""
  ids = []
  for t in list(tokens)[start:]:
    if t == eos_id or t == pad_id:
      break
    ids.append(int(t))
  return ids


# --------------------------------------------------------------------------------------------- config

@dataclasses.dataclass(frozen=True)
class DecodeConfig:
  """How to choose tokens. Frozen (hashable): it is a static argument of the jitted decoder.

  method: "greedy"; "sample" with `temperature`, then `top_k` (0: off) and `top_p` (1.0: off) filtering,
  in that order; "beam" with `num_beams` and `length_penalty` alpha (hypotheses ranked by
  log p / length**alpha, length counting generated tokens with the EOS; 0: raw log-likelihood).
  """
  method: str = "greedy"
  max_steps: int = 16
  temperature: float = 1.0
  top_k: int = 0
  top_p: float = 1.0
  num_beams: int = 4
  length_penalty: float = 1.0

  def __post_init__(self):
    if self.method not in METHODS:
      raise ValueError(f"decoding method {self.method!r} is not one of {METHODS}")
    if self.max_steps < 1 or self.num_beams < 1 or self.top_k < 0:
      raise ValueError(f"max_steps and num_beams must be >= 1 and top_k >= 0: {self}")
    if self.method == "sample" and (self.temperature <= 0 or not 0 < self.top_p <= 1):
      raise ValueError(f"sampling needs temperature > 0 and 0 < top_p <= 1: {self}")


# --------------------------------------------------------------------------------------------- choosing

def argmax(x):
  """int32[...]: the first index of the largest value along the last axis, as jnp.argmax for input without
  NaN, from two plain reductions (the maximum, then the smallest index holding it): XLA:CPU's variadic
  (value, index) reduction behind jnp.argmax costs ~5x as much (100 us vs 18 us for [8, 4096])."""
  largest = jnp.max(x, axis=-1, keepdims=True)
  index = jnp.arange(x.shape[-1], dtype=jnp.int32)
  return jnp.min(jnp.where(x == largest, index, x.shape[-1]), axis=-1)


def _order_keys(x):
  """float32 -> uint32 with the same order (-inf smallest, +inf largest; -0.0 as 0.0): the sign bit
  flipped for positive floats, every bit for negative ones."""
  x = jnp.where(x == 0, 0.0, x.astype(jnp.float32))
  bits = jax.lax.bitcast_convert_type(x, jnp.uint32)
  negative = (bits >> 31).astype(bool)
  return jnp.where(negative, ~bits, bits | jnp.uint32(0x80000000))


def nucleus_mask(logits, top_p: float):
  """bool[B, V]: the top-p nucleus of each row, the smallest set of most likely tokens whose probability
  reaches top_p (ties at its edge included; the most likely token always in it).

  No sort (XLA:CPU sorts [8, 4096] in ~5 ms, longer than a decoding step): the nucleus is the tokens whose
  logit is >= t, t the largest logit with mass(logits >= t) >= top_p, found by bisection over the 2**32
  float32 values in their order (32 masked sums of the probabilities, each halving the interval).
  """
  probs = jax.nn.softmax(logits.astype(jnp.float32), axis=-1)
  keys = _order_keys(logits)
  # lo: a key whose mass reaches top_p (the smallest logit's: all of it); hi: one that does not (past the max).
  lo, hi = jnp.min(keys, axis=-1, keepdims=True), jnp.max(keys, axis=-1, keepdims=True) + 1

  def halve(_, bounds):
    lo, hi = bounds
    mid = lo + (hi - lo) // 2
    reaches = jnp.sum(jnp.where(keys >= mid, probs, 0.0), axis=-1, keepdims=True) >= top_p
    return jnp.where(reaches, mid, lo), jnp.where(reaches, hi, mid)

  lo, _ = jax.lax.fori_loop(0, 32, halve, (lo, hi))
  return keys >= lo


def filter_logits(logits, temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0):
  """float[B, V] -> float[B, V] scaled by 1/temperature, -inf outside the top-k and the top-p nucleus.

  The nucleus is the smallest set of most likely tokens whose probability reaches top_p; the most likely
  token is always kept (see nucleus_mask).
  """
  logits = logits.astype(jnp.float32) / temperature
  if top_k:
    kth = jax.lax.top_k(logits, min(top_k, logits.shape[-1]))[0][..., -1:]
    logits = jnp.where(logits >= kth, logits, -jnp.inf)
  if top_p < 1.0:
    logits = jnp.where(nucleus_mask(logits, top_p), logits, -jnp.inf)
  return logits


def sample(rng, logits):
  """int32[B]: one token per row drawn from softmax(logits float[B, V]) (-inf: never drawn).

  By inversion: with u uniform in [0, 1) per row, the first token whose cumulative (unnormalised)
  probability exceeds u times the total, found by bisection over the token index (log2 V masked sums).
  One random number per row instead of V (jax.random.categorical's Gumbel noise), and no cumulative sum
  (a slow reduce-window on CPU): ~4x cheaper at [8, 4096]. A token of probability 0 is never drawn: the
  masked sums of two neighbouring indices are equal (the same terms, zeros aside) exactly where the
  second token has probability 0, so the first index past u * total never holds one.
  """
  logits = logits.astype(jnp.float32)
  weights = jnp.exp(logits - jnp.max(logits, axis=-1, keepdims=True))
  index = jnp.arange(logits.shape[-1], dtype=jnp.int32)
  target = jax.random.uniform(rng, (logits.shape[0], 1)) * jnp.sum(weights, axis=-1, keepdims=True)
  # lo: an index whose cumulative weight is <= target (-1: none yet); hi: the last drawable token.
  lo = jnp.full_like(target, -1, jnp.int32)
  hi = jnp.max(jnp.where(weights > 0, index, 0), axis=-1, keepdims=True)

  def halve(_, bounds):
    lo, hi = bounds
    mid = lo + (hi - lo) // 2
    past = jnp.sum(jnp.where(index <= mid, weights, 0.0), axis=-1, keepdims=True) > target
    return jnp.where(past, lo, mid), jnp.where(past, mid, hi)

  steps = max(1, int(np.ceil(np.log2(logits.shape[-1]))))  # the interval (lo, hi] holds at most V indices
  _, hi = jax.lax.fori_loop(0, steps, halve, (lo, hi))
  return hi[:, 0]


def choose_tokens(logits, rng, config: DecodeConfig):
  """float[B, V] -> int32[B]: argmax for greedy, else a sample from the filtered distribution."""
  if config.method == "greedy":
    return argmax(logits)
  return sample(rng, filter_logits(logits, config.temperature, config.top_k, config.top_p))


# --------------------------------------------------------------------------------------------- sampling

class _Decoder:
  """The model's prefill and decode_step, applied with fixed params."""

  def __init__(self, model, params):
    self.model, self.variables = model, {"params": params}

  def prefill(self, tokens, start, image_tokens):
    return self.model.apply(self.variables, tokens, start, image_tokens, method="prefill")

  def step(self, cache, token, position):
    return self.model.apply(self.variables, cache, token, position, method="decode_step")


def _map_rows(fn, cache):
  """fn(array, axis) on every leaf of `cache` along its rows axis: under "layers" the attention caches
  [..., B, kv_heads, S, head_dim] (stacked over layers or one per block), elsewhere axis 0."""
  def apply(path, leaf):
    in_layers = any(isinstance(k, jax.tree_util.DictKey) and k.key == "layers" for k in path)
    return fn(leaf, leaf.ndim - 4 if in_layers else 0)
  return jax.tree_util.tree_map_with_path(apply, cache)


def _sample(decoder, cache, first_logits, tokens, start, config: DecodeConfig, eos_id: int, rng):
  """Greedy or sampled continuation with the cache; -> (tokens int[B, L], log-likelihood float[B]).

  first_logits float[B, V] predict the token at `start`. The log-likelihood is that of the unfiltered
  model distribution, summed over the written tokens (EOS included).
  """
  b, length = tokens.shape
  rows = jnp.arange(b)

  def emit(logits, key, tokens, position, done, logprob):
    token = choose_tokens(logits, key, config)
    writable = ~done & (position < length)
    target = jnp.clip(position, 0, length - 1)
    tokens = tokens.at[rows, target].set(jnp.where(writable, token, tokens[rows, target]))
    token_logprob = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)[rows, token]
    logprob = logprob + jnp.where(writable, token_logprob, 0.0)
    done = done | (writable & (token == eos_id)) | (position >= length - 1)
    return tokens, done, logprob

  rng, key = jax.random.split(rng)
  tokens, done, logprob = emit(first_logits, key, tokens, start, jnp.zeros((b,), bool), jnp.zeros((b,)))

  def body(carry):
    i, tokens, done, logprob, cache, rng = carry
    last = jnp.clip(start + i - 1, 0, length - 1)  # the token written by the previous iteration
    logits, cache = decoder.step(cache, tokens[rows, last], last)
    rng, key = jax.random.split(rng)
    tokens, done, logprob = emit(logits, key, tokens, start + i, done, logprob)
    return i + 1, tokens, done, logprob, cache, rng

  def not_finished(carry):
    i, _, done, *_ = carry
    return (i < config.max_steps) & ~jnp.all(done)

  _, tokens, _, logprob, _, _ = jax.lax.while_loop(not_finished, body, (1, tokens, done, logprob, cache, rng))
  return tokens, logprob


# --------------------------------------------------------------------------------------------- beam search

def _length_penalty(length, alpha: float):
  return jnp.maximum(length, 1).astype(jnp.float32) ** alpha


def _take(x, index):
  """x [B, K, ...] rows index int[B, K'] -> [B, K', ...]."""
  return jnp.take_along_axis(x, index.reshape(index.shape + (1,) * (x.ndim - 2)), axis=1)


def _beam_search(decoder, cache, first_logits, tokens, start, config: DecodeConfig, eos_id: int,
                 pad_id: int):
  """-> (tokens int[B, K, L], scores float[B, K]): the K best finished hypotheses, best first.

  K beam slots per example. Every step, each live slot proposes its V extensions and each finished slot
  proposes itself unchanged; the K candidates with the best penalised score log p / length**alpha take the
  slots. With K = 1 that is exactly greedy decoding. A hypothesis is finished by EOS, by the end of the
  buffer or by max_steps; every finished one also enters a pool of the K best, which is the result (so a
  hypothesis pushed out of the slots later is not lost).
  """
  b, length = tokens.shape
  k, alpha = config.num_beams, config.length_penalty
  vocab = first_logits.shape[-1]
  rows = jnp.arange(b)[:, None]
  # Only slot 0 is live at first: K copies of one prompt would propose the same candidates K times.
  slot_logp = jnp.where(jnp.arange(k) == 0, 0.0, -jnp.inf)[None].repeat(b, 0)
  state = dict(seqs=jnp.repeat(tokens[:, None], k, axis=1), logp=slot_logp,
               length=jnp.zeros((b, k), jnp.int32), finished=jnp.zeros((b, k), bool),
               pool_seqs=jnp.repeat(tokens[:, None], k, axis=1), pool_scores=jnp.full((b, k), -jnp.inf))
  max_new = jnp.minimum(config.max_steps, length - start)  # int[B]: longest possible hypothesis

  def extend(logits, state, i):
    """Tokens number i + 1 (written at start + i) from logits float[B, K, V]; -> (state, parent int[B, K])."""
    logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
    finished = state["finished"][..., None]
    is_pad = jnp.arange(vocab) == pad_id
    candidate_logp = jnp.where(finished, jnp.where(is_pad, state["logp"][..., None], -jnp.inf),
                               state["logp"][..., None] + logp)
    candidate_length = jnp.where(finished, state["length"][..., None], i + 1)
    penalised = candidate_logp / _length_penalty(candidate_length, alpha)
    _, index = jax.lax.top_k(penalised.reshape(b, k * vocab), k)
    parent, token = index // vocab, (index % vocab).astype(tokens.dtype)
    was_finished = _take(state["finished"], parent)
    position = jnp.clip(start + i, 0, length - 1)[:, None]
    seqs = _take(state["seqs"], parent)
    slots = jnp.arange(k)[None]
    keep = was_finished | (start + i >= length)[:, None]  # a full buffer (prompt to the end) stays as it is
    seqs = seqs.at[rows, slots, position].set(jnp.where(keep, seqs[rows, slots, position], token))
    new_logp = jnp.take_along_axis(candidate_logp.reshape(b, -1), index, axis=1)
    new_length = jnp.take_along_axis(jnp.broadcast_to(candidate_length, (b, k, vocab)).reshape(b, -1), index, axis=1)
    ends = (token == eos_id) | (i + 1 >= max_new[:, None])
    finished = was_finished | ends
    newly = finished & ~was_finished & jnp.isfinite(new_logp)
    scores = jnp.where(newly, new_logp / _length_penalty(new_length, alpha), -jnp.inf)
    pool_scores, pick = jax.lax.top_k(jnp.concatenate([state["pool_scores"], scores], axis=1), k)
    pool_seqs = _take(jnp.concatenate([state["pool_seqs"], seqs], axis=1), pick)
    return dict(seqs=seqs, logp=new_logp, length=new_length, finished=finished, pool_seqs=pool_seqs,
                pool_scores=pool_scores), parent

  def search_over(state, i):
    """bool[B]: no live slot can still beat the K-th pooled hypothesis (log p only falls as text grows)."""
    live = ~state["finished"] & jnp.isfinite(state["logp"])
    longest = jnp.maximum(_length_penalty(i + 1, alpha), _length_penalty(max_new, alpha))[:, None]
    bound = jnp.where(live, state["logp"] / longest, -jnp.inf)
    return jnp.max(bound, axis=1) <= state["pool_scores"][:, -1]

  state, _ = extend(jnp.repeat(first_logits[:, None], k, axis=1), state, 0)
  cache = _map_rows(lambda a, axis: jnp.repeat(a, k, axis=axis), cache)  # slots become rows

  def body(carry):
    i, state, cache = carry
    last = jnp.clip(start + i - 1, 0, length - 1)
    previous = state["seqs"][rows, jnp.arange(k)[None], last[:, None]]
    logits, cache = decoder.step(cache, previous.reshape(-1), jnp.repeat(last, k))
    state, parent = extend(logits.reshape(b, k, vocab), state, i)
    cache = _map_rows(lambda a, axis: jnp.take(a, (rows * k + parent).reshape(-1), axis=axis), cache)
    return i + 1, state, cache

  def not_finished(carry):
    i, state, _ = carry
    return (i < config.max_steps) & ~jnp.all(search_over(state, i))

  _, state, _ = jax.lax.while_loop(not_finished, body, (1, state, cache))
  return state["pool_seqs"], state["pool_scores"]


# --------------------------------------------------------------------------------------------- entry points

def prepare_params(params):
  """The params as `generate` decodes with them: unboxed and, on CPU, with every scanned stack of blocks
  split into its blocks (layers.to_loop_layout; see layers.Stack for why). Idempotent; generate calls it,
  so calling it once beforehand (jitted) saves copying the blocks' weights at every call, at the price of
  holding a second copy of them."""
  params = nn.meta.unbox(params)
  return layers.to_loop_layout(params) if jax.default_backend() == "cpu" else params


def _extend_self_cache(cache, positions: int):
  """`cache` with `positions` more (zero) positions after the ones held in every self-attention key/value
  cache (the leaves under "layers" and a "self" key, float[..., S, head_dim])."""
  def extend(path, leaf):
    keys = [k.key for k in path if isinstance(k, jax.tree_util.DictKey)]
    if "layers" not in keys or "self" not in keys:
      return leaf
    return jnp.pad(leaf, [(0, 0)] * (leaf.ndim - 2) + [(0, positions), (0, 0)])
  return jax.tree_util.tree_map_with_path(extend, cache)


def generate(model, params, images, tokens, start, *, config: DecodeConfig, eos_id: int, pad_id: int = 0,
             rng=None, prompt_len: int = 0):
  """Continues `tokens` int[B, L] from `start` int[B] for a PrefixLM or CoCa conditioned on `images`
  float[B, H, W, 3] (None for a text-only LM: CausalLM or TextTransformer). Returns (tokens int[B, L], scores float[B]):
  the log-likelihood of the generated tokens, or for beam search the best hypothesis' penalised score.

  prompt_len > 0 promises that every prompt fits in tokens[:, :prompt_len] (start <= prompt_len): the
  prefill then encodes only those positions, not the whole buffer (0: the whole buffer). The decoder runs
  with prepare_params(params).
  """
  params = nn.meta.unbox(params)
  image_tokens = None
  if images is not None:
    image_tokens = model.apply({"params": params}, images, method="image_tokens")
  decoder = _Decoder(model, prepare_params(params))
  start = jnp.asarray(start, jnp.int32)
  length = tokens.shape[1]
  prefilled = prompt_len if 0 < prompt_len < length else length
  logits, cache = decoder.prefill(tokens[:, :prefilled], start, image_tokens)
  if prefilled < length:
    cache = _extend_self_cache(cache, length - prefilled)
  first = logits[jnp.arange(tokens.shape[0]), jnp.clip(start - 1, 0, prefilled - 1)]
  if config.method == "beam":
    seqs, scores = _beam_search(decoder, cache, first, tokens, start, config, eos_id, pad_id)
    return seqs[:, 0], scores[:, 0]
  rng = jax.random.key(0) if rng is None else rng
  return _sample(decoder, cache, first, tokens, start, config, eos_id, rng)


def make_generate(model, config: DecodeConfig, eos_id: int, pad_id: int = 0, prompt_len: int = 0):
  """jit of `generate`: fn(params, images, tokens, start, rng) -> (tokens int[B, L], scores float[B]); its
  compiles are program "generate" of compile_log."""
  def fn(params, images, tokens, start, rng):
    return generate(model, params, images, tokens, start, config=config, eos_id=eos_id, pad_id=pad_id, rng=rng,
                    prompt_len=prompt_len)
  return compile_log.named("generate", jax.jit(fn))
