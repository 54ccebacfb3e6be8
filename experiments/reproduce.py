"""One command per table and figure: run a config's sweep, write its results and plots.

  python -m experiments.reproduce --config=configs/table1.py[:arg] --data_root=DIR \
      [--data=fashion_mnist=/usr/share/datasets/fashion-mnist] [--seeds=0,1,2]
  python -m experiments.reproduce --config=configs/table1.py[:arg] --verify=2 [--data...]

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
workdir under ``--workdir_root`` (``experiments/runs.py``: names, statuses,
records, resuming); a rerun skips the runs that are done, the trainer resumes
a killed run from its last checkpoint, and a run whose workdir another
process holds (another sweep training it) is skipped with one line. After
every run the results file and its plots are rewritten from all the runs, so
they always show where the sweep stands. The file is
``<results_dir>/<report name>.md`` for one selection (the argument's
non-default keys and ``--only``): the one whose command heads that file,
else the config's default argument with every entry; any other selection
writes ``<report name>@<selection>.md``, e.g. ``table1@epochs=1,steps=40.md``
(``results_stem``), so a reduced or partial sweep never overwrites another's.

Each run that ends leaves its record, ``<records_dir>/<results file
stem>/<workdir name>.json`` (``--records_dir``, default
``<results_dir>/runs``), for the user to commit beside the results file: a
run whose record exists is done, and with the workdirs gone the results
file and plots are rewritten from the records alone. The runner commits
nothing. ``--verify=K`` reruns the first K recorded runs in sweep order
(entries as the config lists them, seeds ascending), each in a fresh
temporary workdir, and prints per run whether its metrics agree bit for bit
with its record; it exits with 1 if any differ.

Runs record the commit they ran from, so the runner refuses to start from a
working tree that differs from it (``runs.git_state`` says which changes
count) unless given ``--allow_dirty``; the results file's header and every
run's status and record then say the tree was dirty. Outside a git checkout
it runs and records no commit.

Errors a user can act on end in one line and exit code 1, Ctrl-C in how to
go on and 130 (``random_bases.cli.report_errors``; ``--traceback`` or
``RANDOM_BASES_TRACEBACK=1`` shows the traceback).

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
import hashlib
import importlib.util
import json
import os
import platform
import re
import shlex
import shutil
import sys
import tempfile
import types
from typing import Any

import jax
from absl import app, flags, logging

from configs import common
from experiments import analysis, launch, tune
from experiments import results as results_lib
from experiments.runs import (
  CodeState,
  DataLocations,
  Run,
  TrainFn,
  code_state,
  disagreements,
  execute,
  is_done,
  make_run,
  read_records,
  require_clean,
  run_all,
  run_record,
  run_result,
)
from random_bases import cli, config_lib, train
from random_bases import workdir as workdir_lib

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


# --- the sweep ---------------------------------------------------------------------


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


def collect(runs: list[Run]) -> list[results_lib.Row]:
  """Rows in sweep order, each with its seeds' runs as their workdirs (else records) hold them."""
  rows: dict[str, results_lib.Row] = {}
  for run in runs:
    row = rows.setdefault(run.name, results_lib.Row(run.entry, []))
    row.runs.append(run_result(run))
  return list(rows.values())


# --- the results file -----------------------------------------------------------------


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


def header(command: str, seeds: list[int], only: str, records: str) -> list[tuple[str, str]]:
  """The results file's header lines of this invocation (``records``: its runs' records)."""
  now = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
  return [
    (results_lib.COMMAND_LABEL, f"`{command}`"),
    ("Seeds", ", ".join(map(str, seeds))),
    ("Entries", f"those matching `{only}`" if only else "all of the sweep"),
    ("Started", now),
    ("Machine", machine()),
    ("Code now", code_state().describe()),
    ("Run records", f"{records}/ (one JSON per run)"),
  ]


