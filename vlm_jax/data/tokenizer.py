"""Tokenizers: SentencePiece trained on the dataset's own captions, raw bytes, or an existing one ("hf:DIR").

The trained ones and the byte tokenizer share the special ids pad=0, bos=1, eos=2; an existing tokenizer
(config.data.tokenizer = "hf:DIR": DIR/tokenizer.json through the `tokenizers` package, or DIR/tokenizer.model,
SentencePiece) declares its own, and models and pipelines read them from the tokenizer's pad_id / bos_id /
eos_id, never assume them. `encode` never adds BOS/EOS; `tokenize` does, with padding and truncation.
"""

import io
import json
import os
import shutil
from typing import Iterable, Protocol, Sequence

import numpy as np
import sentencepiece as spm

from vlm_jax.data import datasets
from vlm_jax.errors import UserError

PAD_ID, BOS_ID, EOS_ID, UNK_ID = 0, 1, 2, 3
# The SentencePiece model, under each builder's own data_dir and copied into every training workdir.
TOKENIZER_FILENAME = "tokenizer.model"
OLD_TOKENIZER_FILENAMES = ("shapes_tokenizer.model",)  # what data prepared before was given, for any dataset
HF_PREFIX = "hf:"
HF_TOKENIZER_FILENAME = "tokenizer.json"  # an existing tokenizer copied into a workdir keeps its file name


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


def _content_ids(ids: Iterable[int], pad_id: int = PAD_ID, bos_id: int = BOS_ID, eos_id: int = EOS_ID) -> list[int]:
  """ids up to the first EOS, without pad and BOS."""
  content = []
  for i in (int(i) for i in ids):
    if i == eos_id:
      break
    if i not in (pad_id, bos_id):
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
  """A SentencePiece model file; the special ids are the model's (pad=0, bos=1, eos=2, unk=3 for the models
  train_sentencepiece writes; a model without a pad id pads with its unk id)."""

  def __init__(self, model_path: str):
    if not os.path.exists(model_path):
      raise UserError(f"SentencePiece model not found: {model_path}")
    self.model_path = model_path
    try:
      self._sp = spm.SentencePieceProcessor(model_file=model_path)
    except (RuntimeError, OSError) as e:
      raise UserError(f"{model_path} is not a SentencePiece model ({str(e).splitlines()[0][:120]})") from None
    self.vocab_size = self._sp.get_piece_size()
    sp = self._sp
    self.bos_id, self.eos_id = sp.bos_id(), sp.eos_id()
    self.pad_id = sp.pad_id() if sp.pad_id() >= 0 else max(sp.unk_id(), 0)
    if self.bos_id < 0 or self.eos_id < 0:
      raise UserError(f"SentencePiece model {model_path} has no BOS or EOS piece; the models need both")

  def encode(self, text: str) -> list[int]:
    """SentencePiece ids of text."""
    return self._sp.encode(text)

  def decode(self, ids: Iterable[int]) -> str:
    """Inverse of encode; stops at EOS."""
    return self._sp.decode(_content_ids(ids, self.pad_id, self.bos_id, self.eos_id))


