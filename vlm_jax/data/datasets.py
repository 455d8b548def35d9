"""The dataset registry: config.data.name -> a builder class, each with the one interface the pipeline uses.

  shapes                procedural scenes of coloured shapes (tfds builder, ArrayRecord), shapes_tfds
  fashion_mnist_scenes  scenes of Fashion-MNIST items with the same fields (tfds builder), fashion_mnist_tfds
  fashion_mnist         the plain labelled Fashion-MNIST images, read from their .gz files
  image_text            the user's own image-caption pairs or conversations (image_text.py)

A builder is made from config.data (`get(data_config)`) and declares:
  TASKS                 the training batch kinds it gives (data.pipeline.TASKS)
  SPLITS                its split names
  TEXT_FIELDS / LIST_FIELDS   the text fields of its decoded examples (str / list of str)
  prepare()             writes its prepared data unless present (idempotent), checks it opens
  open(split)           random-access source of raw records of a prepared split
  decode(raw)           a raw record -> a python example (texts as str, "image" as the builder keeps it)
  MEMOIZE               whether decoded training examples are kept in memory (small data) or decoded each time
  train_image(example, rng) -> uint8 [S, S, 3]: the training image, augmented as the builder does
  RELATION_TWINS        whether relation_twin(example, rng) gives a scene's mirrored counterfactual twin, and
                        top_down_caption(example) its objects named top to bottom, and order_negative(example,
                        text, rng) a list or chain of them with two neighbours swapped
  COUNT_CAPTIONS        {count caption: count} of its scenes, with object_count(example) (config.data.ignore_true_counts)
  train_arrays()        (uint8 [N, S, S] or [N, S, S, 3] images, int32 [N] labels) of a labelled train split held in
                        memory, whose batches the pipeline gathers whole (augment_choices, augment_batch); None: its
                        examples are read one by one
  tokenizer_dir()       where its SentencePiece model is (None: it has no texts); tokenizer_texts(), TOKENIZER
                        (the SentencePiece options) to train it
  eval_split(split)     the evaluators' inputs: a whole split decoded (float images, texts, references)
  zero_shot(split)      (images, labels, class names) for zero-shot classification
The pipeline (pipeline.py) never asks which dataset it has.
"""

import json
import time

import numpy as np

from vlm_jax.data import fashion_mnist, image_text, images as images_lib, shapes
from vlm_jax.errors import UserError

DESCRIBE_PROMPT = "describe the image."


def _text(value) -> str:
  return value.decode("utf-8") if isinstance(value, bytes) else str(value)


class Builder:
  """What every dataset builder has (see the module docstring); subclasses fill it in."""
  TASKS = ()
  SPLITS = ()
  TEXT_FIELDS = ()
  LIST_FIELDS = ()
  MEMOIZE = True
  TOKENIZER = {}  # train_sentencepiece options
  # Whether relation_twin(example, rng) mirrors its scenes (config.data.relation_twins), top_down_caption(example)
  # names their objects top to bottom (config.data.top_down_caption_prob) and order_negative(example, text, rng)
  # swaps two objects of a list or chain (config.data.order_negatives).
  RELATION_TWINS = False
  # Its count captions, {text: count} ({"two shapes": 2, ...}): config.data.ignore_true_counts needs them and
  # object_count(example).
  COUNT_CAPTIONS = {}

  def __init__(self, data_config):
    self.config = data_config

  def check_config(self) -> None:
    """Raises UserError for a config.data this dataset cannot use (no file is read)."""
    normalization = self.config.get("normalization", "siglip") or "siglip"
    if normalization not in images_lib.NORMALIZATIONS:
      raise UserError(f"config.data.normalization={normalization!r}: expected one of {images_lib.NORMALIZATIONS}")

  def normalize(self, image: np.ndarray) -> np.ndarray:
    """uint8 -> the model's float input, as config.data.normalization says ("siglip" [-1, 1] by default)."""
    return images_lib.normalize(image, self.config.get("normalization", "siglip") or "siglip")

  def train_image(self, example: dict, rng) -> np.ndarray:
    del rng
    return example["image"]

  def train_arrays(self):
    """None: training examples are decoded one by one (see the module docstring)."""
    return None

  def tokenizer_dir(self):
    return None

  def tokenizer_texts(self) -> list:
    return []

  def train_captions(self) -> list:
    """Every true caption of every train example: what the blind baselines of the hard-negative probes
    (evaluators/blind.py) learn text from; [] for a dataset without hard negatives."""
    return []

  def zero_shot(self, split: str):
    """Fashion-MNIST's `split` for zero-shot classification by a model trained on scenes.

    Returns (float32 [N,S,S,3] images, each alone in cell i % 4 of an S = config.data.image_size canvas as a
    1-item scene draws it; int32 [N] labels; the class names).
    """
    size = self.config.image_size
    if size % 2:
      raise UserError(f"config.data.image_size={size} must be even for Fashion-MNIST scenes (a 2x2 grid)")
    images, labels = fashion_mnist.load(split, fashion_mnist.data_dir(self.config.get("fashion_mnist_dir", "")))
    return (self.normalize(fashion_mnist.place_single(images, size)), np.array(labels, np.int32),
            fashion_mnist.CLASS_NAMES)


