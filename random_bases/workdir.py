"""The workdir contract: what a run leaves in its workdir and how a rerun treats it.

A workdir holds one run::

  .lock                 who writes it now (see "One writer" below)
  config.json           the run's config
  data.json             what it trains on: dataset, split sizes, a fingerprint
  metrics.jsonl         one strict-JSON line per epoch
  tensorboard/          TensorBoard event files
  checkpoints/<epoch>/  orbax checkpoints after each epoch, the newest two kept

Running again into the same workdir:

* the same config resumes from the newest intact checkpoint and ends with the
  parameters of an uninterrupted run;
* a config that differs only in ``RESUMABLE_FIELDS`` resumes with the new
  values; raising ``train.epochs`` extends a finished run (an open last phase,
  ``phases='rbd:5,sgd'``, grows with it; a fully counted schedule has to
  change, which is refused);
* any other difference, or different data, raises ``WorkdirMismatch`` listing
  what differs (old -> new) before anything but the lock file is written. A
  fresh run needs another workdir, or this one deleted.

A workdir "holds a run" once it has a checkpoint or a metrics line; one whose
run failed before its first epoch was done accepts any config. Without
checkpoints (``train.checkpoint=False``) there is nothing to resume from: a
rerun of the same config starts over and replaces the metrics.

After a crash the restored checkpoint decides what stands: metrics lines past
its epoch are dropped, TensorBoard is told to purge events past its step, and
orbax's unfinished temporary directories are removed. Metrics are written
before the epoch's checkpoint, so every checkpoint has its metrics line. An
unreadable checkpoint is moved to ``corrupt_checkpoints/`` with a warning, and
the previous one is restored.

One writer (``Workdir.claim``, the first thing a run does with its workdir,
before any data is loaded or anything compiled):

* *Lock.* The writing process holds ``fcntl.flock`` on ``<workdir>/.lock``,
  whose content names it (pid, host, start time). A second run on the
  workdir raises ``WorkdirLocked`` naming that holder. The OS releases the
  lock when its process ends, however it ends; a run released normally
  leaves the file empty, so a record found in a lock nobody holds is a run
  that was killed or crashed: it is taken over with a warning. Where the
  file system has no locks (some network mounts), a record of a live pid on
  this host, or of any other host, is respected instead. Across processes
  only process 0 locks; every process checks it can write.
* *Writable.* The workdir is created and a probe file written, fsynced and
  removed. Any failed write of the run (the lock, config.json, data.json,
  metrics, TensorBoard, a checkpoint) raises ``WorkdirNotWritable`` naming
  the path and the cause in words (no space left, read-only file system,
  permission denied) and leaves no temporary file: the run stops there, and
  once the cause is fixed a rerun resumes from the last complete checkpoint.
  Each checkpoint is saved before the next epoch starts, so a failed save
  stops the run at the epoch it belongs to.
* *Checksums.* Every checkpoint carries the sha256 of what it holds (the
  dtype, shape and bytes of each array, in tree order) in orbax's step
  metadata (``custom_metadata["sha256"]`` of ``_CHECKPOINT_METADATA``),
  committed with the checkpoint. A restore recomputes it; a mismatch is
  treated as an unreadable checkpoint. A checkpoint without one (written
  before checksums were kept) is restored unverified, with a warning. When
  no checkpoint reads back intact, ``NoReadableCheckpoint`` says so and
  nothing is moved (a changed state layout is likelier than damage to all).
"""

from __future__ import annotations

import contextlib
import datetime
import errno
import fcntl
import hashlib
import json
import logging as python_logging
import math
import os
import shutil
import socket
import sys
import time
from collections.abc import Callable, Iterator
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp
import tensorboardX
from absl import logging

from random_bases import config_lib, distributed


class _QuietOrbax:
  """Drops orbax's per-save INFO chatter so the progress lines stay readable."""

  def filter(self, record) -> bool:
    return record.levelno >= python_logging.WARNING or "/orbax/" not in record.pathname


def quiet_orbax_logs() -> None:
  """Filters orbax's INFO records out of absl logging (entry points call this once)."""
  logging.get_absl_logger().addFilter(_QuietOrbax())


