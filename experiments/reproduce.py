"""One command per table and figure: run a config's sweep, write its results and plots.

  python -m experiments.reproduce --config=configs/table1.py[:arg] --data_root=DIR \
      [--data=fashion_mnist=/usr/share/datasets/fashion-mnist] [--seeds=0,1,2]

Run from the repository root (the configs import ``configs.common``).

The config (``configs/common.py`` states the protocol) gives the base config,
``sweep(arg)`` (every run as override dicts) and ``report(arg)`` (the results
file's name, title, scale, columns and plots). A sweep entry holds dotted
config fields plus these keys, which describe the run: ``name`` (the table
row, unique), ``paper`` ({metric: (mean, std)} in the table's units),
``rate`` (the learning rate and its source, printed), ``panel`` and
``label`` (which plot panel(s) and legend entry), ``x`` (its abscissa in
plots against d or K), and the tuner's ``group`` and ``log2_rate``.

Each entry runs once per seed, one run after another, each in its own
workdir ``<workdir_root>/<model>-<dataset>-<method>-<hash>-s<seed>``; the
hash covers the whole config except ``IGNORED_FIELDS`` (train.epochs, where
the data lives, ...), so raising the epochs extends the same runs, any other
change starts new ones, and a run that two tables share (Table 1's
CNN-CIFAR10 RBD is Fig. 4's K = 1) is trained once. When a run ends the
runner writes ``reproduce.json`` beside its metrics (status, epochs, wall
time, code version); a rerun skips runs whose status covers the epochs asked
for, and the trainer resumes a killed run from its last checkpoint. After
every run the results file ``<results_dir>/<report name>.md`` and its plots
are rewritten from all the workdirs, so they always show where the sweep
stands.

Data is never looked for in this checkout: ``--data=name=PATH,...`` names a
dataset's folder (or image-folder archive), ``--data_root`` (default
``$RANDOM_BASES_DATA_DIR``) a folder of datasets (``mnist/``,
``fashion_mnist/``, ``cifar10/`` or ``cifar10-jpeg/``, ...). They fill
``data.dir`` of every run whose config leaves it empty (runlocal's shipped
sample needs neither); the data layer's ``auto`` source then reads what is
there and never falls back to the sample. The exact command, with the data
locations resolved, heads the results file.
"""

from __future__ import annotations

import dataclasses
import datetime
import functools
import hashlib
import importlib.util
import json
import os
import platform
import re
import shlex
import subprocess
import sys
import time
import types
from collections.abc import Callable
from typing import Any

import jax
from absl import app, flags, logging

from configs import common
from experiments import results as results_lib
from random_bases import checks, config_lib, train
from random_bases import workdir as workdir_lib
from random_bases.data import sources

TrainFn = Callable[[Any, str], dict]


# --- the config ---------------------------------------------------------------


def load_config_module(path: str) -> types.ModuleType:
  """The config file as a module (get_config, sweep, report)."""
  if not os.path.isfile(path):
    raise ValueError(f"--config: no file {path!r}")
  name = "config_" + re.sub(r"\W", "_", os.path.splitext(os.path.basename(path))[0])
  module = importlib.util.module_from_spec(importlib.util.spec_from_file_location(name, path))
  module.__spec__.loader.exec_module(module)
  for function in ("get_config", "sweep", "report"):
    if not callable(getattr(module, function, None)):
      raise ValueError(
        f"config {path} has no {function}(arg); configs/common.py "
        "states what a sweep config defines"
      )
  return module


def split_spec(spec: str) -> tuple[str, str | None]:
  """``"configs/x.py:a=1"`` -> ``("configs/x.py", "a=1")``."""
  path, colon, arg = spec.partition(":")
  return path, (arg if colon else None)


# --- data locations -------------------------------------------------------------


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


# --- runs -----------------------------------------------------------------------


@dataclasses.dataclass
class Run:
  """One entry of the sweep at one seed."""

  entry: dict[str, Any]
  seed: int
  config: Any
  workdir: str

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
  module, arg: str | None, entry: dict, seed: int, *, data: DataLocations, workdir_root: str
) -> Run:
  """The run of ``entry`` at ``seed``: its full config (checked) and its workdir."""
  config = module.get_config(arg)
  common.apply(config, entry)
  config.seed = seed
  data.fill(config)
  try:
    config_lib.validate(config)
  except ValueError as e:
    raise ValueError(f"sweep entry {entry['name']!r}: {e}") from e
  return Run(entry, seed, config, os.path.join(workdir_root, workdir_name(config)))