# ----------------------------------------------------------------------------- the tfds scenes datasets

class ScenesBuilder(Builder):
  """A tfds builder of scenes with captions, hard negatives and questions (shapes' fields)."""
  TASKS = ("contrastive_caption", "vqa")
  TEXT_FIELDS = shapes.TEXT_FIELDS
  LIST_FIELDS = shapes.LIST_FIELDS

  def make_tfds(self):
    raise NotImplementedError

  @property
  def tfds(self):
    if not hasattr(self, "_tfds"):
      self._tfds = self.make_tfds()
    return self._tfds

  @property
  def SPLITS(self):  # noqa: N802  (a declaration, as on the other builders)
    return tuple(self.tfds.builder_config.split_sizes())

  def prepare(self) -> None:
    _prepare_tfds(self.tfds)

  def open(self, split: str):
    return _open_tfds(self.tfds, split)

  def decode(self, raw: dict) -> dict:
    """Data-source example -> python strings/lists; the image stays uint8."""
    example = {name: _text(raw[name]) for name in self.TEXT_FIELDS}
    example.update({name: [_text(v) for v in raw[name]] for name in self.LIST_FIELDS})
    example["image"] = np.asarray(raw["image"], np.uint8)
    return example

  def tokenizer_dir(self) -> str:
    return self.tfds.data_dir

  def object_count(self, example: dict) -> int:
    """How many objects a decoded scene holds (its "scene" record lists them)."""
    return len(json.loads(example["scene"]))

  def train_captions(self) -> list:
    """Every scene's "captions" (the canonical caption, the count caption, the relation captions) of the train
    split, read from the stored records without decoding their images (1 s for 40k scenes, 10x faster)."""
    import tensorflow_datasets as tfds  # noqa: PLC0415
    from tensorflow_datasets.proto import tf_example_pb2  # noqa: PLC0415
    _open_tfds(self.tfds, "train")  # a missing or unreadable split fails here, with its path
    source = self.tfds.as_data_source("train", deserialize_method=tfds.decode.DeserializeMethod.RAW_BYTES)
    captions = []
    for start in range(0, len(source), 10_000):
      for record in source.__getitems__(range(start, min(start + 10_000, len(source)))):
        feature = tf_example_pb2.Example.FromString(record).features.feature["captions"]
        captions += [_text(v) for v in feature.bytes_list.value]
    return captions

  def eval_split(self, split: str) -> dict:
    """A whole split decoded: 'image' float32 [N,S,S,3], python lists for the texts."""
    source = self.open(split)
    return self.collate([self.decode(source[i]) for i in range(len(source))])

  def collate(self, examples: list) -> dict:
    """Decoded examples as one split: the text fields as python lists, 'image' normalised float32 [N,S,S,3]."""
    result = {name: [e[name] for e in examples] for name in self.TEXT_FIELDS + self.LIST_FIELDS}
    result["image"] = self.normalize(np.stack([np.asarray(e["image"], np.uint8) for e in examples]))
    return result


