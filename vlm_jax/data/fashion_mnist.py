"""Fashion-MNIST: the raw IDX files, and scenes of up to three of its images shaped like the shapes examples.

A scene is a 2x2 grid of 28 px cells (56 px canvas) holding 1-3 items of distinct classes, drawn grey
on black. `make_scene` returns exactly the fields of `shapes.make_example` (captions, hard negatives,
questions), so the shapes pipeline, tokenizer training and evaluators work on it unchanged. Like
there, every scene is a pure function of (seed, split, index), given the split's images.

The images come from Debian's `dataset-fashion-mnist` package (or any folder with the four .gz
files). Pure python/numpy/Pillow: no tensorflow-datasets import here.
"""

import gzip
import json
import os
import zlib

import numpy as np
from PIL import Image

from vlm_jax.data import shapes
from vlm_jax.errors import UserError

DEFAULT_DIR = "/usr/share/datasets/fashion-mnist"
DIR_ENV = "VLM_JAX_FASHION_MNIST_DIR"
CLASS_NAMES = ("t-shirt", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag",
               "ankle boot")
SPLIT_IDS = {"train": 0, "validation": 1, "test": 2}
# The last twelfth of the training file is the validation split (5000 of the real 60 000 images); t10k is
# the test split. A fraction, not a count, so a slice of the files (tests/fixtures) splits the same way.
VALIDATION_FRACTION = 12


def train_size(n_train_file: int) -> int:
  """How many of the training file's images form the train split; the rest are the validation split."""
  return n_train_file - n_train_file // VALIDATION_FRACTION

FILES = {"train": "train", "validation": "train", "test": "t10k"}
IMAGE_MAGIC, LABEL_MAGIC = 0x803, 0x801  # unsigned bytes, 3 and 1 dimensions
ITEM_SIZE = 28
MAX_ITEMS = 3
NUMBER_WORDS = shapes.NUMBER_WORDS
RELATIONS = shapes.RELATIONS
ZERO_SHOT_TEMPLATES = ("{}", "a {}", "an image of a {}")

_FILE_CACHE = {}  # path -> parsed array (read-only)
_SPLIT_CACHE = {}  # (folder, split) -> (images, labels)


# ----------------------------------------------------------------------------- files

def data_dir(directory: str | None = None) -> str:
  """The folder with the four .gz files: `directory` if given, else $VLM_JAX_FASHION_MNIST_DIR, else DEFAULT_DIR."""
  return os.path.expanduser(directory or os.environ.get(DIR_ENV) or DEFAULT_DIR)


def _missing(path: str) -> UserError:
  return UserError(f"Fashion-MNIST not found: {path} is missing; install it with `sudo apt-get install "
                   f"dataset-fashion-mnist` or set config.data.fashion_mnist_dir to a folder with the four .gz files")


def _read_idx(path: str, magic: int) -> np.ndarray:
  """The uint8 array of a gzipped IDX file whose magic number must be `magic`."""
  if path in _FILE_CACHE:
    return _FILE_CACHE[path]
  if not os.path.exists(path):
    raise _missing(path)
  try:
    with gzip.open(path, "rb") as f:
      data = f.read()
  except (OSError, EOFError, zlib.error) as e:  # BadGzipFile is an OSError
    raise UserError(f"corrupt Fashion-MNIST file {path}: {type(e).__name__}: {e}") from e
  ndim = magic & 0xFF
  header = 4 + 4 * ndim
  if len(data) < header or int.from_bytes(data[:4], "big") != magic:
    found = hex(int.from_bytes(data[:4], "big")) if len(data) >= 4 else "nothing"
    raise UserError(f"corrupt Fashion-MNIST file {path}: expected IDX magic number {hex(magic)}, found {found}")
  shape = tuple(int.from_bytes(data[4 + 4 * i:8 + 4 * i], "big") for i in range(ndim))
  if len(data) - header != int(np.prod(shape)):
    raise UserError(f"corrupt Fashion-MNIST file {path}: header says shape {shape} "
                    f"({int(np.prod(shape))} bytes) but {len(data) - header} bytes follow")
  array = np.frombuffer(data, np.uint8, offset=header).reshape(shape)
  array.setflags(write=False)
  _FILE_CACHE[path] = array
  return array


