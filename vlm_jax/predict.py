"""Run a trained model on image files: caption, answer a question, or classify zero-shot.

    python -m vlm_jax.predict --workdir DIR --image PATH [--prompt TEXT] [--labels "a,b,c"] [--json]

DIR is a training workdir: its config.json rebuilds the model and the latest checkpoint in DIR/checkpoints
is restored. PATH is an image file or a folder (every image file in it, in name order, run in batches).
- no --prompt, no --labels: a caption (CoCa; a prefix-LM is asked "describe the image.").
- --prompt TEXT: the prefix-LM's answer to TEXT.
- --labels "a,b,c": zero-shot classification (two-tower or CoCa), each label in prompt templates averaged.
With --json, one JSON object per image: {"image", "caption" | "answer" | "label", "scores"}; scores are the
label probabilities, or the generated text's log-likelihood. A mistake (missing file, not an image, a model
that cannot do the task) is one line on stderr and exit status 1.
"""

import argparse
import contextlib
import json
import os
import sys

import numpy as np

from vlm_jax.errors import UserError

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".ppm", ".tif", ".tiff")
BATCH_SIZE = 16
MAX_LOGIT_SCALE = 100.0  # CLIP clamps exp(logit_scale) here (DESIGN.md)


# --------------------------------------------------------------------------------------------- inputs

def image_paths(path: str) -> list:
  """The image files named by `path`: itself, or a folder's image files in name order."""
  if os.path.isdir(path):
    paths = [os.path.join(path, n) for n in sorted(os.listdir(path)) if n.lower().endswith(IMAGE_EXTENSIONS)]
    if not paths:
      raise UserError(f"no image files ({', '.join(IMAGE_EXTENSIONS)}) in folder {path}")
    return paths
  if not os.path.exists(path):
    raise UserError(f"image not found: {path}")
  return [path]


def load_image(path: str, size: int) -> np.ndarray:
  """float32[size, size, 3] in [-1, 1], as the training pipeline feeds images (pipeline.image_to_float)."""
  from PIL import Image, UnidentifiedImageError
  from vlm_jax.data import pipeline
  try:
    with Image.open(path) as image:
      image = image.convert("RGB").resize((size, size), Image.Resampling.BILINEAR)
      return pipeline.image_to_float(np.asarray(image, np.uint8))
  except (UnidentifiedImageError, OSError) as e:
    raise UserError(f"{path} is not a readable image ({type(e).__name__})") from None


def task_for(model_name: str, prompt, labels) -> str:
  """"caption", "answer" or "label"; UserError when the model cannot do what the flags ask."""
  if prompt is not None and labels is not None:
    raise UserError("--prompt and --labels are exclusive: answer a question or classify, not both")
  if model_name not in ("two_tower", "coca", "prefix_lm"):
    raise UserError(f"model {model_name} takes no image-and-text request; predict serves two_tower, coca and "
                    "prefix_lm workdirs (score a classifier with python -m vlm_jax.evaluate)")
  if labels is not None:
    if model_name not in ("two_tower", "coca"):
      raise UserError(f"model {model_name} has no image/text embeddings, so it cannot classify with "
                      "--labels; ask it with --prompt instead")
    return "label"
  if prompt is not None:
    if model_name != "prefix_lm":
      raise UserError(f"model {model_name} does not take a --prompt (only a prefix-LM answers questions)")
    return "answer"
  if model_name == "two_tower":
    raise UserError("model two_tower cannot generate text; classify with --labels \"a,b,c\" instead")
  return "caption"


def parse_labels(text: str) -> list:
  labels = [label.strip() for label in text.split(",") if label.strip()]
  if len(labels) < 2:
    raise UserError(f"--labels needs at least two comma-separated labels, got {text!r}")
  return labels


# --------------------------------------------------------------------------------------------- model