class ShapesBuilder(ScenesBuilder):
  """The shapes scenes; besides the prepared splits, "redrawn": as many scenes as the test split, drawn in shapes'
  "redrawn" style (other sizes, margin, background and renderer), generated when scored (nothing is stored)."""
  REDRAWN = "redrawn"
  RELATION_TWINS = True
  COUNT_CAPTIONS = {shapes.count_caption(n): n for n in range(1, shapes.MAX_OBJECTS + 1)}

  def top_down_caption(self, example: dict) -> str:
    """A decoded scene's objects named from top to bottom, or "": shapes.top_down_caption."""
    return shapes.top_down_caption(example)

  def order_negative(self, example: dict, text: str, rng) -> str:
    """A list or top-down chain of a decoded scene with two neighbours swapped, or "": shapes.order_negative."""
    return shapes.order_negative(example, text, rng)

  def relation_twin(self, example: dict, rng):
    """(text, twin example, twin text) of a decoded training scene, or None: shapes.relation_twin."""
    return shapes.relation_twin(example, rng)

  def make_tfds(self):
    from vlm_jax.data import shapes_tfds  # noqa: PLC0415  (tfds is imported only by the builders that use it)
    return shapes_tfds.make_builder(self.config.data_dir, self.config.builder_config)

  @property
  def SPLITS(self):  # noqa: N802
    return super().SPLITS + (self.REDRAWN,)

  def eval_split(self, split: str) -> dict:
    if split != self.REDRAWN:
      return super().eval_split(split)
    config = self.tfds.builder_config
    return self.collate([shapes.make_example(config.seed, "test", i, config.image_size, style=self.REDRAWN)
                         for i in range(config.test)])

  def tokenizer_texts(self) -> list:
    """The vocabulary and every text of the train split."""
    config = self.tfds.builder_config
    texts = shapes.vocabulary_texts()
    for index in range(config.train):
      # Regenerating is cheaper than decoding the stored PNGs, and gives the same texts.
      texts += shapes.all_texts(config.make_example("train", index))
    return texts


class FashionMnistScenesBuilder(ScenesBuilder):
  COUNT_CAPTIONS = {fashion_mnist.count_caption(n): n for n in range(1, fashion_mnist.MAX_ITEMS + 1)}

  def make_tfds(self):
    from vlm_jax.data import fashion_mnist_tfds  # noqa: PLC0415
    return fashion_mnist_tfds.make_builder(self.config.data_dir, self.config.builder_config,
                                           self.config.get("fashion_mnist_dir", ""))

  def prepare(self) -> None:
    builder = self.tfds
    size = builder.builder_config.image_size
    if self.config.image_size != size:
      raise UserError(f"config.data.image_size={self.config.image_size} but fashion_mnist_scenes/"
                      f"{builder.builder_config.name} is drawn at {size} px; set it to {size}")
    if not builder.is_prepared():
      for split in fashion_mnist.SPLIT_IDS:  # a missing or corrupt file fails here, with its path
        fashion_mnist.load(split, builder.source_dir)
    _prepare_tfds(builder)

  def tokenizer_texts(self) -> list:
    """The vocabulary and every train scene's texts."""
    config = self.tfds.builder_config
    images, labels = fashion_mnist.load("train", self.tfds.source_dir)
    texts = fashion_mnist.vocabulary_texts()
    for index in range(config.train):
      texts += fashion_mnist.all_texts(
          fashion_mnist.make_scene(config.seed, "train", index, images, labels, config.image_size))
    return texts


def _prepare_tfds(builder) -> None:
  """Generates a tfds builder's ArrayRecord files unless present, then checks every split opens."""
  import tensorflow_datasets as tfds  # noqa: PLC0415
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
    _open_tfds(builder, split)  # fail here, with the path, rather than mid-training


def _open_tfds(builder, split: str):
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


# ----------------------------------------------------------------------------- Fashion-MNIST

AUGMENTATIONS = ("", "crop_flip")  # config.data.augment of the labelled images (FashionMnistBuilder.train_image)
CROP_PAD = 2  # crop_flip: the crop's largest shift, in pixels


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