class HFTokenizer:
  """A Hugging Face tokenizer.json (the `tokenizers` package): an existing LM's vocabulary.

  BOS / EOS / pad are the tokens that the files beside it name (special_tokens_map.json, else
  tokenizer_config.json: "bos_token", "eos_token", "pad_token", as Hugging Face saves them), else the first of
  the usual spellings (BOS, EOS, PAD below) in its vocabulary. BOS or EOS missing is a UserError naming it
  (the models need both); pad missing falls back to the EOS id (padding is masked out, so any id serves).
  """
  BOS = ("<s>", "<|begin_of_text|>", "<bos>", "[CLS]", "<|startoftext|>", "<|im_start|>")
  EOS = ("</s>", "<|end_of_text|>", "<|endoftext|>", "<eos>", "[SEP]", "<|eot_id|>", "<|im_end|>")
  PAD = ("<pad>", "[PAD]", "<|pad|>", "<|finetune_right_pad_id|>")
  SPECIAL_FILES = ("special_tokens_map.json", "tokenizer_config.json")

  def __init__(self, path: str):
    try:
      import tokenizers  # noqa: PLC0415
    except ImportError:
      raise UserError(f"{path} needs the `tokenizers` package (pip install tokenizers), or give a directory "
                      "with a SentencePiece tokenizer.model") from None
    self.model_path = path
    try:
      self._tok = tokenizers.Tokenizer.from_file(path)
    except Exception as e:  # the Rust library raises its own exception type
      raise UserError(f"{path} is not a tokenizer.json ({str(e).splitlines()[0][:120]})") from None
    self.vocab_size = self._tok.get_vocab_size(with_added_tokens=True)
    named = self._named_tokens(os.path.dirname(path))
    ids = {}
    for role, spellings in (("bos", self.BOS), ("eos", self.EOS), ("pad", self.PAD)):
      token = named.get(f"{role}_token")
      if token is not None:
        if self._tok.token_to_id(token) is None:
          raise UserError(f"{path}: {role}_token {token!r} (from {named['file']}) is not in its vocabulary")
        ids[role] = self._tok.token_to_id(token)
      else:
        ids[role] = next((i for i in map(self._tok.token_to_id, spellings) if i is not None), None)
    for role, spellings in (("bos", self.BOS), ("eos", self.EOS)):
      if ids[role] is None:
        raise UserError(f"{path} has no {role.upper()} token: none of {', '.join(spellings)} is in its vocabulary "
                        f"and no {' or '.join(self.SPECIAL_FILES)} beside it names a {role}_token; the models need "
                        "BOS and EOS")
    self.bos_id, self.eos_id = ids["bos"], ids["eos"]
    self.pad_id = self.eos_id if ids["pad"] is None else ids["pad"]

  @classmethod
  def _named_tokens(cls, directory: str) -> dict:
    """{"bos_token"/"eos_token"/"pad_token": str, "file": where} from the first special-tokens file beside the
    tokenizer.json that names any ({} if none); a value may be a string or {"content": str} (Hugging Face's
    AddedToken)."""
    for name in cls.SPECIAL_FILES:
      path = os.path.join(directory, name)
      if not os.path.isfile(path):
        continue
      try:
        with open(path) as f:
          saved = json.load(f)
      except (OSError, ValueError) as e:
        raise UserError(f"{path} is not JSON ({str(e).splitlines()[0][:120]})") from None
      named = {}
      for key in ("bos_token", "eos_token", "pad_token"):
        value = saved.get(key) if isinstance(saved, dict) else None
        value = value.get("content") if isinstance(value, dict) else value
        if isinstance(value, str):
          named[key] = value
      if named:
        return {**named, "file": path}
    return {}

  def special_tokens(self) -> dict:
    """{"bos_token", "eos_token", "pad_token"}: the tokens of the ids in use (what the workdir's copy records)."""
    return {f"{role}_token": self._tok.id_to_token(getattr(self, f"{role}_id")) for role in ("bos", "eos", "pad")}

  def encode(self, text: str) -> list[int]:
    return self._tok.encode(text, add_special_tokens=False).ids

  def decode(self, ids: Iterable[int]) -> str:
    return self._tok.decode(_content_ids(ids, self.pad_id, self.bos_id, self.eos_id))