def _overlay(config, saved: dict) -> None:
  """Writes the saved values into `config` (a ConfigDict) in place, section by section."""
  import ml_collections
  for key, value in saved.items():
    current = config.get(key)
    if isinstance(value, dict) and isinstance(current, ml_collections.ConfigDict):
      _overlay(current, value)
    elif isinstance(current, tuple) and isinstance(value, list):
      config[key] = tuple(tuple(v) if isinstance(v, list) else v for v in value)  # JSON has no tuples
    else:
      config[key] = value


def load_config(workdir: str):
  """DIR/config.json over today's defaults (run_config.base_config): a workdir trained before a config
  key was added still loads, with that key's default."""
  from vlm_jax import run_config
  path = os.path.join(workdir, "config.json")
  if not os.path.isfile(path):
    raise UserError(f"no config.json in {workdir}: is it a training workdir (python -m vlm_jax.train)?")
  with open(path) as f:
    try:
      saved = json.load(f)
    except json.JSONDecodeError as e:
      raise UserError(f"{path} is not valid JSON: {e}") from None
  config = run_config.base_config()
  try:
    _overlay(config, saved)
  except (TypeError, ValueError, AttributeError) as e:
    raise UserError(f"{path} does not fit today's config ({e})") from None
  return config


class Predictor:
  """A restored model and the compiled functions of one task."""

  def __init__(self, workdir: str):
    import jax
    from vlm_jax import train
    if not os.path.isdir(os.path.join(workdir, "checkpoints")):
      raise UserError(f"no checkpoints in {workdir}/checkpoints: train first with python -m vlm_jax.train")
    self.config = load_config(workdir)
    # Building a Run may print progress (dataset preparation); keep stdout for the results.
    with contextlib.redirect_stdout(sys.stderr):
      run = train.Run(self.config, workdir, for_training=False)
      step = run.restore_latest()
      run.checkpoints.close()
    if not step:
      raise UserError(f"no checkpoint found in {run.checkpoints.directory}")
    self.model, self.tokenizer = run.model, run.tokenizer
    self.params = jax.device_get(run.state.params)  # one device is plenty, and jit then needs no mesh
    self.name = self.config.model.name

  def _generate(self, images, prompt: str):
    """Greedy (or beam) continuation of BOS + prompt for each image -> (texts, log-likelihoods)."""
    import jax
    from vlm_jax import decoding
    from vlm_jax.data import pipeline
    max_len = self.config.data.max_text_len
    prefix = pipeline.make_vqa_prompt(self.tokenizer, prompt, max_len) if prompt else [self.tokenizer.bos_id]
    tokens = np.full((len(images), max_len), self.tokenizer.pad_id, np.int32)
    tokens[:, :len(prefix)] = prefix
    start = np.full((len(images),), len(prefix), np.int32)
    out, scores = self._decode(self.params, images, tokens, start, jax.random.key(0))
    out = np.asarray(out)
    ids = [decoding.generated_ids(row, len(prefix), self.tokenizer.eos_id, self.tokenizer.pad_id) for row in out]
    return [self.tokenizer.decode(i) for i in ids], np.asarray(scores)

  def prepare(self, task: str, labels=None, beams: int = 1):
    """Compiles what `task` needs; for "label", embeds the class prompts once."""
    import jax
    from vlm_jax import decoding
    from vlm_jax.evaluators import zero_shot
    from vlm_jax.evaluate import tokenize_all
    self.task, self.labels = task, labels
    if task == "label":
      apply = lambda method: jax.jit(lambda p, x: self.model.apply({"params": p}, x, method=method)[0])
      self._encode_image = apply("encode_image")
      prompts = zero_shot.class_prompts(labels)
      text = tokenize_all(self.tokenizer, prompts, self.config.data.max_text_len)
      prompt_embedding = np.asarray(apply("encode_text")(self.params, text))
      self.class_embedding = zero_shot.class_embeddings(prompt_embedding, len(zero_shot.DEFAULT_TEMPLATES))
      self.scale = min(float(np.exp(self.params["head"]["logit_scale"])), MAX_LOGIT_SCALE)
    else:
      method = "beam" if beams > 1 else "greedy"
      config = decoding.DecodeConfig(method=method, max_steps=self.config.eval.max_decode_len, num_beams=beams,
                                     length_penalty=0.0)
      self._decode = decoding.make_generate(self.model, config, self.tokenizer.eos_id, self.tokenizer.pad_id)

  def __call__(self, images: np.ndarray, prompt=None) -> list:
    """float[B, S, S, 3] -> one result dict per image (without "image")."""
    from vlm_jax.evaluators import zero_shot
    if self.task == "label":
      embedding = np.asarray(self._encode_image(self.params, images))
      probs = zero_shot.zero_shot_probabilities(embedding, self.class_embedding, self.scale)
      return [{"label": self.labels[int(np.argmax(p))],
               "scores": {label: float(q) for label, q in zip(self.labels, p)}} for p in probs]
    if self.task == "caption" and self.name == "prefix_lm":
      from vlm_jax.data import pipeline
      prompt = pipeline.DESCRIBE_PROMPT
    texts, scores = self._generate(images, prompt if self.name == "prefix_lm" else "")
    return [{self.task: t, "scores": {"log_likelihood": float(s)}} for t, s in zip(texts, scores)]


