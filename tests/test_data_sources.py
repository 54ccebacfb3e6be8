"""random_bases.data.sources: where data comes from, holdouts, load_dataset.

Real data: MNIST from $RANDOM_BASES_DATA_DIR/mnist, the CIFAR-10 JPEG archive
from $RANDOM_BASES_DATA_DIR/cifar10-jpeg (.ci/run sets the variable), and
Fashion-MNIST from Debian's /usr/share/datasets/fashion-mnist. Under CI=true a
missing one fails; elsewhere its tests skip (tests/reference.py).
"""

from __future__ import annotations

import logging
import os
import pathlib
import subprocess
import sys

import data_fakes
import numpy as np
import pytest
import reference

from random_bases import data
from random_bases.data import readers, sources

FASHION_DIR = pathlib.Path("/usr/share/datasets/fashion-mnist")
MNIST_TRAIN_COUNTS = [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
# CIFAR-10's per-channel training-set means (the usual normalisation constants).
CIFAR10_CHANNEL_MEANS = (0.4914, 0.4822, 0.4465)


@pytest.fixture(autouse=True)
def _isolated_locations(monkeypatch, tmp_path_factory):
  data_fakes.isolate_data_locations(monkeypatch, tmp_path_factory.mktemp("empty_tfds"))


def test_isolation_clears_the_variables_the_data_layer_reads():
  # data_fakes cannot import the package's constants; this keeps the names in step.
  assert data.DATA_DIR_ENV_VAR not in os.environ
  assert sources.CACHE_DIR_ENV_VAR not in os.environ
  assert not list(pathlib.Path(os.environ[sources.TFDS_DATA_DIR_ENV_VAR]).iterdir())


@pytest.fixture(scope="module")
def mnist_dir():
  return reference.shared_dataset("mnist")


@pytest.fixture(scope="module")
def mnist_raw(mnist_dir):
  return {split: readers.read_idx_split(mnist_dir, split) for split in ("train", "test")}


@pytest.fixture(scope="module")
def mnist_validation(mnist_dir):
  return data.load_dataset(
    "mnist", source="files", data_dir=str(mnist_dir), holdout="validation", holdout_seed=0
  )


def _row_hashes(images: np.ndarray) -> np.ndarray:
  """Sorted per-image byte strings, as a multiset fingerprint of images."""
  flat = np.ascontiguousarray(images.reshape(len(images), -1))
  return np.sort(flat.view(np.dtype((np.void, flat.shape[1]))).ravel())


# ----------------------------------------------------------------------------
# Holdouts.
# ----------------------------------------------------------------------------


def test_load_mnist_validation_holdout(mnist_dir, mnist_raw, mnist_validation):
  ds = mnist_validation
  assert ds.name == "mnist" and not ds.is_sample
  assert ds.source == f"files:{mnist_dir}"
  assert ds.description == f"MNIST (official IDX files) from {mnist_dir}"
  assert ds.num_classes == 10 and ds.image_shape == (28, 28, 1)
  assert list(ds.eval_splits) == ["validation", "test"]
  val_x, val_y = ds.eval_splits["validation"]
  test_x, test_y = ds.eval_splits["test"]
  assert ds.train_images.shape == (50000, 28, 28, 1) and len(ds.train_labels) == 50000
  # The sizes validate() checks against before loading (10,000 held out).
  assert len(ds.train_labels) + len(val_y) == sources.train_size("mnist") == 60000
  assert val_x.shape == (10000, 28, 28, 1) and len(val_y) == 10000
  assert test_x.shape == (10000, 28, 28, 1) and len(test_y) == 10000
  for x, y in ((ds.train_images, ds.train_labels), (val_x, val_y), (test_x, test_y)):
    assert x.dtype == np.uint8 and y.dtype == np.int32
  train_idx, val_idx = sources.holdout_indices(
    60000, holdout="validation", holdout_size=10000, holdout_seed=0
  )
  assert len(np.intersect1d(train_idx, val_idx)) == 0
  assert len(np.union1d(train_idx, val_idx)) == 60000
  np.testing.assert_array_equal(ds.train_images, mnist_raw["train"][0][train_idx])
  np.testing.assert_array_equal(val_y, mnist_raw["train"][1][val_idx])
  np.testing.assert_array_equal(
    _row_hashes(np.concatenate([ds.train_images, val_x])), _row_hashes(mnist_raw["train"][0])
  )
  np.testing.assert_array_equal(test_x, mnist_raw["test"][0])


def test_validation_holdout_is_deterministic_per_seed(mnist_dir, mnist_validation):
  again = data.load_dataset("mnist", source="files", data_dir=str(mnist_dir))
  np.testing.assert_array_equal(
    again.eval_splits["validation"][0], mnist_validation.eval_splits["validation"][0]
  )
  np.testing.assert_array_equal(again.train_labels, mnist_validation.train_labels)
  _, held0 = sources.holdout_indices(60000, holdout_seed=0)
  _, held1 = sources.holdout_indices(60000, holdout_seed=1)
  assert not np.array_equal(held0, held1)
  other = data.load_dataset("mnist", source="files", data_dir=str(mnist_dir), holdout_seed=1)
  assert not np.array_equal(
    other.eval_splits["validation"][0], mnist_validation.eval_splits["validation"][0]
  )


def test_tune_and_none_holdouts(mnist_dir):
  tune = data.load_dataset("mnist", source="files", data_dir=str(mnist_dir), holdout="tune")
  assert list(tune.eval_splits) == ["heldout", "test"]
  assert len(tune.train_labels) == 45000 and len(tune.eval_splits["heldout"][1]) == 15000
  train_idx, held_idx = sources.holdout_indices(60000, holdout="tune")
  assert len(np.intersect1d(train_idx, held_idx)) == 0 and len(train_idx) == 45000
  none = data.load_dataset("mnist", source="files", data_dir=str(mnist_dir), holdout="none")
  assert list(none.eval_splits) == ["test"] and len(none.train_labels) == 60000
  assert np.bincount(none.train_labels).tolist() == MNIST_TRAIN_COUNTS


# ----------------------------------------------------------------------------
# Files: locations and messages.
# ----------------------------------------------------------------------------


def test_fashion_mnist_found_where_debian_installs_it():
  reference.require_data(FASHION_DIR, "Fashion-MNIST (Debian package dataset-fashion-mnist)")
  ds = data.load_dataset("fashion_mnist", source="files", holdout="none")
  assert ds.source == f"files:{FASHION_DIR}"
  assert ds.train_images.shape == (60000, 28, 28, 1) and ds.train_images.dtype == np.uint8
  assert ds.eval_splits["test"][0].shape == (10000, 28, 28, 1)
  # Fashion-MNIST is balanced: 6,000 / 1,000 images per class.
  assert np.bincount(ds.train_labels).tolist() == [6000] * 10
  assert np.bincount(ds.eval_splits["test"][1]).tolist() == [1000] * 10


def test_env_var_subfolder_and_uncompressed_files(tmp_path, monkeypatch):
  fake = data_fakes.write_fake_mnist(tmp_path / "mnist", gz=False)
  monkeypatch.setenv(data.DATA_DIR_ENV_VAR, str(tmp_path))
  ds = data.load_dataset("mnist", source="files", holdout="validation", holdout_size=10)
  assert ds.source == f"files:{tmp_path / 'mnist'}"
  assert len(ds.train_labels) == 40 and len(ds.eval_splits["validation"][1]) == 10
  np.testing.assert_array_equal(ds.eval_splits["test"][0][..., 0], fake["test"][0])
  # The files directly in the folder named by the variable work too.
  data_fakes.write_fake_mnist(tmp_path / "flat", gz=True)
  monkeypatch.setenv(data.DATA_DIR_ENV_VAR, str(tmp_path / "flat"))
  ds = data.load_dataset("mnist", source="files", holdout="none")
  assert ds.source == f"files:{tmp_path / 'flat'}" and len(ds.train_labels) == 50


def test_relative_locations_are_made_absolute(tmp_path, monkeypatch):
  data_fakes.write_fake_mnist(tmp_path / "data" / "mnist")
  monkeypatch.chdir(tmp_path)
  monkeypatch.setenv(data.DATA_DIR_ENV_VAR, "data")
  ds = data.load_dataset("mnist", source="files", holdout="none")
  assert ds.source == f"files:{tmp_path / 'data' / 'mnist'}"


def test_missing_file_names_the_file(tmp_path):
  with pytest.raises(ValueError) as err:
    data.load_dataset("mnist", source="files", data_dir=str(tmp_path))
  assert f"data_dir='{tmp_path}'" in str(err.value)
  assert "yann.lecun.com" in str(err.value)
  data_fakes.write_fake_mnist(tmp_path)
  (tmp_path / "t10k-labels-idx1-ubyte.gz").unlink()
  with pytest.raises(ValueError, match="t10k-labels-idx1-ubyte.gz is missing"):
    data.load_dataset("mnist", source="files", data_dir=str(tmp_path))
  with pytest.raises(ValueError, match="dataset-fashion-mnist"):
    data.load_dataset("fashion_mnist", source="files", data_dir=str(tmp_path / "nothing"))
  with pytest.raises(ValueError, match="cifar-10-batches-py"):
    data.load_dataset("cifar10", source="files", data_dir=str(tmp_path / "nothing"))


@pytest.mark.parametrize("layout", ["flat", "subdir"])
def test_load_cifar_files(tmp_path, layout):
  data_fakes.write_cifar(tmp_path / "cifar-10-batches-py" if layout == "subdir" else tmp_path)
  ds = data.load_dataset("cifar10", source="files", data_dir=str(tmp_path), holdout_size=10)
  assert ds.image_shape == (32, 32, 3) and ds.num_classes == 10
  # The fakes are not the official pickles, and the description says so.
  assert ds.description == (
    f"CIFAR-10 (unrecognised python pickles: not the official release) from {tmp_path}"
  )
  assert ds.release is None
  assert ds.train_images.shape == (40, 32, 32, 3)
  assert ds.eval_splits["validation"][0].shape == (10, 32, 32, 3)
  test_x, test_y = ds.eval_splits["test"]
  assert test_x.shape == (10, 32, 32, 3) and test_y.dtype == np.int32
  assert test_x[0, 1, 2, 1] == data_fakes.cifar_pixel(50, 1, 2, 1)


# ----------------------------------------------------------------------------
# Argument checking, TFDS, sample.
# ----------------------------------------------------------------------------


def test_unknown_arguments_list_allowed_values(tmp_path):
  with pytest.raises(ValueError, match="name='svhn'.*'mnist', 'fashion_mnist', 'cifar10'"):
    data.load_dataset("svhn")
  with pytest.raises(ValueError, match="source='web'.*'auto', 'tfds', 'files', 'folder', 'sample'"):
    data.load_dataset("mnist", source="web")
  with pytest.raises(ValueError, match="holdout='half'.*'validation', 'tune', 'none'"):
    data.load_dataset("mnist", holdout="half")
  with pytest.raises(ValueError, match="only available for mnist"):
    data.load_dataset("cifar10", source="sample")
  (tmp_path / "file").write_text("")
  with pytest.raises(ValueError, match="cache_dir=.*is a file"):
    data.load_dataset("mnist", source="sample", cache_dir=str(tmp_path / "file"))


def test_tfds_source_with_mock_data(tmp_path):
  import tensorflow_datasets as tfds

  with tfds.testing.mock_data(num_examples=64):
    ds = data.load_dataset("mnist", source="tfds", holdout_size=16)
  assert ds.source == "tfds" and not ds.is_sample
  assert ds.description.startswith("MNIST (TFDS 'mnist') from ")
  assert ds.train_images.shape == (48, 28, 28, 1) and ds.train_images.dtype == np.uint8
  assert ds.train_labels.shape == (48,) and ds.train_labels.dtype == np.int32
  assert ds.eval_splits["validation"][0].shape == (16, 28, 28, 1)
  test_x, test_y = ds.eval_splits["test"]
  assert test_x.shape == (64, 28, 28, 1) and test_y.dtype == np.int32
  # Outside the mock nothing is prepared in an empty data_dir, and nothing is
  # downloaded.
  with pytest.raises(ValueError, match="not available locally"):
    data.load_dataset("mnist", source="tfds", data_dir=str(tmp_path))


def test_sample_source(mnist_raw, caplog):
  caplog.set_level(logging.INFO)
  ds = data.load_dataset("mnist", source="sample", holdout="none")
  assert ds.is_sample and ds.source == "sample"
  assert "NOT the full dataset" in ds.description
  assert ds.train_images.shape == (sources.SAMPLE_TRAIN_SIZE, *sources.image_shape("mnist"))
  assert sources.SAMPLE_TRAIN_SIZE == 2000 and ds.train_images.dtype == np.uint8
  assert ds.train_labels.dtype == np.int32
  assert ds.eval_splits["test"][0].shape == (1000, 28, 28, 1)
  assert "SAMPLE" in caplog.text
  # The sample is real MNIST: each image is the full-dataset image at its index.
  with np.load(sources.SAMPLE_PATH) as npz:
    np.testing.assert_array_equal(npz["train_images"], mnist_raw["train"][0][npz["train_indices"]])
    np.testing.assert_array_equal(npz["test_labels"], mnist_raw["test"][1][npz["test_indices"]])
  caplog.clear()
  val = data.load_dataset("mnist", source="sample")
  assert len(val.eval_splits["validation"][1]) == 400 and len(val.train_labels) == 1600
  assert "clipped to 400" in caplog.text


def test_make_sample_regenerates_the_shipped_file(tmp_path, mnist_dir):
  import importlib.util

  script = sources.SAMPLE_PATH.parent / "make_sample.py"
  spec = importlib.util.spec_from_file_location("make_sample", script)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  module.main(["--mnist-dir", str(mnist_dir), "--out", str(tmp_path / "s.npz")])
  with np.load(tmp_path / "s.npz") as new, np.load(sources.SAMPLE_PATH) as shipped:
    assert sorted(new.files) == sorted(shipped.files)
    for k in new.files:
      np.testing.assert_array_equal(new[k], shipped[k])


# ----------------------------------------------------------------------------
# source="auto".
# ----------------------------------------------------------------------------


def test_auto_without_locations_picks_the_sample_and_says_why(caplog):
  caplog.set_level(logging.INFO)
  ds = data.load_dataset("mnist", holdout="none")
  assert ds.is_sample and ds.source == "sample"
  assert "chose 'sample' for mnist" in caplog.text
  assert f"${data.DATA_DIR_ENV_VAR} (not set)" in caplog.text
  assert "NOT the full dataset" in caplog.text
  # Other datasets have no sample: an error that says where it looked.
  with pytest.raises(ValueError, match="found no data .*for dataset 'cifar10'"):
    data.load_dataset("cifar10")


def test_auto_with_the_env_var_picks_files(caplog, monkeypatch, tmp_path):
  caplog.set_level(logging.INFO)
  data_fakes.write_fake_mnist(tmp_path / "mnist")
  monkeypatch.setenv(data.DATA_DIR_ENV_VAR, str(tmp_path))
  ds = data.load_dataset("mnist", holdout="none")
  assert ds.source == f"files:{tmp_path / 'mnist'}" and not ds.is_sample
  assert f"chose 'files' for mnist: found its files under ${data.DATA_DIR_ENV_VAR}" in caplog.text
  # A root without this dataset is no error: the search goes on (to the sample).
  monkeypatch.setenv(data.DATA_DIR_ENV_VAR, str(tmp_path / "elsewhere"))
  assert data.load_dataset("mnist", holdout="none").is_sample


def test_auto_with_data_dir_never_falls_back_to_the_sample(mnist_dir, tmp_path):
  ds = data.load_dataset("mnist", data_dir=str(mnist_dir), holdout="none")
  assert ds.source == f"files:{mnist_dir}"
  # A wrong data_dir is an error, not a silent run on 2,000 images.
  with pytest.raises(ValueError, match=f"found no data for 'mnist' in data_dir='{tmp_path}'"):
    data.load_dataset("mnist", data_dir=str(tmp_path))


def test_auto_does_not_touch_tfds_when_it_has_nothing(tmp_path):
  # The guard that keeps "auto" from hanging offline: with no TFDS folder it
  # does not even import tensorflow_datasets.
  script = (
    "import sys\n"
    "from random_bases import data\n"
    "assert data.load_dataset('mnist', holdout='none').is_sample\n"
    "assert 'tensorflow_datasets' not in sys.modules\n"
  )
  env = {k: v for k, v in os.environ.items() if k != data.DATA_DIR_ENV_VAR}
  env.update(TFDS_DATA_DIR=str(tmp_path), JAX_PLATFORMS="cpu")
  subprocess.run([sys.executable, "-c", script], check=True, env=env)


# ----------------------------------------------------------------------------
# source="folder".
# ----------------------------------------------------------------------------


def _cifar_tree(root, **kw):
  """Writes a small CIFAR-10 tree; returns its splits in the reader's shuffled order."""
  written = data_fakes.write_image_tree(
    root, classes=data_fakes.CIFAR10_CLASSES, counts={"train": 2, "test": 1}, **kw
  )
  shuffled = {}
  for split, (images, labels) in written.items():
    order = readers.folder_split_order(len(labels))
    shuffled[split] = (images[order], labels[order])
  return shuffled


def test_folder_source_holdout_and_description(tmp_path):
  expected = _cifar_tree(tmp_path / "tree")
  ds = data.load_dataset(
    "cifar10",
    source="folder",
    data_dir=str(tmp_path / "tree"),
    holdout_size=5,
    cache_dir=str(tmp_path / "cache"),
  )
  assert ds.source == f"folder:{tmp_path / 'tree'}"
  # Written here, so no known release: the description says so.
  assert ds.description == (
    f"CIFAR-10 (unrecognised PNG images) from the image folder {tmp_path / 'tree'}"
  )
  # The same holdout as every other source.
  train_idx, held_idx = sources.holdout_indices(20, holdout_size=5)
  np.testing.assert_array_equal(ds.train_images, expected["train"][0][train_idx])
  np.testing.assert_array_equal(ds.eval_splits["validation"][1], expected["train"][1][held_idx])
  np.testing.assert_array_equal(ds.eval_splits["test"][0], expected["test"][0])
  # JPEG files are a lossy re-encoding, and the description says so.
  _cifar_tree(tmp_path / "jpeg", image_format="jpg")
  archive = data_fakes.write_tar_gz(tmp_path / "jpeg", tmp_path / "c.tar.gz")
  ds = data.load_dataset(
    "cifar10",
    source="folder",
    data_dir=str(archive),
    holdout="none",
    cache_dir=str(tmp_path / "cache"),
  )
  assert ds.description == (
    f"CIFAR-10 (unrecognised JPEG re-encoding) from the image folder {archive}"
  )


def test_folder_cache_round_trip_and_invalidation(tmp_path, monkeypatch, caplog):
  caplog.set_level(logging.INFO)
  _cifar_tree(tmp_path / "tree")
  archive = data_fakes.write_tar_gz(tmp_path / "tree", tmp_path / "c.tar.gz")
  monkeypatch.setenv(sources.CACHE_DIR_ENV_VAR, str(tmp_path / "cache"))
  first = data.load_dataset("cifar10", source="folder", data_dir=str(archive), holdout="none")
  assert len(list((tmp_path / "cache" / "image_folders").glob("*.npz"))) == 1

  def no_decoding(*args, **kwargs):
    raise AssertionError("decoded again despite the cache")

  with monkeypatch.context() as m:
    m.setattr(readers, "read_image_folder", no_decoding)
    cached = data.load_dataset("cifar10", source="folder", data_dir=str(archive), holdout="none")
  assert "read from the cache" in caplog.text
  assert cached.description == first.description
  np.testing.assert_array_equal(cached.train_images, first.train_images)
  np.testing.assert_array_equal(cached.eval_splits["test"][1], first.eval_splits["test"][1])
  # A changed archive (size or mtime) is decoded again, not served stale.
  new = _cifar_tree(tmp_path / "tree", seed=1)
  data_fakes.write_tar_gz(tmp_path / "tree", archive)
  changed = data.load_dataset("cifar10", source="folder", data_dir=str(archive), holdout="none")
  np.testing.assert_array_equal(changed.train_images, new["train"][0])


def test_folder_found_under_the_env_var_by_auto(tmp_path, monkeypatch, caplog):
  caplog.set_level(logging.INFO)
  _cifar_tree(tmp_path / "tree", image_format="jpg")
  (tmp_path / "root" / "cifar10-jpeg").mkdir(parents=True)
  archive = data_fakes.write_tar_gz(
    tmp_path / "tree", tmp_path / "root" / "cifar10-jpeg" / "cifar10-jpeg.tar.gz"
  )
  monkeypatch.setenv(data.DATA_DIR_ENV_VAR, str(tmp_path / "root"))
  monkeypatch.setenv(sources.CACHE_DIR_ENV_VAR, str(tmp_path / "cache"))
  ds = data.load_dataset("cifar10", holdout="none")
  assert ds.source == f"folder:{archive}"
  assert "chose 'folder' for cifar10: found an image folder under" in caplog.text
  assert data.load_dataset("cifar10", source="folder", holdout="none").source == ds.source


def test_folder_source_errors_name_the_path(tmp_path):
  with pytest.raises(ValueError, match=r"source='folder'.*not given, nor \$RANDOM_BASES_DATA_DIR"):
    data.load_dataset("cifar10", source="folder")
  with pytest.raises(ValueError, match=f"data_dir='{tmp_path}'.*train/<class>/"):
    data.load_dataset("cifar10", source="folder", data_dir=str(tmp_path))
  data_fakes.write_image_tree(tmp_path / "three", classes=("a", "b", "c"))
  with pytest.raises(ValueError, match=r"has the classes \['a', 'b', 'c'\]; expected \['airplane'"):
    data.load_dataset(
      "cifar10",
      source="folder",
      data_dir=str(tmp_path / "three"),
      cache_dir=str(tmp_path / "cache"),
    )
  data_fakes.write_image_tree(tmp_path / "grey", classes=("0", "1", "2"), shape=(28, 28, 1))
  with pytest.raises(ValueError, match=f"{tmp_path / 'grey'} has 3 classes"):
    data.load_dataset(
      "mnist", source="folder", data_dir=str(tmp_path / "grey"), cache_dir=str(tmp_path / "cache")
    )


@pytest.mark.slow
def test_shared_cifar10_jpeg_archive(tmp_path, caplog):
  caplog.set_level(logging.INFO)
  archive = reference.shared_dataset("cifar10-jpeg", "cifar10-jpeg.tar.gz")
  ds = data.load_dataset(
    "cifar10", source="folder", data_dir=str(archive), holdout="none", cache_dir=str(tmp_path)
  )
  # Recognised by content as the known export, so not labelled unrecognised.
  assert ds.release == "cifar10-jpeg"
  assert ds.description == f"CIFAR-10 (JPEG re-encoding) from the image folder {archive}"
  assert ds.train_images.shape == (50000, 32, 32, 3)
  assert ds.eval_splits["test"][0].shape == (10000, 32, 32, 3)
  assert np.bincount(ds.train_labels).tolist() == [5000] * 10
  assert np.bincount(ds.eval_splits["test"][1]).tolist() == [1000] * 10
  # Real CIFAR-10 pixels, in RGB order: the known channel means.
  means = ds.train_images.reshape(-1, 3).mean(axis=0) / 255.0
  np.testing.assert_allclose(means, CIFAR10_CHANNEL_MEANS, atol=0.005)
  again = data.load_dataset(
    "cifar10", source="folder", data_dir=str(archive), holdout="none", cache_dir=str(tmp_path)
  )
  assert "read from the cache" in caplog.text
  assert again.release == "cifar10-jpeg" and again.description == ds.description
  np.testing.assert_array_equal(again.train_images, ds.train_images)
  np.testing.assert_array_equal(again.eval_splits["test"][1], ds.eval_splits["test"][1])