# Fields a rerun may change. None changes what any epoch computes (beyond
# float rounding), so a resumed run ends as an uninterrupted run with the new
# values would.
RESUMABLE_FIELDS = (
  "train.epochs",  # extends a finished run; fewer than the epochs done is refused
  "train.log_every_steps",  # when progress is printed and metrics fetched
  "train.steps_per_dispatch",  # how many of the same steps one jitted call runs
  "train.eval_batch_size",  # how evaluation is batched, not what is evaluated
  "metrics.gradient_correlation",  # an extra metric; the update is the same
  # Where the data and its decoded cache live (they may move); data.json
  # checks that the data loaded is the same.
  "data.dir",
  "data.cache_dir",
)

CONFIG_FILE = "config.json"
DATA_FILE = "data.json"
METRICS_FILE = "metrics.jsonl"
TENSORBOARD_DIR = "tensorboard"
CHECKPOINT_DIR = "checkpoints"
CORRUPT_CHECKPOINT_DIR = "corrupt_checkpoints"
LOCK_FILE = ".lock"
# orbax writes a checkpoint into '<epoch>.orbax-checkpoint-tmp-<n>' and renames it.
ORBAX_TMP_MARKER = ".orbax-checkpoint-tmp"


class WorkdirError(Exception):
  """The workdir cannot be used as asked; the message says why and what to do.

  Entry points report it as one line (no traceback) and exit non-zero.
  """


class WorkdirMismatch(WorkdirError, ValueError):
  """The workdir holds a run this config cannot continue."""


class WorkdirLocked(WorkdirError):
  """Another run is writing the workdir."""


class WorkdirNotWritable(WorkdirError):
  """A write to the workdir failed: no space, a read-only file system, no permission."""


class NoReadableCheckpoint(WorkdirError, RuntimeError):
  """Checkpoints exist but none reads back intact."""


# The causes of failed writes a user can act on, in words.
_WRITE_FAILURES = {
  errno.ENOSPC: "no space left on the device",
  errno.EDQUOT: "the disk quota is exceeded",
  errno.EROFS: "the file system is read-only",
  errno.EACCES: "permission denied",
  errno.EPERM: "operation not permitted",
}


def _errno_of(error: BaseException) -> int | None:
  """The errno behind ``error``: its own, a chained OSError's, or one tensorstore names.

  Tensorstore reports OS errors as a ValueError whose text carries the
  system's message ("RESOURCE_EXHAUSTED: ... No space left on device").
  """
  for link in _chain(error):
    if isinstance(link, OSError) and link.errno is not None:
      return link.errno
  for link in _chain(error):
    text = str(link)
    for code in _WRITE_FAILURES:
      if os.strerror(code) in text:
        return code
  return None


def _chain(error: BaseException) -> list[BaseException]:
  """``error`` and the exceptions it was raised from or while handling, outermost first."""
  chain = [error]
  while True:
    link = chain[-1].__cause__ or chain[-1].__context__
    if link is None or link in chain:
      return chain
    chain.append(link)


def describe_error(error: BaseException) -> str:
  """One line naming the innermost cause of ``error``: ``Type: message``.

  Orbax wraps tensorstore's errors in messages of its own (one of which
  shows a bound method's repr), so the root of the chain says what happened.
  """
  root = _chain(error)[-1]
  text = " ".join(str(root).split()) or "(no message)"
  if len(text) > 300:
    text = text[:297] + "..."
  return f"{type(root).__name__}: {text}"


def not_writable(path: str, error: BaseException) -> WorkdirNotWritable:
  """The WorkdirNotWritable for a failed write of ``path``, its cause in words."""
  code = _errno_of(error)
  if code in _WRITE_FAILURES:
    cause = _WRITE_FAILURES[code]
  elif code is not None:
    cause = os.strerror(code).lower()
  else:
    cause = describe_error(error)
  return WorkdirNotWritable(
    f"cannot write {path}: {cause}. The run stopped; fix that or pass another --workdir "
    "(rerunning the same command resumes from the last complete checkpoint)."
  )


