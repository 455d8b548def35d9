"""The fields every run config has, the checks run before anything is built, and the one config loader.

Config files under configs/ start from `base_config()` and change what differs, so every config has the
same keys: a `--config.x=y` override of a key that does not exist is refused by ml_collections.
`load_config("configs/NAME.py")` loads a config file as `--config` does; `load_workdir_config(DIR)` the
config a training run saved in DIR/config.json.

This module imports no jax: config files import it. `validate` reads the model registry when it runs.
"""

import json
import os
import re
import warnings

import ml_collections
# The parser behind ml_collections' DEFINE_config_file, so `--config` and load_config read a file alike.
from ml_collections.config_flags.config_flags import ConfigFileFlagParser

from vlm_jax.data.image_text import source_defaults
from vlm_jax.errors import UserError

CONTRASTIVE_LOSSES = ("", "softmax", "sigmoid")
SIGMOID_POSITIVES = ("each", "shared")  # config.loss.sigmoid_positives (losses._pair_weights)

# Logical axis -> mesh axis (None: replicated). FSDP shards the model width; tensor parallelism the MLP,
# the heads and the vocabulary. Batches are not named here: sharding.batch_sharding splits them over
# data and fsdp.
DEFAULT_RULES = (
    ("embed", "fsdp"),
    ("embed_out", ""),
    ("mlp", "tensor"),
    ("heads", "tensor"),
    ("kv", ""),
    ("vocab", "tensor"),
    ("patch", ""),
    ("position", ""),
    ("classes", ""),
    ("kv_heads", ""),
    ("layers", ""),  # the stacked axis of scanned blocks (config.model.scan): every device holds all layers
)


