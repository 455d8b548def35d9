"""Procedurally drawn scenes of coloured shapes, with captions, hard negatives and questions.

Every example is a pure function of (seed, split, index): `make_example` seeds its own generator
from those three numbers, so any example can be regenerated alone and processes can split work
by index without coordination. Pure python/numpy/Pillow: no tensorflow-datasets import here.
"""

import io
import json

import numpy as np
from PIL import Image, ImageDraw

COLORS = {
    "red": (230, 40, 40),
    "green": (40, 200, 60),
    "blue": (50, 100, 245),
    "yellow": (240, 225, 40),
    "purple": (165, 60, 225),
    "orange": (250, 140, 20),
}
SHAPES = ("circle", "square", "triangle", "diamond")
SIZES = ("small", "large")
# Half-extent of each size as a fraction of the image side: ~3 px and ~5 px at 32 px.
SIZE_FRACTION = {"small": 0.1, "large": 0.17}
HELD_OUT_PAIRS = frozenset({
    ("red", "triangle"), ("green", "diamond"), ("blue", "circle"), ("yellow", "square"),
})
SPLIT_IDS = {"train": 0, "validation": 1, "test": 2, "compositional": 3}
NUMBER_WORDS = ("zero", "one", "two", "three", "four")
MAX_OBJECTS = 4
# Centres must differ by this many pixels (at 32 px) before a relation counts as true.
RELATION_MARGIN_AT_32 = 4

# How scenes are drawn. "default": every prepared split. "redrawn": the same objects, captions and relations drawn
# otherwise, to test that a model learned the relation from the scene and not from the generator's habits:
# sizes scaled by 0.75 / 1.3, relations stated only beyond a 6 px margin, a bright background, and another renderer
# (drawn at 4x and downsampled, so edges are anti-aliased where the default renderer draws hard pixels).
STYLES = {
    "default": dict(size_scale=(1.0, 1.0), margin_at_32=RELATION_MARGIN_AT_32, background=(0, 48), supersample=1),
    "redrawn": dict(size_scale=(0.75, 1.3), margin_at_32=6, background=(100, 170), supersample=4),
    # Training styles (the "styles" variant's train split, shapes_tfds): a bright background on the other side of
    # redrawn's grey, and the default scene anti-aliased at 2x. Sizes and margin stay the default's, so relations,
    # top-down chains and the scene record mean the same; redrawn's sizes and mid-grey background stay unseen.
    "bright": dict(size_scale=(1.0, 1.0), margin_at_32=RELATION_MARGIN_AT_32, background=(190, 255), supersample=1),
    "smooth": dict(size_scale=(1.0, 1.0), margin_at_32=RELATION_MARGIN_AT_32, background=(0, 48), supersample=2),
}

ALL_PAIRS = tuple((c, s) for c in COLORS for s in SHAPES)
SEEN_PAIRS = tuple(p for p in ALL_PAIRS if p not in HELD_OUT_PAIRS)


# ----------------------------------------------------------------------------- text helpers

def object_name(obj: dict) -> str:
  """'red circle' for an object (or any dict with 'color' and 'shape')."""
  return f"{obj['color']} {obj['shape']}"


def with_article(name: str) -> str:
  """'a red circle' / 'an orange square'."""
  return ("an " if name[0] in "aeiou" else "a ") + name


def join_phrases(items: list[str]) -> str:
  """'x', 'x and y', 'x, y and z'."""
  return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def list_phrase(objects: list[dict]) -> str:
  """'a x', 'a x and a y', 'a x, a y and a z'."""
  return join_phrases([with_article(object_name(o)) for o in objects])


def chain_phrase(objects: list[dict]) -> str:
  """'a x above a y above a z': the objects in the given order (top to bottom), chained by "above"."""
  return " above ".join(with_article(object_name(o)) for o in objects)


def relation_margin(image_size: int, margin_at_32: float = RELATION_MARGIN_AT_32) -> float:
  """How far apart (centres, pixels) two objects lie on an axis for a relation between them to be stated, at
  image_size (margin_at_32 at 32 px, scaled)."""
  return margin_at_32 * image_size / 32


def count_caption(n: int) -> str:
  """'one shape', 'two shapes', ..."""
  return f"{NUMBER_WORDS[n]} shape" + ("" if n == 1 else "s")


def relation_caption(a: dict, relation: str, b: dict) -> str:
  """'a red circle left of a blue square'."""
  return f"{with_article(object_name(a))} {relation} {with_article(object_name(b))}"


# ----------------------------------------------------------------------------- scene layout

