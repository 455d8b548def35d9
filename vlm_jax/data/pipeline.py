"""Input pipelines: prepare once, stream training batches, load eval splits.

Datasets (config.data.name): "shapes" and "fashion_mnist_scenes" are tfds builders with the same
fields (images with captions, hard negatives and questions); "fashion_mnist" is the plain labelled
Fashion-MNIST images, for the "classification" task, read straight from its .gz files.

Training batches come from a grain `MapDataset` over a random-access source (the tfds ArrayRecord
data source, or the in-memory Fashion-MNIST arrays), so shuffling, per-process slicing and
per-example randomness are all functions of (seed, index), and the returned iterator's state
(get_state/set_state) is just a position that can be checkpointed with the model.
"""

import functools
import os
import threading
import time

import grain
import numpy as np
import tensorflow_datasets as tfds

from vlm_jax.data import fashion_mnist
from vlm_jax.data import fashion_mnist_tfds
from vlm_jax.data import shapes
from vlm_jax.data import shapes_tfds
from vlm_jax.data.tokenizer import (TOKENIZER_FILENAME, Tokenizer, pack_tokens, tokenize, tokenizer_path,
                                    train_sentencepiece)
from vlm_jax.errors import UserError

DESCRIBE_PROMPT = "describe the image."
TASKS = ("contrastive_caption", "vqa", "classification")
# What a model trained on a task's batches writes a caption after: BOS alone, or BOS + the question whose
# answer the caption was in training.
CAPTION_PROMPTS = {"contrastive_caption": "", "vqa": DESCRIBE_PROMPT}
DATASETS = ("shapes", "fashion_mnist_scenes", "fashion_mnist")
SCENE_DATASETS = ("shapes", "fashion_mnist_scenes")  # tfds builders with captions and questions


# ----------------------------------------------------------------------------- preparation

def _dataset(data_config) -> str:
  """config.data.name, checked."""
  if data_config.name not in DATASETS:
    raise UserError(f"unknown dataset config.data.name={data_config.name!r}; expected one of {list(DATASETS)}")
  return data_config.name


def _fashion_mnist_dir(data_config) -> str:
  """The folder of the Fashion-MNIST .gz files for a data config ("" or absent: the default)."""
  return fashion_mnist.data_dir(data_config.get("fashion_mnist_dir", ""))


def make_builder(data_config):
  """The tfds builder of a scenes dataset (shapes or fashion_mnist_scenes) under config.data.data_dir."""
  name = _dataset(data_config)
  if name == "shapes":
    return shapes_tfds.make_builder(data_config.data_dir, data_config.builder_config)
  if name == "fashion_mnist_scenes":
    return fashion_mnist_tfds.make_builder(data_config.data_dir, data_config.builder_config,
                                           data_config.get("fashion_mnist_dir", ""))
  raise UserError(f"config.data.name={name!r} is read from its .gz files and has no tfds builder")


def prepare_data(data_config):
  """Prepares config.data's dataset (and its tokenizer) unless present; returns the builder (None for fashion_mnist).

  For "fashion_mnist" it only checks that the four .gz files load.
  """
  name = _dataset(data_config)
  if name == "fashion_mnist":
    if data_config.image_size != fashion_mnist.ITEM_SIZE:
      raise UserError(f"config.data.image_size={data_config.image_size} but Fashion-MNIST images are "
                      f"{fashion_mnist.ITEM_SIZE} px; set it to {fashion_mnist.ITEM_SIZE}")
    for split in fashion_mnist.SPLIT_IDS:
      fashion_mnist.load(split, _fashion_mnist_dir(data_config))
    return None
  if name == "shapes":
    return prepare_shapes(data_config.data_dir, data_config.builder_config)
  builder = make_builder(data_config)
  size = builder.builder_config.image_size
  if data_config.image_size != size:
    raise UserError(f"config.data.image_size={data_config.image_size} but {name}/{builder.builder_config.name} "
                    f"is drawn at {size} px; set it to {size}")
  if not builder.is_prepared():
    for split in fashion_mnist.SPLIT_IDS:  # a missing or corrupt file fails here, with its path
      fashion_mnist.load(split, builder.source_dir)
  _prepare_builder(builder)
  _prepare_tokenizer(builder, _fashion_mnist_texts)
  return builder


def prepare_shapes(data_dir: str, builder_config: str = "default"):
  """Generates the dataset (ArrayRecord) and its tokenizer unless present; returns the builder."""
  builder = shapes_tfds.make_builder(data_dir, builder_config)
  _prepare_builder(builder)
  _prepare_tokenizer(builder, _shapes_texts)
  return builder


