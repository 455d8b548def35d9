"""Model registry: `build_model(model_config, vocab)` turns a config into a composed flax module."""

import jax.numpy as jnp
import ml_collections

from vlm_jax.errors import UserError
from vlm_jax.models.causal_lm import CausalLM
from vlm_jax.models.classifier import ViTClassifier
from vlm_jax.models.coca import CoCa, MultimodalDecoder
from vlm_jax.models.prefix_lm import PrefixLM
from vlm_jax.models.projector import Projector
from vlm_jax.models.text import TextTransformer
from vlm_jax.models.two_tower import TwoTower
from vlm_jax.models.vit import ViT

MODEL_NAMES = ("two_tower", "coca", "prefix_lm", "causal_lm", "vit_classifier")
# float64 is for numerical tests (needs jax_enable_x64): "same math" compared without float32 rounding noise.
DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float64": jnp.float64}


def _dtype(config):
  if config.dtype not in DTYPES:
    raise UserError(f"config.model.dtype={config.dtype!r} is not one of {sorted(DTYPES)}")
  return DTYPES[config.dtype]


def build_vit(vision: ml_collections.ConfigDict, dtype, remat: str = "") -> ViT:
  return ViT(patch_size=vision.patch_size, width=vision.width, depth=vision.depth,
             num_heads=vision.num_heads, mlp_dim=vision.mlp_dim, posemb=vision.posemb,
             cls_token=vision.cls_token, pool=vision.pool, remat=remat, dtype=dtype)


def build_text(text: ml_collections.ConfigDict, vocab_size: int, max_len: int, dtype, remat: str = "",
               **kwargs) -> TextTransformer:
  return TextTransformer(vocab_size=vocab_size, width=text.width, depth=text.depth,
                         num_heads=text.num_heads, mlp_dim=text.mlp_dim, max_len=max_len, remat=remat,
                         dtype=dtype, **kwargs)


def build_model(config: ml_collections.ConfigDict, *, vocab_size: int, max_len: int, eos_id: int, pad_id: int):
  """config: the `model` section of a run config."""
  dtype, remat = _dtype(config), config.remat
  if remat and remat not in ("full", "dots"):
    raise UserError(f"config.model.remat={remat!r}: expected '', 'full' or 'dots'")
  vision = build_vit(config.vision, dtype, remat)
  if config.name == "two_tower":
    return TwoTower(vision=vision,
                    text=build_text(config.text, vocab_size, max_len, dtype, remat, pool_eos_id=eos_id, pad_id=pad_id),
                    embed_dim=config.embed_dim, scale_init=config.logit_scale_init,
                    bias_init=config.logit_bias_init, dtype=dtype)
  if config.name == "coca":
    return CoCa(vision=vision,
                unimodal=build_text(config.text, vocab_size, max_len, dtype, remat, append_cls=True, pad_id=pad_id),
                multimodal=MultimodalDecoder(vocab_size, config.multimodal.depth, config.text.num_heads,
                                             config.text.mlp_dim, remat, dtype),
                embed_dim=config.embed_dim, scale_init=config.logit_scale_init,
                bias_init=config.logit_bias_init, dtype=dtype)
  if config.name == "prefix_lm":
    return PrefixLM(vision=vision,
                    projector=Projector(config.text.width, config.projector.type, config.projector.hidden_dim, dtype),
                    decoder=build_text(config.text, vocab_size, max_len, dtype, remat, compute_logits=True,
                                       tied_embedding=config.text.tied_embedding, pad_id=pad_id),
                    vision_layer=config.vision_layer, dtype=dtype)
  if config.name == "causal_lm":
    return CausalLM(decoder=build_text(config.text, vocab_size, max_len, dtype, remat, compute_logits=True,
                                       tied_embedding=config.text.tied_embedding, pad_id=pad_id))
  if config.name == "vit_classifier":
    return ViTClassifier(vision=vision, num_classes=config.num_classes, dtype=dtype)
  raise UserError(f"config.model.name={config.name!r} is not a known model; expected one of {MODEL_NAMES}")
