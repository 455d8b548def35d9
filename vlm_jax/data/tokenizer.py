"""Tokenizers: SentencePiece trained on the dataset's own captions, or raw bytes.

Both share the special ids pad=0, bos=1, eos=2, so models and pipelines never need to know which
one they were given. `encode` never adds BOS/EOS; `tokenize` does, with padding and truncation.
"""

import io
import os
import shutil
from typing import Iterable, Protocol, Sequence

import numpy as np
import sentencepiece as spm

from vlm_jax.data import fashion_mnist_tfds, shapes_tfds
from vlm_jax.errors import UserError

PAD_ID, BOS_ID, EOS_ID, UNK_ID = 0, 1, 2, 3
# The SentencePiece model, under each builder's own data_dir and copied into every training workdir.
TOKENIZER_FILENAME = "tokenizer.model"
OLD_TOKENIZER_FILENAMES = ("shapes_tokenizer.model",)  # what data prepared before was given, for any dataset
# config.data.name -> the module of its tfds builder (None: no texts, so no SentencePiece model).
DATASET_BUILDERS = {"shapes": shapes_tfds, "fashion_mnist_scenes": fashion_mnist_tfds, "fashion_mnist": None}


class Tokenizer(Protocol):
  """What the pipeline and the models need from a tokenizer."""
  pad_id: int
  bos_id: int
  eos_id: int
  vocab_size: int

  def encode(self, text: str) -> list[int]:
    """Token ids of text, without BOS/EOS."""

  def decode(self, ids: Iterable[int]) -> str:
    """Text of ids, stopping at the first EOS and skipping pad/BOS."""


def _content_ids(ids: Iterable[int]) -> list[int]:
  """ids up to the first EOS, without pad and BOS."""
  content = []
  for i in (int(i) for i in ids):
    if i == EOS_ID:
      break
    if i not in (PAD_ID, BOS_ID):
      content.append(i)
  return content


class ByteTokenizer:
  """UTF-8 bytes shifted by 3 so that ids 0-2 stay free for pad/BOS/EOS; vocab 259."""
  pad_id, bos_id, eos_id = PAD_ID, BOS_ID, EOS_ID
  vocab_size = 256 + 3

  def encode(self, text: str) -> list[int]:
    """One id per UTF-8 byte."""
    return [b + 3 for b in text.encode("utf-8")]

  def decode(self, ids: Iterable[int]) -> str:
    """Inverse of encode; stops at EOS."""
    return bytes(i - 3 for i in _content_ids(ids) if i >= 3).decode("utf-8", errors="replace")


class SentencePieceTokenizer:
  """A SentencePiece model file with pad=0, bos=1, eos=2, unk=3 (see train_sentencepiece)."""
  pad_id, bos_id, eos_id = PAD_ID, BOS_ID, EOS_ID

  def __init__(self, model_path: str):
    if not os.path.exists(model_path):
      raise UserError(f"SentencePiece model not found: {model_path}")
    self.model_path = model_path
    self._sp = spm.SentencePieceProcessor(model_file=model_path)
    self.vocab_size = self._sp.get_piece_size()

  def encode(self, text: str) -> list[int]:
    """SentencePiece ids of text."""
    return self._sp.encode(text)

  def decode(self, ids: Iterable[int]) -> str:
    """Inverse of encode; stops at EOS."""
    return self._sp.decode(_content_ids(ids))


def train_sentencepiece(texts: Iterable[str], model_prefix: str, vocab_size: int = 256) -> str:
  """Trains a word-level SentencePiece model on texts, saves model_prefix + '.model', returns it.

  The shapes captions use a closed vocabulary, so a word model gives every word exactly one
  token. The texts are deduplicated and sorted and training is single-threaded, so the same texts
  always give a byte-identical model. vocab_size is an upper bound (hard_vocab_limit=False).
  """
  model = io.BytesIO()
  # Through model_writer the file does not record model_prefix, so the bytes don't depend on
  # where the model is saved.
  spm.SentencePieceTrainer.train(
      sentence_iterator=iter(sorted(set(texts))),
      model_writer=model,
      model_type="word",
      vocab_size=vocab_size,
      hard_vocab_limit=False,
      pad_id=PAD_ID, bos_id=BOS_ID, eos_id=EOS_ID, unk_id=UNK_ID,
      num_threads=1,
      input_sentence_size=0,  # use every sentence: no random sampling
      shuffle_input_sentence=False,
      character_coverage=1.0,
      minloglevel=2,  # training logs are long and say nothing actionable
  )
  path = model_prefix + ".model"
  # Write, then rename: an interrupted run never leaves a half-written model behind.
  tmp_path = f"{path}.tmp{os.getpid()}"
  with open(tmp_path, "wb") as f:
    f.write(model.getvalue())
  os.replace(tmp_path, path)
  return path


