"""A user's own image-text data (config.data.name = "image_text"): read from disk, prepared once into ArrayRecord.

config.data.source says where the data is and how it is written (`format`):
  coco        a COCO captions JSON: images[{id, file_name}], annotations[{image_id, caption}]
  csv         one row per image: the image path and its caption(s) under `image_key` / `caption_key`
              (defaults "filepath" and "title", open_clip's); a .tsv file is tab separated
  jsonl       one JSON object per line, keys `image` and `caption` by default; a caption may be a list
  llava       LLaVA's JSON list: {image, conversations: [{from: human|gpt, value}]} with an `<image>`
              placeholder, any number of turns
  webdataset  tar shards as img2dataset writes them (KEY.jpg|png|webp beside KEY.txt or KEY.json), with
              brace patterns: `shards/{00000..00099}.tar`
`annotations` is the file (or shard pattern), `images` the folder image paths are relative to (default: the
annotations file's folder). The validation split is `val_annotations` (same format, images under
`val_images` or `images`) or a `val_fraction` of the records held out by config.seed.

Preparation (`prepare`) decodes every image once (header checked against config.data.max_image_pixels before
any pixel is decoded; EXIF orientation; any mode to RGB), scales it so its shorter side is the stored size
(config.data.stored_image_size, default 8/7 of config.data.image_size) and stores it as JPEG with its texts in
DIR/{train,validation}.array_record, where DIR = data_dir/image_text/<name>-<hash of the annotations files' size and
mtime and every setting that changes the records>: a changed source is prepared again, an unchanged one reused
(image files replaced under unchanged annotations are not noticed: delete DIR to prepare again). A bad
record (missing file, undecodable or truncated image, empty caption, oversized image, malformed annotation) is
skipped and counted; DIR/report.json holds {"examples": N, "skipped": {reason: count}, "splits": {...}} and
DIR/skipped.txt lists the skipped records one per line with the reason.
"""

import collections
import concurrent.futures
import csv
import glob
import hashlib
import json
import os
import re
import shutil
import struct
import tarfile
import time

import numpy as np

from vlm_jax.data import images as images_lib
from vlm_jax.errors import UserError

FORMATS = ("coco", "csv", "jsonl", "llava", "webdataset")
DEFAULT_KEYS = {"csv": ("filepath", "title"), "jsonl": ("image", "caption"), "llava": ("image", "conversations"),
                "webdataset": ("", "caption"), "coco": ("file_name", "caption")}
SPLITS = ("train", "validation")
SKIP_REASONS = ("missing_file", "undecodable_image", "oversized_image", "empty_caption", "bad_annotation")
IMAGE_EXTENSIONS = ("jpg", "jpeg", "png", "webp")
REPORT = "report.json"
SKIPPED = "skipped.txt"
VERSION = 1  # bump when the stored record changes: every prepared source is then prepared again
IMAGE_TOKEN = "<image>"


def source_defaults() -> dict:
  """config.data.source: the user's own data (config.data.name="image_text", vlm_jax/data/image_text.py)."""
  return dict(
      format="",           # coco | csv | jsonl | llava | webdataset
      annotations="",      # the annotations file, or the webdataset shard pattern (shards/{00000..00099}.tar)
      images="",           # the folder image paths are relative to ("": the annotations file's folder)
      image_key="",        # "" = the format's: csv "filepath", jsonl/llava "image", coco "file_name"
      caption_key="",      # "" = the format's: csv "title", jsonl/coco/webdataset-json "caption"
      label_key="",        # a field naming each image's class, for zero-shot evaluation ("": none)
      separator="",        # csv: "" = "," (a .tsv file: tab)
      val_annotations="",  # the validation split's own file; "" = hold out val_fraction of the records
      val_images="",
      val_fraction=0.05,
      seed=0)              # which records are held out



# ----------------------------------------------------------------------------- records

class Record:
  """One annotation row: where its image is (a path, or bytes for webdataset) and its texts.

  captions: the image's captions (COCO has five); conversations: [(role "human"|"gpt", text)] for llava;
  label: a class name (source.label_key) for zero-shot evaluation, "" if none.
  """
  __slots__ = ("id", "image", "captions", "conversations", "label")

  def __init__(self, record_id, image, captions=(), conversations=(), label=""):
    self.id, self.image, self.captions = str(record_id), image, [str(c).strip() for c in captions]
    self.conversations, self.label = list(conversations), str(label or "")