def select(entries: list[dict], only: str) -> list[dict]:
  """The entries whose name matches the regular expression ``only`` ('' = all)."""
  names = [e["name"] for e in entries]
  if len(set(names)) != len(names):
    raise ValueError(f"sweep entry names must be unique: {names}")
  if not only:
    return entries
  chosen = [e for e in entries if re.search(only, e["name"])]
  if not chosen:
    raise ValueError(f"--only={only!r} matches no entry; entries: {names}")
  return chosen


# --- running ----------------------------------------------------------------------


def read_status(workdir: str) -> dict | None:
  path = os.path.join(workdir, results_lib.STATUS_FILE)
  if not os.path.exists(path):
    return None
  with open(path) as f:
    return json.load(f)


def is_done(run: Run) -> bool:
  """Finished at (at least) the epochs asked for, or stopped for good."""
  status = read_status(run.workdir)
  if status is None:
    return False
  if status["status"] in ("stopped", "diverged"):
    return True
  return status["epochs"] >= run.config.train.epochs


def execute(run: Run, train_fn: TrainFn) -> tuple[dict, dict | None]:
  """Trains ``run`` (resuming its workdir) and writes its status.

  A diverged run (``train.TrainingDiverged``) is a result, not an error: its
  status says so and the sweep goes on.

  Returns:
    The status, and what ``train_fn`` returned (None if the run diverged).
  """
  before = read_status(run.workdir) or {}
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
    code=code_version(),
    wall_seconds=before.get("wall_seconds", 0.0) + time.perf_counter() - start,
    ended=datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
  )
  os.makedirs(run.workdir, exist_ok=True)
  path = os.path.join(run.workdir, results_lib.STATUS_FILE)
  with open(path + ".tmp", "w") as f:
    json.dump(status, f, indent=2)
  os.replace(path + ".tmp", path)
  return status, result


class Progress:
  """ "run k of n" and the ETA: the mean wall time of this session's runs times those left."""

  def __init__(self, total: int):
    self.total, self.done, self.seconds = total, 0, 0.0

  def start(self, run: Run) -> None:
    self.done += 1
    logging.info(
      "[run %d of %d] %s, seed %d -> %s", self.done, self.total, run.name, run.seed, run.workdir
    )

  def finish(self, run: Run, seconds: float, status: dict) -> None:
    self.seconds += seconds
    left = self.total - self.done
    eta = results_lib.format_seconds(self.seconds / self.done * left)
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

  def grow(self, runs: int) -> None:
    """More runs than planned (the tuner's refinements)."""
    self.total += runs


def run_all(
  runs: list[Run], *, train_fn: TrainFn, after_each: Callable[[], None] = lambda: None
) -> None:
  """Runs every unfinished run in order, calling ``after_each`` when one ends."""
  # A run two entries share (same config) is trained once.
  todo = list({run.workdir: run for run in runs if not is_done(run)}.values())
  logging.info(
    "%d runs in the sweep, %d finished already, %d to run",
    len(runs),
    len(runs) - len(todo),
    len(todo),
  )
  progress = Progress(len(todo))
  for run in todo:
    progress.start(run)
    tic = time.perf_counter()
    status, _ = execute(run, train_fn)
    progress.finish(run, time.perf_counter() - tic, status)
    after_each()


def collect(runs: list[Run]) -> list[results_lib.Row]:
  """Rows in sweep order, each with its seeds' runs as the workdirs hold them."""
  rows: dict[str, results_lib.Row] = {}
  for run in runs:
    row = rows.setdefault(run.name, results_lib.Row(run.entry, []))
    row.runs.append(results_lib.read_run(run.workdir, run.seed))
  return list(rows.values())


# --- the results file -----------------------------------------------------------------