def tokenizer_path(directory: str) -> str | None:
  """The SentencePiece model file in `directory` (today's name, else an older one), None if there is none."""
  for name in (TOKENIZER_FILENAME,) + OLD_TOKENIZER_FILENAMES:
    path = os.path.join(directory, name)
    if os.path.exists(path):
      return path
  return None


def load_tokenizer(kind: str, data_dir: str, builder_config: str = "default",
                   dataset: str = "shapes") -> Tokenizer:
  """The tokenizer named by kind ('sentencepiece' or 'byte') for a prepared dataset.

  dataset: config.data.name, the builder whose data_dir holds the SentencePiece model.
  """
  if dataset not in DATASET_BUILDERS:
    raise UserError(f"unknown dataset config.data.name={dataset!r}; expected one of {list(DATASET_BUILDERS)}")
  if kind == "byte":
    return ByteTokenizer()
  if kind != "sentencepiece":
    raise UserError(f"unknown tokenizer {kind!r}; expected 'sentencepiece' or 'byte'")
  if DATASET_BUILDERS[dataset] is None:
    raise UserError(f"config.data.name={dataset!r} has labels, not texts, so no SentencePiece model; "
                    f"use config.data.tokenizer='byte'")
  builder = DATASET_BUILDERS[dataset].make_builder(data_dir, builder_config)
  path = tokenizer_path(builder.data_dir)
  if path is None:
    prepare = (f"vlm_jax.data.pipeline.prepare_shapes({data_dir!r}, {builder_config!r})" if dataset == "shapes"
               else "vlm_jax.data.pipeline.prepare_data(config.data)")
    raise UserError(f"no SentencePiece model at {os.path.join(builder.data_dir, TOKENIZER_FILENAME)}; "
                    f"prepare the data first ({prepare})")
  return SentencePieceTokenizer(path)


def save_to_workdir(tokenizer: Tokenizer, workdir: str) -> None:
  """Copies a SentencePiece model into the workdir, so that the workdir alone is enough for inference."""
  if isinstance(tokenizer, SentencePieceTokenizer):
    path = os.path.join(workdir, TOKENIZER_FILENAME)
    tmp_path = f"{path}.tmp{os.getpid()}"
    shutil.copyfile(tokenizer.model_path, tmp_path)
    os.replace(tmp_path, path)  # never a half-copied model beside a checkpoint


def load_for_workdir(workdir: str, data_config) -> Tokenizer:
  """The tokenizer a training workdir was trained with: its own copy of the SentencePiece model, or for
  workdirs trained before they kept one, the prepared data's (config.data)."""
  path = os.path.join(workdir, TOKENIZER_FILENAME)
  if data_config.tokenizer == "sentencepiece" and os.path.exists(path):
    return SentencePieceTokenizer(path)
  return load_tokenizer(data_config.tokenizer, os.path.expanduser(data_config.data_dir), data_config.builder_config,
                        dataset=data_config.name)


def tokenize(tokenizer: Tokenizer, text: str, max_len: int) -> tuple[np.ndarray, bool]:
  """BOS + ids + EOS padded to max_len; too long texts lose their tail but keep the EOS."""
  return pack_tokens(tokenizer, [tokenizer.bos_id] + tokenizer.encode(text), max_len)


def tokenize_all(tokenizer: Tokenizer, texts: Sequence[str], max_len: int) -> np.ndarray:
  """int32[N, max_len]: `tokenize` of every text (the truncation flags dropped)."""
  return np.stack([tokenize(tokenizer, t, max_len)[0] for t in texts])


def pack_tokens(tokenizer: Tokenizer, ids: Sequence[int], max_len: int) -> tuple[np.ndarray, bool]:
  """ids + EOS padded to max_len as int32, truncating ids so that the EOS always fits."""
  truncated = len(ids) + 1 > max_len
  ids = list(ids[:max_len - 1]) + [tokenizer.eos_id]
  out = np.full([max_len], tokenizer.pad_id, np.int32)
  out[:len(ids)] = ids
  return out, truncated
