"""The workdir contract: what a run leaves in its workdir and how a rerun treats it.

A workdir holds one run::

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
  what differs (old -> new) before anything is written. A fresh run needs
  another workdir, or this one deleted.

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
"""

from __future__ import annotations

import hashlib
import json
import logging as python_logging
import math
import os
import shutil
import time
from collections.abc import Callable
from typing import Any

import orbax.checkpoint as ocp
import tensorboardX
from absl import logging

from random_bases import config_lib


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
# orbax writes a checkpoint into '<epoch>.orbax-checkpoint-tmp-<n>' and renames it.
ORBAX_TMP_MARKER = ".orbax-checkpoint-tmp"


class WorkdirMismatch(ValueError):
  """The workdir holds a run this config cannot continue."""


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
  tmp = f"{path}.tmp"
  with open(tmp, "w") as f:
    f.write(text)
    f.flush()
    os.fsync(f.fileno())
  os.replace(tmp, path)


def _how_to_start_fresh(path: str) -> str:
  return (
    f"To start a fresh run, pass another --workdir or delete {path}. "
    f"Fields that may change on resume: {', '.join(RESUMABLE_FIELDS)}."
  )


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
    with open(self.metrics_path, "a") as f:
      f.write(strict_json(record) + "\n")
      f.flush()
      os.fsync(f.fileno())

  def summary_writer(self, restored_step: int) -> tensorboardX.SummaryWriter:
    """A TensorBoard writer that hides events written after ``restored_step``.

    TensorBoard drops earlier events at steps >= ``purge_step`` when it meets
    the writer's start event. The nanosecond suffix gives each writer its own
    file (tensorboardX names files by the second, and would overwrite one)
    in the order they were opened.
    """
    return tensorboardX.SummaryWriter(
      self.tensorboard_dir, purge_step=restored_step + 1, filename_suffix=f".{time.time_ns()}"
    )

  def checkpoints(self, *, remove_unfinished: bool = True) -> Checkpoints:
    return Checkpoints(
      self.checkpoint_dir,
      corrupt_dir=self.corrupt_checkpoint_dir,
      remove_unfinished=remove_unfinished,
    )


class Checkpoints:
  """Orbax checkpoints keyed by epoch; restoring falls back past unreadable ones."""

  def __init__(
    self, directory: str, *, corrupt_dir: str, max_to_keep: int = 2, remove_unfinished: bool = True
  ):
    self.directory = os.path.abspath(directory)
    self.corrupt_dir = corrupt_dir
    # Across processes only one removes them (the others pass False).
    if remove_unfinished and os.path.isdir(self.directory):
      for name in sorted(os.listdir(self.directory)):
        if ORBAX_TMP_MARKER in name:
          logging.warning("Removing %s: a checkpoint a crash left unfinished", name)
          shutil.rmtree(os.path.join(self.directory, name))
    self._manager = ocp.CheckpointManager(
      self.directory, options=ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=True)
    )

  def restore(self, target_for: Callable[[int], Any]) -> tuple[int, Any]:
    """Restores the newest checkpoint that reads back.

    Args:
      target_for: epoch -> the state pytree that checkpoint holds (shapes, dtypes).

    Returns:
      ``(epoch, state)``, or ``(0, None)`` when there is no checkpoint.

    Raises:
      RuntimeError: no checkpoint reads back (from the newest one's error):
        more likely a changed state layout than corruption, so nothing is moved.
    """
    unreadable = []
    for epoch in sorted(self._manager.all_steps(), reverse=True):
      try:
        state = self._manager.restore(epoch, args=ocp.args.StandardRestore(target_for(epoch)))
      # A damaged checkpoint fails in tensorstore, in JSON or in orbax, with
      # any of their exception types.
      except Exception as error:  # pylint: disable=broad-except
        first_line = (str(error).splitlines() or [type(error).__name__])[0]
        logging.warning(
          "Checkpoint %s is unreadable (%s: %s)",
          os.path.join(self.directory, str(epoch)),
          type(error).__name__,
          first_line[:300],
        )
        unreadable.append((epoch, error))
        continue
      for bad, _ in unreadable:
        self._set_aside(bad)
      if unreadable:
        logging.warning("Resuming from the checkpoint after epoch %d instead", epoch)
      return epoch, state
    if unreadable:
      epoch, error = unreadable[0]
      raise RuntimeError(
        f"no checkpoint in {self.directory} reads back; the newest, "
        f"epoch {epoch}, fails with: {error}"
      ) from error
    return 0, None

  def _set_aside(self, epoch: int) -> None:
    os.makedirs(self.corrupt_dir, exist_ok=True)
    destination = os.path.join(self.corrupt_dir, str(epoch))
    copy = 1
    while os.path.exists(destination):
      destination = os.path.join(self.corrupt_dir, f"{epoch}.{copy}")
      copy += 1
    shutil.move(os.path.join(self.directory, str(epoch)), destination)
    logging.warning("Moved the unreadable checkpoint of epoch %d to %s", epoch, destination)
    self._manager.reload()

  def save(self, epoch: int, state) -> None:
    """Starts saving; it commits in the background (``wait_until_finished``)."""
    self._manager.save(epoch, args=ocp.args.StandardSave(state))

  def wait_until_finished(self) -> None:
    self._manager.wait_until_finished()

  def close(self) -> None:
    self._manager.close()
