"""Tests for random_bases.input_pipeline (PAPER.md, "Data and training").

The real MNIST IDX files must be in <checkout>/../shared/datasets/mnist and Fashion-MNIST in
/usr/share/datasets/fashion-mnist (Debian package dataset-fashion-mnist); if either is
missing the tests fail rather than skip, because CI is meant to exercise the real readers.
"""

from __future__ import annotations

import dataclasses
import gzip
import logging
import os
import pathlib
import pickle

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from random_bases import input_pipeline as ip

MNIST_DIR = pathlib.Path(__file__).resolve().parents[1].parent / "shared" / "datasets" / "mnist"
FASHION_DIR = pathlib.Path("/usr/share/datasets/fashion-mnist")

MNIST_TRAIN_COUNTS = [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
MNIST_TEST_COUNTS = [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]


@pytest.fixture(autouse=True)
def _no_data_dir_env(monkeypatch):
    # A developer's own $RANDOM_BASES_DATA_DIR must not change what these tests see.
    monkeypatch.delenv(ip.DATA_DIR_ENV_VAR, raising=False)


@pytest.fixture(scope="module")
def mnist_raw():
    assert MNIST_DIR.is_dir(), f"real MNIST files are required at {MNIST_DIR}"
    return {split: ip.read_idx_split(MNIST_DIR, split) for split in ("train", "test")}


@pytest.fixture(scope="module")
def mnist_validation():
    return ip.load_dataset("mnist", source="files", data_dir=str(MNIST_DIR), holdout="validation",
                           holdout_seed=0)


def _row_hashes(images: np.ndarray) -> np.ndarray:
    """Sorted per-image byte strings, as a multiset fingerprint of a set of images."""
    flat = np.ascontiguousarray(images.reshape(len(images), -1))
    return np.sort(flat.view(np.dtype((np.void, flat.shape[1]))).ravel())


def _write_idx(path: pathlib.Path, array: np.ndarray, *, magic: bytes | None = None) -> None:
    array = np.asarray(array, dtype=np.uint8)
    header = magic if magic is not None else bytes([0, 0, 0x08, array.ndim])
    header += np.asarray(array.shape, dtype=">u4").tobytes()
    raw = header + array.tobytes()
    if path.name.endswith(".gz"):
        with gzip.open(path, "wb") as f:
            f.write(raw)
    else:
        path.write_bytes(raw)


def _write_fake_mnist(directory: pathlib.Path, *, num_train: int = 50, num_test: int = 20,
                      gz: bool = True) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    directory.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(123)
    suffix = ".gz" if gz else ""
    out = {}
    for split, n, prefix in (("train", num_train, "train"), ("test", num_test, "t10k")):
        images = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
        labels = rng.integers(0, 10, (n,), dtype=np.uint8)
        _write_idx(directory / f"{prefix}-images-idx3-ubyte{suffix}", images)
        _write_idx(directory / f"{prefix}-labels-idx1-ubyte{suffix}", labels)
        out[split] = (images, labels)
    return out


# ---------------------------------------------------------------------------------------
# IDX files.
# ---------------------------------------------------------------------------------------

def test_idx_reader_on_real_mnist(mnist_raw):
    (train_x, train_y), (test_x, test_y) = mnist_raw["train"], mnist_raw["test"]
    assert train_x.shape == (60000, 28, 28, 1) and test_x.shape == (10000, 28, 28, 1)
    assert train_x.dtype == np.uint8 and test_x.dtype == np.uint8
    assert train_y.dtype == np.int32 and test_y.dtype == np.int32
    assert np.bincount(train_y, minlength=10).tolist() == MNIST_TRAIN_COUNTS
    assert np.bincount(test_y, minlength=10).tolist() == MNIST_TEST_COUNTS
    # Real digits: black background, some fully white strokes.
    assert train_x[:, 0, 0, 0].max() == 0 and train_x.max() == 255


def test_load_mnist_validation_holdout(mnist_raw, mnist_validation):
    ds = mnist_validation
    assert ds.name == "mnist" and not ds.is_sample
    assert ds.source == f"files:{MNIST_DIR}"
    assert ds.num_classes == 10 and ds.image_shape == (28, 28, 1)
    assert list(ds.eval_splits) == ["validation", "test"]
    val_x, val_y = ds.eval_splits["validation"]
    test_x, test_y = ds.eval_splits["test"]
    assert ds.train_images.shape == (50000, 28, 28, 1) and len(ds.train_labels) == 50000
    assert val_x.shape == (10000, 28, 28, 1) and len(val_y) == 10000
    assert test_x.shape == (10000, 28, 28, 1) and len(test_y) == 10000
    for x, y in ((ds.train_images, ds.train_labels), (val_x, val_y), (test_x, test_y)):
        assert x.dtype == np.uint8 and y.dtype == np.int32
    # Disjoint by construction (indices) and, together, exactly the 60,000 training images.
    train_idx, val_idx = ip.holdout_indices(60000, holdout="validation", holdout_size=10000,
                                            holdout_seed=0)
    assert len(np.intersect1d(train_idx, val_idx)) == 0
    assert len(np.union1d(train_idx, val_idx)) == 60000
    np.testing.assert_array_equal(ds.train_images, mnist_raw["train"][0][train_idx])
    np.testing.assert_array_equal(val_y, mnist_raw["train"][1][val_idx])
    np.testing.assert_array_equal(
        _row_hashes(np.concatenate([ds.train_images, val_x])), _row_hashes(mnist_raw["train"][0]))
    np.testing.assert_array_equal(test_x, mnist_raw["test"][0])


def test_validation_holdout_is_deterministic_per_seed(mnist_validation):
    again = ip.load_dataset("mnist", source="files", data_dir=str(MNIST_DIR), holdout_seed=0)
    np.testing.assert_array_equal(again.eval_splits["validation"][0],
                                  mnist_validation.eval_splits["validation"][0])
    np.testing.assert_array_equal(again.train_labels, mnist_validation.train_labels)
    a0, b0 = ip.holdout_indices(60000, holdout_seed=0)
    a1, b1 = ip.holdout_indices(60000, holdout_seed=1)
    assert not np.array_equal(b0, b1)
    other = ip.load_dataset("mnist", source="files", data_dir=str(MNIST_DIR), holdout_seed=1)
    assert not np.array_equal(other.eval_splits["validation"][0],
                              mnist_validation.eval_splits["validation"][0])


def test_tune_and_none_holdouts():
    tune = ip.load_dataset("mnist", source="files", data_dir=str(MNIST_DIR), holdout="tune")
    assert list(tune.eval_splits) == ["heldout", "test"]
    assert len(tune.train_labels) == 45000 and len(tune.eval_splits["heldout"][1]) == 15000
    train_idx, held_idx = ip.holdout_indices(60000, holdout="tune", holdout_seed=0)
    assert len(np.intersect1d(train_idx, held_idx)) == 0 and len(train_idx) == 45000
    none = ip.load_dataset("mnist", source="files", data_dir=str(MNIST_DIR), holdout="none")
    assert list(none.eval_splits) == ["test"] and len(none.train_labels) == 60000
    assert np.bincount(none.train_labels).tolist() == MNIST_TRAIN_COUNTS


def test_fashion_mnist_found_by_itself():
    assert FASHION_DIR.is_dir(), (f"{FASHION_DIR} is required (Debian package "
                                  "dataset-fashion-mnist)")
    ds = ip.load_dataset("fashion_mnist", source="files", holdout="none")
    assert ds.source == f"files:{FASHION_DIR}"
    assert ds.train_images.shape == (60000, 28, 28, 1) and ds.train_images.dtype == np.uint8
    assert ds.eval_splits["test"][0].shape == (10000, 28, 28, 1)
    # Fashion-MNIST is balanced: 6,000 / 1,000 images per class.
    assert np.bincount(ds.train_labels).tolist() == [6000] * 10
    assert np.bincount(ds.eval_splits["test"][1]).tolist() == [1000] * 10


def test_env_var_subfolder_and_uncompressed_files(tmp_path, monkeypatch):
    fake = _write_fake_mnist(tmp_path / "mnist", gz=False)
    monkeypatch.setenv(ip.DATA_DIR_ENV_VAR, str(tmp_path))
    ds = ip.load_dataset("mnist", source="files", holdout="validation", holdout_size=10)
    assert ds.source == f"files:{tmp_path / 'mnist'}"
    assert len(ds.train_labels) == 40 and len(ds.eval_splits["validation"][1]) == 10
    np.testing.assert_array_equal(ds.eval_splits["test"][0][..., 0], fake["test"][0])
    # The files directly in the folder named by the variable work too.
    _write_fake_mnist(tmp_path / "flat", gz=True)
    monkeypatch.setenv(ip.DATA_DIR_ENV_VAR, str(tmp_path / "flat"))
    ds = ip.load_dataset("mnist", source="files", holdout="none")
    assert ds.source == f"files:{tmp_path / 'flat'}" and len(ds.train_labels) == 50


def test_missing_file_names_the_file(tmp_path):
    with pytest.raises(ValueError) as err:
        ip.load_dataset("mnist", source="files", data_dir=str(tmp_path))
    assert str(tmp_path / "train-images-idx3-ubyte.gz") in str(err.value)
    assert "yann.lecun.com" in str(err.value)
    _write_fake_mnist(tmp_path)
    (tmp_path / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(ValueError, match="t10k-labels-idx1-ubyte.gz"):
        ip.load_dataset("mnist", source="files", data_dir=str(tmp_path))
    with pytest.raises(ValueError, match="dataset-fashion-mnist"):
        ip.load_dataset("fashion_mnist", source="files", data_dir=str(tmp_path / "nothing"))
    with pytest.raises(ValueError, match="cifar-10-batches-py"):
        ip.load_dataset("cifar10", source="files", data_dir=str(tmp_path / "nothing"))


def test_corrupt_idx_files(tmp_path):
    bad_magic = tmp_path / "bad-magic-idx3-ubyte.gz"
    _write_idx(bad_magic, np.zeros((2, 28, 28)), magic=bytes([0, 0, 0x0D, 3]))
    with pytest.raises(ValueError, match="magic"):
        ip.read_idx(bad_magic)
    truncated = tmp_path / "truncated-idx1-ubyte"
    truncated.write_bytes(bytes([0, 0, 8, 1]) + np.asarray([100], ">u4").tobytes() + bytes(99))
    with pytest.raises(ValueError, match=str(truncated)):
        ip.read_idx(truncated)
    not_gzip = tmp_path / "garbage-idx1-ubyte.gz"
    not_gzip.write_bytes(b"this is not gzip data")
    with pytest.raises(ValueError, match="Cannot read"):
        ip.read_idx(not_gzip)
    # A corrupt file inside a dataset folder surfaces through load_dataset too.
    _write_fake_mnist(tmp_path / "ds")
    _write_idx(tmp_path / "ds" / "train-labels-idx1-ubyte.gz", np.zeros(50),
               magic=bytes([0, 0, 0x08, 3]))
    with pytest.raises(ValueError):
        ip.load_dataset("mnist", source="files", data_dir=str(tmp_path / "ds"))


# ---------------------------------------------------------------------------------------
# CIFAR-10 pickles.
# ---------------------------------------------------------------------------------------

def _cifar_pixel(n, row, col, channel):
    return (7 * n + 5 * row + 3 * col + 101 * channel) % 256


def _write_cifar(directory: pathlib.Path, per_batch: int = 10) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    n, c, r, w = np.meshgrid(np.arange(per_batch), np.arange(3), np.arange(32), np.arange(32),
                             indexing="ij")
    for b, name in enumerate([f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]):
        # Official layout: [N, 3072] rows holding the R, G, B planes, each row-major.
        data = _cifar_pixel(n + b * per_batch, r, w, c).astype(np.uint8).reshape(per_batch, 3072)
        labels = [int(i % 10) for i in range(b * per_batch, (b + 1) * per_batch)]
        with open(directory / name, "wb") as f:
            # Protocol 2 with bytes keys, like the Python 2 files CIFAR-10 ships.
            pickle.dump({b"batch_label": b"batch", b"data": data, b"labels": labels}, f, protocol=2)


def test_cifar_reader_layout(tmp_path):
    _write_cifar(tmp_path)
    images, labels = ip.read_cifar_batch(tmp_path / "data_batch_2")
    assert images.shape == (10, 32, 32, 3) and images.dtype == np.uint8 and labels.dtype == np.int32
    # Image 3 of batch 2 is image 13 overall; check a pixel of each channel.
    for row, col, ch in ((0, 0, 0), (5, 17, 1), (31, 2, 2)):
        assert images[3, row, col, ch] == _cifar_pixel(13, row, col, ch)
    assert labels.tolist() == [i % 10 for i in range(10, 20)]


@pytest.mark.parametrize("layout", ["flat", "subdir"])
def test_load_cifar_files(tmp_path, layout):
    _write_cifar(tmp_path / "cifar-10-batches-py" if layout == "subdir" else tmp_path)
    ds = ip.load_dataset("cifar10", source="files", data_dir=str(tmp_path), holdout_size=10)
    assert ds.image_shape == (32, 32, 3) and ds.num_classes == 10
    assert ds.train_images.shape == (40, 32, 32, 3)
    assert ds.eval_splits["validation"][0].shape == (10, 32, 32, 3)
    test_x, test_y = ds.eval_splits["test"]
    assert test_x.shape == (10, 32, 32, 3) and test_y.dtype == np.int32
    assert test_x[0, 1, 2, 1] == _cifar_pixel(50, 1, 2, 1)


def test_cifar_reader_refuses_code_in_pickles(tmp_path):
    class Evil:
        def __reduce__(self):
            return (os.getcwd, ())

    path = tmp_path / "data_batch_1"
    path.write_bytes(pickle.dumps({b"data": Evil(), b"labels": []}))
    with pytest.raises(ValueError, match="not allowed"):
        ip.read_cifar_batch(path)


# ---------------------------------------------------------------------------------------
# Argument checking, TFDS, sample, auto.
# ---------------------------------------------------------------------------------------

def test_unknown_arguments_list_allowed_values():
    with pytest.raises(ValueError, match="name='svhn'.*mnist, fashion_mnist, cifar10"):
        ip.load_dataset("svhn")
    with pytest.raises(ValueError, match="source='web'.*auto, tfds, files, sample"):
        ip.load_dataset("mnist", source="web")
    with pytest.raises(ValueError, match="holdout='half'.*validation, tune, none"):
        ip.load_dataset("mnist", holdout="half")
    with pytest.raises(ValueError, match="dataset='svhn'"):
        ip.preprocess_eval_batch(jnp.zeros((1, 28, 28, 1)), dataset="svhn")
    with pytest.raises(ValueError, match="only available for mnist"):
        ip.load_dataset("cifar10", source="sample")


def test_tfds_source_with_mock_data(tmp_path):
    import tensorflow_datasets as tfds

    with tfds.testing.mock_data(num_examples=64):
        ds = ip.load_dataset("mnist", source="tfds", holdout_size=16)
    assert ds.source == "tfds" and not ds.is_sample
    assert ds.train_images.shape == (48, 28, 28, 1) and ds.train_images.dtype == np.uint8
    assert ds.train_labels.shape == (48,) and ds.train_labels.dtype == np.int32
    assert ds.eval_splits["validation"][0].shape == (16, 28, 28, 1)
    test_x, test_y = ds.eval_splits["test"]
    assert test_x.shape == (64, 28, 28, 1) and test_x.dtype == np.uint8 and test_y.dtype == np.int32
    # Outside the mock nothing is prepared in an empty data_dir, and nothing is downloaded.
    with pytest.raises(ValueError, match="not available locally"):
        ip.load_dataset("mnist", source="tfds", data_dir=str(tmp_path))
    assert not ip._tfds_is_prepared("mnist", str(tmp_path))


def test_sample_source(mnist_raw, caplog):
    caplog.set_level(logging.INFO, logger=ip.__name__)
    ds = ip.load_dataset("mnist", source="sample", holdout="none")
    assert ds.is_sample and "sample" in ds.source and "NOT the full dataset" in ds.source
    assert ds.train_images.shape == (2000, 28, 28, 1) and ds.train_images.dtype == np.uint8
    assert ds.train_labels.dtype == np.int32
    assert ds.eval_splits["test"][0].shape == (1000, 28, 28, 1)
    assert "SAMPLE" in caplog.text
    # The sample is real MNIST: every image is the full-dataset image at its stored index.
    with np.load(ip.SAMPLE_PATH) as npz:
        np.testing.assert_array_equal(npz["train_images"], mnist_raw["train"][0][npz["train_indices"]])
        np.testing.assert_array_equal(npz["test_labels"], mnist_raw["test"][1][npz["test_indices"]])
    caplog.clear()
    val = ip.load_dataset("mnist", source="sample")
    assert len(val.eval_splits["validation"][1]) == 400 and len(val.train_labels) == 1600
    assert "clipped to 400" in caplog.text


def test_make_sample_regenerates_the_shipped_file(tmp_path):
    import importlib.util

    script = pathlib.Path(ip.__file__).parent / "sample_data" / "make_sample.py"
    spec = importlib.util.spec_from_file_location("make_sample", script)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.main(["--mnist-dir", str(MNIST_DIR), "--out", str(tmp_path / "s.npz")])
    with np.load(tmp_path / "s.npz") as new, np.load(ip.SAMPLE_PATH) as shipped:
        assert sorted(new.files) == sorted(shipped.files)
        for k in new.files:
            np.testing.assert_array_equal(new[k], shipped[k])


def test_auto_source(monkeypatch, caplog, tmp_path):
    caplog.set_level(logging.INFO, logger=ip.__name__)
    monkeypatch.setattr(ip, "_tfds_is_prepared", lambda name, data_dir: False)
    ds = ip.load_dataset("mnist", source="auto", data_dir=str(MNIST_DIR), holdout="none")
    assert ds.source == f"files:{MNIST_DIR}" and "chose 'files'" in caplog.text
    # Nothing anywhere: MNIST falls back to the sample (loudly), other datasets raise.
    monkeypatch.setitem(ip._INFO, "mnist", dataclasses.replace(ip._INFO["mnist"], known_dirs=()))
    monkeypatch.setitem(ip._INFO, "cifar10", dataclasses.replace(ip._INFO["cifar10"],
                                                                 known_dirs=(str(tmp_path),)))
    caplog.clear()
    assert ip.load_dataset("mnist", holdout="none").is_sample
    assert "chose 'sample'" in caplog.text and "NOT the full dataset" in caplog.text
    with pytest.raises(ValueError, match=f"found no data for 'cifar10'.*{tmp_path}"):
        ip.load_dataset("cifar10")
    # An explicit but wrong data_dir is an error, not a silent switch to the sample.
    with pytest.raises(ValueError, match="found no data for 'mnist'"):
        ip.load_dataset("mnist", data_dir=str(tmp_path))


# ---------------------------------------------------------------------------------------
# Preprocessing and augmentation.
# ---------------------------------------------------------------------------------------

def _np_standardize(x):
    mean = x.mean(axis=(1, 2, 3), keepdims=True)
    std = x.std(axis=(1, 2, 3), keepdims=True)
    return (x - mean) / np.maximum(std, 1.0 / np.sqrt(x[0].size))


def _np_augment(images, params, dataset):
    """Independent NumPy version of the augmentation, given the drawn parameters."""
    pad = 4 if dataset == "cifar10" else 3
    x = images.astype(np.float32) / 255.0
    n, h, w, _ = x.shape
    padded = np.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
    offsets = np.asarray(params["offsets"])
    out = np.stack([padded[i, oy:oy + h, ox:ox + w] for i, (oy, ox) in enumerate(offsets)])
    if dataset == "cifar10":
        flip = np.asarray(params["flip"])
        out = np.where(flip[:, None, None, None], out[:, :, ::-1], out)
        return _np_standardize(out)
    return out + np.asarray(params["brightness"])[:, None, None, None]


@pytest.mark.parametrize("dataset,shape", [("mnist", (28, 28, 1)), ("fashion_mnist", (28, 28, 1)),
                                           ("cifar10", (32, 32, 3))])
def test_train_preprocessing_matches_reference(dataset, shape):
    images = np.random.default_rng(0).integers(0, 256, (16, *shape), dtype=np.uint8)
    key = jax.random.key(3)
    out = ip.preprocess_train_batch(key, images, dataset=dataset)
    assert out.shape == (16, *shape) and out.dtype == jnp.float32
    params = ip.sample_augmentation(key, 16, dataset=dataset)
    np.testing.assert_allclose(out, _np_augment(images, params, dataset), atol=2e-5)
    jitted = jax.jit(ip.preprocess_train_batch, static_argnames="dataset")
    np.testing.assert_allclose(jitted(key, images, dataset=dataset), out, atol=1e-5)
    # Float input in [0, 1] is treated like the equivalent uint8 input.
    as_float = ip.preprocess_train_batch(key, images.astype(np.float32) / 255.0, dataset=dataset)
    np.testing.assert_allclose(as_float, out, atol=1e-5)


def test_augmentation_parameters_ranges():
    key = jax.random.key(0)
    mnist = ip.sample_augmentation(key, 4000, dataset="mnist")
    offsets = np.asarray(mnist["offsets"])
    assert offsets.dtype == np.int32 and offsets.min() == 0 and offsets.max() == 6
    assert set(np.unique(offsets)) == set(range(7))  # every offset in [0, 2*pad] is used
    delta = np.asarray(mnist["brightness"])
    assert delta.min() >= -0.5 and delta.max() <= 0.5
    assert delta.min() < -0.45 and delta.max() > 0.45 and abs(delta.mean()) < 0.03
    cifar = ip.sample_augmentation(key, 4000, dataset="cifar10")
    assert set(np.unique(np.asarray(cifar["offsets"]))) == set(range(9))
    assert 0.45 < np.asarray(cifar["flip"]).mean() < 0.55
    crop = np.asarray(ip.augment_crop_offsets(key, 1000, max_offset=2))
    assert crop.shape == (1000, 2) and set(np.unique(crop)) == {0, 1, 2}


def test_mnist_augmentation_from_outputs_alone():
    # One lit pixel at (14, 14): after padding by 3 it sits at (17, 17), so a crop at offset
    # (oy, ox) moves it to (17 - oy, 17 - ox). Black pixels show the brightness delta.
    images = np.zeros((512, 28, 28, 1), np.uint8)
    images[:, 14, 14, 0] = 255
    out = np.asarray(ip.preprocess_train_batch(jax.random.key(7), images, dataset="mnist"))
    delta = out[:, 0, 0, 0]
    # Every black pixel shifts by the same per-image delta; no clipping, so the lit pixel is
    # 1 + delta even above 1.
    np.testing.assert_allclose(np.sort(out.reshape(512, -1), axis=1)[:, :-1], delta[:, None] +
                               np.zeros((1, 28 * 28 - 1)), atol=1e-6)
    assert delta.min() >= -0.5 and delta.max() <= 0.5 and out.max() > 1.0 and out.min() < 0.0
    flat_pos = out.reshape(512, -1).argmax(axis=1)
    offsets = np.stack([17 - flat_pos // 28, 17 - flat_pos % 28], axis=1)
    assert offsets.min() == 0 and offsets.max() == 6
    np.testing.assert_allclose(out.max(axis=(1, 2, 3)), 1.0 + delta, atol=1e-6)


def test_cifar_flips_and_standardization():
    rng = np.random.default_rng(1)
    images = rng.integers(0, 256, (256, 32, 32, 3), dtype=np.uint8)
    key = jax.random.key(11)
    out = np.asarray(ip.preprocess_train_batch(key, images, dataset="cifar10"))
    np.testing.assert_allclose(out.mean(axis=(1, 2, 3)), 0.0, atol=1e-4)
    np.testing.assert_allclose(out.std(axis=(1, 2, 3)), 1.0, atol=1e-3)
    # Decide from the outputs which images were flipped: about half should be.
    params = ip.sample_augmentation(key, 256, dataset="cifar10")
    unflipped = _np_augment(images, {**params, "flip": np.zeros(256, bool)}, "cifar10")
    flipped = _np_augment(images, {**params, "flip": np.ones(256, bool)}, "cifar10")
    is_unflipped = np.all(np.abs(out - unflipped) < 1e-4, axis=(1, 2, 3))
    is_flipped = np.all(np.abs(out - flipped) < 1e-4, axis=(1, 2, 3))
    assert np.all(is_flipped ^ is_unflipped)
    assert 0.35 < is_flipped.mean() < 0.65
    # Constant images stay finite (std is floored as in tf.image.per_image_standardization).
    const = ip.preprocess_eval_batch(np.full((2, 32, 32, 3), 7, np.uint8), dataset="cifar10")
    np.testing.assert_allclose(const, 0.0, atol=1e-6)


def test_standardization_matches_tensorflow():
    import tensorflow as tf

    x = np.random.default_rng(2).random((4, 32, 32, 3), dtype=np.float32)
    x[0] = 0.25  # constant image: exercises the std floor
    expected = tf.image.per_image_standardization(x).numpy()
    np.testing.assert_allclose(ip.per_image_standardization(jnp.asarray(x)), expected, atol=1e-5)


def test_determinism_per_key():
    images = np.random.default_rng(4).integers(0, 256, (32, 32, 32, 3), dtype=np.uint8)
    for dataset, imgs in (("mnist", images[..., :1][:, :28, :28]), ("cifar10", images)):
        a = ip.preprocess_train_batch(jax.random.key(5), imgs, dataset=dataset)
        b = ip.preprocess_train_batch(jax.random.key(5), imgs, dataset=dataset)
        c = ip.preprocess_train_batch(jax.random.key(6), imgs, dataset=dataset)
        np.testing.assert_array_equal(a, b)
        assert not np.allclose(a, c)


def test_eval_preprocessing_is_deterministic():
    images = np.random.default_rng(5).integers(0, 256, (8, 28, 28, 1), dtype=np.uint8)
    out = np.asarray(ip.preprocess_eval_batch(images, dataset="mnist"))
    assert out.dtype == np.float32 and out.min() >= 0.0 and out.max() <= 1.0
    np.testing.assert_allclose(out, images.astype(np.float32) / 255.0, rtol=1e-6)
    np.testing.assert_array_equal(ip.preprocess_eval_batch(images, dataset="fashion_mnist"), out)
    cifar = np.random.default_rng(6).integers(0, 256, (8, 32, 32, 3), dtype=np.uint8)
    a = np.asarray(ip.preprocess_eval_batch(cifar, dataset="cifar10"))
    b = np.asarray(jax.jit(ip.preprocess_eval_batch, static_argnames="dataset")(cifar,
                                                                                dataset="cifar10"))
    np.testing.assert_allclose(a, b, atol=1e-6)
    np.testing.assert_allclose(a, _np_standardize(cifar.astype(np.float32) / 255.0), atol=1e-5)