def command_line(
  spec: str,
  *,
  seeds: list[int],
  data: DataLocations,
  workdir_root: str,
  results_dir: str,
  records_dir: str | None = None,
  only: str,
  launcher_flags: tuple[str, ...] = (),
  module: str = "experiments.reproduce",
) -> str:
  """The command that reproduces this invocation of ``module``, data locations resolved."""
  parts = [
    "python",
    "-m",
    module,
    f"--config={spec}",
    f"--seeds={','.join(map(str, seeds))}",
    *data.flags(),
    f"--workdir_root={workdir_root}",
    f"--results_dir={results_dir}",
  ]
  if records_dir is not None:
    parts.append(f"--records_dir={records_dir}")
  if only:
    parts.append(f"--only={only}")
  parts.extend(launcher_flags)
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


# --- the results file's name -------------------------------------------------------------

# Longest readable part of a results file's selection suffix.
MAX_SLUG = 80


def arg_items(module, arg: str | None) -> dict[str, Any]:
  """The keys of ``arg`` that differ from their defaults, in the order the config declares them.

  The keys and defaults are those the config's ``report`` hands to
  ``parse_arg``, so ``steps=40,epochs=1`` and ``epochs=1,steps=40,eval=-1``
  are the same selection.
  """
  accepted = config_lib.config_args(module.report, arg)
  parsed = config_lib.parse_arg(arg, **{a.name: a.default for a in accepted})
  return {a.name: parsed[a.name] for a in accepted if parsed[a.name] != a.default}


def selection_slug(items: dict[str, Any], only: str) -> str:
  """``epochs=1,steps=40[,only=REGEX]`` (or ``default``): a sweep's selection in a file name.

  Characters that a file name or a markdown link would mangle become ``_``,
  and a hash of the exact text then keeps selections apart, as it does for
  a text longer than ``MAX_SLUG``.
  """
  parts = [
    key if value is True else f"{key}={config_lib.format_arg_value(value)}"
    for key, value in items.items()
  ]
  if only:
    parts.append(f"only={only}")
  text = ",".join(parts) or "default"
  slug = re.sub(r"[^A-Za-z0-9=,.+_-]", "_", text)
  if slug != text or len(slug) > MAX_SLUG:
    slug = f"{slug[: MAX_SLUG - 9]}~{hashlib.sha256(text.encode()).hexdigest()[:8]}"
  return slug


def command_selection(module, command: str | None) -> tuple[dict[str, Any], str] | None:
  """The selection (non-default argument keys, --only) of a reproduce command, or None."""
  if command is None:
    return None
  try:
    words = shlex.split(command)
  except ValueError:
    return None
  spec, only = None, ""
  for word in words:
    if word.startswith("--config="):
      spec = word[len("--config=") :]
    elif word.startswith("--only="):
      only = word[len("--only=") :]
  if spec is None:
    return None
  try:
    return arg_items(module, split_spec(spec)[1]), only
  except ValueError:  # an argument this config no longer takes
    return None


def results_stem(module, stem: str, arg: str | None, only: str, results_dir: str) -> str:
  """The results file's name (without ``.md``) for this sweep: ``stem`` or ``stem@<selection>``.

  ``<stem>.md`` belongs to one selection (the argument's non-default keys
  and ``--only``): to the one whose command heads that file, else, while
  there is none, to the config's default argument with every entry. Any
  other selection writes ``<stem>@<selection>.md`` (``selection_slug``), so
  a reduced or partial sweep never overwrites another's results, and a
  results file rerun with the command in its header keeps its name.
  """
  path = os.path.join(results_dir, f"{stem}.md")
  selection = (arg_items(module, arg), only)
  if os.path.exists(path):
    owner = command_selection(module, results_lib.read_command(path))
  else:
    owner = ({}, "")
  if selection == owner:
    return stem
  return f"{stem}@{selection_slug(*selection)}"