class Skipped(Exception):
  def __init__(self, reason: str, message: str):
    super().__init__(message)
    self.reason = reason


def _where(source, key: str) -> str:
  return f"config.data.source.{key}={source.get(key)!r}" if source.get(key) else f"config.data.source.{key}"


def _keys(source) -> tuple[str, str]:
  image_key, caption_key = DEFAULT_KEYS[source.format]
  return source.get("image_key") or image_key, source.get("caption_key") or caption_key


def _caption_list(value) -> list:
  """A caption cell: a string, a JSON list written into a string, or a list."""
  if isinstance(value, str) and value.strip().startswith("["):
    try:
      value = json.loads(value)
    except json.JSONDecodeError:
      pass
  if isinstance(value, (list, tuple)):
    return [str(v) for v in value]
  return [] if value is None else [str(value)]


def _load_json(path: str):
  try:
    with open(path, encoding="utf-8") as f:
      return json.load(f)
  except json.JSONDecodeError as e:
    raise UserError(f"{path} is not valid JSON (line {e.lineno}: {e.msg})") from None


def _missing_key(path: str, key: str, where: str, found) -> UserError:
  return UserError(f"{path}: no key {key!r} ({where}); the file has {sorted(found)[:10]}")


def _read_coco(path, source, label_key):
  data = _load_json(path)
  if not isinstance(data, dict) or "images" not in data or "annotations" not in data:
    raise UserError(f"{path} is not a COCO captions file: it needs 'images' and 'annotations' lists")
  image_key, caption_key = _keys(source)
  captions = {}
  for annotation in data["annotations"]:
    if caption_key not in annotation:
      raise _missing_key(path, caption_key, "config.data.source.caption_key", annotation)
    captions.setdefault(annotation.get("image_id"), []).append(annotation[caption_key])
  for image in data["images"]:
    if image_key not in image:
      raise _missing_key(path, image_key, "config.data.source.image_key", image)
    yield Record(image.get("id", image[image_key]), image[image_key], captions.get(image.get("id"), []),
                 label=image.get(label_key, "") if label_key else "")


def _read_csv(path, source, label_key):
  image_key, caption_key = _keys(source)
  separator = source.get("separator") or ("\t" if path.endswith(".tsv") else ",")
  with open(path, newline="", encoding="utf-8") as f:
    reader = csv.DictReader(f, delimiter=separator)
    columns = reader.fieldnames or []
    for key, field in ((image_key, "image_key"), (caption_key, "caption_key"), (label_key, "label_key")):
      if key and key not in columns:
        raise UserError(f"{path}: no column {key!r} (config.data.source.{field}); its columns are {columns}")
    for row_number, row in enumerate(reader, start=2):
      if row.get(image_key) is None:
        yield Skipped("bad_annotation", f"{path} line {row_number}: too few columns")
        continue
      yield Record(f"line {row_number}", row[image_key], _caption_list(row[caption_key]),
                   label=row.get(label_key, "") if label_key else "")


def _read_jsonl(path, source, label_key):
  image_key, caption_key = _keys(source)
  checked = False
  with open(path, encoding="utf-8") as f:
    for line_number, line in enumerate(f, start=1):
      if not line.strip():
        continue
      try:
        row = json.loads(line)
      except json.JSONDecodeError as e:
        yield Skipped("bad_annotation", f"{path} line {line_number}: not JSON ({e.msg})")
        continue
      if not isinstance(row, dict):
        yield Skipped("bad_annotation", f"{path} line {line_number}: not a JSON object")
        continue
      if not checked:  # a key the first row lacks is a misnamed key, not one bad row
        for key, field in ((image_key, "image_key"), (caption_key, "caption_key")):
          if key not in row:
            raise _missing_key(path, key, f"config.data.source.{field}", row)
        checked = True
      if image_key not in row:
        yield Skipped("bad_annotation", f"{path} line {line_number}: no {image_key!r}")
        continue
      yield Record(f"line {line_number}", row[image_key], _caption_list(row.get(caption_key)),
                   label=row.get(label_key, "") if label_key else "")


ROLES = {"human": "human", "user": "human", "gpt": "gpt", "assistant": "gpt"}


