"""Tiny own-data sources of every format, written from shapes scenes, with bad records planted of every kind.

`write_sources(root)` saves ten scenes as image files in several modes and sizes (RGB, greyscale, palette,
RGBA, CMYK JPEG, 16-bit greyscale, an EXIF-rotated JPEG, ...) and five bad ones (a missing file, random bytes,
a truncated JPEG, a 30000 x 30000 PNG header, an empty caption), then one annotations file per format naming
them all. It returns {format: (config.data.source fields, {skip reason: planted count}, usable records)}.
"""

import io
import json
import os
import struct
import tarfile
import zlib

import numpy as np
from PIL import Image

from vlm_jax.data import shapes

GOOD = 10


def bomb_png(width: int = 30000, height: int = 30000) -> bytes:
  """A valid PNG signature and IHDR claiming width x height RGB pixels, then an empty IDAT and IEND: what a
  decompression bomb's header looks like, without its payload."""
  def chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
  header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
  return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b"")


def _save(image: Image.Image, index: int, folder: str) -> str:
  """Scene `index` saved in its own mode / size / format; returns the file name."""
  rgb = image.convert("RGB")
  sizes = [(48, 40), (40, 56), (32, 32), (36, 36), (40, 40), (44, 44), (32, 32), (48, 32), (30, 30), (64, 64)]
  rgb = rgb.resize(sizes[index], Image.Resampling.NEAREST)
  name, saved = f"g{index}.png", rgb
  if index == 1:
    name = "g1.jpg"
  elif index == 2:
    saved = rgb.convert("L")
  elif index == 3:
    saved = rgb.convert("P", palette=Image.Palette.ADAPTIVE)
  elif index == 4:
    saved = rgb.convert("RGBA")
  elif index == 5:
    name, saved = "g5.jpg", rgb.convert("CMYK")
  elif index == 6:
    saved = Image.fromarray(np.asarray(rgb.convert("L"), np.uint16) * 257)  # 16-bit greyscale (I;16)
  elif index == 7:
    name = "g7.jpg"
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    rgb.save(os.path.join(folder, name), exif=exif)
    return name
  elif index == 8:
    saved = rgb.convert("LA")
  saved.save(os.path.join(folder, name))
  return name


def write_sources(root: str) -> dict:
  images = os.path.join(root, "images")
  os.makedirs(images, exist_ok=True)
  rows = []  # (file name, captions, conversation)
  for index in range(GOOD):
    example = shapes.make_example(0, "train", index)
    conversation = []
    for q, a in list(zip(example["questions"], example["answers"]))[:2]:
      conversation += [{"from": "human", "value": ("<image>\n" if not conversation else "") + q},
                       {"from": "gpt", "value": a}]
    rows.append((_save(example["image"], index, images), example["captions"], conversation))
  buffer = io.BytesIO()
  shapes.make_example(0, "train", 99)["image"].resize((64, 64)).save(buffer, format="JPEG")
  with open(os.path.join(images, "truncated.jpg"), "wb") as f:
    f.write(buffer.getvalue()[:len(buffer.getvalue()) // 2])
  with open(os.path.join(images, "garbage.png"), "wb") as f:
    f.write(np.random.default_rng(0).integers(0, 256, 300, dtype=np.uint8).tobytes())
  with open(os.path.join(images, "bomb.png"), "wb") as f:
    f.write(bomb_png())
  talk = [{"from": "human", "value": "<image>\nwhat is it?"}, {"from": "gpt", "value": "shapes"}]
  bad = [("missing.png", ["a red circle"], talk), ("garbage.png", ["a red circle"], talk),
         ("truncated.jpg", ["a blue square"], talk), ("bomb.png", ["a green diamond"], talk),
         (rows[0][0], [""], [{"from": "human", "value": "<image>\nwhat is it?"}, {"from": "gpt", "value": ""}])]
  planted = {"missing_file": 1, "undecodable_image": 2, "oversized_image": 1, "empty_caption": 1}
  everything = rows + bad
  sources = {}

  coco = {"images": [{"id": i, "file_name": name} for i, (name, _, _) in enumerate(everything)],
          "annotations": [{"image_id": i, "caption": c} for i, (_, captions, _) in enumerate(everything)
                          for c in captions]}
  with open(os.path.join(root, "coco.json"), "w") as f:
    json.dump(coco, f)
  sources["coco"] = (dict(format="coco", annotations=os.path.join(root, "coco.json"), images=images), planted, GOOD)

  label = lambda caption: (caption.split(",")[0].split() + ["?", "?", "?"])[2]  # the leftmost shape, for zero-shot
  with open(os.path.join(root, "data.csv"), "w") as f:
    f.write("filepath,title,label\n" + "".join(f"{name},\"{captions[0]}\",{label(captions[0])}\n"
                                                for name, captions, _ in everything))
  sources["csv"] = (dict(format="csv", annotations=os.path.join(root, "data.csv"), images=images), planted, GOOD)

  with open(os.path.join(root, "data.jsonl"), "w") as f:
    for name, captions, _ in everything:
      f.write(json.dumps({"image": name, "caption": captions}) + "\n")
    f.write("{not json\n")
  sources["jsonl"] = (dict(format="jsonl", annotations=os.path.join(root, "data.jsonl"), images=images),
                      {**planted, "bad_annotation": 1}, GOOD)

  llava = [{"id": str(i), "image": name, "conversations": conversation}
           for i, (name, _, conversation) in enumerate(everything)]
  llava.append({"id": "wrong", "image": rows[1][0], "conversations": [{"from": "gpt", "value": "hello"}]})
  with open(os.path.join(root, "llava.json"), "w") as f:
    json.dump(llava, f)
  sources["llava"] = (dict(format="llava", annotations=os.path.join(root, "llava.json"), images=images),
                      {**planted, "bad_annotation": 1}, GOOD)

  shards = os.path.join(root, "shards")
  os.makedirs(shards, exist_ok=True)
  for shard in range(2):
    with tarfile.open(os.path.join(shards, f"{shard:05d}.tar"), "w") as tar:
      def add(name, data):
        info = tarfile.TarInfo(name)
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
      for i, (name, captions, _) in enumerate(everything):
        if i % 2 != shard:
          continue
        key = f"{i:09d}"
        if name != "missing.png":
          with open(os.path.join(images, name), "rb") as f:
            add(f"{key}.{name.rsplit('.', 1)[1]}", f.read())
        if i % 4 < 2:
          add(f"{key}.txt", captions[0].encode())
        else:
          add(f"{key}.json", json.dumps({"caption": captions[0], "key": key}).encode())
  sources["webdataset"] = (dict(format="webdataset", annotations=os.path.join(shards, "{00000..00001}.tar")),
                           planted, GOOD)
  return sources