def _sample_pairs(rng: np.random.Generator, split: str, n: int) -> list[tuple[str, str]]:
  """n distinct (colour, shape) pairs; the compositional split always includes a held-out one."""
  if split == "compositional":
    held_out = sorted(HELD_OUT_PAIRS)
    first = held_out[rng.integers(len(held_out))]
    rest = [p for p in ALL_PAIRS if p != first]
    chosen = [first] + [rest[i] for i in rng.choice(len(rest), n - 1, replace=False)]
  else:
    chosen = [SEEN_PAIRS[i] for i in rng.choice(len(SEEN_PAIRS), n, replace=False)]
  return chosen


def _boxes_overlap(a: dict, b: dict) -> bool:
  """True if the bounding boxes of a and b touch or overlap (one pixel gap required)."""
  return (abs(a["x"] - b["x"]) <= a["r"] + b["r"] + 1 and
          abs(a["y"] - b["y"]) <= a["r"] + b["r"] + 1)


def _place_objects(rng, pairs, image_size: int, size_scale=(1.0, 1.0)) -> list[dict] | None:
  """Random sizes (SIZE_FRACTION times size_scale[small or large]) and non-overlapping positions with distinct
  centre x; None if it fails."""
  objects = []
  for color, shape in pairs:
    size = SIZES[rng.integers(2)]
    r = max(1, round(SIZE_FRACTION[size] * size_scale[SIZES.index(size)] * image_size))
    for _ in range(50):
      x, y = (int(v) for v in rng.integers(r, image_size - r, size=2))
      obj = {"color": color, "shape": shape, "size": size, "x": x, "y": y, "r": r}
      # Distinct centre x makes the left-to-right caption order unambiguous.
      if all(not _boxes_overlap(obj, o) and obj["x"] != o["x"] for o in objects):
        objects.append(obj)
        break
    else:
      return None
  return sorted(objects, key=lambda o: o["x"])


def _draw(objects: list[dict], image_size: int, background: int, supersample: int = 1) -> Image.Image:
  """Renders the objects on a uniform grey-level background; supersample k > 1: at k times the size, then
  downsampled (a box filter: anti-aliased edges)."""
  k = supersample
  image = Image.new("RGB", (image_size * k, image_size * k), (background,) * 3)
  draw = ImageDraw.Draw(image)
  for o in objects:
    x, y, r, fill = (o["x"] + 0.5) * k - 0.5, (o["y"] + 0.5) * k - 0.5, o["r"] * k, COLORS[o["color"]]
    if o["shape"] == "circle":
      draw.ellipse([x - r, y - r, x + r, y + r], fill=fill)
    elif o["shape"] == "square":
      draw.rectangle([x - r, y - r, x + r, y + r], fill=fill)
    elif o["shape"] == "triangle":
      draw.polygon([(x, y - r), (x + r, y + r), (x - r, y + r)], fill=fill)
    else:  # diamond
      draw.polygon([(x, y - r), (x + r, y), (x, y + r), (x - r, y)], fill=fill)
  return image if k == 1 else image.resize((image_size, image_size), Image.Resampling.BOX)


# ----------------------------------------------------------------------------- relations

def _clear_pairs(objects, axis: str, margin: float) -> list[tuple[dict, dict]]:
  """Pairs (first, second) where first's centre is clearly smaller on `axis` (left / above)."""
  pairs = []
  for a in objects:
    for b in objects:
      if b[axis] - a[axis] >= margin:
        pairs.append((a, b))
  return pairs


RELATIONS = {"x": ("left of", "right of"), "y": ("above", "below")}


def true_relation(rng, pair, axis: str) -> tuple[dict, str, dict]:
  """A true relation about (smaller, larger) on axis, stated in a random direction."""
  smaller, larger = pair
  forward, backward = RELATIONS[axis]
  if rng.random() < 0.5:
    return smaller, forward, larger
  return larger, backward, smaller


def reverse_relation(relation: str) -> str:
  """'left of' <-> 'right of', 'above' <-> 'below'."""
  return {"left of": "right of", "right of": "left of", "above": "below", "below": "above"}[relation]


# ----------------------------------------------------------------------------- captions & negatives

def _relation_captions(rng, clear: dict) -> list[str]:
  """At most two true relation captions, from randomly chosen clearly separated pairs."""
  facts = [(axis, pair) for axis in ("x", "y") for pair in clear[axis]]
  order = rng.permutation(len(facts))[:2]
  return [relation_caption(*true_relation(rng, facts[i][1], facts[i][0])) for i in order]


