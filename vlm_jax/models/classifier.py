"""A ViT with a linear classification head: the supervised baseline beside zero-shot classification.

image -> ViT -> pooled float[B, D] -> Dense -> class logits float32[B, C]   (softmax cross-entropy)
"""

import flax.linen as nn
import jax.numpy as jnp

from vlm_jax import flops
from vlm_jax.models import layers, towers, vit

# What the rest of vlm_jax needs to know (models/__init__.py lists these declarations).
FEATURES = ("image", "label")
DATA_TASK = "classification"
LOSS_TERMS = ("classification",)
EVAL_TYPES = ("classification",)
DEFAULT_EVALS = EVAL_TYPES
PREDICT_TASKS = ()  # scored by python -m vlm_jax.evaluate; predict takes image-and-text requests
GENERATES = False
HF_EXPORT = None  # python -m vlm_jax.export refuses it: not exported


class ViTClassifier(nn.Module):
  """`__call__(batch)` returns ({"class_logits": float32[B, C]}, {"image": vision intermediates})."""
  vision: vit.ViT
  num_classes: int
  dtype: layers.Dtype = jnp.float32

  @nn.compact
  def __call__(self, batch):
    pooled, intermediates = self.vision(batch["image"])
    # Zero-initialised head (big_vision's choice): every class starts at the same logit.
    head = nn.Dense(self.num_classes, dtype=self.dtype, name="head",
                    kernel_init=layers.partitioned(nn.initializers.zeros, ("embed", "classes")),
                    bias_init=layers.partitioned(nn.initializers.zeros, ("classes",)))
    return {"class_logits": layers.at_least_float32(head(pooled))}, {"image": intermediates}


def build(config, *, vocab_size: int, max_len: int, eos_id: int, pad_id: int, dtype, remat: str,
          scan: bool = True, attention: str = "auto") -> ViTClassifier:
  """config: the run config's `model` section (its `vision` tower and `num_classes`)."""
  del vocab_size, max_len, eos_id, pad_id  # no text
  return ViTClassifier(vision=towers.build_vit(config.vision, dtype, remat, scan, attention),
                       num_classes=config.num_classes, dtype=dtype)


def forward_flops(config, vocab_size: int, batch_size: int) -> dict:
  """Forward FLOPs of one example: the ViT and the linear head."""
  del vocab_size, batch_size
  m = config.model
  return {"vision": flops.vit_forward_flops(m.vision, config.data.image_size),
          "head": flops.dense_flops(1, m.vision.width, m.num_classes)}


def predict_fns(model: ViTClassifier) -> dict:
  return {"classify": lambda params, images: model.apply({"params": params}, {"image": images})[0]["class_logits"]}
