"""Model registry: `build_model(model_config, vocab)` turns a config into a composed flax module."""

import jax.numpy as jnp
import ml_collections

from vlm_jax.errors import UserError
from vlm_jax.models import layers, text as text_module
from vlm_jax.models.causal_lm import CausalLM
from vlm_jax.models.classifier import ViTClassifier
from vlm_jax.models.coca import CoCa, MultimodalDecoder
from vlm_jax.models.prefix_lm import PrefixLM
from vlm_jax.models.projector import Projector
from vlm_jax.models.text import TextTransformer
from vlm_jax.models.two_tower import TwoTower
from vlm_jax.models.vit import ViT

MODEL_NAMES = ("two_tower", "coca", "prefix_lm", "causal_lm", "vit_classifier")
DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


def _dtype(config):
  if config.dtype not in DTYPES:
    raise UserError(f"config.model.dtype={config.dtype!r} is not one of {sorted(DTYPES)}")
  return DTYPES[config.dtype]


def build_vit(vision: ml_collections.ConfigDict, dtype, remat: str = "", scan: bool = True) -> ViT:
  return ViT(patch_size=vision.patch_size, width=vision.width, depth=vision.depth,
             num_heads=vision.num_heads, mlp_dim=vision.mlp_dim, posemb=vision.posemb,
             cls_token=vision.cls_token, pool=vision.pool, scan=scan, remat=remat, dtype=dtype)


def _text_fields(text: ml_collections.ConfigDict) -> dict:
  """The block fields of config.model.text (absent in configs written before them: today's defaults)."""
  get = lambda key, default: text.get(key, default)
  use_bias = get("use_bias", True)
  fields = dict(norm=get("norm", "layernorm"), mlp=get("mlp", "gelu"), posemb=get("posemb", "learned"),
                rope_theta=float(get("rope_theta", 10_000.0)), num_kv_heads=get("num_kv_heads", 0),
                cross_attention_gate=get("cross_attention_gate", False), attention_bias=use_bias,
                mlp_bias=use_bias, logits_bias=use_bias)
  for key, allowed in (("norm", layers.NORMS), ("mlp", layers.MLP_TYPES), ("posemb", text_module.POSEMB_TYPES)):
    if fields[key] not in allowed:
      raise UserError(f"config.model.text.{key}={fields[key]!r} is not one of {allowed}")
  heads, kv_heads = text.num_heads, fields["num_kv_heads"]
  if kv_heads < 0 or (kv_heads and heads % kv_heads):
    raise UserError(f"config.model.text.num_kv_heads={kv_heads} must divide config.model.text.num_heads={heads}")
  return fields


def build_text(text: ml_collections.ConfigDict, vocab_size: int, max_len: int, dtype, remat: str = "",
               scan: bool = True, **kwargs) -> TextTransformer:
  return TextTransformer(vocab_size=vocab_size, width=text.width, depth=text.depth,
                         num_heads=text.num_heads, mlp_dim=text.mlp_dim, max_len=max_len, scan=scan,
                         remat=remat, dtype=dtype, **{**_text_fields(text), **kwargs})


def build_model(config: ml_collections.ConfigDict, *, vocab_size: int, max_len: int, eos_id: int, pad_id: int):
  """config: the `model` section of a run config."""
  dtype, remat, scan = _dtype(config), config.remat, bool(config.get("scan", True))
  if remat and remat not in ("full", "dots"):
    raise UserError(f"config.model.remat={remat!r}: expected '', 'full' or 'dots'")
  vision = build_vit(config.vision, dtype, remat, scan)
  if config.name == "two_tower":
    return TwoTower(vision=vision,
                    text=build_text(config.text, vocab_size, max_len, dtype, remat, scan, pool_eos_id=eos_id, pad_id=pad_id),
                    embed_dim=config.embed_dim, scale_init=config.logit_scale_init,
                    bias_init=config.logit_bias_init, dtype=dtype)
  if config.name == "coca":
    return CoCa(vision=vision,
                unimodal=build_text(config.text, vocab_size, max_len, dtype, remat, scan, append_cls=True, pad_id=pad_id),
                multimodal=MultimodalDecoder(vocab_size, config.multimodal.depth, config.text.num_heads,
                                             config.text.mlp_dim, remat, dtype, scan=scan),
                embed_dim=config.embed_dim, scale_init=config.logit_scale_init,
                bias_init=config.logit_bias_init, dtype=dtype)
  if config.name == "prefix_lm":
    return PrefixLM(vision=vision,
                    projector=Projector(config.text.width, config.projector.type, config.projector.hidden_dim, dtype),
                    decoder=build_text(config.text, vocab_size, max_len, dtype, remat, scan, compute_logits=True,
                                       tied_embedding=config.text.tied_embedding, pad_id=pad_id),
                    vision_layer=config.vision_layer, dtype=dtype)
  if config.name == "causal_lm":
    return CausalLM(decoder=build_text(config.text, vocab_size, max_len, dtype, remat, scan, compute_logits=True,
                                       tied_embedding=config.text.tied_embedding, pad_id=pad_id))
  if config.name == "vit_classifier":
    return ViTClassifier(vision=vision, num_classes=config.num_classes, dtype=dtype)
  raise UserError(f"config.model.name={config.name!r} is not a known model; expected one of {MODEL_NAMES}")