def is_write_failure(error: BaseException) -> bool:
  """True if ``error`` comes from the file system (an errno), not from a bug."""
  return _errno_of(error) is not None


@contextlib.contextmanager
def writing(path: str) -> Iterator[None]:
  """Turns an OSError raised inside into ``not_writable(path, ...)``."""
  try:
    yield
  except OSError as error:
    raise not_writable(path, error) from error


def _remove_quietly(path: str) -> None:
  """Removes a file or directory we wrote, if it is there and can be removed."""
  with contextlib.suppress(OSError):
    if os.path.isdir(path) and not os.path.islink(path):
      shutil.rmtree(path)
    else:
      os.remove(path)


def flatten(tree: dict, prefix: str = "") -> dict[str, Any]:
  """``{"a": {"b": 1}}`` -> ``{"a.b": 1}``."""
  flat = {}
  for key, value in tree.items():
    if isinstance(value, dict):
      flat.update(flatten(value, f"{prefix}{key}."))
    else:
      flat[prefix + key] = value
  return flat


_ABSENT = "(absent)"


def differences(old: dict, new: dict) -> dict[str, tuple[Any, Any]]:
  """``{field: (old, new)}`` of the fields whose values differ (nested dicts)."""
  old, new = flatten(old), flatten(new)
  return {
    k: (old.get(k, _ABSENT), new.get(k, _ABSENT))
    for k in sorted(set(old) | set(new))
    if old.get(k, _ABSENT) != new.get(k, _ABSENT)
  }


def with_schema_defaults(record: dict) -> dict:
  """A stored config as today's schema reads it (flat): newer fields take their defaults.

  A run written before a field existed ran as that field's default does, so
  resuming it with the default is no change of config.
  """
  flat = flatten(record)
  for field in config_lib.FIELDS:
    flat.setdefault(field.name, field.default)
  return flat


def config_record(config) -> dict:
  """The config as config.json stores it (a nested dict of JSON values)."""
  return json.loads(config.to_json_best_effort())


def data_identity(dataset) -> dict:
  """What the run trains and evaluates on.

  ``source`` (where it was found) and ``description`` (its human-readable
  name) are informative: a run may resume from data that moved.
  """
  digest = hashlib.blake2b(digest_size=16)
  sizes = {"train": len(dataset.train_labels)}
  arrays = [dataset.train_images, dataset.train_labels]
  for split, (images, labels) in sorted(dataset.eval_splits.items()):
    sizes[split] = len(labels)
    arrays += [images, labels]
  for array in arrays:
    digest.update(array.tobytes())
  return {
    "dataset": dataset.name,
    "sample": dataset.is_sample,
    "images": sizes,
    "fingerprint": digest.hexdigest(),
    "source": dataset.source,
    "description": dataset.description,
  }


def strict_json(record: dict[str, Any]) -> str:
  """One JSON line; non-finite floats become null and are listed under "non_finite"."""
  clean, non_finite = {}, []
  for key, value in record.items():
    if isinstance(value, float) and not math.isfinite(value):
      clean[key] = None
      non_finite.append(key)
    else:
      clean[key] = value
  if non_finite:
    clean["non_finite"] = non_finite
  return json.dumps(clean, allow_nan=False)


def _write_atomically(path: str, text: str) -> None:
  """Replaces ``path`` by ``text`` whole, or raises WorkdirNotWritable leaving it as it was."""
  tmp = f"{path}.tmp"
  try:
    with open(tmp, "w") as f:
      f.write(text)
      f.flush()
      os.fsync(f.fileno())
    os.replace(tmp, path)
  except OSError as error:
    _remove_quietly(tmp)
    raise not_writable(path, error) from error


def _how_to_start_fresh(path: str) -> str:
  return (
    f"To start a fresh run, pass another --workdir or delete {path}. "
    f"Fields that may change on resume: {', '.join(RESUMABLE_FIELDS)}."
  )


def _process_alive(pid: int) -> bool:
  """True if a process ``pid`` exists on this host."""
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:  # it exists, as another user's
    return True
  return True