# --- the command -------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Sweep:
  """A config's sweep as one invocation selects it, and the folder of its runs' records."""

  module: types.ModuleType
  arg: str | None
  report: dict  # the config's report, its name that of the results file (``results_stem``)
  entries: list[dict]
  records: str

  @classmethod
  def load(cls, spec: str, *, only: str, results_dir: str, records_dir: str | None) -> Sweep:
    path, arg = split_spec(spec)
    module = load_config_module(path)
    report = module.report(arg)
    entries = select(module.sweep(arg), only)
    report = {**report, "name": results_stem(module, report["name"], arg, only, results_dir)}
    records = os.path.join(records_dir or os.path.join(results_dir, "runs"), report["name"])
    return cls(module, arg, report, entries, records)

  def run(self, entry: dict, seed: int, *, data: DataLocations, workdir_root: str) -> Run:
    return make_run(
      self.module,
      self.arg,
      entry,
      seed,
      data=data,
      workdir_root=workdir_root,
      records_dir=self.records,
    )

  def runs_of(
    self, entry: dict, seeds: list[int], *, data: DataLocations, workdir_root: str
  ) -> list[Run]:
    """``entry``'s runs, one per seed it asks for (``common.entry_seeds``: maybe fewer)."""
    return [
      self.run(entry, seed, data=data, workdir_root=workdir_root)
      for seed in common.entry_seeds(entry, seeds)
    ]


def check_devices(runs: list[Run]) -> None:
  """Refuses, before anything runs, a sweep whose unfinished runs need more workers' devices
  than this process has (K workers train on K devices; the trainer would stop at that run)."""
  todo = [run for run in runs if not is_done(run)]
  if not todo:
    return
  widest = max(todo, key=lambda run: run.config.workers)
  needed, devices = widest.config.workers, jax.devices()
  if needed > len(devices):
    raise ValueError(
      f"workers={needed} (run {widest.name!r}) needs {needed} devices, but this process has "
      f"{len(devices)} {devices[0].platform} device(s); on CPU start the runner with "
      f"XLA_FLAGS=--xla_force_host_platform_device_count={needed}"
    )


def reproduce(
  spec: str,
  *,
  seeds: list[int],
  data: DataLocations,
  workdir_root: str,
  results_dir: str,
  records_dir: str | None = None,
  only: str = "",
  allow_dirty: bool = False,
  train_fn: TrainFn = train.train_and_evaluate,
  cluster: launch.Cluster | None = None,
  partial: bool = False,
  wait: bool = False,
  launcher_flags: tuple[str, ...] = (),
) -> list[str]:
  """Runs the sweep of config ``spec`` (resuming) and writes its results; returns the files.

  With ``cluster`` (``--launcher=submitit``) the runs are submitted as jobs
  instead and the results file is written once all are done, or with
  ``partial`` from those done (``launch.launch``; ``wait``: wait for the
  jobs first). ``launcher_flags`` go into the results file's command.

  Raises:
    ValueError: a bad config, argument or data location, or a working tree that
      differs from its commit without ``allow_dirty``, before anything runs.
  """
  sweep = Sweep.load(spec, only=only, results_dir=results_dir, records_dir=records_dir)
  report = sweep.report
  if cluster is not None and ("tune" in report or "analysis" in report):
    raise ValueError(
      f"--launcher=submitit: {report['name']} is a tuner or analysis sweep whose runs depend on "
      "each other's results; run it with --launcher=local"
    )

  def runs_of(entry: dict) -> list[Run]:
    return sweep.runs_of(entry, seeds, data=data, workdir_root=workdir_root)

  runs = [run for entry in sweep.entries for run in runs_of(entry)]  # all checked before any runs
  require_clean(allow_dirty)
  if cluster is None:
    check_devices(runs)
  logging.info(
    "Results file: %s; run records: %s",
    os.path.join(results_dir, f"{report['name']}.md"),
    sweep.records,
  )
  command = command_line(
    spec,
    seeds=seeds,
    data=data,
    workdir_root=workdir_root,
    results_dir=results_dir,
    records_dir=records_dir,
    only=only,
    launcher_flags=launcher_flags,
  )
  head = header(command, seeds, only, sweep.records)
  if cluster is not None:
    return launch.launch(
      runs,
      name=report["name"],
      cluster=cluster,
      folder=launch.jobs_dir(workdir_root, report["name"]),
      write=lambda chosen, extra: write_results(report, chosen, head + extra, results_dir),
      partial=partial,
      wait_for_jobs=wait,
      train_fn=train_fn,
    )
  if "tune" in report:
    return tune.tune(
      report,
      runs,
      runs_of=runs_of,
      train_fn=train_fn,
      header=head,
      results_dir=results_dir,
      partial=partial,
    )
  if partial:
    raise ValueError(
      f"--partial without --launcher=submitit writes a tuner sweep's file from its finished "
      f"trials; {report['name']} is not a tuner sweep (its file is written after each run)"
    )
  if "analysis" in report:
    return analysis.analyse(report, runs, train_fn=train_fn, header=head, results_dir=results_dir)
  run_all(
    runs, train_fn=train_fn, after_each=lambda: write_results(report, runs, head, results_dir)
  )
  written = write_results(report, runs, head, results_dir)
  logging.info("Wrote %s", ", ".join(written))
  return written


