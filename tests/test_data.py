"""Tests of vlm_jax.data: scene generation, the tfds builder, tokenizers and the grain pipeline."""

import json
import os
import re
import shutil
import subprocess
import sys

import ml_collections
import numpy as np
import pytest

from vlm_jax.data import datasets, negatives, pipeline, shapes
from vlm_jax.data import tokenizer as tokenizer_lib
from vlm_jax.errors import UserError

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SPLITS = ("train", "validation", "test", "compositional")
NAME = r"(?:a|an) (\w+) (\w+)"


def examples(split, n=300, seed=0):
  return [shapes.make_example(seed, split, i) for i in range(n)]


def scene_objects(example):
  return json.loads(example["scene"])


def names_in(text):
  """(colour, shape) pairs named in a caption, in order."""
  return re.findall(NAME, text)


def relation_holds(example, text):
  """Truth of 'a C S <relation> a C S' for the example's scene (clear margin, as generated)."""
  match = re.fullmatch(f"{NAME} (left of|right of|above|below) {NAME}", text)
  assert match, text
  ca, sa, relation, cb, sb = match.groups()
  objs = {(o["color"], o["shape"]): o for o in scene_objects(example)}
  a, b = objs[(ca, sa)], objs[(cb, sb)]
  margin = shapes.RELATION_MARGIN_AT_32
  return {"left of": b["x"] - a["x"] >= margin, "right of": a["x"] - b["x"] >= margin,
          "above": b["y"] - a["y"] >= margin, "below": a["y"] - b["y"] >= margin}[relation]


@pytest.fixture(scope="session")
def data_config(data_dir):
  return ml_collections.ConfigDict(dict(
      name="shapes", builder_config="tiny", data_dir=data_dir, tokenizer="sentencepiece",
      max_text_len=24, vqa_caption_prob=0.2))


@pytest.fixture(scope="session")
def sp_tokenizer(data_dir):
  return tokenizer_lib.load_tokenizer("sentencepiece", data_dir, "tiny")


# ----------------------------------------------------------------------------- scenes

def test_examples_are_a_function_of_seed_split_index():
  for index in range(10):
    a, b = (shapes.make_example(0, "train", index) for _ in range(2))
    assert shapes.png_bytes(a["image"]) == shapes.png_bytes(b["image"])
    assert {k: v for k, v in a.items() if k != "image"} == {k: v for k, v in b.items()
                                                           if k != "image"}
  first = [shapes.png_bytes(e["image"]) for e in examples("train", 10, seed=0)]
  other_seed = [shapes.png_bytes(e["image"]) for e in examples("train", 10, seed=1)]
  other_split = [shapes.png_bytes(e["image"]) for e in examples("validation", 10, seed=0)]
  assert set(first).isdisjoint(other_seed) and set(first).isdisjoint(other_split)


def test_held_out_pairs_only_in_compositional_split():
  for split in ("train", "validation", "test"):
    for e in examples(split):
      pairs = {(o["color"], o["shape"]) for o in scene_objects(e)}
      assert not pairs & shapes.HELD_OUT_PAIRS, (split, e["scene"])
  for e in examples("compositional"):
    assert {(o["color"], o["shape"]) for o in scene_objects(e)} & shapes.HELD_OUT_PAIRS


def test_scenes_have_unique_non_overlapping_objects():
  for e in examples("train"):
    objs = scene_objects(e)
    assert 1 <= len(objs) <= 4
    assert len({(o["color"], o["shape"]) for o in objs}) == len(objs)
    image = np.asarray(e["image"])
    assert image.shape == (32, 32, 3)
    # Every object's centre pixel shows its colour (shapes are drawn, not hidden by others).
    for o in objs:
      assert tuple(image[o["y"], o["x"]]) == shapes.COLORS[o["color"]]


def test_canonical_caption_lists_objects_left_to_right():
  for e in examples("train") + examples("compositional", 100):
    objs = sorted(scene_objects(e), key=lambda o: o["x"])
    assert names_in(e["caption"]) == [(o["color"], o["shape"]) for o in objs]
    assert e["captions"][0] == e["caption"]


def test_all_captions_are_true():
  for e in examples("train"):
    for caption in e["captions"][2:]:
      assert relation_holds(e, caption), (caption, e["scene"])
    assert e["captions"][1] == shapes.count_caption(len(scene_objects(e)))


