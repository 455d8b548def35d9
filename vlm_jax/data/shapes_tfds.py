"""tensorflow-datasets builder for the procedural shapes scenes (ArrayRecord, no TensorFlow).

Images are handed to `tfds.features.Image` as PNG bytes (a NumPy array there would need
TensorFlow). Prepare with `download_and_prepare(file_format="array_record")` and read with
`as_data_source(split)`.
"""

import dataclasses
import os

from etils import epath
import tensorflow_datasets as tfds

from vlm_jax.data import shapes
from vlm_jax.errors import UserError


@dataclasses.dataclass
class ShapesConfig(tfds.core.BuilderConfig):
  """Split sizes, image side and seed of one variant of the dataset."""
  train: int = 40_000
  validation: int = 1_000
  test: int = 1_000
  compositional: int = 1_000
  image_size: int = 32
  seed: int = 0
  # shapes.STYLES the train split is drawn in, example i in train_styles[i % len]; the other splits: "default".
  train_styles: tuple = ("default",)

  def split_sizes(self) -> dict[str, int]:
    """{split name: number of examples}."""
    return {split: getattr(self, split) for split in shapes.SPLIT_IDS}

  def style(self, split: str, index: int) -> str:
    """The style example `index` of `split` is drawn in."""
    return self.train_styles[index % len(self.train_styles)] if split == "train" else "default"

  def make_example(self, split: str, index: int) -> dict:
    """Record `index` of `split` of this variant (before PNG encoding)."""
    return shapes.make_example(self.seed, split, index, self.image_size, style=self.style(split, index))


class Shapes(tfds.core.GeneratorBasedBuilder):
  """Coloured shapes on a dark background (or, in the styles variants' train split, also bright or anti-aliased)
  with captions, hard negatives and VQA pairs."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Initial release."}
  BUILDER_CONFIGS = [
      ShapesConfig(name="default", description="40k training scenes at 32 px."),
      ShapesConfig(name="tiny", description="A few hundred scenes, for tests.",
                   train=256, validation=64, test=64, compositional=64),
      ShapesConfig(name="styles", description="40k training scenes in three styles (default, bright background, "
                   "anti-aliased); the other splits as default's.", train_styles=("default", "bright", "smooth")),
      ShapesConfig(name="tiny_styles", description="tiny, its train split in three styles, for tests.",
                   train=256, validation=64, test=64, compositional=64, train_styles=("default", "bright", "smooth")),
  ]
  DEFAULT_CONFIG_NAME = "default"

  @tfds.core.utils.classproperty
  @classmethod
  def code_path(cls) -> epath.Path:
    """This file. tfds 4.9.10 finds it via `importlib_resources`, a package it does not install."""
    return epath.Path(__file__)

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
        homepage="https://example.invalid/vlm_jax",  # generated locally, nothing to download
        # Keep generation order, so record i of a split is make_example(seed, split, i); the
        # training pipeline shuffles anyway.
        disable_shuffling=True,
    )

  def _split_generators(self, dl_manager):
    del dl_manager  # nothing to download
    return {split: self._generate_examples(split, n)
            for split, n in self.builder_config.split_sizes().items()}

  def _generate_examples(self, split: str, num_examples: int):
    config = self.builder_config
    for index in range(num_examples):
      example = config.make_example(split, index)
      example["image"] = shapes.png_bytes(example["image"])
      yield index, example
      if (index + 1) % 10_000 == 0 or index + 1 == num_examples:
        print(f"  {split}: {index + 1}/{num_examples} examples", flush=True)


def make_builder(data_dir: str, builder_config: str = "default") -> Shapes:
  """The Shapes builder for a config name, reading/writing under data_dir."""
  names = [c.name for c in Shapes.BUILDER_CONFIGS]
  if builder_config not in names:
    raise UserError(f"config.data.builder_config={builder_config!r} is not a shapes variant; expected one of {names}")
  return Shapes(config=builder_config, data_dir=os.path.abspath(os.path.expanduser(data_dir)))
