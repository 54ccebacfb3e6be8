"""Small datasets the data tests write themselves, in each reader's format.

Every writer returns what a correct reader must give back, so the tests
compare against these explicit values.
"""

from __future__ import annotations

import gzip
import hashlib
import pathlib
import pickle
import tarfile

import numpy as np
from PIL import Image


def isolate_data_locations(monkeypatch, empty_tfds_dir: pathlib.Path) -> None:
  """Hides the developer's own data and cache variables from a test.

  What a test sees must not depend on them; tests that need one set it. TFDS
  gets an empty folder, so it has nothing prepared.
  """
  monkeypatch.delenv("RANDOM_BASES_DATA_DIR", raising=False)
  monkeypatch.delenv("RANDOM_BASES_CACHE_DIR", raising=False)
  monkeypatch.setenv("TFDS_DATA_DIR", str(empty_tfds_dir))


def md5_of(path: pathlib.Path) -> str:
  return hashlib.md5(path.read_bytes()).hexdigest()


CIFAR10_CLASSES = (
  "airplane",
  "automobile",
  "bird",
  "cat",
  "deer",
  "dog",
  "frog",
  "horse",
  "ship",
  "truck",
)


def write_idx(path: pathlib.Path, array, *, magic: bytes | None = None) -> None:
  array = np.asarray(array, dtype=np.uint8)
  header = magic if magic is not None else bytes([0, 0, 0x08, array.ndim])
  header += np.asarray(array.shape, dtype=">u4").tobytes()
  raw = header + array.tobytes()
  if path.name.endswith(".gz"):
    with gzip.open(path, "wb") as f:
      f.write(raw)
  else:
    path.write_bytes(raw)


def write_fake_mnist(
  directory: pathlib.Path, *, num_train: int = 50, num_test: int = 20, gz: bool = True
):
  """The four IDX files of random images; returns {split: (images, labels)}."""
  directory.mkdir(parents=True, exist_ok=True)
  rng = np.random.default_rng(123)
  suffix = ".gz" if gz else ""
  out = {}
  for split, n, prefix in (("train", num_train, "train"), ("test", num_test, "t10k")):
    images = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
    labels = rng.integers(0, 10, (n,), dtype=np.uint8)
    write_idx(directory / f"{prefix}-images-idx3-ubyte{suffix}", images)
    write_idx(directory / f"{prefix}-labels-idx1-ubyte{suffix}", labels)
    out[split] = (images, labels)
  return out


def cifar_pixel(n, row, col, channel):
  return (7 * n + 5 * row + 3 * col + 101 * channel) % 256


def write_cifar(directory: pathlib.Path, per_batch: int = 10) -> None:
  """The six CIFAR-10 python batches; image n has pixels cifar_pixel(n, ...)."""
  directory.mkdir(parents=True, exist_ok=True)
  n, c, r, w = np.meshgrid(
    np.arange(per_batch), np.arange(3), np.arange(32), np.arange(32), indexing="ij"
  )
  names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
  for b, name in enumerate(names):
    # Official layout: [N, 3072] rows holding the R, G, B planes, row-major.
    data = cifar_pixel(n + b * per_batch, r, w, c).astype(np.uint8).reshape(per_batch, 3072)
    labels = [int(i % 10) for i in range(b * per_batch, (b + 1) * per_batch)]
    with open(directory / name, "wb") as f:
      # Protocol 2 with bytes keys, like the Python 2 files CIFAR-10 ships.
      pickle.dump({b"batch_label": b"batch", b"data": data, b"labels": labels}, f, protocol=2)


def jpeg_colour(split_index: int, label: int, i: int) -> tuple[int, int, int]:
  """The solid colour of a JPEG image (JPEG keeps flat colours to +-2)."""
  return (20 + 20 * label, 200 - 15 * i, 60 + 100 * split_index)


def write_image_tree(
  root: pathlib.Path, *, classes, counts=None, image_format: str = "png", shape=(32, 32, 3), seed=0
):
  """`split/class/NNNN.<format>` images; returns {split: (images, labels)}.

  Labels follow `classes`' order, images each class's file-name order: the
  order read_image_folder must return. PNG images are random (lossless),
  JPEG ones flat colours (see jpeg_colour).
  """
  counts = counts or {"train": 3, "test": 2}
  rng = np.random.default_rng(seed)
  height, width, channels = shape
  expected = {}
  for split_index, (split, count) in enumerate(counts.items()):
    images, labels = [], []
    for label, class_name in enumerate(classes):
      folder = root / split / class_name
      folder.mkdir(parents=True, exist_ok=True)
      for i in range(count):
        if image_format == "png":
          image = rng.integers(0, 256, shape, dtype=np.uint8)
        else:
          colour = jpeg_colour(split_index, label, i)[:channels]
          image = np.broadcast_to(np.asarray(colour, np.uint8), shape)
        pil = Image.fromarray(image[..., 0] if channels == 1 else image)
        options = {"quality": 95} if image_format == "jpg" else {}
        pil.save(folder / f"{i:04d}.{image_format}", **options)
        images.append(image)
        labels.append(label)
    expected[split] = (np.stack(images), np.asarray(labels, np.int32))
  return expected


def write_tar_gz(
  source: pathlib.Path, archive: pathlib.Path, *, top: str | None = None
) -> pathlib.Path:
  """`source`'s contents as a .tar.gz, under the folder `top` if given."""
  with tarfile.open(archive, "w:gz") as tar:
    for child in sorted(source.iterdir()):
      tar.add(child, arcname=f"{top}/{child.name}" if top else child.name)
  return archive