def _conversation(turns) -> list:
  """[(role, text)], the <image> placeholder removed (the image is the model's prefix); raises ValueError
  unless the turns alternate human, gpt, human, gpt, ... with non-empty texts."""
  result = []
  for i, turn in enumerate(turns):
    role = ROLES.get(str(turn.get("from", turn.get("role", ""))).lower()) if isinstance(turn, dict) else None
    expected = "human" if i % 2 == 0 else "gpt"
    if role != expected:
      raise ValueError(f"turn {i} is from {role!r}, expected {expected!r}")
    text = " ".join(str(turn.get("value", turn.get("content", ""))).replace(IMAGE_TOKEN, " ").split())
    result.append((role, text))
  if len(result) < 2 or len(result) % 2:
    raise ValueError(f"{len(result)} turns; a conversation is human/gpt pairs")
  return result


def _read_llava(path, source, label_key):
  del label_key
  data = _load_json(path)
  if not isinstance(data, list):
    raise UserError(f"{path} is not a LLaVA file: expected a JSON list of {{image, conversations}}")
  image_key, conversations_key = _keys(source)
  if data and isinstance(data[0], dict) and conversations_key not in data[0]:
    raise _missing_key(path, conversations_key, "the LLaVA conversations", data[0])
  for i, row in enumerate(data):
    record_id = f"item {i}" + (f" (id {row['id']})" if isinstance(row, dict) and "id" in row else "")
    if not isinstance(row, dict) or not row.get(image_key):
      yield Skipped("bad_annotation", f"{path} {record_id}: no {image_key!r} (text-only rows are not used)")
      continue
    try:
      turns = _conversation(row.get(conversations_key) or [])
    except ValueError as e:
      yield Skipped("bad_annotation", f"{path} {record_id}: {e}")
      continue
    if not all(text for _, text in turns):
      yield Skipped("empty_caption", f"{path} {record_id}: a turn is empty")
      continue
    yield Record(record_id, row[image_key], [t for role, t in turns if role == "gpt"], turns)


def expand_braces(pattern: str) -> list:
  """'a/{00..02}.tar' -> ['a/00.tar', 'a/01.tar', 'a/02.tar'] (zero padding kept; several groups allowed;
  {x,y} alternatives too), then glob wildcards."""
  match = re.search(r"\{([^{}]*)\}", pattern)
  if not match:
    return sorted(glob.glob(pattern)) if any(c in pattern for c in "*?[") else [pattern]
  body = match.group(1)
  numbers = re.fullmatch(r"(\d+)\.\.(\d+)", body)
  if numbers:
    first, last = numbers.groups()
    width = len(first) if first.startswith("0") else 0
    options = [str(n).zfill(width) for n in range(int(first), int(last) + 1)]
  else:
    options = body.split(",")
  head, tail = pattern[:match.start()], pattern[match.end():]
  return [p for option in options for p in expand_braces(head + option + tail)]


def _read_webdataset(pattern, source, label_key):
  _, caption_key = _keys(source)
  for path in expand_braces(pattern):
    if not os.path.isfile(path):
      raise UserError(f"webdataset shard {path} (from config.data.source.annotations={pattern!r}) does not exist")
    try:
      with tarfile.open(path) as tar:
        groups = {}
        for member in tar:
          if not member.isfile():
            continue
          key, _, extension = os.path.basename(member.name).partition(".")
          key = os.path.join(os.path.dirname(member.name), key)
          extension = extension.lower()
          # Images are read when prepared (TarSlice), texts now: shards need not fit in memory.
          value = (TarSlice(path, member.offset_data, member.size) if extension in IMAGE_EXTENSIONS
                   else tar.extractfile(member).read() if extension in ("txt", "json") else None)
          groups.setdefault(key, {})[extension] = value
    except (tarfile.TarError, OSError, EOFError) as e:
      raise UserError(f"webdataset shard {path} cannot be read ({type(e).__name__}: {e})") from None
    for key, files in groups.items():
      record_id = f"{os.path.basename(path)}:{key}"
      image = next((files[e] for e in IMAGE_EXTENSIONS if e in files), None)
      if image is None:
        yield Skipped("missing_file", f"{record_id}: no .{'/.'.join(IMAGE_EXTENSIONS)} file")
        continue
      captions, label = [], ""
      if files.get("txt") is not None:
        captions = [files["txt"].decode("utf-8", errors="replace")]
      elif files.get("json") is not None:
        try:
          meta = json.loads(files["json"])
          captions, label = _caption_list(meta.get(caption_key)), meta.get(label_key, "") if label_key else ""
        except (json.JSONDecodeError, AttributeError, UnicodeDecodeError):
          yield Skipped("bad_annotation", f"{record_id}: its .json is not a JSON object")
          continue
      yield Record(record_id, image, captions, label=label)


