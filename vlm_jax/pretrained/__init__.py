"""Hugging Face checkpoints in and out: `from_hf(directory)` and `to_hf(pretrained, directory)`.

Reads a transformers directory (config.json + safetensors, no torch) for CLIPModel, SiglipModel or
LlamaForCausalLM and returns a `Pretrained`: the vlm_jax module, its params, and the functions that
compute what transformers computes (get_image_features, get_text_features, logits).

    model = from_hf("/path/to/clip", image_size=336)   # positions resampled to the 336 px patch grid
    model.encode_image(images)   # float32[B, H, W, 3], already normalised -> float32[B, D]
    to_hf(model, "/path/to/out")  # config.json + model.safetensors
"""

import dataclasses
import functools
from typing import Any, Optional

import jax
import jax.numpy as jnp
from flax.core import meta

from vlm_jax.errors import UserError
from vlm_jax.pretrained import checkpoint_io, hf_clip, hf_llama, hf_siglip, mapping

CONVERTERS = {hf_clip.ARCHITECTURE: hf_clip, hf_siglip.ARCHITECTURE: hf_siglip,
              hf_llama.ARCHITECTURE: hf_llama}
# config.json's model_type, for configs written without an `architectures` list.
MODEL_TYPES = {"clip": hf_clip.ARCHITECTURE, "siglip": hf_siglip.ARCHITECTURE, "llama": hf_llama.ARCHITECTURE}


def _image_features(model, images):
  """TwoTower method: float[B, H, W, 3] -> unnormalised projected pooled image features float[B, E]."""
  pooled, _ = model.vision(images)
  return model.image_projection(pooled)


def _text_features(model, tokens):
  """TwoTower method: int[B, T] -> unnormalised projected pooled text features float[B, E]."""
  _, out = model.text(tokens)
  return model.text_projection(out["pooled"])


@dataclasses.dataclass
class Pretrained:
  """An imported model: `module` (flax), `params` ({"params": ...}), the HF `config` it came from.

  image_size is the size the vision tower's position table fits (None for language models).
  """
  architecture: str
  module: Any
  params: dict
  config: dict
  image_size: Optional[int] = None

  def _require_two_tower(self, what: str):
    if self.architecture == hf_llama.ARCHITECTURE:
      raise UserError(f"{self.architecture} has no {what}; it is a language model (use logits)")

  @functools.cached_property
  def _jitted(self):
    apply = self.module.apply
    return dict(image=jax.jit(functools.partial(apply, method=_image_features)),
                text=jax.jit(functools.partial(apply, method=_text_features)),
                logits=jax.jit(lambda p, t: apply(p, t)[0]))

  def encode_image(self, images) -> jnp.ndarray:
    """float32[B, S, S, 3] normalised images, S = image_size -> float32[B, D], as get_image_features."""
    self._require_two_tower("image tower")
    images = jnp.asarray(images, jnp.float32)
    if images.shape[1:3] != (self.image_size, self.image_size):
      raise UserError(f"images are {images.shape[1]}x{images.shape[2]}; this model was loaded for "
                      f"{self.image_size}x{self.image_size} (pass image_size= to from_hf)")
    return self._jitted["image"](self.params, images)

  def encode_text(self, token_ids) -> jnp.ndarray:
    """int32[B, T] -> float32[B, D], as get_text_features."""
    self._require_two_tower("text tower")
    return self._jitted["text"](self.params, jnp.asarray(token_ids, jnp.int32))

  def logits(self, token_ids) -> jnp.ndarray:
    """int32[B, T] -> next-token logits float32[B, T, V] (causal language models only)."""
    if self.architecture != hf_llama.ARCHITECTURE:
      raise UserError(f"{self.architecture} is not a causal language model; it has no logits")
    return self._jitted["logits"](self.params, jnp.asarray(token_ids, jnp.int32))


def _architecture(config: dict, directory: str) -> str:
  """The one supported architecture config.json names, or a UserError naming what it names."""
  names = list(config.get("architectures") or [])
  if not names and config.get("model_type") in MODEL_TYPES:
    names = [MODEL_TYPES[config["model_type"]]]
  for name in names:
    if name in CONVERTERS:
      return name
  found = names or [config.get("model_type", "nothing")]
  raise UserError(f"{directory}: architecture {', '.join(map(str, found))} is not supported; "
                  f"from_hf reads {', '.join(CONVERTERS)}")


def _links(converter, config: dict, image_size: Optional[int]) -> list:
  return converter.links(config) if converter is hf_llama else converter.links(config, image_size)


def _abstract_params(module, architecture: str, image_size: Optional[int]) -> dict:
  """Shapes of the module's params (no memory allocated), boxes removed."""
  if architecture == hf_llama.ARCHITECTURE:
    inputs = (jnp.zeros((1, 1), jnp.int32),)
    variables = jax.eval_shape(lambda: module.init(jax.random.key(0), *inputs))
  else:
    batch = dict(image=jnp.zeros((1, image_size, image_size, 3)), text=jnp.zeros((1, 1), jnp.int32))
    variables = jax.eval_shape(lambda: module.init(jax.random.key(0), batch))
  return meta.unbox(variables)["params"]


def from_hf(directory: str, image_size: Optional[int] = None) -> Pretrained:
  """Load a transformers checkpoint directory as a vlm_jax model (see the module docstring).

  image_size: load a vision tower at another image size than config.json's; its learned position table
  is resampled (bicubic, as transformers' interpolate_pos_encoding) to the new patch grid, CLS row kept.
  """
  config = checkpoint_io.read_config(directory)
  architecture = _architecture(config, directory)
  converter = CONVERTERS[architecture]
  if architecture == hf_llama.ARCHITECTURE:
    if image_size is not None:
      raise UserError(f"{architecture} has no vision tower; image_size={image_size} does not apply")
  else:
    vision = {**converter.VISION_DEFAULTS, **(config.get("vision_config") or {})}
    image_size = image_size or vision["image_size"]
    if image_size % vision["patch_size"]:
      raise UserError(f"image_size {image_size} is not a multiple of the patch size {vision['patch_size']}")
  module = converter.build(config)
  abstract = _abstract_params(module, architecture, image_size)
  tensors = checkpoint_io.read_tensors(directory)
  params = mapping.import_params(_links(converter, config, image_size), tensors, abstract, architecture)
  params = jax.tree.map(jnp.asarray, params)
  return Pretrained(architecture, module, {"params": params}, config, image_size)


def to_hf(pretrained: Pretrained, directory: str) -> None:
  """Write `pretrained` as config.json + model.safetensors (float32) that from_hf and transformers read."""
  converter = CONVERTERS[pretrained.architecture]
  tensors = mapping.export_params(_links(converter, pretrained.config, pretrained.image_size),
                                  pretrained.params["params"], pretrained.architecture)
  config = converter.export_config(pretrained.config, pretrained.image_size)
  checkpoint_io.write_checkpoint(directory, config, tensors)