def status(
  spec: str,
  *,
  seeds: list[int],
  data: DataLocations,
  workdir_root: str,
  results_dir: str,
  records_dir: str | None = None,
  only: str = "",
) -> list[launch.RunState]:
  """Prints and returns each run's state (``launch.sweep_state``); writes nothing."""
  sweep = Sweep.load(spec, only=only, results_dir=results_dir, records_dir=records_dir)
  runs = [
    launch.absolute(run)
    for entry in sweep.entries
    for run in sweep.runs_of(entry, seeds, data=data, workdir_root=workdir_root)
  ]
  folder = launch.jobs_dir(workdir_root, sweep.report["name"])
  states = launch.sweep_state(runs, folder)
  launch.print_status(sweep.report["name"], states, folder)
  return states


# --- --verify ------------------------------------------------------------------------------


def recorded_runs(
  sweep: Sweep, records: dict[str, dict], *, data: DataLocations, workdir_root: str
) -> list[Run]:
  """The sweep's runs that have a record, in sweep order: entries as listed, seeds ascending."""
  runs: dict[str, Run] = {}
  for entry in sweep.entries:
    for seed in sorted({r["seed"] for r in records.values() if r["name"] == entry["name"]}):
      run = sweep.run(entry, seed, data=data, workdir_root=workdir_root)
      if os.path.basename(run.workdir) in records:
        runs.setdefault(run.workdir, run)  # a run two entries share is one run
  return list(runs.values())


def headline_metric(report: dict) -> str:
  """The metric a verification line shows: the results file's first column, the tuner's."""
  if report.get("columns"):
    return report["columns"][0]["metric"]
  if "tune" in report:
    return report["tune"]["metric"]
  return "train_loss"


def final_value(record: dict, metric: str) -> str:
  """The last epoch's ``metric`` as its JSON text (exact), or why there is none."""
  if not record["metrics"]:
    return f"none ({record['status']['status']} before its first epoch)"
  return json.dumps(record["metrics"][-1].get(metric))


def verify_run(run: Run, recorded: dict, *, metric: str, now: CodeState, train_fn) -> list[str]:
  """Reruns ``run`` in its (fresh) workdir and prints its line; returns what differs."""
  run = dataclasses.replace(run, record=None)  # the record stays as committed
  execute(run, train_fn)
  rerun = run_record(run)
  differ = disagreements(recorded, rerun)
  shown = next((key for key in differ if key not in ("status", "data", "epochs")), metric)
  line = (
    f"{run.name}, seed {run.seed}: {shown} recorded {final_value(recorded, shown)}, rerun "
    f"{final_value(rerun, shown)}: " + (f"DIFFER ({', '.join(differ)})" if differ else "AGREE")
  )
  if recorded["status"].get("commit") != now.commit:
    line += (
      f" (recorded at {results_lib.code_text(recorded['status'])}, "
      f"rerun at {results_lib.code_text(now.status())})"
    )
  print(line, flush=True)
  return differ