def load(split: str, directory: str | None = None) -> tuple[np.ndarray, np.ndarray]:
  """(uint8[N,28,28] images, int32[N] labels) of 'train' (55000), 'validation' (5000) or 'test' (10000)
  (the sizes of the full files).

  Arrays are cached per (folder, split) and read-only.
  """
  if split not in SPLIT_IDS:
    raise UserError(f"unknown Fashion-MNIST split {split!r}; expected one of {sorted(SPLIT_IDS)}")
  folder = os.path.abspath(data_dir(directory))
  if (folder, split) in _SPLIT_CACHE:
    return _SPLIT_CACHE[(folder, split)]
  prefix = os.path.join(folder, FILES[split])
  images = _read_idx(f"{prefix}-images-idx3-ubyte.gz", IMAGE_MAGIC)
  labels = _read_idx(f"{prefix}-labels-idx1-ubyte.gz", LABEL_MAGIC)
  if len(images) != len(labels):
    raise UserError(f"corrupt Fashion-MNIST files {prefix}-*.gz: {len(images)} images but {len(labels)} labels")
  if len(labels) and labels.max() >= len(CLASS_NAMES):
    raise UserError(f"corrupt Fashion-MNIST file {prefix}-labels-idx1-ubyte.gz: label {labels.max()} "
                    f"is not one of the {len(CLASS_NAMES)} classes")
  labels = labels.astype(np.int32)
  labels.setflags(write=False)
  if split in ("train", "validation"):
    n = train_size(len(labels))
    images, labels = (images[:n], labels[:n]) if split == "train" else (images[n:], labels[n:])
  _SPLIT_CACHE[(folder, split)] = images, labels
  return images, labels


# ----------------------------------------------------------------------------- drawing

def _check_image_size(image_size: int) -> int:
  """The cell side image_size // 2; image_size must be a positive even number."""
  if image_size <= 0 or image_size % 2:
    raise UserError(f"Fashion-MNIST scenes need an even image size (a 2x2 grid of cells), got {image_size}")
  return image_size // 2


def _resize(item: np.ndarray, cell: int) -> np.ndarray:
  """uint8 [H, W] -> uint8 [cell, cell] (unchanged if it already has that size)."""
  if item.shape == (cell, cell):
    return item
  return np.asarray(Image.fromarray(np.asarray(item, np.uint8)).resize((cell, cell), Image.BILINEAR))


def cell_position(cell: int) -> tuple[int, int]:
  """(row, col) of cell 0-3 in row-major order."""
  return cell // 2, cell % 2


def place_single(images: np.ndarray, image_size: int = 56) -> np.ndarray:
  """uint8[N,S,S,3]: image i alone in cell i % 4 (row-major), drawn as a 1-item scene draws it.

  For zero-shot classification of plain Fashion-MNIST images by a model trained on scenes.
  """
  cell = _check_image_size(image_size)
  images = np.asarray(images, np.uint8)
  if cell != images.shape[1] or cell != images.shape[2]:
    images = np.stack([_resize(item, cell) for item in images]) if len(images) else (
        np.zeros((0, cell, cell), np.uint8))
  out = np.zeros((len(images), image_size, image_size, 3), np.uint8)
  for c in range(4):
    row, col = cell_position(c)
    out[c::4, row * cell:(row + 1) * cell, col * cell:(col + 1) * cell, :] = images[c::4, :, :, None]
  return out


def _draw(items: list[dict], images: np.ndarray, image_size: int) -> Image.Image:
  """The items' images in their cells, grey on black, as an RGB image."""
  cell = image_size // 2
  canvas = np.zeros((image_size, image_size, 3), np.uint8)
  for item in items:
    row, col = item["cell_row"], item["cell_col"]
    canvas[row * cell:(row + 1) * cell, col * cell:(col + 1) * cell, :] = (
        _resize(images[item["index"]], cell)[:, :, None])
  return Image.fromarray(canvas, "RGB")


# ----------------------------------------------------------------------------- text helpers

with_article = shapes.with_article


def list_phrase(items: list[dict]) -> str:
  """'a bag', 'a bag and a coat', 'a bag, a coat and a dress'."""
  return shapes.join_phrases([with_article(i["name"]) for i in items])


