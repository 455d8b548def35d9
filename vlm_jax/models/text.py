"""Text transformer: token embeddings, positions (learned or rotary), pre-norm blocks, final norm, logits.

One module serves four roles, chosen by its fields:
- CLIP text tower (causal, `pool_eos_id` set): the hidden state at each text's EOS token is its embedding.
- CoCa unimodal half (`append_cls=True`): a learned CLS token after the text attends to every real token.
- decoder (`compute_logits=True`): next-token logits, optionally cross-attending to image tokens
  (`cross_attention_every`, optionally gated), or after a prefix of image embeddings with full attention
  over the prefix.
- a Llama (`posemb="rope"`, `norm="rmsnorm"`, `mlp="swiglu"`, `num_kv_heads` < `num_heads`, no biases,
  untied logits): what HF LlamaForCausalLM computes (vlm_jax.pretrained.hf_llama).

Decoding runs this same module with a key/value cache: `prefill` encodes the whole buffer once and
returns the cache, `decode_step` adds one token per row (vlm_jax.decoding drives them).
"""

import flax.linen as nn
import jax.numpy as jnp

from vlm_jax.models import layers

POOL_AT = ("eos", "max_id", "last")
POSEMB_TYPES = ("learned", "rope")


def eos_positions(tokens: jnp.ndarray, eos_id: int) -> jnp.ndarray:
  """int[B]: index of the first EOS token of each row (the tokenizer always keeps one)."""
  return jnp.argmax(tokens == eos_id, axis=-1)


def decode_mask(length: int, position: jnp.ndarray, prefix_end: jnp.ndarray) -> jnp.ndarray:
  """bool[B, 1, 1, S] for one new token per row at absolute `position` int[B]: the keys up to it, and the
  whole prefix before `prefix_end` int[B] (seen bidirectionally, as in prefix_lm_mask)."""
  keys = jnp.arange(length)[None]
  return ((keys <= position[:, None]) | (keys < prefix_end[:, None]))[:, None, None, :]


