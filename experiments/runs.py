"""Runs of a sweep: their configs, workdirs, statuses and records, and the code they ran from.

A run is one sweep entry at one seed (``make_run``): the config module's
``get_config`` with the entry applied, its data located (``DataLocations``)
and checked. It trains in its own workdir
``<workdir_root>/<model>-<dataset>-<method or phases>-<hash>-s<seed>``
(``workdir_name``); the hash covers the whole config except
``IGNORED_FIELDS``, so raising the epochs extends the same run, any other
change starts a new one, and a run that two tables share is trained once.

When a run ends (finished, stopped early or diverged) ``execute`` writes

* its status, ``reproduce.json`` in the workdir (``STATUS_FILE``): status,
  reason, epochs, wall time, when it ended, and the code it ran from
  (``CodeState``): the commit, whether the tree was clean and, if not, the
  changed files (commit and clean are null outside a git checkout);
* its record, when the run has a record path (the runner gives each run
  ``<records_dir>/<results file stem>/<workdir name>.json``): the status, the
  config, the data's identity (the workdir's ``data.json``) and every
  epoch's metrics (``metrics.jsonl``). Records are small, belong in the
  repository beside the results file, and are what the results are rebuilt
  from when the workdirs are gone (``run_result``) and what ``--verify``
  compares reruns with (``disagreements``).

A run is done (``is_done``) when its status, from the workdir or else from
its record, covers the epochs asked for, or it stopped for good.
"""

from __future__ import annotations

import dataclasses
import datetime
import functools
import hashlib
import json
import os
import re
import subprocess
import time
from collections.abc import Callable
from typing import Any

import jax
from absl import logging

from configs import common
from experiments import results as results_lib
from random_bases import checks, config_lib, train
from random_bases import workdir as workdir_lib
from random_bases.data import sources

TrainFn = Callable[[Any, str], dict]

# Written into each run's workdir once the run ends.
STATUS_FILE = "reproduce.json"


# --- where the data is ----------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class DataLocations:
  """Where each dataset is: per dataset (``--data``), else under one root."""

  per_dataset: dict[str, str]
  root: str | None

  @classmethod
  def parse(cls, data: str, root: str | None) -> DataLocations:
    """From ``--data=mnist=DIR,cifar10=PATH`` and ``--data_root`` (or the env variable)."""
    per_dataset = {}
    for item in filter(None, (s.strip() for s in data.split(","))):
      name, eq, path = item.partition("=")
      if not eq or not path:
        raise ValueError(f"--data item {item!r} must be <dataset>=<path>")
      checks.check_choice("--data dataset", name, sources.DATASET_NAMES)
      per_dataset[name] = os.path.abspath(os.path.expanduser(path))
    root = root or os.environ.get("RANDOM_BASES_DATA_DIR") or None
    return cls(per_dataset, os.path.abspath(os.path.expanduser(root)) if root else None)

  def fill(self, config) -> None:
    """Sets ``data.dir`` unless the config reads the shipped sample or names a dir."""
    if config.data.source == "sample" or config.data.dir:
      return
    dataset = config.data.dataset
    path = self.per_dataset.get(dataset, self.root)
    if path is None:
      raise ValueError(
        f"no location for dataset {dataset!r}: pass --data={dataset}=PATH "
        "or --data_root=DIR (or set RANDOM_BASES_DATA_DIR)"
      )
    if not os.path.exists(path):
      raise ValueError(f"the data location for {dataset!r}, {path}, does not exist")
    config.data.dir = path

  def flags(self) -> list[str]:
    """The flags that reproduce these locations exactly."""
    out = []
    if self.per_dataset:
      out.append("--data=" + ",".join(f"{k}={v}" for k, v in sorted(self.per_dataset.items())))
    if self.root:
      out.append(f"--data_root={self.root}")
    return out


# --- a run and its workdir ----------------------------------------------------------------


@dataclasses.dataclass
class Run:
  """One entry of the sweep at one seed; ``record`` is where its record goes (None: nowhere)."""

  entry: dict[str, Any]
  seed: int
  config: Any
  workdir: str
  record: str | None = None

  @property
  def name(self) -> str:
    return self.entry["name"]


