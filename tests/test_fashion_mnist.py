"""Tests of the Fashion-MNIST data: IDX parsing, scenes shaped like the shapes examples, the tfds builder,
the classification iterator and zero-shot placement.

"The real files" are the slice of Fashion-MNIST in tests/fixtures/fashion_mnist (conftest.py points
$VLM_JAX_FASHION_MNIST_DIR there unless it is set, e.g. to Debian's full dataset-fashion-mnist).
"""

import collections
import gzip
import json
import os
import re

import ml_collections
import numpy as np
import pytest

from vlm_jax.data import datasets, fashion_mnist, pipeline, shapes
from vlm_jax.data import tokenizer as tokenizer_lib
from vlm_jax.errors import UserError
from vlm_jax.evaluators import zero_shot

NAME = "|".join(re.escape(n) for n in fashion_mnist.CLASS_NAMES)
ITEM = rf"(?:a|an) ({NAME})"


# ----------------------------------------------------------------------------- helpers

def write_idx(path, array, magic):
  """A gzipped IDX file of a uint8 array."""
  header = magic.to_bytes(4, "big") + b"".join(d.to_bytes(4, "big") for d in array.shape)
  with gzip.open(path, "wb") as f:
    f.write(header + np.ascontiguousarray(array, np.uint8).tobytes())


def write_fake_dataset(directory, n_train=40, n_test=12, seed=0):
  """Random images with labels 0..9 cycling; returns {prefix: (images, labels)}."""
  rng = np.random.default_rng(seed)
  arrays = {}
  for prefix, n in (("train", n_train), ("t10k", n_test)):
    images = rng.integers(1, 256, size=(n, 28, 28), dtype=np.uint8)  # no all-black image
    labels = (np.arange(n) % 10).astype(np.uint8)
    write_idx(os.path.join(directory, f"{prefix}-images-idx3-ubyte.gz"), images, fashion_mnist.IMAGE_MAGIC)
    write_idx(os.path.join(directory, f"{prefix}-labels-idx1-ubyte.gz"), labels, fashion_mnist.LABEL_MAGIC)
    arrays[prefix] = images, labels
  return arrays


def classifier_config(directory):
  return ml_collections.ConfigDict(dict(name="fashion_mnist", data_dir=str(directory), image_size=28,
                                        tokenizer="byte", fashion_mnist_dir=str(directory)))


def items_of(scene):
  return json.loads(scene["scene"])


def named(items, name):
  (item,) = [i for i in items if i["name"] == name]
  return item


def holds(items, text):
  """Truth of 'a X <relation> a Y' on the scene's grid."""
  match = re.fullmatch(f"{ITEM} (left of|right of|above|below) {ITEM}", text)
  assert match, text
  name_a, relation, name_b = match.groups()
  a, b = named(items, name_a), named(items, name_b)
  return {"left of": a["cell_col"] < b["cell_col"], "right of": a["cell_col"] > b["cell_col"],
          "above": a["cell_row"] < b["cell_row"], "below": a["cell_row"] > b["cell_row"]}[relation]


@pytest.fixture(scope="module")
def train():
  return fashion_mnist.load("train")


@pytest.fixture(scope="module")
def scenes(train):
  images, labels = train
  return [fashion_mnist.make_scene(0, "train", i, images, labels) for i in range(300)]


# ----------------------------------------------------------------------------- files (no package needed)

def test_idx_files_round_trip_through_the_configured_folder(tmp_path, monkeypatch):
  arrays = write_fake_dataset(tmp_path)
  images, labels = fashion_mnist.load("train", str(tmp_path))
  n_train = fashion_mnist.train_size(40)
  np.testing.assert_array_equal(images, arrays["train"][0][:n_train])
  np.testing.assert_array_equal(labels, arrays["train"][1][:n_train])
  assert images.dtype == np.uint8 and labels.dtype == np.int32
  assert len(fashion_mnist.load("validation", str(tmp_path))[0]) == 40 // 12  # the last twelfth of train
  # config.data.fashion_mnist_dir reaches the loader; images come back grey replicated in [-1, 1].
  split = pipeline.load_split(classifier_config(tmp_path), "test")
  np.testing.assert_array_equal(split["label"], arrays["t10k"][1])
  np.testing.assert_allclose(split["image"], np.repeat(arrays["t10k"][0][..., None], 3, -1) / 127.5 - 1, atol=1e-6)
  # The folder: argument, else the environment variable, else the package's.
  monkeypatch.setenv(fashion_mnist.DIR_ENV, str(tmp_path / "env"))
  assert fashion_mnist.data_dir(str(tmp_path)) == str(tmp_path)
  assert fashion_mnist.data_dir("") == str(tmp_path / "env")
  monkeypatch.delenv(fashion_mnist.DIR_ENV)
  assert fashion_mnist.data_dir() == fashion_mnist.DEFAULT_DIR