def check_same_devices(runs: list[Run], records: dict[str, dict]) -> None:
  """Refuses to rerun a run recorded in a process with another number of devices.

  On CPU, XLA splits a computation's work by the process's device count
  (``--xla_force_host_platform_device_count``), so one run's floats differ
  between a 1-device and a 16-device process (Fig. 5's records were made
  with 16). Records from before the count was kept are not checked.
  """
  have = jax.device_count()
  for run in runs:
    status = records[os.path.basename(run.workdir)]["status"]
    recorded = status.get("devices")
    if recorded is not None and recorded != have:
      raise ValueError(
        f"{run.name}, seed {run.seed} was recorded in a process with {recorded} "
        f"{status.get('platform', '')} device(s) and this one has {have}: the numbers depend on "
        "it; rerun --verify with as many"
        + (
          f" (on CPU: XLA_FLAGS=--xla_force_host_platform_device_count={recorded})"
          if status.get("platform") == "cpu"
          else ""
        )
      )


def verify(
  spec: str,
  *,
  cells: int,
  data: DataLocations,
  results_dir: str,
  records_dir: str | None = None,
  only: str = "",
  allow_dirty: bool = False,
  train_fn: TrainFn = train.train_and_evaluate,
) -> list[tuple[Run, list[str]]]:
  """Reruns the first ``cells`` recorded runs of the sweep and compares them with their records.

  Each run trains from the current code in a fresh temporary workdir, and
  its metrics at every epoch (timings left out), status and data
  fingerprint must equal its record's exactly (``runs.disagreements``).
  Prints one line per run: name, seed, the headline metric as recorded and
  as rerun, AGREE or DIFFER (and what differs), and the recorded commit
  where it is not the current one.

  Returns:
    Each run rerun, with what of it differs from its record (nothing: agrees).

  Raises:
    ValueError: the sweep has no records, the working tree differs from its
      commit and not ``allow_dirty``, or a chosen run was recorded with another
      number of devices (``check_same_devices``), before anything runs.
  """
  if cells < 1:
    raise ValueError(f"--verify={cells}: the number of runs to rerun must be at least 1")
  sweep = Sweep.load(spec, only=only, results_dir=results_dir, records_dir=records_dir)
  # --only picks cells of the file the whole sweep writes, so the records are that file's.
  whole = Sweep.load(spec, only="", results_dir=results_dir, records_dir=records_dir)
  records = read_records(whole.records)
  if not records:
    raise ValueError(f"no run records in {whole.records}: the sweep writes them as its runs end")
  now = require_clean(allow_dirty)
  scratch = tempfile.mkdtemp(prefix="verify-")
  try:
    runs = recorded_runs(sweep, records, data=data, workdir_root=scratch)
    stale = sorted(set(records) - {os.path.basename(run.workdir) for run in runs})
    if stale and not only:
      print(f"Records of runs this sweep no longer has (its config changed?): {', '.join(stale)}")
    chosen = runs[:cells]
    check_same_devices(chosen, records)
    print(
      f"Rerunning {len(chosen)} of the {len(runs)} recorded runs of {whole.report['name']} "
      f"(the first in sweep order) at {now.describe()}",
      flush=True,
    )
    metric = headline_metric(sweep.report)
    found = []
    for run in chosen:
      recorded = records[os.path.basename(run.workdir)]
      found.append((run, verify_run(run, recorded, metric=metric, now=now, train_fn=train_fn)))
      shutil.rmtree(run.workdir, ignore_errors=True)  # checkpoints can be large
  finally:
    shutil.rmtree(scratch, ignore_errors=True)
  return found