def base_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.seed = 0
  c.total_steps = 1000
  c.batch_size = 128
  c.log_every_steps = 50
  c.eval_every_steps = 500
  c.checkpoint_every_steps = 500
  c.keep_checkpoints = 2
  # Regexes over parameter paths ("vision/.*"): frozen parameters get no gradient and no optimizer state.
  c.freeze = ()
  # Start from other runs' latest checkpoints: (target subtree, other workdir, source subtree) triples,
  # "" meaning all params, e.g. (("vision", "runs/shapes_clip", "vision"),). Used only on a fresh start.
  c.init_from = ()
  c.grad_accum_steps = 1  # micro-batches per step (the batch is split, gradients averaged)
  c.nonfinite = "stop"    # a NaN/Inf loss or gradient: "stop" the run naming the step, or "skip" the update

  c.data = ml_collections.ConfigDict(dict(
      name="shapes", builder_config="default", data_dir="~/.cache/vlm_jax/datasets",
      tokenizer="sentencepiece", image_size=32, max_text_len=16, vqa_caption_prob=0.2,
      canonical_caption_prob=0.4, on_bad_record="skip",
      # hard_negatives: each contrastive text also gets its word-swapped false twin (vlm_jax.data.negatives:
      # relation reversed, count off by one), an extra negative column of its image in the contrastive loss.
      hard_negatives=False,
      # relation_caption_prob: the share of contrastive texts that state a spatial relation, drawn first (scenes
      # with a relation caption; 0: relation captions only as one of the uniformly drawn captions).
      relation_caption_prob=0.0,
      # relation_twins: the share of contrastive examples that come as a scene and its counterfactual twin (the scene
      # mirrored on one axis, data.pipeline.RelationTwins), each with a relation true of it and false of the other.
      relation_twins=0.0,
      # top_down_caption_prob: the share of contrastive texts (drawn before the canonical caption) that name a scene's
      # objects from top to bottom, chained by "above", where each lies clearly below the previous (shapes).
      top_down_caption_prob=0.0,
      # order_negatives (with hard_negatives): a list ("a red circle and a blue square", left to right) or top-down
      # chain gets as its negative the same names with two neighbours swapped (shapes.order_negative).
      order_negatives=False,
      # ignore_true_counts: a count caption ("two shapes") is left out of the contrastive loss (neither positive nor
      # negative) for the batch's other images it is also true of, instead of being their negative (losses.true_pairs).
      ignore_true_counts=False,
      # decoder_caption: what a captioner (CoCa's decoder) learns to write: "canonical" the scene's canonical caption,
      # "text" the caption the contrastive towers get (so relation and count captions too).
      decoder_caption="canonical",
      augment="",  # labelled images (fashion_mnist): "crop_flip" = random 2 px shifts and left-right mirroring
      fashion_mnist_dir=""))  # "" = $VLM_JAX_FASHION_MNIST_DIR or Debian's /usr/share/datasets/fashion-mnist
  c.data.update(data_defaults())

  c.model = ml_collections.ConfigDict(dict(
      # scan: the blocks as one nn.scan (compile time flat in depth; params stacked on a "layers" axis);
      # False: a Python loop, params block_00, block_01, ... (the layout of runs written before scan).
      # vision_layer: -1 the encoder output after its final norm; k <= -2 the output of block depth + k + 1, before
      # any norm (HF's hidden_states[k], LLaVA's vision_feature_layer: -2 is the penultimate block; -(depth + 1)
      # the embedded tokens).
      # prefix_attention (prefix_lm): "bidirectional" image and prompt see each other (PaliGemma), "causal" every
      # position sees only those before it (LLaVA, what transformers' LlavaForConditionalGeneration computes).
      # dtype: the compute dtype (norms, softmax and losses stay float32); param_dtype: the parameters' storage
      # dtype ("bfloat16": bf16 end to end; Adam's first moment then follows config.optimizer.mu_dtype).
      # attention: "explicit" einsums, "dot_product" jax.nn.dot_product_attention (cuDNN flash attention on a GPU
      # with bf16 compute, else its XLA path), "auto" dot_product on a GPU or TPU, explicit on CPU (faster there).
      # Attention maps (mutable "intermediates") and one-token decoding always take the explicit einsums.
      name="two_tower", dtype="float32", param_dtype="float32", attention="auto", remat="", scan=True,
      embed_dim=128, vision_layer=-1, prefix_attention="bidirectional",
      logit_scale_init=2.6592600, logit_bias_init=0.0,  # ln(1/0.07): CLIP's initial temperature
      num_classes=10))  # vit_classifier only
  # activation: one of layers.ACTIVATIONS (CLIP: quick_gelu, SigLIP: gelu); pre_norm: CLIP's LayerNorm before the
  # blocks; layer_norm_eps: every LayerNorm of the tower. stem: "patch" (each patch's pixels, linearly embedded) or
  # "conv" (3x3 stride-2 convolutions down to the patch grid, then the same embedding: models/vit.py), the last with
  # stem_width channels (0: width), each one before it half as many.
  c.model.vision = ml_collections.ConfigDict(dict(
      patch_size=4, stem="patch", stem_width=0, width=96, depth=3, num_heads=3, mlp_dim=256, posemb="sincos2d", cls_token=False,
      pool="gap", activation="gelu", layer_norm_eps=1e-6, pre_norm=False))
  # The text decoder as a CLIP-style tower (these defaults) or as a Llama: norm="rmsnorm", mlp="swiglu",
  # posemb="rope", num_kv_heads < num_heads, use_bias=False, tied_embedding=False.
  # cross_attention_gate: tanh gate at 0 on cross-attention (an added cross-attention leaves an LM as it was).
  # norm_eps: every norm of the tower; head_dim: 0 for width // num_heads (a Llama may set another).
  c.model.text = ml_collections.ConfigDict(dict(
      width=96, depth=3, num_heads=3, mlp_dim=256, tied_embedding=True, norm="layernorm", mlp="gelu",
      posemb="learned", rope_theta=10_000.0, num_kv_heads=0, cross_attention_gate=False, use_bias=True,
      norm_eps=1e-6, head_dim=0))
  c.model.multimodal = ml_collections.ConfigDict(dict(depth=2))
  c.model.projector = ml_collections.ConfigDict(dict(type="mlp", hidden_dim=0))

  # sigmoid_positives: "each" every positive pair weighs 1 (SigLIP as published); "shared" an image's k positives
  # (its text and every copy of it in the batch) weigh 1/k each, as the softmax's uniform target (losses.py).
  # label_smoothing: the classifier's targets (1 - eps on the label, eps / classes on every class).
  # sigmoid_chunks > 1: the SigLIP loss over that many chunks of texts (memory B x B/chunks); set it to
  # the number of devices for per-device memory that does not grow with the device count.
  c.loss = ml_collections.ConfigDict(dict(contrastive="softmax", contrastive_weight=1.0, caption_weight=0.0,
                                          sigmoid_chunks=0, sigmoid_positives="each", label_smoothing=0.0))
  # mu_dtype: the dtype of Adam's first moment ("" = the parameters' dtype, e.g. "bfloat16" to halve it).
  # head_lr_scale: the learning rate of the contrastive head's logit_scale and logit_bias, as a multiple of the rest's.
  # lr_scales: (regex over parameter paths, multiple) pairs, e.g. (("vision/.*", 2.0),): the parameters whose path
  # fully matches a pair's regex (the first that does) train at that multiple of the learning rate.
  # schedule_steps: the length of the warmup + cosine schedule (0: total_steps). A run may stop before its schedule
  # ends (the first 1000 steps of a 3000-step run, to compare with it step for step) or go past it (learning rate 0).
  c.optimizer = ml_collections.ConfigDict(dict(
      learning_rate=2e-3, warmup_steps=100, weight_decay=0.05, b1=0.9, b2=0.98, grad_clip_norm=1.0, mu_dtype="",
      head_lr_scale=1.0, lr_scales=(), schedule_steps=0))
  c.mesh = ml_collections.ConfigDict(dict(data=-1, fsdp=1, tensor=1))
  c.sharding = ml_collections.ConfigDict(dict(logical_axis_rules=list(DEFAULT_RULES)))
  # Evaluators, big_vision style: NAME -> dict(type=..., split=..., every=..., prefix=...) (vlm_jax.evaluate
  # .eval_specs); empty: the model's natural evaluators on eval.split and eval.extra_splits.
  c.evals = ml_collections.ConfigDict()
  c.eval = ml_collections.ConfigDict(dict(
      split="test", periodic_split="validation", extra_splits=("compositional",), batch_size=500,
      max_decode_len=16, at_end=True))  # at_end=False: no final scores (a run whose point is not its scores)
  return c


