"""Input pipelines: prepare once, stream training batches, load eval splits, for any dataset of the registry.

Datasets (config.data.name) are builders in vlm_jax/data/datasets.py with one interface (prepare, open a
split, decode a record, the training image, the tokenizer's texts, the evaluators' inputs): this module never
asks which one it has. "shapes" and "fashion_mnist_scenes" are tfds builders of scenes with captions, hard
negatives and questions; "fashion_mnist" is the plain labelled images for the "classification" task;
"image_text" is the user's own data (image_text.py).

Training batches come from a grain `MapDataset` over a random-access source, so shuffling, per-example
randomness and each process's part are all functions of (seed, index): the global order is defined once by
the seed, and process p of P takes rows [p B/P, (p+1) B/P) of every global batch of B, so a run sees the same
batches on any number of processes. The returned iterator (TrainIterator) saves its state as a position in
that global order, so a checkpoint written by P processes resumes at the same place on any other number.
"""

import functools
import math
import os
import threading
import time

import grain
import numpy as np

from vlm_jax.data import datasets, images as images_lib, negatives
from vlm_jax.data.tokenizer import (TOKENIZER_FILENAME, Tokenizer, pack_tokens, tokenize, tokenizer_path,
                                    train_sentencepiece)
from vlm_jax.errors import UserError

DESCRIBE_PROMPT = datasets.DESCRIBE_PROMPT
TASKS = ("contrastive_caption", "vqa", "classification")
# What a model trained on a task's batches writes a caption after: BOS alone, or BOS + the question whose
# answer the caption was in training.
CAPTION_PROMPTS = {"contrastive_caption": "", "vqa": DESCRIBE_PROMPT}
DATASETS = datasets.NAMES


# ----------------------------------------------------------------------------- preparation

def make_builder(data_config) -> datasets.Builder:
  """The registry's builder of config.data.name."""
  return datasets.get(data_config)


def prepare_data(data_config):
  """Prepares config.data's dataset and its tokenizer unless present; returns the builder."""
  builder = datasets.get(data_config)
  builder.prepare()
  if builder.tokenizer_dir() is not None and data_config.get("tokenizer", "sentencepiece") == "sentencepiece":
    _prepare_tokenizer(builder)
  return builder


def prepare_shapes(data_dir: str, builder_config: str = "default"):
  """Generates the shapes dataset (ArrayRecord) and its tokenizer unless present; returns the builder."""
  import ml_collections  # noqa: PLC0415
  return prepare_data(ml_collections.ConfigDict(dict(name="shapes", data_dir=data_dir, builder_config=builder_config,
                                                     tokenizer="sentencepiece")))


def _prepare_tokenizer(builder) -> None:
  """Trains the SentencePiece model on the builder's texts + [DESCRIBE_PROMPT] if it is not saved yet."""
  directory = builder.tokenizer_dir()
  if tokenizer_path(directory):  # today's name or an older one: data prepared before still serves
    return
  path = os.path.join(directory, TOKENIZER_FILENAME)
  print(f"training tokenizer {path} ...", flush=True)
  start = time.time()
  options = builder.tokenizer_options() if hasattr(builder, "tokenizer_options") else {}
  train_sentencepiece([DESCRIBE_PROMPT] + builder.tokenizer_texts(), path[:-len(".model")], **options)
  print(f"done in {time.time() - start:.1f} s", flush=True)


def open_split(data_config, split: str):
  """Random-access source of a prepared split's raw records (for the scenes: bytes texts, uint8 images;
  for "fashion_mnist": {"image": uint8 [28,28,3], "label"})."""
  return datasets.get(data_config).open(split)


ClassificationSource = datasets.ClassificationSource


# ----------------------------------------------------------------------------- decoding

def decode_example(raw: dict, builder=None) -> dict:
  """A scenes data-source example (or a builder's record) -> python strings/lists and a float32 image in [-1, 1]."""
  builder = builder or datasets.ScenesBuilder(None)
  example = builder.decode(raw)
  example["image"] = image_to_float(example["image"])
  return example


