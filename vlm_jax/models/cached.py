"""Key/value-cached forward passes of the text decoders, reading the SAME param tree as the flax modules.

The flax modules recompute every position at every decoding step; here the per-layer keys and values are
kept in a fixed-shape cache, so a step costs one position instead of the whole sequence. The layers are
not rewritten where they need not be: LayerNorms, MLPs, embeddings and the logits Dense are the flax
modules of layers.py / text.py applied to the sub-trees of the model's params; only attention is
re-implemented, because `layers.MultiHeadAttention` projects keys and values itself and cannot take them
from a cache.

Supported decoders (`for_model`):
  - PrefixLM: [image tokens ; text] through `decoder`, prefix (image + prompt) seen bidirectionally.
  - CoCa: text through `unimodal` (causal; its CLS token only matters for the embedding), then
    `multimodal`, which cross-attends the image tokens; their keys/values are projected once, at prefill.
  - a bare TextTransformer with compute_logits=True: a plain causal LM (used by the benchmark).

Cache layout: "self" is a list over layers of (key, value) float[B, heads, S, head_dim] where S = P + L
(P image-prefix tokens, L the text buffer length); "cross" a list of (key, value) float[B, heads, N,
head_dim] for the blocks that cross-attend. Heads before positions: the attention matmuls then read the
cache as it lies (a [B, S, heads, head_dim] cache cost a transpose of every layer's keys and values at
every step, ~40% of a step on CPU); "prefix_end" int[B]: keys before it are visible to every
query (PrefixLM's bidirectional prefix; 0 for causal decoders).
"""

import dataclasses
from typing import Any, Optional

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from vlm_jax.models import layers
from vlm_jax.models.coca import CoCa
from vlm_jax.models.prefix_lm import PrefixLM
from vlm_jax.models.text import TextTransformer


@dataclasses.dataclass(frozen=True)
class Stage:
  """A `layers.Transformer` at params[path] followed by the LayerNorm at params[norm_path]."""
  path: tuple
  norm_path: tuple
  layer_norm_eps: float
  activation: str


@dataclasses.dataclass(frozen=True)
class Layout:
  """Where a decoder's pieces sit in the model's param tree, and the hyper-parameters not in the params."""
  embedding_path: tuple  # the TextTransformer holding token_embedding and pos_embedding
  stages: tuple  # Stage, ...: run in order on the text states
  logits_path: Optional[tuple]  # a Dense producing the logits; None: tied to the token embedding
  dtype: Any
  has_prefix: bool  # the image tokens are prepended to the text (PrefixLM)


def _get(tree, path):
  for key in path:
    tree = tree[key]
  return tree


def _text_stage(module: TextTransformer, path: tuple) -> Stage:
  return Stage(path + ("transformer",), path + ("final_norm",), module.layer_norm_eps, module.activation)


def for_model(model) -> Layout:
  """The cached-decoding layout of a PrefixLM, a CoCa or a TextTransformer with compute_logits."""
  if isinstance(model, PrefixLM):
    decoder = model.decoder
    return Layout(("decoder",), (_text_stage(decoder, ("decoder",)),),
                  None if decoder.tied_embedding else ("decoder", "logits"), decoder.dtype, True)
  if isinstance(model, CoCa):
    # MultimodalDecoder builds its Transformer and final LayerNorm with the library defaults.
    multimodal = Stage(("multimodal", "transformer"), ("multimodal", "final_norm"),
                       layers.Transformer.layer_norm_eps, layers.Transformer.activation)
    return Layout(("unimodal",), (_text_stage(model.unimodal, ("unimodal",)), multimodal),
                  ("multimodal", "logits"), model.multimodal.dtype, False)
  if isinstance(model, TextTransformer) and model.compute_logits:
    return Layout((), (_text_stage(model, ()),), None if model.tied_embedding else ("logits",),
                  model.dtype, False)
  raise TypeError(f"no cached decoder for {type(model).__name__}: expected PrefixLM, CoCa or a "
                  "TextTransformer with compute_logits=True")