def _prepare_builder(builder) -> None:
  """Generates a builder's ArrayRecord files unless present, then checks every split opens."""
  label = f"{builder.name}/{builder.builder_config.name}"
  if not builder.is_prepared():
    print(f"preparing {label} in {builder.data_dir} ...", flush=True)
    start = time.time()
    # tfds' nested progress bars garble logs; the builder prints a line per 10k examples instead.
    tfds.disable_progress_bar()
    try:
      builder.download_and_prepare(file_format="array_record")
    except (OSError, ValueError) as e:
      raise UserError(f"could not prepare {label} in {builder.data_dir}: {e}") from e
    print(f"done in {time.time() - start:.1f} s", flush=True)
  for split in builder.info.splits:
    _open_source(builder, split)  # fail here, with the path, rather than mid-training


def _shapes_texts(builder) -> list[str]:
  """The shapes tokenizer's training texts: the vocabulary and every text of the train split."""
  config = builder.builder_config
  texts = shapes.vocabulary_texts()
  for index in range(config.train):
    # Regenerating is cheaper than decoding the stored PNGs, and gives the same texts.
    texts += shapes.all_texts(shapes.make_example(config.seed, "train", index, config.image_size))
  return texts


def _fashion_mnist_texts(builder) -> list[str]:
  """The fashion_mnist_scenes tokenizer's training texts: the vocabulary and every train scene's texts."""
  config = builder.builder_config
  images, labels = fashion_mnist.load("train", builder.source_dir)
  texts = fashion_mnist.vocabulary_texts()
  for index in range(config.train):
    texts += fashion_mnist.all_texts(
        fashion_mnist.make_scene(config.seed, "train", index, images, labels, config.image_size))
  return texts


def _prepare_tokenizer(builder, texts_fn) -> None:
  """Trains the SentencePiece model on texts_fn(builder) + [DESCRIBE_PROMPT] if it is not saved yet."""
  if tokenizer_path(builder.data_dir):  # today's name or an older one: data prepared before still serves
    return
  path = os.path.join(builder.data_dir, TOKENIZER_FILENAME)
  print(f"training tokenizer {path} ...", flush=True)
  start = time.time()
  train_sentencepiece([DESCRIBE_PROMPT] + texts_fn(builder), path[:-len(".model")])
  print(f"done in {time.time() - start:.1f} s", flush=True)


def _open_source(builder, split: str):
  """The random-access data source of a prepared split, with a UserError naming the path."""
  if not builder.is_prepared():
    raise UserError(f"{builder.name}/{builder.builder_config.name} is not prepared in "
                    f"{builder.data_dir}; run vlm_jax.data.pipeline.prepare_data first")
  try:
    source = builder.as_data_source(split)
    if len(source):
      source[0]
  except Exception as e:  # tfds raises many kinds here; all mean the files are unusable
    raise UserError(f"cannot read split {split!r} of the prepared data in {builder.data_dir} "
                    f"({type(e).__name__}: {e}); delete that directory and prepare again") from e
  return source


def open_split(data_config, split: str):
  """Random-access source of decoded examples (bytes texts, uint8 images) of a prepared split.

  For "fashion_mnist": a ClassificationSource of the split ({"image": uint8 [28,28,3], "label"}).
  """
  if _dataset(data_config) == "fashion_mnist":
    return ClassificationSource(*fashion_mnist.load(split, _fashion_mnist_dir(data_config)))
  return _open_source(make_builder(data_config), split)


class ClassificationSource:
  """Random access to labelled grey images in memory: {"image": uint8 [H,W,3] (grey replicated), "label": int32}."""

  def __init__(self, images: np.ndarray, labels: np.ndarray):
    self._images = images
    self._labels = labels

  def __len__(self):
    return len(self._labels)

  def __getitem__(self, index):
    image = np.repeat(np.asarray(self._images[index])[:, :, None], 3, axis=-1)
    return {"image": image, "label": np.int32(self._labels[index])}


# ----------------------------------------------------------------------------- decoding

def _text(value) -> str:
  return value.decode("utf-8") if isinstance(value, bytes) else str(value)


def _decode_texts(raw: dict) -> dict:
  """Data-source example -> python strings/lists; the image stays uint8."""
  example = {name: _text(raw[name]) for name in shapes.TEXT_FIELDS}
  example.update({name: [_text(v) for v in raw[name]] for name in shapes.LIST_FIELDS})
  example["image"] = np.asarray(raw["image"], np.uint8)
  return example


def decode_example(raw: dict) -> dict:
  """Data-source example -> python strings/lists and a float32 image in [-1, 1]."""
  example = _decode_texts(raw)
  example["image"] = image_to_float(example["image"])
  return example


def image_to_float(image: np.ndarray) -> np.ndarray:
  """uint8 [.., S, S, 3] -> float32 in [-1, 1]."""
  return np.asarray(image, np.float32) / 127.5 - 1.0