def test_redrawn_scenes_keep_true_relations_in_another_drawing(data_config):
  split = datasets.get(data_config).eval_split("redrawn")
  n = len(split["caption"])
  assert n == len(datasets.get(data_config).open("test")) and split["image"].shape[0] == n
  default = [shapes.make_example(0, "test", i) for i in range(n)]
  redrawn = [shapes.make_example(0, "test", i, style="redrawn") for i in range(n)]
  assert split["caption"] == [e["caption"] for e in redrawn]
  margin = shapes.STYLES["redrawn"]["margin_at_32"]
  for e in redrawn:
    for kind, axis in (("left_right", "x"), ("above_below", "y")):
      pos, neg = e[f"hardneg_{kind}_pos"], e[f"hardneg_{kind}_neg"]
      if pos:
        for text, truth in ((pos, True), (neg, False)):
          (ca, sa), (cb, sb) = names_in(text)
          objs = {(o["color"], o["shape"]): o for o in scene_objects(e)}
          a, b = objs[(ca, sa)], objs[(cb, sb)]
          relation = re.search("left of|right of|above|below", text).group()
          sign = 1 if relation in ("left of", "above") else -1
          assert (sign * (b[axis] - a[axis]) >= margin) == truth, (text, e["scene"])
  # Drawn otherwise: a bright background (the median pixel: objects cover far less than half of a scene; normalised
  # to [-1, 1]) and anti-aliased edges (colours between the background and the object's), where the default draws
  # only exact colours.
  background = lambda pixels: np.median(pixels.reshape(-1, 3)[:, 0])
  assert min(background(image) for image in split["image"]) >= 100 / 127.5 - 1
  assert max(background(np.asarray(e["image"])) for e in default) < 48
  exact = {tuple(c) for c in shapes.COLORS.values()}
  colours = lambda e: {tuple(p) for p in np.asarray(e["image"]).reshape(-1, 3) if len(set(p)) > 1}
  assert all(colours(e) <= exact for e in default[:20])
  assert all(colours(e) - exact for e in redrawn[:20])


def test_styles_variant_draws_its_train_split_in_three_styles_and_scores_on_default_scenes(tmp_path):
  """builder_config "styles" / "tiny_styles": train record i is drawn in train_styles[i % 3] (default, a bright
  background, anti-aliased at 2x), the other splits exactly as the default variant's; the tokenizer sees the styled
  scenes' texts; relation twins (redrawn in the default style) are refused on it, naming the key."""
  from vlm_jax.data import shapes_tfds
  pipeline.prepare_shapes(str(tmp_path), "tiny_styles")
  config = ml_collections.ConfigDict(dict(name="shapes", builder_config="tiny_styles", data_dir=str(tmp_path),
                                          tokenizer="sentencepiece", max_text_len=24, vqa_caption_prob=0.2))
  builder = datasets.get(config)
  assert builder.tfds.builder_config.train_styles == ("default", "bright", "smooth")
  train, test = builder.open("train"), builder.open("test")
  exact = {tuple(c) for c in shapes.COLORS.values()}
  for i in range(9):
    style = ("default", "bright", "smooth")[i % 3]
    expected = shapes.make_example(0, "train", i, style=style)
    record = builder.decode(train[i])
    assert record["caption"] == expected["caption"]
    image = np.asarray(record["image"], np.uint8)
    assert np.array_equal(image, np.asarray(expected["image"]))
    background = np.median(image.reshape(-1, 3)[:, 0])
    assert (background >= 190) == (style == "bright"), (i, style, background)
    colours = {tuple(p) for p in image.reshape(-1, 3) if len(set(p)) > 1}
    assert bool(colours - exact) == (style == "smooth"), (i, style)
  for i in range(5):
    assert builder.decode(test[i])["caption"] == shapes.make_example(0, "test", i)["caption"]
    assert np.array_equal(np.asarray(builder.decode(test[i])["image"], np.uint8),
                          np.asarray(shapes.make_example(0, "test", i)["image"]))
  texts = builder.tokenizer_texts()[len(shapes.vocabulary_texts()):]
  styled = [shapes_tfds.make_builder(str(tmp_path), "tiny_styles").builder_config.make_example("train", i)
            for i in range(3)]
  assert texts[:sum(len(shapes.all_texts(e)) for e in styled)] == [t for e in styled for t in shapes.all_texts(e)]
  twins = ml_collections.ConfigDict({**config.to_dict(), "relation_twins": 0.5})
  tokenizer = tokenizer_lib.load_tokenizer("sentencepiece", str(tmp_path), "tiny_styles")
  with pytest.raises(UserError, match=r"config.data.relation_twins=0.5: .*builder_config='tiny_styles'"):
    pipeline.train_iterator(twins, tokenizer, batch_size=32, seed=0, task="contrastive_caption")