class TarSlice:
  """The bytes of one member of an uncompressed tar shard, read on demand."""
  __slots__ = ("path", "offset", "size")

  def __init__(self, path, offset, size):
    self.path, self.offset, self.size = path, offset, size

  def read(self) -> bytes:
    with open(self.path, "rb") as f:
      f.seek(self.offset)
      return f.read(self.size)


READERS = {"coco": _read_coco, "csv": _read_csv, "jsonl": _read_jsonl, "llava": _read_llava,
           "webdataset": _read_webdataset}


def annotation_files(source, key: str = "annotations") -> list:
  """The files `source[key]` names (shards expanded), each checked to exist."""
  pattern = os.path.expanduser(source.get(key) or "")
  if not pattern:
    raise UserError(f"config.data.source.{key} is empty: pass --config.data.source.{key}=PATH")
  files = expand_braces(pattern) if source.format == "webdataset" else [pattern]
  for path in files:
    if not os.path.isfile(path):
      raise UserError(f"annotations file not found: {path} ({_where(source, key)})")
  return files


def read_records(source, key: str = "annotations", images_key: str = "images") -> list:
  """Every row of the source's `key` file(s): Record or Skipped, in file order."""
  files = annotation_files(source, key)
  image_dir = os.path.expanduser(source.get(images_key) or source.get("images") or "") or os.path.dirname(
      os.path.abspath(files[0]))
  pattern = os.path.expanduser(source[key])
  rows = list(READERS[source.format](pattern if source.format == "webdataset" else files[0], source,
                                     source.get("label_key", "")))
  for row in rows:
    if isinstance(row, Record) and isinstance(row.image, str):
      row.image = os.path.join(image_dir, row.image)
  return rows


# ----------------------------------------------------------------------------- the stored record

def encode_record(image: bytes, record: Record) -> bytes:
  """A prepared example: 4-byte big-endian header length, JSON header (texts), the JPEG bytes."""
  header = json.dumps({"id": record.id, "captions": record.captions, "conversations": record.conversations,
                       "label": record.label}).encode("utf-8")
  return struct.pack(">I", len(header)) + header + image


def decode_record(data: bytes) -> dict:
  """encode_record's bytes -> {"id", "captions", "conversations", "label", "image_bytes"}."""
  (length,) = struct.unpack(">I", data[:4])
  example = json.loads(data[4:4 + length].decode("utf-8"))
  example["conversations"] = [tuple(turn) for turn in example["conversations"]]
  example["image_bytes"] = data[4 + length:]
  return example


# ----------------------------------------------------------------------------- preparation

def settings(data_config, seed: int) -> dict:
  """Everything that changes the prepared records, with the stat of every annotations file."""
  source = data_config.source
  check_source(source)
  stats = {}
  for key in ("annotations", "val_annotations"):
    if source.get(key):
      for path in annotation_files(source, key):
        info = os.stat(path)
        stats[os.path.abspath(path)] = [info.st_size, info.st_mtime_ns]
  values = json.loads(source.to_json()) if hasattr(source, "to_json") else dict(source)
  values.pop("weight", None)
  return {"version": VERSION, "source": values, "files": stats, "seed": seed,
          "stored_image_size": stored_size(data_config), "max_image_pixels": max_pixels(data_config),
          "vocab_size": data_config.get("vocab_size", 0)}


def check_source(source) -> None:
  if not source.get("format"):
    raise UserError("no data source: pass --config.data.source.format=coco|csv|jsonl|llava|webdataset "
                    "--config.data.source.annotations=PATH --config.data.source.images=FOLDER")
  if source.format not in FORMATS:
    raise UserError(f"config.data.source.format={source.format!r}: expected one of {FORMATS}")
  if not source.get("annotations"):
    what = "shard pattern" if source.format == "webdataset" else "file"
    raise UserError(f"no data source: pass --config.data.source.annotations=PATH (the {source.format} {what})"
                    + ("" if source.format == "webdataset" else " --config.data.source.images=FOLDER"))
  fraction = source.get("val_fraction", 0.0)
  if not source.get("val_annotations") and not 0 < fraction < 1:
    raise UserError(f"config.data.source.val_fraction={fraction!r} must be in (0, 1) without "
                    "config.data.source.val_annotations")