class MemoizedSource:
  """A data source that keeps each decoded example after its first read.

  tfds's generic deserialisation costs ~0.45 ms an example, a quarter of a training step's time on
  2 cores; the shapes train split decoded is ~150 MB, so from the second epoch on it is read from memory.
  Deterministic: index i always gives the same example, so shuffling and checkpointed state are unchanged.

  A record that cannot be decoded (a corrupt image) or has an empty caption is either skipped (None,
  counted in SKIPPED_RECORDS; grain drops it) or stops the run with a UserError naming the record,
  as `on_bad_record` ("skip" | "fail") says.
  """

  def __init__(self, source, on_bad_record: str = "skip", split: str = "train"):
    if on_bad_record not in ("skip", "fail"):
      raise UserError(f"config.data.on_bad_record={on_bad_record!r}: expected 'skip' or 'fail'")
    self._source = source
    self._cache = {}
    self._on_bad_record = on_bad_record
    self._split = split

  def __len__(self):
    return len(self._source)

  def _read(self, index):
    try:
      example = _decode_texts(self._source[index])
    except Exception as e:  # PIL/tfds raise many kinds for a damaged record
      problem = f"cannot decode record {index} of the {self._split} split ({type(e).__name__}: {e})"
    else:
      if example["caption"].strip() and all(c.strip() for c in example["captions"]):
        return example
      problem = f"record {index} of the {self._split} split has an empty caption"
    if self._on_bad_record == "fail":
      raise UserError(problem + "; set config.data.on_bad_record='skip' to skip such records")
    SKIPPED_RECORDS.add()
    return None

  def __getitem__(self, index):
    if index not in self._cache:
      self._cache[index] = self._read(index)
    return self._cache[index]


# ----------------------------------------------------------------------------- training batches

class TruncationCounter:
  """How many training texts were tokenized, and how many were cut to max_text_len.

  Counts include examples prefetched but not consumed yet; thread-safe because grain maps
  examples in several threads.
  """

  def __init__(self):
    self._lock = threading.Lock()
    self.texts = 0
    self.truncated = 0

  def add(self, truncated: bool) -> None:
    with self._lock:
      self.texts += 1
      self.truncated += int(truncated)


class RecordCounter:
  """How many training records were skipped as undecodable or empty (thread-safe, as TruncationCounter)."""

  def __init__(self):
    self._lock = threading.Lock()
    self.skipped = 0

  def add(self) -> None:
    with self._lock:
      self.skipped += 1


TRUNCATIONS = TruncationCounter()
SKIPPED_RECORDS = RecordCounter()


def make_vqa_prompt(tokenizer: Tokenizer, question: str, max_len: int) -> np.ndarray:
  """BOS + question ids (int32), at most max_len - 1 long so that an EOS still fits.

  Training and evaluation both build prompts here, so they can never drift apart.
  """
  ids = [tokenizer.bos_id] + tokenizer.encode(question)
  return np.asarray(ids[:max_len - 1], np.int32)


def _contrastive_features(example: dict, rng: np.random.Generator, tokenizer, max_len: int,
                          canonical_prob: float = 0.0):
  """A true caption ('text') and the canonical caption ('caption').

  'text' is the canonical caption with probability canonical_prob, else uniformly one of all the true
  captions (canonical, count, relations): the mix decides which skills the contrastive towers practise.
  """
  captions = example["captions"]
  chosen = example["caption"] if rng.random() < canonical_prob else captions[rng.integers(len(captions))]
  text, text_cut = tokenize(tokenizer, chosen, max_len)
  caption, caption_cut = tokenize(tokenizer, example["caption"], max_len)
  TRUNCATIONS.add(text_cut)
  TRUNCATIONS.add(caption_cut)
  return {"image": example["image"], "text": text, "caption": caption}


def _vqa_features(example: dict, rng: np.random.Generator, tokenizer, max_len: int,
                  caption_prob: float):
  """Prompt + answer in one sequence ('text') and the prompt length ('prefix_len')."""
  if rng.random() < caption_prob:
    prompt, answer = DESCRIBE_PROMPT, example["caption"]
  else:
    i = rng.integers(len(example["questions"]))
    prompt, answer = example["questions"][i], example["answers"][i]
  prefix = make_vqa_prompt(tokenizer, prompt, max_len)
  text, truncated = pack_tokens(tokenizer, list(prefix) + tokenizer.encode(answer), max_len)
  TRUNCATIONS.add(truncated or len(prefix) < 1 + len(tokenizer.encode(prompt)))
  return {"image": example["image"], "text": text, "prefix_len": np.int32(len(prefix))}