class FashionMnistBuilder(Builder):
  """The plain labelled Fashion-MNIST images, for the "classification" task; no texts."""
  TASKS = ("classification",)
  SPLITS = tuple(fashion_mnist.SPLIT_IDS)
  MEMOIZE = False

  @property
  def directory(self) -> str:
    return fashion_mnist.data_dir(self.config.get("fashion_mnist_dir", ""))

  def prepare(self) -> None:
    """Only checks that the four .gz files load."""
    if self.config.image_size != fashion_mnist.ITEM_SIZE:
      raise UserError(f"config.data.image_size={self.config.image_size} but Fashion-MNIST images are "
                      f"{fashion_mnist.ITEM_SIZE} px; set it to {fashion_mnist.ITEM_SIZE}")
    for split in fashion_mnist.SPLIT_IDS:
      fashion_mnist.load(split, self.directory)

  def check_config(self) -> None:
    super().check_config()
    augment = self.config.get("augment", "")
    if augment not in AUGMENTATIONS:
      raise UserError(f"config.data.augment={augment!r}: expected one of {AUGMENTATIONS}")

  def open(self, split: str):
    return ClassificationSource(*fashion_mnist.load(split, self.directory))

  def train_image(self, example: dict, rng) -> np.ndarray:
    """config.data.augment "crop_flip": a 28 px crop at a random offset of the image padded by 2 px of background
    (black), mirrored left-right half the time (a coat mirrored is a coat); "": the image as it is."""
    choices = self.augment_choices(rng)
    if choices is None:
      return example["image"]
    return self.augment_batch(example["image"][None], choices[None])[0]

  def train_arrays(self):
    """(uint8 [N,28,28] grey images, int32 [N] labels) of the train split: batches are gathered from them whole."""
    return fashion_mnist.load("train", self.directory)

  def augment_choices(self, rng):
    """One example's random choices, int32 [3] (top, left, mirrored), drawn from `rng` in the order train_image
    always drew them; None without augmentation (nothing drawn)."""
    if self.config.get("augment", "") != "crop_flip":
      return None
    top, left = (int(v) for v in rng.integers(0, 2 * CROP_PAD + 1, size=2))
    return np.array([top, left, rng.random() < 0.5], np.int32)

  def augment_batch(self, images: np.ndarray, choices: np.ndarray) -> np.ndarray:
    """uint8 [B,H,W,...] images, each cropped at its (top, left) from the image padded by CROP_PAD px of
    background and mirrored where choices[:, 2] is 1: one gather for the whole batch."""
    b, h, w = images.shape[:3]
    padded = np.pad(images, ((0, 0), (CROP_PAD, CROP_PAD), (CROP_PAD, CROP_PAD)) + ((0, 0),) * (images.ndim - 3))
    rows = choices[:, :1] + np.arange(h)                                       # [B, H]
    cols = choices[:, 1:2] + np.where(choices[:, 2:3] == 1, np.arange(w)[::-1], np.arange(w))  # [B, W]
    return padded[np.arange(b)[:, None, None], rows[:, :, None], cols[:, None, :]]

  def decode(self, raw: dict) -> dict:
    return raw

  def eval_split(self, split: str) -> dict:
    """{"image": float32 [N,28,28,3] (grey replicated), "label": int32 [N]}."""
    images, labels = fashion_mnist.load(split, self.directory)
    return {"image": self.normalize(np.repeat(images[..., None], 3, axis=-1)), "label": np.array(labels, np.int32)}


# ----------------------------------------------------------------------------- the user's own data

