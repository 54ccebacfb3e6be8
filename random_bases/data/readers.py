"""File readers: IDX files, CIFAR-10 python pickles and image-folder trees.

Each reader turns files on disk into uint8 NHWC images and int32 labels and
raises a ``ValueError`` naming the file when it is missing or malformed. The
readers know file formats only; which dataset lives where is ``sources``'s job.
"""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import io
import os
import pathlib
import pickle
import tarfile
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import PIL
from PIL import Image

IDX_FILES = {
  "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
  "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
CIFAR_TRAIN_BATCHES = tuple(f"data_batch_{i}" for i in range(1, 6))
CIFAR_TEST_BATCH = "test_batch"
CIFAR_SUBDIR = "cifar-10-batches-py"

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
# The fixed shuffle of each split of an image folder (see read_image_folder).
FOLDER_SHUFFLE_SEED = 0
# The image formats decoded, as PIL names them.
IMAGE_FORMATS = ("JPEG", "PNG")
ARCHIVE_SUFFIXES = (".tar.gz", ".tgz")

# IDX magic: two zero bytes, a type code (0x08 = unsigned byte) and the number
# of dimensions.
_IDX_UBYTE = 0x08


# ----------------------------------------------------------------------------
# IDX ((Fashion-)MNIST).
# ----------------------------------------------------------------------------


def read_idx(path: str | os.PathLike[str], *, expected_ndim: int | None = None) -> np.ndarray:
  """Reads an IDX file (optionally gzip-compressed) of unsigned bytes.

  Args:
    path: the file.
    expected_ndim: if given, the number of dimensions the header must state.

  Returns:
    The uint8 array, shaped as the header says.

  Raises:
    ValueError: naming the file if it is missing, unreadable, has a wrong
      magic number, or its payload does not match the sizes in its header.
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
  # gzip.BadGzipFile is an OSError; a truncated stream is an EOFError.
  except (OSError, EOFError) as e:
    raise ValueError(f"Cannot read IDX file {path}: {e}") from e
  if len(raw) < 4:
    raise ValueError(f"Corrupt IDX file {path}: only {len(raw)} bytes.")
  zero0, zero1, dtype_code, ndim = raw[0], raw[1], raw[2], raw[3]
  if zero0 != 0 or zero1 != 0 or dtype_code != _IDX_UBYTE or ndim == 0:
    raise ValueError(
      f"Corrupt IDX file {path}: bad magic number 0x{raw[:4].hex()} "
      "(expected 0x0000080N for an unsigned-byte array of N dimensions)."
    )
  if expected_ndim is not None and ndim != expected_ndim:
    raise ValueError(f"Corrupt IDX file {path}: {ndim} dimensions, expected {expected_ndim}.")
  header_len = 4 + 4 * ndim
  if len(raw) < header_len:
    raise ValueError(f"Corrupt IDX file {path}: truncated header.")
  shape = tuple(int(d) for d in np.frombuffer(raw, dtype=">u4", count=ndim, offset=4))
  expected_len = header_len + int(np.prod(shape))
  if len(raw) != expected_len:
    raise ValueError(
      f"Corrupt IDX file {path}: header says shape {shape} ({expected_len} "
      f"bytes in all) but the file has {len(raw)} bytes."
    )
  return np.frombuffer(raw, dtype=np.uint8, offset=header_len).reshape(shape)


def idx_sha256(array: np.ndarray) -> str:
  """The SHA-256 of `array` written as an uncompressed IDX file of unsigned bytes.

  For an array ``read_idx`` returned, this is what ``sha256sum`` prints for the
  decompressed file: the header is fixed by the shape, and ``read_idx`` checked
  the rest of the file is the payload. It does not depend on the compression.
  """
  if array.dtype != np.uint8:
    raise ValueError(f"idx_sha256 needs a uint8 array, not {array.dtype}.")
  digest = hashlib.sha256(bytes([0, 0, _IDX_UBYTE, array.ndim]))
  digest.update(np.asarray(array.shape, dtype=">u4").tobytes())
  # Hashed in place (no copy of the 47 MB MNIST training images).
  digest.update(np.ascontiguousarray(array).data)
  return digest.hexdigest()


def idx_path(directory: pathlib.Path, stem: str) -> pathlib.Path:
  """The existing variant of an IDX file in `directory`; the .gz name if none."""
  # Mirrors ship ".gz", uncompressed, and the "train-images.idx3-ubyte" spelling.
  dotted = stem.replace("-idx", ".idx")
  for candidate in (stem + ".gz", stem, dotted + ".gz", dotted):
    if (directory / candidate).is_file():
      return directory / candidate
  return directory / (stem + ".gz")


def idx_files(directory: pathlib.Path) -> list[pathlib.Path]:
  """The four files of an IDX dataset in `directory`, train first."""
  return [idx_path(directory, stem) for pair in IDX_FILES.values() for stem in pair]


def read_idx_split(
  directory: str | os.PathLike[str],
  split: str,
  *,
  num_classes: int = 10,
  image_hw: tuple[int, int] = (28, 28),
) -> tuple[np.ndarray, np.ndarray]:
  """Reads the "train" or "test" split of an IDX dataset.

  Args:
    directory: the folder with the four IDX files.
    split: "train" or "test".
    num_classes: labels must be below this.
    image_hw: the image size the file must hold.

  Returns:
    uint8 images [N, H, W, 1] and int32 labels [N].
  """
  directory = pathlib.Path(directory)
  images_stem, labels_stem = IDX_FILES[split]
  images = read_idx(idx_path(directory, images_stem), expected_ndim=3)
  labels_path = idx_path(directory, labels_stem)
  labels = read_idx(labels_path, expected_ndim=1)
  if images.shape[1:] != tuple(image_hw):
    raise ValueError(
      f"Unexpected image size {images.shape[1:]} in "
      f"{directory}/{images_stem}*, expected {tuple(image_hw)}."
    )
  if images.shape[0] != labels.shape[0]:
    raise ValueError(
      f"{images.shape[0]} images but {labels.shape[0]} labels for split {split!r} in {directory}."
    )
  if labels.size and labels.max() >= num_classes:
    raise ValueError(
      f"Corrupt labels in {labels_path}: found label {labels.max()}, expected < {num_classes}."
    )
  return images[..., None], labels.astype(np.int32)


# ----------------------------------------------------------------------------
# CIFAR-10 python pickles.
# ----------------------------------------------------------------------------


class _NumpyOnlyUnpickler(pickle.Unpickler):
  """Unpickler that rebuilds NumPy arrays and nothing else.

  The CIFAR-10 batches are pickles; unpickling runs arbitrary code named in
  the file, so a tampered file could execute anything. Only the few globals
  that an ndarray pickle needs are allowed.
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
  """Reads one CIFAR-10 python batch.

  The official layout is a pickled dict with b"data" (uint8 [N, 3072]: the
  1024 red, then 1024 green, then 1024 blue values of each image, each plane
  row-major) and b"labels".

  Args:
    path: the batch file (e.g. data_batch_1).

  Returns:
    uint8 images [N, 32, 32, 3] (NHWC) and int32 labels [N].
  """
  path = pathlib.Path(path)
  if not path.is_file():
    raise ValueError(f"CIFAR-10 batch file not found: {path}")
  try:
    with open(path, "rb") as f:
      # Python 2 wrote the official files; "bytes" keeps their keys as bytes.
      batch = _NumpyOnlyUnpickler(f, encoding="bytes").load()
  except Exception as e:  # Any unpickling failure means the file is unusable.
    raise ValueError(f"Cannot read CIFAR-10 batch {path}: {e}") from e
  if not isinstance(batch, dict):
    raise ValueError(f"Corrupt CIFAR-10 batch {path}: expected a dict, got {type(batch).__name__}.")
  # Accept str keys too, for batches re-pickled by Python 3 code.
  data = batch.get(b"data", batch.get("data"))
  labels = batch.get(b"labels", batch.get("labels"))
  if data is None or labels is None:
    raise ValueError(f"Corrupt CIFAR-10 batch {path}: missing 'data' or 'labels'.")
  data = np.asarray(data)
  labels = np.asarray(labels)
  if data.ndim != 2 or data.shape[1] != 32 * 32 * 3 or data.shape[0] != labels.shape[0]:
    raise ValueError(
      f"Corrupt CIFAR-10 batch {path}: data shape {data.shape}, "
      f"{labels.shape[0]} labels (expected [N, 3072] and N labels)."
    )
  if data.dtype != np.uint8:
    raise ValueError(f"Corrupt CIFAR-10 batch {path}: data dtype {data.dtype}, expected uint8.")
  if labels.size and (labels.min() < 0 or labels.max() >= 10):
    raise ValueError(f"Corrupt CIFAR-10 batch {path}: labels outside [0, 10).")
  # [N, 3072] -> [N, C, H, W] (channel planes) -> [N, H, W, C].
  images = data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
  return np.ascontiguousarray(images), labels.astype(np.int32)


def cifar10_dir(directory: pathlib.Path) -> pathlib.Path:
  """`directory` if it holds the batches, else its cifar-10-batches-py/."""
  if (directory / CIFAR_TEST_BATCH).is_file() or not (directory / CIFAR_SUBDIR).is_dir():
    return directory
  return directory / CIFAR_SUBDIR


def cifar10_files(directory: pathlib.Path) -> list[pathlib.Path]:
  """The six CIFAR-10 batch files in `directory` (or its sub-folder)."""
  directory = cifar10_dir(directory)
  return [directory / n for n in (*CIFAR_TRAIN_BATCHES, CIFAR_TEST_BATCH)]


def read_cifar10(directory: str | os.PathLike[str]) -> dict[str, tuple[np.ndarray, np.ndarray]]:
  """Reads the CIFAR-10 batches in `directory` (or its cifar-10-batches-py/).

  Returns:
    {"train": (images, labels), "test": (images, labels)}.
  """
  directory = cifar10_dir(pathlib.Path(directory))
  train = [read_cifar_batch(directory / name) for name in CIFAR_TRAIN_BATCHES]
  return {
    "train": (np.concatenate([x for x, _ in train]), np.concatenate([y for _, y in train])),
    "test": read_cifar_batch(directory / CIFAR_TEST_BATCH),
  }


# ----------------------------------------------------------------------------
# Image folders: <split>/<class>/<image>.{jpg,png}, as a tree or a .tar.gz.
# ----------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class ImageFolder:
  """The decoded contents of an image-folder tree.

  Attributes:
    splits: split name -> (uint8 images [N, H, W, C], int32 labels [N]),
      ordered by label, then file name.
    classes: class folder names; label i is classes[i].
    formats: the image formats found, as PIL names them ("JPEG", "PNG").
    content_sha256: a fingerprint of the image files read: the SHA-256 of
      their ``split/class/file`` names and the SHA-256 of each file's bytes,
      in name order. The same for the tree and any .tar.gz of it (with or
      without a top folder); any changed, added or renamed image changes it.
  """

  splits: dict[str, tuple[np.ndarray, np.ndarray]]
  classes: tuple[str, ...]
  formats: tuple[str, ...]
  content_sha256: str


def is_archive(path: pathlib.Path) -> bool:
  return path.name.endswith(ARCHIVE_SUFFIXES)


# An entry of a tree: its path relative to the root as parts, and a function
# that returns its bytes (None for a folder).
_Entry = tuple[list[str], Callable[[], bytes] | None]


def _parts(relative: str) -> list[str]:
  # Plain string splitting: pathlib objects cost more than the JPEG decode.
  return [p for p in relative.replace(os.sep, "/").split("/") if p not in ("", ".")]


def _tree_entries(root: pathlib.Path) -> Iterator[_Entry]:
  for dirpath, dirnames, filenames in os.walk(root):
    relative = _parts(os.path.relpath(dirpath, root))
    for name in dirnames:
      yield [*relative, name], None
    for name in filenames:
      yield [*relative, name], pathlib.Path(dirpath, name).read_bytes


def _archive_entries(archive: pathlib.Path) -> Iterator[_Entry]:
  # Stream mode ("r|") decompresses once, front to back, and extracts
  # nothing to disk; each member's bytes are read before moving on. gzip, not
  # tarfile's own "r|gz", decompresses: it checks the stream's length and CRC
  # at its end, where tarfile takes an archive cut off between two members
  # for a complete, shorter one.
  with gzip.open(archive, "rb") as stream, tarfile.open(fileobj=stream, mode="r|") as tar:
    for member in tar:
      if member.isdir():
        yield _parts(member.name), None
      elif member.isfile():
        yield _parts(member.name), tar.extractfile(member).read
    # tarfile stops at the end-of-archive blocks; the check is at the very end.
    while stream.read(1 << 20):
      pass


def _decode_failure(data: bytes, error: Exception) -> str:
  """Why PIL could not decode `data`, in words that do not depend on how it was read."""
  if isinstance(error, PIL.UnidentifiedImageError):
    # PIL's own message names only the in-memory buffer it was given.
    return f"not a JPEG or PNG image ({len(data)} bytes starting {data[:8]!r})"
  return f"{type(error).__name__}: {error} ({len(data)} bytes)"


def _decode_image(
  data: bytes, where: Callable[[], str], image_shape: tuple[int, int, int]
) -> tuple[np.ndarray, str]:
  """The image as uint8 `image_shape`, and its format; `where` names it."""
  height, width, channels = image_shape
  mode = "RGB" if channels == 3 else "L"
  if not data:
    raise ValueError(f"Cannot decode image {where()}: it is an empty file.")
  try:
    with Image.open(io.BytesIO(data), formats=IMAGE_FORMATS) as image:
      size, image_format = image.size, image.format
      if size == (width, height):
        pixels = np.asarray(image if image.mode == mode else image.convert(mode))
  # OSError: unidentified or truncated data; the others come from damaged
  # chunks inside PIL's plugins.
  except (OSError, SyntaxError, ValueError, EOFError, Image.DecompressionBombError) as e:
    raise ValueError(f"Cannot decode image {where()}: {_decode_failure(data, e)}.") from e
  if size != (width, height):
    raise ValueError(f"Image {where()} is {size[0]}x{size[1]} pixels; expected {width}x{height}.")
  return pixels.reshape(image_shape), image_format


def folder_split_order(num_images: int) -> np.ndarray:
  """Where ``read_image_folder`` puts each image of a split, by (label, file name) rank.

  Returns the permutation: position i of the split holds the image of rank
  ``order[i]`` in the (label, file name) order.
  """
  return np.random.default_rng(FOLDER_SHUFFLE_SEED).permutation(num_images)


def read_image_folder(
  path: str | os.PathLike[str],
  *,
  image_shape: tuple[int, int, int],
  splits: tuple[str, ...] = ("train", "test"),
  classes: tuple[str, ...] | None = None,
) -> ImageFolder:
  """Decodes `split/class/image` files from a folder or a .tar.gz of one.

  Files other than .jpg/.jpeg/.png, and images outside the named splits, are
  ignored; the tree may sit under a common top folder.

  Args:
    path: a folder, or a .tar.gz/.tgz archive (read as a stream).
    image_shape: (H, W, C) every image must have; C = 3 converts to RGB,
      C = 1 to greyscale.
    splits: the split folders to read; each must exist.
    classes: the class folder names in label order; None sorts the names.

  Returns:
    The decoded ImageFolder, each split in a fixed shuffled order.

  Raises:
    ValueError: naming `path`, for a missing split, an empty class folder,
      an image that cannot be decoded or has the wrong size (naming the file
      or archive member and the cause), an archive that cannot be read
      (naming the member it stopped at), classes that differ between splits
      or from `classes`.
  """
  path = pathlib.Path(path)
  if path.is_dir():
    entries, kind = _tree_entries(path), "file"

    def where(parts: list[str]) -> str:
      return os.path.join(path, *parts)

  elif path.is_file() and is_archive(path):
    entries, kind = _archive_entries(path), "member"

    def where(parts: list[str]) -> str:
      return f"{path}, member {'/'.join(parts)}"

  else:
    raise ValueError(f"Image folder {path} is neither a folder nor a .tar.gz archive.")
  class_folders = {split: set() for split in splits}
  decoded = {split: [] for split in splits}  # (class, file name, image)
  file_digests = []  # ("split/class/file", sha256 of its bytes)
  formats = set()
  # For a read error: the member being read, else the last one read whole.
  reading, last_read = None, None
  try:
    for parts, read in entries:
      if read is None:
        if len(parts) >= 2 and parts[-2] in class_folders:
          class_folders[parts[-2]].add(parts[-1])
        continue
      if (
        len(parts) < 3
        or parts[-3] not in class_folders
        or not parts[-1].lower().endswith(IMAGE_SUFFIXES)
      ):
        continue
      split, class_name = parts[-3], parts[-2]
      class_folders[split].add(class_name)
      reading = parts
      content = read()
      reading, last_read = None, parts
      image, image_format = _decode_image(content, lambda: where(parts), image_shape)  # noqa: B023  (called at once)
      decoded[split].append((class_name, parts[-1], image))
      file_digests.append(("/".join(parts[-3:]), hashlib.sha256(content).hexdigest()))
      formats.add(image_format)
  except (tarfile.TarError, EOFError, OSError) as e:
    if reading is not None:
      at = f" while reading {kind} {'/'.join(reading)}"
    elif last_read is not None:
      at = f" after {kind} {'/'.join(last_read)}"
    else:
      at = ""
    cause = f"it ends early, truncated ({e})" if isinstance(e, EOFError) else str(e)
    raise ValueError(f"Cannot read image folder {path}{at}: {cause}") from e

  for split in splits:
    if not class_folders[split]:
      raise ValueError(
        f"Image folder {path} has no {split!r} split: expected "
        f"{split}/<class>/<image> with {', '.join(IMAGE_SUFFIXES)} images."
      )
    counts = {c: 0 for c in class_folders[split]}
    for class_name, _, _ in decoded[split]:
      counts[class_name] += 1
    empty = sorted(c for c, n in counts.items() if n == 0)
    if empty:
      raise ValueError(
        f"Image folder {path}: class folder {split}/{empty[0]} "
        f"has no {', '.join(IMAGE_SUFFIXES)} images."
      )
  first, *others = splits
  for split in others:
    if class_folders[split] != class_folders[first]:
      raise ValueError(
        f"Image folder {path}: the classes of {first!r} and {split!r} "
        f"differ: only in {first!r}: "
        f"{sorted(class_folders[first] - class_folders[split])}, only in "
        f"{split!r}: {sorted(class_folders[split] - class_folders[first])}."
      )
  found = class_folders[first]
  if classes is not None and found != set(classes):
    raise ValueError(
      f"Image folder {path} has the classes {sorted(found)}; expected {list(classes)}."
    )
  classes = tuple(classes) if classes is not None else tuple(sorted(found))

  label_of = {name: i for i, name in enumerate(classes)}
  arrays = {}
  for split in splits:
    ordered = sorted(decoded[split], key=lambda item: (label_of[item[0]], item[1]))
    # Folders group the images by class; a fixed shuffle makes every prefix
    # of a split (train.eval_examples, a subset) a fair sample of it, as in
    # the official CIFAR-10 files.
    order = folder_split_order(len(ordered))
    arrays[split] = (
      np.stack([ordered[i][2] for i in order]),
      np.asarray([label_of[ordered[i][0]] for i in order], np.int32),
    )
  content = hashlib.sha256()
  for name, file_digest in sorted(file_digests):
    content.update(f"{name}\t{file_digest}\n".encode())
  return ImageFolder(
    splits=arrays,
    classes=classes,
    formats=tuple(sorted(formats)),
    content_sha256=content.hexdigest(),
  )
