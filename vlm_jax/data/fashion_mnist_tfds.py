"""tensorflow-datasets builder for the Fashion-MNIST scenes (ArrayRecord, no TensorFlow).

Same features as the shapes builder (see shapes_tfds), so both read through the same pipeline.
The Fashion-MNIST .gz files are read from `source_dir` (default: fashion_mnist.data_dir()); the
scenes themselves are a function of the config's seed. Prepare with
`download_and_prepare(file_format="array_record")` and read with `as_data_source(split)`.
"""

import dataclasses
import os

from etils import epath
import tensorflow_datasets as tfds

from vlm_jax.data import fashion_mnist, shapes
from vlm_jax.errors import UserError


@dataclasses.dataclass
class FashionMnistScenesConfig(tfds.core.BuilderConfig):
  """Split sizes, image side, seed and source folder of one variant of the dataset."""
  train: int = 30_000
  validation: int = 1_000
  test: int = 1_000
  image_size: int = 56
  seed: int = 0
  source_dir: str = ""  # "" = fashion_mnist.data_dir()

  def split_sizes(self) -> dict[str, int]:
    """{split name: number of scenes}."""
    return {split: getattr(self, split) for split in fashion_mnist.SPLIT_IDS}


class FashionMnistScenes(tfds.core.GeneratorBasedBuilder):
  """1-3 Fashion-MNIST items in a 2x2 grid with captions, hard negatives and VQA pairs."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Initial release."}
  BUILDER_CONFIGS = [
      FashionMnistScenesConfig(name="default", description="30k training scenes at 56 px."),
      FashionMnistScenesConfig(name="tiny", description="A few hundred scenes, for tests.",
                               train=256, validation=64, test=64),
  ]
  DEFAULT_CONFIG_NAME = "default"

  def __init__(self, *, source_dir: str = "", **kwargs):
    # tfds refuses a changed copy of a registered config, so the folder can also come from here.
    self._source_dir = source_dir
    super().__init__(**kwargs)

  @tfds.core.utils.classproperty
  @classmethod
  def code_path(cls) -> epath.Path:
    """This file. tfds 4.9.10 finds it via `importlib_resources`, a package it does not install."""
    return epath.Path(__file__)

  @property
  def source_dir(self) -> str:
    """The folder the Fashion-MNIST .gz files are read from."""
    return fashion_mnist.data_dir(self._source_dir or self.builder_config.source_dir)

  def _info(self) -> tfds.core.DatasetInfo:
    size = self.builder_config.image_size
    text_features = {name: tfds.features.Text() for name in shapes.TEXT_FIELDS}
    list_features = {name: tfds.features.Sequence(tfds.features.Text())
                     for name in shapes.LIST_FIELDS}
    return self.dataset_info_from_configs(
        features=tfds.features.FeaturesDict({
            "image": tfds.features.Image(shape=(size, size, 3), encoding_format="png"),
            **text_features,
            **list_features,
        }),
        homepage="https://github.com/zalandoresearch/fashion-mnist",  # read from local files
        # Keep generation order, so record i of a split is make_scene(seed, split, i, ...).
        disable_shuffling=True,
    )

  def _split_generators(self, dl_manager):
    del dl_manager  # nothing to download
    return {split: self._generate_examples(split, n)
            for split, n in self.builder_config.split_sizes().items()}

  def _generate_examples(self, split: str, num_examples: int):
    config = self.builder_config
    images, labels = fashion_mnist.load(split, self.source_dir)
    for index in range(num_examples):
      example = fashion_mnist.make_scene(config.seed, split, index, images, labels, config.image_size)
      example["image"] = fashion_mnist.png_bytes(example["image"])
      yield index, example
      if (index + 1) % 10_000 == 0 or index + 1 == num_examples:
        print(f"  {split}: {index + 1}/{num_examples} examples", flush=True)


def make_builder(data_dir: str, builder_config: str = "default", source_dir: str = "") -> FashionMnistScenes:
  """The FashionMnistScenes builder for a config name, reading/writing under data_dir.

  source_dir: the folder with the Fashion-MNIST .gz files ("" = fashion_mnist.data_dir()).
  """
  names = [c.name for c in FashionMnistScenes.BUILDER_CONFIGS]
  if builder_config not in names:
    raise UserError(f"config.data.builder_config={builder_config!r} is not a fashion_mnist_scenes variant; "
                    f"expected one of {names}")
  return FashionMnistScenes(config=builder_config, source_dir=source_dir,
                            data_dir=os.path.abspath(os.path.expanduser(data_dir)))
