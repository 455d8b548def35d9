"""Two-tower contrastive model (CLIP with the softmax loss, SigLIP with the sigmoid loss).

image -> ViT -> pooled -> Dense -> L2-normalised image embedding float[B, E]
text  -> causal TextTransformer -> hidden state at EOS -> Dense -> L2-normalised text embedding float[B, E]
"""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from vlm_jax import flops
from vlm_jax.models import layers, text, towers, vit

# What the rest of vlm_jax needs to know (models/__init__.py lists these declarations).
FEATURES = ("image", "text")
DATA_TASK = "contrastive_caption"
LOSS_TERMS = ("contrastive",)
EVAL_TYPES = ("retrieval", "hardneg", "zero_shot")
# zero_shot needs a labelled dataset to classify, so it runs only where config.evals asks for it.
DEFAULT_EVALS = ("retrieval", "hardneg")
PREDICT_TASKS = ("label",)
GENERATES = False
HF_EXPORT = "clip"  # python -m vlm_jax.export writes it as a CLIPModel (when its towers are CLIP-shaped)


def l2_normalize(x, eps=1e-6):
  return x / jnp.sqrt(jnp.sum(jnp.square(x), axis=-1, keepdims=True) + eps)


class ContrastiveHead(nn.Module):
  """The learned temperature (log scale) and, for SigLIP, bias of the contrastive logits, returned in float32
  whatever the parameters' dtype (the loss is float32)."""
  scale_init: float = float(np.log(1 / 0.07))
  bias_init: float = 0.0

  @nn.compact
  def __call__(self):
    scale = self.param("logit_scale", layers.partitioned(nn.initializers.constant(self.scale_init), ()), ())
    bias = self.param("logit_bias", layers.partitioned(nn.initializers.constant(self.bias_init), ()), ())
    return layers.at_least_float32(scale), layers.at_least_float32(bias)


def encode_texts(model, batch):
  """model.encode_text of batch["text"] and, where the batch has them, its hard negatives batch["text_negative"]
  in the same call: (text embedding, text intermediates, negative embedding or None)."""
  if "text_negative" not in batch:
    return (*model.encode_text(batch["text"]), None)
  n = batch["text"].shape[0]
  embedding, intermediates = model.encode_text(jnp.concatenate([batch["text"], batch["text_negative"]]))
  intermediates = jax.tree.map(lambda x: x[:n] if getattr(x, "ndim", 0) and x.shape[0] == 2 * n else x,
                               intermediates)
  return embedding[:n], intermediates, embedding[n:]


class TwoTower(nn.Module):
  """CLIP / SigLIP. `__call__(batch)` returns (outputs, intermediates); outputs feed the contrastive loss."""
  vision: vit.ViT
  text: text.TextTransformer
  embed_dim: int = 128
  scale_init: float = float(np.log(1 / 0.07))
  bias_init: float = 0.0
  dtype: layers.Dtype = jnp.float32

  def setup(self):
    self.image_projection = layers.dense(self.embed_dim, ("embed", "embed_out"), self.dtype, "image_projection")
    self.text_projection = layers.dense(self.embed_dim, ("embed", "embed_out"), self.dtype, "text_projection")
    self.head = ContrastiveHead(self.scale_init, self.bias_init)

  def encode_image(self, images):
    """float[B, H, W, 3] -> (normalised float32[B, E], vision intermediates)."""
    pooled, intermediates = self.vision(images)
    return l2_normalize(layers.at_least_float32(self.image_projection(pooled))), intermediates

  def encode_text(self, tokens):
    """int[B, T] -> (normalised float32[B, E], text intermediates)."""
    _, intermediates = self.text(tokens)
    return l2_normalize(layers.at_least_float32(self.text_projection(intermediates["pooled"]))), intermediates

  def __call__(self, batch):
    image_embedding, image_intermediates = self.encode_image(batch["image"])
    text_embedding, text_intermediates, negative_embedding = encode_texts(self, batch)
    scale, bias = self.head()
    outputs = dict(image_embedding=image_embedding, text_embedding=text_embedding,
                   logit_scale=scale, logit_bias=bias)
    if negative_embedding is not None:
      outputs["text_negative_embedding"] = negative_embedding
    return outputs, {"image": image_intermediates, "text": text_intermediates}


def build(config, *, vocab_size: int, max_len: int, eos_id: int, pad_id: int, dtype, remat: str,
          scan: bool = True, attention: str = "auto") -> TwoTower:
  """config: the run config's `model` section."""
  return TwoTower(vision=towers.build_vit(config.vision, dtype, remat, scan, attention),
                  text=towers.build_text(config.text, vocab_size, max_len, dtype, remat, scan, pool_eos_id=eos_id,
                                         pad_id=pad_id, attention=attention),
                  embed_dim=config.embed_dim, scale_init=config.logit_scale_init,
                  bias_init=config.logit_bias_init, dtype=dtype)


def contrastive_flops(model_config, batch_size: int) -> dict:
  """The two projections to the embedding and this example's row of the B x B contrastive logits."""
  m = model_config
  projections = flops.dense_flops(1, m.vision.width, m.embed_dim) + flops.dense_flops(1, m.text.width, m.embed_dim)
  return {"projections": projections, "contrastive_logits": 2 * batch_size * m.embed_dim}


def forward_flops(config, vocab_size: int, batch_size: int) -> dict:
  """Forward FLOPs of one example by component (flops.py's conventions)."""
  m = config.model
  return {"vision": flops.vit_forward_flops(m.vision, config.data.image_size),
          **contrastive_flops(m, batch_size),
          "text": flops.text_forward_flops(m.text, config.data.max_text_len, m.text.depth)}


def embedding_fns(model) -> dict:
  """The contrastive models' prediction functions: both embeddings and the learned logit scale."""
  apply = lambda params, method, *args: model.apply({"params": params}, *args, method=method)
  return {"encode_image": lambda params, images: apply(params, lambda m, x: m.encode_image(x)[0], images),
          "encode_text": lambda params, tokens: apply(params, lambda m, t: m.encode_text(t)[0], tokens),
          "logit_scale": lambda params: apply(params, lambda m: m.head()[0])}


def predict_fns(model: TwoTower) -> dict:
  return embedding_fns(model)
