"""Input pipelines for the shapes dataset: prepare once, stream training batches, load eval splits.

Training batches come from a grain `MapDataset` over the tfds ArrayRecord data source: it is
random access, so shuffling, per-process slicing and per-example randomness are all functions of
(seed, index), and the returned iterator's state (get_state/set_state) is just a position that
can be checkpointed with the model.
"""

import functools
import os
import threading
import time

import grain
import numpy as np
import tensorflow_datasets as tfds

from vlm_jax.data import shapes
from vlm_jax.data import shapes_tfds
from vlm_jax.data.tokenizer import (TOKENIZER_FILENAME, Tokenizer, load_tokenizer, pack_tokens,
                                    tokenize, train_sentencepiece)
from vlm_jax.errors import UserError

DESCRIBE_PROMPT = "describe the image."
TASKS = ("contrastive_caption", "vqa")


# ----------------------------------------------------------------------------- preparation

def prepare_shapes(data_dir: str, builder_config: str = "default"):
  """Generates the dataset (ArrayRecord) and its tokenizer unless present; returns the builder."""
  builder = shapes_tfds.make_builder(data_dir, builder_config)
  if not builder.is_prepared():
    print(f"preparing shapes/{builder_config} in {builder.data_dir} ...", flush=True)
    start = time.time()
    # tfds' nested progress bars garble logs; the builder prints a line per 10k examples instead.
    tfds.disable_progress_bar()
    try:
      builder.download_and_prepare(file_format="array_record")
    except (OSError, ValueError) as e:
      raise UserError(f"could not prepare shapes/{builder_config} in {data_dir}: {e}") from e
    print(f"done in {time.time() - start:.1f} s", flush=True)
  for split in builder.info.splits:
    _open_source(builder, split)  # fail here, with the path, rather than mid-training
  _prepare_tokenizer(builder)
  return builder


def _prepare_tokenizer(builder) -> None:
  """Trains the SentencePiece model on the train split's texts if it is not saved yet."""
  path = os.path.join(builder.data_dir, TOKENIZER_FILENAME)
  if os.path.exists(path):
    return
  print(f"training tokenizer {path} ...", flush=True)
  start = time.time()
  config = builder.builder_config
  texts = [DESCRIBE_PROMPT] + shapes.vocabulary_texts()
  for index in range(config.train):
    # Regenerating is cheaper than decoding the stored PNGs, and gives the same texts.
    texts += shapes.all_texts(shapes.make_example(config.seed, "train", index, config.image_size))
  train_sentencepiece(texts, path[:-len(".model")])
  print(f"done in {time.time() - start:.1f} s", flush=True)


def _open_source(builder, split: str):
  """The random-access data source of a prepared split, with a UserError naming the path."""
  if not builder.is_prepared():
    raise UserError(f"shapes/{builder.builder_config.name} is not prepared in "
                    f"{builder.data_dir}; run prepare_shapes first")
  try:
    source = builder.as_data_source(split)
    if len(source):
      source[0]
  except Exception as e:  # tfds raises many kinds here; all mean the files are unusable
    raise UserError(f"cannot read split {split!r} of the prepared data in {builder.data_dir} "
                    f"({type(e).__name__}: {e}); delete that directory and prepare again") from e
  return source


def open_split(data_config, split: str):
  """Random-access source of decoded examples (bytes texts, uint8 images) of a prepared split."""
  if data_config.name != "shapes":
    raise UserError(f"unknown dataset {data_config.name!r}; only 'shapes' exists")
  return _open_source(shapes_tfds.make_builder(data_config.data_dir, data_config.builder_config),
                      split)


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
  counted in BAD_RECORDS; grain drops it) or stops the run with a UserError naming the record,
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
    BAD_RECORDS.add(True)
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


TRUNCATIONS = TruncationCounter()
BAD_RECORDS = TruncationCounter()  # .truncated counts the training records skipped as undecodable or empty


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


def train_iterator(data_config, tokenizer: Tokenizer, *, batch_size: int, seed: int, task: str,
                   process_index: int = 0, process_count: int = 1):
  """Endless iterator of this process's training batches (dicts of numpy, leading dim B/P).

  Each process reads the examples index % process_count == process_index, shuffled anew every
  epoch. The iterator has get_state()/set_state() for exact resumption.
  """
  if task not in TASKS:
    raise UserError(f"unknown data task {task!r}; expected one of {TASKS}")
  if batch_size % process_count:
    raise UserError(f"batch_size {batch_size} is not divisible by {process_count} processes")
  source = open_split(data_config, "train")
  memoized = MemoizedSource(source, data_config.get("on_bad_record", "skip"))
  dataset = grain.MapDataset.source(memoized)[process_index::process_count]
  if len(dataset) < batch_size // process_count:
    raise UserError(f"train split has {len(dataset)} examples per process, fewer than the "
                    f"per-process batch {batch_size // process_count}")
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
  """A whole split decoded: 'image' float32 [N,S,S,3] in [-1,1], python lists for the texts."""
  source = open_split(data_config, split)
  examples = [decode_example(source[i]) for i in range(len(source))]
  fields = shapes.TEXT_FIELDS + shapes.LIST_FIELDS
  result = {name: [e[name] for e in examples] for name in fields}
  result["image"] = np.stack([e["image"] for e in examples])
  return result