def image_to_float(image: np.ndarray) -> np.ndarray:
  """uint8 [.., S, S, 3] -> float32 in [-1, 1]."""
  return images_lib.normalize(image, "siglip")


class MemoizedSource:
  """A data source that decodes records (builder.decode) and, for small datasets, keeps each one after its first read.

  tfds's generic deserialisation costs ~0.45 ms an example, a quarter of a training step's time on
  2 cores; the shapes train split decoded is ~150 MB, so from the second epoch on it is read from memory.
  Deterministic: index i always gives the same example, so shuffling and checkpointed state are unchanged.
  A builder with MEMOIZE False (the user's own data) is decoded on every read.

  A record that cannot be decoded (a corrupt image) or has an empty caption is either skipped (None,
  counted in SKIPPED_RECORDS; grain drops it) or stops the run with a UserError naming the record,
  as `on_bad_record` ("skip" | "fail") says.
  """

  def __init__(self, source, on_bad_record: str = "skip", split: str = "train", builder=None):
    if on_bad_record not in ("skip", "fail"):
      raise UserError(f"config.data.on_bad_record={on_bad_record!r}: expected 'skip' or 'fail'")
    self._source = source
    self._cache = {}
    self._on_bad_record = on_bad_record
    self._split = split
    self._builder = builder or datasets.ScenesBuilder(None)
    self._memoize = self._builder.MEMOIZE

  def __len__(self):
    return len(self._source)

  def _read(self, index):
    try:
      example = self._builder.decode(self._source[index])
    except Exception as e:  # PIL/tfds raise many kinds for a damaged record
      problem = f"cannot decode record {index} of the {self._split} split ({type(e).__name__}: {e})"
    else:
      if "caption" not in example or (example["caption"].strip() and all(c.strip() for c in example["captions"])):
        return example
      problem = f"record {index} of the {self._split} split has an empty caption"
    if self._on_bad_record == "fail":
      raise UserError(problem + "; set config.data.on_bad_record='skip' to skip such records")
    SKIPPED_RECORDS.add()
    return None

  def __getitem__(self, index):
    if not self._memoize:
      return self._read(index)
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


# The data keys that only choose contrastive texts (_contrastive_features): refused for other tasks.
CONTRASTIVE_TEXT_KEYS = ("hard_negatives", "relation_caption_prob", "top_down_caption_prob", "order_negatives")
HARD_NEGATIVE_FEATURES = ("text_negative", "text_negative_valid")  # config.data.hard_negatives: see below
TRUE_COUNT_FEATURES = ("object_count", "text_count")  # config.data.ignore_true_counts (+ "text_negative_count")