def _count_negative(rng, n: int) -> tuple[str, str]:
  """Count caption vs. the same caption with a number off by one (kept within 1..4)."""
  wrong = [m for m in (n - 1, n + 1) if 1 <= m <= MAX_OBJECTS]
  return count_caption(n), count_caption(int(wrong[rng.integers(len(wrong))]))


def _binding_negative(rng, objects) -> tuple[str, str]:
  """Canonical caption vs. the caption with two objects' colours swapped, or ('', '')."""
  present = {(o["color"], o["shape"]) for o in objects}
  candidates = [
      (i, j) for i in range(len(objects)) for j in range(i + 1, len(objects))
      if objects[i]["color"] != objects[j]["color"]
      and objects[i]["shape"] != objects[j]["shape"]
      # Both swapped pairs must be absent, otherwise the negative could still be true.
      and (objects[j]["color"], objects[i]["shape"]) not in present
      and (objects[i]["color"], objects[j]["shape"]) not in present
  ]
  if not candidates:
    return "", ""
  i, j = candidates[rng.integers(len(candidates))]
  swapped = [dict(o) for o in objects]
  swapped[i]["color"], swapped[j]["color"] = objects[j]["color"], objects[i]["color"]
  return list_phrase(objects), list_phrase(swapped)


def _relation_negative(rng, pairs, axis: str) -> tuple[str, str]:
  """A true relation caption vs. the same caption with the relation reversed, or ('', '')."""
  if not pairs:
    return "", ""
  a, relation, b = true_relation(rng, pairs[rng.integers(len(pairs))], axis)
  return relation_caption(a, relation, b), relation_caption(a, reverse_relation(relation), b)


# ----------------------------------------------------------------------------- questions

def _question_candidates(rng, objects, clear: dict) -> dict[str, list[tuple[str, str]]]:
  """All askable (question, answer) pairs by type, except 'count'."""
  shape_counts = {s: sum(o["shape"] == s for o in objects) for s in SHAPES}
  color_counts = {c: sum(o["color"] == c for o in objects) for c in COLORS}
  candidates = {
      "color": [(f"what color is the {o['shape']}?", o["color"])
                for o in objects if shape_counts[o["shape"]] == 1],
      "shape": [(f"what shape is the {o['color']} object?", o["shape"])
                for o in objects if color_counts[o["color"]] == 1],
  }
  for axis, qtype in (("x", "left_right"), ("y", "above_below")):
    candidates[qtype] = []
    for pair in clear[axis]:
      a, relation, b = true_relation(rng, pair, axis)
      answer = "yes"
      if rng.random() < 0.5:  # balance yes/no
        relation, answer = reverse_relation(relation), "no"
      candidates[qtype].append((f"is the {object_name(a)} {relation} the {object_name(b)}?", answer))
  present = {(o["color"], o["shape"]) for o in objects}
  absent = [p for p in SEEN_PAIRS if p not in present]
  yes_obj = objects[rng.integers(len(objects))]
  no_color, no_shape = absent[rng.integers(len(absent))]
  candidates["exists"] = [
      (f"is there {with_article(object_name(yes_obj))}?", "yes"),
      (f"is there {with_article(f'{no_color} {no_shape}')}?", "no"),
  ]
  return candidates


def pick_questions(rng, first: tuple, candidates: dict) -> tuple[list[str], list[str], list[str]]:
  """`first` (question, answer, type), then 3-6 questions in all, round-robin over the candidate types.

  candidates: {type: [(question, answer), ...]}. Shared by the shapes and Fashion-MNIST scenes.
  """
  chosen = [first]
  for qtype in candidates:
    order = rng.permutation(len(candidates[qtype]))
    candidates[qtype] = [candidates[qtype][i] for i in order]
  wanted = int(rng.integers(3, 7))
  types = [t for t in candidates if candidates[t]]
  types = [types[i] for i in rng.permutation(len(types))]
  # Round-robin so that one scene's questions cover as many types as possible.
  while len(chosen) < wanted and types:
    for qtype in list(types):
      if len(chosen) >= wanted:
        break
      question, answer = candidates[qtype].pop()
      chosen.append((question, answer, qtype))
      if not candidates[qtype]:
        types.remove(qtype)
  questions, answers, question_types = (list(v) for v in zip(*chosen))
  return questions, answers, question_types


def _questions(rng, objects, clear: dict) -> tuple[list[str], list[str], list[str]]:
  """3-6 questions: always one count question, then round-robin over the other types."""
  count = ("how many shapes are there?", NUMBER_WORDS[len(objects)], "count")
  return pick_questions(rng, count, _question_candidates(rng, objects, clear))