def _holder_text(record: dict) -> str:
  return (
    f"pid {record.get('pid', '?')} on host {record.get('host', '?')}, "
    f"started {record.get('started', '?')}"
  )


class WorkdirLock:
  """An exclusive ``fcntl.flock`` on ``<workdir>/.lock`` naming its holder.

  The OS drops the lock when the holding process ends, however it ends, so
  no lock outlives its run. ``release`` empties the file: a record found in
  a lock that could be taken was left by a run that was killed or crashed.
  """

  def __init__(self, workdir: str):
    self.workdir = workdir
    self.path = os.path.join(workdir, LOCK_FILE)
    self._fd: int | None = None

  def _read_record(self, fd: int) -> dict:
    try:
      text = os.pread(fd, 4096, 0).decode(errors="replace").strip()
    except OSError:
      return {}
    if not text:
      return {}
    try:
      record = json.loads(text)
    except json.JSONDecodeError:
      return {"pid": "?", "host": "?", "started": f"? (the lock file holds {text[:80]!r})"}
    return record if isinstance(record, dict) else {}

  def acquire(self) -> None:
    """Takes the lock, or raises WorkdirLocked (held) or WorkdirNotWritable."""
    with writing(self.path):
      fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
      previous = self._lock(fd)
    except BaseException:
      os.close(fd)  # the file is the holder's: left as it is
      raise
    try:
      if previous:
        logging.warning(
          "Workdir %s: taking over the lock of a run that ended without releasing it "
          "(killed or crashed): %s",
          self.workdir,
          _holder_text(previous),
        )
      record = {
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "started": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
      }
      with writing(self.path):
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps(record) + "\n").encode(), 0)
        os.fsync(fd)
    except BaseException:
      self._empty_and_close(fd)
      raise
    self._fd = fd

  def _lock(self, fd: int) -> dict:
    """Locks ``fd``; returns the record of the stale holder it replaces ({} if none).

    Raises WorkdirLocked, leaving ``fd`` open and the file untouched.
    """
    try:
      fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
      holder = self._read_record(fd)
      raise WorkdirLocked(
        f"workdir {self.workdir} is in use by another run ({_holder_text(holder)}; "
        f"lock file {self.path}): a workdir has one writer. Wait for that run to end, "
        "end it, or pass another --workdir."
      ) from None
    except OSError as error:  # a file system without flock: trust a live holder's record
      previous = self._read_record(fd)
      logging.warning(
        "Workdir %s: the file system does not support locks (%s), so the record in %s "
        "is all that keeps a second run out",
        self.workdir,
        describe_error(error),
        self.path,
      )
      if previous and not self._dead_here(previous):
        raise WorkdirLocked(
          f"workdir {self.workdir} is recorded as in use by another run "
          f"({_holder_text(previous)}) in {self.path}, and this file system cannot tell "
          "whether it still runs: if it has ended, delete that file; else wait for it, "
          "or pass another --workdir."
        ) from None
      return previous
    return self._read_record(fd)

  @staticmethod
  def _dead_here(record: dict) -> bool:
    pid = record.get("pid")
    return (
      record.get("host") == socket.gethostname()
      and isinstance(pid, int)
      and pid != os.getpid()
      and not _process_alive(pid)
    )

  @staticmethod
  def _empty_and_close(fd: int) -> None:
    with contextlib.suppress(OSError):  # a record left is taken over by the next run
      os.ftruncate(fd, 0)
    os.close(fd)

  def release(self) -> None:
    """Empties the record and drops the lock (a no-op when not held)."""
    if self._fd is not None:
      fd, self._fd = self._fd, None
      self._empty_and_close(fd)


def _create_dir(path: str) -> None:
  with writing(path):
    if os.path.exists(path) and not os.path.isdir(path):
      raise NotADirectoryError(errno.ENOTDIR, os.strerror(errno.ENOTDIR), path)
    os.makedirs(path, exist_ok=True)