def stored_size(data_config) -> int:
  """The shorter side images are stored at: config.data.stored_image_size, or 8/7 of config.data.image_size."""
  return int(data_config.get("stored_image_size", 0) or -(-data_config.image_size * 8 // 7))


def max_pixels(data_config) -> int:
  return int(data_config.get("max_image_pixels", 0) or images_lib.DEFAULT_MAX_PIXELS)


def prepared_dir(data_config, seed: int, name: str = "source") -> str:
  """data_dir/image_text/<name>-<hash of settings()>: where this source's prepared data is (or goes)."""
  digest = hashlib.sha256(json.dumps(settings(data_config, seed), sort_keys=True).encode()).hexdigest()[:16]
  return os.path.join(os.path.abspath(os.path.expanduser(data_config.data_dir)), "image_text", f"{name}-{digest}")


def is_prepared(directory: str) -> bool:
  return os.path.isfile(os.path.join(directory, REPORT))


def _held_out(n: int, fraction: float, seed: int) -> np.ndarray:
  """bool[n]: the rows of the validation split, round(fraction * n) of them (at least one), fixed by seed."""
  count = min(max(1, int(round(fraction * n))), n - 1) if n > 1 else 0
  chosen = np.zeros(n, bool)
  chosen[np.random.default_rng([seed, 7]).permutation(n)[:count]] = True
  return chosen


def _process(record: Record, size: int, limit: int) -> bytes:
  """A record's stored JPEG: decoded (bomb-checked), RGB, shorter side `size` (never upscaled beyond it),
  the longer side cut to at most 3x the shorter. Raises Skipped."""
  if not record.conversations and not any(record.captions):
    raise Skipped("empty_caption", f"{record.id}: no caption")
  record.captions = [c for c in record.captions if c]
  try:
    image = images_lib.open_rgb(record.image.read() if isinstance(record.image, TarSlice) else record.image, limit)
  except images_lib.BadImage as e:
    raise Skipped(e.reason, f"{record.id}: {e}") from None
  image = images_lib.resize_shorter(image, size)
  width, height = image.size
  if max(width, height) > 3 * size:  # a panorama: keep the centre, 3:1 at most
    w, h = min(width, 3 * size), min(height, 3 * size)
    left, top = (width - w) // 2, (height - h) // 2
    image = image.crop((left, top, left + w, top + h))
  return images_lib.encode(image, "JPEG")


def _progress(total: int, label: str):
  from tqdm import tqdm  # noqa: PLC0415
  return tqdm(total=total, desc=label, unit="img", dynamic_ncols=True, mininterval=1.0, smoothing=0.1)


def prepare(data_config, seed: int, directory: str, name: str = "source", workers: int = 0) -> dict:
  """Prepares the source into `directory` unless it is there; returns its report."""
  if is_prepared(directory):
    with open(os.path.join(directory, REPORT)) as f:
      return json.load(f)
  from array_record.python import array_record_module  # noqa: PLC0415
  source = data_config.source
  check_source(source)
  rows = {"train": read_records(source)}
  if source.get("val_annotations"):
    rows["validation"] = read_records(source, "val_annotations", "val_images")
  else:
    held = _held_out(len(rows["train"]), source.val_fraction, seed)
    rows = {"train": [r for r, h in zip(rows["train"], held) if not h],
            "validation": [r for r, h in zip(rows["train"], held) if h]}
  size, limit = stored_size(data_config), max_pixels(data_config)
  tmp = f"{directory}.tmp{os.getpid()}"
  shutil.rmtree(tmp, ignore_errors=True)
  os.makedirs(tmp)
  skipped, counts, splits = [], {}, {}
  start = time.time()
  total = sum(len(r) for r in rows.values())
  print(f"preparing {name} ({source.format}, {total} rows) into {directory} ...", flush=True)
  workers = workers or min(32, os.cpu_count() or 1)
  with concurrent.futures.ThreadPoolExecutor(workers) as pool, _progress(total, f"prepare {name}") as bar:
    for split, split_rows in rows.items():
      writer = array_record_module.ArrayRecordWriter(os.path.join(tmp, f"{split}.array_record"), "group_size:1")
      written = 0

      def work(row):
        if isinstance(row, Skipped):
          raise row
        return _process(row, size, limit)

      def finish(row, future):
        nonlocal written
        try:
          writer.write(encode_record(future.result(), row))
          written += 1
        except Skipped as e:
          counts[e.reason] = counts.get(e.reason, 0) + 1
          skipped.append(f"{split}\t{e.reason}\t{e}")
        bar.update(1)

      pending = collections.deque()  # a bounded window of images in flight, written in row order
      for row in split_rows:
        pending.append((row, pool.submit(work, row)))
        if len(pending) > 4 * workers:
          finish(*pending.popleft())
      while pending:
        finish(*pending.popleft())
      writer.close()
      splits[split] = written
  examples = sum(splits.values())
  if not splits["train"]:
    shutil.rmtree(tmp, ignore_errors=True)
    reasons = ", ".join(f"{k} {v}" for k, v in sorted(counts.items())) or "no rows"
    raise UserError(f"config.data.source.annotations={source.annotations!r}: no usable training record "
                    f"({reasons}); first problem: {skipped[0].split(chr(9))[-1] if skipped else 'the file is empty'}")
  if not splits["validation"]:
    shutil.rmtree(tmp, ignore_errors=True)
    raise UserError(f"the validation split of {source.annotations!r} has no usable record; set "
                    "config.data.source.val_annotations or a larger config.data.source.val_fraction")
  report = {"examples": examples, "skipped": dict(sorted(counts.items())), "splits": splits}
  with open(os.path.join(tmp, SKIPPED), "w") as f:
    f.write("".join(line.replace("\n", " ") + "\n" for line in skipped))
  with open(os.path.join(tmp, "settings.json"), "w") as f:
    json.dump(settings(data_config, seed), f, indent=1, sort_keys=True)
  with open(os.path.join(tmp, REPORT), "w") as f:
    json.dump(report, f, indent=1)
  shutil.rmtree(directory, ignore_errors=True)
  os.replace(tmp, directory)
  summary = ", ".join(f"{k} {v}" for k, v in sorted(counts.items()))
  print(f"prepared {examples} examples (train {splits['train']}, validation {splits['validation']}) in "
        f"{time.time() - start:.1f} s; skipped {sum(counts.values())}" +
        (f" ({summary}; listed in {os.path.join(directory, SKIPPED)})" if counts else ""), flush=True)
  return report


class Source:
  """Random access to a prepared split: decode_record dicts (texts, JPEG bytes)."""

  def __init__(self, directory: str, split: str):
    import grain  # noqa: PLC0415
    path = os.path.join(directory, f"{split}.array_record")
    if not os.path.isfile(path):
      raise UserError(f"the prepared data in {directory} has no {split!r} split (it has {list(SPLITS)}); "
                      "set config.eval.split / config.evals.*.split to one of them")
    self._source = grain.sources.ArrayRecordDataSource([path])

  def __len__(self):
    return len(self._source)

  def __getitem__(self, index):
    return decode_record(self._source[index])


class MixedSource:
  """Random access to several prepared train splits sampled by weight (grain's deterministic mix of each source
  repeated), one epoch being as many records as the sources hold together."""

  def __init__(self, sources: list, weights: list):
    import grain  # noqa: PLC0415
    self._length = sum(len(s) for s in sources)
    total = float(sum(weights))
    self._mixed = grain.MapDataset.mix([grain.MapDataset.source(s).repeat() for s in sources],
                                       [w / total for w in weights])

  def __len__(self):
    return self._length

  def __getitem__(self, index):
    return self._mixed[index]


class ConcatSource:
  """Random access to several prepared splits one after the other (the validation splits of mixed sources)."""

  def __init__(self, sources: list):
    self._sources = sources
    self._starts = np.cumsum([0] + [len(s) for s in sources])

  def __len__(self):
    return int(self._starts[-1])

  def __getitem__(self, index):
    k = int(np.searchsorted(self._starts, index, side="right")) - 1
    return self._sources[k][index - int(self._starts[k])]


def mix_dir(data_config, parts: list) -> str:
  """The folder of several sources' shared tokenizer and report: a hash of their folders and weights."""
  digest = hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:16]
  return os.path.join(os.path.abspath(os.path.expanduser(data_config.data_dir)), "image_text", f"mix-{digest}")


def write_mix_report(directory: str, reports: dict) -> dict:
  """report.json of mixed sources: the totals and each source's own report."""
  skipped = {}
  for report in reports.values():
    for reason, count in report["skipped"].items():
      skipped[reason] = skipped.get(reason, 0) + count
  report = {"examples": sum(r["examples"] for r in reports.values()), "skipped": dict(sorted(skipped.items())),
            "sources": reports}
  os.makedirs(directory, exist_ok=True)
  with open(os.path.join(directory, REPORT + ".tmp"), "w") as f:
    json.dump(report, f, indent=1)
  os.replace(os.path.join(directory, REPORT + ".tmp"), os.path.join(directory, REPORT))
  return report