def test_missing_folder_is_a_one_line_user_error(tmp_path):
  missing = tmp_path / "nowhere"
  with pytest.raises(UserError) as error:
    pipeline.prepare_data(classifier_config(missing))
  message = str(error.value)
  assert "\n" not in message
  assert str(missing / "train-images-idx3-ubyte.gz") in message
  assert "apt-get install dataset-fashion-mnist" in message and "config.data.fashion_mnist_dir" in message


@pytest.mark.parametrize("damage", ["truncated", "wrong_magic", "not_gzip"])
def test_corrupt_file_is_a_user_error_naming_it(tmp_path, damage):
  write_fake_dataset(tmp_path)
  path = tmp_path / "t10k-images-idx3-ubyte.gz"
  data = gzip.decompress(path.read_bytes())
  if damage == "truncated":
    path.write_bytes(gzip.compress(data[:-100]))
  elif damage == "wrong_magic":
    path.write_bytes(gzip.compress(fashion_mnist.LABEL_MAGIC.to_bytes(4, "big") + data[4:]))
  else:
    path.write_bytes(data)
  with pytest.raises(UserError, match=re.escape(str(path))):
    fashion_mnist.load("test", str(tmp_path))


def test_classification_iterator_is_deterministic_and_resumes_exactly(tmp_path):
  arrays = write_fake_dataset(tmp_path, n_train=40)
  config = classifier_config(tmp_path)
  make = lambda seed: pipeline.train_iterator(config, None, batch_size=16, seed=seed, task="classification")
  take = lambda iterator, n: [next(iterator) for _ in range(n)]
  first = take(make(0), 3)
  assert first[0]["image"].shape == (16, 28, 28, 3) and first[0]["image"].dtype == np.float32
  assert first[0]["label"].shape == (16,) and first[0]["label"].dtype == np.int32
  for a, b in zip(first, take(make(0), 3)):
    np.testing.assert_array_equal(a["image"], b["image"])
    np.testing.assert_array_equal(a["label"], b["label"])
  assert not np.array_equal(first[0]["image"], next(make(1))["image"])
  # Each image keeps its own label.
  label_of = {(img.astype(np.float32) / 127.5 - 1).tobytes(): int(lab) for img, lab in zip(*arrays["train"])}
  for batch in first:
    for image, label in zip(batch["image"], batch["label"]):
      assert label_of[np.ascontiguousarray(image[..., 0]).tobytes()] == label
      np.testing.assert_array_equal(image[..., 0], image[..., 2])
  # Resuming from a saved state gives exactly the batches that came next, across epoch ends (40 / 16).
  iterator = make(0)
  take(iterator, 7)
  state = iterator.get_state()
  expected = take(iterator, 3)
  resumed = make(0)
  resumed.set_state(state)
  for a, b in zip(expected, take(resumed, 3)):
    np.testing.assert_array_equal(a["image"], b["image"])
    np.testing.assert_array_equal(a["label"], b["label"])


def test_crop_flip_shifts_each_image_by_at_most_2_px_or_mirrors_it(tmp_path):
  arrays = write_fake_dataset(tmp_path, n_train=40)
  config = ml_collections.ConfigDict({**classifier_config(tmp_path).to_dict(), "augment": "crop_flip"})
  batch = next(pipeline.train_iterator(config, None, batch_size=32, seed=0, task="classification"))
  originals = {int(lab): [] for lab in arrays["train"][1]}
  for image, label in zip(*arrays["train"]):
    originals[int(label)].append(np.pad(image.astype(np.float32) / 127.5 - 1, 2, constant_values=-1.0))
  moved = 0
  for image, label in zip(batch["image"][..., 0], batch["label"]):
    # Some training image of the label, padded with background, shifted by (dy, dx) and maybe mirrored.
    views = [view for padded in originals[int(label)] for dy in range(5) for dx in range(5)
             for view in (padded[dy:dy + 28, dx:dx + 28], padded[dy:dy + 28, dx:dx + 28][:, ::-1])]
    matches = [i for i, view in enumerate(views) if np.array_equal(view, image)]
    assert matches, "an augmented image is no shift or mirror of a training image of its label"
    moved += all(i % 50 != 24 for i in matches)  # index 24: dy = dx = 2 unmirrored, the image as it was
  assert moved > 16  # 24 of 25 offsets x 2 mirrors move the image
  with pytest.raises(UserError, match="config.data.augment"):
    datasets.get(ml_collections.ConfigDict({**config.to_dict(), "augment": "mixup"})).check_config()


