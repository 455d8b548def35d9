"""CoCa: one ViT, a unimodal text half for the contrastive embedding, a multimodal half that captions.

image -> ViT -> tokens ─┬─ pooled -> Dense -> image embedding ──────────┐ contrastive loss
text  -> unimodal causal half + CLS appended at the end -> CLS -> Dense ─┘
caption -> unimodal half -> multimodal half (causal, cross-attends image tokens) -> next-token logits
"""

import flax.linen as nn
import jax.numpy as jnp
import numpy as np

from vlm_jax import flops, losses
from vlm_jax.models import layers, text, towers, two_tower, vit
from vlm_jax.models.two_tower import ContrastiveHead, l2_normalize

# What the rest of vlm_jax needs to know (models/__init__.py lists these declarations).
FEATURES = ("image", "text", "caption")
DATA_TASK = "contrastive_caption"
LOSS_TERMS = ("contrastive", "caption")
EVAL_TYPES = ("retrieval", "hardneg", "captioning", "zero_shot")  # hardneg: by embeddings and by likelihood
DEFAULT_EVALS = ("retrieval", "hardneg", "captioning")  # zero_shot needs a labelled dataset: config.evals
PREDICT_TASKS = ("caption", "label")
GENERATES = True
HF_EXPORT = None  # python -m vlm_jax.export refuses it: transformers has no CoCa


class MultimodalDecoder(nn.Module):
  """Causal blocks over the unimodal text states, each cross-attending image tokens; then logits."""
  vocab_size: int
  depth: int = 2
  num_heads: int = 3
  mlp_dim: int = 384
  remat: str = ""
  dtype: layers.Dtype = jnp.float32
  mlp: str = "gelu"
  norm_eps: float = 1e-6
  scan: bool = True
  attention: str = "auto"  # one of layers.ATTENTION

  def setup(self):
    self.transformer = layers.Stack(self.depth, self.num_heads, self.mlp_dim, cross_attention_every=1,
                                    mlp=self.mlp, norm_eps=self.norm_eps, scan=self.scan, remat=self.remat,
                                    dtype=self.dtype, attention=self.attention)
    self.final_norm = layers.layer_norm("final_norm", self.dtype, self.norm_eps)
    self.logits = layers.dense(self.vocab_size, ("embed", "vocab"), self.dtype, "logits")

  def __call__(self, x, image_tokens):
    x, intermediates, _ = self.transformer(x, mask=layers.CAUSAL, context=image_tokens)
    return self.logits(self.final_norm(x)), intermediates

  def prefill(self, x, image_tokens):
    """Text states float[B, L, D] -> (logits float[B, L, V], cache {"layers": Stack cache}); the image
    tokens' keys/values are projected here, once."""
    x, _, cache = self.transformer(x, mask=layers.CAUSAL, context=image_tokens, cache={})
    return self.logits(self.final_norm(x)), {"layers": cache}

  def decode_step(self, cache, x, position):
    """One text state float[B, D] per row at position int[B] -> (logits float[B, V], cache)."""
    length = layers.cache_length(cache["layers"])
    x, _, stack_cache = self.transformer(
        x[:, None], mask=text.decode_mask(length, position, jnp.zeros_like(position)), cache=cache["layers"],
        cache_index=position)
    return self.logits(self.final_norm(x))[:, 0], {"layers": stack_cache}