@functools.cache
def code_version() -> str:
  """The git commit (read only), and whether the tree has uncommitted changes."""
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  git = ["git", "--no-optional-locks"]  # never touch the index others may be using
  try:
    commit = subprocess.run(
      [*git, "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True, text=True, check=True
    ).stdout.strip()
    dirty = subprocess.run(
      [*git, "status", "--porcelain", "--untracked-files=no"],
      cwd=root,
      capture_output=True,
      text=True,
      check=True,
    ).stdout
  except (OSError, subprocess.CalledProcessError):
    return "unknown (not a git checkout)"
  return commit + (" with uncommitted changes" if dirty.strip() else "")


def machine() -> str:
  """Cores, CPU model, jax version and the device the runs use."""
  cpu = platform.processor() or platform.machine()
  if os.path.exists("/proc/cpuinfo"):
    with open("/proc/cpuinfo") as f:
      models = [line.split(":", 1)[1].strip() for line in f if line.startswith("model name")]
    cpu = models[0] if models else cpu
  device = jax.devices()[0]
  return (
    f"{os.cpu_count()} CPU cores ({cpu}), jax {jax.__version__} on {device.platform} "
    f"({device.device_kind})"
  )


def header(command: str, seeds: list[int], only: str) -> list[tuple[str, str]]:
  """The results file's header lines of this invocation."""
  now = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
  return [
    ("Command (from the repository root)", f"`{command}`"),
    ("Seeds", ", ".join(map(str, seeds))),
    ("Entries", f"those matching `{only}`" if only else "all of the sweep"),
    ("Started", now),
    ("Machine", machine()),
    ("Code now", code_version()),
  ]


def command_line(
  spec: str,
  *,
  seeds: list[int],
  data: DataLocations,
  workdir_root: str,
  results_dir: str,
  only: str,
) -> str:
  """The command that reproduces this invocation, data locations resolved."""
  parts = [
    "python",
    "-m",
    "experiments.reproduce",
    f"--config={spec}",
    f"--seeds={','.join(map(str, seeds))}",
    *data.flags(),
    f"--workdir_root={workdir_root}",
    f"--results_dir={results_dir}",
  ]
  if only:
    parts.append(f"--only={only}")
  return " ".join(shlex.quote(p) for p in parts)


def write_results(
  report: dict, runs: list[Run], head: list[tuple[str, str]], results_dir: str
) -> list[str]:
  """The results file and its plots; returns their paths."""
  from experiments import plots  # matplotlib only where plots are drawn

  os.makedirs(results_dir, exist_ok=True)
  rows = collect(runs)
  path = os.path.join(results_dir, f"{report['name']}.md")
  written = plots.draw(report, rows, results_dir)
  text = results_lib.markdown(report=report, rows=rows, header=head)
  if written:
    text += "\nPlots:\n\n" + "".join(
      f"![{os.path.basename(p)}]({os.path.basename(p)})\n" for p in written
    )
  with open(path, "w") as f:
    f.write(text)
  return [path, *written]


# --- the command -------------------------------------------------------------------------


def reproduce(
  spec: str,
  *,
  seeds: list[int],
  data: DataLocations,
  workdir_root: str,
  results_dir: str,
  only: str = "",
  train_fn: TrainFn = train.train_and_evaluate,
) -> list[str]:
  """Runs the sweep of config ``spec`` (resuming) and writes its results; returns the files."""
  path, arg = split_spec(spec)
  module = load_config_module(path)
  report = module.report(arg)
  entries = select(module.sweep(arg), only)

  def runs_of(entry: dict) -> list[Run]:
    return [
      make_run(module, arg, entry, seed, data=data, workdir_root=workdir_root) for seed in seeds
    ]

  runs = [run for entry in entries for run in runs_of(entry)]  # all checked before any runs
  head = header(
    command_line(
      spec, seeds=seeds, data=data, workdir_root=workdir_root, results_dir=results_dir, only=only
    ),
    seeds,
    only,
  )
  if "tune" in report:
    from experiments import tune

    return tune.tune(
      report, runs, runs_of=runs_of, train_fn=train_fn, header=head, results_dir=results_dir
    )
  if "analysis" in report:
    from experiments import analysis

    return analysis.analyse(report, runs, train_fn=train_fn, header=head, results_dir=results_dir)
  run_all(
    runs, train_fn=train_fn, after_each=lambda: write_results(report, runs, head, results_dir)
  )
  written = write_results(report, runs, head, results_dir)
  logging.info("Wrote %s", ", ".join(written))
  return written


def _define_flags() -> None:
  flags.DEFINE_string("config", None, "configs/<name>.py[:arg]", required=True)
  flags.DEFINE_list("seeds", ["0"], "seeds, each entry runs once per seed")
  flags.DEFINE_string(
    "data", "", "dataset locations: mnist=DIR,fashion_mnist=DIR,cifar10=DIR_OR_TAR_GZ"
  )
  flags.DEFINE_string(
    "data_root",
    None,
    "a folder of datasets (mnist/, fashion_mnist/, cifar10/ ...); default $RANDOM_BASES_DATA_DIR",
  )
  flags.DEFINE_string("workdir_root", "runs", "where the runs' workdirs go")
  flags.DEFINE_string("results_dir", "results", "where the results file and plots go")
  flags.DEFINE_string("only", "", "run only the entries whose name matches this regex")


def main(argv) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  workdir_lib.quiet_orbax_logs()
  values = flags.FLAGS
  try:
    seeds = [int(s) for s in values.seeds]
    data = DataLocations.parse(values.data, values.data_root)
    reproduce(
      values.config,
      seeds=seeds,
      data=data,
      workdir_root=values.workdir_root,
      results_dir=values.results_dir,
      only=values.only,
    )
  except (ValueError, workdir_lib.WorkdirMismatch) as e:
    sys.exit(f"{type(e).__name__}: {e}")


if __name__ == "__main__":
  _define_flags()
  app.run(main)