def count_caption(n: int) -> str:
  """'one item', 'two items', 'three items'."""
  return f"{NUMBER_WORDS[n]} item" + ("" if n == 1 else "s")


def relation_caption(a: dict, relation: str, b: dict) -> str:
  """'a sneaker left of a bag'."""
  return f"{with_article(a['name'])} {relation} {with_article(b['name'])}"


def _holds(a: dict, relation: str, b: dict) -> bool:
  """Truth of 'a <relation> b' on the grid (different columns / rows)."""
  return {"left of": a["cell_col"] < b["cell_col"], "right of": a["cell_col"] > b["cell_col"],
          "above": a["cell_row"] < b["cell_row"], "below": a["cell_row"] > b["cell_row"]}[relation]


def _clear_pairs(items: list[dict], axis: str) -> list[tuple[dict, dict]]:
  """Pairs (first, second) where first is in a smaller column (axis 'x') or row (axis 'y')."""
  forward = RELATIONS[axis][0]
  return [(a, b) for a in items for b in items if _holds(a, forward, b)]


# ----------------------------------------------------------------------------- captions & negatives

def _canonical_caption(items: list[dict]) -> str:
  """'a x' / 'a x left of a y' (else 'a x above a y') / 'a x, a y and a z' (row-major)."""
  if len(items) == 2:
    a, b = items
    if a["cell_col"] != b["cell_col"]:
      left, right = sorted(items, key=lambda i: i["cell_col"])
      return relation_caption(left, "left of", right)
    return relation_caption(a, "above", b)  # row-major: a is the upper one
  return list_phrase(items)


def _relation_captions(rng, clear: dict) -> list[str]:
  """At most two true relation captions, from randomly chosen pairs, in random directions."""
  facts = [(axis, pair) for axis in ("x", "y") for pair in clear[axis]]
  order = rng.permutation(len(facts))[:2]
  return [relation_caption(*shapes.true_relation(rng, facts[i][1], facts[i][0])) for i in order]


def _count_negative(rng, n: int) -> tuple[str, str]:
  """Count caption vs. the same caption with a number off by one (kept within 1..3)."""
  wrong = [m for m in (n - 1, n + 1) if 1 <= m <= MAX_ITEMS]
  return count_caption(n), count_caption(int(wrong[rng.integers(len(wrong))]))


def _relation_negative(rng, pairs, axis: str) -> tuple[str, str]:
  """A true 'a <relation> b' vs. 'b <relation> a' (same words, items swapped), or ('', '')."""
  if not pairs:
    return "", ""
  a, relation, b = shapes.true_relation(rng, pairs[rng.integers(len(pairs))], axis)
  return relation_caption(a, relation, b), relation_caption(b, relation, a)


# ----------------------------------------------------------------------------- questions

def _question_candidates(rng, items: list[dict], clear: dict) -> dict[str, list[tuple[str, str]]]:
  """All askable (question, answer) pairs by type, except 'count'."""
  present = {i["label"] for i in items}
  absent = [c for c in range(len(CLASS_NAMES)) if c not in present]
  yes_item = items[rng.integers(len(items))]
  no_name = CLASS_NAMES[absent[rng.integers(len(absent))]]
  candidates = {"exists": [(f"is there {with_article(yes_item['name'])}?", "yes"),
                           (f"is there {with_article(no_name)}?", "no")]}
  candidates["relation"] = []
  for axis in ("x", "y"):
    for pair in clear[axis]:
      a, relation, b = shapes.true_relation(rng, pair, axis)
      answer = "yes"
      if rng.random() < 0.5:  # balance yes/no
        relation, answer = shapes.reverse_relation(relation), "no"
      candidates["relation"].append((f"is the {a['name']} {relation} the {b['name']}?", answer))
  candidates["what"] = []
  for b in items:
    for relation in ("left of", "right of", "above", "below"):
      matches = [a for a in items if a is not b and _holds(a, relation, b)]
      if len(matches) == 1:  # only questions with one right answer
        candidates["what"].append((f"what is {relation} the {b['name']}?", matches[0]["name"]))
  return candidates