class CoCa(nn.Module):
  """`__call__(batch)` -> (outputs, intermediates); batch has "image", "text" (contrastive), "caption" (to generate)."""
  vision: vit.ViT
  unimodal: text.TextTransformer
  multimodal: MultimodalDecoder
  embed_dim: int = 128
  scale_init: float = float(np.log(1 / 0.07))
  bias_init: float = 0.0
  dtype: layers.Dtype = jnp.float32

  def setup(self):
    self.image_projection = layers.dense(self.embed_dim, ("embed", "embed_out"), self.dtype, "image_projection")
    self.text_projection = layers.dense(self.embed_dim, ("embed", "embed_out"), self.dtype, "text_projection")
    self.head = ContrastiveHead(self.scale_init, self.bias_init)

  def encode_image(self, images):
    """-> (normalised float32[B, E], vision intermediates; their "encoded" are the image tokens)."""
    pooled, intermediates = self.vision(images)
    return l2_normalize(layers.at_least_float32(self.image_projection(pooled))), intermediates

  def encode_text(self, tokens):
    """int[B, T] -> (normalised float32[B, E] from the CLS appended to the text, text intermediates)."""
    _, intermediates = self.unimodal(tokens)
    return l2_normalize(layers.at_least_float32(self.text_projection(intermediates["pooled"]))), intermediates

  def image_tokens(self, images):
    """float[B, H, W, 3] -> the tokens the multimodal half cross-attends, float[B, N, D]."""
    return self.vision(images)[1]["encoded"]

  def caption_logits(self, image_tokens, tokens):
    """Next-token logits float[B, T, V] for text `tokens` int[B, T] given precomputed image tokens."""
    _, text_intermediates = self.unimodal(tokens)
    logits, _ = self.multimodal(text_intermediates["hidden"], image_tokens)
    return logits

  def token_log_probs(self, image_tokens, tokens, prefix_len):
    """Teacher-forced log p(tokens[b, k, t + 1] | image b, tokens[b, k, :t + 1]), float32[B, K, T - 1], for K
    texts int[B, K, T] per image given its `image_tokens` float[B, N, D]: each text through both halves as the
    caption trains. prefix_len is not read (the text is causal throughout); the caller drops the prompt's
    positions."""
    del prefix_len
    b, k, t = tokens.shape
    flat = tokens.reshape(b * k, t)
    logits = self.caption_logits(jnp.repeat(image_tokens, k, axis=0), flat[:, :-1])
    return losses.target_log_probs(logits, flat[:, 1:]).reshape(b, k, t - 1)

  def __call__(self, batch):
    image_embedding, image_intermediates = self.encode_image(batch["image"])
    text_embedding, text_intermediates, negative_embedding = two_tower.encode_texts(self, batch)
    logits = self.caption_logits(image_intermediates["encoded"], batch["caption"][:, :-1])
    scale, bias = self.head()
    outputs = dict(image_embedding=image_embedding, text_embedding=text_embedding,
                   logit_scale=scale, logit_bias=bias, logits=logits)
    if negative_embedding is not None:
      outputs["text_negative_embedding"] = negative_embedding
    return outputs, {"image": image_intermediates, "text": text_intermediates}

  def prefill(self, tokens, start, image_tokens):
    """Decoding (vlm_jax.decoding): the text through the unimodal half, then the multimodal half, which
    cross-attends `image_tokens`. -> (logits float[B, L, V], cache)."""
    hidden, unimodal = self.unimodal.prefill(tokens, start)
    logits, multimodal = self.multimodal.prefill(hidden, image_tokens)
    return logits, {"unimodal": unimodal, "multimodal": multimodal}

  def decode_step(self, cache, token, position):
    """token int[B] at text position int[B] -> (logits float[B, V], cache)."""
    hidden, unimodal = self.unimodal.decode_step(cache["unimodal"], token, position)
    logits, multimodal = self.multimodal.decode_step(cache["multimodal"], hidden, position)
    return logits, {"unimodal": unimodal, "multimodal": multimodal}


def build(config, *, vocab_size: int, max_len: int, eos_id: int, pad_id: int, dtype, remat: str,
          scan: bool = True, attention: str = "auto") -> CoCa:
  """config: the run config's `model` section; the multimodal half has the text tower's heads and MLP."""
  del eos_id  # the contrastive text embedding is the appended CLS, not the state at EOS
  return CoCa(vision=towers.build_vit(config.vision, dtype, remat, scan, attention),
              unimodal=towers.build_text(config.text, vocab_size, max_len, dtype, remat, scan, append_cls=True,
                                         pad_id=pad_id, attention=attention),
              multimodal=MultimodalDecoder(vocab_size, config.multimodal.depth, config.text.num_heads,
                                           config.text.mlp_dim, remat, dtype, scan=scan, attention=attention),
              embed_dim=config.embed_dim, scale_init=config.logit_scale_init,
              bias_init=config.logit_bias_init, dtype=dtype)


def forward_flops(config, vocab_size: int, batch_size: int) -> dict:
  """Forward FLOPs of one example by component (flops.py's conventions)."""
  m, t = config.model, config.data.max_text_len
  n_image = (config.data.image_size // m.vision.patch_size) ** 2
  return {"vision": flops.vit_forward_flops(m.vision, config.data.image_size),
          **two_tower.contrastive_flops(m, batch_size),
          # The unimodal half runs twice: on the contrastive text (+ CLS) and on the caption to generate.
          "text": (flops.text_forward_flops(m.text, t + 1, m.text.depth)
                   + flops.text_forward_flops(m.text, t - 1, m.text.depth)),
          "multimodal": flops.text_forward_flops(m.text, t - 1, m.multimodal.depth, cross_every=1,
                                                 cross_keys=n_image, cross_width=m.vision.width,
                                                 vocab_size=vocab_size)}


def predict_fns(model: CoCa) -> dict:
  return {**two_tower.embedding_fns(model),
          "image_tokens": lambda params, images: model.apply({"params": params}, images, method="image_tokens"),
          "token_log_probs": lambda params, image_tokens, tokens, prefix_len: model.apply(
              {"params": params}, image_tokens, tokens, prefix_len, method="token_log_probs")}