def define_sweep_flags(*, config_help: str, seeds_help: str) -> None:
  """The flags of every sweep command (this one, experiments.intrinsic_dimension).

  ``--config``, ``--seeds``, the data locations, where workdirs, results and
  records go, ``--allow_dirty`` and ``--traceback``.
  """
  flags.DEFINE_string("config", None, config_help, required=True)
  flags.DEFINE_list("seeds", ["0"], seeds_help)
  flags.DEFINE_string(
    "data", "", "dataset locations: mnist=DIR,fashion_mnist=DIR,cifar10=DIR_OR_TAR_GZ"
  )
  flags.DEFINE_string(
    "data_root",
    None,
    "a folder of datasets (mnist/, fashion_mnist/, cifar10/ ...); default $RANDOM_BASES_DATA_DIR",
  )
  flags.DEFINE_string("workdir_root", "runs", "where the runs' workdirs go")
  flags.DEFINE_string(
    "results_dir",
    "results",
    "where the results file and plots go: <name>.md for the selection whose command heads it "
    "(else the config's default argument), <name>@<arg,only=...>.md for any other",
  )
  flags.DEFINE_string(
    "records_dir",
    None,
    "where the runs' records go, <records_dir>/<results file name>/<run>.json; default "
    "<results_dir>/runs",
  )
  flags.DEFINE_bool(
    "allow_dirty",
    False,
    "run although the working tree differs from its commit (the results file and records say so)",
  )
  cli.define_traceback_flag()
  flags.declare_key_flag("traceback")  # listed by the command's --help


def _define_flags() -> None:
  define_sweep_flags(
    config_help="configs/<name>.py[:arg]", seeds_help="seeds, each entry runs once per seed"
  )
  flags.DEFINE_string("only", "", "run only the entries whose name matches this regex")
  flags.DEFINE_integer(
    "verify",
    None,
    "instead of the sweep, rerun the first K recorded runs (sweep order; their own seeds) in "
    "fresh workdirs and check that their metrics equal the records bit for bit",
  )
  flags.DEFINE_string(
    "launcher",
    "local",
    f"how the runs run: {' or '.join(launch.LAUNCHERS)} (one after another in this process) or "
    "submitit (one cluster job per run; experiments/launch.py)",
  )
  flags.DEFINE_bool(
    "status",
    False,
    "print each run's state (done, running, queued, failed, not submitted) and change nothing",
  )
  # The flags below apply to --launcher=submitit only.
  flags.DEFINE_string(
    "cluster", "slurm", f"submitit: where the jobs run: {', '.join(launch.CLUSTERS)}"
  )
  flags.DEFINE_string("partition", None, "submitit: the SLURM partition")
  flags.DEFINE_integer(
    "time_min", 240, "submitit: each job's time limit in minutes (then requeued)"
  )
  flags.DEFINE_integer("gpus_per_job", -1, "submitit: GPUs per job; -1: the run's workers")
  flags.DEFINE_integer("cpus_per_job", None, "submitit: CPUs per job process")
  flags.DEFINE_float("mem_gb", None, "submitit: memory per node in GB")
  flags.DEFINE_integer("nodes", 1, "submitit: nodes per job, one process each")
  flags.DEFINE_multi_string(
    "sbatch", [], "submitit: an extra sbatch option as option=value (repeatable)"
  )
  flags.DEFINE_integer("array_parallelism", 256, "submitit: jobs of one array running at once")
  flags.DEFINE_bool(
    "partial",
    False,
    "with runs not done, write the results file from the done ones (submitit; locally, a "
    "tuner sweep's file from its finished trials, training nothing)",
  )
  flags.DEFINE_bool("wait", False, "submitit: wait for the submitted jobs, then write the results")


# Flags that only --launcher=submitit reads, and what reproduce() calls them.
SUBMITIT_FLAGS = (
  "cluster",
  "partition",
  "time_min",
  "gpus_per_job",
  "cpus_per_job",
  "mem_gb",
  "nodes",
  "sbatch",
  "array_parallelism",
  "wait",
)