def _questions(rng, items: list[dict], clear: dict) -> tuple[list[str], list[str], list[str]]:
  """3-6 questions: always one count question, then round-robin over the other types (as shapes)."""
  count = ("how many items are there?", NUMBER_WORDS[len(items)], "count")
  return shapes.pick_questions(rng, count, _question_candidates(rng, items, clear))


# ----------------------------------------------------------------------------- scenes

def _sample_items(rng, labels: np.ndarray, n: int) -> list[dict]:
  """Up to n images of distinct classes in distinct random cells, row-major.

  Classes are distinct so that every caption and question names one item. Rejection sampling
  keeps it cheap; a split with fewer than n classes (a toy file) gives fewer items.
  """
  chosen = {}
  for _ in range(100 * n):
    if len(chosen) == n:
      break
    index = int(rng.integers(len(labels)))
    label = int(labels[index])
    if label not in chosen:
      chosen[label] = index
  cells = rng.choice(4, len(chosen), replace=False)
  items = []
  for (label, index), cell in zip(chosen.items(), cells):
    row, col = cell_position(int(cell))
    items.append({"label": label, "name": CLASS_NAMES[label], "cell_row": row, "cell_col": col,
                  "index": index})
  return sorted(items, key=lambda i: (i["cell_row"], i["cell_col"]))


def make_scene(seed: int, split: str, index: int, images: np.ndarray, labels: np.ndarray,
               image_size: int = 56) -> dict:
  """Scene `index` of `split`: a pure function of (seed, split, index) given the split's (images, labels).

  Returns the fields of `shapes.make_example`; "scene" lists the items (label, name, cell_row,
  cell_col and the source image's index in the split) in row-major order.
  """
  if split not in SPLIT_IDS:
    raise ValueError(f"unknown split {split!r}; expected one of {sorted(SPLIT_IDS)}")
  _check_image_size(image_size)
  if not len(labels):
    raise UserError(f"the Fashion-MNIST {split} split is empty; cannot draw scenes from it")
  rng = np.random.default_rng([seed, SPLIT_IDS[split], index])
  items = _sample_items(rng, labels, int(rng.integers(1, MAX_ITEMS + 1)))
  clear = {axis: _clear_pairs(items, axis) for axis in ("x", "y")}
  caption = _canonical_caption(items)
  count_pos, count_neg = _count_negative(rng, len(items))
  lr_pos, lr_neg = _relation_negative(rng, clear["x"], "x")
  ab_pos, ab_neg = _relation_negative(rng, clear["y"], "y")
  questions, answers, question_types = _questions(rng, items, clear)
  captions = [caption, count_caption(len(items))] + _relation_captions(rng, clear)
  return {
      "image": _draw(items, images, image_size),
      "scene": json.dumps(items),
      "caption": caption,
      "captions": list(dict.fromkeys(captions)),  # a 2-item caption may also be drawn as a relation
      "hardneg_count_pos": count_pos, "hardneg_count_neg": count_neg,
      # No attributes to bind: empty rows, which the evaluator skips.
      "hardneg_binding_pos": "", "hardneg_binding_neg": "",
      "hardneg_left_right_pos": lr_pos, "hardneg_left_right_neg": lr_neg,
      "hardneg_above_below_pos": ab_pos, "hardneg_above_below_neg": ab_neg,
      "questions": questions, "answers": answers, "question_types": question_types,
  }


all_texts = shapes.all_texts
png_bytes = shapes.png_bytes


def vocabulary_texts() -> list[str]:
  """Every word form the templates (captions, questions, zero-shot prompts) can produce, for every class.

  Added to a tokenizer's training texts so that a word-level vocabulary has no gaps even when the
  training split is tiny.
  """
  texts = ["how many items are there?", "yes no"] + [
      count_caption(n) + " " + NUMBER_WORDS[n] for n in range(1, MAX_ITEMS + 1)]
  relations = ("left of", "right of", "above", "below")
  for name in CLASS_NAMES:
    item = {"name": name}
    texts.append(list_phrase([item] * MAX_ITEMS))
    texts.append(f"is there {with_article(name)}?")
    texts += [f"is the {name} {relation} the {name}?" for relation in relations]
    texts += [f"what is {relation} the {name}? {name}" for relation in relations]
    texts += [relation_caption(item, relation, item) for relation in relations]
    texts += [template.format(name) for template in ZERO_SHOT_TEMPLATES]
  return texts
