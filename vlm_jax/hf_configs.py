"""What transformers' config.json files mean, without jax: defaults, activation names, and the LLaVA recipe.

A saved config lists only some values (older transformers, sub-configs), so every reader completes it with
the library's defaults here. vlm_jax.pretrained (weights in and out) and config files (configs/llava_hf.py,
which must load without jax) both read HF configs through this module.

`set_llava_model(config, vision_dir, lm_dir)` sets a run config's model and image preprocessing so that a
prefix-LM computes what LLaVA-1.5 computes with that vision tower and that Llama (see its docstring).
"""

import json
import os

from vlm_jax.errors import UserError

# HF activation name -> layers.ACTIVATIONS key (HF "gelu" is the exact erf GELU; flax's default is tanh).
HF_ACTIVATIONS = {"quick_gelu": "quick_gelu", "gelu": "gelu_exact", "gelu_pytorch_tanh": "gelu",
                  "gelu_new": "gelu", "relu": "relu"}
# The inverse, for export: the HF name of each vlm_jax activation.
VLM_JAX_ACTIVATIONS = {"quick_gelu": "quick_gelu", "gelu_exact": "gelu", "gelu": "gelu_pytorch_tanh", "relu": "relu"}

CLIP_VISION_DEFAULTS = dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
                            num_channels=3, image_size=224, patch_size=32, hidden_act="quick_gelu",
                            layer_norm_eps=1e-5)
CLIP_TEXT_DEFAULTS = dict(vocab_size=49408, hidden_size=512, intermediate_size=2048, num_hidden_layers=12,
                          num_attention_heads=8, max_position_embeddings=77, hidden_act="quick_gelu",
                          layer_norm_eps=1e-5, pad_token_id=1, eos_token_id=49407)
SIGLIP_VISION_DEFAULTS = dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
                              num_channels=3, image_size=224, patch_size=16, hidden_act="gelu_pytorch_tanh",
                              layer_norm_eps=1e-6, vision_use_head=True)
SIGLIP_TEXT_DEFAULTS = dict(vocab_size=32000, hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
                            num_attention_heads=12, max_position_embeddings=64, hidden_act="gelu_pytorch_tanh",
                            layer_norm_eps=1e-6, pad_token_id=1, projection_size=None)
LLAMA = "LlamaForCausalLM"
LLAMA_DEFAULTS = dict(vocab_size=32000, hidden_size=4096, intermediate_size=11008, num_hidden_layers=32,
                      num_attention_heads=32, num_key_value_heads=None, hidden_act="silu", rms_norm_eps=1e-6,
                      tie_word_embeddings=False, attention_bias=False, mlp_bias=False, head_dim=None,
                      rope_parameters=None, rope_theta=None, rope_scaling=None, max_position_embeddings=2048)

# Vision towers by architecture: (tower kind, the model's config.json holds the vision config under
# "vision_config" (a two-tower model) or is the vision config itself (a vision tower alone)).
VISION_ARCHITECTURES = {"CLIPModel": ("clip", True), "CLIPVisionModel": ("clip", False),
                        "SiglipModel": ("siglip", True), "SiglipVisionModel": ("siglip", False)}
VISION_DEFAULTS = {"clip": CLIP_VISION_DEFAULTS, "siglip": SIGLIP_VISION_DEFAULTS}
# config.json's model_type, for configs written without an `architectures` list.
MODEL_TYPES = {"clip": "CLIPModel", "siglip": "SiglipModel", "llama": LLAMA, "clip_vision_model": "CLIPVisionModel",
               "siglip_vision_model": "SiglipVisionModel"}

# The images' normalisation by name (config.data.normalization, vlm_jax.data.images): per-channel mean and std
# after scaling to [0, 1].
NORMALIZATIONS = {"clip": ((0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)),
                  "siglip": ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))}
PREPROCESSOR = "preprocessor_config.json"


