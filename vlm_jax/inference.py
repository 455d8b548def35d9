"""Running a trained model: restore what inference needs from a workdir, and caption, answer or classify.

`restore(workdir)` reads DIR/config.json, the tokenizer DIR keeps, and the latest checkpoint's parameters:
no data preparation, no optimizer state. `predict(workdir, path, ...)` runs the model on image files; the
command line is `python -m vlm_jax.predict` (vlm_jax/predict.py, flags only). What a model can be asked
(caption / answer / label) is its module's PREDICT_TASKS.
"""

import dataclasses
import itertools
import os
import sys

import jax
import numpy as np

from vlm_jax import checkpointing, compile_log, decoding, losses, models, run_config
from vlm_jax.data import images as images_lib, pipeline, tokenizer as tokenizer_lib
from vlm_jax.errors import UserError
from vlm_jax.evaluators import zero_shot

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".ppm", ".tif", ".tiff")
BATCH_SIZE = 16


def prediction_fns(model_module, model, decode_config: decoding.DecodeConfig, eos_id: int, pad_id: int) -> dict:
  """The model's predict_fns, jitted, and "generate" (decoding.make_generate: fn(params, images, tokens,
  start, rng) -> (tokens, scores)) where the model writes text; each a program of compile_log under its name."""
  fns = {name: compile_log.named(name, jax.jit(fn)) for name, fn in model_module.predict_fns(model).items()}
  if model_module.GENERATES:
    fns["generate"] = decoding.make_generate(model, decode_config, eos_id, pad_id)
  return fns


# --------------------------------------------------------------------------------------------- inputs

def image_paths(path: str) -> list:
  """The image files named by `path`: itself, or a folder's image files in name order (names only: nothing is
  opened, so a folder of any size is listed quickly)."""
  if os.path.isdir(path):
    with os.scandir(path) as entries:
      names = sorted(e.name for e in entries if e.name.lower().endswith(IMAGE_EXTENSIONS))
    if not names:
      raise UserError(f"no image files ({', '.join(IMAGE_EXTENSIONS)}) in folder {path}")
    return [os.path.join(path, n) for n in names]
  if not os.path.exists(path):
    raise UserError(f"image not found: {path}")
  return [path]


def load_image(path: str, size: int, normalization: str = "siglip", max_pixels: int = 0) -> np.ndarray:
  """float32[size, size, 3], as evaluation feeds images: shorter side resized to `size`, centre crop, the run's
  normalisation. An image above max_pixels (0: Pillow's limit) is refused from its header, before decoding."""
  try:
    image = images_lib.open_rgb(path, max_pixels or images_lib.DEFAULT_MAX_PIXELS)
  except images_lib.BadImage as e:
    if e.reason == "oversized_image":
      raise UserError(f"{e}; raise config.data.max_image_pixels to read it") from None
    raise UserError(f"{path} is not a readable image ({e.detail})") from None
  return images_lib.normalize(images_lib.eval_crop(image, size), normalization)


def warn_skipped(path: str, problem: str) -> None:
  """What predict does by default with a folder's unreadable image: one line on stderr (the problem names it)."""
  del path
  print(f"vlm_jax.predict: warning: {problem}; skipped", file=sys.stderr, flush=True)


def _image_batches(paths: list, data_config, batch_size: int, on_skip=None):
  """Yields (paths, float32[b <= B, S, S, 3]) a batch at a time: a folder is streamed, never held in memory whole.

  With on_skip (a folder), an image that cannot be read (undecodable, above max_image_pixels) is given to
  on_skip(path, problem: one line naming it and why) and left out; UserError if no image at all could be read.
  Without it (one file), the bad image is the UserError.
  """
  load = lambda p: load_image(p, data_config.image_size, data_config.get("normalization", "siglip") or "siglip",
                              int(data_config.get("max_image_pixels", 0) or 0))
  chunk, arrays, read = [], [], 0
  for path in paths:
    try:
      arrays.append(load(path))
    except UserError as e:
      if on_skip is None:
        raise
      on_skip(path, str(e))
      continue
    chunk.append(path)
    read += 1
    if len(chunk) == batch_size:
      yield chunk, np.stack(arrays)
      chunk, arrays = [], []
  if chunk:
    yield chunk, np.stack(arrays)
  if not read:
    raise UserError(f"none of the {len(paths)} image files in {os.path.dirname(paths[0])} could be read")


def task_for(model_name: str, prompt, labels) -> str:
  """"caption", "answer" or "label" (the model's PREDICT_TASKS); UserError when it cannot do what is asked."""
  if prompt is not None and labels is not None:
    raise UserError("--prompt and --labels are exclusive: answer a question or classify, not both")
  tasks = models.get(model_name).PREDICT_TASKS
  serving = lambda task: [name for name, module in models.MODELS.items() if task in module.PREDICT_TASKS]
  if not tasks:
    served = [name for name, module in models.MODELS.items() if module.PREDICT_TASKS]
    raise UserError(f"model {model_name} takes no image-and-text request; predict serves {', '.join(served)} "
                    "workdirs (score the others with python -m vlm_jax.evaluate)")
  if labels is not None:
    if "label" not in tasks:
      hint = "; ask it with --prompt instead" if "answer" in tasks else ""
      raise UserError(f"model {model_name} has no image/text embeddings, so it cannot classify with --labels{hint}")
    return "label"
  if prompt is not None:
    if "answer" not in tasks:
      raise UserError(f"model {model_name} does not take a --prompt (models that answer questions: "
                      f"{', '.join(serving('answer'))})")
    return "answer"
  if "caption" not in tasks:
    raise UserError(f"model {model_name} cannot generate text; classify with --labels \"a,b,c\" instead")
  return "caption"


