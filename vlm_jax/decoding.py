"""Greedy decoding into a fixed-shape token buffer (one compiled program for any prompt lengths).

`logits_fn(tokens int[B, L]) -> float[B, L, V]` is the model with its image features already bound.
This version recomputes the whole sequence at every step; it is exact and simple, and serves evaluation.
"""

import jax
import jax.numpy as jnp


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