def test_batches_gathered_from_the_arrays_are_the_per_example_pipelines(tmp_path):
  """The in-memory path (train_arrays, one gather per batch) gives bit for bit the batches of grain's per-example
  chain over the source (shuffle, repeat, then each example's crop and mirror drawn from its own generator, written
  out here as crop_flip is documented), across an epoch end."""
  import grain  # noqa: PLC0415
  write_fake_dataset(tmp_path, n_train=40)
  config = ml_collections.ConfigDict({**classifier_config(tmp_path).to_dict(), "augment": "crop_flip"})
  builder = datasets.get(config)

  def crop_flip(example, rng):
    top, left = rng.integers(0, 5, size=2)
    image = np.pad(example["image"], ((2, 2), (2, 2), (0, 0)))[top:top + 28, left:left + 28]
    image = image[:, ::-1] if rng.random() < 0.5 else image
    return {"image": image.astype(np.float32) / 127.5 - 1, "label": example["label"]}

  reference = grain.MapDataset.source(builder.open("train")).filter(lambda e: e is not None).seed(5).shuffle()
  reference = reference.repeat().random_map(crop_flip)
  iterator = pipeline.train_iterator(config, None, batch_size=16, seed=5, task="classification")
  for step in range(4):  # 64 examples: the second epoch begins in the third batch
    batch = next(iterator)
    expected = [reference[step * 16 + j] for j in range(16)]
    np.testing.assert_array_equal(batch["image"], np.stack([e["image"] for e in expected]))
    np.testing.assert_array_equal(batch["label"], [e["label"] for e in expected])


def test_dataset_task_and_tokenizer_mismatches_are_user_errors(tmp_path):
  write_fake_dataset(tmp_path)
  config = classifier_config(tmp_path)
  with pytest.raises(UserError, match="tokenizer='byte'"):
    tokenizer_lib.load_tokenizer("sentencepiece", str(tmp_path), dataset="fashion_mnist")
  assert tokenizer_lib.load_tokenizer("byte", str(tmp_path), dataset="fashion_mnist").vocab_size == 259
  with pytest.raises(UserError, match="classification"):
    pipeline.train_iterator(config, None, batch_size=8, seed=0, task="vqa")
  with pytest.raises(UserError, match="config.data.image_size"):
    pipeline.prepare_data(ml_collections.ConfigDict({**config.to_dict(), "image_size": 32}))


# ----------------------------------------------------------------------------- the real files

def test_splits_have_the_documented_sizes_and_balanced_labels(train):
  validation = fashion_mnist.load("validation")
  images, labels = fashion_mnist.load("test")
  n_file = len(train[1]) + len(validation[1])
  assert len(validation[1]) == n_file // 12 and train[0].shape == (n_file - n_file // 12, 28, 28)
  assert images.dtype == np.uint8 and images.shape[1:] == (28, 28)
  for split_labels in (train[1], validation[1], labels):
    assert split_labels.min() == 0 and split_labels.max() == 9
  if n_file == 60_000:  # the full files: 55 000 / 5000 / 10 000, the test split exactly balanced
    assert len(labels) == 10_000 and np.bincount(labels).tolist() == [1000] * 10
  else:  # the fixture slice: every class in every split
    for split_labels in (train[1], validation[1], labels):
      assert len(np.unique(split_labels)) == 10


def test_scenes_are_a_function_of_seed_split_index(train):
  images, labels = train
  make = lambda seed, split, i: fashion_mnist.make_scene(seed, split, i, images, labels)
  for index in range(5):
    a, b = make(0, "train", index), make(0, "train", index)
    assert fashion_mnist.png_bytes(a["image"]) == fashion_mnist.png_bytes(b["image"])
    assert {k: v for k, v in a.items() if k != "image"} == {k: v for k, v in b.items() if k != "image"}
  first = [make(0, "train", i)["scene"] for i in range(10)]
  assert set(first).isdisjoint(make(1, "train", i)["scene"] for i in range(10))
  assert set(first).isdisjoint(make(0, "validation", i)["scene"] for i in range(10))


def test_scenes_have_the_shapes_fields():
  expected = shapes.make_example(0, "train", 0)
  scene = fashion_mnist.make_scene(0, "test", 0, *fashion_mnist.load("test"))
  assert scene.keys() == expected.keys()
  for key, value in expected.items():
    assert type(scene[key]) is type(value) or key == "image", key
  assert scene["image"].mode == "RGB" and scene["image"].size == (56, 56)


