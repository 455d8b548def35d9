"""The fields every run config has, and the checks run before anything is built.

Config files under configs/ start from `base_config()` and change what differs, so every config has the
same keys: a `--config.x=y` override of a key that does not exist is refused by ml_collections.
"""

import ml_collections

from vlm_jax.errors import UserError

MODEL_NAMES = ("two_tower", "coca", "prefix_lm", "causal_lm", "vit_classifier")
DATASET_NAMES = ("shapes", "fashion_mnist_scenes", "fashion_mnist")
CONTRASTIVE_LOSSES = ("", "softmax", "sigmoid")

# Logical axis -> mesh axis (None: replicated). FSDP shards the model width; tensor parallelism the MLP,
# the heads and the vocabulary. The batch is split over data and fsdp.
DEFAULT_RULES = (
    ("batch", "data"),
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
      fashion_mnist_dir=""))  # "" = $VLM_JAX_FASHION_MNIST_DIR or Debian's /usr/share/datasets/fashion-mnist

  c.model = ml_collections.ConfigDict(dict(
      # scan: the blocks as one nn.scan (compile time flat in depth; params stacked on a "layers" axis);
      # False: a Python loop, params block_00, block_01, ... (the layout of runs written before scan).
      name="two_tower", dtype="float32", remat="", scan=True, embed_dim=128, vision_layer=-1,
      logit_scale_init=2.6592600, logit_bias_init=0.0,  # ln(1/0.07): CLIP's initial temperature
      num_classes=10))  # vit_classifier only
  c.model.vision = ml_collections.ConfigDict(dict(
      patch_size=4, width=96, depth=3, num_heads=3, mlp_dim=256, posemb="sincos2d", cls_token=False,
      pool="gap"))
  # The text decoder as a CLIP-style tower (these defaults) or as a Llama: norm="rmsnorm", mlp="swiglu",
  # posemb="rope", num_kv_heads < num_heads, use_bias=False, tied_embedding=False.
  # cross_attention_gate: tanh gate at 0 on cross-attention (an added cross-attention leaves an LM as it was).
  c.model.text = ml_collections.ConfigDict(dict(
      width=96, depth=3, num_heads=3, mlp_dim=256, tied_embedding=True, norm="layernorm", mlp="gelu",
      posemb="learned", rope_theta=10_000.0, num_kv_heads=0, cross_attention_gate=False, use_bias=True))
  c.model.multimodal = ml_collections.ConfigDict(dict(depth=2))
  c.model.projector = ml_collections.ConfigDict(dict(type="mlp", hidden_dim=0))

  # sigmoid_chunks > 1: the SigLIP loss over that many chunks of texts (memory B x B/chunks); set it to
  # the number of devices for per-device memory that does not grow with the device count.
  c.loss = ml_collections.ConfigDict(dict(contrastive="softmax", contrastive_weight=1.0, caption_weight=0.0,
                                          sigmoid_chunks=0))
  c.optimizer = ml_collections.ConfigDict(dict(
      learning_rate=2e-3, warmup_steps=100, weight_decay=0.05, b1=0.9, b2=0.98, grad_clip_norm=1.0))
  c.mesh = ml_collections.ConfigDict(dict(data=-1, fsdp=1, tensor=1))
  c.sharding = ml_collections.ConfigDict(dict(logical_axis_rules=list(DEFAULT_RULES)))
  # Evaluators, big_vision style: NAME -> dict(type=..., split=..., every=..., prefix=...) (vlm_jax.evaluate
  # .eval_specs); empty: the model's natural evaluators on eval.split and eval.extra_splits.
  c.evals = ml_collections.ConfigDict()
  c.eval = ml_collections.ConfigDict(dict(
      split="test", periodic_split="validation", extra_splits=("compositional",), batch_size=500,
      max_decode_len=16))
  return c


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
  if config.batch_size % config.grad_accum_steps:
    raise UserError(f"config.batch_size={config.batch_size} is not divisible by "
                    f"config.grad_accum_steps={config.grad_accum_steps}")
  if config.nonfinite not in ("stop", "skip"):
    raise UserError(f"config.nonfinite={config.nonfinite!r}: expected 'stop' or 'skip'")
  if config.model.name not in MODEL_NAMES:
    raise UserError(f"config.model.name={config.model.name!r} is not a known model; expected one of {MODEL_NAMES}")
  if config.data.name not in DATASET_NAMES:
    raise UserError(f"config.data.name={config.data.name!r} is not a known dataset; expected one of {DATASET_NAMES}")
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
  if config.loss.contrastive not in CONTRASTIVE_LOSSES:
    raise UserError(f"config.loss.contrastive={config.loss.contrastive!r}: expected one of {CONTRASTIVE_LOSSES}")
  if config.model.name in ("prefix_lm", "causal_lm") and config.loss.contrastive:
    raise UserError(f"config.loss.contrastive must be '' for model {config.model.name} (it has no embeddings)")
  for i, entry in enumerate(config.init_from):
    if len(entry) != 3:
      raise UserError(f"config.init_from[{i}]={entry!r}: expected (target subtree, workdir, source subtree)")
  if config.model.name == "two_tower" and not config.loss.contrastive:
    raise UserError("config.loss.contrastive must be 'softmax' or 'sigmoid' for model two_tower")
  if (config.model.name == "vit_classifier") != (config.data.name == "fashion_mnist"):
    raise UserError(f"config.model.name={config.model.name!r} cannot train on config.data.name={config.data.name!r}: "
                    "the labelled dataset 'fashion_mnist' goes with model 'vit_classifier', and only with it")
  if config.model.name == "vit_classifier" and (config.loss.contrastive or config.loss.caption_weight):
    raise UserError("config.loss.contrastive must be '' and config.loss.caption_weight 0 for model vit_classifier")
  from vlm_jax import evaluate  # noqa: PLC0415  (evaluate imports the data pipeline; only needed here)
  evaluate.eval_specs(config)  # config.evals: unknown types or options, wrong models
  if config.model.vision.pool == "cls" and not config.model.vision.cls_token:
    raise UserError("config.model.vision.pool='cls' needs config.model.vision.cls_token=True")