# Fields left out of a workdir's name: a rerun may change them (the workdir
# contract's RESUMABLE_FIELDS) and they change no epoch's metrics. Raising
# train.epochs extends the same run. (metrics.gradient_correlation may change
# too, but a run shared with a table that wants it must have it throughout.)
IGNORED_FIELDS = (
  "train.epochs",
  "train.log_every_steps",
  "train.eval_batch_size",
  "data.dir",
  "data.cache_dir",
)


def config_hash(config) -> str:
  """Digest of the config's non-default fields, without ``IGNORED_FIELDS``.

  Fields at their schema default are left out, so a field added to the
  schema later does not rename the runs made before it.
  """
  defaults = {field.name: field.default for field in config_lib.FIELDS}
  fields = {
    k: v
    for k, v in workdir_lib.flatten(workdir_lib.config_record(config)).items()
    if k not in IGNORED_FIELDS and not (k in defaults and v == defaults[k])
  }
  return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:10]


def workdir_name(config) -> str:
  """``<model>-<dataset>-<method or phases>-<hash>-s<seed>``: one name per distinct run."""
  what = re.sub(r"[^a-z0-9]+", "-", (config.phases or config.method).lower()).strip("-")
  return f"{config.model}-{config.data.dataset}-{what}-{config_hash(config)}-s{config.seed}"


def make_run(
  module,
  arg: str | None,
  entry: dict,
  seed: int,
  *,
  data: DataLocations,
  workdir_root: str,
  records_dir: str | None = None,
) -> Run:
  """The run of ``entry`` at ``seed``: its full config (checked), workdir and record path.

  Args:
    module: the config module (``get_config``).
    arg: the config's argument.
    entry: the sweep entry (``configs/common.py``).
    seed: the run's seed.
    data: where the datasets are.
    workdir_root: the folder of the workdirs.
    records_dir: the folder of the records of the run's results file; None: no record.
  """
  config = module.get_config(arg)
  common.apply(config, entry)
  config.seed = seed
  data.fill(config)
  try:
    config_lib.validate(config)
  except ValueError as e:
    raise ValueError(f"sweep entry {entry['name']!r}: {e}") from e
  name = workdir_name(config)
  record = os.path.join(records_dir, f"{name}.json") if records_dir else None
  return Run(entry, seed, config, os.path.join(workdir_root, name), record)


# --- the code a run runs from ---------------------------------------------------------------

# The checkout this code runs from: experiments/ is not installed, it runs from its tree.
REPOSITORY = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Untracked files under these are code or configs a run may import.
CODE_DIRS = ("random_bases/", "configs/", "experiments/")
# What the runner writes itself (results files, plots, records): changes there
# change no run, and counting them would refuse every sweep after the first.
OUTPUT_DIRS = ("results/",)
# Changed files named in one line (the refusal, a results file's header); the
# rest are counted there, and every one is in the runs' statuses and records.
MAX_NAMED = 10


@dataclasses.dataclass(frozen=True)
class CodeState:
  """The commit the code is at and the files that differ from it (``commit`` None: no checkout)."""

  commit: str | None
  changed: tuple[str, ...] = ()

  @property
  def clean(self) -> bool | None:
    return None if self.commit is None else not self.changed

  def status(self) -> dict[str, Any]:
    """The status and record fields: commit, clean and, if not clean, the changed files."""
    fields = {"commit": self.commit, "clean": self.clean}
    if self.changed:
      fields["changed"] = list(self.changed)
    return fields

  def named(self) -> str:
    """The changed files, the first ``MAX_NAMED`` by name."""
    more = len(self.changed) - MAX_NAMED
    return ", ".join(self.changed[:MAX_NAMED]) + (f" and {more} more" if more > 0 else "")

  def describe(self) -> str:
    """One line for a results file's header."""
    text = results_lib.code_text(self.status())
    return f"{text} (run with --allow_dirty): {self.named()}" if self.changed else text