class ImageTextBuilder(Builder):
  """config.data.source prepared by image_text.py: captions ('caption' is the first, 'captions' all of them),
  conversations (llava) and an optional class label per image."""
  TASKS = ("contrastive_caption", "vqa")
  SPLITS = image_text.SPLITS
  TEXT_FIELDS = ("id", "caption", "label")
  LIST_FIELDS = ("captions",)
  MEMOIZE = False  # images are decoded from their JPEG each time: a real dataset does not fit in memory
  TOKENIZER = {"model_type": "unigram"}

  def __init__(self, data_config):
    super().__init__(data_config)
    self.source = data_config.source
    self.parts = _source_parts(data_config)  # [(name, config.data with that source, weight)]

  @property
  def directory(self) -> str:
    """The prepared source's folder; with several sources, the folder of their shared tokenizer and report."""
    if not hasattr(self, "_directory"):
      if len(self.parts) == 1:  # config.data.source, or config.data.sources' only entry
        self._directory = self._part_dir(self.parts[0][1])
      else:
        self._directory = image_text.mix_dir(self.config, [(name, self._part_dir(c), w) for name, c, w in self.parts])
    return self._directory

  def _part_dir(self, part_config) -> str:
    return image_text.prepared_dir(part_config, int(part_config.source.get("seed", 0)))

  def _in_part(self, name: str, error: UserError) -> UserError:
    """A source's error as the user sets that source: from config.data.sources, config.data.sources.NAME.* for
    config.data.source.*."""
    if not self.config.get("sources"):
      return error
    message = str(error).replace("config.data.source.", f"config.data.sources.{name}.")
    return UserError(message if f"config.data.sources.{name}." in message else f"config.data.sources.{name}: {message}")

  def check_config(self) -> None:
    super().check_config()
    for name, part_config, weight in self.parts:
      try:
        image_text.check_source(part_config.source)
        if not weight > 0:
          raise UserError(f"config.data.source.weight={weight!r} must be > 0")
      except UserError as e:
        raise self._in_part(name, e) from None
    crop = self.config.get("train_crop", "random_resized")
    if crop not in images_lib.TRAIN_CROPS:
      raise UserError(f"config.data.train_crop={crop!r}: expected one of {images_lib.TRAIN_CROPS}")

  def prepare(self) -> None:
    self.check_config()
    workers = int(self.config.get("prepare_workers", 0) or 0)
    reports = {}
    for name, part_config, _ in self.parts:
      try:
        reports[name] = image_text.prepare(part_config, int(part_config.source.get("seed", 0)),
                                           self._part_dir(part_config), name=name, workers=workers)
      except UserError as e:
        raise self._in_part(name, e) from None
    if len(self.parts) == 1:
      self.report = next(iter(reports.values()))
    else:
      self.report = image_text.write_mix_report(self.directory, reports)

  def open(self, split: str):
    if split not in self.SPLITS:
      raise UserError(f"config.data.name='image_text' has the splits {list(self.SPLITS)}, not {split!r}; set "
                      "config.eval.split / config.eval.periodic_split / config.evals.*.split to one of them")
    sources = []
    for _, part_config, _ in self.parts:
      directory = self._part_dir(part_config)
      if not image_text.is_prepared(directory):
        raise UserError(f"{part_config.source.annotations!r} is not prepared (expected in {directory}); run "
                        "python -m vlm_jax.prepare --config ... first")
      sources.append(image_text.Source(directory, split))
    if len(sources) == 1:
      return sources[0]
    if split == "train":  # sampled by weight, each source repeated as often as its weight needs
      return image_text.MixedSource(sources, [w for _, _, w in self.parts])
    return image_text.ConcatSource(sources)

  def decode(self, raw: dict) -> dict:
    captions = raw["captions"] or [text for role, text in raw["conversations"] if role == "gpt"][:1]
    return {"id": raw["id"], "caption": captions[0], "captions": captions, "label": raw["label"],
            "conversations": raw["conversations"], "image_bytes": raw["image_bytes"]}

  def _image(self, example):
    return images_lib.open_rgb(example["image_bytes"], 0)

  def train_image(self, example: dict, rng) -> np.ndarray:
    size = self.config.image_size
    if self.config.get("train_crop", "random_resized") == "center":
      return images_lib.eval_crop(self._image(example), size)
    scale = tuple(self.config.get("crop_scale", (0.35, 1.0)))
    return images_lib.random_resized_crop(self._image(example), size, rng, scale)

  def tokenizer_dir(self) -> str:
    return self.directory

  def tokenizer_texts(self) -> list:
    """Every caption and conversation turn of the train split, the class names in prompt templates."""
    texts = []
    for _, part_config, _ in self.parts:  # each source whole, whatever its weight
      source = image_text.Source(self._part_dir(part_config), "train")
      for i in range(len(source)):
        raw = source[i]
        texts += raw["captions"] + [text for _, text in raw["conversations"]]
    class_names = list(self.config.get("class_names", ()) or ())
    texts += [f"a photo of a {name}." for name in class_names]
    return texts

  def tokenizer_options(self) -> dict:
    return {**self.TOKENIZER, "vocab_size": int(self.config.get("vocab_size", 0) or 4000)}

  def eval_split(self, split: str) -> dict:
    """'image' float32 [N,S,S,3] (shorter side resized, centre crop), 'caption' (the first), 'references'
    (every caption of each image), 'label'; for conversations the first question and answer as 'questions',
    'answers' and 'question_types' ("conversation")."""
    source = self.open(split)
    examples = [self.decode(source[i]) for i in range(len(source))]
    size = self.config.image_size
    result = {"image": self.normalize(np.stack([images_lib.eval_crop(self._image(e), size) for e in examples])),
              "caption": [e["caption"] for e in examples], "references": [e["captions"] for e in examples],
              "captions": [e["captions"] for e in examples], "label": [e["label"] for e in examples],
              "id": [e["id"] for e in examples]}
    if any(e["conversations"] for e in examples):
      turns = [e["conversations"] or [("human", DESCRIBE_PROMPT), ("gpt", e["caption"])] for e in examples]
      result.update(questions=[[t[0][1]] for t in turns], answers=[[t[1][1]] for t in turns],
                    question_types=[["conversation"] for _ in turns])
    return result

  def zero_shot(self, split: str):
    """The split's images with a label (config.data.source.label_key) among config.data.class_names (default:
    every label of the split, sorted)."""
    data = self.eval_split(split)
    class_names = tuple(self.config.get("class_names", ()) or sorted({label for label in data["label"] if label}))
    if len(class_names) < 2:
      raise UserError("zero-shot classification on config.data.name='image_text' needs labelled images: set "
                      "config.data.source.label_key to the field naming each image's class (and optionally "
                      "config.data.class_names); found " + (f"only {list(class_names)}" if class_names else "none"))
    index = {name: i for i, name in enumerate(class_names)}
    rows = [i for i, label in enumerate(data["label"]) if label in index]
    if not rows:
      raise UserError(f"no image of the {split} split has a label among config.data.class_names={list(class_names)}")
    return data["image"][rows], np.array([index[data["label"][i]] for i in rows], np.int32), class_names


