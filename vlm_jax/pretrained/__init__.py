"""Hugging Face checkpoints in and out: `from_hf(directory)` and `to_hf(pretrained, directory)`.

Reads a transformers directory (config.json + safetensors, no torch) for CLIPModel, SiglipModel or
LlamaForCausalLM and returns a `Pretrained`: the vlm_jax module, its params, and the functions that
compute what transformers computes (get_image_features, get_text_features, logits).

    model = from_hf("/path/to/clip", image_size=336)   # positions resampled to the 336 px patch grid
    model.encode_image(images)   # float32[B, H, W, 3], already normalised -> float32[B, D]
    to_hf(model, "/path/to/out")  # config.json + model.safetensors
    llama = from_hf("/path/to/llama")
    llama.generate(token_ids, max_new_tokens=16)  # greedy with the cache, as transformers' generate

Blocks are loaded in the scanned layout (params stacked along axis 0) unless scan=False.
"""

import dataclasses
import functools
from typing import Any, Optional

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
from flax.core import meta

from vlm_jax import decoding, hf_configs
from vlm_jax.errors import UserError
from vlm_jax.pretrained import checkpoint_io, hf_clip, hf_llama, hf_siglip, mapping

CONVERTERS = {hf_clip.ARCHITECTURE: hf_clip, hf_siglip.ARCHITECTURE: hf_siglip,
              hf_llama.ARCHITECTURE: hf_llama}