def parse_labels(text: str) -> list:
  labels = [label.strip() for label in text.split(",") if label.strip()]
  if len(labels) < 2:
    raise UserError(f"--labels needs at least two comma-separated labels, got {text!r}")
  return labels


# --------------------------------------------------------------------------------------------- model

@dataclasses.dataclass
class Restored:
  """What inference needs of a training workdir."""
  config: object  # the run's config (config.json over today's defaults)
  tokenizer: tokenizer_lib.Tokenizer
  model: object  # the flax module
  params: dict  # numpy arrays
  step: int


def restore(workdir: str) -> Restored:
  """The config, tokenizer, model and latest parameters of a training workdir (one device, no mesh)."""
  workdir = os.path.abspath(os.path.expanduser(workdir))
  if not os.path.isdir(os.path.join(workdir, "checkpoints")):
    raise UserError(f"no checkpoints in {workdir}/checkpoints: train first with python -m vlm_jax.train")
  config = run_config.load_workdir_config(workdir)
  tokenizer = tokenizer_lib.load_for_workdir(workdir, config.data)
  model = models.build_model(config.model, vocab_size=tokenizer.vocab_size, max_len=config.data.max_text_len,
                             eos_id=tokenizer.eos_id, pad_id=tokenizer.pad_id)
  step, params = checkpointing.read_params(workdir)
  return Restored(config, tokenizer, model, params, int(step))


class Predictor:
  """A restored model and the compiled functions of one task."""

  def __init__(self, workdir: str):
    restored = restore(workdir)
    self.config, self.tokenizer, self.model, self.params = (restored.config, restored.tokenizer, restored.model,
                                                            restored.params)
    self.model_module = models.get(self.config.model.name)

  def _generate(self, images, prompt: str):
    """Greedy (or beam) continuation of BOS + prompt for each image -> (texts, log-likelihoods)."""
    max_len = self.config.data.max_text_len
    prefix = pipeline.make_vqa_prompt(self.tokenizer, prompt, max_len) if prompt else [self.tokenizer.bos_id]
    tokens = np.full((len(images), max_len), self.tokenizer.pad_id, np.int32)
    tokens[:, :len(prefix)] = prefix
    start = np.full((len(images),), len(prefix), np.int32)
    generated, scores = self.fns["generate"](self.params, images, tokens, start, jax.random.key(0))
    ids = [decoding.generated_ids(row, len(prefix), self.tokenizer.eos_id, self.tokenizer.pad_id)
           for row in np.asarray(generated)]
    return [self.tokenizer.decode(i) for i in ids], np.asarray(scores)

  def prepare(self, task: str, labels=None, beams: int = 1):
    """Compiles what `task` needs; for "label", embeds the class prompts once."""
    self.task, self.labels = task, labels
    decode_config = decoding.DecodeConfig(method="beam" if beams > 1 else "greedy",
                                          max_steps=self.config.eval.max_decode_len, num_beams=beams,
                                          length_penalty=0.0)
    self.fns = prediction_fns(self.model_module, self.model, decode_config, self.tokenizer.eos_id,
                              self.tokenizer.pad_id)
    if task == "label":
      prompts = zero_shot.class_prompts(labels)
      text = tokenizer_lib.tokenize_all(self.tokenizer, prompts, self.config.data.max_text_len)
      prompt_embedding = np.asarray(self.fns["encode_text"](self.params, text))
      self.class_embedding = zero_shot.class_embeddings(prompt_embedding, len(zero_shot.DEFAULT_TEMPLATES))
      self.scale = min(float(np.exp(self.fns["logit_scale"](self.params))), losses.MAX_LOGIT_SCALE)

  def __call__(self, images: np.ndarray, prompt=None) -> list:
    """float[B, S, S, 3] -> one result dict per image (without "image")."""
    if self.task == "label":
      embedding = np.asarray(self.fns["encode_image"](self.params, images))
      probs = zero_shot.zero_shot_probabilities(embedding, self.class_embedding, self.scale)
      return [{"label": self.labels[int(np.argmax(p))],
               "scores": {label: float(q) for label, q in zip(self.labels, p)}} for p in probs]
    if self.task == "caption":
      prompt = pipeline.CAPTION_PROMPTS[self.model_module.DATA_TASK]
    texts, scores = self._generate(images, prompt)
    return [{self.task: t, "scores": {"log_likelihood": float(s)}} for t, s in zip(texts, scores)]


def predict(workdir: str, path: str, prompt=None, labels=None, beams: int = 1, on_skip=warn_skipped):
  """Yields one result dict per image of `path`: {"image", "caption" | "answer" | "label", "scores"}.

  Everything a user can get wrong (files, task) is checked before the model is built, so it fails fast. In a
  folder, an image that cannot be read is reported (on_skip(path, problem); by default one warning line on
  stderr) and skipped; a folder with no readable image, or a single unreadable file, is a UserError.
  """
  workdir = os.path.abspath(os.path.expanduser(workdir))
  config = run_config.load_workdir_config(workdir)
  task = task_for(config.model.name, prompt, labels)
  paths = image_paths(path)
  batch = min(BATCH_SIZE, len(paths))
  batches = _image_batches(paths, config.data, batch, on_skip if os.path.isdir(path) else None)
  first = next(batches)  # a bad first image fails before the model is built
  predictor = Predictor(workdir)
  predictor.prepare(task, labels, beams)
  for chunk_paths, chunk in itertools.chain([first], batches):
    # Pad to a fixed batch: every chunk then runs the one compiled program.
    padded = np.concatenate([chunk, np.repeat(chunk[-1:], batch - len(chunk), axis=0)])
    for p, result in zip(chunk_paths, predictor(padded, prompt)):
      yield {"image": p, **result}
