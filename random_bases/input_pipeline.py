"""Data layer: loading MNIST, Fashion-MNIST and CIFAR-10, and batch preprocessing.

This module implements the "Data and training" section of PAPER.md:

* The datasets are MNIST, Fashion-MNIST and CIFAR-10 with pixels scaled to [0, 1].
* "Validation accuracy" is measured on a held-out block of the *training* set as large as
  the test set (10,000 images), so training uses 50,000 images for (F)MNIST and 40,000 for
  CIFAR-10 (``holdout="validation"``). The test split is reported as well.
* Learning-rate tuning trains on a random 75 % of the training set and evaluates on the
  other 25 % (``holdout="tune"``).
* Augmentation per training mini-batch: (F)MNIST is padded to 34x34 (3 px per side),
  randomly cropped back to 28x28 and given a random brightness shift with max delta 0.5,
  without clipping. CIFAR-10 is padded to 40x40, randomly cropped to 32x32 and randomly
  flipped left-right. CIFAR-10 images of every split are then standardised per image.

Loading happens once, on the host, in NumPy (``load_dataset``); the per-batch work is pure
JAX and jittable (``preprocess_train_batch`` / ``preprocess_eval_batch``), so the trainer
can fuse it into its compiled step. Data can come from three places:

* ``"tfds"``: TensorFlow Datasets, never downloading (the machines may be offline).
* ``"files"``: the raw files the dataset authors publish (IDX ``.gz`` for (F)MNIST, the
  python pickles for CIFAR-10), found via ``data_dir``, ``$RANDOM_BASES_DATA_DIR`` or a few
  well-known places (e.g. Debian's ``dataset-fashion-mnist`` package).
* ``"sample"``: 2,000 train / 1,000 test real MNIST images shipped inside the package, so
  that the code runs anywhere. It is *not* the full dataset, and the log says so.

``"auto"`` tries them in that order. Layering: this module depends only on NumPy and JAX
(TensorFlow Datasets is imported lazily, inside the tfds code path); it never reads a
config object, every option is an explicit keyword argument.
"""

from __future__ import annotations

import dataclasses
import gzip
import logging
import os
import pathlib
import pickle
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

logger = logging.getLogger(__name__)

__all__ = [
    "DATASET_NAMES",
    "SOURCES",
    "SPLITS",
    "DATA_DIR_ENV_VAR",
    "SAMPLE_PATH",
    "Dataset",
    "load_dataset",
    "holdout_indices",
    "read_idx",
    "read_idx_split",
    "read_cifar_batch",
    "read_cifar10",
    "to_unit_float",
    "per_image_standardization",
    "augment_crop_offsets",
    "pad_and_crop",
    "sample_augmentation",
    "apply_augmentation",
    "preprocess_train_batch",
    "preprocess_eval_batch",
]

DATASET_NAMES = ("mnist", "fashion_mnist", "cifar10")
SOURCES = ("auto", "tfds", "files", "sample")
SPLITS = ("validation", "tune", "none")  # holdout schemes

DATA_DIR_ENV_VAR = "RANDOM_BASES_DATA_DIR"

# Fraction of the training set kept for training when tuning learning rates (PAPER.md:
# "trained on a random 75 % of the training set, pick the lowest loss on the held-out 25 %").
TUNE_TRAIN_FRACTION = 0.75

# The shipped sample is small; a 10,000-image holdout would swallow all of it, so the
# holdout is capped at this fraction of the sample's training images.
SAMPLE_MAX_HOLDOUT_FRACTION = 0.2

SAMPLE_PATH = pathlib.Path(__file__).resolve().parent / "sample_data" / "mnist_sample.npz"

# Padding per side for the random crop (PAPER.md: 28 -> 34 for (F)MNIST, 32 -> 40 for CIFAR-10).
_CROP_PAD = {"mnist": 3, "fashion_mnist": 3, "cifar10": 4}
# Max brightness delta for (F)MNIST (PAPER.md: "random brightness with max delta 0.5").
_MAX_BRIGHTNESS_DELTA = 0.5

_IDX_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
_CIFAR_TRAIN_BATCHES = tuple(f"data_batch_{i}" for i in range(1, 6))
_CIFAR_TEST_BATCH = "test_batch"
_CIFAR_SUBDIR = "cifar-10-batches-py"


