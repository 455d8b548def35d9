"""The model registry: each composed model is one module, found here by its config name (config.model.name).

A model module declares what the rest of vlm_jax needs from it, so nothing outside models/ asks which model
it is (README, "Adding a model"):

  FEATURES       the batch features the model and its loss terms read, e.g. ("image", "text", "caption")
  DATA_TASK      which training batches carry them: one of data.pipeline.TASKS
  LOSS_TERMS     its loss terms, names in losses.TERMS; config.loss weights each
  EVAL_TYPES     the evaluator types that can score it; DEFAULT_EVALS, those run when config.evals is empty
  PREDICT_TASKS  what `python -m vlm_jax.predict` can ask of it: some of "caption", "answer", "label"
  GENERATES      whether it writes text (decoding.make_generate continues a prompt for it)
  HF_EXPORT      what `python -m vlm_jax.export` writes it as: "llava" (LlavaForConditionalGeneration), "clip"
                 (CLIPModel) or None (refused)
  build(model_config, *, vocab_size, max_len, eos_id, pad_id, dtype, remat, scan, attention) -> the flax module
  forward_flops(config, vocab_size, batch_size) -> {component: forward FLOPs of one example}
  predict_fns(model) -> {name: fn(params, ...)} of PREDICT_FNS: what evaluators and predict call
"""

import numpy as np

from vlm_jax.errors import UserError
from vlm_jax.models import causal_lm, classifier, coca, prefix_lm, towers, two_tower

MODELS = {
    "two_tower": two_tower,
    "coca": coca,
    "prefix_lm": prefix_lm,
    "causal_lm": causal_lm,
    "vit_classifier": classifier,
}
MODEL_NAMES = tuple(MODELS)
INTERFACE = ("FEATURES", "DATA_TASK", "LOSS_TERMS", "EVAL_TYPES", "DEFAULT_EVALS", "PREDICT_TASKS", "GENERATES",
             "HF_EXPORT", "build", "forward_flops", "predict_fns")
# predict_fns' names: "encode_image" (params, float[B, H, W, 3]) -> float32[B, E] and "encode_text"
# (params, int[B, T]) -> float32[B, E], normalised; "logit_scale" (params) -> the learned log scale;
# "image_tokens" (params, images) -> float[B, N, D], what the text cross-attends or is prefixed with;
# "classify" (params, images) -> class logits float32[B, C]; "token_log_probs" (params, image_tokens, tokens
# int[B, K, T], prefix_len int[B, K]) -> float32[B, K, T - 1], the teacher-forced log-probability of each next token
# of K texts given an image's "image_tokens", for a model that captions (the hardneg evaluator's likelihood scores).
PREDICT_FNS = ("encode_image", "encode_text", "logit_scale", "image_tokens", "classify", "token_log_probs")
PREDICT_TASKS = ("caption", "answer", "label")

for _name, _module in MODELS.items():  # a new model that forgets a declaration fails here, not mid-run
  _missing = [attribute for attribute in INTERFACE if not hasattr(_module, attribute)]
  assert not _missing, f"model module {_module.__name__} ({_name!r}) does not declare {_missing}"


def get(name: str):
  """The module of model `name` (config.model.name)."""
  if name not in MODELS:
    raise UserError(f"config.model.name={name!r} is not a known model; expected one of {MODEL_NAMES}")
  return MODELS[name]


def build_model(config, *, vocab_size: int, max_len: int, eos_id: int, pad_id: int):
  """config: the `model` section of a run config -> the composed flax module it names."""
  return get(config.name).build(config, vocab_size=vocab_size, max_len=max_len, eos_id=eos_id, pad_id=pad_id,
                                dtype=towers.dtype_of(config), remat=towers.remat_of(config),
                                scan=bool(config.get("scan", True)), attention=towers.attention_of(config))


def sample_batch(features, batch_size: int, image_size: int, max_len: int) -> dict:
  """A batch of zeros with each feature's shape, what `model.init` traces: float32 image [B, S, S, 3],
  int32 text and caption [B, T] starting with BOS (id 1), int32 prefix_len [B] of 1, int32 label [B], int32
  answer_mask [B, T] of zeros."""
  shapes = {"image": ((batch_size, image_size, image_size, 3), np.float32), "text": ((batch_size, max_len), np.int32),
            "caption": ((batch_size, max_len), np.int32), "prefix_len": ((batch_size,), np.int32),
            "label": ((batch_size,), np.int32), "answer_mask": ((batch_size, max_len), np.int32)}
  batch = {name: np.zeros(*shapes[name]) for name in features}
  for name in ("text", "caption"):
    if name in batch:
      batch[name][:, 0] = 1  # BOS
  if "prefix_len" in batch:
    batch["prefix_len"][:] = 1  # a prompt of BOS alone
  return batch
