"""Runs: the code they record (and the runner's refusal of a modified tree), records, and
bit-identical reruns."""

import json
import math
import os
import pathlib
import subprocess
import sys
import textwrap

import pytest

from experiments import reproduce, runs
from random_bases import cli, config_lib

ROOT = pathlib.Path(__file__).resolve().parents[1]

# --- the code a run runs from ------------------------------------------------------------


def git(checkout, *args):
  return subprocess.run(
    ["git", "-c", "user.name=test", "-c", "user.email=test@example.com", *args],
    cwd=checkout,
    capture_output=True,
    text=True,
    check=True,
  ).stdout.strip()


@pytest.fixture
def checkout(tmp_path):
  """A git checkout laid out as this repository, one commit, clean."""
  root = tmp_path / "checkout"
  files = {
    "random_bases/train.py": "",
    "configs/tiny.py": "",
    "experiments/runs.py": "",
    "results/tiny.md": "# Tiny\n",
    "README.md": "",
    ".gitignore": "*.pyc\n",
  }
  for name, text in files.items():
    (root / name).parent.mkdir(parents=True, exist_ok=True)
    (root / name).write_text(text)
  git(root, "init", "-q")
  git(root, "add", ".")
  git(root, "commit", "-q", "-m", "one commit")
  return root


def test_code_state_names_the_files_that_differ_from_the_commit(checkout):
  head = git(checkout, "rev-parse", "HEAD")
  assert runs.git_state(str(checkout)) == runs.CodeState(head, ())
  assert runs.git_state(str(checkout)).clean is True
  # What the runner writes, and untracked files outside the code's folders, change no run.
  (checkout / "results" / "tiny.md").write_text("# Tiny, rewritten\n")
  (checkout / "results" / "runs" / "tiny").mkdir(parents=True)
  (checkout / "results" / "runs" / "tiny" / "run.json").write_text("{}")
  (checkout / "notes.txt").write_text("")
  (checkout / "experiments" / "runs.pyc").write_text("")  # ignored
  assert runs.git_state(str(checkout)).clean is True
  # A changed tracked file, untracked code, a staged rename (its old path not counted twice).
  (checkout / "README.md").write_text("changed\n")
  (checkout / "configs" / "new.py").write_text("")
  git(checkout, "mv", "random_bases/train.py", "random_bases/trainer.py")
  state = runs.git_state(str(checkout))
  assert state == runs.CodeState(head, ("README.md", "configs/new.py", "random_bases/trainer.py"))
  assert state.status() == {
    "commit": head,
    "clean": False,
    "changed": ["README.md", "configs/new.py", "random_bases/trainer.py"],
  }
  assert state.describe() == (
    f"{head[:7]} with uncommitted changes (run with --allow_dirty): README.md, configs/new.py, "
    "random_bases/trainer.py"
  )


def test_outside_a_git_checkout_there_is_no_commit(checkout, tmp_path):
  (tmp_path / "copy").mkdir()
  for folder in (tmp_path / "copy", checkout / "configs"):  # no checkout; not its top
    state = runs.git_state(str(folder))
    assert state == runs.CodeState(None) and state.clean is None
    assert state.status() == {"commit": None, "clean": None}
    assert state.describe() == "not a git checkout (commit unknown)"


MINI_CONFIG = textwrap.dedent("""\
    from random_bases import config_lib

    def get_config(arg=None):
      config = config_lib.base_config()
      config.data.source, config.method = "sample", "sgd"
      return config

    def sweep(arg=None):
      return [{"name": "SGD"}]

    def report(arg=None):
      return {"name": "mini", "title": "Mini", "scale": "none",
              "columns": [{"metric": "validation_accuracy", "label": "val %", "percent": True}]}
    """)


def fake_trainer(config, workdir):
  """One epoch's metrics without training."""
  os.makedirs(workdir, exist_ok=True)
  with open(os.path.join(workdir, "metrics.jsonl"), "w") as f:
    f.write(json.dumps({"epoch": 1, "validation_accuracy": 0.5}) + "\n")
  return {"state": None, "history": [], "stopped": None}


@pytest.fixture
def repository(monkeypatch):
  """Points the runner at another checkout: ``repository(path)``."""

  def point_at(path):
    monkeypatch.setattr(runs, "REPOSITORY", str(path))
    runs.code_state.cache_clear()

  yield point_at
  runs.code_state.cache_clear()  # the next test asks about this checkout again


def mini_sweep(tmp_path, **kwargs):
  (tmp_path / "mini.py").write_text(MINI_CONFIG)
  return reproduce.reproduce(
    str(tmp_path / "mini.py"),
    seeds=[0],
    data=runs.DataLocations({}, None),
    workdir_root=str(tmp_path / "workdirs"),
    results_dir=str(tmp_path / "results"),
    train_fn=fake_trainer,
    **kwargs,
  )


