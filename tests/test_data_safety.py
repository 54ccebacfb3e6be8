"""Bad or mislabelled input data (issue 18): corrupt caches, undecodable images, wrong datasets.

Real data: MNIST from $RANDOM_BASES_DATA_DIR/mnist and Fashion-MNIST from Debian's
/usr/share/datasets/fashion-mnist; under CI=true a missing one fails, elsewhere its
tests skip (tests/reference.py). Everything else is written here (tests/data_fakes.py).
"""

from __future__ import annotations

import gzip
import logging
import pathlib
import shutil

import data_fakes
import numpy as np
import pytest
import reference

from random_bases import data
from random_bases.data import readers, sources

FASHION_DIR = pathlib.Path("/usr/share/datasets/fashion-mnist")


@pytest.fixture(autouse=True)
def _isolated_locations(monkeypatch, tmp_path_factory):
  data_fakes.isolate_data_locations(monkeypatch, tmp_path_factory.mktemp("empty_tfds"))


@pytest.fixture(scope="module")
def mnist_dir():
  return reference.shared_dataset("mnist")


@pytest.fixture
def fashion_dir():
  return reference.require_data(FASHION_DIR, "Fashion-MNIST (Debian package dataset-fashion-mnist)")


# ----------------------------------------------------------------------------
# 1. A corrupt decode cache is set aside and rebuilt, not a crash on every run.
# ----------------------------------------------------------------------------


def _cifar_archive(tmp_path):
  data_fakes.write_image_tree(
    tmp_path / "tree", classes=data_fakes.CIFAR10_CLASSES, counts={"train": 2, "test": 1}
  )
  return data_fakes.write_tar_gz(tmp_path / "tree", tmp_path / "c.tar.gz")


def _load_folder(archive, cache):
  return data.load_dataset(
    "cifar10", source="folder", data_dir=str(archive), holdout="none", cache_dir=str(cache)
  )


def _rewrite_npz(path, change):
  with np.load(path) as npz:
    arrays = {key: npz[key] for key in npz.files}
  change(arrays)
  with open(path, "wb") as f:
    np.savez(f, **arrays)


