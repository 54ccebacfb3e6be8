"""random_bases.data.readers: IDX files, CIFAR-10 pickles, image folders.

The real MNIST is read from $RANDOM_BASES_DATA_DIR/mnist (.ci/run sets it);
everything else is written by the tests (tests/data_fakes.py).
"""

from __future__ import annotations

import gzip
import hashlib
import os
import pickle
import shutil

import data_fakes
import numpy as np
import pytest
import reference
from PIL import Image

from random_bases.data import readers

MNIST_TRAIN_COUNTS = [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
MNIST_TEST_COUNTS = [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]


# ----------------------------------------------------------------------------
# IDX files.
# ----------------------------------------------------------------------------


def test_idx_reader_on_real_mnist():
  mnist_dir = reference.shared_dataset("mnist")
  train_x, train_y = readers.read_idx_split(mnist_dir, "train")
  test_x, test_y = readers.read_idx_split(mnist_dir, "test")
  assert train_x.shape == (60000, 28, 28, 1) and test_x.shape == (10000, 28, 28, 1)
  assert train_x.dtype == np.uint8 and test_x.dtype == np.uint8
  assert train_y.dtype == np.int32 and test_y.dtype == np.int32
  assert np.bincount(train_y, minlength=10).tolist() == MNIST_TRAIN_COUNTS
  assert np.bincount(test_y, minlength=10).tolist() == MNIST_TEST_COUNTS
  assert train_y[:10].tolist() == [5, 0, 4, 1, 9, 2, 1, 3, 1, 4]
  # Real digits: black background, some fully white strokes.
  assert train_x[:, 0, 0, 0].max() == 0 and train_x.max() == 255


@pytest.mark.parametrize("gz", [True, False])
def test_idx_split_round_trip(tmp_path, gz):
  fake = data_fakes.write_fake_mnist(tmp_path, gz=gz)
  for split in ("train", "test"):
    images, labels = readers.read_idx_split(tmp_path, split)
    np.testing.assert_array_equal(images[..., 0], fake[split][0])
    np.testing.assert_array_equal(labels, fake[split][1])
    assert images.shape[-1] == 1 and labels.dtype == np.int32


def test_idx_sha256_is_the_decompressed_files_sha256(tmp_path):
  data_fakes.write_fake_mnist(tmp_path)
  for path in readers.idx_files(tmp_path):
    with gzip.open(path, "rb") as f:
      want = hashlib.sha256(f.read()).hexdigest()
    assert readers.idx_sha256(readers.read_idx(path)) == want
  with pytest.raises(ValueError, match="uint8"):
    readers.idx_sha256(np.zeros(3, np.int32))


def test_corrupt_idx_files(tmp_path):
  bad_magic = tmp_path / "bad-magic-idx3-ubyte.gz"
  data_fakes.write_idx(bad_magic, np.zeros((2, 28, 28)), magic=bytes([0, 0, 0x0D, 3]))
  with pytest.raises(ValueError, match="magic"):
    readers.read_idx(bad_magic)
  truncated = tmp_path / "truncated-idx1-ubyte"
  truncated.write_bytes(bytes([0, 0, 8, 1]) + np.asarray([100], ">u4").tobytes() + bytes(99))
  with pytest.raises(ValueError, match=str(truncated)):
    readers.read_idx(truncated)
  not_gzip = tmp_path / "garbage-idx1-ubyte.gz"
  not_gzip.write_bytes(b"this is not gzip data")
  with pytest.raises(ValueError, match="Cannot read"):
    readers.read_idx(not_gzip)
  data_fakes.write_fake_mnist(tmp_path / "ds")
  data_fakes.write_idx(
    tmp_path / "ds" / "train-labels-idx1-ubyte.gz", np.zeros(50), magic=bytes([0, 0, 0x08, 3])
  )
  with pytest.raises(ValueError, match="train-labels"):
    readers.read_idx_split(tmp_path / "ds", "train")


# ----------------------------------------------------------------------------
# CIFAR-10 pickles.
# ----------------------------------------------------------------------------


def test_cifar_reader_layout(tmp_path):
  data_fakes.write_cifar(tmp_path)
  images, labels = readers.read_cifar_batch(tmp_path / "data_batch_2")
  assert images.shape == (10, 32, 32, 3) and images.dtype == np.uint8
  assert labels.dtype == np.int32
  # Image 3 of batch 2 is image 13 overall; check a pixel of each channel.
  for row, col, ch in ((0, 0, 0), (5, 17, 1), (31, 2, 2)):
    assert images[3, row, col, ch] == data_fakes.cifar_pixel(13, row, col, ch)
  assert labels.tolist() == [i % 10 for i in range(10, 20)]
  both = readers.read_cifar10(tmp_path)
  assert both["train"][0].shape == (50, 32, 32, 3)
  assert both["test"][0][0, 1, 2, 1] == data_fakes.cifar_pixel(50, 1, 2, 1)


def test_cifar_reader_refuses_code_in_pickles(tmp_path):
  class Evil:
    def __reduce__(self):
      return (os.getcwd, ())

  path = tmp_path / "data_batch_1"
  path.write_bytes(pickle.dumps({b"data": Evil(), b"labels": []}))
  with pytest.raises(ValueError, match="not allowed"):
    readers.read_cifar_batch(path)


# ----------------------------------------------------------------------------
# Image folders.
# ----------------------------------------------------------------------------

CLASSES = ("cat", "ant", "dog")  # written in this order; sorted: ant, cat, dog


def _relabel(expected, order):
  """`expected` (labels in CLASSES' order) re-labelled and re-ordered."""
  out = {}
  for split, (images, labels) in expected.items():
    new = np.asarray([order.index(CLASSES[y]) for y in labels], np.int32)
    keep = np.argsort(new, kind="stable")
    out[split] = (images[keep], new[keep])
  return out


@pytest.mark.parametrize("as_archive", [False, True])
def test_png_folder_is_read_exactly(tmp_path, as_archive):
  expected = data_fakes.write_image_tree(tmp_path / "tree", classes=CLASSES)
  path = tmp_path / "tree"
  if as_archive:
    # Under a common top folder, as archives usually are.
    path = data_fakes.write_tar_gz(path, tmp_path / "tree.tar.gz", top="pics")
  folder = readers.read_image_folder(path, image_shape=(32, 32, 3))
  assert folder.classes == ("ant", "cat", "dog") and folder.formats == ("PNG",)
  want = _relabel(expected, folder.classes)
  for split in ("train", "test"):
    images, labels = folder.splits[split]
    order = readers.folder_split_order(len(labels))
    assert images.dtype == np.uint8 and labels.dtype == np.int32
    np.testing.assert_array_equal(images, want[split][0][order])
    np.testing.assert_array_equal(labels, want[split][1][order])


def test_folder_content_fingerprint(tmp_path):
  data_fakes.write_image_tree(tmp_path / "tree", classes=CLASSES)
  digest = readers.read_image_folder(tmp_path / "tree", image_shape=(32, 32, 3)).content_sha256
  # The same files as a tree, an archive, or an archive with a top folder;
  # files that are not images of a split do not count.
  (tmp_path / "tree" / "README.md").write_text("not an image")
  for path in (
    tmp_path / "tree",
    data_fakes.write_tar_gz(tmp_path / "tree", tmp_path / "flat.tar.gz"),
    data_fakes.write_tar_gz(tmp_path / "tree", tmp_path / "top.tar.gz", top="pics"),
  ):
    assert readers.read_image_folder(path, image_shape=(32, 32, 3)).content_sha256 == digest
  # A renamed image (another order, or another class) or changed bytes change it.
  cat = tmp_path / "tree" / "train" / "cat"
  (cat / "0000.png").rename(cat / "0009.png")
  renamed = readers.read_image_folder(tmp_path / "tree", image_shape=(32, 32, 3)).content_sha256
  assert renamed != digest
  Image.new("RGB", (32, 32), (1, 2, 3)).save(cat / "0009.png")
  changed = readers.read_image_folder(tmp_path / "tree", image_shape=(32, 32, 3)).content_sha256
  assert changed not in (digest, renamed)


def test_jpeg_folder_with_explicit_class_order(tmp_path):
  order = ("dog", "cat", "ant")
  data_fakes.write_image_tree(tmp_path, classes=CLASSES, image_format="jpg")
  (tmp_path / "README.md").write_text("not an image: ignored")
  folder = readers.read_image_folder(tmp_path, image_shape=(32, 32, 3), classes=order)
  assert folder.classes == order and folder.formats == ("JPEG",)
  for split_index, split in enumerate(("train", "test")):
    images, labels = folder.splits[split]
    count = {"train": 3, "test": 2}[split]
    ranks = readers.folder_split_order(len(labels))
    assert labels.tolist() == [ranks_label // count for ranks_label in ranks]
    for rank, image, label in zip(ranks, images, labels):
      written_label = CLASSES.index(order[label])
      colour = data_fakes.jpeg_colour(split_index, written_label, rank % count)
      np.testing.assert_allclose(image.reshape(-1, 3).mean(axis=0), colour, atol=2)


def test_folder_splits_are_shuffled_so_prefixes_are_fair_samples(tmp_path):
  # Folders group images by class; without the shuffle the first images of
  # a split (train.eval_examples) were all one class.
  data_fakes.write_image_tree(tmp_path, classes=CLASSES)
  folder = readers.read_image_folder(tmp_path, image_shape=(32, 32, 3))
  labels = folder.splits["train"][1]
  assert sorted(labels.tolist()) == [0, 0, 0, 1, 1, 1, 2, 2, 2]
  assert labels.tolist() != sorted(labels.tolist())


def test_greyscale_folder(tmp_path):
  expected = data_fakes.write_image_tree(tmp_path, classes=("0", "1"), shape=(28, 28, 1))
  folder = readers.read_image_folder(tmp_path, image_shape=(28, 28, 1))
  order = readers.folder_split_order(len(expected["test"][1]))
  np.testing.assert_array_equal(folder.splits["test"][0], expected["test"][0][order])
  # An RGB image where greyscale is expected is converted, not refused.
  Image.new("RGB", (28, 28), (90, 90, 90)).save(tmp_path / "train/1/rgb.png")
  folder = readers.read_image_folder(tmp_path, image_shape=(28, 28, 1))
  assert folder.splits["train"][0].shape == (7, 28, 28, 1)
  last_rank = int(np.argmax(readers.folder_split_order(7)))  # rgb.png sorts last
  assert np.all(folder.splits["train"][0][last_rank] == 90)


def _tree(tmp_path):
  data_fakes.write_image_tree(tmp_path / "tree", classes=CLASSES)
  return tmp_path / "tree"


@pytest.mark.parametrize("as_archive", [False, True])
def test_folder_errors_name_the_path(tmp_path, as_archive):
  def read(tree, **kw):
    path = tree
    if as_archive:
      path = data_fakes.write_tar_gz(tree, tmp_path / f"{tree.name}.tar.gz")
    with pytest.raises(ValueError) as err:
      readers.read_image_folder(path, image_shape=(32, 32, 3), **kw)
    assert str(path) in str(err.value)
    return str(err.value)

  tree = _tree(tmp_path / "missing_split")
  shutil.rmtree(tree / "test")
  assert "no 'test' split" in read(tree)

  tree = _tree(tmp_path / "empty_class")
  for image in (tree / "test" / "dog").iterdir():
    image.unlink()
  assert "class folder test/dog has no" in read(tree)

  tree = _tree(tmp_path / "wrong_size")
  Image.new("RGB", (31, 32)).save(tree / "train" / "ant" / "0001.png")
  assert "train/ant/0001.png is 31x32 pixels; expected 32x32" in read(tree)

  tree = _tree(tmp_path / "classes_differ")
  data_fakes.write_image_tree(tree, classes=("eel",), counts={"train": 1})
  assert "only in 'train': ['eel']" in read(tree)

  tree = _tree(tmp_path / "other_classes")
  assert "expected ['ant', 'bee', 'cat']" in read(tree, classes=("ant", "bee", "cat"))

  tree = _tree(tmp_path / "corrupt")
  (tree / "test" / "cat" / "0000.png").write_bytes(b"not a png")
  assert "Cannot decode image" in read(tree)


def test_folder_path_must_be_a_folder_or_archive(tmp_path):
  (tmp_path / "images.zip").write_bytes(b"PK")
  for path in (tmp_path / "images.zip", tmp_path / "nothing"):
    with pytest.raises(ValueError, match=f"{path} is neither a folder nor"):
      readers.read_image_folder(path, image_shape=(32, 32, 3))
  (tmp_path / "broken.tar.gz").write_bytes(b"not gzip")
  with pytest.raises(ValueError, match="Cannot read image folder .*broken"):
    readers.read_image_folder(tmp_path / "broken.tar.gz", image_shape=(32, 32, 3))