def _git(root: str, *args: str) -> str:
  # --no-optional-locks: never write the index that others may be using.
  return subprocess.run(
    ["git", "--no-optional-locks", "-C", root, *args], capture_output=True, text=True, check=True
  ).stdout


def git_state(root: str) -> CodeState:
  """The code state of the checkout at ``root`` (asks git, read only).

  Changed: tracked files that differ from HEAD (outside ``OUTPUT_DIRS``) and
  untracked, not ignored files under ``CODE_DIRS``. A folder that is not the
  top of a git checkout with a commit (an installed copy, a copy inside
  another repository) has no commit.
  """
  try:
    top, commit = _git(root, "rev-parse", "--show-toplevel", "HEAD").splitlines()
    status = _git(root, "status", "--porcelain", "-z", "--untracked-files=all")
  except (OSError, ValueError, subprocess.CalledProcessError):
    return CodeState(None)
  if os.path.realpath(top) != os.path.realpath(root):
    return CodeState(None)
  changed = []
  entries = iter(status.split("\0"))
  for entry in filter(None, entries):
    code, path = entry[:2], entry[3:]
    if code[0] in "RC":  # a rename or copy: its source path follows
      next(entries, None)
    if path.startswith(CODE_DIRS) if code == "??" else not path.startswith(OUTPUT_DIRS):
      changed.append(path)
  return CodeState(commit, tuple(sorted(changed)))


@functools.cache
def code_state() -> CodeState:
  """The state of the code this process runs, asked once: before its first run starts."""
  return git_state(REPOSITORY)


def require_clean(allow_dirty: bool) -> CodeState:
  """The code state; a ValueError naming the changed files unless clean or ``allow_dirty``."""
  state = code_state()
  if state.changed and not allow_dirty:
    raise ValueError(
      f"the working tree differs from commit {state.commit[:7]}: {state.named()}; commit "
      "(or remove) them so that runs record the code they ran from, or pass --allow_dirty "
      "(the results file and run records then say so)"
    )
  if state.commit is None:
    logging.warning("%s is not a git checkout: runs record no commit", REPOSITORY)
  return state


# --- reading a run --------------------------------------------------------------------------


def _read_json(path: str) -> Any:
  if not os.path.exists(path):
    return None
  with open(path) as f:
    return json.load(f)


def _write_json(path: str, value: Any) -> None:
  os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
  with open(path + ".tmp", "w") as f:
    json.dump(value, f, indent=1)
    f.write("\n")
  os.replace(path + ".tmp", path)


def read_metrics(path: str) -> list[dict[str, Any]]:
  """The lines of a metrics.jsonl; a line cut off by a crash is skipped."""
  if not os.path.exists(path):
    return []
  rows = []
  with open(path) as f:
    for line in f:
      try:
        rows.append(json.loads(line))
      except json.JSONDecodeError:
        continue
  return rows


def read_status(workdir: str) -> dict | None:
  return _read_json(os.path.join(workdir, STATUS_FILE))


def read_workdir(workdir: str, seed: int) -> results_lib.RunResult:
  """A run as its workdir holds it (nothing, if it has not run)."""
  return results_lib.RunResult(
    seed=seed,
    workdir=workdir,
    metrics=read_metrics(os.path.join(workdir, workdir_lib.METRICS_FILE)),
    status=read_status(workdir),
    data=_read_json(os.path.join(workdir, workdir_lib.DATA_FILE)),
  )


def read_records(folder: str) -> dict[str, dict]:
  """``{workdir name: record}`` of the records in ``folder`` (none if it does not exist)."""
  if not os.path.isdir(folder):
    return {}
  return {
    name[: -len(".json")]: _read_json(os.path.join(folder, name))
    for name in sorted(os.listdir(folder))
    if name.endswith(".json")
  }


def at_length(found: results_lib.RunResult, epochs: int) -> results_lib.RunResult:
  """``found`` as it stood after ``epochs`` epochs, if its workdir has gone further.

  Workdir names leave ``train.epochs`` out, so that raising it extends a run:
  a longer sweep of the same config (another results file) extends this
  run's workdir past the length this run asked for. Its result is the one
  at its own length, which ended there, finished.
  """
  if not any(m.get("epoch", 0) > epochs for m in found.metrics):
    return found
  status = found.status and {**found.status, "status": "finished", "epochs": epochs, "reason": None}
  return dataclasses.replace(
    found, metrics=[m for m in found.metrics if m.get("epoch", 0) <= epochs], status=status
  )