def read_config(directory: str, name: str = "config.json") -> dict:
  """A parsed JSON file of a transformers checkpoint directory (UserError naming it when absent)."""
  path = os.path.join(directory, name)
  if not os.path.isfile(path):
    raise UserError(f"{directory} has no {name}; expected a transformers checkpoint directory")
  with open(path) as f:
    try:
      return json.load(f)
    except json.JSONDecodeError as e:
      raise UserError(f"{path} is not valid JSON: {e}") from None


def architecture(config: dict, directory: str, supported, reader: str) -> str:
  """The one architecture in `supported` that config.json names, or a UserError naming what it names."""
  names = list(config.get("architectures") or [])
  if not names and config.get("model_type") in MODEL_TYPES:
    names = [MODEL_TYPES[config["model_type"]]]
  for name in names:
    if name in supported:
      return name
  found = names or [config.get("model_type", "nothing")]
  raise UserError(f"{directory}: architecture {', '.join(map(str, found))} is not supported; "
                  f"{reader} reads {', '.join(supported)}")


def activation(name: str, architecture_name: str) -> str:
  if name not in HF_ACTIVATIONS:
    raise UserError(f"{architecture_name}: activation {name!r} is not supported; expected one of "
                    f"{sorted(HF_ACTIVATIONS)}")
  return HF_ACTIVATIONS[name]


def llama(config: dict) -> dict:
  """A LlamaForCausalLM config.json completed with LlamaConfig's defaults; unsupported features raise UserError."""
  c = {**LLAMA_DEFAULTS, **config}
  c["num_key_value_heads"] = c["num_key_value_heads"] or c["num_attention_heads"]
  c["head_dim"] = c["head_dim"] or c["hidden_size"] // c["num_attention_heads"]
  # transformers >= 5 writes `rope_parameters`; older configs `rope_theta` and `rope_scaling`.
  rope = dict(c["rope_parameters"] or c["rope_scaling"] or {})
  rope_type = rope.get("rope_type", rope.get("type", "default"))
  if rope_type != "default":
    raise UserError(f"{LLAMA}: rope_type {rope_type!r} is not supported (only the default rotary embedding)")
  c["rope_theta"] = float(rope.get("rope_theta") or c["rope_theta"] or 10_000.0)
  if c["hidden_act"] != "silu":
    raise UserError(f"{LLAMA}: hidden_act {c['hidden_act']!r} is not supported (only silu)")
  return c


def vision_tower(directory: str) -> tuple:
  """(architecture, "clip" or "siglip", the completed vision config) of a CLIP/SigLIP model or tower directory."""
  config = read_config(directory)
  name = architecture(config, directory, VISION_ARCHITECTURES, "the vision tower")
  kind, nested = VISION_ARCHITECTURES[name]
  vision = {**VISION_DEFAULTS[kind], **((config.get("vision_config") or {}) if nested else config)}
  for key in ("image_size", "patch_size"):
    if not isinstance(vision[key], int):
      raise UserError(f"{directory}: non-square vision {key}={vision[key]!r} is not supported")
  return name, kind, vision


def preprocessing(directory: str, kind: str, image_size: int) -> dict:
  """The vision tower's image preprocessing from preprocessor_config.json: {image_size, normalization} (the crop
  size, else the size; config.data.normalization "clip" or "siglip", told apart by the mean and std); without the
  file, the tower's config.json size and its family's normalisation."""
  path = os.path.join(directory, PREPROCESSOR)
  if not os.path.isfile(path):
    return dict(image_size=image_size, normalization=kind)
  pre = read_config(directory, PREPROCESSOR)
  size = pre.get("crop_size") if pre.get("do_center_crop", kind == "clip") else pre.get("size")
  if isinstance(size, dict):
    size = size.get("height", size.get("shortest_edge"))
  mean = tuple(float(x) for x in pre.get("image_mean", NORMALIZATIONS[kind][0]))
  std = tuple(float(x) for x in pre.get("image_std", NORMALIZATIONS[kind][1]))
  named = [name for name, (m, s) in NORMALIZATIONS.items()
           if max(abs(a - b) for a, b in zip(m + s, mean + std)) < 1e-6]
  if not named:
    raise UserError(f"{path}: image_mean {list(mean)} / image_std {list(std)} are neither CLIP's nor SigLIP's "
                    f"normalisation (config.data.normalization is one of {sorted(NORMALIZATIONS)})")
  return dict(image_size=int(size or image_size), normalization=named[0])


