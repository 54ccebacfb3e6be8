"""Launching a sweep's runs as cluster jobs through submitit (``--launcher=submitit``).

``experiments/reproduce.py`` runs a sweep's runs one after another in its own
process (``--launcher=local``). With ``--launcher=submitit`` each run that is
not done becomes one submitit job instead: on SLURM (``--cluster=slurm``,
one job array per distinct resource request, at most
``--array_parallelism`` running at once) or as local processes
(``--cluster=local``, submitit's ``LocalExecutor``, to try the path on one
machine). A job is ``RunJob``: it trains its run in the run's workdir and
writes the same status and record as a local run (``runs.execute``), so
both launchers fill the same workdirs and records and either can finish a
sweep the other started.

A run's ``workers`` (K) map to K GPUs of its job (``--gpus_per_job``
overrides; 0 requests none and, for K > 1, gives the job K CPU devices);
with ``--nodes=N`` the job runs one process per node, each with K/N GPUs,
joined by ``jax.distributed.initialize`` from submitit's ``JobEnvironment``.

Per sweep, ``<workdir_root>/submitit/<results file name>/`` holds
``jobs.json`` (the cluster and each run's job id, with the ids of its earlier
jobs) and ``logs/`` (submitit's pickles and each job's ``<id>_0_log.out`` and
``.err``). Rerunning the same command submits only what is neither done nor
queued nor running: a run whose record exists is never submitted again; a
failed, killed or timed-out job's run is submitted anew and its trainer
resumes from the workdir's last checkpoint (a job that SLURM preempts or
times out is requeued by submitit itself, ``RunJob.checkpoint``). The
results file is written when every run is done, or with ``--partial`` from
the done runs, its header naming the missing ones. ``--status`` prints each
run's state (``sweep_state``) and writes nothing.

submitit is imported only here, and only when used (the ``cluster`` extra:
``pip install 'random-bases[cluster]'``); ``random_bases`` never imports it.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import os
import pickle
import re
import shlex
import shutil
import time
from collections.abc import Callable
from typing import Any

from absl import logging

from experiments.runs import (
  REPOSITORY,
  Run,
  TrainFn,
  execute,
  export_records,
  is_done,
  read_metrics,
)
from random_bases import checks, distributed, train
from random_bases import workdir as workdir_lib

LAUNCHERS = ("local", "submitit")
CLUSTERS = ("slurm", "local")
# Per sweep, under the workdir root: jobs.json and submitit's logs/.
JOBS_DIR = "submitit"
JOBS_FILE = "jobs.json"
# A run's state as --status prints it, in this order.
STATES = ("done", "running", "queued", "failed", "not submitted")
# SLURM job states (sacct) that mean the job will still run or runs now.
SLURM_QUEUED = ("PENDING", "REQUEUED", "REQUEUE_FED", "REQUEUE_HOLD", "RESV_DEL_HOLD", "SUSPENDED")
SLURM_RUNNING = ("RUNNING", "COMPLETING", "CONFIGURING", "RESIZING", "SIGNALING", "STAGE_OUT")
# Where process 0 of a multi-node job serves JAX's coordinator: this port plus
# the job id modulo PORT_SPAN, so that two jobs on one node rarely collide.
COORDINATOR_PORT = 12400
PORT_SPAN = 20000
# submitit's logging set-up switch, read when it is imported.
SUBMITIT_LOG_LEVEL = "SUBMITIT_LOG_LEVEL"


def require_submitit():
  """The submitit module; a one-line ValueError saying how to install it when it is missing."""
  # Importing submitit runs logging.config.dictConfig, which closes every logging handler
  # already installed (absl's, a test runner's); NOCONFIG skips that, and submitit's
  # messages go to the root logger's handlers instead. Jobs are fresh processes: unaffected.
  user_level = os.environ.get(SUBMITIT_LOG_LEVEL)
  os.environ[SUBMITIT_LOG_LEVEL] = user_level or "NOCONFIG"
  try:
    import submitit  # the cluster extra: only this launcher needs it
  except ImportError as e:
    raise ValueError(
      "--launcher=submitit needs submitit: pip install 'random-bases[cluster]'"
    ) from e
  finally:
    if user_level is None:
      del os.environ[SUBMITIT_LOG_LEVEL]
  return submitit


# --- the cluster -------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Cluster:
  """Where each run's job runs and what it asks for.

  Attributes:
    kind: ``slurm`` or ``local`` (submitit's LocalExecutor: processes on this machine).
    partition: the SLURM partition (None: the cluster's default).
    time_min: each job's time limit in minutes; a job that reaches it is requeued
      by submitit and resumes from its run's last checkpoint.
    gpus_per_job: GPUs per job; -1: the run's ``workers`` (K workers on K GPUs).
    cpus_per_job: CPUs per job's process (None: the cluster's default).
    mem_gb: memory per node in GB (None: the cluster's default).
    nodes: nodes per job, one process each (``jax.distributed.initialize``).
    sbatch: extra sbatch options (submitit's ``slurm_additional_parameters``).
    array_parallelism: at most this many jobs of one job array run at once.
  """

  kind: str
  partition: str | None = None
  time_min: int = 240
  gpus_per_job: int = -1
  cpus_per_job: int | None = None
  mem_gb: float | None = None
  nodes: int = 1
  sbatch: dict[str, str] = dataclasses.field(default_factory=dict)
  array_parallelism: int = 256

  def __post_init__(self):
    checks.check_choice("--cluster", self.kind, CLUSTERS)
    for name, value, least in (
      ("--time_min", self.time_min, 1),
      ("--gpus_per_job", self.gpus_per_job, -1),
      ("--nodes", self.nodes, 1),
      ("--array_parallelism", self.array_parallelism, 1),
    ):
      if value < least:
        raise ValueError(f"{name}={value} must be at least {least}")
    if self.cpus_per_job is not None and self.cpus_per_job < 1:
      raise ValueError(f"--cpus_per_job={self.cpus_per_job} must be at least 1")
    if self.mem_gb is not None and not self.mem_gb > 0:
      raise ValueError(f"--mem_gb={self.mem_gb} must be positive")
    if self.kind == "local" and self.nodes != 1:
      raise ValueError(f"--nodes={self.nodes}: --cluster=local runs on this one machine (nodes=1)")

  @staticmethod
  def parse_sbatch(items: list[str]) -> dict[str, str]:
    """``["constraint=a100", "account=x"]`` -> ``{"constraint": "a100", "account": "x"}``."""
    options = {}
    for item in items:
      key, eq, value = item.partition("=")
      key = key.strip().lstrip("-")
      if not eq or not key:
        raise ValueError(f"--sbatch={item!r} must be <option>=<value>, e.g. constraint=a100")
      options[key] = value
    return options

  def resources(self, run: Run) -> tuple[int, int]:
    """``(nodes, GPUs per node)`` of the job of ``run``.

    Raises:
      ValueError: the GPUs do not split evenly over the nodes.
    """
    gpus = run.config.workers if self.gpus_per_job == -1 else self.gpus_per_job
    if gpus % self.nodes:
      raise ValueError(
        f"{run.name}, seed {run.seed}: {gpus} GPU(s) per job (workers={run.config.workers}) "
        f"do not split over --nodes={self.nodes}"
      )
    return self.nodes, gpus // self.nodes

  def describe(self) -> str:
    """One line for the results file's header."""
    return f"submitit on {self.kind}" + (f" (partition {self.partition})" if self.partition else "")


def check_launcher(launcher: str) -> None:
  """A ValueError naming the allowed values unless ``launcher`` is one."""
  checks.check_choice("--launcher", launcher, LAUNCHERS)


# --- one run as a job -----------------------------------------------------------------------


def _coordinator(environment) -> str:
  """``host:port`` of process 0 of a multi-node job."""
  digits = re.sub(r"\D", "", str(environment.job_id)) or "0"
  return f"{environment.hostnames[0]}:{COORDINATOR_PORT + int(digits[-9:]) % PORT_SPAN}"


@dataclasses.dataclass
class RunJob:
  """One run as a submitit job: trains it in its workdir, then writes its status and record.

  Picklable (submitit sends it to the job): the run (its config, absolute
  workdir and record paths) and the trainer, by reference.
  """

  run: Run
  train_fn: TrainFn = train.train_and_evaluate

  def __call__(self) -> dict | None:
    """Trains the run (resuming); returns its status (None in processes other than 0)."""
    environment = require_submitit().JobEnvironment()
    workdir_lib.quiet_orbax_logs()
    logging.set_verbosity(logging.INFO)
    logging.info(
      "%s, seed %d -> %s (%s)", self.run.name, self.run.seed, self.run.workdir, environment
    )
    if environment.num_tasks > 1:
      distributed.initialize(
        coordinator_address=_coordinator(environment),
        num_processes=environment.num_tasks,
        process_id=environment.global_rank,
      )
      if not distributed.is_primary():  # process 0 alone writes the status and record
        self.train_fn(self.run.config, self.run.workdir)
        return None
    status, _ = execute(self.run, self.train_fn)
    return status

  def checkpoint(self, *args, **kwargs):
    """Preempted or timed out: submitit requeues the same job, whose trainer resumes.

    Nothing needs saving here: the trainer checkpoints every epoch and a
    rerun continues from the workdir's last intact checkpoint.
    """
    return require_submitit().helpers.DelayedSubmission(self, *args, **kwargs)


# --- jobs.json ----------------------------------------------------------------------------------


def jobs_dir(workdir_root: str, results_name: str) -> str:
  """``<workdir_root>/submitit/<results file name>``: the sweep's jobs.json and logs/."""
  return os.path.join(os.path.abspath(workdir_root), JOBS_DIR, results_name)


def read_jobs(folder: str) -> dict[str, Any]:
  """The sweep's jobs.json: ``{"cluster", "logs", "runs": {workdir name: job}}`` (empty if none)."""
  path = os.path.join(folder, JOBS_FILE)
  if not os.path.exists(path):
    return {"cluster": None, "logs": os.path.join(folder, "logs"), "runs": {}}
  with open(path) as f:
    return json.load(f)


def write_jobs(folder: str, jobs: dict[str, Any]) -> None:
  os.makedirs(folder, exist_ok=True)
  path = os.path.join(folder, JOBS_FILE)
  with open(path + ".tmp", "w") as f:
    json.dump(jobs, f, indent=1, sort_keys=True)
    f.write("\n")
  os.replace(path + ".tmp", path)


# --- a job's state, read without changing anything ------------------------------------------


@dataclasses.dataclass(frozen=True)
class JobState:
  """What a job is doing: ``queued``, ``running``, ``ended`` (it returned) or ``failed``."""

  state: str
  detail: str = ""


def _log_path(logs: str, job_id: str) -> str:
  return os.path.join(logs, f"{job_id}_0_log.err")


def _result(logs: str, job_id: str) -> tuple[str, Any] | None:
  """The result submitit pickled when the job's process 0 ended (None: none yet)."""
  path = os.path.join(logs, f"{job_id}_0_result.pkl")
  if not os.path.exists(path):
    return None
  with open(path, "rb") as f:
    return pickle.load(f)


def _local_alive(job_id: str) -> bool:
  """Whether the local job's controller process still runs (not a zombie, not a reused pid)."""
  try:
    with open(f"/proc/{int(job_id)}/stat") as f:
      stat = f.read()
    with open(f"/proc/{int(job_id)}/cmdline", "rb") as f:
      command = f.read()
  except (OSError, ValueError):
    return False
  return stat.rsplit(")", 1)[-1].split()[0] != "Z" and b"submitit" in command


def slurm_state(logs: str, job_id: str) -> str:
  """The SLURM state of a job as sacct reports it (``UNKNOWN`` if it does not know it)."""
  submitit = require_submitit()
  return submitit.SlurmJob(folder=logs, job_id=job_id).get_info(mode="force").get("State") or (
    "UNKNOWN"
  )


def job_state(cluster: str, logs: str, job_id: str) -> JobState:
  """The state of job ``job_id`` from its result file, else the cluster (sacct, local pids)."""
  result = _result(logs, job_id)
  if result is not None:
    outcome, value = result
    if outcome == "success":
      return JobState("ended")
    last = [line for line in str(value).strip().splitlines() if line.strip()]
    return JobState("failed", last[-1] if last else "raised an error")
  if cluster == "local":
    if _local_alive(job_id):
      return JobState("running")
    return JobState("failed", "ended without a result (killed?)")
  state = slurm_state(logs, job_id).split()[0]  # "CANCELLED by 123" -> CANCELLED
  if state in SLURM_QUEUED:
    return JobState("queued", state.lower())
  if state in SLURM_RUNNING:
    return JobState("running")
  return JobState("failed", state)


@dataclasses.dataclass(frozen=True)
class RunState:
  """One run of the sweep as ``--status`` shows it."""

  run: Run
  state: str  # one of STATES
  job_id: str | None = None
  detail: str = ""
  log: str | None = None

  def line(self) -> str:
    job = f"job {self.job_id}" if self.job_id else ""
    parts = [p for p in (job, self.detail, self.log and f"log {self.log}") if p]
    return f"{self.state:<14} {self.run.name}, seed {self.run.seed}" + (
      ": " + "; ".join(parts) if parts else ""
    )


def _epochs_text(run: Run) -> str:
  done = len(read_metrics(os.path.join(run.workdir, workdir_lib.METRICS_FILE)))
  return f"{done} of {run.config.train.epochs} epochs in its workdir"


def run_state(run: Run, job: dict | None, cluster: str | None, logs: str) -> RunState:
  """The state of ``run``: done (its status or record), else what its last job is doing."""
  if is_done(run):
    return RunState(run, "done", job and job["job_id"])
  if job is None:
    return RunState(run, "not submitted", detail=_epochs_text(run))
  found = job_state(cluster, logs, job["job_id"])
  if found.state in ("queued", "running"):
    detail = found.detail or _epochs_text(run)
    return RunState(run, found.state, job["job_id"], detail)
  detail = found.detail if found.state == "failed" else "the job ended but the run is not done"
  return RunState(run, "failed", job["job_id"], detail, _log_path(logs, job["job_id"]))


def sweep_state(runs: list[Run], folder: str) -> list[RunState]:
  """Each distinct run's state, from records, workdir statuses and jobs.json; writes nothing."""
  jobs = read_jobs(folder)
  unique = {run.workdir: run for run in runs}.values()  # a run two entries share is one job
  return [
    run_state(run, jobs["runs"].get(os.path.basename(run.workdir)), jobs["cluster"], jobs["logs"])
    for run in unique
  ]


def print_status(name: str, states: list[RunState], folder: str) -> None:
  """Prints the count of runs in each state, then one line per run."""
  counts = ", ".join(f"{sum(s.state == state for s in states)} {state}" for state in STATES)
  jobs = os.path.join(folder, JOBS_FILE)
  known = jobs if os.path.exists(jobs) else "none submitted"
  print(f"{name}: {len(states)} runs: {counts} (jobs: {known})")
  for state in sorted(states, key=lambda s: STATES.index(s.state)):
    print("  " + state.line())


# --- submitting ------------------------------------------------------------------------------


def absolute(run: Run) -> Run:
  """The run with absolute workdir and record paths: a job may start in another folder."""
  record = run.record and os.path.abspath(run.record)
  return dataclasses.replace(run, workdir=os.path.abspath(run.workdir), record=record)


def _setup(cpu_devices: int) -> list[str]:
  """Shell lines run before each job: this checkout importable, CPU devices for the workers."""
  lines = [f"export PYTHONPATH={shlex.quote(REPOSITORY)}${{PYTHONPATH:+:$PYTHONPATH}}"]
  if cpu_devices > 1:
    lines.append(f"export XLA_FLAGS=--xla_force_host_platform_device_count={cpu_devices}")
  return lines


def make_executor(cluster: Cluster, logs: str, *, name: str, nodes: int, gpus: int, workers: int):
  """A submitit executor for jobs of ``nodes`` nodes with ``gpus`` GPUs each."""
  submitit = require_submitit()
  if cluster.kind == "slurm" and shutil.which("sbatch") is None:
    raise ValueError("--cluster=slurm: no sbatch on this machine's PATH; submit from a SLURM login")
  executor = submitit.AutoExecutor(folder=logs, cluster=cluster.kind)
  setup = _setup(workers // nodes if gpus == 0 else 0)
  parameters: dict[str, Any] = dict(
    name=name,
    timeout_min=cluster.time_min,
    nodes=nodes,
    tasks_per_node=1,
    gpus_per_node=gpus,
    cpus_per_task=cluster.cpus_per_job,
    mem_gb=cluster.mem_gb,
  )
  if cluster.kind == "slurm":
    parameters.update(
      slurm_partition=cluster.partition,
      slurm_additional_parameters=dict(cluster.sbatch),
      slurm_array_parallelism=cluster.array_parallelism,
      slurm_setup=setup,
    )
  else:
    parameters.update(local_setup=setup)
  executor.update_parameters(**parameters)
  return executor


def submit(
  runs: list[Run],
  *,
  name: str,
  cluster: Cluster,
  folder: str,
  train_fn: TrainFn = train.train_and_evaluate,
) -> list[Any]:
  """Submits one job per run that is neither done nor queued nor running; returns the jobs.

  Runs that another cluster's jobs.json names are refused (their states
  would be asked of the wrong scheduler). A failed job's run is submitted
  again, its failure and log printed. ``jobs.json`` is written once the
  jobs have their ids.

  Raises:
    ValueError: a sweep already submitted to another cluster, resources that
      do not fit, or no sbatch for ``--cluster=slurm``, before anything is submitted.
  """
  jobs = read_jobs(folder)
  if jobs["cluster"] not in (None, cluster.kind):
    raise ValueError(
      f"this sweep's jobs run on --cluster={jobs['cluster']} ({os.path.join(folder, JOBS_FILE)});"
      f" pass --cluster={jobs['cluster']} or remove that file once its jobs have ended"
    )
  runs = [absolute(run) for run in runs]
  export_records(runs)
  todo = []
  for state in sweep_state(runs, folder):
    if state.state == "failed":
      print(f"Resubmitting {state.run.name}, seed {state.run.seed}: {state.line()}")
    if state.state in ("failed", "not submitted"):
      todo.append(state.run)
  groups: dict[tuple[int, int, int], list[Run]] = {}
  for run in todo:  # one job array per resource request
    groups.setdefault((*cluster.resources(run), run.config.workers), []).append(run)
  submitted = []
  now = datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")
  for (nodes, gpus, workers), members in groups.items():
    executor = make_executor(
      cluster, jobs["logs"], name=name, nodes=nodes, gpus=gpus, workers=workers
    )
    made = executor.submit_array([RunJob(run, train_fn) for run in members])
    for run, job in zip(members, made, strict=True):
      key = os.path.basename(run.workdir)
      previous = jobs["runs"].get(key)
      earlier = [*previous.get("earlier", []), previous["job_id"]] if previous else []
      jobs["runs"][key] = {
        "name": run.name,
        "seed": run.seed,
        "job_id": str(job.job_id),
        "submitted": now,
        "earlier": earlier,
      }
      submitted.append(job)
  jobs["cluster"] = cluster.kind
  if submitted:
    write_jobs(folder, jobs)
  print(
    f"{name}: submitted {len(submitted)} job(s) to {cluster.kind}; logs in {jobs['logs']}; "
    f"{len({r.workdir for r in runs}) - len(todo)} run(s) done, queued or running"
  )
  return submitted


def wait(jobs: list[Any], poll_seconds: float = 1.0) -> None:
  """Waits until every job has ended (successfully or not)."""
  while not all(job.done() for job in jobs):
    time.sleep(poll_seconds)


# --- the command ---------------------------------------------------------------------------


def missing_text(states: list[RunState]) -> str:
  """``"RBD, seed 0 (failed); SGD, seed 1 (running)"``: the runs a partial results file lacks."""
  return "; ".join(
    f"{s.run.name}, seed {s.run.seed} ({s.state})" for s in states if s.state != "done"
  )


def done_only(runs: list[Run], states: list[RunState]) -> list[Run]:
  """The runs, those not done without their workdir and record: a partial results file's rows."""
  done = {s.run.workdir for s in states if s.state == "done"}
  return [
    run
    if os.path.abspath(run.workdir) in done
    else dataclasses.replace(run, workdir=os.path.join(run.workdir, "not-done"), record=None)
    for run in runs
  ]


def launch(
  runs: list[Run],
  *,
  name: str,
  cluster: Cluster,
  folder: str,
  write: Callable[[list[Run], list[tuple[str, str]]], list[str]],
  partial: bool = False,
  wait_for_jobs: bool = False,
  train_fn: TrainFn = train.train_and_evaluate,
) -> list[str]:
  """Submits the sweep's unfinished runs and writes its results file when it can.

  Args:
    runs: the sweep's runs (``make_run``).
    name: the results file's name (also the jobs' name).
    cluster: where the jobs run.
    folder: the sweep's jobs folder (``jobs_dir``).
    write: writes the results file and plots from runs and extra header
      lines; returns the paths.
    partial: with runs not done, write the results file from the done ones.
    wait_for_jobs: wait for the submitted jobs to end before looking.
    train_fn: the trainer the jobs call (picklable).

  Returns:
    The files written (none while runs are missing and not ``partial``).
  """
  jobs = submit(runs, name=name, cluster=cluster, folder=folder, train_fn=train_fn)
  if wait_for_jobs and jobs:
    wait(jobs)
  states = sweep_state([absolute(run) for run in runs], folder)
  missing = [s for s in states if s.state != "done"]
  launcher = [("Launcher", f"{cluster.describe()}; jobs: {os.path.join(folder, JOBS_FILE)}")]
  if not missing:
    written = write(runs, launcher)
    logging.info("Wrote %s", ", ".join(written))
    return written
  print(
    f"{len(missing)} of {len(states)} run(s) not done: `--status` shows them; rerun this "
    "command to resubmit failed ones and, once all are done, to write the results file"
  )
  if not partial:
    return []
  head = [
    *launcher,
    (
      "Partial",
      f"{len(states) - len(missing)} of {len(states)} runs done; missing: {missing_text(states)}",
    ),
  ]
  written = write(done_only(runs, states), head)
  logging.info("Wrote %s (partial)", ", ".join(written))
  return written