def run_result(run: Run) -> results_lib.RunResult:
  """The run as its record holds it, unless its workdir has gone further (or it has none).

  The record is what the results file regenerates from, so it wins over a
  workdir of the same length: another results file's run of the same config,
  trained from other code, shares the workdir and must not change this file's
  header. A workdir with more epochs (a run extended since its record) wins,
  up to the epochs the run asks for (``at_length``).
  """
  epochs = run.config.train.epochs
  found = at_length(read_workdir(run.workdir, run.seed), epochs)
  record = _read_json(run.record) if run.record else None
  if record is None or len(found.metrics) > len(record["metrics"]):
    return found
  return at_length(
    results_lib.RunResult(
      seed=run.seed,
      workdir=run.workdir,
      metrics=record["metrics"],
      status=record["status"],
      data=record["data"],
    ),
    epochs,
  )


def is_done(run: Run) -> bool:
  """Finished at (at least) the epochs asked for, or stopped for good."""
  status = run_result(run).status
  if status is None:
    return False
  if status["status"] in ("stopped", "diverged"):
    return True
  return status["epochs"] >= run.config.train.epochs


# --- records ------------------------------------------------------------------------------


def run_record(run: Run) -> dict[str, Any]:
  """The record of the run its workdir holds, to the run's epochs: what it is, ran, measured."""
  found = at_length(read_workdir(run.workdir, run.seed), run.config.train.epochs)
  return {
    "name": run.name,
    "seed": run.seed,
    "workdir": os.path.basename(run.workdir),
    "status": found.status,
    "config": workdir_lib.config_record(run.config),
    "data": found.data,
    "metrics": found.metrics,
  }


def write_record(run: Run) -> None:
  _write_json(run.record, run_record(run))
  logging.info("Record of %s, seed %d: %s", run.name, run.seed, run.record)


def export_records(runs: list[Run]) -> None:
  """Writes the missing records of the runs that their workdirs hold as done.

  Such runs ran before records were kept, or for another results file that shares them.
  """
  for run in runs:
    if run.record and not os.path.exists(run.record) and read_status(run.workdir) and is_done(run):
      write_record(run)


def is_timing(key: str) -> bool:
  """Metrics of how long an epoch took, which no rerun repeats."""
  return key.endswith(("_seconds", "_per_second"))


def disagreements(recorded: dict, rerun: dict) -> list[str]:
  """What of a rerun's record differs from a recorded one, compared exactly.

  ``status`` (finished, stopped, diverged), ``data`` (the fingerprint of what
  it trained on), ``epochs`` (how many have metrics), else the metric names
  whose JSON values differ at any epoch (timings left out): JSON floats are
  written to round-trip, so equal text is equal bits.
  """
  found = []
  if recorded["status"]["status"] != rerun["status"]["status"]:
    found.append("status")
  if (recorded["data"] or {}).get("fingerprint") != (rerun["data"] or {}).get("fingerprint"):
    found.append("data")
  if len(recorded["metrics"]) != len(rerun["metrics"]):
    found.append("epochs")
  for old, new in zip(recorded["metrics"], rerun["metrics"], strict=False):
    for key in sorted(set(old) | set(new)):
      text = [json.dumps(line.get(key)) for line in (old, new)]
      if not is_timing(key) and text[0] != text[1] and key not in found:
        found.append(key)
  return found


# --- running --------------------------------------------------------------------------------