def test_hard_negatives_are_false_and_differ_from_positives():
  seen = set()
  for e in examples("train") + examples("test"):
    objs = scene_objects(e)
    present = {(o["color"], o["shape"]) for o in objs}
    for kind in shapes.HARDNEG_KINDS:
      pos, neg = e[f"hardneg_{kind}_pos"], e[f"hardneg_{kind}_neg"]
      assert bool(pos) == bool(neg)
      if pos:
        assert pos != neg
        seen.add(kind)
    count_words = {f"{w} shape{'s' if i > 1 else ''}": i
                   for i, w in enumerate(shapes.NUMBER_WORDS) if i}
    assert count_words[e["hardneg_count_pos"]] == len(objs)
    assert count_words[e["hardneg_count_neg"]] in {len(objs) - 1, len(objs) + 1}
    if e["hardneg_binding_neg"]:
      assert e["hardneg_binding_pos"] == e["caption"]
      assert set(names_in(e["hardneg_binding_neg"])) - present
    for kind in ("left_right", "above_below"):
      if e[f"hardneg_{kind}_pos"]:
        assert relation_holds(e, e[f"hardneg_{kind}_pos"])
        assert not relation_holds(e, e[f"hardneg_{kind}_neg"])
  assert seen == set(shapes.HARDNEG_KINDS)


def test_questions_have_correct_single_word_answers():
  for e in examples("train"):
    objs = scene_objects(e)
    assert 3 <= len(e["questions"]) <= 6
    assert len(e["questions"]) == len(e["answers"]) == len(e["question_types"])
    present = {(o["color"], o["shape"]) for o in objs}
    for q, a, qtype in zip(e["questions"], e["answers"], e["question_types"]):
      assert re.fullmatch(r"[a-z]+", a), a
      if qtype == "count":
        assert a == shapes.NUMBER_WORDS[len(objs)]
      elif qtype == "exists":
        (pair,) = names_in(q)
        assert a == ("yes" if pair in present else "no")
        assert pair not in shapes.HELD_OUT_PAIRS
      elif qtype in ("left_right", "above_below"):
        statement = re.sub(r"^is the (.*)\?$", r"a \1", q).replace(" the ", " a ")
        assert a == ("yes" if relation_holds(e, statement) else "no"), q


# ----------------------------------------------------------------------------- tokenizers

def test_tokenizers_round_trip_every_text(data_config, sp_tokenizer):
  byte_tokenizer = tokenizer_lib.ByteTokenizer()
  for split in SPLITS:
    for e in examples(split, 64):
      for text in shapes.all_texts(e) + [pipeline.DESCRIBE_PROMPT]:
        ids = sp_tokenizer.encode(text)
        assert tokenizer_lib.UNK_ID not in ids, text
        assert sp_tokenizer.decode(ids) == text
        assert byte_tokenizer.decode(byte_tokenizer.encode(text)) == text
  # A word-level vocabulary: each word is one token.
  assert len(sp_tokenizer.encode("a red circle and an orange square")) == 7


def test_sentencepiece_training_is_deterministic(tmp_path):
  texts = [t for e in examples("train", 50) for t in shapes.all_texts(e)]
  paths = [tokenizer_lib.train_sentencepiece(texts, str(tmp_path / f"m{i}")) for i in range(2)]
  assert open(paths[0], "rb").read() == open(paths[1], "rb").read()