DECODER_CAPTIONS = ("canonical", "text")


def data_source(**fields) -> ml_collections.ConfigDict:
  """One entry of config.data.sources: every source field at its default (so that each can be set on the command
  line, --config.data.sources.NAME.FIELD=...) and weight=1.0, updated by `fields`."""
  unknown = sorted(set(fields) - set(source_defaults()) - {"weight"})
  if unknown:
    raise UserError(f"{unknown[0]} is not a source field; expected some of {sorted(source_defaults())} and weight")
  return ml_collections.ConfigDict({**source_defaults(), "weight": 1.0, **fields})


def add_sources(config, names) -> ml_collections.ConfigDict:
  """config with config.data.sources.NAME for each of the comma-separated `names` (a config file's argument:
  --config configs/image_text_clip.py:web,coco), each a copy of config.data.source with weight 1.0 (data_source),
  to be set on the command line: --config.data.sources.web.format=webdataset --config.data.sources.web.weight=3 ...
  No names: config unchanged."""
  for name in (n.strip() for n in (names or "").split(",")):
    if not name:
      continue
    if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name):
      raise UserError(f"source name {name!r} (from the config's argument) must be a Python identifier, as "
                      "--config.data.sources.NAME.FIELD flags need")
    config.data.sources[name] = data_source(**config.data.source.to_dict())
  return config


def data_defaults() -> dict:
  """The config.data keys of the image pipeline and the user's own data (the scenes datasets use the first two
  and leave the others at their defaults)."""
  return dict(
      normalization="siglip",   # image input: "siglip" = [-1, 1] (every run before this key), "clip" = mean/std
      num_threads=0,            # grain threads for training batches (0 = 2, the 2-core default)
      source=ml_collections.ConfigDict(source_defaults()),
      # Mixing several sources: config.data.sources.NAME = data_source(format=..., annotations=..., weight=w), or
      # named by a config file's argument (configs/image_text_clip.py:web,coco, see add_sources).
      sources=ml_collections.ConfigDict(),
      max_image_pixels=0,       # refuse larger images from their header (0 = 89 478 485, Pillow's limit)
      stored_image_size=0,      # the shorter side images are prepared at (0 = 8/7 of image_size)
      train_crop="random_resized",  # or "center": the training image of the user's own data
      crop_scale=(0.35, 1.0),   # random_resized: the area range of the crop
      vocab_size=0,             # a SentencePiece model trained on own captions (0 = 4000, an upper bound)
      class_names=(),           # zero-shot on own data: the classes (default: every label of the split)
      prepare_workers=0)        # image-decoding threads while preparing (0 = the CPU count)


def _positive(config, key):
  value = config
  for part in key.split("."):
    value = value[part]
  if not isinstance(value, int) or value <= 0:
    raise UserError(f"config.{key}={value!r} must be a positive integer")