def cluster_from_flags(values) -> launch.Cluster | None:
  """The cluster of ``--launcher=submitit`` (None: the local launcher), checked.

  Raises:
    ValueError: an unknown launcher or cluster, a bad resource, or a
      submitit flag given to the local launcher.
  """
  launch.check_launcher(values.launcher)
  given = [f"--{name}" for name in SUBMITIT_FLAGS if values[name].present]
  if values.launcher == "local":
    if given:
      raise ValueError(f"{', '.join(given)} apply to --launcher=submitit only")
    return None
  return launch.Cluster(
    kind=values.cluster,
    partition=values.partition,
    time_min=values.time_min,
    gpus_per_job=values.gpus_per_job,
    cpus_per_job=values.cpus_per_job,
    mem_gb=values.mem_gb,
    nodes=values.nodes,
    sbatch=launch.Cluster.parse_sbatch(values.sbatch),
    array_parallelism=values.array_parallelism,
  )


def launcher_flags(values) -> tuple[str, ...]:
  """The launcher's flags as given, for the results file's command."""
  if values.launcher == "local":
    return ()
  given = [f"--launcher={values.launcher}"]
  for name in SUBMITIT_FLAGS:
    if values[name].present and name not in ("partial", "wait"):
      flag = values[name]
      items = flag.value if isinstance(flag.value, list) else [flag.value]
      given += [f"--{name}={item}" for item in items]
  return tuple(given)


def interrupted_message(module: str = "experiments.reproduce") -> str:
  """What Ctrl-C prints: the sweep keeps its runs, and ``module``'s same command goes on."""
  command = shlex.join(["python", "-m", module, *sys.argv[1:]])
  return (
    "Interrupted: finished runs are kept and the interrupted one resumes from its last "
    f"checkpoint; the same command goes on: {command}"
  )


def parse_seeds(values: list[str]) -> list[int]:
  try:
    return [int(s) for s in values]
  except ValueError as e:
    raise ValueError(f"--seeds={','.join(values)} must be integers") from e


def main(argv) -> None:
  if len(argv) > 1:
    sys.exit(f"Unexpected arguments: {argv[1:]} (--help lists the flags)")
  workdir_lib.quiet_orbax_logs()
  values = flags.FLAGS

  records_dir = values.records_dir and os.path.expanduser(values.records_dir)

  def run() -> None:
    cluster = cluster_from_flags(values)  # bad launcher flags stop here, before any run
    if values.status:
      status(
        values.config,
        seeds=parse_seeds(values.seeds),
        data=DataLocations.parse(values.data, values.data_root),
        workdir_root=os.path.expanduser(values.workdir_root),
        results_dir=os.path.expanduser(values.results_dir),
        records_dir=records_dir,
        only=values.only,
      )
      return
    reproduce(
      values.config,
      seeds=parse_seeds(values.seeds),
      data=DataLocations.parse(values.data, values.data_root),
      workdir_root=os.path.expanduser(values.workdir_root),
      results_dir=os.path.expanduser(values.results_dir),
      records_dir=records_dir,
      only=values.only,
      allow_dirty=values.allow_dirty,
      cluster=cluster,
      partial=values.partial,
      wait=values.wait,
      launcher_flags=launcher_flags(values),
    )

  def check() -> None:
    if values.launcher != "local" or values.status:
      raise ValueError("--verify reruns runs in this process: without --launcher and --status")
    found = verify(
      values.config,
      cells=values.verify,
      data=DataLocations.parse(values.data, values.data_root),
      results_dir=os.path.expanduser(values.results_dir),
      records_dir=records_dir,
      only=values.only,
      allow_dirty=values.allow_dirty,
    )
    differ = [run for run, differences in found if differences]
    if differ:
      sys.exit(f"{len(differ)} of {len(found)} rerun(s) DIFFER from their records")

  if values.verify is None:
    cli.report_errors(run, interrupted=interrupted_message)
  else:
    cli.report_errors(check, interrupted=lambda: "Interrupted: nothing of the checkout was changed")


if __name__ == "__main__":
  _define_flags()
  app.run(main, flags_parser=cli.parse_absl_flags)