def check_writable(path: str) -> None:
  """Creates ``path`` and writes, fsyncs and removes a probe file in it.

  Raises:
    WorkdirNotWritable: naming the path and the cause.
  """
  _create_dir(path)
  probe = os.path.join(path, f".write-probe-{socket.gethostname()}-{os.getpid()}")
  try:
    with writing(path):
      fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
      try:
        # A block's worth: on a full disk even the first block fails.
        os.write(fd, b"\0" * 4096)
        os.fsync(fd)
      finally:
        os.close(fd)
      os.remove(probe)
  except WorkdirNotWritable:
    _remove_quietly(probe)
    raise


class Workdir:
  """One run's directory: its record, metrics, TensorBoard and checkpoints."""

  def __init__(self, path: str):
    self.path = path
    self.config_path = os.path.join(path, CONFIG_FILE)
    self.data_path = os.path.join(path, DATA_FILE)
    self.metrics_path = os.path.join(path, METRICS_FILE)
    self.tensorboard_dir = os.path.join(path, TENSORBOARD_DIR)
    self.checkpoint_dir = os.path.join(path, CHECKPOINT_DIR)
    self.corrupt_checkpoint_dir = os.path.join(path, CORRUPT_CHECKPOINT_DIR)
    self._lock: WorkdirLock | None = None

  # --- one writer -----------------------------------------------------------

  def claim(self, *, lock: bool = True) -> None:
    """Makes this process the workdir's writer: locks it, then checks it can write.

    Call it before loading data or compiling, and ``release`` when done.
    Across processes only the writing one (process 0) passes ``lock=True``.

    Raises:
      WorkdirLocked: another run holds the workdir (nothing here is changed).
      WorkdirNotWritable: the workdir cannot be created or written.
    """
    _create_dir(self.path)
    if lock:
      self._lock = WorkdirLock(self.path)
      self._lock.acquire()
    try:
      check_writable(self.path)
    except BaseException:
      self.release()
      raise

  def release(self) -> None:
    """Drops the lock ``claim`` took (safe to call more than once)."""
    if self._lock is not None:
      lock, self._lock = self._lock, None
      lock.release()

  # --- what is there --------------------------------------------------------

  def checkpoint_epochs(self) -> list[int]:
    """Epochs of the committed checkpoints (orbax renames a checkpoint when done)."""
    if not os.path.isdir(self.checkpoint_dir):
      return []
    return sorted(int(name) for name in os.listdir(self.checkpoint_dir) if name.isdigit())

  def read_metrics(self) -> list[dict[str, Any]]:
    """The metrics lines; a line cut off by a crash is dropped with a warning."""
    if not os.path.exists(self.metrics_path):
      return []
    rows = []
    with open(self.metrics_path) as f:
      for number, line in enumerate(f, 1):
        try:
          rows.append(json.loads(line))
        except json.JSONDecodeError:
          logging.warning(
            "%s line %d is cut off (a crash while writing it); dropped", self.metrics_path, number
          )
    return rows

  def holds_run(self) -> bool:
    """True once an epoch was done here: a checkpoint or a metrics line exists."""
    return bool(self.checkpoint_epochs() or self.read_metrics())

  # --- the record -----------------------------------------------------------

  def check_config(self, config) -> None:
    """Raises WorkdirMismatch unless ``config`` may continue the run held here.

    Reads only; call it before loading data or writing anything.
    """
    if not self.holds_run():
      return
    if not os.path.exists(self.config_path):
      raise WorkdirMismatch(
        f"workdir {self.path} holds checkpoints or metrics but no "
        f"{CONFIG_FILE}, so a rerun cannot tell whether it continues "
        f"that run. {_how_to_start_fresh(self.path)}"
      )
    with open(self.config_path) as f:
      old = with_schema_defaults(json.load(f))
    changed = {
      k: v for k, v in differences(old, config_record(config)).items() if k not in RESUMABLE_FIELDS
    }
    if changed:
      lines = "\n".join(f"  {k}: {a!r} -> {b!r}" for k, (a, b) in changed.items())
      raise WorkdirMismatch(
        f"workdir {self.path} holds a run with a different config "
        f"(old -> new):\n{lines}\n{_how_to_start_fresh(self.path)}"
      )
    done = max(self.checkpoint_epochs(), default=0)
    if config.train.epochs < done:
      raise WorkdirMismatch(
        f"workdir {self.path} holds a checkpoint after epoch {done}; "
        f"train.epochs={config.train.epochs} cannot undo epochs. "
        f"{_how_to_start_fresh(self.path)}"
      )

  def check_data(self, identity: dict) -> None:
    """Raises WorkdirMismatch if the run held here trained on other data."""
    if not (self.holds_run() and os.path.exists(self.data_path)):
      return
    with open(self.data_path) as f:
      old = json.load(f)
    changed = {
      k: v
      for k, v in differences(old, identity).items()
      if not k.startswith(("source", "description"))
    }
    if changed:
      lines = "\n".join(f"  {k}: {a!r} -> {b!r}" for k, (a, b) in changed.items())
      raise WorkdirMismatch(
        f"workdir {self.path} holds a run on other data than {identity['source']} "
        f"(old -> new):\n{lines}\n{_how_to_start_fresh(self.path)}"
      )

  def write_record(self, config, identity: dict) -> None:
    """Writes config.json and data.json: the config and data now accepted."""
    with writing(self.path):
      os.makedirs(self.path, exist_ok=True)
    _write_atomically(self.config_path, config.to_json_best_effort(indent=2, sort_keys=True))
    _write_atomically(self.data_path, json.dumps(identity, indent=2, sort_keys=True))

  # --- metrics and summaries ------------------------------------------------

  def trim_metrics(self, epoch: int) -> None:
    """Keeps one line per epoch up to ``epoch`` (the restored checkpoint's), the last written."""
    rows = self.read_metrics()
    kept = {}
    for row in rows:
      if row["epoch"] <= epoch:
        kept[row["epoch"]] = row
    kept = [kept[e] for e in sorted(kept)]
    if kept == rows:
      return
    logging.warning(
      "%s: kept the lines of epochs 1-%d (the restored checkpoint's), dropped %d",
      self.metrics_path,
      epoch,
      len(rows) - len(kept),
    )
    _write_atomically(self.metrics_path, "".join(strict_json(r) + "\n" for r in kept))

  def append_metrics(self, record: dict[str, Any]) -> None:
    """Appends one line, or raises WorkdirNotWritable with the file as it was."""
    line = strict_json(record) + "\n"
    size = os.path.getsize(self.metrics_path) if os.path.exists(self.metrics_path) else 0
    try:
      with open(self.metrics_path, "a") as f:
        f.write(line)
        f.flush()
        os.fsync(f.fileno())
    except OSError as error:
      with contextlib.suppress(OSError):  # no half line for the next run to drop
        os.truncate(self.metrics_path, size)
      raise not_writable(self.metrics_path, error) from error

  def summary_writer(self, restored_step: int) -> tensorboardX.SummaryWriter:
    """A TensorBoard writer that hides events written after ``restored_step``.

    TensorBoard drops earlier events at steps >= ``purge_step`` when it meets
    the writer's start event. The nanosecond suffix gives each writer its own
    file (tensorboardX names files by the second, and would overwrite one)
    in the order they were opened.
    """
    with writing(self.tensorboard_dir):
      return tensorboardX.SummaryWriter(
        self.tensorboard_dir, purge_step=restored_step + 1, filename_suffix=f".{time.time_ns()}"
      )

  def checkpoints(self, *, primary: bool = True) -> Checkpoints:
    """The run's checkpoints; ``primary``: this process tidies the directory (process 0)."""
    return Checkpoints(
      self.checkpoint_dir, corrupt_dir=self.corrupt_checkpoint_dir, primary=primary
    )