def _truncate(path):
  path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _flip_a_pixel_byte(path):
  # Inside the stored (uncompressed) image array: only the zip CRC can notice.
  raw = bytearray(path.read_bytes())
  raw[len(raw) // 2] ^= 0xFF
  path.write_bytes(bytes(raw))


CORRUPTIONS = {
  "truncated": _truncate,
  "empty": lambda path: path.write_bytes(b""),
  "not_a_zip": lambda path: path.write_bytes(b"this is not an npz file"),
  "bad_crc": _flip_a_pixel_byte,
  "missing_array": lambda path: _rewrite_npz(path, lambda a: a.pop("test_labels")),
  "wrong_dtype": lambda path: _rewrite_npz(
    path, lambda a: a.update(train_images=a["train_images"].astype(np.float32))
  ),
  "wrong_shape": lambda path: _rewrite_npz(
    path, lambda a: a.update(test_images=a["test_images"][:, :16])
  ),
  "labels_do_not_match_images": lambda path: _rewrite_npz(
    path, lambda a: a.update(train_labels=a["train_labels"][:-1])
  ),
  "label_out_of_range": lambda path: _rewrite_npz(
    path, lambda a: a.update(test_labels=np.full_like(a["test_labels"], 10))
  ),
}


@pytest.mark.parametrize("corruption", sorted(CORRUPTIONS))
def test_a_corrupt_cache_is_set_aside_and_the_images_decoded_again(
  tmp_path, monkeypatch, caplog, corruption
):
  archive = _cifar_archive(tmp_path)
  first = _load_folder(archive, tmp_path / "cache")
  [cache_file] = (tmp_path / "cache" / "image_folders").glob("*.npz")
  CORRUPTIONS[corruption](cache_file)

  caplog.set_level(logging.INFO)
  again = _load_folder(archive, tmp_path / "cache")
  # The warning names the bad file and where it went; the data is decoded afresh.
  [set_aside] = cache_file.parent.glob(cache_file.name + ".corrupt-*")
  warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
  assert any(str(cache_file) in w and str(set_aside) in w for w in warnings), warnings
  assert "read from the cache" not in caplog.text
  np.testing.assert_array_equal(again.train_images, first.train_images)
  np.testing.assert_array_equal(again.eval_splits["test"][1], first.eval_splits["test"][1])
  assert again.description == first.description

  # The rewritten cache is whole: the next run reads it without decoding.
  def no_decoding(*args, **kwargs):
    raise AssertionError("decoded again despite a rebuilt cache")

  monkeypatch.setattr(readers, "read_image_folder", no_decoding)
  cached = _load_folder(archive, tmp_path / "cache")
  np.testing.assert_array_equal(cached.train_images, first.train_images)
  assert sorted(p.name for p in cache_file.parent.iterdir()) == sorted(
    [cache_file.name, set_aside.name]
  )


def test_a_failed_cache_write_leaves_no_partial_file(tmp_path, monkeypatch, caplog):
  archive = _cifar_archive(tmp_path)

  def disk_full(file, **arrays):
    file.write(b"PK\x03\x04 partial")
    raise OSError(28, "No space left on device")

  monkeypatch.setattr(np, "savez", disk_full)
  caplog.set_level(logging.WARNING)
  ds = _load_folder(archive, tmp_path / "cache")
  assert ds.train_images.shape == (20, 32, 32, 3)
  assert "No space left on device" in caplog.text
  # Neither a cache file a later run would trip over, nor a stray temporary.
  assert list((tmp_path / "cache" / "image_folders").iterdir()) == []


def test_an_unusable_corrupt_cache_that_cannot_be_moved_still_loads(tmp_path, monkeypatch, caplog):
  archive = _cifar_archive(tmp_path)
  first = _load_folder(archive, tmp_path / "cache")
  [cache_file] = (tmp_path / "cache" / "image_folders").glob("*.npz")
  _truncate(cache_file)

  def refuse(*args, **kwargs):
    raise PermissionError(13, "Permission denied")

  # A read-only cache folder: neither renaming nor deleting nor rewriting works.
  monkeypatch.setattr(sources.os, "replace", refuse)
  monkeypatch.setattr(sources.os, "unlink", refuse)
  caplog.set_level(logging.WARNING)
  again = _load_folder(archive, tmp_path / "cache")
  np.testing.assert_array_equal(again.train_images, first.train_images)
  assert str(cache_file) in caplog.text and "Permission denied" in caplog.text


# ----------------------------------------------------------------------------
# 2. A decode error names the archive or folder, the member file and the cause.
# ----------------------------------------------------------------------------


def _tree_with(tmp_path, member, content):
  data_fakes.write_image_tree(
    tmp_path / "tree", classes=("ant", "cat"), counts={"train": 2, "test": 1}
  )
  (tmp_path / "tree" / member).write_bytes(content)
  return tmp_path / "tree"


def _jpeg_bytes(tmp_path):
  data_fakes.write_image_tree(
    tmp_path / "one", classes=("x",), counts={"train": 1}, image_format="jpg"
  )
  return (tmp_path / "one" / "train" / "x" / "0000.jpg").read_bytes()


def _decode_error(path):
  with pytest.raises(ValueError) as err:
    readers.read_image_folder(path, image_shape=(32, 32, 3))
  message = str(err.value)
  assert "BytesIO" not in message and " at 0x" not in message, message
  return message


@pytest.mark.parametrize("as_archive", [False, True])
def test_an_undecodable_image_is_named_with_the_cause(tmp_path, as_archive):
  cases = {
    "not_an_image": (b"this is not a png", "not a JPEG or PNG image"),
    "empty": (b"", "empty file"),
    "truncated": (_jpeg_bytes(tmp_path)[:200], "truncated"),
  }
  for case, (content, cause) in cases.items():
    tree = _tree_with(tmp_path / case, "test/cat/0000.png", content)
    path = tree
    if as_archive:
      path = data_fakes.write_tar_gz(tree, tmp_path / case / "images.tar.gz", top="pics")
    message = _decode_error(path)
    assert str(path) in message, message
    member = "pics/test/cat/0000.png" if as_archive else "test/cat/0000.png"
    assert member in message, message
    assert cause.lower() in message.lower(), message


def test_a_truncated_archive_names_the_member_it_stopped_in(tmp_path):
  data_fakes.write_image_tree(
    tmp_path / "tree", classes=("ant", "cat"), counts={"train": 40, "test": 10}
  )
  archive = data_fakes.write_tar_gz(tmp_path / "tree", tmp_path / "t.tar.gz")
  archive.write_bytes(archive.read_bytes()[: archive.stat().st_size // 2])
  message = _decode_error(archive)
  assert f"Cannot read image folder {archive}" in message, message
  assert "member train/" in message, message


# ----------------------------------------------------------------------------
# 3. Known datasets are recognised by content; a mismatch with the name is an error.
# ----------------------------------------------------------------------------


def test_real_mnist_and_fashion_mnist_are_recognised(mnist_dir, fashion_dir):
  mnist = data.load_dataset("mnist", source="files", data_dir=str(mnist_dir), holdout="none")
  assert mnist.release == "mnist-idx"
  assert mnist.description == f"MNIST (official IDX files) from {mnist_dir}"
  fashion = data.load_dataset(
    "fashion_mnist", source="files", data_dir=str(fashion_dir), holdout="none"
  )
  assert fashion.release == "fashion_mnist-idx"
  assert fashion.description == f"Fashion-MNIST (official IDX files) from {fashion_dir}"


@pytest.mark.parametrize("source", ["files", "auto"])
def test_fashion_mnist_files_given_as_mnist_are_refused(fashion_dir, source):
  with pytest.raises(ValueError) as err:
    data.load_dataset("mnist", source=source, data_dir=str(fashion_dir))
  message = str(err.value)
  assert "data.dataset='mnist'" in message, message
  assert str(fashion_dir) in message, message
  assert "are Fashion-MNIST" in message, message
  assert "data.dataset='fashion_mnist'" in message, message


def test_mnist_files_given_as_fashion_mnist_are_refused(mnist_dir):
  with pytest.raises(ValueError, match=r"data.dataset='fashion_mnist'.* are MNIST"):
    data.load_dataset("fashion_mnist", source="files", data_dir=str(mnist_dir))


def test_mixed_files_name_the_foreign_ones(tmp_path, mnist_dir, fashion_dir):
  # MNIST's training files beside Fashion-MNIST's test files.
  for name in ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"):
    (tmp_path / name).symlink_to(mnist_dir / name)
  for name in ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"):
    (tmp_path / name).symlink_to(fashion_dir / name)
  with pytest.raises(ValueError) as err:
    data.load_dataset("mnist", source="files", data_dir=str(tmp_path))
  message = str(err.value)
  assert "t10k-images-idx3-ubyte.gz" in message and "t10k-labels-idx1-ubyte.gz" in message
  assert "train-images" not in message, message
  assert "Fashion-MNIST" in message, message


def test_a_decompressed_copy_of_mnist_is_still_recognised(tmp_path, mnist_dir):
  # The fingerprint is of the content, not of the gzip stream or the file names.
  for path in mnist_dir.glob("*-ubyte.gz"):
    stem = path.name[: -len(".gz")].replace("-idx", ".idx")  # the dotted mirror spelling
    with gzip.open(path, "rb") as f:
      (tmp_path / stem).write_bytes(f.read())
  ds = data.load_dataset("mnist", source="files", data_dir=str(tmp_path), holdout="none")
  assert ds.release == "mnist-idx"
  assert ds.description == f"MNIST (official IDX files) from {tmp_path}"


def test_an_altered_copy_of_mnist_loads_labelled_unrecognised(tmp_path, mnist_dir, caplog):
  shutil.copytree(mnist_dir, tmp_path, dirs_exist_ok=True)
  images = readers.read_idx(tmp_path / "t10k-images-idx3-ubyte.gz").copy()
  images[0, 0, 0] = 255 - images[0, 0, 0]
  (tmp_path / "t10k-images-idx3-ubyte.gz").unlink()
  data_fakes.write_idx(tmp_path / "t10k-images-idx3-ubyte.gz", images)
  caplog.set_level(logging.INFO)
  ds = data.load_dataset("mnist", source="files", data_dir=str(tmp_path), holdout="none")
  assert ds.release is None
  assert ds.description == (
    f"MNIST (unrecognised IDX files: not the official release) from {tmp_path}"
  )
  assert "t10k-images-idx3-ubyte.gz" in caplog.text  # the log says which file differs


def test_fakes_load_labelled_unrecognised(tmp_path):
  data_fakes.write_fake_mnist(tmp_path / "mnist")
  ds = data.load_dataset("mnist", source="files", data_dir=str(tmp_path / "mnist"), holdout="none")
  assert ds.release is None
  assert ds.description == (
    f"MNIST (unrecognised IDX files: not the official release) from {tmp_path / 'mnist'}"
  )
  ds = data.load_dataset(
    "fashion_mnist", source="files", data_dir=str(tmp_path / "mnist"), holdout="none"
  )
  assert ds.release is None and "Fashion-MNIST (unrecognised IDX files" in ds.description
  data_fakes.write_cifar(tmp_path / "cifar")
  ds = data.load_dataset(
    "cifar10", source="files", data_dir=str(tmp_path / "cifar"), holdout="none"
  )
  assert ds.release is None
  assert ds.description.startswith("CIFAR-10 (unrecognised python pickles")


def test_cifar_pickles_are_recognised_by_their_published_checksums(tmp_path, monkeypatch):
  # The official pickles are not on this machine: the fakes stand in for a
  # release whose published per-file digests are theirs.
  data_fakes.write_cifar(tmp_path)
  monkeypatch.setitem(
    sources.RELEASES,
    "cifar10-python",
    sources.Release(
      dataset="cifar10",
      kind="official python pickles",
      algorithm="md5",
      digests={path.name: data_fakes.md5_of(path) for path in readers.cifar10_files(tmp_path)},
    ),
  )
  ds = data.load_dataset("cifar10", source="files", data_dir=str(tmp_path), holdout="none")
  assert ds.release == "cifar10-python"
  assert ds.description == f"CIFAR-10 (official python pickles) from {tmp_path}"


def test_a_known_image_folder_of_another_dataset_is_refused(tmp_path, monkeypatch):
  data_fakes.write_image_tree(
    tmp_path / "tree",
    classes=[str(i) for i in range(10)],
    counts={"train": 1, "test": 1},
    shape=(28, 28, 1),
  )
  folder = readers.read_image_folder(tmp_path / "tree", image_shape=(28, 28, 1))
  monkeypatch.setitem(
    sources.RELEASES,
    "fashion_mnist-png",
    sources.Release(
      dataset="fashion_mnist",
      kind="PNG export",
      algorithm="image-folder-sha256",
      digests={"image folder": folder.content_sha256},
    ),
  )
  with pytest.raises(ValueError) as err:
    data.load_dataset(
      "mnist", source="folder", data_dir=str(tmp_path / "tree"), cache_dir=str(tmp_path / "c")
    )
  message = str(err.value)
  assert "data.dataset='mnist'" in message and str(tmp_path / "tree") in message
  assert "Fashion-MNIST" in message, message
  ds = data.load_dataset(
    "fashion_mnist",
    source="folder",
    data_dir=str(tmp_path / "tree"),
    cache_dir=str(tmp_path / "c"),
    holdout="none",
  )
  assert ds.release == "fashion_mnist-png"
  assert ds.description == f"Fashion-MNIST (PNG export) from the image folder {tmp_path / 'tree'}"


def test_the_sample_still_loads():
  ds = data.load_dataset("mnist", source="sample", holdout="none")
  assert ds.is_sample and ds.release is None and "NOT the full dataset" in ds.description
