"""A vlm_jax training workdir -> a transformers directory (`python -m vlm_jax.export --workdir DIR --out OUT`).

- A prefix-LM (model HF_EXPORT "llava") with a CLIP- or SigLIP-shaped vision tower and a Llama decoder becomes
  a `LlavaForConditionalGeneration`: config.json, model.safetensors (float32), generation_config.json, the
  tokenizer (tokenizer.json, tokenizer_config.json, chat_template.jinja) and the processor
  (processor_config.json, preprocessor_config.json), which `LlavaForConditionalGeneration.from_pretrained`
  and `AutoProcessor.from_pretrained` load. Its greedy `generate` on the processor's chat template of
  [user: image + prompt] writes what `python -m vlm_jax.predict --prompt` writes.
- A two-tower model (HF_EXPORT "clip") whose towers CLIP can represent becomes a `CLIPModel`.
- Anything else is refused with one UserError line naming what transformers cannot represent.

The tensors come from the same `Link` tables that import them (vlm_jax.pretrained.hf_clip, hf_siglip,
hf_llama; mapping.export_params), so import and export cannot drift. Writing needs neither torch nor
transformers (safetensors.numpy and JSON).

The image placeholder: vlm_jax puts the image tokens before the text, never in it, so its vocabulary has no
image token; the export appends `<image>` after the vocabulary (a zero embedding row that transformers
overwrites with the image features, a zero lm_head row, and `suppress_tokens` so that generate never
writes it), and the chat template writes `<image>` then BOS then the user's text: the token sequence
[image tokens, BOS, prompt] of vlm_jax's prefix (pipeline.make_vqa_prompt).
"""

import os

import numpy as np
from flax import traverse_util

from vlm_jax import checkpointing, hf_configs, models, run_config
from vlm_jax.data import tokenizer as tokenizer_lib
from vlm_jax.errors import UserError
from vlm_jax.pretrained import checkpoint_io, hf_clip, hf_llama, hf_siglip, hf_tokenizer, mapping

LLAVA = "LlavaForConditionalGeneration"
IMAGE_TOKEN = "<image>"
# The user's turn: the image, BOS, the text parts; the assistant's: its text, EOS. Later user turns: text only.
CHAT_TEMPLATE = (
    "{%- for message in messages -%}"
    "{%- if message['role'] == 'user' and loop.first -%}{{ '" + IMAGE_TOKEN + "' }}{{ bos_token }}{%- endif -%}"
    "{%- if message['content'] is string -%}{{ message['content'] }}"
    "{%- else -%}{%- for part in message['content'] -%}{%- if part['type'] == 'text' -%}{{ part['text'] }}"
    "{%- endif -%}{%- endfor -%}{%- endif -%}"
    "{%- if message['role'] == 'assistant' -%}{{ eos_token }}{%- endif -%}"
    "{%- endfor -%}")
# vlm_jax.data.images.resize_shorter resizes with PIL's bicubic filter (PIL.Image.Resampling.BICUBIC = 3).
PIL_BICUBIC = 3


def _loop_layout(tree) -> bool:
  return isinstance(tree, dict) and any(key.startswith("block_") or _loop_layout(value) for key, value in tree.items())


def _refuse(what: str, problems: list) -> None:
  if problems:
    raise UserError(f"transformers cannot represent this {what}: " + "; ".join(problems))


# ------------------------------------------------------------------------------------------- vision tower

def vision_tower(vision, image_size: int, two_tower: bool, embed_dim: int = 0) -> tuple:
  """(hf module, "clip" or "siglip", the HF vision config) of config.model.vision, or a UserError listing
  every field a CLIP or SigLIP vision tower cannot have."""
  v = vision
  activation = v.get("activation", "gelu")
  problems = []
  if activation not in hf_configs.VLM_JAX_ACTIVATIONS:
    problems.append(f"config.model.vision.activation={activation!r}")
  if v.get("stem", "patch") != "patch":
    problems.append(f"config.model.vision.stem={v.stem!r} (CLIP and SigLIP embed patches: stem='patch')")
  if v.posemb == "learned_with_cls" and v.cls_token:
    kind, module = "clip", hf_clip
    if not v.get("pre_norm", False):
      problems.append("config.model.vision.pre_norm=False (CLIP normalises the embedded tokens: pre_norm=True)")
    if v.pool == "map":
      problems.append("config.model.vision.pool='map' (a MAP head on a CLIP tower)")
    elif two_tower and v.pool != "cls":
      problems.append(f"config.model.vision.pool={v.pool!r} (CLIP pools its CLS token: pool='cls')")
  elif v.posemb == "learned" and not v.cls_token:
    kind, module = "siglip", hf_siglip
    if v.get("pre_norm", False):
      problems.append("config.model.vision.pre_norm=True (SigLIP has no norm before its blocks)")
    if v.pool != "map":
      problems.append(f"config.model.vision.pool={v.pool!r} (SigLIP pools with a MAP head: pool='map')")
  else:
    kind, module = None, None
    problems.append(f"config.model.vision.posemb={v.posemb!r} with cls_token={v.cls_token} (CLIP: a learned table "
                    "with the CLS row, 'learned_with_cls'; SigLIP: 'learned' without CLS)")
    if v.pool == "gap":
      problems.append("config.model.vision.pool='gap' (mean pooling: CLIP pools its CLS token, SigLIP a MAP head)")
  _refuse("vision tower", problems)
  config = dict(model_type=f"{kind}_vision_model", hidden_size=v.width, intermediate_size=v.mlp_dim,
                num_hidden_layers=v.depth, num_attention_heads=v.num_heads, num_channels=3, image_size=image_size,
                patch_size=v.patch_size, hidden_act=hf_configs.VLM_JAX_ACTIVATIONS[activation],
                layer_norm_eps=float(v.get("layer_norm_eps", 1e-6)))
  if kind == "siglip":
    config["vision_use_head"] = True
  elif embed_dim:
    config["projection_dim"] = embed_dim
  return module, kind, config