def state_checksum(state) -> str:
  """sha256 of the dtype, shape and bytes of each array of ``state``, in tree order.

  Arrays spread over several processes are replicated in this trainer, so
  each process hashes its own copy.
  """
  leaves = []
  for leaf in jax.tree.leaves(state):
    if isinstance(leaf, jax.Array):
      if jax.dtypes.issubdtype(leaf.dtype, jax.dtypes.prng_key):
        leaf = jax.random.key_data(leaf)
      if not leaf.is_fully_addressable:
        leaf = leaf.addressable_data(0)
    leaves.append(leaf)
  digest = hashlib.sha256()
  for array in jax.device_get(leaves):
    array = np.ascontiguousarray(array)
    digest.update(f"{array.dtype.str}{array.shape};".encode())
    digest.update(array.tobytes())
  return digest.hexdigest()


class _ChecksumMismatch(Exception):
  """A checkpoint reads back, but not as it was saved."""


class _OrbaxErrorsHeld:
  """Keeps orbax's error records out of the log while held (see ``holding_orbax_errors``)."""

  def __init__(self):
    self.records: list[python_logging.LogRecord] = []

  def filter(self, record) -> bool:
    if record.levelno >= python_logging.ERROR and "/orbax/" in record.pathname:
      self.records.append(record)
      return False
    return True

  def exception(self) -> BaseException | None:
    """The first exception orbax logged, if any."""
    return next((r.exc_info[1] for r in self.records if r.exc_info), None)

  def release(self) -> None:
    """Logs the held records after all (for an error that is not a write failure)."""
    records, self.records = self.records, []
    for record in records:
      logging.get_absl_logger().handle(record)