def test_the_runner_refuses_a_modified_tree_unless_allowed_and_then_says_so(
  checkout, repository, tmp_path
):
  repository(checkout)
  head = git(checkout, "rev-parse", "HEAD")
  (checkout / "configs" / "tiny.py").write_text("changed = True\n")
  (checkout / "experiments" / "new.py").write_text("")

  def refused():
    return pytest.raises(ValueError, match=r"--allow_dirty")

  with refused() as error:
    mini_sweep(tmp_path)
  message = cli.user_error_message(error.value)
  assert message == (
    f"Invalid input: the working tree differs from commit {head[:7]}: configs/tiny.py, "
    "experiments/new.py; commit (or remove) them so that runs record the code they ran from, "
    "or pass --allow_dirty (the results file and run records then say so)"
  )
  assert not (tmp_path / "workdirs").exists() and not (tmp_path / "results").exists()

  mini_sweep(tmp_path, allow_dirty=True)
  text = (tmp_path / "results" / "mini.md").read_text()
  assert (
    f"- Code now: {head[:7]} with uncommitted changes (run with --allow_dirty): "
    "configs/tiny.py, experiments/new.py"
  ) in text
  assert f"- Code of the runs: {head[:7]} with uncommitted changes (1 run)" in text
  (workdir,) = os.listdir(tmp_path / "workdirs")
  with open(tmp_path / "results" / "runs" / "mini" / f"{workdir}.json") as f:
    record = json.load(f)
  assert record["status"] == runs.read_status(str(tmp_path / "workdirs" / workdir))
  assert {k: record["status"][k] for k in ("commit", "clean", "changed")} == {
    "commit": head,
    "clean": False,
    "changed": ["configs/tiny.py", "experiments/new.py"],
  }
  with refused():  # --verify too, before it reruns anything
    reproduce.verify(
      str(tmp_path / "mini.py"),
      cells=1,
      data=runs.DataLocations({}, None),
      results_dir=str(tmp_path / "results"),
      train_fn=lambda *_: pytest.fail("reran"),
    )


def test_outside_a_checkout_the_runner_runs_and_records_no_commit(repository, tmp_path):
  (tmp_path / "installed").mkdir()
  repository(tmp_path / "installed")
  mini_sweep(tmp_path)
  text = (tmp_path / "results" / "mini.md").read_text()
  assert "- Code now: not a git checkout (commit unknown)" in text
  assert "- Code of the runs: not a git checkout (commit unknown) (1 run)" in text
  (workdir,) = os.listdir(tmp_path / "workdirs")
  status = runs.read_status(str(tmp_path / "workdirs" / workdir))
  assert (status["commit"], status["clean"]) == (None, None) and "changed" not in status


# --- comparing a rerun with its record ------------------------------------------------------


def test_a_rerun_agrees_only_if_every_metric_is_the_same_float():
  def record(metrics, status="finished", fingerprint="abc"):
    return {"status": {"status": status}, "data": {"fingerprint": fingerprint}, "metrics": metrics}

  line = {"epoch": 1, "validation_accuracy": 0.5, "train_seconds": 3.0, "images_per_second": 9.0}
  recorded = record([line, {**line, "epoch": 2}])
  timings = {"train_seconds": 4.0, "images_per_second": 8.0}
  assert runs.disagreements(recorded, record([{**line, **timings}, {**line, "epoch": 2}])) == []
  last_bit = {**line, "epoch": 2, "validation_accuracy": math.nextafter(0.5, 1.0)}
  assert runs.disagreements(recorded, record([line, last_bit])) == ["validation_accuracy"]
  non_finite = {**line, "epoch": 2, "validation_accuracy": None, "non_finite": ["x"]}
  assert runs.disagreements(recorded, record([line, non_finite])) == [
    "non_finite",
    "validation_accuracy",
  ]
  assert runs.disagreements(recorded, record([], status="diverged")) == ["status", "epochs"]
  assert runs.disagreements(recorded, record(recorded["metrics"], fingerprint="x")) == ["data"]


# --- the same run in two processes ------------------------------------------------------------


@pytest.mark.slow
def test_a_run_is_bit_identical_in_two_fresh_processes(tmp_path):
  records = []
  for name in ("first", "second"):
    subprocess.run(
      [
        sys.executable,
        "-m",
        "random_bases.main",
        "--config=configs/default.py:runlocal",
        f"--workdir={tmp_path / name}",
        "--config.train.epochs=2",
        "--config.train.steps_per_epoch=4",
        "--config.train.log_every_steps=2",
        "--config.train.eval_examples=200",
      ],
      cwd=ROOT,
      check=True,
      capture_output=True,
      env=dict(os.environ, JAX_PLATFORMS="cpu"),
    )
    with open(tmp_path / name / "data.json") as f:
      data = json.load(f)
    metrics = runs.read_metrics(str(tmp_path / name / "metrics.jsonl"))
    records.append({"status": {"status": "finished"}, "data": data, "metrics": metrics})
  first, second = records
  assert [m["epoch"] for m in first["metrics"]] == [1, 2]
  assert runs.disagreements(first, second) == []
  untimed = [
    json.dumps({k: v for k, v in m.items() if not runs.is_timing(k)}) for m in first["metrics"]
  ]
  assert untimed == [
    json.dumps({k: v for k, v in m.items() if not runs.is_timing(k)}) for m in second["metrics"]
  ]