@pytest.mark.parametrize("kind", ["sentencepiece", "byte"])
def test_tokenize_pads_and_truncation_keeps_eos(sp_tokenizer, kind):
  tok = sp_tokenizer if kind == "sentencepiece" else tokenizer_lib.ByteTokenizer()
  ids, truncated = tokenizer_lib.tokenize(tok, "a red circle", 24)
  assert not truncated and ids.dtype == np.int32 and ids.shape == (24,)
  n = len(tok.encode("a red circle"))
  assert ids[0] == tok.bos_id and ids[n + 1] == tok.eos_id and not ids[n + 2:].any()
  ids, truncated = tokenizer_lib.tokenize(tok, "a red circle and a blue square", 4)
  assert truncated and ids[0] == tok.bos_id and ids[-1] == tok.eos_id
  assert tok.decode(ids) == tok.decode(tok.encode("a red circle and a blue square")[:2])


def test_missing_tokenizer_is_a_user_error(tmp_path):
  with pytest.raises(UserError, match="prepare"):
    tokenizer_lib.load_tokenizer("sentencepiece", str(tmp_path), "tiny")


def test_a_tokenizer_saved_under_its_old_name_is_still_read(tmp_path):
  """Data prepared before the rename (shapes_tokenizer.model, for every dataset) needs no new preparation."""
  assert tokenizer_lib.tokenizer_path(str(tmp_path)) is None
  tokenizer_lib.train_sentencepiece(["a red circle", "a blue square"], str(tmp_path / "shapes_tokenizer"))
  assert tokenizer_lib.tokenizer_path(str(tmp_path)) == str(tmp_path / "shapes_tokenizer.model")
  tokenizer_lib.train_sentencepiece(["a red circle"], str(tmp_path / "tokenizer"))
  assert tokenizer_lib.tokenizer_path(str(tmp_path)) == str(tmp_path / tokenizer_lib.TOKENIZER_FILENAME)


# ----------------------------------------------------------------------------- preparation

def test_prepare_is_idempotent(data_dir, capsys):
  pipeline.prepare_shapes(data_dir, "tiny")
  assert "preparing" not in capsys.readouterr().out


def test_damaged_prepared_data_is_a_user_error(data_dir, tmp_path):
  shutil.copytree(os.path.join(data_dir, "shapes"), tmp_path / "shapes")
  version_dir = tmp_path / "shapes" / "tiny" / "1.0.0"
  for name in os.listdir(version_dir):
    if name.startswith("shapes-train.array_record"):
      os.remove(version_dir / name)
  with pytest.raises(UserError, match=str(version_dir)):
    pipeline.prepare_shapes(str(tmp_path), "tiny")


def test_prepared_data_reads_without_tensorflow(data_config):
  code = f"""
import sys, ml_collections
from vlm_jax.data import pipeline, tokenizer
cfg = ml_collections.ConfigDict({data_config.to_dict()!r})
split = pipeline.load_split(cfg, "compositional")
tok = tokenizer.load_tokenizer("sentencepiece", cfg.data_dir, "tiny")
next(pipeline.train_iterator(cfg, tok, batch_size=8, seed=0, task="vqa"))
assert "tensorflow" not in sys.modules, [m for m in sys.modules if m.startswith("tensorflow.")]
"""
  env = dict(os.environ, PYTHONPATH=REPO_ROOT)
  subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO_ROOT, env=env)


def test_load_split_matches_generator(data_config):
  split = pipeline.load_split(data_config, "validation")
  assert split["image"].shape == (64, 32, 32, 3) and split["image"].dtype == np.float32
  assert split["image"].min() >= -1 and split["image"].max() <= 1
  for index in (0, 63):
    e = shapes.make_example(0, "validation", index)
    np.testing.assert_allclose(split["image"][index], np.asarray(e["image"]) / 127.5 - 1,
                               atol=1e-6)
    for field in shapes.TEXT_FIELDS + shapes.LIST_FIELDS:
      assert split[field][index] == e[field]


# ----------------------------------------------------------------------------- grain iterator

def take(iterator, n):
  return [next(iterator) for _ in range(n)]


def assert_batches_equal(a, b):
  for x, y in zip(a, b, strict=True):
    assert x.keys() == y.keys()
    for k in x:
      np.testing.assert_array_equal(x[k], y[k])


def test_train_iterator_is_deterministic_and_resumes_exactly(data_config, sp_tokenizer):
  make = lambda seed: pipeline.train_iterator(data_config, sp_tokenizer, batch_size=16,
                                              seed=seed, task="contrastive_caption")
  first = take(make(0), 3)
  assert_batches_equal(first, take(make(0), 3))
  assert not np.array_equal(first[0]["image"], next(make(1))["image"])
  # Resuming from a saved state gives exactly the batches that came next, across an epoch end.
  iterator = make(0)
  take(iterator, 15)
  state = iterator.get_state()
  expected = take(iterator, 3)
  resumed = make(0)
  resumed.set_state(state)
  assert_batches_equal(expected, take(resumed, 3))