@dataclasses.dataclass(frozen=True)
class _DatasetInfo:
    tfds_name: str
    image_shape: tuple[int, int, int]
    num_classes: int
    file_format: str  # "idx" or "cifar"
    # Sub-folder names tried under $RANDOM_BASES_DATA_DIR.
    subdirs: tuple[str, ...]
    # Folders searched when neither data_dir nor the environment variable says where.
    known_dirs: tuple[str, ...]
    how_to_get: str


def _project_shared_dir(*parts: str) -> str:
    # For a source checkout laid out as <root>/main (this repo) next to <root>/shared, the
    # project keeps real datasets in <root>/shared/datasets. Harmless when it does not exist.
    checkout_parent = pathlib.Path(__file__).resolve().parents[1].parent
    return str(checkout_parent.joinpath("shared", "datasets", *parts))


_INFO = {
    "mnist": _DatasetInfo(
        tfds_name="mnist",
        image_shape=(28, 28, 1),
        num_classes=10,
        file_format="idx",
        subdirs=("mnist", "MNIST"),
        known_dirs=(_project_shared_dir("mnist"),),
        how_to_get=(
            "Download the four IDX .gz files from the MNIST homepage "
            "(http://yann.lecun.com/exdb/mnist/, by Yann LeCun, Corinna Cortes and "
            "Christopher J.C. Burges) into that folder, or prepare the TFDS dataset 'mnist' "
            "on a machine with internet access (tfds.builder('mnist').download_and_prepare()), "
            "or use source='sample' for the small MNIST sample shipped with random_bases."
        ),
    ),
    "fashion_mnist": _DatasetInfo(
        tfds_name="fashion_mnist",
        image_shape=(28, 28, 1),
        num_classes=10,
        file_format="idx",
        subdirs=("fashion_mnist", "fashion-mnist"),
        known_dirs=("/usr/share/datasets/fashion-mnist", _project_shared_dir("fashion_mnist"),
                    _project_shared_dir("fashion-mnist")),
        how_to_get=(
            "On Debian/Ubuntu install the package 'dataset-fashion-mnist' "
            "(apt-get install dataset-fashion-mnist; it puts the files in "
            "/usr/share/datasets/fashion-mnist), or download the four IDX .gz files from "
            "https://github.com/zalandoresearch/fashion-mnist, or prepare the TFDS dataset "
            "'fashion_mnist' (tfds.builder('fashion_mnist').download_and_prepare())."
        ),
    ),
    "cifar10": _DatasetInfo(
        tfds_name="cifar10",
        image_shape=(32, 32, 3),
        num_classes=10,
        file_format="cifar",
        subdirs=("cifar10", "cifar-10", _CIFAR_SUBDIR),
        known_dirs=(_project_shared_dir("cifar10"),),
        how_to_get=(
            "Download and unpack the CIFAR-10 python version (cifar-10-python.tar.gz) from "
            "https://www.cs.toronto.edu/~kriz/cifar.html so that the folder "
            "cifar-10-batches-py/ (data_batch_1..5, test_batch) is there, or prepare the TFDS "
            "dataset 'cifar10' (tfds.builder('cifar10').download_and_prepare())."
        ),
    ),
}


@dataclasses.dataclass(frozen=True)
class Dataset:
    """A dataset held in host memory, split for training and evaluation.

    Attributes:
      name: one of DATASET_NAMES.
      source: where the data came from, in words (e.g. "files:/usr/share/datasets/fashion-mnist").
      is_sample: True for the small sample shipped with the package (not the full dataset).
      train_images: uint8 [N, H, W, C].
      train_labels: int32 [N].
      eval_splits: split name -> (uint8 images, int32 labels), e.g. "validation" and "test".
      num_classes: number of classes.
      image_shape: (H, W, C).
    """

    name: str
    source: str
    is_sample: bool
    train_images: np.ndarray
    train_labels: np.ndarray
    eval_splits: dict[str, tuple[np.ndarray, np.ndarray]]
    num_classes: int
    image_shape: tuple[int, int, int]