def epochs_config(epochs: int):
  """A run's config asking for ``epochs`` epochs."""
  config = config_lib.base_config()
  config.train.epochs = epochs
  return config


def test_a_workdir_extended_by_a_longer_sweep_counts_to_the_run_s_own_epochs(tmp_path):
  """Workdir names leave train.epochs out: a 100-epoch sweep of the same config extends a
  3-epoch file's workdir, and that file still reads its run as it stood after 3 epochs."""
  workdir, record = tmp_path / "w", tmp_path / "records" / "w.json"
  short = runs.Run({"name": "R"}, 0, epochs_config(2), str(workdir), str(record))
  long = runs.Run({"name": "R"}, 0, epochs_config(4), str(workdir), None)
  rows = [{"epoch": e, "validation_accuracy": 0.5 + e / 10} for e in (1, 2, 3)]
  workdir.mkdir()
  (workdir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
  (workdir / runs.STATUS_FILE).write_text(json.dumps({"status": "diverged", "epochs": 3}))
  found = runs.run_result(short)
  assert found.metrics == rows[:2] and found.final["validation_accuracy"] == 0.7
  assert found.status == {"status": "finished", "epochs": 2, "reason": None} and found.ended
  assert runs.is_done(short)
  record.parent.mkdir()
  runs.write_record(short)  # written from the longer workdir: the run's own 2 epochs
  assert json.loads(record.read_text())["metrics"] == rows[:2]
  assert runs.run_result(short).metrics == rows[:2]
  assert runs.run_result(long).metrics == rows and runs.is_done(long)  # diverged at 3 of 4


def test_a_record_wins_over_a_workdir_of_the_same_length_that_another_file_trained(tmp_path):
  """Two results files share a config, so a workdir: the one trained later, from other code,
  must not change the first file's run (its header's commit, its times); only a workdir
  that has gone further than the record (an extended run) is newer."""
  workdir, record = tmp_path / "w", tmp_path / "records" / "w.json"
  run = runs.Run(
    entry={"name": "R"}, seed=0, config=epochs_config(2), workdir=str(workdir), record=str(record)
  )
  rows = [{"epoch": 1, "validation_accuracy": 0.5, "epoch_seconds": 70.0}]
  record.parent.mkdir()
  status = {"status": "finished", "epochs": 1, "commit": "aaaaaaa", "clean": True}
  record.write_text(json.dumps({"metrics": rows, "status": status, "data": None}))
  workdir.mkdir()
  later = [{**rows[0], "epoch_seconds": 220.0}]
  (workdir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in later))
  (workdir / runs.STATUS_FILE).write_text(json.dumps({**status, "commit": "bbbbbbb"}))
  found = runs.run_result(run)
  assert (found.status["commit"], found.metrics) == ("aaaaaaa", rows)
  more = [*later, {"epoch": 2, "validation_accuracy": 0.6, "epoch_seconds": 70.0}]
  (workdir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in more))
  assert runs.run_result(run).metrics == more
  record.unlink()
  assert runs.run_result(run).status["commit"] == "bbbbbbb"


def test_a_resumed_run_s_time_counts_the_epochs_of_the_sessions_killed_before(
  tmp_path, monkeypatch
):
  """A session killed mid-run writes no status; the session that finishes counts the train
  and eval time of the epochs the killed one left in the workdir, beside its own."""
  workdir = tmp_path / "w"
  workdir.mkdir()
  killed = [{"epoch": e, "train_seconds": 100.0, "eval_seconds": 5.0} for e in (1, 2)]
  (workdir / "metrics.jsonl").write_text("".join(json.dumps(m) + "\n" for m in killed))
  run = runs.Run(entry={"name": "R"}, seed=0, config=config_lib.base_config(), workdir=str(workdir))
  clock = iter([1000.0, 1030.0])  # this session: 30 s
  monkeypatch.setattr(runs.time, "perf_counter", lambda: next(clock))

  def finishes(config, workdir):
    return {"state": None, "history": [], "stopped": None}

  status, _ = runs.execute(run, finishes)
  assert status["wall_seconds"] == pytest.approx(2 * 105.0 + 30.0)
  clock = iter([2000.0, 2010.0])  # extended later: the finished status's time goes on
  status, _ = runs.execute(run, finishes)
  assert status["wall_seconds"] == pytest.approx(250.0)
