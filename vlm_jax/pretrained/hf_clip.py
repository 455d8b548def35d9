"""HF `CLIPModel` <-> vlm_jax TwoTower (ViT with CLS + learned positions incl. CLS, causal text tower).

HF CLIP vision: conv patches (no bias), class_embedding, position table [1 + N, D] that includes the CLS
position, `pre_layrnorm`, pre-LN blocks, `post_layernorm` on the pooled CLS, `visual_projection` (no bias).
In vlm_jax: ViT(posemb="learned_with_cls", cls_token, pre_norm, pool="cls"); its final LayerNorm is
`post_layernorm` (applied to every token, which leaves the CLS row exactly as HF's pooled output).
Text: token + learned positions, causal blocks, `final_layer_norm`, pooled at EOS, `text_projection`.
"""

import numpy as np

from vlm_jax import hf_configs
from vlm_jax.errors import UserError
from vlm_jax.models.text import TextTransformer
from vlm_jax.models.two_tower import TwoTower
from vlm_jax.models.vit import ViT
from vlm_jax.pretrained import mapping
from vlm_jax.pretrained.mapping import Link
from vlm_jax.pretrained.resample import resample_posemb

ARCHITECTURE = "CLIPModel"
VISION_DEFAULTS, TEXT_DEFAULTS = hf_configs.CLIP_VISION_DEFAULTS, hf_configs.CLIP_TEXT_DEFAULTS
# Legacy CLIP configs say eos_token_id=2; transformers then pools at the argmax of the token ids.
LEGACY_EOS_ID = 2


def sub_config(config: dict, key: str, defaults: dict) -> dict:
  """config[key] (a saved sub-config lists only non-default values) completed with `defaults`."""
  return {**defaults, **(config.get(key) or {})}


activation = hf_configs.activation


def check_square(vision: dict, architecture: str) -> None:
  """HF allows [h, w] image and patch sizes; the towers here assume square ones."""
  for key in ("image_size", "patch_size"):
    if not isinstance(vision[key], int):
      raise UserError(f"{architecture}: non-square vision_config.{key}={vision[key]!r} is not supported")
  if vision["num_channels"] != 3:
    raise UserError(f"{architecture}: num_channels={vision['num_channels']} is not supported (RGB only)")


def build_vision(vision: dict, scan: bool = True) -> ViT:
  """The vlm_jax ViT of a (completed) CLIP vision config: CLIPVisionModel, a CLIPModel's vision_config."""
  check_square(vision, ARCHITECTURE)
  return ViT(patch_size=vision["patch_size"], width=vision["hidden_size"], depth=vision["num_hidden_layers"],
             num_heads=vision["num_attention_heads"], mlp_dim=vision["intermediate_size"],
             posemb="learned_with_cls", cls_token=True, pool="cls",
             activation=activation(vision["hidden_act"], ARCHITECTURE),
             layer_norm_eps=vision["layer_norm_eps"], pre_norm=True, scan=scan)


def build(config: dict, scan: bool = True) -> TwoTower:
  """The vlm_jax TwoTower computing what this CLIPModel config computes (at any image size)."""
  vision = sub_config(config, "vision_config", VISION_DEFAULTS)
  text = sub_config(config, "text_config", TEXT_DEFAULTS)
  eos = text["eos_token_id"]
  if not isinstance(eos, int):
    raise UserError(f"{ARCHITECTURE}: a list eos_token_id={eos!r} is not supported")
  vit = build_vision(vision, scan)
  tower = TextTransformer(
      vocab_size=text["vocab_size"], width=text["hidden_size"], depth=text["num_hidden_layers"],
      num_heads=text["num_attention_heads"], mlp_dim=text["intermediate_size"],
      max_len=text["max_position_embeddings"], pad_id=text["pad_token_id"] or 0,
      pool_eos_id=eos, pool_at="max_id" if eos == LEGACY_EOS_ID else "eos",
      mlp=activation(text["hidden_act"], ARCHITECTURE), norm_eps=text["layer_norm_eps"], scan=scan)
  return TwoTower(vision=vit, text=tower, embed_dim=config.get("projection_dim", 512),
                  scale_init=config.get("logit_scale_init_value", 2.6592))


def vision_links(vision: dict, image_size: int, scan: bool = True, hf: str = "vision_model",
                 path: tuple = ("vision",)) -> list:
  """Every parameter of `build_vision(vision, scan)` at `image_size` (under `path`) and its HF tensor (under
  `hf`: "vision_model" in CLIPModel and CLIPVisionModel, "vision_tower" in a Llava,
  "" in a CLIPVisionModel saved by transformers 5)."""
  hf = f"{hf}." if hf else ""
  patch = vision["patch_size"]
  grid_in, grid_out = vision["image_size"] // patch, image_size // patch
  out = mapping.patch_conv(f"{hf}embeddings.patch_embedding", path + ("embedding",), patch, bias=False)
  out += [
      Link(f"{hf}embeddings.class_embedding", path + ("cls",),
           lambda c: c.reshape(1, 1, -1), lambda c: c.reshape(-1)),
      # Exported as it is: a resampled table is written with the new image_size in config.json.
      Link(f"{hf}embeddings.position_embedding.weight", path + ("pos_embedding",),
           lambda p: resample_posemb(p, grid_in, grid_out, num_prefix=1)),
  ]
  out += mapping.layer_norm(f"{hf}pre_layrnorm", path + ("pre_norm",))
  out += mapping.encoder_layers(f"{hf}encoder.layers", path + ("encoder",), vision["num_hidden_layers"],
                                vision["num_attention_heads"], scan)
  return out + mapping.layer_norm(f"{hf}post_layernorm", path + ("encoder_norm",))


def links(config: dict, image_size: int, scan: bool = True) -> list:
  """Every parameter of `build(config, scan)` at `image_size` and its HF tensor."""
  vision = sub_config(config, "vision_config", VISION_DEFAULTS)
  text = sub_config(config, "text_config", TEXT_DEFAULTS)
  t = "text_model"
  out = vision_links(vision, image_size, scan)
  out += mapping.linear("visual_projection", ("image_projection",), bias=False)

  out += [Link(f"{t}.embeddings.token_embedding.weight", ("text", "token_embedding", "embedding")),
          Link(f"{t}.embeddings.position_embedding.weight", ("text", "pos_embedding"))]
  out += mapping.encoder_layers(f"{t}.encoder.layers", ("text", "transformer"), text["num_hidden_layers"],
                                text["num_attention_heads"], scan)
  out += mapping.layer_norm(f"{t}.final_layer_norm", ("text", "final_norm"))
  out += mapping.linear("text_projection", ("text_projection",), bias=False)
  out += [Link("logit_scale", ("head", "logit_scale"), lambda s: s.reshape(()), lambda s: s.reshape(())),
          Link(None, ("head", "logit_bias"), fixed=np.zeros)]
  return out


def export_config(config: dict, image_size: int) -> dict:
  """config.json for the exported model: the imported one at the (possibly new) image size."""
  vision = dict(config.get("vision_config") or {}, image_size=image_size)
  return dict(config, vision_config=vision, architectures=[ARCHITECTURE])