def _check_choice(argument: str, value: Any, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ValueError(f"Unknown {argument}={value!r}; allowed values: {', '.join(allowed)}.")


# --------------------------------------------------------------------------------------
# Raw file readers.
# --------------------------------------------------------------------------------------

# IDX magic: two zero bytes, a type code (0x08 = unsigned byte) and the number of dimensions.
_IDX_UBYTE = 0x08


def read_idx(path: str | os.PathLike[str], *, expected_ndim: int | None = None) -> np.ndarray:
    """Reads an IDX file (optionally gzip-compressed) of unsigned bytes into a uint8 array.

    Raises ValueError naming the file if it is missing, unreadable, has a wrong magic number,
    or its payload does not match the sizes in its header.
    """
    path = pathlib.Path(path)
    if not path.is_file():
        raise ValueError(f"IDX file not found: {path}")
    try:
        if path.name.endswith(".gz"):
            with gzip.open(path, "rb") as f:
                raw = f.read()
        else:
            raw = path.read_bytes()
    except (OSError, EOFError) as e:  # gzip.BadGzipFile is an OSError; truncation is EOFError.
        raise ValueError(f"Cannot read IDX file {path}: {e}") from e
    if len(raw) < 4:
        raise ValueError(f"Corrupt IDX file {path}: only {len(raw)} bytes.")
    zero0, zero1, dtype_code, ndim = raw[0], raw[1], raw[2], raw[3]
    if zero0 != 0 or zero1 != 0 or dtype_code != _IDX_UBYTE or ndim == 0:
        raise ValueError(
            f"Corrupt IDX file {path}: bad magic number 0x{raw[:4].hex()} "
            "(expected 0x0000080N for an unsigned-byte array of N dimensions).")
    if expected_ndim is not None and ndim != expected_ndim:
        raise ValueError(f"Corrupt IDX file {path}: {ndim} dimensions, expected {expected_ndim}.")
    header_len = 4 + 4 * ndim
    if len(raw) < header_len:
        raise ValueError(f"Corrupt IDX file {path}: truncated header.")
    shape = tuple(int(d) for d in np.frombuffer(raw, dtype=">u4", count=ndim, offset=4))
    expected_len = header_len + int(np.prod(shape))
    if len(raw) != expected_len:
        raise ValueError(
            f"Corrupt IDX file {path}: header says shape {shape} ({expected_len} bytes in all) "
            f"but the file has {len(raw)} bytes.")
    return np.frombuffer(raw, dtype=np.uint8, offset=header_len).reshape(shape)


def _idx_path(directory: pathlib.Path, stem: str) -> pathlib.Path:
    """The existing variant of an IDX file in `directory`; the canonical .gz name if none."""
    # Mirrors ship ".gz", uncompressed, and the "train-images.idx3-ubyte" spelling.
    dotted = stem.replace("-idx", ".idx")
    for candidate in (stem + ".gz", stem, dotted + ".gz", dotted):
        if (directory / candidate).is_file():
            return directory / candidate
    return directory / (stem + ".gz")


def read_idx_split(directory: str | os.PathLike[str], split: str, *, num_classes: int = 10,
                   image_hw: tuple[int, int] = (28, 28)) -> tuple[np.ndarray, np.ndarray]:
    """Reads the "train" or "test" split of an IDX dataset: uint8 [N, H, W, 1], int32 [N]."""
    directory = pathlib.Path(directory)
    images_stem, labels_stem = _IDX_FILES[split]
    images = read_idx(_idx_path(directory, images_stem), expected_ndim=3)
    labels_path = _idx_path(directory, labels_stem)
    labels = read_idx(labels_path, expected_ndim=1)
    if images.shape[1:] != tuple(image_hw):
        raise ValueError(f"Unexpected image size {images.shape[1:]} in {directory}/{images_stem}*, "
                         f"expected {tuple(image_hw)}.")
    if images.shape[0] != labels.shape[0]:
        raise ValueError(f"{images.shape[0]} images but {labels.shape[0]} labels for split "
                         f"{split!r} in {directory}.")
    if labels.size and labels.max() >= num_classes:
        raise ValueError(f"Corrupt labels in {labels_path}: found label {labels.max()}, "
                         f"expected < {num_classes}.")
    return images[..., None], labels.astype(np.int32)


class _NumpyOnlyUnpickler(pickle.Unpickler):
    """Unpickler that rebuilds NumPy arrays and nothing else.

    The CIFAR-10 batches are pickles; unpickling runs arbitrary code named in the file, so a
    tampered file could execute anything. Only the few globals that an ndarray pickle needs
    are allowed.
    """

    _ALLOWED = {
        ("_codecs", "encode"),  # bytes pickled by Python 3 at protocol < 3.
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy.core.multiarray", "scalar"),
        ("numpy._core.multiarray", "scalar"),
        ("numpy.core.numeric", "_frombuffer"),  # protocol 5 out-of-band buffers.
        ("numpy._core.numeric", "_frombuffer"),
    }

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in self._ALLOWED:
            raise pickle.UnpicklingError(f"global {module}.{name} is not allowed in a CIFAR batch")
        return super().find_class(module, name)


def read_cifar_batch(path: str | os.PathLike[str]) -> tuple[np.ndarray, np.ndarray]:
    """Reads one CIFAR-10 python batch: uint8 [N, 32, 32, 3] (NHWC), int32 [N].

    The official layout is a pickled dict with b"data" (uint8 [N, 3072]: the 1024 red, then
    1024 green, then 1024 blue values of each image, each plane row-major) and b"labels".
    """
    path = pathlib.Path(path)
    if not path.is_file():
        raise ValueError(f"CIFAR-10 batch file not found: {path}")
    try:
        with open(path, "rb") as f:
            # The official files were written by Python 2; "bytes" keeps their str keys as bytes.
            batch = _NumpyOnlyUnpickler(f, encoding="bytes").load()
    except Exception as e:  # Any unpickling failure means the file is unusable.
        raise ValueError(f"Cannot read CIFAR-10 batch {path}: {e}") from e
    if not isinstance(batch, dict):
        raise ValueError(f"Corrupt CIFAR-10 batch {path}: expected a dict, "
                         f"got {type(batch).__name__}.")
    # Accept str keys too, for batches re-pickled by Python 3 code.
    data = batch.get(b"data", batch.get("data"))
    labels = batch.get(b"labels", batch.get("labels"))
    if data is None or labels is None:
        raise ValueError(f"Corrupt CIFAR-10 batch {path}: missing 'data' or 'labels'.")
    data = np.asarray(data)
    labels = np.asarray(labels)
    if data.ndim != 2 or data.shape[1] != 32 * 32 * 3 or data.shape[0] != labels.shape[0]:
        raise ValueError(f"Corrupt CIFAR-10 batch {path}: data shape {data.shape}, "
                         f"{labels.shape[0]} labels (expected [N, 3072] and N labels).")
    if data.dtype != np.uint8:
        raise ValueError(f"Corrupt CIFAR-10 batch {path}: data dtype {data.dtype}, expected uint8.")
    if labels.size and (labels.min() < 0 or labels.max() >= 10):
        raise ValueError(f"Corrupt CIFAR-10 batch {path}: labels outside [0, 10).")
    # [N, 3072] -> [N, C, H, W] (channel planes) -> [N, H, W, C].
    images = data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
    return np.ascontiguousarray(images), labels.astype(np.int32)


def _cifar_dir(directory: pathlib.Path) -> pathlib.Path:
    """`directory` itself if it holds the batches, else its cifar-10-batches-py sub-folder."""
    if (directory / _CIFAR_TEST_BATCH).is_file() or not (directory / _CIFAR_SUBDIR).is_dir():
        return directory
    return directory / _CIFAR_SUBDIR


def read_cifar10(directory: str | os.PathLike[str]) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Reads the CIFAR-10 python batches in `directory` (or its cifar-10-batches-py/)."""
    directory = _cifar_dir(pathlib.Path(directory))
    train = [read_cifar_batch(directory / name) for name in _CIFAR_TRAIN_BATCHES]
    test = read_cifar_batch(directory / _CIFAR_TEST_BATCH)
    return {
        "train": (np.concatenate([x for x, _ in train]), np.concatenate([y for _, y in train])),
        "test": test,
    }


def _required_files(name: str, directory: pathlib.Path) -> list[pathlib.Path]:
    if _INFO[name].file_format == "idx":
        return [_idx_path(directory, stem) for pair in _IDX_FILES.values() for stem in pair]
    directory = _cifar_dir(directory)
    return [directory / n for n in (*_CIFAR_TRAIN_BATCHES, _CIFAR_TEST_BATCH)]


def _has_any_file(name: str, directory: pathlib.Path) -> bool:
    return any(p.is_file() for p in _required_files(name, directory))


def _candidate_dirs(name: str, data_dir: str | None) -> list[pathlib.Path]:
    """Folders to look in for raw files, in search order."""
    info = _INFO[name]
    if data_dir is not None:
        # An explicit data_dir is a statement of intent: look nowhere else.
        roots = [pathlib.Path(data_dir)]
        known: tuple[str, ...] = ()
    else:
        env = os.environ.get(DATA_DIR_ENV_VAR)
        roots = [pathlib.Path(env)] if env else []
        known = info.known_dirs
    dirs = []
    for root in roots:
        # Files lying in the root itself first (data_dir usually names the dataset's own
        # folder), then per-dataset sub-folders (one root shared by several datasets).
        dirs.append(root)
        dirs.extend(root / sub for sub in info.subdirs)
    dirs.extend(pathlib.Path(d) for d in known)
    return dirs


def _find_files_dir(name: str, data_dir: str | None) -> pathlib.Path | None:
    for directory in _candidate_dirs(name, data_dir):
        if directory.is_dir() and _has_any_file(name, directory):
            return directory
    return None


def _missing_files_message(name: str, data_dir: str | None) -> str:
    dirs = _candidate_dirs(name, data_dir)
    first_missing = _required_files(name, dirs[0])[0] if dirs else None
    looked = ", ".join(str(d) for d in dirs) or "(nowhere)"
    if data_dir is not None:
        where = f"data_dir={data_dir!r}"
    elif os.environ.get(DATA_DIR_ENV_VAR):
        where = (f"${DATA_DIR_ENV_VAR} (per-dataset sub-folder or the folder itself) and "
                 "known places")
    else:
        where = f"known places (${DATA_DIR_ENV_VAR} is not set)"
    return (f"no raw files for dataset {name!r}: {first_missing} not found. Looked in {where}: "
            f"{looked}. {_INFO[name].how_to_get}")


def _load_files(name: str, directory: pathlib.Path) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    info = _INFO[name]
    for path in _required_files(name, directory):
        if not path.is_file():
            raise ValueError(f"Dataset {name!r}: file {path} is missing. {info.how_to_get}")
    if info.file_format == "idx":
        return {split: read_idx_split(directory, split, num_classes=info.num_classes,
                                      image_hw=info.image_shape[:2])
                for split in ("train", "test")}
    return read_cifar10(directory)


# --------------------------------------------------------------------------------------
# TensorFlow Datasets.
# --------------------------------------------------------------------------------------

def _tfds_is_prepared(name: str, data_dir: str | None) -> bool:
    """Whether TFDS has `name` prepared locally; never downloads, never raises."""
    try:
        import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
    except ImportError:
        logger.debug("tensorflow_datasets is not installed; skipping TFDS for %s.", name)
        return False
    try:
        return bool(tfds.builder(_INFO[name].tfds_name, data_dir=data_dir).is_prepared())
    except Exception as e:  # pylint: disable=broad-except
        # "auto" must fall through to other sources whatever TFDS complains about.
        logger.debug("TFDS check for %s failed: %s", name, e)
        return False


def _load_tfds(name: str, data_dir: str | None) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    try:
        import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
    except ImportError as e:
        raise ValueError("source='tfds' needs the tensorflow-datasets package "
                         "(pip install tensorflow-datasets tensorflow-cpu).") from e
    info = _INFO[name]
    kwargs = {} if data_dir is None else {"data_dir": data_dir}
    out = {}
    for split in ("train", "test"):
        try:
            # download=False: the machines this runs on may be offline, and a silent multi-GB
            # download is never what a training run should do.
            ds = tfds.load(info.tfds_name, split=split, as_supervised=True, download=False,
                           **kwargs)
        except Exception as e:  # TFDS signals missing data with AssertionError, among others.
            raise ValueError(
                f"TFDS dataset {info.tfds_name!r} (split {split!r}) is not available locally "
                f"(data_dir={data_dir!r}; downloading is disabled): {e}. {info.how_to_get}") from e
        # Fixed-size batches rather than batch_size=-1: the latter needs the split size from
        # the dataset metadata, which is not always present (e.g. under tfds.testing.mock_data).
        images, labels = [], []
        for x, y in tfds.as_numpy(ds.batch(10_000)):
            images.append(np.asarray(x, dtype=np.uint8))
            labels.append(np.asarray(y, dtype=np.int32))
        if not images:
            raise ValueError(f"TFDS dataset {info.tfds_name!r} split {split!r} is empty.")
        x = np.concatenate(images)
        if x.shape[1:] != info.image_shape:
            raise ValueError(f"TFDS dataset {info.tfds_name!r} has images of shape {x.shape[1:]}, "
                             f"expected {info.image_shape}.")
        out[split] = (x, np.concatenate(labels))
    return out


# --------------------------------------------------------------------------------------
# Shipped sample.
# --------------------------------------------------------------------------------------

def _sample_description(num_train: int, num_test: int) -> str:
    return (f"sample ({num_train:,} train / {num_test:,} test MNIST images shipped with the "
            "package; NOT the full dataset)")


def _load_sample() -> dict[str, tuple[np.ndarray, np.ndarray]]:
    if not SAMPLE_PATH.is_file():
        raise ValueError(f"The MNIST sample {SAMPLE_PATH} is missing from the installation; "
                         "regenerate it with random_bases/sample_data/make_sample.py.")
    with np.load(SAMPLE_PATH) as npz:
        out = {split: (npz[f"{split}_images"].astype(np.uint8),
                       npz[f"{split}_labels"].astype(np.int32))
               for split in ("train", "test")}
    for split, (x, y) in out.items():
        if x.ndim != 4 or x.shape[1:] != (28, 28, 1) or x.shape[0] != y.shape[0]:
            raise ValueError(f"Corrupt MNIST sample {SAMPLE_PATH}: {split} shapes {x.shape}, "
                             f"{y.shape}.")
    return out


# --------------------------------------------------------------------------------------
# Holdout and the public loader.
# --------------------------------------------------------------------------------------

def holdout_indices(num_examples: int, *, holdout: str = "validation", holdout_size: int = 10_000,
                    holdout_seed: int = 0) -> tuple[np.ndarray, np.ndarray | None]:
    """Splits range(num_examples) into (train indices, held-out indices).

    "validation": `holdout_size` examples picked by a permutation seeded with `holdout_seed`.
    "tune": a random 25 % held out (75 % kept for training), same seeding.
    "none": everything is training data; the held-out indices are None.
    Both index arrays are sorted, so the training set keeps the source order (the trainer
    shuffles every epoch anyway).
    """
    _check_choice("holdout", holdout, SPLITS)
    if holdout == "none":
        return np.arange(num_examples), None
    if holdout == "tune":
        holdout_size = num_examples - int(round(TUNE_TRAIN_FRACTION * num_examples))
    if not 0 < holdout_size < num_examples:
        raise ValueError(f"holdout_size={holdout_size} must be in (0, {num_examples}) for a "
                         f"training set of {num_examples} examples.")
    perm = np.random.default_rng(holdout_seed).permutation(num_examples)
    return np.sort(perm[holdout_size:]), np.sort(perm[:holdout_size])


def load_dataset(name: str, *, source: str = "auto", data_dir: str | None = None,
                 holdout: str = "validation", holdout_size: int = 10_000,
                 holdout_seed: int = 0) -> Dataset:
    """Loads a dataset into host memory and splits off the held-out block.

    Args:
      name: one of DATASET_NAMES.
      source: "tfds", "files", "sample" (MNIST only) or "auto" (TFDS if prepared locally,
        else raw files, else the MNIST sample).
      data_dir: TFDS data_dir and/or the folder with the raw files. When None, raw files are
        looked for in $RANDOM_BASES_DATA_DIR and known places.
      holdout: "validation" (hold out `holdout_size` training images as split "validation"),
        "tune" (hold out 25 % as split "heldout") or "none" (no holdout). "test" is always
        an eval split too.
      holdout_size: size of the "validation" holdout (clipped for the sample).
      holdout_seed: seeds the permutation that picks the held-out images.

    Raises:
      ValueError: unknown argument values, or data that is missing or corrupt.
    """
    _check_choice("name", name, DATASET_NAMES)
    _check_choice("source", source, SOURCES)
    _check_choice("holdout", holdout, SPLITS)
    info = _INFO[name]

    if source == "sample" and name != "mnist":
        raise ValueError(f"source='sample' is only available for mnist, not {name!r}.")

    chosen = source
    files_dir: pathlib.Path | None = None
    if source == "auto":
        if _tfds_is_prepared(name, data_dir):
            chosen = "tfds"
        else:
            files_dir = _find_files_dir(name, data_dir)
            if files_dir is not None:
                chosen = "files"
            elif name == "mnist" and data_dir is None:
                chosen = "sample"
            else:
                # No silent sample when the caller named a folder: a typo there should not turn a
                # real experiment into a run on 2,000 images.
                raise ValueError(f"source='auto' found no data for {name!r}: TFDS has not prepared "
                                 f"it locally, and {_missing_files_message(name, data_dir)}")
        logger.info("source='auto' chose %r for dataset %s.", chosen, name)

    if chosen == "tfds":
        splits = _load_tfds(name, data_dir)
        description = "tfds" if data_dir is None else f"tfds:{data_dir}"
    elif chosen == "files":
        if files_dir is None:
            files_dir = _find_files_dir(name, data_dir)
        if files_dir is None:
            raise ValueError(f"source='files': {_missing_files_message(name, data_dir)}")
        splits = _load_files(name, files_dir)
        description = f"files:{files_dir}"
    else:
        splits = _load_sample()
        description = _sample_description(len(splits["train"][1]), len(splits["test"][1]))
        logger.warning(
            "Using the small MNIST SAMPLE shipped with random_bases (%d train / %d test images), "
            "NOT the full dataset: accuracies are not comparable with the paper.",
            len(splits["train"][1]), len(splits["test"][1]))
    is_sample = chosen == "sample"

    train_x, train_y = splits["train"]
    if holdout == "validation" and is_sample:
        cap = int(SAMPLE_MAX_HOLDOUT_FRACTION * len(train_y))
        if holdout_size > cap:
            logger.warning("holdout_size=%d is too large for the %d-image sample; clipped to "
                           "%d (%d%% of the sample's training images).", holdout_size,
                           len(train_y), cap, round(100 * SAMPLE_MAX_HOLDOUT_FRACTION))
            holdout_size = cap

    train_idx, held_idx = holdout_indices(len(train_y), holdout=holdout, holdout_size=holdout_size,
                                          holdout_seed=holdout_seed)
    eval_splits: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    if held_idx is not None:
        eval_splits["validation" if holdout == "validation" else "heldout"] = (
            train_x[held_idx], train_y[held_idx])
    eval_splits["test"] = splits["test"]

    dataset = Dataset(
        name=name,
        source=description,
        is_sample=is_sample,
        train_images=train_x[train_idx],
        train_labels=train_y[train_idx],
        eval_splits=eval_splits,
        num_classes=info.num_classes,
        image_shape=info.image_shape,
    )
    logger.info("Loaded %s from %s: %d training images, eval splits %s (holdout=%r, seed=%d).",
                name, description, len(dataset.train_labels),
                {k: len(v[1]) for k, v in eval_splits.items()}, holdout, holdout_seed)
    return dataset


# --------------------------------------------------------------------------------------
# Preprocessing and augmentation (JAX, jittable; `dataset` must be a static Python str).
# --------------------------------------------------------------------------------------

def to_unit_float(images: jax.Array) -> jax.Array:
    """uint8 [0, 255] -> float32 [0, 1]; float input is taken as already in [0, 1].

    This matches tf.image.convert_image_dtype, which the reference pipeline used.
    """
    images = jnp.asarray(images)
    if jnp.issubdtype(images.dtype, jnp.integer):
        return images.astype(jnp.float32) / 255.0
    return images.astype(jnp.float32)


def per_image_standardization(images: jax.Array) -> jax.Array:
    """(x - mean) / max(std, 1/sqrt(#elements)) per image.

    Same as tf.image.per_image_standardization, which the reference pipeline used.
    """
    num_elements = images.shape[1] * images.shape[2] * images.shape[3]
    mean = jnp.mean(images, axis=(1, 2, 3), keepdims=True)
    std = jnp.std(images, axis=(1, 2, 3), keepdims=True)
    # The floor keeps constant images finite (std 0) exactly as TF does.
    return (images - mean) / jnp.maximum(std, 1.0 / np.sqrt(num_elements))


def augment_crop_offsets(key: jax.Array, batch: int, *, max_offset: int) -> jax.Array:
    """Per-image (row, column) crop offsets, int32 [batch, 2], uniform in [0, max_offset]."""
    return jax.random.randint(key, (batch, 2), 0, max_offset + 1, dtype=jnp.int32)


def pad_and_crop(images: jax.Array, offsets: jax.Array, *, pad: int) -> jax.Array:
    """Zero-pads each side by `pad`, then crops back to the input size at per-image offsets."""
    _, h, w, c = images.shape
    padded = jnp.pad(images, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
    # dynamic_slice under vmap: one offset per image, with static output size.
    crop = lambda img, off: jax.lax.dynamic_slice(img, (off[0], off[1], 0), (h, w, c))
    return jax.vmap(crop)(padded, offsets)


def _check_dataset(dataset: str) -> None:
    _check_choice("dataset", dataset, DATASET_NAMES)


def sample_augmentation(key: jax.Array, batch: int, *, dataset: str) -> dict[str, jax.Array]:
    """Draws the random augmentation parameters of one training batch.

    Returns a dict with "offsets" (int32 [batch, 2]) and, for (F)MNIST, "brightness"
    (float32 [batch], in [-0.5, 0.5)) or, for CIFAR-10, "flip" (bool [batch]).
    """
    _check_dataset(dataset)
    crop_key, other_key = jax.random.split(key)
    params = {"offsets": augment_crop_offsets(crop_key, batch, max_offset=2 * _CROP_PAD[dataset])}
    if dataset == "cifar10":
        params["flip"] = jax.random.bernoulli(other_key, 0.5, (batch,))
    else:
        params["brightness"] = jax.random.uniform(
            other_key, (batch,), jnp.float32, -_MAX_BRIGHTNESS_DELTA, _MAX_BRIGHTNESS_DELTA)
    return params


def apply_augmentation(images: jax.Array, params: dict[str, jax.Array], *,
                       dataset: str) -> jax.Array:
    """Applies parameters from `sample_augmentation` and the per-dataset normalisation."""
    _check_dataset(dataset)
    x = pad_and_crop(to_unit_float(images), params["offsets"], pad=_CROP_PAD[dataset])
    if dataset == "cifar10":
        x = jnp.where(params["flip"][:, None, None, None], x[:, :, ::-1, :], x)
        return per_image_standardization(x)
    # No clipping after the brightness shift (PAPER.md), so values lie in [-0.5, 1.5].
    return x + params["brightness"][:, None, None, None]


def preprocess_train_batch(key: jax.Array, images: jax.Array, *, dataset: str) -> jax.Array:
    """Training preprocessing: [B, H, W, C] uint8 (or float in [0, 1]) -> float32, augmented.

    (F)MNIST: pad 3, random 28x28 crop, brightness delta ~ U[-0.5, 0.5] per image, no clip.
    CIFAR-10: pad 4, random 32x32 crop, random left-right flip, per-image standardisation.
    Deterministic given `key`.
    """
    params = sample_augmentation(key, images.shape[0], dataset=dataset)
    return apply_augmentation(images, params, dataset=dataset)


def preprocess_eval_batch(images: jax.Array, *, dataset: str) -> jax.Array:
    """Evaluation preprocessing: scale to [0, 1]; CIFAR-10 is also standardised per image."""
    _check_dataset(dataset)
    x = to_unit_float(images)
    if dataset == "cifar10":
        x = per_image_standardization(x)
    return x