def test_processes_read_disjoint_examples(data_config, sp_tokenizer):
  seen = []
  for process_index in range(2):
    iterator = pipeline.train_iterator(
        data_config, sp_tokenizer, batch_size=64, seed=0, task="contrastive_caption",
        process_index=process_index, process_count=2)
    batches = take(iterator, 4)  # 4 x 32 = this process's 128 examples: one epoch
    assert all(b["image"].shape[0] == 32 for b in batches)
    seen.append({img.tobytes() for b in batches for img in b["image"]})
  assert len(seen[0]) == len(seen[1]) == 128 and seen[0].isdisjoint(seen[1])


def test_vqa_batches_hold_prompt_then_answer(data_config, sp_tokenizer):
  batch = next(pipeline.train_iterator(data_config, sp_tokenizer, batch_size=32, seed=0,
                                       task="vqa"))
  assert batch["text"].shape == (32, 24) and batch["prefix_len"].shape == (32,)
  questions = {q for e in examples("train", 256) for q in e["questions"]}
  questions.add(pipeline.DESCRIBE_PROMPT)
  for text, prefix_len in zip(batch["text"], batch["prefix_len"]):
    prompt = sp_tokenizer.decode(text[:prefix_len])
    assert prompt in questions
    np.testing.assert_array_equal(
        text[:prefix_len], pipeline.make_vqa_prompt(sp_tokenizer, prompt, 24))
    assert sp_tokenizer.decode(text[prefix_len:])  # a non-empty answer follows
    assert sp_tokenizer.eos_id in text


def test_word_swap_negatives_are_false_for_every_true_caption():
  rng = np.random.default_rng(0)
  count_words = {f"{w} shape{'s' if i > 1 else ''}": i for i, w in enumerate(shapes.NUMBER_WORDS) if i}
  kinds = set()
  for e in examples("train", 100):
    for caption in e["captions"]:
      negative = negatives.hard_negative(caption, rng)
      if caption in count_words:
        assert abs(count_words[negative] - count_words[caption]) == 1
        kinds.add("count")
      elif negative:
        assert names_in(negative) == names_in(caption) and not relation_holds(e, negative)
        kinds.add("relation")
      else:
        assert caption == e["caption"]  # the canonical list states no relation and no count
  assert kinds == {"count", "relation"}


def test_contrastive_batches_with_hard_negatives_pair_each_text_with_its_swap(data_config, sp_tokenizer):
  config = ml_collections.ConfigDict({**data_config.to_dict(), "hard_negatives": True})
  batch = next(pipeline.train_iterator(config, sp_tokenizer, batch_size=32, seed=0, task="contrastive_caption"))
  plain = next(pipeline.train_iterator(data_config, sp_tokenizer, batch_size=32, seed=0, task="contrastive_caption"))
  np.testing.assert_array_equal(batch["text"], plain["text"])  # the same texts: the negatives draw after them
  rng = np.random.default_rng(0)
  for text, negative, valid in zip(batch["text"], batch["text_negative"], batch["text_negative_valid"]):
    text = sp_tokenizer.decode(text)
    assert bool(valid) == bool(negatives.relation_negative(text) or negatives.count_negative(text, rng))
    if valid:
      assert sp_tokenizer.decode(negative) not in ("", text)
  assert 0 < batch["text_negative_valid"].sum() < 32


