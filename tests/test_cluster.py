"""--launcher=submitit end to end through submitit's real LocalExecutor (experiments/launch.py).

A sweep of two tiny runs (``reference.quick_config`` at two epochs: SGD and
RBD) runs once with the local launcher, the reference, and once as local
submitit jobs, in which the RBD job is killed after its first epoch's
checkpoint and the SGD job is held until the test lets it go, so that
``--status`` meets every state a local cluster has (queued only exists on
SLURM: ``test_status_reads_slurm_states_from_sacct``).
"""

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
import types

import cloudpickle
import pytest
import reference

from experiments import launch, reproduce, runs
from random_bases import train

# The sweep: reference.quick_config (10 steps an epoch on the shipped sample) at 2 epochs.
SWEEP_CONFIG = textwrap.dedent('''\
    """SGD and RBD on tests/reference.py's quick_config, two epochs each."""
    import reference

    def get_config(arg=None):
      return reference.quick_config(**{"train.epochs": 2})

    def sweep(arg=None):
      return [{"name": m.upper(), "method": m} for m in ("sgd", "rbd")]

    def report(arg=None):
      return {"name": "quick", "title": "Quick", "scale": "quick_config, 2 epochs",
              "columns": [{"metric": "validation_accuracy", "label": "val %",
                           "percent": True}]}
    ''')
# The message the trainer logs when it restores a checkpoint (random_bases/train.py).
RESUMED = "Resumed from the checkpoint after epoch 1 (step 10)"


class Trainer:
  """The trainer, as the jobs call it: kills the first RBD job, holds SGD's until ``go`` exists.

  The kill: RBD's first job trains epoch 1 of 2 (its checkpoint written)
  and SIGKILLs its own process, as a node failure would.
  """

  def __init__(self, root):
    self.root = str(root)

  def __call__(self, config, workdir):
    if config.method == "sgd":
      while not os.path.exists(os.path.join(self.root, "go")):
        time.sleep(0.1)
    killed = os.path.join(self.root, "killed")
    if config.method == "rbd" and not os.path.exists(killed):
      open(killed, "w").close()
      first = config.copy_and_resolve_references()
      first.train.epochs = 1
      train.train_and_evaluate(first, workdir)
      os.kill(os.getpid(), signal.SIGKILL)
    return train.train_and_evaluate(config, workdir)


# The jobs unpickle the trainer in processes that cannot import this test file.
cloudpickle.register_pickle_by_value(sys.modules[__name__])


def sweep_kwargs(root):
  return dict(
    seeds=[0],
    data=runs.DataLocations({}, None),
    workdir_root=str(root / "runs"),
    results_dir=str(root / "results"),
    allow_dirty=True,  # whatever state the checkout is in (test_runs.py tests the refusal)
  )


def states_of(spec, root, capsys):
  """``{run name: (state, line)}`` as --status prints it, and the printed lines."""
  found = reproduce.status(
    spec, **{k: v for k, v in sweep_kwargs(root).items() if k != "allow_dirty"}
  )
  printed = capsys.readouterr().out.splitlines()
  return {s.run.name: s for s in found}, printed


def wait_for(spec, root, capsys, expected, timeout=120):
  """Polls --status until the runs are in the ``expected`` states."""
  deadline = time.monotonic() + timeout
  while True:
    states, _ = states_of(spec, root, capsys)
    if {name: s.state for name, s in states.items()} == expected:
      return states
    if time.monotonic() > deadline:
      pytest.fail(f"runs never reached {expected}: {[s.line() for s in states.values()]}")
    time.sleep(0.5)


def snapshot(root):
  """Every file under ``root`` but the jobs' logs, with its size and modification time."""
  found = {}
  for folder, _, files in os.walk(root):
    if f"{os.sep}logs" in folder:
      continue
    for name in files:
      path = os.path.join(folder, name)
      found[path] = (os.path.getsize(path), os.stat(path).st_mtime_ns)
  return found


def table_of(text):
  """The results table's rows without their time cell (wall times differ run to run)."""
  return [line.rsplit(" | ", 1)[0] for line in text.splitlines() if line.startswith("| ")]


def body_of(text):
  """The results file without its header lines, which say when, how and with what it ran."""
  return [line for line in text.splitlines() if not line.startswith("- ")]


def read_record(root, workdir):
  with open(root / "results" / "runs" / "quick" / f"{workdir}.json") as f:
    return json.load(f)