# --------------------------------------------------------------------------------------------- layers

def _layer_norm(params, x, eps, dtype):
  return nn.LayerNorm(epsilon=eps, dtype=dtype).apply({"params": params}, x)


def _project(params, name, x, dtype):
  """float[B, T, D] -> float[B, T, heads, head_dim], as in layers.MultiHeadAttention."""
  kernel, bias = params[f"{name}_kernel"].astype(dtype), params[f"{name}_bias"].astype(dtype)
  return jnp.einsum("btd,dhk->bthk", x.astype(dtype), kernel) + bias


def _project_kv(params, name, x, dtype):
  """Keys or values in the cache layout: float[B, T, D] -> float[B, heads, T, head_dim]."""
  kernel, bias = params[f"{name}_kernel"].astype(dtype), params[f"{name}_bias"].astype(dtype)
  return jnp.einsum("btd,dhk->bhtk", x.astype(dtype), kernel) + bias[:, None, :]


def _attend(params, q, k, v, mask, dtype):
  """q float[B, Tq, H, Dh] over k, v float[B, H, Tk, Dh]; mask bool[B, 1, Tq, Tk] or None -> float[B, Tq, D]."""
  logits = jnp.einsum("bqhd,bhkd->bhqk", q, k) / np.sqrt(q.shape[-1]).astype(dtype)
  if mask is not None:
    logits = jnp.where(mask, logits, jnp.finfo(logits.dtype).min)
  # float32 softmax, as in layers.MultiHeadAttention.
  weights = jax.nn.softmax(logits.astype(jnp.float32), axis=-1).astype(dtype)
  out = jnp.einsum("bhqk,bhkd->bqhd", weights, v)
  return jnp.einsum("bqhd,hde->bqe", out, params["out_kernel"].astype(dtype)) + params["out_bias"].astype(dtype)


def _block(params, x, mask, write_kv, cross_kv, stage: Stage, dtype):
  """One pre-LN TransformerBlock; write_kv(k, v) -> (all keys, all values) the queries attend."""
  norm = lambda name, h: _layer_norm(params[name], h, stage.layer_norm_eps, dtype)
  h = norm("norm_self_attention", x)
  attention = params["self_attention"]
  q = _project(attention, "query", h, dtype)
  k, v = (_project_kv(attention, name, h, dtype) for name in ("key", "value"))
  k, v = write_kv(k, v)
  x = x + _attend(attention, q, k, v, mask, dtype)
  if "cross_attention" in params:
    q = _project(params["cross_attention"], "query", norm("norm_cross_attention", x), dtype)
    x = x + _attend(params["cross_attention"], q, *cross_kv, None, dtype)
  mlp_dim = params["mlp"]["fc1"]["kernel"].shape[-1]
  h = layers.MlpBlock(mlp_dim, stage.activation, dtype).apply({"params": params["mlp"]}, norm("norm_mlp", x))
  return x + h, (k, v)


def _blocks(params):
  return [params[name] for name in sorted(params) if name.startswith("block_")]


def _cross_kv(layout: Layout, params, image_tokens):
  """Keys/values of the image tokens for every cross-attending block, in stage order."""
  kv = []
  for stage in layout.stages:
    for block in _blocks(_get(params, stage.path)):
      if "cross_attention" in block:
        kv.append(tuple(_project_kv(block["cross_attention"], n, image_tokens, layout.dtype) for n in ("key", "value")))
  return kv


def _run_stages(layout: Layout, params, x, mask, write_kv, cross_kv):
  """All stages; write_kv(layer_index, k, v). Returns (x, [(k, v) per self-attention layer])."""
  caches, layer, cross = [], 0, iter(cross_kv)
  for stage in layout.stages:
    for block in _blocks(_get(params, stage.path)):
      kv = next(cross) if "cross_attention" in block else None
      x, kv_all = _block(block, x, mask, lambda k, v, i=layer: write_kv(i, k, v), kv, stage, layout.dtype)
      caches.append(kv_all)
      layer += 1
    x = _layer_norm(_get(params, stage.norm_path), x, stage.layer_norm_eps, layout.dtype)
  return x, caches


