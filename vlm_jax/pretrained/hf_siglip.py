"""HF `SiglipModel` <-> vlm_jax TwoTower (ViT with learned positions and a MAP head, bidirectional text).

HF SigLIP vision: conv patches (with bias), position table [N, D] (no CLS), pre-LN blocks,
`post_layernorm` on every token, then the attention-pooling head (probe -> nn.MultiheadAttention ->
a + MLP(LN(a))), whose output is what `get_image_features` returns: there is no image projection.
In vlm_jax: ViT(posemb="learned", pool="map"), and TwoTower's image projection is the identity (fixed).
Text: token + learned positions, blocks WITHOUT a causal mask, `final_layer_norm`, the LAST position
pooled, then `head` (a Linear with bias) = TwoTower's text projection.
"""

import numpy as np

from vlm_jax import hf_configs
from vlm_jax.errors import UserError
from vlm_jax.models.text import TextTransformer
from vlm_jax.models.two_tower import TwoTower
from vlm_jax.models.vit import ViT
from vlm_jax.pretrained import mapping
from vlm_jax.pretrained.hf_clip import activation, check_square, sub_config
from vlm_jax.pretrained.mapping import Link
from vlm_jax.pretrained.resample import resample_posemb

ARCHITECTURE = "SiglipModel"
VISION_DEFAULTS, TEXT_DEFAULTS = hf_configs.SIGLIP_VISION_DEFAULTS, hf_configs.SIGLIP_TEXT_DEFAULTS


def check_vision(vision: dict) -> None:
  check_square(vision, ARCHITECTURE)
  if not vision["vision_use_head"]:
    raise UserError(f"{ARCHITECTURE}: vision_use_head=False is not supported (get_image_features would "
                    "have no pooled output)")


def _configs(config: dict) -> tuple:
  vision = sub_config(config, "vision_config", VISION_DEFAULTS)
  text = sub_config(config, "text_config", TEXT_DEFAULTS)
  text["projection_size"] = text["projection_size"] or text["hidden_size"]
  check_vision(vision)
  if text["projection_size"] != vision["hidden_size"]:
    raise UserError(f"{ARCHITECTURE}: text projection_size {text['projection_size']} differs from the vision "
                    f"width {vision['hidden_size']}; SigLIP has no image projection to reconcile them")
  return vision, text


def build_vision(vision: dict, scan: bool = True) -> ViT:
  """The vlm_jax ViT of a (completed) SigLIP vision config: SiglipVisionModel, a SiglipModel's vision_config."""
  check_vision(vision)
  return ViT(patch_size=vision["patch_size"], width=vision["hidden_size"], depth=vision["num_hidden_layers"],
             num_heads=vision["num_attention_heads"], mlp_dim=vision["intermediate_size"],
             posemb="learned", cls_token=False, pool="map",
             activation=activation(vision["hidden_act"], ARCHITECTURE), layer_norm_eps=vision["layer_norm_eps"],
             scan=scan)


def build(config: dict, scan: bool = True) -> TwoTower:
  """The vlm_jax TwoTower computing what this SiglipModel config computes (at any image size)."""
  vision, text = _configs(config)
  vit = build_vision(vision, scan)
  tower = TextTransformer(
      vocab_size=text["vocab_size"], width=text["hidden_size"], depth=text["num_hidden_layers"],
      num_heads=text["num_attention_heads"], mlp_dim=text["intermediate_size"],
      max_len=text["max_position_embeddings"], pad_id=text["pad_token_id"] or 0, pool_at="last", causal=False,
      mlp=activation(text["hidden_act"], ARCHITECTURE), norm_eps=text["layer_norm_eps"], scan=scan)
  return TwoTower(vision=vit, text=tower, embed_dim=text["projection_size"],
                  scale_init=float(np.log(10.0)), bias_init=-10.0)


def vision_links(vision: dict, image_size: int, scan: bool = True, hf: str = "vision_model",
                 path: tuple = ("vision",)) -> list:
  """Every parameter of `build_vision(vision, scan)` at `image_size` (under `path`) and its HF tensor (under
  `hf`: "vision_model" in SiglipModel and SiglipVisionModel, "vision_tower" in a Llava,
  "" in a SiglipVisionModel saved by transformers 5)."""
  hf = f"{hf}." if hf else ""
  patch, heads = vision["patch_size"], vision["num_attention_heads"]
  grid_in, grid_out = vision["image_size"] // patch, image_size // patch
  out = mapping.patch_conv(f"{hf}embeddings.patch_embedding", path + ("embedding",), patch, bias=True)
  out += [Link(f"{hf}embeddings.position_embedding.weight", path + ("pos_embedding",),
               lambda p: resample_posemb(p, grid_in, grid_out, num_prefix=0))]
  out += mapping.encoder_layers(f"{hf}encoder.layers", path + ("encoder",), vision["num_hidden_layers"], heads,
                                scan)
  out += mapping.layer_norm(f"{hf}post_layernorm", path + ("encoder_norm",))
  out += [Link(f"{hf}head.probe", path + ("map_head", "probe"))]
  out += mapping.fused_attention(f"{hf}head.attention", path + ("map_head", "attention"), heads)
  out += mapping.layer_norm(f"{hf}head.layernorm", path + ("map_head", "norm"))
  out += mapping.linear(f"{hf}head.mlp.fc1", path + ("map_head", "mlp", "fc1"))
  return out + mapping.linear(f"{hf}head.mlp.fc2", path + ("map_head", "mlp", "fc2"))


def links(config: dict, image_size: int, scan: bool = True) -> list:
  """Every parameter of `build(config, scan)` at `image_size` and its HF tensor."""
  vision, text = _configs(config)
  t = "text_model"
  out = vision_links(vision, image_size, scan)
  # get_image_features is the head output itself: an identity projection keeps TwoTower's shape.
  out += [Link(None, ("image_projection", "kernel"), fixed=lambda shape: np.eye(*shape)),
          Link(None, ("image_projection", "bias"), fixed=np.zeros)]

  out += [Link(f"{t}.embeddings.token_embedding.weight", ("text", "token_embedding", "embedding")),
          Link(f"{t}.embeddings.position_embedding.weight", ("text", "pos_embedding"))]
  out += mapping.encoder_layers(f"{t}.encoder.layers", ("text", "transformer"), text["num_hidden_layers"],
                                text["num_attention_heads"], scan)
  out += mapping.layer_norm(f"{t}.final_layer_norm", ("text", "final_norm"))
  out += mapping.linear(f"{t}.head", ("text_projection",))
  out += [Link("logit_scale", ("head", "logit_scale"), lambda s: s.reshape(()), lambda s: s.reshape(1)),
          Link("logit_bias", ("head", "logit_bias"), lambda s: s.reshape(()), lambda s: s.reshape(1))]
  return out


def export_config(config: dict, image_size: int) -> dict:
  """config.json for the exported model: the imported one at the (possibly new) image size."""
  vision = dict(config.get("vision_config") or {}, image_size=image_size)
  return dict(config, vision_config=vision, architectures=[ARCHITECTURE])