def validate(config: ml_collections.ConfigDict) -> None:
  """Raises UserError naming the config key for anything that would fail later, deep inside jax."""
  for key in ("total_steps", "batch_size", "log_every_steps", "eval_every_steps", "checkpoint_every_steps",
              "keep_checkpoints", "grad_accum_steps", "data.image_size", "data.max_text_len", "model.vision.patch_size",
              "model.vision.width", "model.vision.depth", "model.vision.num_heads", "model.text.width",
              "model.text.num_heads", "model.embed_dim", "eval.batch_size"):
    _positive(config, key)
  schedule_steps = config.optimizer.get("schedule_steps", 0)
  if not isinstance(schedule_steps, int) or isinstance(schedule_steps, bool) or schedule_steps < 0:
    raise UserError(f"config.optimizer.schedule_steps={schedule_steps!r} must be a non-negative integer "
                    "(0: the schedule spans config.total_steps)")
  if config.batch_size % config.grad_accum_steps:
    raise UserError(f"config.batch_size={config.batch_size} is not divisible by "
                    f"config.grad_accum_steps={config.grad_accum_steps}")
  if config.nonfinite not in ("stop", "skip"):
    raise UserError(f"config.nonfinite={config.nonfinite!r}: expected 'stop' or 'skip'")
  if config.data.image_size % config.model.vision.patch_size:
    raise UserError(f"config.data.image_size={config.data.image_size} is not divisible by "
                    f"config.model.vision.patch_size={config.model.vision.patch_size}")
  for tower in ("vision", "text"):
    width, heads = config.model[tower].width, config.model[tower].num_heads
    if width % heads:
      raise UserError(f"config.model.{tower}.width={width} is not divisible by config.model.{tower}.num_heads={heads}")
  if config.model.vision.posemb == "sincos2d" and config.model.vision.width % 4:
    raise UserError(f"config.model.vision.width={config.model.vision.width} must be a multiple of 4 for "
                    "sincos2d position embeddings")
  for key in ("canonical_caption_prob", "relation_caption_prob", "relation_twins", "top_down_caption_prob",
              "vqa_caption_prob"):
    value = config.data.get(key, 0.0)
    if not isinstance(value, (int, float)) or not 0.0 <= value <= 1.0:
      raise UserError(f"config.data.{key}={value!r} must be a probability in [0, 1]")
  if config.data.get("decoder_caption", "canonical") not in DECODER_CAPTIONS:
    raise UserError(f"config.data.decoder_caption={config.data.decoder_caption!r}: expected one of {DECODER_CAPTIONS}")
  if config.data.get("hard_negatives") and config.loss.sigmoid_chunks > 1:
    raise UserError("config.data.hard_negatives=True cannot be combined with config.loss.sigmoid_chunks="
                    f"{config.loss.sigmoid_chunks} (the chunked SigLIP loss has no extra negative columns)")
  if config.data.get("ignore_true_counts") and config.loss.sigmoid_chunks > 1:
    raise UserError("config.data.ignore_true_counts=True cannot be combined with config.loss.sigmoid_chunks="
                    f"{config.loss.sigmoid_chunks} (the chunked SigLIP loss leaves no pair out)")
  if config.loss.get("sigmoid_positives", "each") not in SIGMOID_POSITIVES:
    raise UserError(f"config.loss.sigmoid_positives={config.loss.sigmoid_positives!r}: expected one of "
                    f"{SIGMOID_POSITIVES}")
  if config.loss.contrastive not in CONTRASTIVE_LOSSES:
    raise UserError(f"config.loss.contrastive={config.loss.contrastive!r}: expected one of {CONTRASTIVE_LOSSES}")
  for i, entry in enumerate(config.init_from):
    if len(entry) != 3:
      raise UserError(f"config.init_from[{i}]={entry!r}: expected (target subtree, workdir, source subtree)")
  depth, layer = config.model.vision.depth, config.model.vision_layer
  if not -depth - 1 <= layer <= -1:
    raise UserError(f"config.model.vision_layer={layer} must be in [-{depth + 1}, -1] "
                    f"(config.model.vision.depth={depth})")
  if config.model.prefix_attention not in ("bidirectional", "causal"):
    raise UserError(f"config.model.prefix_attention={config.model.prefix_attention!r}: expected 'bidirectional' "
                    "or 'causal'")
  if config.model.vision.pool == "cls" and not config.model.vision.cls_token:
    raise UserError("config.model.vision.pool='cls' needs config.model.vision.cls_token=True")
  _validate_for_model(config)