def _contrastive_features(example: dict, rng: np.random.Generator, tokenizer, max_len: int,
                          canonical_prob: float = 0.0, hard_negatives: bool = False, relation_prob: float = 0.0,
                          decoder_caption: str = "canonical", top_down_prob: float = 0.0, builder=None,
                          true_counts: bool = False, order_negatives: bool = False):
  """A true caption ('text') and the canonical caption ('caption'); with hard_negatives also 'text_negative',
  the text made false by a word swap (vlm_jax.data.negatives), and 'text_negative_valid' (0: the text has none).

  'text' is, for a scene of a pair of relation twins (config.data.relation_twins), the pair's relation statement
  true of it; otherwise, with probability relation_prob, one of the captions that state a spatial relation
  (uniformly; an image without one skips this draw); otherwise, with probability top_down_prob, the scene's objects
  named top to bottom (builder.top_down_caption; a scene without such a chain, or with one longer than max_len,
  skips this draw), else the canonical caption with probability canonical_prob, else uniformly
  one of all the true captions (canonical, count, relations): the mix decides which skills the contrastive towers
  practise. relation_prob 0 draws nothing for it (the stream of every run before the field). 'caption' (what a
  captioner learns to write) is the canonical caption, or with decoder_caption "text" the same text as 'text'.
  true_counts (config.data.ignore_true_counts): also 'object_count', the scene's number of objects, and 'text_count'
  (and 'text_negative_count'), the count the text states (builder.COUNT_CAPTIONS; 0: none).
  order_negatives (config.data.order_negatives, with hard_negatives): a text whose word order states where the
  objects lie (the canonical list, a top-down chain) gets builder.order_negative, two neighbours named in swapped
  order, as its negative before the word swaps (which leave a list without one).
  """
  captions = example["captions"]
  relations = [c for c in captions if negatives.states_relation(c)] if relation_prob > 0 else []
  top_down = builder.top_down_caption(example) if top_down_prob > 0 and "twin_text" not in example else ""
  if top_down and tokenize(tokenizer, top_down, max_len)[1]:
    top_down = ""  # a chain cut short would leave an object half named: the scene skips this draw
  if "twin_text" in example:  # one of a pair of relation twins (RelationTwins): the pair's statement, no draw
    chosen = example["twin_text"]
  elif relations and rng.random() < relation_prob:
    chosen = relations[rng.integers(len(relations))]
  elif top_down and rng.random() < top_down_prob:
    chosen = top_down
  elif rng.random() < canonical_prob:
    chosen = example["caption"]
  else:
    chosen = captions[rng.integers(len(captions))]
  text, text_cut = tokenize(tokenizer, chosen, max_len)
  caption, caption_cut = tokenize(tokenizer, chosen if decoder_caption == "text" else example["caption"], max_len)
  TRUNCATIONS.add(text_cut)
  TRUNCATIONS.add(caption_cut)
  features = {"image": example["image"], "text": text, "caption": caption}
  if hard_negatives:
    negative = builder.order_negative(example, chosen, rng) if order_negatives else ""
    negative = negative or negatives.hard_negative(chosen, rng)
    features["text_negative"] = tokenize(tokenizer, negative, max_len)[0]
    features["text_negative_valid"] = np.int32(bool(negative))
    if true_counts:
      features["text_negative_count"] = np.int32(builder.COUNT_CAPTIONS.get(negative, 0))
  if true_counts:
    features["object_count"] = np.int32(builder.object_count(example))
    features["text_count"] = np.int32(builder.COUNT_CAPTIONS.get(chosen, 0))
  return features


def answer_mask(text: np.ndarray, prefix_len: int, pad_id: int) -> np.ndarray:
  """int32 [T]: 1 at the positions of a single prompt + answer sequence that the loss predicts (after the prompt,
  not padding); the loss's default (losses.answer_weights) written out for the batch."""
  positions = np.arange(len(text))
  return ((positions >= prefix_len) & (text != pad_id)).astype(np.int32)


def _vqa_features(example: dict, rng: np.random.Generator, tokenizer, max_len: int,
                  caption_prob: float):
  """Prompt + answer in one sequence ('text'), the prompt length ('prefix_len') and which positions are the
  answer ('answer_mask'). A conversation (llava data) is packed whole, see _conversation_features; an example
  without questions answers DESCRIBE_PROMPT with one of its captions."""
  if example.get("conversations"):
    return _conversation_features(example, tokenizer, max_len)
  if "questions" not in example:
    prompt, answer = DESCRIBE_PROMPT, example["captions"][rng.integers(len(example["captions"]))]
  elif rng.random() < caption_prob:
    prompt, answer = DESCRIBE_PROMPT, example["caption"]
  else:
    i = rng.integers(len(example["questions"]))
    prompt, answer = example["questions"][i], example["answers"][i]
  prefix = make_vqa_prompt(tokenizer, prompt, max_len)
  text, truncated = pack_tokens(tokenizer, list(prefix) + tokenizer.encode(answer), max_len)
  TRUNCATIONS.add(truncated or len(prefix) < 1 + len(tokenizer.encode(prompt)))
  return {"image": example["image"], "text": text, "prefix_len": np.int32(len(prefix)),
          "answer_mask": answer_mask(text, len(prefix), tokenizer.pad_id)}