# ----------------------------------------------------------------------------- examples

def make_example(seed: int, split: str, index: int, image_size: int = 32, style: str = "default") -> dict:
  """The example `index` of `split`, a pure function of its arguments (see module docstring), drawn in `style`
  (STYLES; another style draws other scenes: its rng stream differs)."""
  if split not in SPLIT_IDS:
    raise ValueError(f"unknown split {split!r}; expected one of {sorted(SPLIT_IDS)}")
  drawing = STYLES[style]
  key = [seed, SPLIT_IDS[split], index] + ([] if style == "default" else [list(STYLES).index(style)])
  rng = np.random.default_rng(key)
  background = int(rng.integers(*drawing["background"]))
  objects = None
  while objects is None:  # layouts rarely fail; retrying with the same rng stays deterministic
    pairs = _sample_pairs(rng, split, int(rng.integers(1, MAX_OBJECTS + 1)))
    objects = _place_objects(rng, pairs, image_size, drawing["size_scale"])
  return _scene_example(rng, objects, image_size, background, drawing)


def _scene_example(rng, objects: list[dict], image_size: int, background: int, drawing: dict) -> dict:
  """Every field of the example of placed `objects` (sorted by x): image, scene, captions, negatives, questions."""
  margin = relation_margin(image_size, drawing["margin_at_32"])
  clear = {axis: _clear_pairs(objects, axis, margin) for axis in ("x", "y")}
  caption = list_phrase(objects)
  count_pos, count_neg = _count_negative(rng, len(objects))
  binding_pos, binding_neg = _binding_negative(rng, objects)
  lr_pos, lr_neg = _relation_negative(rng, clear["x"], "x")
  ab_pos, ab_neg = _relation_negative(rng, clear["y"], "y")
  questions, answers, question_types = _questions(rng, objects, clear)
  scene = [{k: o[k] for k in ("color", "shape", "size", "x", "y")} for o in objects]
  return {
      "image": _draw(objects, image_size, background, drawing["supersample"]),
      "scene": json.dumps(scene),
      "caption": caption,
      "captions": [caption, count_caption(len(objects))] + _relation_captions(rng, clear),
      "hardneg_count_pos": count_pos, "hardneg_count_neg": count_neg,
      "hardneg_binding_pos": binding_pos, "hardneg_binding_neg": binding_neg,
      "hardneg_left_right_pos": lr_pos, "hardneg_left_right_neg": lr_neg,
      "hardneg_above_below_pos": ab_pos, "hardneg_above_below_neg": ab_neg,
      "questions": questions, "answers": answers, "question_types": question_types,
  }


def top_down_caption(example: dict) -> str:
  """The objects of a default-style scene named from top to bottom, chained by "above" ("a blue square above a red
  circle above a green triangle"): the vertical counterpart of the canonical caption (which lists them left to
  right); "" unless the scene has 2+ objects, each clearly (RELATION_MARGIN_AT_32) below the one before."""
  objects = sorted(placed_objects(example), key=lambda o: o["y"])
  margin = relation_margin(np.asarray(example["image"]).shape[0])
  if len(objects) < 2 or any(b["y"] - a["y"] < margin for a, b in zip(objects, objects[1:])):
    return ""
  return chain_phrase(objects)


def order_negative(example: dict, text: str, rng: np.random.Generator) -> str:
  """`text` made false by naming two neighbouring objects in swapped order, where `text` is one of the texts whose
  word order states where the objects lie: the canonical caption (left to right) or top_down_caption (top to
  bottom). Only neighbours at least RELATION_MARGIN_AT_32 apart on that axis are swapped (one pair, drawn at random
  among them), so the negative is false of the scene and not merely ambiguous; "" for any other text or a list with
  no such neighbours. The order hard negative of a list: today's word-swap negatives (vlm_jax.data.negatives) leave
  lists without one, so a contrastive batch never asks which of two named objects comes first."""
  objects = placed_objects(example)
  if text == example["caption"]:
    axis, ordered, render = "x", objects, list_phrase  # the scene is stored in caption order (sorted by x)
  elif text and text == top_down_caption(example):
    axis, ordered, render = "y", sorted(objects, key=lambda o: o["y"]), chain_phrase
  else:
    return ""
  margin = relation_margin(np.asarray(example["image"]).shape[0])
  apart = [i for i in range(len(ordered) - 1) if ordered[i + 1][axis] - ordered[i][axis] >= margin]
  if not apart:
    return ""
  i = apart[int(rng.integers(len(apart)))]
  return render(ordered[:i] + [ordered[i + 1], ordered[i]] + ordered[i + 2:])