def test_order_negatives_swap_one_pair_of_neighbours_that_lie_clearly_apart_on_the_texts_axis():
  """A list (left to right) or a top-down chain and its order negative name the same objects, in the same order
  but for one neighbouring pair swapped; that pair lies at least the relation margin apart on the text's axis, so
  the negative is false of the scene. Every other text has none."""
  rng = np.random.default_rng(0)
  swapped = {"x": 0, "y": 0}
  for e in examples("train", 200):
    e["image"] = np.asarray(e["image"])
    objects = {(o["color"], o["shape"]): o for o in scene_objects(e)}
    for axis, text in (("x", e["caption"]), ("y", shapes.top_down_caption(e))):
      negative = shapes.order_negative(e, text, rng) if text else ""
      if not negative:
        coords = [objects[n][axis] for n in names_in(text)]
        assert all(b - a < shapes.RELATION_MARGIN_AT_32 for a, b in zip(coords, coords[1:]))
        continue
      named, wrong = names_in(text), names_in(negative)
      differ = [i for i in range(len(named)) if named[i] != wrong[i]]
      assert len(differ) == 2 and differ[1] == differ[0] + 1, (text, negative)
      i = differ[0]
      assert (wrong[i], wrong[i + 1]) == (named[i + 1], named[i])
      assert objects[named[i + 1]][axis] - objects[named[i]][axis] >= shapes.RELATION_MARGIN_AT_32
      assert (" above " in negative) == (axis == "y")
      swapped[axis] += 1
    for text in e["captions"][1:]:  # counts and relation statements (but a two-object chain's equal): none
      assert shapes.order_negative(e, text, rng) == "" or text == shapes.top_down_caption(e)
  assert swapped["x"] > 50 and swapped["y"] > 30, swapped


def test_contrastive_batches_with_order_negatives_swap_lists_and_chains_and_keep_the_word_swaps(
    data_config, sp_tokenizer):
  config = ml_collections.ConfigDict({**data_config.to_dict(), "hard_negatives": True, "order_negatives": True,
                                      "top_down_caption_prob": 0.5})
  batch = next(pipeline.train_iterator(config, sp_tokenizer, batch_size=32, seed=0, task="contrastive_caption"))
  by_caption = {e["caption"]: e for e in examples("train", 256)}
  rng = np.random.default_rng(0)
  kinds = set()
  for text, negative, valid, caption in zip(batch["text"], batch["text_negative"], batch["text_negative_valid"],
                                            batch["caption"]):
    text, negative, example = sp_tokenizer.decode(text), sp_tokenizer.decode(negative), by_caption[
        sp_tokenizer.decode(caption)]
    example["image"] = np.asarray(example["image"])
    if shapes.order_negative(example, text, np.random.default_rng(0)):
      kinds.add("chain" if " above " in text and "," not in text else "list")
      assert valid and sorted(names_in(negative)) == sorted(names_in(text)) and negative != text
    elif negatives.states_relation(text) or negatives.count_negative(text, rng):
      kinds.add("swap")
      assert valid and negative not in ("", text)
    else:
      assert not valid
  assert {"list", "chain", "swap"} <= kinds, kinds


def test_order_negatives_without_hard_negatives_are_refused(data_config, sp_tokenizer):
  config = ml_collections.ConfigDict({**data_config.to_dict(), "order_negatives": True})
  with pytest.raises(UserError, match="config.data.order_negatives=True: it needs config.data.hard_negatives=True"):
    pipeline.train_iterator(config, sp_tokenizer, batch_size=8, seed=0, task="contrastive_caption")


@pytest.mark.parametrize("key, value", [("hard_negatives", True), ("relation_caption_prob", 0.5),
                                        ("top_down_caption_prob", 1.0), ("order_negatives", True)])
def test_contrastive_text_keys_on_a_vqa_run_are_refused_naming_the_key(data_config, sp_tokenizer, key, value):
  """A prefix-LM (task "vqa") draws no contrastive texts: such a key would be silently ignored."""
  config = ml_collections.ConfigDict({**data_config.to_dict(), key: value})
  with pytest.raises(UserError, match=rf"^config.data.{key}={value}: it chooses the texts of contrastive_caption "
                                      r"batches; this model trains on 'vqa' batches"):
    pipeline.train_iterator(config, sp_tokenizer, batch_size=8, seed=0, task="vqa")