def _conversation_features(example: dict, tokenizer, max_len: int) -> dict:
  """A multi-turn conversation: BOS, then each user turn and each assistant turn followed by EOS.

  The prefix (seen bidirectionally with the image) is BOS + the first user turn; 'answer_mask' is 1 on every
  assistant token and the EOS after it, 0 on the user turns: the loss is on what the assistant says only.
  Too long conversations lose their tail; the last position is then an EOS.
  """
  ids, mask = [tokenizer.bos_id], [0]
  prefix_len = None
  for role, turn in example["conversations"]:
    tokens = tokenizer.encode(turn)
    if role == "human":
      ids += tokens
      mask += [0] * len(tokens)
      if prefix_len is None:
        prefix_len = min(len(ids), max_len - 1)
    else:
      ids += tokens + [tokenizer.eos_id]
      mask += [1] * (len(tokens) + 1)
  truncated = len(ids) > max_len
  if truncated:
    ids, mask = ids[:max_len - 1] + [tokenizer.eos_id], mask[:max_len - 1] + [1]
  TRUNCATIONS.add(truncated)
  text = np.full([max_len], tokenizer.pad_id, np.int32)
  text[:len(ids)] = ids
  weights = np.zeros([max_len], np.int32)
  weights[:len(mask)] = mask
  weights[:prefix_len] = 0
  return {"image": example["image"], "text": text, "prefix_len": np.int32(prefix_len), "answer_mask": weights}


def _features(raw: dict, rng: np.random.Generator, *, task: str, tokenizer, data_config, builder) -> dict:
  """One training example of `task` as numpy arrays from a decoded example; rng is grain's per-(seed, index)
  generator (the builder's training image first: its crop, then the task's random choices)."""
  image = builder.normalize(builder.train_image(raw, rng))
  if task == "classification":
    return {"image": image, "label": raw["label"]}
  example = {**raw, "image": image}
  if task == "contrastive_caption":
    return _contrastive_features(example, rng, tokenizer, data_config.max_text_len,
                                 data_config.get("canonical_caption_prob", 0.0),
                                 data_config.get("hard_negatives", False),
                                 data_config.get("relation_caption_prob", 0.0),
                                 data_config.get("decoder_caption", "canonical"),
                                 data_config.get("top_down_caption_prob", 0.0), builder,
                                 data_config.get("ignore_true_counts", False),
                                 data_config.get("order_negatives", False))
  return _vqa_features(example, rng, tokenizer, data_config.max_text_len,
                       data_config.vqa_caption_prob)


def _array_choices(index: int, rng: np.random.Generator, *, builder) -> np.ndarray:
  """Example `index` of a builder's in-memory train arrays (train_arrays) without its image: int32 [1 + k], the
  index then the example's k augmentation choices, drawn from grain's generator of the example as train_image
  draws them on the per-example path (so both paths give the same batches)."""
  choices = builder.augment_choices(rng)
  return np.asarray([index] if choices is None else np.concatenate([[index], choices]), np.int32)


def _array_batch(rows: np.ndarray, *, arrays, builder) -> dict:
  """int32 [B, 1 + k] rows of _array_choices -> {"image": float32 [B,S,S,3], "label": int32 [B]}: one gather,
  one augmentation and one normalisation for the whole batch (grey images get their 3 channels last)."""
  images, labels = arrays
  batch = images[rows[:, 0]]
  if rows.shape[1] > 1:
    batch = builder.augment_batch(batch, rows[:, 1:])
  if batch.ndim == 3:
    batch = np.repeat(batch[..., None], 3, axis=-1)
  return {"image": builder.normalize(batch), "label": np.asarray(labels[rows[:, 0]], np.int32)}


TWIN_STREAM = 0x7717  # the generators of RelationTwins' draws: (seed, TWIN_STREAM, pair index)