def predict(workdir: str, path: str, prompt=None, labels=None, beams: int = 1):
  """Yields one result dict per image of `path`: {"image", "caption" | "answer" | "label", "scores"}.

  Everything a user can get wrong (files, task) is checked before the model is built, so it fails fast.
  """
  workdir = os.path.abspath(os.path.expanduser(workdir))
  config = load_config(workdir)
  task = task_for(config.model.name, prompt, labels)
  paths = image_paths(path)
  images = np.stack([load_image(p, config.data.image_size) for p in paths])
  predictor = Predictor(workdir)
  predictor.prepare(task, labels, beams)
  batch = min(BATCH_SIZE, len(paths))
  for begin in range(0, len(paths), batch):
    chunk = images[begin:begin + batch]
    # Pad to a fixed batch: every chunk then runs the one compiled program.
    padded = np.concatenate([chunk, np.repeat(chunk[-1:], batch - len(chunk), axis=0)])
    for p, result in zip(paths[begin:begin + batch], predictor(padded, prompt)):
      yield {"image": p, **result}


def _format(result: dict) -> str:
  if "label" in result:
    return f"{result['image']}: {result['label']} (p={result['scores'][result['label']]:.3f})"
  key = "caption" if "caption" in result else "answer"
  return f"{result['image']}: {result[key]}"


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(prog="python -m vlm_jax.predict", description=__doc__.split("\n\n")[0])
  parser.add_argument("--workdir", required=True, help="training workdir (config.json, checkpoints/)")
  parser.add_argument("--image", required=True, help="an image file or a folder of them")
  parser.add_argument("--prompt", help="a question for a prefix-LM")
  parser.add_argument("--labels", help="comma-separated class names for zero-shot classification")
  parser.add_argument("--beams", type=int, default=1, help="beam search with this many beams (1: greedy)")
  parser.add_argument("--json", action="store_true", help="one JSON object per image")
  args = parser.parse_args(argv)
  try:
    if args.beams < 1:
      raise UserError(f"--beams must be >= 1, got {args.beams}")
    labels = parse_labels(args.labels) if args.labels is not None else None
    from vlm_jax import compilation_cache
    compilation_cache.enable()
    for result in predict(args.workdir, args.image, args.prompt, labels, args.beams):
      print(json.dumps(result) if args.json else _format(result), flush=True)
  except UserError as e:
    print(f"vlm_jax.predict: error: {e}", file=sys.stderr, flush=True)
    return 1
  return 0


if __name__ == "__main__":
  sys.exit(main())