def test_a_sweep_fans_out_as_local_submitit_jobs_and_a_killed_one_resumes(
  tmp_path, capsys, monkeypatch
):
  monkeypatch.setenv("JAX_PLATFORMS", "cpu")  # the jobs inherit it
  spec = str(tmp_path / "quick.py")
  (tmp_path / "quick.py").write_text(SWEEP_CONFIG)
  # The reference: the same sweep run by the local launcher, uninterrupted.
  local, jobs = tmp_path / "local", tmp_path / "jobs"
  reproduce.reproduce(spec, **sweep_kwargs(local))
  expected_table = (local / "results" / "quick.md").read_text()

  states, printed = states_of(spec, jobs, capsys)
  assert {name: s.state for name, s in states.items()} == {
    "SGD": "not submitted",
    "RBD": "not submitted",
  }
  assert printed[0] == (
    "quick: 2 runs: 0 done, 0 running, 0 queued, 0 failed, 2 not submitted (jobs: none submitted)"
  )
  assert not jobs.exists()  # --status wrote nothing

  cluster = launch.Cluster(kind="local", gpus_per_job=0, time_min=10)
  submit = dict(**sweep_kwargs(jobs), cluster=cluster, train_fn=Trainer(tmp_path))
  assert reproduce.reproduce(spec, **submit) == []  # nothing done yet: no results file
  folder = launch.jobs_dir(str(jobs / "runs"), "quick")
  first = launch.read_jobs(folder)
  assert first["cluster"] == "local"
  workdirs = {job["name"]: workdir for workdir, job in first["runs"].items()}
  assert sorted(workdirs) == ["RBD", "SGD"]
  rbd_job = first["runs"][workdirs["RBD"]]["job_id"]
  sgd_job = first["runs"][workdirs["SGD"]]["job_id"]

  # RBD's job is killed after epoch 1, SGD's waits: failed, running.
  wait_for(spec, jobs, capsys, {"SGD": "running", "RBD": "failed"})
  before = snapshot(jobs)
  states, printed = states_of(spec, jobs, capsys)
  assert snapshot(jobs) == before  # --status changes nothing
  rbd_log = os.path.join(first["logs"], f"{rbd_job}_0_log.err")
  assert printed == [
    f"quick: 2 runs: 0 done, 1 running, 0 queued, 1 failed, 0 not submitted "
    f"(jobs: {folder}/jobs.json)",
    f"  running        SGD, seed 0: job {sgd_job}; 0 of 2 epochs in its workdir",
    f"  failed         RBD, seed 0: job {rbd_job}; ended without a result (killed?); log {rbd_log}",
  ]
  assert len(runs.read_metrics(os.path.join(jobs / "runs", workdirs["RBD"], "metrics.jsonl"))) == 1

  # The same command again submits only the failed run, which resumes and finishes.
  assert reproduce.reproduce(spec, **submit) == []
  assert f"Resubmitting RBD, seed 0: {printed[2].strip()}" in capsys.readouterr().out
  second = launch.read_jobs(folder)
  assert second["runs"][workdirs["RBD"]]["earlier"] == [rbd_job]
  assert second["runs"][workdirs["SGD"]] == first["runs"][workdirs["SGD"]]
  wait_for(spec, jobs, capsys, {"SGD": "running", "RBD": "done"})
  # With --partial the results file has the done run's row and names the missing one.
  written = reproduce.reproduce(spec, **submit, partial=True)
  assert written[0] == str(jobs / "results" / "quick.md")
  text = (jobs / "results" / "quick.md").read_text()
  assert "- Partial: 1 of 2 runs done; missing: SGD, seed 0 (running)" in text.splitlines()
  partial_rows, expected_rows = table_of(text), table_of(expected_table)
  assert partial_rows[:2] + partial_rows[3:] == expected_rows[:2] + expected_rows[3:]  # RBD's
  assert partial_rows[2].startswith("| SGD | \u2014 | not run |")

  (tmp_path / "go").touch()
  wait_for(spec, jobs, capsys, {"SGD": "done", "RBD": "done"})
  # Every run is done: the command submits nothing and writes the whole results file.
  capsys.readouterr()
  reproduce.reproduce(spec, **submit)
  assert capsys.readouterr().out.startswith("quick: submitted 0 job(s) to local; ")
  assert launch.read_jobs(folder) == second
  text = (jobs / "results" / "quick.md").read_text()
  assert table_of(text) == expected_rows
  assert [line.rsplit(" | ", 1)[0] for line in body_of(text)] == [
    line.rsplit(" | ", 1)[0] for line in body_of(expected_table)
  ]
  assert f"- Launcher: submitit on local; jobs: {folder}/jobs.json" in text.splitlines()
  assert "- Partial" not in text

  # The resubmitted RBD job resumed from the first job's checkpoint, and every run's record
  # equals the uninterrupted local run's bit for bit.
  with open(
    os.path.join(first["logs"], f"{second['runs'][workdirs['RBD']]['job_id']}_0_log.err")
  ) as f:
    assert RESUMED in f.read()
  with open(rbd_log) as f:
    assert RESUMED not in f.read()
  for name, workdir in workdirs.items():
    ours, uninterrupted = read_record(jobs, workdir), read_record(local, workdir)
    assert runs.disagreements(uninterrupted, ours) == [], name
    assert reference.without_timings(ours["metrics"]) == reference.without_timings(
      uninterrupted["metrics"]
    )
    assert [m["epoch"] for m in ours["metrics"]] == [1, 2]
    assert ours["config"] == uninterrupted["config"]
  _, printed = states_of(spec, jobs, capsys)
  assert printed[0] == (
    f"quick: 2 runs: 2 done, 0 running, 0 queued, 0 failed, 0 not submitted "
    f"(jobs: {folder}/jobs.json)"
  )