def test_items_are_drawn_in_the_cells_the_scene_names(train, scenes):
  images, _ = train
  counts = collections.Counter()
  for scene in scenes:
    items = items_of(scene)
    counts[len(items)] += 1
    canvas = np.asarray(scene["image"])
    assert (canvas[..., 0] == canvas[..., 2]).all()  # grey
    cells = {(i["cell_row"], i["cell_col"]): i for i in items}
    assert len(cells) == len(items) and len({i["label"] for i in items}) == len(items)
    assert [(i["cell_row"], i["cell_col"]) for i in items] == sorted(cells)  # row-major
    for row in range(2):
      for col in range(2):
        pixels = canvas[row * 28:(row + 1) * 28, col * 28:(col + 1) * 28, 0]
        if (row, col) in cells:
          item = cells[(row, col)]
          np.testing.assert_array_equal(pixels, images[item["index"]])
          assert train[1][item["index"]] == item["label"]
          assert fashion_mnist.CLASS_NAMES[item["label"]] == item["name"]
        else:
          assert not pixels.any()
  assert set(counts) == {1, 2, 3}


def test_captions_agree_with_the_cells(scenes):
  for scene in scenes:
    items = items_of(scene)
    names = [fashion_mnist.with_article(i["name"]) for i in items]
    caption = scene["caption"]
    assert scene["captions"][:2] == [caption, fashion_mnist.count_caption(len(items))]
    if len(items) == 1:
      assert caption == names[0]
    elif len(items) == 3:
      assert caption == f"{names[0]}, {names[1]} and {names[2]}"
    else:
      a, b = items
      relation = "left of" if a["cell_col"] != b["cell_col"] else "above"
      assert holds(items, caption) and f" {relation} " in caption, (caption, items)
    for text in scene["captions"][2:]:
      assert holds(items, text), (text, items)
  assert fashion_mnist.with_article("ankle boot") == "an ankle boot"


def test_hard_negatives_are_false_and_use_the_same_words(scenes):
  seen = set()
  for scene in scenes:
    items = items_of(scene)
    assert scene["hardneg_binding_pos"] == scene["hardneg_binding_neg"] == ""
    assert scene["hardneg_count_pos"] == fashion_mnist.count_caption(len(items))
    assert scene["hardneg_count_neg"] in {fashion_mnist.count_caption(n) for n in (len(items) - 1, len(items) + 1)}
    for kind in ("count", "left_right", "above_below"):
      pos, neg = scene[f"hardneg_{kind}_pos"], scene[f"hardneg_{kind}_neg"]
      assert bool(pos) == bool(neg)
      if not pos:
        continue
      seen.add(kind)
      assert pos != neg
      if kind != "count":
        assert sorted(pos.split()) == sorted(neg.split())
        assert holds(items, pos) and not holds(items, neg), (pos, neg, items)
    # Relation negatives exist exactly when two items differ in column (row).
    assert bool(scene["hardneg_left_right_pos"]) == (len({i["cell_col"] for i in items}) > 1)
    assert bool(scene["hardneg_above_below_pos"]) == (len({i["cell_row"] for i in items}) > 1)
  assert seen == {"count", "left_right", "above_below"}


def test_questions_have_correct_answers(scenes):
  counts = collections.Counter()
  for scene in scenes:
    items = items_of(scene)
    present = {i["name"] for i in items}
    assert 3 <= len(scene["questions"]) <= 6
    assert len(scene["questions"]) == len(scene["answers"]) == len(scene["question_types"])
    for q, a, qtype in zip(scene["questions"], scene["answers"], scene["question_types"]):
      counts[qtype, a in ("yes", "no") and a] += 1
      if qtype == "count":
        assert q == "how many items are there?" and a == fashion_mnist.NUMBER_WORDS[len(items)]
      elif qtype == "exists":
        (name,) = re.fullmatch(f"is there {ITEM}\\?", q).groups()
        assert a == ("yes" if name in present else "no")
      elif qtype == "relation":
        statement = re.sub(r"^is the (.*)\?$", r"a \1", q).replace(" the ", " a ")
        statement = re.sub(r"\ba (?=[aeiou])", "an ", statement)
        assert a == ("yes" if holds(items, statement) else "no"), q
      else:
        assert qtype == "what"
        relation, name = re.fullmatch(f"what is (left of|right of|above|below) the ({NAME})\\?", q).groups()
        matches = [i["name"] for i in items if i["name"] != name
                   and holds(items, f"{fashion_mnist.with_article(i['name'])} {relation} "
                                    f"{fashion_mnist.with_article(name)}")]
        assert matches == [a], (q, a, items)
  # Every type is asked, and yes/no answers are both common.
  assert {t for t, _ in counts} == {"count", "exists", "relation", "what"}
  for qtype in ("exists", "relation"):
    assert min(counts[qtype, "yes"], counts[qtype, "no"]) > 0.3 * (counts[qtype, "yes"] + counts[qtype, "no"])