def test_relation_caption_prob_one_makes_every_text_of_a_scene_with_a_relation_a_relation_caption_and_a_decoder_target(
    data_config, sp_tokenizer):
  config = ml_collections.ConfigDict({**data_config.to_dict(), "relation_caption_prob": 1.0})
  batch = next(pipeline.train_iterator(config, sp_tokenizer, batch_size=32, seed=0, task="contrastive_caption"))
  by_caption = {e["caption"]: e["captions"] for e in examples("train", 256)}
  relation_texts = 0
  for text, caption in zip(batch["text"], batch["caption"]):
    text, captions = sp_tokenizer.decode(text), by_caption[sp_tokenizer.decode(caption)]
    assert text in captions  # still a true caption of the image
    assert negatives.states_relation(text) == any(negatives.states_relation(c) for c in captions)
    relation_texts += negatives.states_relation(text)
  assert 0 < relation_texts < 32  # some scenes (one object) state no relation: they keep the usual draw
  # decoder_caption "text": the captioner's target is the contrastive text itself, the same draws otherwise.
  config.decoder_caption = "text"
  same = next(pipeline.train_iterator(config, sp_tokenizer, batch_size=32, seed=0, task="contrastive_caption"))
  np.testing.assert_array_equal(same["caption"], same["text"])
  np.testing.assert_array_equal(same["text"], batch["text"])


def test_relation_twins_mirror_one_axis_and_reverse_exactly_its_relations():
  axes = set()
  for i, e in enumerate(examples("train", 120)):
    e["image"] = np.asarray(e["image"])
    objects = shapes.placed_objects(e)
    # The scene and its recovered background redraw the stored image exactly: the twin is drawn as the data are.
    np.testing.assert_array_equal(np.asarray(shapes._draw(objects, 32, shapes._background(e["image"], objects))),
                                  e["image"])
    made = shapes.relation_twin(e, np.random.default_rng(i))
    if made is None:
      assert not any(negatives.states_relation(c) for c in e["captions"])  # no clearly separated pair at all
      continue
    text, twin, twin_text = made
    assert twin_text == negatives.relation_negative(text)
    assert relation_holds(e, text) and not relation_holds(e, twin_text)
    assert relation_holds(twin, twin_text) and not relation_holds(twin, text)
    by_name = {(o["color"], o["shape"]): o for o in scene_objects(e)}
    mirrored = [axis for axis in ("x", "y") if all(
        o[axis] == 31 - by_name[(o["color"], o["shape"])][axis] for o in scene_objects(twin))]
    assert len(mirrored) == 1  # one axis mirrored, the other kept
    axis = mirrored[0]
    assert all(o["xy".replace(axis, "")] == by_name[(o["color"], o["shape"])]["xy".replace(axis, "")]
               for o in scene_objects(twin))
    axes.add(axis)
    # The twin's own fields are true of it: its canonical caption lists it left to right, each object is drawn.
    assert names_in(twin["caption"]) == [(o["color"], o["shape"]) for o in sorted(scene_objects(twin),
                                                                                 key=lambda o: o["x"])]
    assert all(relation_holds(twin, c) for c in twin["captions"] if negatives.states_relation(c))
    for o in scene_objects(twin):
      assert tuple(twin["image"][o["y"], o["x"]]) == shapes.COLORS[o["color"]]
  assert axes == {"x", "y"}


def test_top_down_captions_name_every_object_from_top_to_bottom_and_each_link_is_true():
  stated = 0
  for e in examples("train", 300):
    caption = shapes.top_down_caption(e)
    objects = scene_objects(e)
    if not caption:
      ys = sorted(o["y"] for o in objects)
      assert len(objects) < 2 or any(b - a < shapes.RELATION_MARGIN_AT_32 for a, b in zip(ys, ys[1:]))
      continue
    stated += 1
    named = names_in(caption)
    assert sorted(named) == sorted((o["color"], o["shape"]) for o in objects)  # every object, once
    links = caption.split(" above ")
    assert len(links) == len(objects)
    assert all(relation_holds(e, f"{a} above {b}") for a, b in zip(links, links[1:]))
  assert 50 < stated < 300


def test_top_down_caption_prob_one_gives_the_chain_wherever_a_scene_has_one(data_config, sp_tokenizer):
  # At 16 tokens a 4-object chain (17 with BOS and EOS) does not fit: such scenes keep the usual draw.
  config = ml_collections.ConfigDict({**data_config.to_dict(), "top_down_caption_prob": 1.0, "max_text_len": 16})
  batch = next(pipeline.train_iterator(config, sp_tokenizer, batch_size=32, seed=0, task="contrastive_caption"))
  by_caption = {e["caption"]: e for e in examples("train", 256)}
  chains = 0
  for text, caption in zip(batch["text"], batch["caption"]):
    example = by_caption[sp_tokenizer.decode(caption)]
    chain = shapes.top_down_caption(example)
    chain = "" if tokenizer_lib.tokenize(sp_tokenizer, chain, 16)[1] else chain  # never cut: too long, not drawn
    assert not chain or len(sp_tokenizer.encode(chain)) <= 14
    assert sp_tokenizer.decode(text) == chain if chain else sp_tokenizer.decode(text) in example["captions"]
    chains += bool(chain)
  assert 0 < chains < 32