class RelationTwins(grain.MapDataset):
  """config.data.relation_twins = p: each pair of elements (2k, 2k+1) of the parent stream is, with probability p,
  replaced by element 2k and its counterfactual twin (builder.relation_twin: the scene mirrored on one axis), each
  carrying 'twin_text', a relation between the same two objects true of it and false of the other. Both images and
  both texts then sit in one batch (the batch size is even), so the contrastive loss is fitted only by reading the
  relation from the image: the pair is each other's hardest negative, on the text side and on the image side.
  A scene without a clearly separated pair, or a skipped record, leaves its pair as it was. Every draw is a
  function of (seed, pair index), so order, resumption and each process's part work as without twins.
  """

  def __init__(self, parent, *, builder, seed: int, share: float):
    super().__init__(parent)
    self._builder, self._seed, self._share = builder, seed, share

  def __len__(self):
    return len(self._parent)

  def __getitem__(self, j):
    if isinstance(j, slice):
      return self.slice(j)
    rng = np.random.default_rng([self._seed, TWIN_STREAM, j // 2])
    if rng.random() >= self._share:
      return self._parent[j]
    first = self._parent[j - j % 2]
    made = None if first is None else self._builder.relation_twin(first, rng)
    if made is None:
      return self._parent[j]
    text, twin, twin_text = made
    return {**first, "twin_text": text} if j % 2 == 0 else {**twin, "twin_text": twin_text}

  def __str__(self):
    return f"RelationTwins(share={self._share})"


class ProcessPart(grain.MapDataset):
  """Process `index` of `count`'s part of a stream cut into global batches of `global_batch`: its element j is
  element (j // b) * global_batch + index * b + j % b of the parent, b = global_batch // count. With one process
  the identity."""

  def __init__(self, parent, global_batch: int, index: int, count: int):
    super().__init__(parent)
    self._global, self._index, self._local = global_batch, index, global_batch // count
    self._count = count

  def __len__(self):
    return len(self._parent) // self._count

  def __getitem__(self, j):
    if isinstance(j, slice):
      return self.slice(j)
    return self._parent[(j // self._local) * self._global + self._index * self._local + j % self._local]

  def __str__(self):
    return f"ProcessPart(global_batch={self._global}, index={self._index}, count={self._count})"


def global_indices(length: int, seed: int, batch_size: int, steps: int, process_index: int = 0,
                   process_count: int = 1) -> np.ndarray:
  """int[steps, batch_size // process_count]: the source indices process `process_index` reads in its first
  `steps` batches (no record skipped): the order train_iterator follows, without decoding anything."""
  dataset = grain.MapDataset.range(length).seed(seed).shuffle().repeat()
  dataset = ProcessPart(dataset, batch_size, process_index, process_count)
  local = batch_size // process_count
  return np.array([dataset[i] for i in range(steps * local)]).reshape(steps, local)


class TrainIterator(grain.DatasetIterator):
  """This process's training batches, with a state that any number of processes can resume from.

  get_state() -> {"grain": grain's own state of this process's stream (its "next_index", in its examples),
  "global_position": where the global order resumes, "batch_size", "process_index", "process_count"}.
  global_position is the index in the global order (the seeded shuffle, epochs included) of the first
  example of the next global batch that this process has not begun: global batches consumed x batch_size,
  exactly, when no record was skipped (with one process, grain's own position, exactly).

  restore(states) takes the states of every process of the saved run, {(process_index, process_count):
  state}: its own one is set as is (bit-exact, skipped records included) when the run's layout is the saved
  one; on another number of processes (or batch size) each process starts at the global batch at or after
  the furthest saved global_position (no example read twice; with skipped records, up to a global batch
  passed over). A state without "grain" is the plain grain state that one-process runs saved before this
  class (the one-process stream is the global order, so its next_index is the global position).
  """

  def __init__(self, parent, *, batch_size: int, process_index: int, process_count: int):
    super().__init__(parent)
    self._batch_size, self._index, self._count = batch_size, process_index, process_count
    self._local = batch_size // process_count

  def __next__(self):
    return next(self._parent)

  def get_state(self) -> dict:
    inner = self._parent.get_state()
    read = inner["next_index"]
    position = read if self._count == 1 else math.ceil(read / self._local) * self._batch_size
    return {"grain": inner, "global_position": int(position), "batch_size": self._batch_size,
            "process_index": self._index, "process_count": self._count}

  def set_state(self, state: dict) -> None:
    """A state of this layout (or a legacy one-process state) as is; otherwise its global position."""
    self.restore({(state.get("process_index", 0), state.get("process_count", 1)): state})

  def restore(self, states: dict) -> None:
    own = states.get((self._index, self._count))
    if own is not None and "grain" not in own and self._count == 1:
      self._parent.set_state(own)  # legacy: a one-process run's grain state, restored as before
    elif own is not None and "grain" in own and own["batch_size"] == self._batch_size:
      self._parent.set_state(own["grain"])
    else:
      if not states:
        raise ValueError("no data iterator state to restore")
      position = max(s["global_position"] if "grain" in s else s["next_index"] for s in states.values())
      inner = self._parent.get_state()
      inner["next_index"] = math.ceil(position / self._batch_size) * self._local
      self._parent.set_state(inner)
    self._parent.start_prefetch()


def train_iterator(data_config, tokenizer: Tokenizer | None, *, batch_size: int, seed: int, task: str,
                   process_index: int = 0, process_count: int = 1):
  """Endless iterator of this process's training batches (dicts of numpy, leading dim B/P).

  The global order (a shuffle of the train split by `seed`, anew every epoch) does not depend on the number
  of processes: process p takes rows [p B/P, (p+1) B/P) of each global batch of B. The iterator's state
  (TrainIterator) resumes exactly, on this or any other number of processes. task "classification" (data
  "fashion_mnist") gives {"image": float32 [B/P,28,28,3], "label": int32 [B/P]} and ignores the tokenizer.
  """
  if task not in TASKS:
    raise UserError(f"unknown data task {task!r}; expected one of {TASKS}")
  if batch_size % process_count:
    raise UserError(f"batch_size {batch_size} is not divisible by {process_count} processes")
  builder = datasets.get(data_config)
  if task not in builder.TASKS:
    fitting = [name for name in datasets.NAMES if task in datasets.tasks(name)]
    raise UserError(f"config.data.name={data_config.name!r} cannot feed the {task!r} task (it gives "
                    f"{list(builder.TASKS)}); {task!r} batches come from {fitting} ('classification' from labelled "
                    "images)")
  arrays = builder.train_arrays() if task == "classification" else None
  source = (MemoizedSource(builder.open("train"), data_config.get("on_bad_record", "skip"), builder=builder)
            if arrays is None else range(len(arrays[1])))  # arrays: grain's elements are the examples' indices
  dataset = grain.MapDataset.source(source)
  if len(dataset) < batch_size:
    raise UserError(f"train split has {len(dataset)} examples, fewer than the batch {batch_size}")
  # After repeat, the element index includes the epoch: new random choices every epoch; random choices are made
  # per global index, before each process takes its part, so they too are the same on any number of processes.
  dataset = dataset.filter(lambda example: example is not None).seed(seed).shuffle().repeat()
  twins = data_config.get("relation_twins", 0.0)
  mirrorable = [name for name, b in datasets.BUILDERS.items() if b.RELATION_TWINS]
  if twins:
    if task != "contrastive_caption" or not builder.RELATION_TWINS:
      raise UserError(f"config.data.relation_twins={twins}: relation twins are made for contrastive_caption batches of "
                      f"scenes that can be mirrored ({mirrorable}), not for {task!r} batches of "
                      f"config.data.name={data_config.name!r}")
    styles = getattr(builder.tfds.builder_config, "train_styles", ("default",))
    if tuple(styles) != ("default",):
      raise UserError(f"config.data.relation_twins={twins}: twins are redrawn in the default style, and "
                      f"config.data.builder_config={data_config.builder_config!r} trains on {tuple(styles)}: the twin "
                      "would differ from its scene in more than the mirrored axis")
    dataset = RelationTwins(dataset, builder=builder, seed=seed, share=twins)
  counting = [name for name, b in datasets.BUILDERS.items() if b.COUNT_CAPTIONS]
  if data_config.get("ignore_true_counts", False) and (task != "contrastive_caption" or not builder.COUNT_CAPTIONS):
    raise UserError(f"config.data.ignore_true_counts=True: it is for contrastive_caption batches of scenes with count "
                    f"captions ({counting}), not for {task!r} batches of config.data.name={data_config.name!r}")
  if task != "contrastive_caption":  # these choose the contrastive texts: another task's batches have none
    for key in CONTRASTIVE_TEXT_KEYS:
      if data_config.get(key):
        raise UserError(f"config.data.{key}={data_config[key]}: it chooses the texts of contrastive_caption batches; "
                        f"this model trains on {task!r} batches, where it would do nothing")
  if data_config.get("order_negatives", False) and not (data_config.get("hard_negatives", False)
                                                         and builder.RELATION_TWINS):
    raise UserError("config.data.order_negatives=True: it needs config.data.hard_negatives=True (the negatives' "
                    f"column) and scenes whose captions list objects in order (only {mirrorable}), not "
                    f"config.data.name={data_config.name!r} with hard_negatives={data_config.get('hard_negatives')}")
  if data_config.get("top_down_caption_prob", 0.0) and not builder.RELATION_TWINS:
    raise UserError(f"config.data.top_down_caption_prob={data_config.top_down_caption_prob}: config.data.name="
                    f"{data_config.name!r} has no top-down captions (only {mirrorable})")
  if arrays is None:
    dataset = dataset.random_map(functools.partial(
        _features, task=task, tokenizer=tokenizer, data_config=data_config, builder=builder))
  else:  # the same chain over the indices, so the same order and per-example generators; images gathered per batch
    dataset = dataset.random_map(functools.partial(_array_choices, builder=builder))
  if process_count > 1:
    dataset = ProcessPart(dataset, batch_size, process_index, process_count)
  # Few threads and a small buffer: 2 cores, and examples are cheap to decode. In-memory arrays are read in this
  # thread: an element is an index, and handing it between threads costs ~10x what reading it does.
  threads = int(data_config.get("num_threads", 0) or 2) if arrays is None else 0
  read_options = grain.ReadOptions(num_threads=threads, prefetch_buffer_size=max(2 * batch_size, 4 * threads))
  dataset = dataset.to_iter_dataset(read_options)
  dataset = dataset.batch(batch_size // process_count, drop_remainder=True)
  if arrays is not None:
    dataset = dataset.map(functools.partial(_array_batch, arrays=arrays, builder=builder))
  return TrainIterator(iter(dataset), batch_size=batch_size, process_index=process_index,
                       process_count=process_count)


# ----------------------------------------------------------------------------- evaluation

def load_split(data_config, split: str) -> dict:
  """A whole split decoded for the evaluators: 'image' float32 [N,S,S,3] (normalised as config.data says),
  python lists for the texts (see the builder's eval_split); for "fashion_mnist": {"image", "label": int32 [N]}."""
  return datasets.get(data_config).eval_split(split)


def train_captions(data_config) -> list:
  """Every true caption of the train split (the builder's train_captions): the text the blind baselines of the
  hard-negative probes are fitted on; [] for a dataset without hard negatives."""
  return datasets.get(data_config).train_captions()


def load_zero_shot(data_config, split: str = "test") -> tuple[np.ndarray, np.ndarray, tuple]:
  """(float32 [N,S,S,3] images, int32 [N] labels, class names) for zero-shot classification: the builder's
  (Fashion-MNIST's test images alone in a scene's cell for the scenes datasets and a config without a name)."""
  builder = datasets.get(data_config) if data_config.get("name") else datasets.Builder(data_config)
  return builder.zero_shot(split)