# Vision towers alone (read by read_params, for config.init_from): their config.json is the vision config.
VISION_TOWERS = {"CLIPVisionModel": hf_clip, "SiglipVisionModel": hf_siglip}


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

  image_size is the size the vision tower's position table fits (None for language models);
  generation: generation_config.json ({} when absent); scan: the blocks' param layout.
  """
  architecture: str
  module: Any
  params: dict
  config: dict
  image_size: Optional[int] = None
  generation: dict = dataclasses.field(default_factory=dict)
  scan: bool = True

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

  def _special_ids(self) -> tuple:
    """(eos, pad) as transformers' generate takes them: generation_config.json over config.json, pad = EOS
    when the model has no pad token."""
    eos = self.generation.get("eos_token_id", self.config.get("eos_token_id"))
    if isinstance(eos, list):
      if len(eos) != 1:
        raise UserError(f"{self.architecture}: several eos_token_id {eos} are not supported by generate")
      eos = eos[0]
    eos = -1 if eos is None else int(eos)
    pad = self.generation.get("pad_token_id", self.config.get("pad_token_id"))
    return eos, eos if pad is None else int(pad)

  @functools.cached_property
  def _generators(self) -> dict:
    return {}

  @functools.cached_property
  def _decode_params(self):
    """decoding.prepare_params of the params, made once (on CPU a second copy of the blocks' weights)."""
    return jax.jit(decoding.prepare_params)(self.params["params"])

  def _generate_fn(self, prompt_len: int, max_new_tokens: int):
    """The jitted greedy decoder for prompts of `prompt_len` and `max_new_tokens` (one compile per pair)."""
    if (prompt_len, max_new_tokens) not in self._generators:
      eos, pad = self._special_ids()
      config = decoding.DecodeConfig(method="greedy", max_steps=max_new_tokens)
      self._generators[prompt_len, max_new_tokens] = decoding.make_generate(self.module, config, eos_id=eos,
                                                                            pad_id=pad, prompt_len=prompt_len)
    return self._generators[prompt_len, max_new_tokens]

  def generate(self, token_ids, max_new_tokens: int) -> np.ndarray:
    """Greedy continuation with the key/value cache, as transformers' `generate(do_sample=False)`.

    token_ids int[B, T] prompts of one length (no padding) -> int32[B, T + n]: each row stops after its
    EOS and is padded after it (pad_token_id, else EOS); n <= max_new_tokens, the longest row's length.
    """
    if self.architecture != hf_llama.ARCHITECTURE:
      raise UserError(f"{self.architecture} is not a causal language model; it cannot generate")
    tokens = np.asarray(token_ids, np.int32)
    if tokens.ndim != 2 or max_new_tokens < 1:
      raise UserError(f"generate takes token_ids int[B, T] and max_new_tokens >= 1, got shape {tokens.shape} "
                      f"and {max_new_tokens}")
    eos, pad = self._special_ids()
    b, t = tokens.shape
    buffer = np.full((b, t + max_new_tokens), pad, np.int32)
    buffer[:, :t] = tokens
    out, _ = self._generate_fn(t, max_new_tokens)(self._decode_params, None, jnp.asarray(buffer),
                                               jnp.full((b,), t, jnp.int32), jax.random.key(0))
    out = np.asarray(out)
    new = out[:, t:]
    lengths = [list(row).index(eos) + 1 if eos in row else max_new_tokens for row in new.tolist()]
    return out[:, :t + max(lengths)]


def _architecture(config: dict, directory: str, supported=CONVERTERS, reader: str = "from_hf") -> str:
  return hf_configs.architecture(config, directory, supported, reader)


def _links(converter, config: dict, image_size: Optional[int], scan: bool) -> list:
  if converter is hf_llama:
    return converter.links(config, scan)
  return converter.links(config, image_size, scan)


def _generation_config(directory: str) -> dict:
  path = os.path.join(directory, "generation_config.json")
  if not os.path.isfile(path):
    return {}
  with open(path) as f:
    return json.load(f)


def _abstract_params(module, architecture: str, image_size: Optional[int]) -> dict:
  """Shapes of the module's params (no memory allocated), boxes removed."""
  if architecture == hf_llama.ARCHITECTURE:
    inputs = (jnp.zeros((1, 1), jnp.int32),)
    variables = jax.eval_shape(lambda: module.init(jax.random.key(0), *inputs))
  else:
    batch = dict(image=jnp.zeros((1, image_size, image_size, 3)), text=jnp.zeros((1, 1), jnp.int32))
    variables = jax.eval_shape(lambda: module.init(jax.random.key(0), batch))
  return meta.unbox(variables)["params"]


def _import(directory: str, image_size: Optional[int], scan: bool) -> tuple:
  """(architecture, config, module, numpy params, image_size) of a CLIPModel, SiglipModel or Llama directory."""
  config = checkpoint_io.read_config(directory)
  architecture = _architecture(config, directory)
  converter = CONVERTERS[architecture]
  if architecture == hf_llama.ARCHITECTURE:
    if image_size is not None:
      raise UserError(f"{architecture} has no vision tower; image_size={image_size} does not apply")
  else:
    vision = vision_config(config, architecture)
    image_size = image_size or vision["image_size"]
    if image_size % vision["patch_size"]:
      raise UserError(f"image_size {image_size} is not a multiple of the patch size {vision['patch_size']}")
  module = converter.build(config, scan)
  abstract = _abstract_params(module, architecture, image_size)
  tensors = checkpoint_io.read_tensors(directory)
  params = mapping.import_params(_links(converter, config, image_size, scan), tensors, abstract, architecture)
  return architecture, config, module, params, image_size


def from_hf(directory: str, image_size: Optional[int] = None, scan: bool = True) -> Pretrained:
  """Load a transformers checkpoint directory as a vlm_jax model (see the module docstring).

  image_size: load a vision tower at another image size than config.json's; its learned position table
  is resampled (bicubic, as transformers' interpolate_pos_encoding) to the new patch grid, CLS row kept.
  """
  architecture, config, module, params, image_size = _import(directory, image_size, scan)
  params = jax.tree.map(jnp.asarray, params)
  return Pretrained(architecture, module, {"params": params}, config, image_size, _generation_config(directory),
                    scan)


def vision_config(config: dict, architecture: str) -> dict:
  """The completed vision config of a CLIP/SigLIP model or vision tower's config.json."""
  if architecture in VISION_TOWERS:
    return {**VISION_TOWERS[architecture].VISION_DEFAULTS, **config}
  return {**CONVERTERS[architecture].VISION_DEFAULTS, **(config.get("vision_config") or {})}


def read_params(directory: str, image_size: Optional[int] = None, scan: bool = True) -> tuple:
  """(architecture, config, params) of a transformers directory, for training from it (config.init_from).

  params (numpy, no "params" key): a CLIPModel's or SiglipModel's TwoTower tree, {"vision": ...} for a
  CLIPVisionModel or SiglipVisionModel (so "vision" names the tower in both), a LlamaForCausalLM's decoder
  tree (TextTransformer: token_embedding, transformer, final_norm, logits). image_size as in from_hf (a
  language model has none: ignored).
  """
  config = checkpoint_io.read_config(directory)
  architecture = _architecture(config, directory, {**CONVERTERS, **VISION_TOWERS}, "config.init_from hf:")
  if architecture == hf_llama.ARCHITECTURE:
    return architecture, config, _import(directory, None, scan)[3]
  if architecture not in VISION_TOWERS:
    return architecture, config, _import(directory, image_size, scan)[3]
  converter = VISION_TOWERS[architecture]
  vision = vision_config(config, architecture)
  image_size = image_size or vision["image_size"]
  if image_size % vision["patch_size"]:
    raise UserError(f"image_size {image_size} is not a multiple of the patch size {vision['patch_size']}")
  module = converter.build_vision(vision, scan)
  abstract = meta.unbox(jax.eval_shape(lambda: module.init(jax.random.key(0),
                                                           jnp.zeros((1, image_size, image_size, 3)))))["params"]
  tensors = checkpoint_io.read_tensors(directory)
  # transformers 4 saved a vision tower's tensors under "vision_model.", transformers 5 at the top level.
  prefix = "vision_model" if any(name.startswith("vision_model.") for name in tensors) else ""
  params = mapping.import_params(converter.vision_links(vision, image_size, scan, hf=prefix), tensors,
                                 {"vision": abstract}, architecture)
  return architecture, config, params


def to_hf(pretrained: Pretrained, directory: str) -> None:
  """Write `pretrained` as config.json + model.safetensors (float32) that from_hf and transformers read."""
  converter = CONVERTERS[pretrained.architecture]
  tensors = mapping.export_params(_links(converter, pretrained.config, pretrained.image_size, pretrained.scan),
                                  pretrained.params["params"], pretrained.architecture)
  config = converter.export_config(pretrained.config, pretrained.image_size)
  checkpoint_io.write_checkpoint(directory, config, tensors)