def test_status_reads_slurm_states_from_sacct(tmp_path, monkeypatch):
  (tmp_path / "quick.py").write_text(SWEEP_CONFIG)
  module = reproduce.load_config_module(str(tmp_path / "quick.py"))
  sgd = runs.make_run(
    module,
    None,
    module.sweep()[0],
    0,
    data=runs.DataLocations({}, None),
    workdir_root=str(tmp_path),
  )
  logs = str(tmp_path / "logs")
  job = {"job_id": "4242_3"}
  for sacct, state, line in (
    ("PENDING", "queued", "queued         SGD, seed 0: job 4242_3; pending"),
    ("RUNNING", "running", "running        SGD, seed 0: job 4242_3; 0 of 2 epochs in its workdir"),
    (
      "TIMEOUT",
      "failed",
      f"failed         SGD, seed 0: job 4242_3; TIMEOUT; log {logs}/4242_3_0_log.err",
    ),
    (
      "CANCELLED by 1000",
      "failed",
      f"failed         SGD, seed 0: job 4242_3; CANCELLED; log {logs}/4242_3_0_log.err",
    ),
  ):
    monkeypatch.setattr(launch, "slurm_state", lambda folder, job_id, sacct=sacct: sacct)
    found = launch.run_state(sgd, job, "slurm", logs)
    assert (found.state, found.line()) == (state, line)


class Flags:
  """The parsed flags as ``reproduce.cluster_from_flags`` reads them: values and ``present``."""

  def __init__(self, **given):
    self.given = given
    defaults = dict(launcher="local", cluster="slurm", time_min=240, gpus_per_job=-1, nodes=1)
    defaults.update(sbatch=[], array_parallelism=256, partition=None, cpus_per_job=None)
    self.values = {**defaults, "mem_gb": None, "partial": False, "wait": False, **given}

  def __getattr__(self, name):
    return self.values[name]

  def __getitem__(self, name):
    return types.SimpleNamespace(present=name in self.given, value=self.values[name])


def test_bad_launcher_or_cluster_is_one_line_before_any_run(tmp_path, monkeypatch):
  (tmp_path / "quick.py").write_text(SWEEP_CONFIG)
  out = subprocess.run(
    [
      sys.executable,
      "-m",
      "experiments.reproduce",
      f"--config={tmp_path / 'quick.py'}",
      f"--workdir_root={tmp_path / 'runs'}",
      f"--results_dir={tmp_path / 'results'}",
      "--allow_dirty",
      "--launcher=slurm",
    ],
    cwd=reference.ROOT,
    env=dict(os.environ, JAX_PLATFORMS="cpu"),
    capture_output=True,
    text=True,
  )
  assert out.returncode == 1, out.stderr
  assert out.stderr.strip().splitlines() == [
    "Invalid input: --launcher='slurm' is not supported; allowed values: 'local', 'submitit'"
  ]
  assert not (tmp_path / "runs").exists() and not (tmp_path / "results").exists()
  # The same check, in this process, for every launcher flag.
  with pytest.raises(
    ValueError, match=r"^--cluster='pbs' is not supported; allowed values: 'slurm', 'local'$"
  ):
    reproduce.cluster_from_flags(Flags(launcher="submitit", cluster="pbs"))
  with pytest.raises(ValueError, match=r"^--cluster, --nodes apply to --launcher=submitit only$"):
    reproduce.cluster_from_flags(Flags(cluster="local", nodes=2))
  with pytest.raises(ValueError, match=r"^--nodes=2: --cluster=local runs on this one machine"):
    reproduce.cluster_from_flags(Flags(launcher="submitit", cluster="local", nodes=2))
  with pytest.raises(ValueError, match=r"^--sbatch='constraint' must be <option>=<value>"):
    reproduce.cluster_from_flags(Flags(launcher="submitit", sbatch=["constraint"]))
  assert reproduce.cluster_from_flags(Flags()) is None
  flags = Flags(launcher="submitit", sbatch=["constraint=a100", "--account=x"], time_min=60)
  assert reproduce.cluster_from_flags(flags) == launch.Cluster(
    kind="slurm", time_min=60, sbatch={"constraint": "a100", "account": "x"}
  )
  assert reproduce.launcher_flags(flags) == (
    "--launcher=submitit",
    "--time_min=60",
    "--sbatch=constraint=a100",
    "--sbatch=--account=x",
  )
  # Without submitit installed: one line saying how to install it.
  monkeypatch.setitem(sys.modules, "submitit", None)
  with pytest.raises(ValueError, match=r"^--launcher=submitit needs submitit: pip install "):
    launch.require_submitit()
