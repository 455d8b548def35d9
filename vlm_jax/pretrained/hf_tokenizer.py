"""Tokenizer files as transformers reads them (tokenizer.json, tokenizer_config.json), written as plain JSON.

tokenizer.json is the `tokenizers` library's serialisation; nothing here needs that library. vlm_jax's
ByteTokenizer (pad 0, BOS 1, EOS 2, byte b -> b + 3) is exactly a byte-level BPE without merges whose
vocabulary lists the special tokens and then GPT-2's 256 byte symbols in byte order: `byte_tokenizer_json`.
No post-processor: like vlm_jax's `encode`, it adds no BOS or EOS by itself (a chat template writes them).
"""

import copy
import json
import os

from vlm_jax.errors import UserError

TOKENIZER = "tokenizer.json"
TOKENIZER_CONFIG = "tokenizer_config.json"
BYTE_SPECIALS = ("<pad>", "<s>", "</s>")  # ids 0, 1, 2: vlm_jax.data.tokenizer's PAD_ID, BOS_ID, EOS_ID


def bytes_to_unicode() -> dict:
  """byte -> the printable character GPT-2's byte-level BPE (the ByteLevel pre-tokenizer) writes for it."""
  printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(
      range(ord("®"), ord("ÿ") + 1))
  chars, extra = {}, 0
  for b in range(256):
    if b in printable:
      chars[b] = chr(b)
    else:
      chars[b] = chr(256 + extra)
      extra += 1
  return chars


def added_token(token_id: int, content: str) -> dict:
  return dict(id=token_id, content=content, single_word=False, lstrip=False, rstrip=False, normalized=False,
              special=True)


def byte_tokenizer_json() -> dict:
  """tokenizer.json of vlm_jax's ByteTokenizer: the same ids for every text, vocab 259."""
  vocab = {token: i for i, token in enumerate(BYTE_SPECIALS)}
  vocab.update({char: b + len(BYTE_SPECIALS) for b, char in bytes_to_unicode().items()})
  byte_level = dict(type="ByteLevel", add_prefix_space=False, trim_offsets=True, use_regex=False)
  return {"version": "1.0", "truncation": None, "padding": None,
          "added_tokens": [added_token(i, t) for i, t in enumerate(BYTE_SPECIALS)],
          "normalizer": None, "pre_tokenizer": byte_level, "post_processor": None, "decoder": byte_level,
          "model": dict(type="BPE", dropout=None, unk_token=None, continuing_subword_prefix=None,
                        end_of_word_suffix=None, fuse_unk=False, byte_fallback=False, ignore_merges=False,
                        vocab=vocab, merges=[])}


def token_ids(tokenizer_json: dict) -> dict:
  """content -> id of every token the file names (its model's vocabulary and its added tokens)."""
  ids = dict(tokenizer_json.get("model", {}).get("vocab") or {})
  if isinstance(next(iter(ids.values()), 0), list):  # a Unigram vocabulary: [[piece, score], ...]
    ids = {piece: i for i, (piece, _) in enumerate(tokenizer_json["model"]["vocab"])}
  ids.update({t["content"]: t["id"] for t in tokenizer_json.get("added_tokens", [])})
  return ids


def with_special_token(tokenizer_json: dict, content: str, vocab_size: int) -> tuple:
  """(tokenizer.json with `content` as a special token, its id): the id it has, else `vocab_size` (the first
  id after the model's vocabulary)."""
  ids = token_ids(tokenizer_json)
  if content in ids:
    return tokenizer_json, ids[content]
  if vocab_size in ids.values():
    raise UserError(f"the tokenizer already has a token with id {vocab_size}, past the model's vocabulary")
  out = copy.deepcopy(tokenizer_json)
  out.setdefault("added_tokens", []).append(added_token(vocab_size, content))
  return out, vocab_size


def read(directory: str) -> tuple:
  """(tokenizer.json, tokenizer_config.json ({} when absent)) of a transformers directory."""
  path = os.path.join(directory, TOKENIZER)
  if not os.path.isfile(path):
    raise UserError(f"{directory} has no {TOKENIZER} (a tokenizer that the `tokenizers` library wrote)")
  with open(path) as f:
    tokenizer_json = json.load(f)
  config_path = os.path.join(directory, TOKENIZER_CONFIG)
  config = {}
  if os.path.isfile(config_path):
    with open(config_path) as f:
      config = json.load(f)
  return tokenizer_json, config


def write(directory: str, tokenizer_json: dict, *, bos: str, eos: str, pad: str, extra_special=(),
          chat_template: str = "", processor_class: str = "") -> None:
  """tokenizer.json and tokenizer_config.json (transformers >= 5: the `tokenizers` backend), and the chat
  template as chat_template.jinja, which AutoTokenizer and AutoProcessor read."""
  os.makedirs(directory, exist_ok=True)
  with open(os.path.join(directory, TOKENIZER), "w") as f:
    json.dump(tokenizer_json, f, ensure_ascii=False, indent=1)
  config = dict(backend="tokenizers", tokenizer_class="PreTrainedTokenizerFast", bos_token=bos, eos_token=eos,
                pad_token=pad, extra_special_tokens=list(extra_special), clean_up_tokenization_spaces=False,
                model_max_length=10 ** 9)
  if processor_class:
    config["processor_class"] = processor_class
  with open(os.path.join(directory, TOKENIZER_CONFIG), "w") as f:
    json.dump(config, f, indent=2)
  if chat_template:
    with open(os.path.join(directory, "chat_template.jinja"), "w") as f:
      f.write(chat_template)