def execute(run: Run, train_fn: TrainFn) -> tuple[dict, dict | None]:
  """Trains ``run`` (resuming its workdir), writes its status and, if it has one, its record.

  A diverged run (``train.TrainingDiverged``) is a result, not an error: its
  status says so and the sweep goes on.

  Returns:
    The status, and what ``train_fn`` returned (None if the run diverged).
  """
  before = read_status(run.workdir) or {}
  earlier = before.get("wall_seconds")
  if earlier is None:  # sessions killed before the end left no status: their epochs' time
    earlier = sum(
      m.get("train_seconds", 0.0) + m.get("eval_seconds", 0.0)
      for m in read_metrics(os.path.join(run.workdir, workdir_lib.METRICS_FILE))
    )
  start = time.perf_counter()
  result = None
  try:
    result = train_fn(run.config, run.workdir)
    status = {"status": "stopped" if result["stopped"] else "finished", "reason": result["stopped"]}
  except train.TrainingDiverged as e:
    logging.warning("%s (seed %d) diverged: %s", run.name, run.seed, e)
    status = {"status": "diverged", "reason": str(e)}
  finally:
    jax.clear_caches()  # each run compiles its own steps; keep memory flat
  status.update(
    epochs=run.config.train.epochs,
    **code_state().status(),
    # On CPU the numbers depend on the process's device count (XLA splits its work by
    # it): --verify reruns in a process with as many.
    devices=jax.device_count(),
    platform=jax.devices()[0].platform,
    # This session's time, plus the earlier sessions' (for a killed session only the train
    # and eval time of its epochs, which leaves its loading and compiling out).
    wall_seconds=earlier + time.perf_counter() - start,
    ended=datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
  )
  _write_json(os.path.join(run.workdir, STATUS_FILE), status)
  if run.record:
    write_record(run)
  return status, result


class Progress:
  """ "run k of n" and the ETA: the mean wall time of this session's runs times those left."""

  def __init__(self, total: int):
    self.total, self.done, self.timed, self.seconds = total, 0, 0, 0.0

  def start(self, run: Run) -> None:
    self.done += 1
    logging.info(
      "[run %d of %d] %s, seed %d -> %s", self.done, self.total, run.name, run.seed, run.workdir
    )

  def finish(self, run: Run, seconds: float, status: dict) -> None:
    self.seconds += seconds
    self.timed += 1
    left = self.total - self.done
    eta = results_lib.format_seconds(self.seconds / self.timed * left)
    logging.info(
      "[run %d of %d] %s, seed %d: %s in %s; %d left, ETA of the sweep %s",
      self.done,
      self.total,
      run.name,
      run.seed,
      status["status"],
      results_lib.format_seconds(seconds),
      left,
      eta,
    )

  def skip(self, run: Run, reason: str) -> None:
    logging.warning(
      "[run %d of %d] %s, seed %d: skipped: %s", self.done, self.total, run.name, run.seed, reason
    )

  def grow(self, runs: int) -> None:
    """More runs than planned (the tuner's refinements)."""
    self.total += runs


def run_all(
  runs: list[Run], *, train_fn: TrainFn, after_each: Callable[[], None] = lambda: None
) -> None:
  """Runs every unfinished run in order, calling ``after_each`` when one ends.

  A run whose workdir another process holds (``workdir_lib.WorkdirLocked``:
  another sweep trains it now) is skipped with one line; rerunning the sweep
  once that process is done picks it up. A run another sweep finished after
  this one listed it is skipped too, its status and record left as that
  sweep wrote them.
  """
  export_records(runs)
  # A run two entries share (same config) is trained once.
  todo = list({run.workdir: run for run in runs if not is_done(run)}.values())
  logging.info(
    "%d runs in the sweep, %d finished already, %d to run",
    len(runs),
    len(runs) - len(todo),
    len(todo),
  )
  progress = Progress(len(todo))
  held = 0
  for run in todo:
    progress.start(run)
    if is_done(run):  # another sweep finished it since this one listed it
      progress.skip(run, f"finished by another process ({run.workdir})")
      continue
    tic = time.perf_counter()
    try:
      status, _ = execute(run, train_fn)
    except workdir_lib.WorkdirLocked:
      progress.skip(run, f"held by another process ({run.workdir})")
      held += 1
      continue
    progress.finish(run, time.perf_counter() - tic, status)
    after_each()
  if held:
    logging.warning(
      "%d run(s) skipped: another process holds their workdirs; rerun this command when "
      "it is done to fill them in",
      held,
    )