def _features(raw: dict, rng: np.random.Generator, *, task: str, tokenizer, data_config) -> dict:
  """One training example of `task` as numpy arrays from a decoded example; rng is grain's per-(seed, index) generator."""
  example = {**raw, "image": image_to_float(raw["image"])}
  if task == "contrastive_caption":
    return _contrastive_features(example, rng, tokenizer, data_config.max_text_len,
                                 data_config.get("canonical_caption_prob", 0.0))
  return _vqa_features(example, rng, tokenizer, data_config.max_text_len,
                       data_config.vqa_caption_prob)


def _classification_features(example: dict) -> dict:
  """{"image": float32 [H,W,3] in [-1, 1], "label": int32} from a ClassificationSource example."""
  return {"image": image_to_float(example["image"]), "label": example["label"]}


def train_iterator(data_config, tokenizer: Tokenizer | None, *, batch_size: int, seed: int, task: str,
                   process_index: int = 0, process_count: int = 1):
  """Endless iterator of this process's training batches (dicts of numpy, leading dim B/P).

  Each process reads the examples index % process_count == process_index, shuffled anew every
  epoch. The iterator has get_state()/set_state() for exact resumption. task "classification"
  (data "fashion_mnist" only) gives {"image": float32 [B/P,28,28,3], "label": int32 [B/P]} and
  ignores the tokenizer.
  """
  if task not in TASKS:
    raise UserError(f"unknown data task {task!r}; expected one of {TASKS}")
  if batch_size % process_count:
    raise UserError(f"batch_size {batch_size} is not divisible by {process_count} processes")
  classification = task == "classification"
  if classification != (_dataset(data_config) == "fashion_mnist"):
    raise UserError(f"config.data.name={data_config.name!r} cannot feed the {task!r} task: 'classification' "
                    f"needs 'fashion_mnist', the other tasks need one of {list(SCENE_DATASETS)}")
  source = open_split(data_config, "train")
  if not classification:
    source = MemoizedSource(source, data_config.get("on_bad_record", "skip"))
  dataset = grain.MapDataset.source(source)[process_index::process_count]
  if len(dataset) < batch_size // process_count:
    raise UserError(f"train split has {len(dataset)} examples per process, fewer than the "
                    f"per-process batch {batch_size // process_count}")
  if classification:
    dataset = dataset.seed(seed).shuffle().repeat().map(_classification_features)
  else:
    dataset = dataset.filter(lambda example: example is not None).seed(seed).shuffle().repeat()
    # After repeat, the element index includes the epoch: new random choices every epoch.
    dataset = dataset.random_map(functools.partial(
        _features, task=task, tokenizer=tokenizer, data_config=data_config))
  # Few threads and a small buffer: 2 cores, and examples are cheap to decode.
  read_options = grain.ReadOptions(num_threads=2, prefetch_buffer_size=2 * batch_size)
  dataset = dataset.to_iter_dataset(read_options)
  dataset = dataset.batch(batch_size // process_count, drop_remainder=True)
  return iter(dataset)


# ----------------------------------------------------------------------------- evaluation

def load_split(data_config, split: str) -> dict:
  """A whole split decoded: 'image' float32 [N,S,S,3] in [-1,1], python lists for the texts.

  For "fashion_mnist": {"image": float32 [N,28,28,3] in [-1,1] (grey replicated), "label": int32 [N]}.
  """
  if _dataset(data_config) == "fashion_mnist":
    images, labels = fashion_mnist.load(split, _fashion_mnist_dir(data_config))
    return {"image": image_to_float(np.repeat(images[..., None], 3, axis=-1)),
            "label": np.array(labels, np.int32)}
  source = open_split(data_config, split)
  examples = [decode_example(source[i]) for i in range(len(source))]
  fields = shapes.TEXT_FIELDS + shapes.LIST_FIELDS
  result = {name: [e[name] for e in examples] for name in fields}
  result["image"] = np.stack([e["image"] for e in examples])
  return result


def load_zero_shot(data_config, split: str = "test") -> tuple[np.ndarray, np.ndarray, tuple]:
  """Fashion-MNIST's `split` for zero-shot classification by a model trained on scenes.

  Returns (float32 [N,S,S,3] images in [-1,1], each alone in cell i % 4 of an S = config.data.image_size
  canvas as a 1-item scene draws it; int32 [N] labels; the class names).
  """
  size = data_config.image_size
  if size % 2:
    raise UserError(f"config.data.image_size={size} must be even for Fashion-MNIST scenes (a 2x2 grid)")
  images, labels = fashion_mnist.load(split, _fashion_mnist_dir(data_config))
  return (image_to_float(fashion_mnist.place_single(images, size)), np.array(labels, np.int32),
          fashion_mnist.CLASS_NAMES)