def set_llava_model(config, vision_dir: str, lm_dir: str) -> dict:
  """Sets config.model (and config.data's image fields) for a prefix-LM made of these HF parts, as LLaVA-1.5:

  - vision: the CLIP or SigLIP tower as it is (learned positions, with CLS for CLIP; quick_gelu or gelu;
    CLIP's pre-norm; the tower's epsilon; its pooling, unused here but kept so the tower exports whole);
    features from HF's hidden_states[-2] (the penultimate block), CLS dropped;
  - projector: Linear-GELU-Linear to the LM's width (LLaVA-1.5's mlp2x_gelu);
  - decoder: the Llama (RMSNorm, SwiGLU, RoPE, grouped-query heads), the image and the prompt attended
    causally as in transformers' LlavaForConditionalGeneration.
  Returns the preprocessing it set (`preprocessing`).
  """
  name, kind, vision = vision_tower(vision_dir)
  lm_config = read_config(lm_dir)
  architecture(lm_config, lm_dir, (LLAMA,), "the language model")
  lm = llama(lm_config)
  if lm["attention_bias"] != lm["mlp_bias"]:
    raise UserError(f"{lm_dir}: attention_bias={lm['attention_bias']} with mlp_bias={lm['mlp_bias']} is not "
                    "supported (config.model.text.use_bias sets both)")
  m = config.model
  m.name = "prefix_lm"
  m.vision_layer = -2
  m.prefix_attention = "causal"
  v = m.vision
  v.patch_size, v.width, v.depth = vision["patch_size"], vision["hidden_size"], vision["num_hidden_layers"]
  v.num_heads, v.mlp_dim = vision["num_attention_heads"], vision["intermediate_size"]
  v.activation, v.layer_norm_eps = activation(vision["hidden_act"], name), float(vision["layer_norm_eps"])
  if kind == "clip":
    v.posemb, v.cls_token, v.pool, v.pre_norm = "learned_with_cls", True, "cls", True
  else:
    if not vision["vision_use_head"]:
      raise UserError(f"{vision_dir}: vision_use_head=False is not supported")
    v.posemb, v.cls_token, v.pool, v.pre_norm = "learned", False, "map", False
  m.projector.type, m.projector.hidden_dim = "mlp", 0
  t = m.text
  t.width, t.depth, t.num_heads = lm["hidden_size"], lm["num_hidden_layers"], lm["num_attention_heads"]
  t.num_kv_heads, t.head_dim, t.mlp_dim = lm["num_key_value_heads"], lm["head_dim"], lm["intermediate_size"]
  t.norm, t.mlp, t.posemb, t.rope_theta = "rmsnorm", "swiglu", "rope", lm["rope_theta"]
  t.norm_eps, t.use_bias, t.tied_embedding = float(lm["rms_norm_eps"]), bool(lm["attention_bias"]), bool(
      lm["tie_word_embeddings"])
  t.cross_attention_gate = False
  pre = preprocessing(vision_dir, kind, vision["image_size"])
  # SigLIP So400m/14 at 384 px: its stride-14 convolution sees 27 x 27 patches and ignores the last 6 pixel rows
  # and columns; vlm_jax patchifies whole multiples of the patch, so the same 729 patches come from 378 px.
  pre["image_size"] -= pre["image_size"] % vision["patch_size"]
  config.data.image_size = pre["image_size"]
  config.data.normalization = pre["normalization"]
  n_image = (pre["image_size"] // vision["patch_size"]) ** 2
  config.data.max_text_len = min(2048, lm["max_position_embeddings"]) - n_image
  if config.data.max_text_len < 2:
    raise UserError(f"{lm_dir}: max_position_embeddings={lm['max_position_embeddings']} leaves no room for text "
                    f"after {n_image} image tokens")
  return pre