def _validate_for_model(config) -> None:
  """What the model's module declares: batches the dataset can give, loss terms, evaluators."""
  # Here, not at the top: config files import this module, and the models import jax.
  from vlm_jax import losses, models  # noqa: PLC0415
  from vlm_jax.models import vit  # noqa: PLC0415
  size, patch = config.data.image_size, config.model.vision.patch_size
  if config.model.vision.get("stem", "patch") == "conv" and vit.conv_stem_grid(size, patch) != size // patch:
    raise UserError(f"config.model.vision.stem='conv' turns a {size} px image into a {vit.conv_stem_grid(size, patch)}"
                    f"-wide grid, not the {size // patch} of config.model.vision.patch_size={patch}: choose an image "
                    "size whose halvings end on the patch grid (28 / 7, 32 / 4, 224 / 16)")
  from vlm_jax.data import datasets  # noqa: PLC0415
  from vlm_jax.evaluators import specs  # noqa: PLC0415
  name = config.model.name
  model = models.get(name)
  datasets.get(config.data).check_config()  # e.g. the user's own data without a source: which flags to pass
  if model.DATA_TASK not in datasets.tasks(config.data.name):
    fitting = [d for d in datasets.NAMES if model.DATA_TASK in datasets.tasks(d)]
    raise UserError(f"config.model.name={name!r} cannot train on config.data.name={config.data.name!r}: it trains "
                    f"on {model.DATA_TASK!r} batches, which only {fitting} give")
  terms = [losses.TERMS[t] for t in model.LOSS_TERMS]
  for key, off in losses.SWITCHES.items():
    if config.loss[key] != off and key not in {t.switch for t in terms}:
      raise UserError(f"config.loss.{key}={config.loss[key]!r} does not apply to model {name} (its loss terms: "
                      f"{', '.join(model.LOSS_TERMS)}); set it to {off!r}")
  if not any(t.is_on(config.loss) for t in terms):
    raise UserError(f"model {name} has no loss term switched on: set " +
                    " or ".join(f"config.loss.{t.switch} {t.on}" for t in terms))
  specs.eval_specs(config)  # config.evals: unknown types or options, evaluators the model cannot be scored with


def load_config(path: str) -> ml_collections.ConfigDict:
  """The config of a config file, "configs/NAME.py" or "configs/NAME.py:ARG" (get_config(ARG)), loaded by
  the same ml_collections parser as `--config`, unlocked (a caller may add config.evals entries)."""
  with warnings.catch_warnings():  # ml_collections loads with importlib's deprecated load_module()
    warnings.simplefilter("ignore", DeprecationWarning)
    config = ConfigFileFlagParser("config", lock_config=False).parse(path)
  return check_loaded(config, f"config file {path}")


def check_loaded(config, source: str) -> ml_collections.ConfigDict:
  """`config` as ml_collections loaded it from `source` (for messages), or a UserError: ml_collections
  reports a file it could not load only when the config is first used."""
  try:
    config.keys()
  except OSError as e:
    reason = [line.strip() for line in str(e).splitlines() if line.strip().startswith("[Errno")]
    raise UserError(f"cannot load {source}: {reason[0] if reason else str(e).splitlines()[0]}") from None
  return config


def _overlay(config, saved: dict) -> None:
  """Writes the saved values into `config` (a ConfigDict) in place, section by section."""
  for key, value in saved.items():
    current = config.get(key)
    if isinstance(value, dict) and isinstance(current, ml_collections.ConfigDict):
      _overlay(current, value)
    elif isinstance(current, tuple) and isinstance(value, list):
      config[key] = tuple(tuple(v) if isinstance(v, list) else v for v in value)  # JSON has no tuples
    else:
      config[key] = value


def load_workdir_config(workdir: str) -> ml_collections.ConfigDict:
  """DIR/config.json, written at the start of training, over today's defaults (base_config): a workdir
  trained before a config key was added still loads, with that key's default."""
  path = os.path.join(workdir, "config.json")
  if not os.path.isfile(path):
    raise UserError(f"no config.json in {workdir}: is it a training workdir (python -m vlm_jax.train)?")
  with open(path) as f:
    try:
      saved = json.load(f)
    except json.JSONDecodeError as e:
      raise UserError(f"{path} is not valid JSON: {e}") from None
  config = base_config()
  try:
    _overlay(config, saved)
  except (TypeError, ValueError, AttributeError) as e:
    raise UserError(f"{path} does not fit today's config ({e})") from None
  return config