class TextTransformer(nn.Module):
  """Returns (logits float[B, T, V] or None, out).

  out: "hidden" float[B, T, D] after the final norm (text positions only), "blocks" / "block_NN" (see
  layers.Stack), "pooled" float[B, D] when `pool_eos_id` is set, `append_cls` (the CLS output) or
  `pool_at` is "max_id" (the position of the largest token id: HF CLIP's rule for legacy configs whose
  EOS is the largest id) or "last" (the last position: SigLIP, trained on fixed-length padded text).
  `causal=False` lets every text token attend every other one, padding included (SigLIP's text tower).
  """
  vocab_size: int
  width: int = 96
  depth: int = 3
  num_heads: int = 3
  mlp_dim: int = 384
  max_len: int = 32
  cross_attention_every: int = 0
  cross_attention_gate: bool = False  # tanh(g) on cross-attention, g = 0 at init (Flamingo)
  compute_logits: bool = False
  tied_embedding: bool = True
  append_cls: bool = False
  pool_eos_id: int = -1  # >= 0: pool the hidden state at the first occurrence of this token.
  pool_at: str = "eos"  # one of POOL_AT; "eos" pools only when pool_eos_id >= 0.
  causal: bool = True
  causal_prefix: bool = False  # a `prefix` attended causally like the text (LLaVA), not bidirectionally
  pad_id: int = 0
  norm: str = "layernorm"  # one of layers.NORMS
  mlp: str = "gelu"  # one of layers.MLP_TYPES
  norm_eps: float = 1e-6
  posemb: str = "learned"  # one of POSEMB_TYPES
  rope_theta: float = 10_000.0
  num_kv_heads: int = 0  # 0: num_heads
  head_dim: int = 0  # 0: width // num_heads
  attention_bias: bool = True
  mlp_bias: bool = True
  logits_bias: bool = True  # the untied logits Dense
  scan: bool = True
  remat: str = ""
  dtype: layers.Dtype = jnp.float32
  attention: str = "auto"  # one of layers.ATTENTION

  def setup(self):
    if self.posemb not in POSEMB_TYPES:
      raise ValueError(f"unknown posemb {self.posemb!r}; expected one of {POSEMB_TYPES}")
    self.embed = nn.Embed(
        self.vocab_size, self.width, dtype=self.dtype, name="token_embedding",
        embedding_init=layers.partitioned(nn.initializers.normal(0.02), ("vocab", "embed")))
    if self.posemb == "learned":
      self.pos_embedding = self.param(
          "pos_embedding", layers.partitioned(nn.initializers.normal(0.01), ("position", "embed")),
          (self.max_len, self.width))
    if self.append_cls:
      self.cls = self.param("cls", layers.partitioned(nn.initializers.normal(0.02), ("embed",)),
                            (self.width,))
    self.transformer = layers.Stack(
        self.depth, self.num_heads, self.mlp_dim, cross_attention_every=self.cross_attention_every,
        cross_attention_gate=self.cross_attention_gate, num_kv_heads=self.num_kv_heads, head_dim=self.head_dim,
        norm=self.norm, mlp=self.mlp, norm_eps=self.norm_eps,
        rope_theta=self.rope_theta if self.posemb == "rope" else 0.0, attention_bias=self.attention_bias,
        mlp_bias=self.mlp_bias, scan=self.scan, remat=self.remat, dtype=self.dtype, attention=self.attention)
    self.final_norm = layers.norm(self.norm, "final_norm", self.dtype, self.norm_eps)
    if self.compute_logits and not self.tied_embedding:
      self.logits_dense = layers.dense(self.vocab_size, ("embed", "vocab"), self.dtype, "logits", self.logits_bias)

  def _embed(self, tokens, positions):
    """tokens int[B, T] at text positions int[B|1, T] -> float[B, T, D]."""
    x = self.embed(tokens)
    if self.posemb == "learned":
      x = x + jnp.asarray(self.pos_embedding)[positions].astype(self.dtype)
    return x

  def _logits(self, x):
    return self.embed.attend(x) if self.tied_embedding else self.logits_dense(x)

  def __call__(self, tokens, *, image_tokens=None, prefix=None, prefix_len=None):
    """tokens int[B, T]; image_tokens float[B, N, D] for cross-attention; prefix float[B, P, D] embeddings
    placed before the text (prefix-LM) with `prefix_len` int[B] leading text tokens also in the prefix."""
    b, t = tokens.shape
    if t > self.max_len:
      raise ValueError(f"text length {t} exceeds max_len {self.max_len}")
    x = self._embed(tokens, jnp.arange(t)[None])
    out = {}

    if prefix is not None:
      p = prefix.shape[1]
      x = jnp.concatenate([prefix.astype(self.dtype), x], axis=1)
      text_prefix = jnp.zeros((b,), jnp.int32) if prefix_len is None else prefix_len
      mask = layers.CAUSAL if self.causal_prefix else layers.prefix_lm_mask(p + text_prefix, p + t)
    elif self.append_cls:
      p = 0
      x = jnp.concatenate([x, jnp.tile(self.cls.astype(self.dtype)[None, None], (b, 1, 1))], axis=1)
      # Text rows are causal; the CLS row (last) sees every non-padding token and itself.
      causal = layers.causal_mask(t + 1)
      not_pad = jnp.concatenate([tokens != self.pad_id, jnp.ones((b, 1), bool)], axis=1)
      is_cls_row = (jnp.arange(t + 1) == t)[None, None, :, None]
      mask = jnp.where(is_cls_row, not_pad[:, None, None, :], causal)
    else:
      p = 0
      mask = layers.CAUSAL if self.causal else None

    x, blocks, _ = self.transformer(x, mask=mask, context=image_tokens)
    out.update(blocks)
    x = self.final_norm(x)
    if self.append_cls:
      out["pooled"] = x[:, t]
      x = x[:, :t]
    x = x[:, p:]
    out["hidden"] = x
    if self.pool_at not in POOL_AT:
      raise ValueError(f"unknown pool_at {self.pool_at!r}; expected one of {POOL_AT}")
    if self.pool_at == "max_id":
      out["pooled"] = x[jnp.arange(b), jnp.argmax(tokens, axis=-1)]
    elif self.pool_at == "last":
      out["pooled"] = x[:, -1]
    elif self.pool_eos_id >= 0:
      out["pooled"] = x[jnp.arange(b), eos_positions(tokens, self.pool_eos_id)]

    logits = self._logits(x) if self.compute_logits else None
    return logits, out

  # ------------------------------------------------------------------------------------------- decoding

  def prefill(self, tokens, start, image_tokens=None, prefix=None):
    """Runs the whole buffer once: (logits float[B, L, V] of the text positions, or the hidden states
    float[B, L, D] without compute_logits; cache).

    tokens int[B, L]: prompts left-aligned with anything after them; start int[B]: prompt lengths;
    image_tokens float[B, N, D] to cross-attend; prefix float[B, P, D] before the text (seen whole with
    the prompt). Only positions < start are trusted later: the cache entries after them are overwritten
    as tokens are generated, and masked until then. CoCa's CLS token (appended after the text) is left
    out: causal text rows never see it.
    cache: {"layers": the Stack cache (leaves float[layers, B, ...]), "prefix_end" int[B] (keys before it
    are seen by every query), "offset" int[B] (P, where the text starts)}.
    """
    if not self.causal:
      raise ValueError("a non-causal text tower (causal=False) cannot decode")
    b, length = tokens.shape
    x = self._embed(tokens, jnp.arange(length)[None])
    offset = 0 if prefix is None else prefix.shape[1]
    if prefix is not None:
      x = jnp.concatenate([prefix.astype(self.dtype), x], axis=1)
      prefix_end = jnp.zeros((b,), jnp.int32) if self.causal_prefix else offset + start
      mask = layers.prefix_lm_mask(prefix_end, offset + length)
    else:
      prefix_end = jnp.zeros((b,), jnp.int32)
      mask = layers.CAUSAL
    x, _, stack_cache = self.transformer(x, mask=mask, context=image_tokens,
                                         positions=jnp.arange(offset + length)[None], cache={})
    x = self.final_norm(x[:, offset:])
    cache = {"layers": stack_cache, "prefix_end": prefix_end.astype(jnp.int32),
             "offset": jnp.full((b,), offset, jnp.int32)}
    return (self._logits(x) if self.compute_logits else x), cache

  def decode_step(self, cache, token, position):
    """One new token per row: token int[B] at text position int[B] -> (logits float[B, V] (hidden float[B, D]
    without compute_logits), cache). Writes its keys/values at offset + position and attends every key up
    to it, plus the whole prefix."""
    absolute = cache["offset"] + position
    x = self._embed(token[:, None], position[:, None])
    length = layers.cache_length(cache["layers"])
    x, _, stack_cache = self.transformer(
        x, mask=decode_mask(length, absolute, cache["prefix_end"]), positions=absolute[:, None],
        cache=cache["layers"], cache_index=absolute)
    x = self.final_norm(x)[:, 0]
    return (self._logits(x) if self.compute_logits else x), {**cache, "layers": stack_cache}
