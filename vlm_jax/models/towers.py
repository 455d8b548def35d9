"""The towers every composed model is built from, each from its section of the model config.

`config.model.vision` -> `build_vit`, `config.model.text` -> `build_text`; `dtype_of` reads
`config.model.dtype`. The composed models' `build` functions (two_tower.py, coca.py, ...) call these.
"""

import jax.numpy as jnp
import ml_collections

from vlm_jax.errors import UserError
from vlm_jax.models import layers, text as text_module
from vlm_jax.models.text import TextTransformer
from vlm_jax.models.vit import STEMS, ViT

# float64 is for numerical tests (needs jax_enable_x64): "same math" compared without float32 rounding noise.
DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float64": jnp.float64}
REMAT = ("", "full", "dots")


def dtype_of(model_config: ml_collections.ConfigDict):
  """The compute dtype config.model.dtype names (the parameters' own dtype is param_dtype_of's)."""
  if model_config.dtype not in DTYPES:
    raise UserError(f"config.model.dtype={model_config.dtype!r} is not one of {sorted(DTYPES)}")
  return DTYPES[model_config.dtype]


def param_dtype_of(model_config: ml_collections.ConfigDict):
  """The storage dtype of the parameters, config.model.param_dtype (absent in configs written before it: float32)."""
  name = model_config.get("param_dtype", "float32")
  if name not in DTYPES:
    raise UserError(f"config.model.param_dtype={name!r} is not one of {sorted(DTYPES)}")
  return DTYPES[name]


def attention_of(model_config: ml_collections.ConfigDict) -> str:
  """config.model.attention (absent in configs written before it: "auto")."""
  kind = model_config.get("attention", "auto")
  if kind not in layers.ATTENTION:
    raise UserError(f"config.model.attention={kind!r} is not one of {layers.ATTENTION}")
  return kind


def remat_of(model_config: ml_collections.ConfigDict) -> str:
  if model_config.remat not in REMAT:
    raise UserError(f"config.model.remat={model_config.remat!r}: expected '', 'full' or 'dots'")
  return model_config.remat


def vit_fields(vision: ml_collections.ConfigDict) -> dict:
  """The block fields of config.model.vision (absent in configs written before them: today's defaults);
  a CLIP or SigLIP tower from Hugging Face sets them (vlm_jax.llava_recipe)."""
  fields = dict(activation=vision.get("activation", "gelu"), layer_norm_eps=float(vision.get("layer_norm_eps", 1e-6)),
                pre_norm=bool(vision.get("pre_norm", False)), stem=vision.get("stem", "patch"), stem_width=int(vision.get("stem_width", 0)))
  if fields["stem"] not in STEMS:
    raise UserError(f"config.model.vision.stem={fields['stem']!r} is not one of {STEMS}")
  if fields["activation"] not in layers.ACTIVATIONS:
    raise UserError(f"config.model.vision.activation={fields['activation']!r} is not one of "
                    f"{sorted(layers.ACTIVATIONS)}")
  return fields


def build_vit(vision: ml_collections.ConfigDict, dtype, remat: str = "", scan: bool = True,
              attention: str = "auto") -> ViT:
  return ViT(patch_size=vision.patch_size, width=vision.width, depth=vision.depth,
             num_heads=vision.num_heads, mlp_dim=vision.mlp_dim, posemb=vision.posemb,
             cls_token=vision.cls_token, pool=vision.pool, scan=scan, remat=remat, dtype=dtype, attention=attention,
             **vit_fields(vision))


def text_fields(text: ml_collections.ConfigDict) -> dict:
  """The block fields of config.model.text (absent in configs written before them: today's defaults)."""
  get = lambda key, default: text.get(key, default)
  use_bias = get("use_bias", True)
  fields = dict(norm=get("norm", "layernorm"), mlp=get("mlp", "gelu"), posemb=get("posemb", "learned"),
                rope_theta=float(get("rope_theta", 10_000.0)), num_kv_heads=get("num_kv_heads", 0),
                cross_attention_gate=get("cross_attention_gate", False), attention_bias=use_bias,
                mlp_bias=use_bias, logits_bias=use_bias, norm_eps=float(get("norm_eps", 1e-6)),
                head_dim=get("head_dim", 0))
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
                         remat=remat, dtype=dtype, **{**text_fields(text), **kwargs})
