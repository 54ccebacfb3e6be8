"""Regenerates mnist_sample.npz, the small real-MNIST sample shipped with random_bases.

Usage (from the repository root):

  python random_bases/sample_data/make_sample.py --mnist-dir /path/to/mnist

where /path/to/mnist holds the four official IDX files (train-images-idx3-ubyte.gz,
train-labels-idx1-ubyte.gz, t10k-images-idx3-ubyte.gz, t10k-labels-idx1-ubyte.gz).

The sample is stratified: 200 images per class from the MNIST training set and 100 per
class from the test set (2,000 / 1,000 in all), picked without replacement by a NumPy
generator seeded with --seed (default 0), then shuffled with the same generator so that
classes are interleaved. The original indices are stored alongside, so every sample image
can be traced back to the full dataset. Same files + same seed give identical arrays (the
.npz bytes differ between runs only by zip timestamps).
"""

from __future__ import annotations

import argparse
import pathlib
import sys

import numpy as np

_HERE = pathlib.Path(__file__).resolve().parent

try:
  from random_bases.data import readers
except ImportError:  # Run from a checkout that is not installed: use the checkout itself.
  sys.path.insert(0, str(_HERE.parents[1]))
  from random_bases.data import readers

NUM_CLASSES = 10
TRAIN_PER_CLASS = 200
TEST_PER_CLASS = 100


def stratified_indices(labels: np.ndarray, per_class: int, rng: np.random.Generator) -> np.ndarray:
  """`per_class` random indices of each class, in a random overall order."""
  chosen = [
    rng.choice(np.flatnonzero(labels == c), size=per_class, replace=False)
    for c in range(NUM_CLASSES)
  ]
  return rng.permutation(np.concatenate(chosen))


def main(argv: list[str] | None = None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--mnist-dir", required=True, help="folder with the MNIST IDX files")
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--out", default=str(_HERE / "mnist_sample.npz"))
  args = parser.parse_args(argv)

  rng = np.random.default_rng(args.seed)
  arrays = {}
  for split, per_class in (("train", TRAIN_PER_CLASS), ("test", TEST_PER_CLASS)):
    images, labels = readers.read_idx_split(args.mnist_dir, split)
    idx = stratified_indices(labels, per_class, rng)
    arrays[f"{split}_images"] = images[idx]  # uint8 [N, 28, 28, 1]
    arrays[f"{split}_labels"] = labels[idx].astype(np.uint8)  # uint8 keeps the file small
    arrays[f"{split}_indices"] = idx.astype(np.int32)  # position in the full split
  np.savez_compressed(args.out, **arrays)
  print(f"wrote {args.out}: " + ", ".join(f"{k} {v.shape} {v.dtype}" for k, v in arrays.items()))


if __name__ == "__main__":
  main()