def train_sentencepiece(texts: Iterable[str], model_prefix: str, vocab_size: int = 256,
                        model_type: str = "word") -> str:
  """Trains a word-level SentencePiece model on texts, saves model_prefix + '.model', returns it.

  The shapes captions use a closed vocabulary, so a word model gives every word exactly one
  token. The texts are deduplicated and sorted and training is single-threaded, so the same texts
  always give a byte-identical model. vocab_size is an upper bound (hard_vocab_limit=False).
  model_type "unigram" (subwords, for real captions: no word is unknown at test time) is the other choice.
  """
  model = io.BytesIO()
  # Through model_writer the file does not record model_prefix, so the bytes don't depend on
  # where the model is saved.
  spm.SentencePieceTrainer.train(
      sentence_iterator=iter(sorted(set(texts))),
      model_writer=model,
      model_type=model_type,
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
  """The tokenizer named by kind ('sentencepiece', 'byte' or 'hf:DIR') for a prepared tfds dataset.

  dataset: config.data.name, the builder whose data_dir holds the SentencePiece model. For a dataset whose
  builder needs more of config.data (image_text), use load_for_config.
  """
  import ml_collections  # noqa: PLC0415
  return load_for_config(ml_collections.ConfigDict(dict(name=dataset, data_dir=data_dir, builder_config=builder_config,
                                                        tokenizer=kind)))


def load_existing(kind: str) -> Tokenizer:
  """config.data.tokenizer = "hf:DIR": DIR/tokenizer.json (`tokenizers`), else DIR/tokenizer.model (SentencePiece);
  DIR may also be the file itself."""
  path = os.path.expanduser(kind[len(HF_PREFIX):])
  if os.path.isdir(path):
    for name in (HF_TOKENIZER_FILENAME, TOKENIZER_FILENAME):
      if os.path.isfile(os.path.join(path, name)):
        path = os.path.join(path, name)
        break
    else:
      raise UserError(f"config.data.tokenizer={kind!r}: no {HF_TOKENIZER_FILENAME} or {TOKENIZER_FILENAME} in {path}")
  if not os.path.isfile(path):
    raise UserError(f"config.data.tokenizer={kind!r}: {path} does not exist")
  return HFTokenizer(path) if path.endswith(".json") else SentencePieceTokenizer(path)


def load_for_config(data_config) -> Tokenizer:
  """The tokenizer config.data names: "byte", "hf:DIR", or "sentencepiece" (the prepared dataset's own)."""
  kind = data_config.tokenizer
  builder = datasets.get(data_config)
  if kind == "byte":
    return ByteTokenizer()
  if kind.startswith(HF_PREFIX):
    return load_existing(kind)
  if kind != "sentencepiece":
    raise UserError(f"unknown tokenizer config.data.tokenizer={kind!r}; expected 'sentencepiece', 'byte' or 'hf:DIR'")
  directory = builder.tokenizer_dir()
  if directory is None:
    raise UserError(f"config.data.name={data_config.name!r} has labels, not texts, so no SentencePiece model; "
                    f"use config.data.tokenizer='byte'")
  path = tokenizer_path(directory)
  if path is None:
    raise UserError(f"no SentencePiece model at {os.path.join(directory, TOKENIZER_FILENAME)}; "
                    f"prepare the data first (vlm_jax.data.pipeline.prepare_data(config.data))")
  return SentencePieceTokenizer(path)


def _workdir_file(tokenizer) -> str:
  return HF_TOKENIZER_FILENAME if isinstance(tokenizer, HFTokenizer) else TOKENIZER_FILENAME


def save_to_workdir(tokenizer: Tokenizer, workdir: str) -> None:
  """Copies a SentencePiece model or tokenizer.json into the workdir, so that the workdir alone is enough for
  inference and evaluation; beside a tokenizer.json, its special tokens in use (special_tokens_map.json)."""
  if isinstance(tokenizer, (SentencePieceTokenizer, HFTokenizer)):
    path = os.path.join(workdir, _workdir_file(tokenizer))
    if os.path.abspath(tokenizer.model_path) == os.path.abspath(path):
      return
    if isinstance(tokenizer, HFTokenizer):

      def write_special(tmp_path):
        with open(tmp_path, "w") as f:
          json.dump(tokenizer.special_tokens(), f, indent=1)
      _write_atomically(os.path.join(workdir, HFTokenizer.SPECIAL_FILES[0]), write_special)
    _write_atomically(path, lambda tmp: shutil.copyfile(tokenizer.model_path, tmp))


def _write_atomically(path: str, write) -> None:
  """write(a temporary path), then a rename: never a half-copied file beside a checkpoint."""
  tmp_path = f"{path}.tmp{os.getpid()}"
  write(tmp_path)
  os.replace(tmp_path, path)


def load_for_workdir(workdir: str, data_config) -> Tokenizer:
  """The tokenizer a training workdir was trained with: its own copy (of the SentencePiece model or of the
  hf:DIR tokenizer), or for workdirs trained before they kept one, the prepared data's (config.data)."""
  kind = data_config.tokenizer
  if kind == "sentencepiece" and os.path.exists(os.path.join(workdir, TOKENIZER_FILENAME)):
    return SentencePieceTokenizer(os.path.join(workdir, TOKENIZER_FILENAME))
  if kind.startswith(HF_PREFIX):
    for name in (HF_TOKENIZER_FILENAME, TOKENIZER_FILENAME):
      if os.path.exists(os.path.join(workdir, name)):
        return load_existing(HF_PREFIX + os.path.join(workdir, name))
  return load_for_config(data_config)


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