# ----------------------------------------------------------------------------- relation twins

def placed_objects(example: dict) -> list[dict]:
  """The objects of a default-style example's scene, with their drawn half-extent 'r' (as _place_objects gives)."""
  size = np.asarray(example["image"]).shape[0]
  return [{**o, "r": max(1, round(SIZE_FRACTION[o["size"]] * size))} for o in json.loads(example["scene"])]


def _background(image: np.ndarray, objects: list[dict]) -> int:
  """The grey level of the first pixel (row-major) outside every object's bounding box."""
  rows, cols = np.indices(image.shape[:2])
  outside = np.ones(image.shape[:2], bool)
  for o in objects:
    outside &= (np.abs(cols - o["x"]) > o["r"]) | (np.abs(rows - o["y"]) > o["r"])
  i, j = np.argwhere(outside)[0]
  return int(image[i, j, 0])


def relation_twin(example: dict, rng: np.random.Generator) -> tuple[str, dict, str] | None:
  """A counterfactual twin of a default-style scene for one spatial relation (CounterCurate-style).

  The twin is the same objects mirrored on one axis (centre x -> S-1-x, or y -> S-1-y), drawn anew by the same
  renderer (shapes keep their orientation: a mirrored triangle still points up), so every relation on that axis
  reverses and nothing else changes. Returns (text, twin example, twin text): a relation between two clearly
  separated objects, true of `example`, and the same statement with the relation reversed, true of the twin; the
  axis is drawn at random among those with such a pair. None when the scene has no clearly separated pair.
  A batch holding both images and both texts can only be fitted by reading the relation from the image.
  """
  image = np.asarray(example["image"])
  size = image.shape[0]
  objects = placed_objects(example)
  clear = {axis: _clear_pairs(objects, axis, relation_margin(size)) for axis in ("x", "y")}
  axes = [axis for axis in ("x", "y") if clear[axis]]
  if not axes:
    return None
  axis = axes[rng.integers(len(axes))]
  a, relation, b = true_relation(rng, clear[axis][rng.integers(len(clear[axis]))], axis)
  mirrored = sorted(({**o, axis: size - 1 - o[axis]} for o in objects), key=lambda o: o["x"])
  twin = _scene_example(rng, mirrored, size, _background(image, objects), STYLES["default"])
  twin["image"] = np.asarray(twin["image"], np.uint8)
  return relation_caption(a, relation, b), twin, relation_caption(a, reverse_relation(relation), b)


HARDNEG_KINDS = ("count", "binding", "left_right", "above_below")
TEXT_FIELDS = ("scene", "caption") + tuple(
    f"hardneg_{k}_{side}" for k in HARDNEG_KINDS for side in ("pos", "neg"))
LIST_FIELDS = ("captions", "questions", "answers", "question_types")


def all_texts(example: dict) -> list[str]:
  """Every caption, hard negative, question and answer string of an example (not the scene)."""
  texts = list(example["captions"]) + list(example["questions"]) + list(example["answers"])
  texts += [example[f"hardneg_{k}_{side}"] for k in HARDNEG_KINDS for side in ("pos", "neg")]
  return [t for t in texts if t]


def vocabulary_texts() -> list[str]:
  """Every word form the templates can produce, for every colour and shape.

  Added to a tokenizer's training texts so that a word-level vocabulary has no gaps even when
  the training split is tiny. It names all pairs (held-out ones too), but as separate words.
  """
  texts = ["how many shapes are there?", "yes no"] + [
      count_caption(n) + " " + NUMBER_WORDS[n] for n in range(1, MAX_OBJECTS + 1)]
  for color, shape in ALL_PAIRS:
    obj = {"color": color, "shape": shape}
    texts.append(list_phrase([obj] * 3))
    texts.append(f"is there {with_article(object_name(obj))}?")
    texts.append(f"what color is the {shape}? {color}")
    texts.append(f"what shape is the {color} object? {shape}")
    texts += [f"is the {object_name(obj)} {relation} the {object_name(obj)}?"
              for relation in ("left of", "right of", "above", "below")]
  return texts


def png_bytes(image: Image.Image) -> bytes:
  """PNG encoding of an image (deterministic for a given Pillow version)."""
  buffer = io.BytesIO()
  image.save(buffer, format="PNG")
  return buffer.getvalue()
