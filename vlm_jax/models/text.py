"""Text transformer: token embeddings, learned positions, pre-LN blocks, final LayerNorm, logits.

One module serves three roles, chosen by its fields:
- CLIP text tower (causal, `pool_eos_id` set): the hidden state at each text's EOS token is its embedding.
- CoCa unimodal half (`append_cls=True`): a learned CLS token after the text attends to every real token.
- decoder (`compute_logits=True`): next-token logits, optionally cross-attending to image tokens
  (`cross_attention_every`), or after a prefix of image embeddings with full attention over the prefix.
"""

import flax.linen as nn
import jax.numpy as jnp

from vlm_jax.models import layers

POOL_AT = ("eos", "max_id", "last")


def eos_positions(tokens: jnp.ndarray, eos_id: int) -> jnp.ndarray:
  """int[B]: index of the first EOS token of each row (the tokenizer always keeps one)."""
  return jnp.argmax(tokens == eos_id, axis=-1)


class TextTransformer(nn.Module):
  """Returns (logits float[B, T, V] or None, out).

  out: "hidden" float[B, T, D] after the final LayerNorm (text positions only), "block_NN",
  "pooled" float[B, D] when `pool_eos_id` is set, `append_cls` (the CLS output) or `pool_at` is
  "max_id" (the position of the largest token id: HF CLIP's rule for legacy configs whose EOS is the
  largest id) or "last" (the last position: SigLIP, trained on fixed-length padded text).
  `causal=False` lets every text token attend every other one, padding included (SigLIP's text tower).
  """
  vocab_size: int
  width: int = 96
  depth: int = 3
  num_heads: int = 3
  mlp_dim: int = 384
  max_len: int = 32
  cross_attention_every: int = 0
  compute_logits: bool = False
  tied_embedding: bool = True
  append_cls: bool = False
  pool_eos_id: int = -1  # >= 0: pool the hidden state at the first occurrence of this token.
  pool_at: str = "eos"  # one of POOL_AT; "eos" pools only when pool_eos_id >= 0.
  causal: bool = True
  pad_id: int = 0
  activation: str = "gelu"
  layer_norm_eps: float = 1e-6
  remat: str = ""
  dtype: layers.Dtype = jnp.float32

  def setup(self):
    self.embed = nn.Embed(
        self.vocab_size, self.width, dtype=self.dtype, name="token_embedding",
        embedding_init=layers.partitioned(nn.initializers.normal(0.02), ("vocab", "embed")))
    self.pos_embedding = self.param(
        "pos_embedding", layers.partitioned(nn.initializers.normal(0.01), ("position", "embed")),
        (self.max_len, self.width))
    if self.append_cls:
      self.cls = self.param("cls", layers.partitioned(nn.initializers.normal(0.02), ("embed",)),
                            (self.width,))
    self.transformer = layers.Transformer(
        self.depth, self.num_heads, self.mlp_dim, cross_attention_every=self.cross_attention_every,
        activation=self.activation, layer_norm_eps=self.layer_norm_eps, remat=self.remat, dtype=self.dtype)
    self.final_norm = layers.layer_norm("final_norm", self.dtype, self.layer_norm_eps)
    if self.compute_logits and not self.tied_embedding:
      self.logits_dense = layers.dense(self.vocab_size, ("embed", "vocab"), self.dtype, "logits")

  def __call__(self, tokens, *, image_tokens=None, prefix=None, prefix_len=None):
    """tokens int[B, T]; image_tokens float[B, N, D] for cross-attention; prefix float[B, P, D] embeddings
    placed before the text (prefix-LM) with `prefix_len` int[B] leading text tokens also in the prefix."""
    b, t = tokens.shape
    if t > self.max_len:
      raise ValueError(f"text length {t} exceeds max_len {self.max_len}")
    x = self.embed(tokens) + self.pos_embedding[:t].astype(self.dtype)[None]
    out = {}

    if prefix is not None:
      p = prefix.shape[1]
      x = jnp.concatenate([prefix.astype(self.dtype), x], axis=1)
      text_prefix = jnp.zeros((b,), jnp.int32) if prefix_len is None else prefix_len
      mask = layers.prefix_lm_mask(p + text_prefix, p + t)
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
      mask = layers.causal_mask(t) if self.causal else None

    x, blocks = self.transformer(x, mask=mask, context=image_tokens)
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

    logits = None
    if self.compute_logits:
      logits = self.embed.attend(x) if self.tied_embedding else self.logits_dense(x)
    return logits, out
