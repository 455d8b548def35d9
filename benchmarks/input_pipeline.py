"""Examples/s of the own-data training iterator at 224 px, beside the train step's img/s: is the input the limit?

    python benchmarks/input_pipeline.py [--config configs/image_text_clip.py] [--images 512] [--batches 20]
        [--threads 0] [--source_csv FILE --source_images DIR]

Without a source it writes --images synthetic photos (640 x 480 JPEGs: noise, gradients and shapes, so JPEG
decoding costs what a photo's does) with a CSV of captions under a temporary folder, prepares them (the
preparation's own images/s is printed too), then times `pipeline.train_iterator` (random-resized crop to
224, normalisation, tokenization, batching) over --batches batches after two warm-up batches, and the
config's train step on random batches of the same shape (vlm_jax.benchmark). One JSON line:
{"prepare_images_per_s", "iterator_examples_per_s", "train_step_img_per_s", "input_bound": bool, ...}.
"""

import argparse
import json
import os
import shutil
import sys
import tempfile
import time

import numpy as np
from PIL import Image, ImageDraw


def synthetic_source(folder: str, count: int, seed: int = 0) -> str:
  """count 640 x 480 JPEGs and a captions CSV in folder; returns the CSV's path."""
  rng = np.random.default_rng(seed)
  os.makedirs(folder, exist_ok=True)
  colours = ("red", "green", "blue", "yellow", "purple", "orange")
  rows = []
  for i in range(count):
    base = np.linspace(0, 255, 640)[None, :, None] * rng.uniform(0.2, 1, 3) + rng.normal(0, 25, (480, 640, 3))
    image = Image.fromarray(np.clip(base, 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(image)
    colour = colours[i % len(colours)]
    x, y = (int(v) for v in rng.integers(100, 380, 2))
    draw.ellipse([x - 80, y - 80, x + 80, y + 80], fill=colour)
    name = f"{i:06d}.jpg"
    image.save(os.path.join(folder, name), quality=90)
    rows.append(f"{name},a {colour} circle on a textured background number {i % 17}\n")
  path = os.path.join(folder, "captions.csv")
  with open(path, "w") as f:
    f.write("filepath,title\n" + "".join(rows))
  return path


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--config", default="configs/image_text_clip.py")
  parser.add_argument("--images", type=int, default=512)
  parser.add_argument("--batches", type=int, default=20)
  parser.add_argument("--batch_size", type=int, default=0, help="0: the config's")
  parser.add_argument("--threads", type=int, default=0, help="grain threads (0: the config's, else os.cpu_count())")
  parser.add_argument("--steps", type=int, default=5, help="train steps timed")
  parser.add_argument("--source_csv", default="")
  parser.add_argument("--source_images", default="")
  args = parser.parse_args(argv)

  from vlm_jax import benchmark, run_config  # noqa: PLC0415
  from vlm_jax.data import pipeline, tokenizer as tokenizer_lib  # noqa: PLC0415
  config = run_config.load_config(args.config)
  if args.batch_size:
    config.batch_size = args.batch_size
  work = tempfile.mkdtemp(prefix="vlm_jax_input_bench_")
  csv_path = args.source_csv or synthetic_source(os.path.join(work, "photos"), args.images)
  config.data.source.update(format="csv", annotations=csv_path, images=args.source_images or os.path.dirname(csv_path))
  config.data.data_dir = os.path.join(work, "prepared")
  config.data.num_threads = args.threads or int(config.data.get("num_threads", 0) or 0) or (os.cpu_count() or 2)
  rows = sum(1 for _ in open(csv_path)) - 1

  start = time.perf_counter()
  pipeline.prepare_data(config.data)
  prepare_s = time.perf_counter() - start
  tokenizer = tokenizer_lib.load_for_config(config.data)
  iterator = pipeline.train_iterator(config.data, tokenizer, batch_size=config.batch_size, seed=0,
                                     task="contrastive_caption")
  for _ in range(2):
    next(iterator)
  start = time.perf_counter()
  for _ in range(args.batches):
    batch = next(iterator)
  iterator_s = time.perf_counter() - start
  examples_per_s = args.batches * config.batch_size / iterator_s

  step = benchmark.run_benchmark(config, steps=args.steps, warmup=2, vocab_size=tokenizer.vocab_size)
  result = {"benchmark": "input_pipeline", "image_size": config.data.image_size, "batch_size": config.batch_size,
            "grain_threads": config.data.num_threads, "cpu_count": os.cpu_count(),
            "prepare_images_per_s": rows / prepare_s, "iterator_examples_per_s": examples_per_s,
            "train_step_img_per_s": step["img_per_s"], "model": step["model"], "platform": step["platform"],
            "input_bound": examples_per_s < step["img_per_s"], "batch_shape": list(batch["image"].shape)}
  print(json.dumps(result), flush=True)
  shutil.rmtree(work, ignore_errors=True)
  return 0


if __name__ == "__main__":
  sys.exit(main())