def _preprocessor(data) -> dict:
  """The image processor's config: what vlm_jax's predict does to an image (vlm_jax.data.images.eval_crop: the
  shorter side resized to image_size, bicubic, the centre square; then config.data.normalization)."""
  mean, std = hf_configs.NORMALIZATIONS[data.get("normalization", "siglip") or "siglip"]
  size = data.image_size
  return dict(image_processor_type="CLIPImageProcessor", do_resize=True, size={"shortest_edge": size},
              resample=PIL_BICUBIC, do_center_crop=True, crop_size={"height": size, "width": size}, do_rescale=True,
              rescale_factor=1 / 255, do_normalize=True, image_mean=list(mean), image_std=list(std),
              do_convert_rgb=True)


# ------------------------------------------------------------------------------------------- language model

def llama_config(config, vocab_size: int, ids: dict) -> dict:
  """The LlamaConfig of config.model.text (a prefix-LM's decoder), or a UserError listing what a Llama lacks."""
  t = config.model.text
  problems = []
  for key, want in (("norm", "rmsnorm"), ("mlp", "swiglu"), ("posemb", "rope")):
    if t.get(key) != want:
      problems.append(f"config.model.text.{key}={t.get(key)!r} (a Llama has {key}={want!r})")
  _refuse("decoder as a Llama", problems)
  n_image = (config.data.image_size // config.model.vision.patch_size) ** 2
  return dict(model_type="llama", vocab_size=vocab_size, hidden_size=t.width, intermediate_size=t.mlp_dim,
              num_hidden_layers=t.depth, num_attention_heads=t.num_heads,
              num_key_value_heads=t.get("num_kv_heads", 0) or t.num_heads,
              head_dim=t.get("head_dim", 0) or t.width // t.num_heads, hidden_act="silu",
              rms_norm_eps=float(t.get("norm_eps", 1e-6)), attention_bias=bool(t.use_bias), mlp_bias=bool(t.use_bias),
              tie_word_embeddings=bool(t.tied_embedding),
              rope_parameters=dict(rope_type="default", rope_theta=float(t.rope_theta)),
              max_position_embeddings=max(2048, n_image + config.data.max_text_len), **ids)


# ------------------------------------------------------------------------------------------- tokenizer

def tokenizer_files(workdir: str, config, tokenizer) -> dict:
  """tokenizer.json of the workdir's tokenizer and the names of its special tokens: vlm_jax's byte tokenizer,
  or a Hugging Face one (config.data.tokenizer "hf:DIR": the workdir's copy, else DIR's); a SentencePiece model
  vlm_jax trained has none (UserError)."""
  kind = config.data.tokenizer
  if kind == "byte":
    tokenizer_json = hf_tokenizer.byte_tokenizer_json()
  elif kind.startswith("hf:"):
    source = workdir if os.path.isfile(os.path.join(workdir, hf_tokenizer.TOKENIZER)) else kind[len("hf:"):]
    tokenizer_json, _ = hf_tokenizer.read(source)
  else:
    raise UserError(f"config.data.tokenizer={kind!r}: a tokenizer vlm_jax trained has no transformers form; "
                    "export needs the LM's own tokenizer (config.data.tokenizer='hf:DIR') or 'byte'")
  names = {i: content for content, i in hf_tokenizer.token_ids(tokenizer_json).items()}
  special = {}
  for role, token_id in (("bos", tokenizer.bos_id), ("eos", tokenizer.eos_id), ("pad", tokenizer.pad_id)):
    if token_id not in names:
      raise UserError(f"the tokenizer has no token with the {role} id {token_id}")
    special[role] = names[token_id]
  return dict(tokenizer_json=tokenizer_json, **special)


# ------------------------------------------------------------------------------------------- writing

def _check_covered(params: dict, links: list, what: str) -> None:
  """Every parameter must go somewhere: one the links do not name has no place in the HF architecture."""
  named = {link.path for link in links}
  left = sorted("/".join(path) for path in traverse_util.flatten_dict(params) if path not in named)
  _refuse(what, [f"parameter {', '.join(left[:4])}{' ...' if len(left) > 4 else ''} (no such tensor)"] if left else [])


def _write_json(directory: str, name: str, value: dict) -> None:
  import json  # noqa: PLC0415
  with open(os.path.join(directory, name), "w") as f:
    json.dump(value, f, indent=2, sort_keys=True)


def export_llava(workdir: str, config, read_params, tokenizer, out: str) -> str:
  """A prefix-LM -> a LlavaForConditionalGeneration directory (see the module docstring). read_params() gives
  the checkpoint's params, read once the config is known to be exportable."""
  m = config.model
  problems = []
  if m.get("prefix_attention", "bidirectional") != "causal":
    problems.append("config.model.prefix_attention='bidirectional' (Llava attends image and prompt causally)")
  if m.vision_layer == -1:
    problems.append("config.model.vision_layer=-1 (the tower's output after its final norm; Llava's features are a "
                    "block's output, vision_layer <= -2)")
  if m.projector.type != "mlp" or m.projector.hidden_dim not in (0, m.text.width):
    problems.append(f"config.model.projector type={m.projector.type!r} hidden_dim={m.projector.hidden_dim} (Llava's "
                    "projector is Linear-GELU-Linear through the LM's width: type='mlp', hidden_dim=0)")
  _refuse("prefix-LM as a Llava", problems)
  vision_module, kind, vision = vision_tower(m.vision, config.data.image_size, two_tower=False)
  files = tokenizer_files(workdir, config, tokenizer)
  vocab = tokenizer.vocab_size
  tokenizer_json, image_id = hf_tokenizer.with_special_token(files["tokenizer_json"], IMAGE_TOKEN, vocab)
  ids = dict(bos_token_id=tokenizer.bos_id, eos_token_id=tokenizer.eos_id, pad_token_id=tokenizer.pad_id)
  text = llama_config(config, max(vocab, image_id + 1), ids)
  params = read_params()
  scan = not _loop_layout(params)

  vision_links = vision_module.vision_links({**vision}, config.data.image_size, scan, hf="vision_tower")
  projector_links = (mapping.linear("multi_modal_projector.linear_1", ("projector", "fc1"))
                     + mapping.linear("multi_modal_projector.linear_2", ("projector", "fc2")))
  decoder_links = hf_llama.links(dict(text, vocab_size=vocab), scan, hf="language_model.model", path=("decoder",),
                                 lm_head="language_model.lm_head")
  links = vision_links + projector_links + decoder_links
  _check_covered(params, links, "prefix-LM as a Llava")
  tensors = mapping.export_params(links, params, LLAVA)
  extra = text["vocab_size"] - vocab
  if extra:  # the image token's rows: overwritten by the image features (embedding), suppressed (lm_head)
    for name in ("language_model.model.embed_tokens.weight", "language_model.lm_head.weight"):
      if name in tensors:
        tensors[name] = np.concatenate([tensors[name], np.zeros((extra, tensors[name].shape[1]), np.float32)])

  n_image = (config.data.image_size // m.vision.patch_size) ** 2
  llava = dict(architectures=[LLAVA], model_type="llava", image_token_index=image_id, image_seq_length=n_image,
               projector_hidden_act="gelu", multimodal_projector_bias=True, vision_feature_layer=int(m.vision_layer),
               vision_feature_select_strategy="default" if kind == "clip" else "full",
               tie_word_embeddings=text["tie_word_embeddings"], vision_config=vision, text_config=text)
  checkpoint_io.write_checkpoint(out, llava, tensors)
  _write_json(out, "generation_config.json", dict(ids, suppress_tokens=[image_id],
                                                  max_new_tokens=int(config.eval.max_decode_len)))
  hf_tokenizer.write(out, tokenizer_json, bos=files["bos"], eos=files["eos"], pad=files["pad"],
                     extra_special=[IMAGE_TOKEN], chat_template=CHAT_TEMPLATE, processor_class="LlavaProcessor")
  preprocessor = _preprocessor(config.data)
  _write_json(out, "preprocessor_config.json", dict(preprocessor, processor_class="LlavaProcessor"))
  _write_json(out, "processor_config.json", dict(
      processor_class="LlavaProcessor", image_processor=preprocessor, image_token=IMAGE_TOKEN,
      patch_size=m.vision.patch_size, num_additional_image_tokens=1 if kind == "clip" else 0,
      vision_feature_select_strategy=llava["vision_feature_select_strategy"]))
  return f"{LLAVA} ({kind} vision tower, Llama decoder, {n_image} image tokens, <image> = id {image_id})"


def export_two_tower(workdir: str, config, read_params, tokenizer, out: str) -> str:
  """A two-tower model -> a CLIPModel directory (its tokenizer too when it has a transformers form)."""
  m, t = config.model, config.model.text
  vision_module, kind, vision = vision_tower(m.vision, config.data.image_size, two_tower=True, embed_dim=m.embed_dim)
  problems = []
  if kind != "clip":
    problems.append("a SigLIP vision tower beside vlm_jax's causal, EOS-pooled text tower (SiglipModel's text "
                    "tower is bidirectional and pooled at the last position)")
  for key, want in (("norm", "layernorm"), ("posemb", "learned")):
    if t.get(key) != want:
      problems.append(f"config.model.text.{key}={t.get(key)!r} (CLIP's text tower has {want!r})")
  if t.get("mlp") not in hf_configs.VLM_JAX_ACTIVATIONS:
    problems.append(f"config.model.text.mlp={t.get('mlp')!r}")
  if t.get("num_kv_heads", 0) not in (0, t.num_heads) or t.get("head_dim", 0) not in (0, t.width // t.num_heads):
    problems.append("config.model.text num_kv_heads/head_dim (CLIP's attention has one key/value head per query head)")
  if not t.get("use_bias", True):
    problems.append("config.model.text.use_bias=False")
  if tokenizer.eos_id == hf_clip.LEGACY_EOS_ID:
    problems.append(f"the text EOS id {tokenizer.eos_id} (transformers reads eos_token_id=2 as a legacy CLIP config "
                    "and pools at the largest token id instead of the EOS)")
  _refuse("two-tower model as a CLIPModel", problems)
  text = dict(model_type="clip_text_model", vocab_size=tokenizer.vocab_size, hidden_size=t.width,
              intermediate_size=t.mlp_dim, num_hidden_layers=t.depth, num_attention_heads=t.num_heads,
              max_position_embeddings=config.data.max_text_len, hidden_act=hf_configs.VLM_JAX_ACTIVATIONS[t.mlp],
              layer_norm_eps=float(t.get("norm_eps", 1e-6)), pad_token_id=tokenizer.pad_id,
              bos_token_id=tokenizer.bos_id, eos_token_id=tokenizer.eos_id)
  clip = dict(architectures=[hf_clip.ARCHITECTURE], model_type="clip", projection_dim=m.embed_dim,
              logit_scale_init_value=float(m.logit_scale_init), vision_config=vision, text_config=text)
  params = read_params()
  links = vision_module.links(clip, config.data.image_size, not _loop_layout(params))
  _check_covered(params, links, "two-tower model as a CLIPModel")
  checkpoint_io.write_checkpoint(out, clip, mapping.export_params(links, params, hf_clip.ARCHITECTURE))
  _write_json(out, "preprocessor_config.json", _preprocessor(config.data))
  try:
    files = tokenizer_files(workdir, config, tokenizer)
  except UserError as e:
    return f"{hf_clip.ARCHITECTURE} without a tokenizer ({e})"
  hf_tokenizer.write(out, files["tokenizer_json"], bos=files["bos"], eos=files["eos"], pad=files["pad"])
  return hf_clip.ARCHITECTURE


EXPORTERS = {"llava": export_llava, "clip": export_two_tower}


def export_workdir(workdir: str, out: str) -> str:
  """Writes the latest checkpoint of a training workdir as a transformers directory `out`; returns what it wrote."""
  workdir = os.path.abspath(os.path.expanduser(workdir))
  config = run_config.load_workdir_config(workdir)
  kind = models.get(config.model.name).HF_EXPORT
  if kind not in EXPORTERS:
    raise UserError(f"transformers cannot represent model {config.model.name} (config.model.name): export writes "
                    "a prefix-LM as a Llava or a two-tower model as a CLIPModel")
  if os.path.exists(out) and os.listdir(out):
    raise UserError(f"--out {out} exists and is not empty; export writes into a new or empty folder")
  tokenizer = tokenizer_lib.load_for_workdir(workdir, config.data)
  read = {}

  def read_params():
    read["step"], params = checkpointing.read_params(workdir)
    return params

  written = EXPORTERS[kind](workdir, config, read_params, tokenizer, out)
  return f"{written} of {workdir} step {read['step']}"