def _is_closed_loop_callback(unraisable) -> bool:
  return isinstance(unraisable.exc_value, RuntimeError) and str(unraisable.exc_value) == (
    "Event loop is closed"
  )


@contextlib.contextmanager
def holding_orbax_errors() -> Iterator[_OrbaxErrorsHeld]:
  """Holds back what orbax prints about a failed save or restore while inside.

  A failed save is reported once, as WorkdirNotWritable, and a failed restore
  as one warning; orbax would log every thread's traceback of it (hundreds
  of lines), and tensorstore's late callbacks into orbax's closed event loop
  print "Event loop is closed" tracebacks. Records held are dropped unless
  ``release``d.
  """
  held = _OrbaxErrorsHeld()
  logger = logging.get_absl_logger()
  previous_hook = sys.unraisablehook

  def hook(unraisable):
    if not _is_closed_loop_callback(unraisable):
      previous_hook(unraisable)

  logger.addFilter(held)
  sys.unraisablehook = hook
  try:
    yield held
  finally:
    sys.unraisablehook = previous_hook
    logger.removeFilter(held)


class Checkpoints:
  """Orbax checkpoints keyed by epoch, with checksums; restoring falls back past bad ones.

  Args:
    directory: where the checkpoints are.
    corrupt_dir: where checkpoints that do not read back intact are moved.
    max_to_keep: how many of the newest are kept.
    primary: this process tidies the directory (removes unfinished
      checkpoints, sets bad ones aside); across processes only process 0.
  """

  def __init__(
    self, directory: str, *, corrupt_dir: str, max_to_keep: int = 2, primary: bool = True
  ):
    self.directory = os.path.abspath(directory)
    self.corrupt_dir = corrupt_dir
    self.primary = primary
    self._failed = False
    if primary and os.path.isdir(self.directory):
      for name in sorted(os.listdir(self.directory)):
        if ORBAX_TMP_MARKER in name:
          logging.warning("Removing %s: a checkpoint a crash left unfinished", name)
          shutil.rmtree(os.path.join(self.directory, name))
    self._manager = ocp.CheckpointManager(
      self.directory, options=ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=True)
    )

  def _path(self, epoch: int) -> str:
    return os.path.join(self.directory, str(epoch))

  def _restore_intact(self, epoch: int, target) -> Any:
    """The state of ``epoch``'s checkpoint, checked against its checksum."""
    state = self._manager.restore(epoch, args=ocp.args.StandardRestore(target))
    # After the restore, which tells orbax how to read the item (else it warns).
    expected = (self._manager.metadata(epoch).custom_metadata or {}).get("sha256")
    if expected is None:
      logging.warning(
        "Checkpoint %s has no checksum (written before checksums were kept): restored unverified",
        self._path(epoch),
      )
    elif state_checksum(state) != expected:
      raise _ChecksumMismatch(
        "its arrays do not match the sha256 checksum saved with them: damaged on disk"
      )
    return state

  def restore(self, target_for: Callable[[int], Any]) -> tuple[int, Any]:
    """Restores the newest checkpoint that reads back intact.

    Args:
      target_for: epoch -> the state pytree that checkpoint holds (shapes, dtypes).

    Returns:
      ``(epoch, state)``, or ``(0, None)`` when there is no checkpoint.

    Raises:
      NoReadableCheckpoint: none reads back intact. More likely a changed
        state layout than damage to every one, so nothing is moved.
    """
    unreadable = []
    for epoch in sorted(self._manager.all_steps(), reverse=True):
      try:
        # The warning below says why a checkpoint does not read back, once.
        with holding_orbax_errors():
          state = self._restore_intact(epoch, target_for(epoch))
      # A damaged checkpoint fails in tensorstore, in JSON or in orbax, with
      # any of their exception types.
      except Exception as error:  # pylint: disable=broad-except
        cause = str(error) if isinstance(error, _ChecksumMismatch) else describe_error(error)
        logging.warning("Checkpoint %s is unreadable (%s)", self._path(epoch), cause)
        unreadable.append((epoch, cause))
        continue
      if unreadable:
        if self.primary:
          for bad, _ in unreadable:
            self._set_aside(bad)
        distributed.sync("unreadable checkpoints set aside")
        self._manager.reload()
        logging.warning("Resuming from the checkpoint after epoch %d instead", epoch)
      return epoch, state
    if unreadable:
      causes = "; ".join(f"epoch {epoch}: {cause}" for epoch, cause in unreadable)
      raise NoReadableCheckpoint(
        f"no checkpoint in {self.directory} reads back intact ({causes}); nothing was "
        f"moved. {_how_to_start_fresh(os.path.dirname(self.directory))}"
      )
    return 0, None

  def _set_aside(self, epoch: int) -> None:
    os.makedirs(self.corrupt_dir, exist_ok=True)
    destination = os.path.join(self.corrupt_dir, str(epoch))
    copy = 1
    while os.path.exists(destination):
      destination = os.path.join(self.corrupt_dir, f"{epoch}.{copy}")
      copy += 1
    shutil.move(self._path(epoch), destination)
    logging.warning("Moved the unreadable checkpoint of epoch %d to %s", epoch, destination)

  def save(self, epoch: int, state) -> None:
    """Saves ``state`` with its checksum and waits until the checkpoint is committed.

    Waiting makes a failed save stop the run before the next epoch.

    Raises:
      WorkdirNotWritable: the save failed for want of space or permission;
        its unfinished files are removed.
    """
    checksum = state_checksum(state)
    failure = None
    with holding_orbax_errors() as held:
      try:
        self._manager.save(
          epoch, args=ocp.args.StandardSave(state), custom_metadata={"sha256": checksum}
        )
        self._manager.wait_until_finished()
        # Orbax logs some failures of its background threads instead of
        # raising them; process 0 commits, so it can tell.
        if self.primary and not os.path.isdir(self._path(epoch)):
          raise RuntimeError("orbax did not commit the checkpoint") from held.exception()
      except Exception as error:  # pylint: disable=broad-except
        failure = error
    if failure is None:
      held.release()
      return
    self._failed = True
    if self.primary:  # its unfinished temporary directories
      with contextlib.suppress(OSError):
        for name in os.listdir(self.directory):
          if name.startswith(f"{epoch}."):
            _remove_quietly(os.path.join(self.directory, name))
    if is_write_failure(failure):
      raise not_writable(self._path(epoch), failure) from failure
    held.release()  # not a write failure: everything orbax said may help
    raise failure

  def close(self) -> None:
    """Closes orbax. After a failed save (already raised) orbax's repeats of it are dropped."""
    if not self._failed:
      self._manager.close()
      return
    with holding_orbax_errors():
      try:
        self._manager.close()
      except Exception as error:  # pylint: disable=broad-except
        logging.debug("Closing the checkpoints after a failed save: %s", describe_error(error))
