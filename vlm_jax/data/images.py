"""Images from files, as real photos need them: opened safely, made RGB, resized, cropped and normalised.

`open_rgb(path_or_bytes, max_pixels)` reads the header first and refuses an image above max_pixels before
any pixel is decoded (no decompression bombs), applies the EXIF orientation and converts any mode (palette,
CMYK, RGBA, greyscale, 16-bit) to 8-bit RGB. `eval_crop` resizes by the shorter side and crops the centre
(evaluation, predict); `random_resized_crop` is the training augmentation (Inception-style area and aspect
ranges). `normalize` maps uint8 to the model's float input: "siglip" is [-1, 1] (what every run used
before the option existed), "clip" subtracts CLIP's per-channel mean and divides by its std.
Pure numpy/Pillow.
"""

import io
import os
import warnings

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from vlm_jax.errors import UserError

NORMALIZATIONS = ("siglip", "clip")
CLIP_MEAN = np.array([0.48145466, 0.4578275, 0.40821073], np.float32) * 255
CLIP_STD = np.array([0.26862954, 0.26130258, 0.27577711], np.float32) * 255
DEFAULT_MAX_PIXELS = 89_478_485  # Pillow's own bomb limit (a 0.25 GB RGB image), refused here in one line
TRAIN_CROPS = ("random_resized", "center")
# Pillow's own bomb check raises (above 2x its limit) or warns at open; open_rgb checks config.data's limit from
# the header instead, so Pillow's is switched off for the process.
Image.MAX_IMAGE_PIXELS = None


class BadImage(Exception):
  """An image that cannot be used; `reason` is one of "missing_file", "undecodable_image", "oversized_image"."""

  def __init__(self, reason: str, message: str, detail: str = ""):
    super().__init__(message)
    self.reason, self.detail = reason, detail or reason


def open_rgb(source, max_pixels: int = DEFAULT_MAX_PIXELS) -> Image.Image:
  """A path or bytes -> a fully decoded 8-bit RGB PIL image with its EXIF orientation applied.

  Raises BadImage (missing file, undecodable or truncated data, more than max_pixels pixels by the header).
  """
  name = source if isinstance(source, str) else "image bytes"
  if isinstance(source, str) and not os.path.isfile(source):
    raise BadImage("missing_file", f"{source} does not exist")
  try:
    with warnings.catch_warnings():
      warnings.simplefilter("ignore")  # Pillow's DecompressionBombWarning, EXIF warnings: we decide here
      image = Image.open(source if isinstance(source, str) else io.BytesIO(source))
      width, height = image.size
      if max_pixels and width * height > max_pixels:
        raise BadImage("oversized_image", f"{name} is {width} x {height} = {width * height} pixels, above "
                       f"config.data.max_image_pixels={max_pixels}")
      image.load()
      image = ImageOps.exif_transpose(image)
      return to_rgb(image)
  except BadImage:
    raise
  except (UnidentifiedImageError, OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
    raise BadImage("undecodable_image", f"{name} cannot be decoded ({type(e).__name__}: {e})",
                   type(e).__name__) from None


def to_rgb(image: Image.Image) -> Image.Image:
  """Any Pillow mode -> 8-bit RGB: transparency over white, 16-bit and float greyscale scaled to 0-255."""
  if image.mode == "RGB":
    return image
  if image.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
    array = np.asarray(image, np.float64)
    top = 65535.0 if image.mode.startswith("I;16") or array.max() > 255 else 255.0
    return Image.fromarray(np.clip(array / top * 255.0 + 0.5, 0, 255).astype(np.uint8), "L").convert("RGB")
  if image.mode == "P" and "transparency" in image.info:
    image = image.convert("RGBA")
  if image.mode in ("RGBA", "LA", "PA"):
    rgba = image.convert("RGBA")
    background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
    return Image.alpha_composite(background, rgba).convert("RGB")
  return image.convert("RGB")


def resize_shorter(image: Image.Image, size: int) -> Image.Image:
  """The image scaled (aspect kept, bicubic) so that its shorter side is `size`."""
  width, height = image.size
  scale = size / min(width, height)
  new = (max(size, round(width * scale)), max(size, round(height * scale)))
  return image if new == image.size else image.resize(new, Image.Resampling.BICUBIC)


def center_crop(image: Image.Image, size: int) -> Image.Image:
  """The central size x size square (the image must be at least that large on both sides)."""
  width, height = image.size
  left, top = (width - size) // 2, (height - size) // 2
  return image.crop((left, top, left + size, top + size))


def eval_crop(image: Image.Image, size: int) -> np.ndarray:
  """uint8[size, size, 3]: shorter side resized to `size`, centre cropped (evaluation and predict)."""
  return np.asarray(center_crop(resize_shorter(image, size), size), np.uint8)


def random_resized_crop(image: Image.Image, size: int, rng: np.random.Generator, scale=(0.35, 1.0),
                        ratio=(3 / 4, 4 / 3)) -> np.ndarray:
  """uint8[size, size, 3]: a random box of `scale` of the area and `ratio` aspect, resized to size x size.

  Ten tries at a box that fits, then the centre crop (torchvision's and big_vision's rule); rng is grain's
  per-(seed, index) generator, so the crop of an example in an epoch is reproducible.
  """
  width, height = image.size
  area = width * height
  for _ in range(10):
    target = area * rng.uniform(*scale)
    aspect = np.exp(rng.uniform(np.log(ratio[0]), np.log(ratio[1])))
    w, h = int(round(np.sqrt(target * aspect))), int(round(np.sqrt(target / aspect)))
    if 0 < w <= width and 0 < h <= height:
      left, top = int(rng.integers(0, width - w + 1)), int(rng.integers(0, height - h + 1))
      box = image.crop((left, top, left + w, top + h))
      return np.asarray(box.resize((size, size), Image.Resampling.BICUBIC), np.uint8)
  return eval_crop(image, size)


def normalize(image: np.ndarray, kind: str = "siglip") -> np.ndarray:
  """uint8 [..., 3] -> float32 model input: "siglip" [-1, 1] (x / 127.5 - 1), "clip" (x - mean) / std."""
  if kind == "siglip":
    return np.asarray(image, np.float32) / 127.5 - 1.0
  if kind == "clip":
    return (np.asarray(image, np.float32) - CLIP_MEAN) / CLIP_STD
  raise UserError(f"config.data.normalization={kind!r}: expected one of {NORMALIZATIONS}")


def encode(image: Image.Image, fmt: str = "JPEG") -> bytes:
  """The image as JPEG (quality 95) or PNG bytes."""
  buffer = io.BytesIO()
  if fmt == "JPEG":
    image.save(buffer, format="JPEG", quality=95)
  else:
    image.save(buffer, format="PNG")
  return buffer.getvalue()