def _embed(layout: Layout, params, tokens, positions):
  """tokens int[B, T] at positions int[B, T] -> float[B, T, D], as TextTransformer does."""
  text = _get(params, layout.embedding_path)
  vocab, width = text["token_embedding"]["embedding"].shape
  x = nn.Embed(vocab, width, dtype=layout.dtype).apply({"params": text["token_embedding"]}, tokens)
  return x + text["pos_embedding"][positions].astype(layout.dtype)


def _logits(layout: Layout, params, x):
  text = _get(params, layout.embedding_path)
  if layout.logits_path is None:
    vocab, width = text["token_embedding"]["embedding"].shape
    return nn.Embed(vocab, width, dtype=layout.dtype).apply(
        {"params": text["token_embedding"]}, x, method="attend")
  dense = _get(params, layout.logits_path)
  return nn.Dense(dense["kernel"].shape[-1], dtype=layout.dtype).apply({"params": dense}, x)


# --------------------------------------------------------------------------------------------- API

def prefill(layout: Layout, params, image_tokens, tokens, start):
  """Runs the whole buffer once: (logits float[B, L, V] of the text positions, cache).

  image_tokens float[B, N, D] (None for a text-only LM); tokens int[B, L] prompts left-aligned with
  anything after them; start int[B] prompt lengths. Only positions < start are trusted by later steps:
  the cache entries after them are overwritten as tokens are generated, and masked until then.
  """
  b, length = tokens.shape
  x = _embed(layout, params, tokens, jnp.arange(length)[None])
  offset = 0
  if layout.has_prefix:
    offset = image_tokens.shape[1]
    x = jnp.concatenate([image_tokens.astype(layout.dtype), x], axis=1)
    prefix_end = offset + start
    mask = layers.prefix_lm_mask(prefix_end, offset + length)
  else:
    prefix_end = jnp.zeros((b,), jnp.int32)
    mask = layers.causal_mask(length)
  cross_kv = _cross_kv(layout, params, image_tokens) if image_tokens is not None and not layout.has_prefix else []
  x, self_kv = _run_stages(layout, params, x, mask, lambda i, k, v: (k, v), cross_kv)
  cache = {"self": self_kv, "cross": cross_kv, "prefix_end": prefix_end.astype(jnp.int32),
           "offset": jnp.int32(offset)}
  return _logits(layout, params, x[:, offset:]), cache


def step(layout: Layout, params, cache, token, position):
  """One new token per row: token int[B] at text position int[B] -> (logits float[B, V], cache).

  Writes the token's keys/values at `position` (after the image prefix) and attends every key up to it,
  plus the whole prefix.
  """
  rows = jnp.arange(token.shape[0])
  x = _embed(layout, params, token[:, None], position[:, None])
  absolute = cache["offset"] + position
  keys = jnp.arange(cache["self"][0][0].shape[2])
  mask = (keys[None, :] <= absolute[:, None]) | (keys[None, :] < cache["prefix_end"][:, None])
  mask = mask[:, None, None, :]

  def write_kv(i, k, v):
    k_cache, v_cache = cache["self"][i]
    # k, v float[B, H, 1, Dh]: row b's entry goes to position absolute[b] of its cache.
    return k_cache.at[rows, :, absolute].set(k[:, :, 0]), v_cache.at[rows, :, absolute].set(v[:, :, 0])

  x, self_kv = _run_stages(layout, params, x, mask, write_kv, cache["cross"])
  return _logits(layout, params, x)[:, 0], {**cache, "self": self_kv}


def reorder(cache, index):
  """The cache of rows `index` int[R] (beam search keeps the caches of the surviving beams).

  Only the self-attention entries move: beams of one example share their image keys/values and prefix.
  """
  return {**cache, "self": jax.tree.map(lambda a: a[index], cache["self"])}