def test_place_single_draws_image_i_in_cell_i_mod_4_as_a_scene_would(train):
  images, labels = fashion_mnist.load("test")
  placed = fashion_mnist.place_single(images[:8])
  assert placed.shape == (8, 56, 56, 3) and placed.dtype == np.uint8
  for i in range(8):
    row, col = fashion_mnist.cell_position(i % 4)
    expected = np.zeros((56, 56), np.uint8)
    expected[row * 28:(row + 1) * 28, col * 28:(col + 1) * 28] = images[i]
    np.testing.assert_array_equal(placed[i], np.repeat(expected[..., None], 3, -1))
  # Exactly the drawing of a 1-item scene, at the default and at a resized image size.
  for size in (56, 64):
    for index in range(40):
      scene = fashion_mnist.make_scene(0, "train", index, *train, image_size=size)
      items = items_of(scene)
      if len(items) == 1:
        (item,) = items
        cell = 2 * item["cell_row"] + item["cell_col"]
        four = np.stack([train[0][item["index"]]] * 4)
        np.testing.assert_array_equal(fashion_mnist.place_single(four, size)[cell], np.asarray(scene["image"]))
  with pytest.raises(UserError, match="even"):
    fashion_mnist.place_single(images[:1], 57)
  zs_images, zs_labels, names = pipeline.load_zero_shot(ml_collections.ConfigDict(dict(image_size=56)))
  assert zs_images.shape == (len(labels), 56, 56, 3) and zs_images.dtype == np.float32
  np.testing.assert_array_equal(zs_labels, labels)
  np.testing.assert_allclose(zs_images[:8], placed / 127.5 - 1, atol=1e-6)
  assert names == fashion_mnist.CLASS_NAMES


# ----------------------------------------------------------------------------- the tfds builder

@pytest.fixture(scope="module")
def scenes_config(tmp_path_factory):
  config = ml_collections.ConfigDict(dict(
      name="fashion_mnist_scenes", builder_config="tiny", data_dir=str(tmp_path_factory.mktemp("fm")),
      image_size=56, tokenizer="sentencepiece", max_text_len=24, vqa_caption_prob=0.2, fashion_mnist_dir=""))
  pipeline.prepare_data(config)
  return config


def test_tiny_builder_prepares_and_loads_with_the_shapes_fields(scenes_config, capsys):
  pipeline.prepare_data(scenes_config)
  assert "preparing" not in capsys.readouterr().out  # idempotent
  split = pipeline.load_split(scenes_config, "validation")
  assert set(split) == {"image", *shapes.TEXT_FIELDS, *shapes.LIST_FIELDS}
  assert split["image"].shape == (64, 56, 56, 3) and split["image"].dtype == np.float32
  images, labels = fashion_mnist.load("validation")
  for index in (0, 63):
    scene = fashion_mnist.make_scene(0, "validation", index, images, labels)
    np.testing.assert_allclose(split["image"][index], np.asarray(scene["image"]) / 127.5 - 1, atol=1e-6)
    for field in shapes.TEXT_FIELDS + shapes.LIST_FIELDS:
      assert split[field][index] == scene[field]
  with pytest.raises(UserError, match="config.data.image_size"):
    pipeline.prepare_data(ml_collections.ConfigDict({**scenes_config.to_dict(), "image_size": 32}))


def test_scenes_tokenizer_covers_every_text_with_one_token_per_word(scenes_config):
  tok = tokenizer_lib.load_tokenizer("sentencepiece", scenes_config.data_dir, "tiny", dataset="fashion_mnist_scenes")
  images, labels = fashion_mnist.load("test")
  texts = [pipeline.DESCRIBE_PROMPT] + zero_shot.class_prompts(list(fashion_mnist.CLASS_NAMES))
  for index in range(64):
    texts += fashion_mnist.all_texts(fashion_mnist.make_scene(0, "test", index, images, labels))
  for text in texts:
    ids = tok.encode(text)
    assert tokenizer_lib.UNK_ID not in ids, text
    assert tok.decode(ids) == text
  assert len(tok.encode("a sneaker, an ankle boot and a t-shirt")) == 8
  batch = next(pipeline.train_iterator(scenes_config, tok, batch_size=8, seed=0, task="vqa"))
  assert batch["image"].shape == (8, 56, 56, 3) and batch["text"].shape == (8, 24)
