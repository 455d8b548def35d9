"""Writes tests/fixtures/fashion_mnist: a small slice of Fashion-MNIST (MIT licensed) in its own IDX gz format.

    sudo apt-get install dataset-fashion-mnist && python scripts/make_fashion_mnist_fixture.py

The slice keeps the real files' layout, so the reader, the scenes builder and both Fashion-MNIST configs
run on it in every test environment: a train file whose last twelfth is the validation split (the
first 550 training images, then the first 50 of the real validation images), and the first 200
test images. The full Debian package stays the source for real runs and experiments/.
"""

import argparse
import gzip
import os
import shutil

import numpy as np

from vlm_jax.data import fashion_mnist

TRAIN, VALIDATION, TEST = 550, 50, 200
COPYRIGHT = "/usr/share/doc/dataset-fashion-mnist/copyright"


def write_idx(path: str, array: np.ndarray, magic: int) -> None:
  """A gzipped IDX file of a uint8 array; mtime 0 so the bytes depend only on the data."""
  header = magic.to_bytes(4, "big") + b"".join(d.to_bytes(4, "big") for d in array.shape)
  with open(path, "wb") as raw, gzip.GzipFile(fileobj=raw, mode="wb", mtime=0) as f:
    f.write(header + np.ascontiguousarray(array, np.uint8).tobytes())


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--source", default=fashion_mnist.DEFAULT_DIR)
  parser.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "..", "tests", "fixtures",
                                                    "fashion_mnist"))
  args = parser.parse_args()
  os.makedirs(args.out, exist_ok=True)
  train = [fashion_mnist.load(s, args.source) for s in ("train", "validation")]
  images = np.concatenate([train[0][0][:TRAIN], train[1][0][:VALIDATION]])
  labels = np.concatenate([train[0][1][:TRAIN], train[1][1][:VALIDATION]])
  test_images, test_labels = fashion_mnist.load("test", args.source)
  for prefix, (x, y) in (("train", (images, labels)), ("t10k", (test_images[:TEST], test_labels[:TEST]))):
    write_idx(os.path.join(args.out, f"{prefix}-images-idx3-ubyte.gz"), x, fashion_mnist.IMAGE_MAGIC)
    write_idx(os.path.join(args.out, f"{prefix}-labels-idx1-ubyte.gz"), y.astype(np.uint8), fashion_mnist.LABEL_MAGIC)
  if os.path.exists(COPYRIGHT):
    shutil.copy(COPYRIGHT, os.path.join(args.out, "LICENSE"))
  print(f"wrote {len(images)} training and {TEST} test images to {os.path.abspath(args.out)}")


if __name__ == "__main__":
  main()