def _source_parts(data_config) -> list:
  """[(name, config.data with that source, weight)]: config.data.sources' entries (each over the source
  defaults), or config.data.source alone with weight 1."""
  entries = data_config.get("sources") or {}
  if not entries:
    return [("source", data_config, 1.0)]
  import ml_collections  # noqa: PLC0415
  parts = []
  for name in entries:
    entry = dict(entries[name])
    weight = entry.pop("weight", 1.0)
    unknown = sorted(set(entry) - set(image_text.source_defaults()))
    if unknown:
      raise UserError(f"config.data.sources.{name}.{unknown[0]} is not a source field; expected some of "
                      f"{sorted(image_text.source_defaults())} and weight")
    part = ml_collections.ConfigDict(data_config.to_dict())
    part.source = ml_collections.ConfigDict({**image_text.source_defaults(), **entry})
    part.sources = ml_collections.ConfigDict()
    parts.append((name, part, float(weight)))
  return parts


BUILDERS = {"shapes": ShapesBuilder, "fashion_mnist_scenes": FashionMnistScenesBuilder,
            "fashion_mnist": FashionMnistBuilder, "image_text": ImageTextBuilder}
NAMES = tuple(BUILDERS)


def get(data_config) -> Builder:
  """The builder of config.data.name, made from config.data."""
  if data_config.name not in BUILDERS:
    raise UserError(f"unknown dataset config.data.name={data_config.name!r}; expected one of {list(NAMES)}")
  return BUILDERS[data_config.name](data_config)


def tasks(name: str) -> tuple:
  """The training batch kinds dataset `name` gives."""
  if name not in BUILDERS:
    raise UserError(f"config.data.name={name!r} is not a known dataset; expected one of {NAMES}")
  return BUILDERS[name].TASKS