def test_relation_twins_fill_a_batch_with_pairs_told_apart_by_their_relation_only(data_config, sp_tokenizer):
  config = ml_collections.ConfigDict({**data_config.to_dict(), "relation_twins": 1.0})
  make = lambda: pipeline.train_iterator(config, sp_tokenizer, batch_size=32, seed=0, task="contrastive_caption")
  batch = next(make())
  decode = lambda ids: sp_tokenizer.decode(ids)
  pairs = 0
  for k in range(0, 32, 2):
    first, second = decode(batch["text"][k]), decode(batch["text"][k + 1])
    if negatives.states_relation(first):  # a twin pair (scenes without a clear pair keep their usual draw)
      pairs += 1
      assert second == negatives.relation_negative(first)
      assert not np.array_equal(batch["image"][k], batch["image"][k + 1])
      # Same objects: the canonical captions name the same ones (in reversed order when mirrored left-right).
      assert sorted(names_in(decode(batch["caption"][k]))) == sorted(names_in(decode(batch["caption"][k + 1])))
  assert pairs >= 8
  # A function of (seed, index): resuming gives the same twins.
  iterator = make()
  take(iterator, 5)
  state = iterator.get_state()
  expected = take(iterator, 2)
  resumed = make()
  resumed.set_state(state)
  assert_batches_equal(expected, take(resumed, 2))
  with pytest.raises(UserError,
                     match=r"config.data.relation_twins=1.0: relation twins are made for contrastive_caption"):
    pipeline.train_iterator(config, sp_tokenizer, batch_size=32, seed=0, task="vqa")


def test_ignore_true_counts_gives_each_scene_its_count_and_each_text_the_count_it_states(data_config, sp_tokenizer):
  config = ml_collections.ConfigDict({**data_config.to_dict(), "ignore_true_counts": True, "hard_negatives": True})
  batch = next(pipeline.train_iterator(config, sp_tokenizer, batch_size=32, seed=0, task="contrastive_caption"))
  by_caption = {e["caption"]: e for e in examples("train", 256)}
  stated = {shapes.count_caption(n): n for n in range(1, shapes.MAX_OBJECTS + 1)}
  for i in range(32):
    example = by_caption[sp_tokenizer.decode(batch["caption"][i])]
    assert batch["object_count"][i] == len(scene_objects(example))
    assert batch["text_count"][i] == stated.get(sp_tokenizer.decode(batch["text"][i]), 0)
    negative = sp_tokenizer.decode(batch["text_negative"][i]) if batch["text_negative_valid"][i] else ""
    assert batch["text_negative_count"][i] == stated.get(negative, 0)
  assert 0 < np.count_nonzero(batch["text_count"]) < 32
  # The same stream otherwise: the texts and images of a run without the switch.
  plain = next(pipeline.train_iterator(ml_collections.ConfigDict({**config.to_dict(), "ignore_true_counts": False}),
                                       sp_tokenizer, batch_size=32, seed=0, task="contrastive_caption"))
  assert set(batch) - set(plain) == {"object_count", "text_count", "text_negative_count"}
  assert all(np.array_equal(batch[k], plain[k]) for k in plain)
  with pytest.raises(UserError, match=r"^config.data.ignore_true_counts=True: it is for contrastive_caption batches"):
    pipeline.train_iterator(config, sp_tokenizer, batch_size=32, seed=0, task="vqa")


def test_contrastive_batches_hold_true_captions(data_config, sp_tokenizer):
  batch = next(pipeline.train_iterator(data_config, sp_tokenizer, batch_size=32, seed=0,
                                       task="contrastive_caption"))
  assert batch["image"].dtype == np.float32 and batch["text"].dtype == np.int32
  captions = {sp_tokenizer.decode(t): sp_tokenizer.decode(c)
              for t, c in zip(batch["text"], batch["caption"])}
  by_caption = {e["caption"]: e["captions"] for e in examples("train", 256)}
  for text, caption in captions.items():
    assert text in by_caption[caption]
