"""The runner, the results writer, the tuner's search and the plots."""

import dataclasses
import json
import logging
import math
import os
import pathlib
import shlex
import shutil
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.flatten_util import ravel_pytree

from experiments import analysis, plots, reproduce, runs, tune
from experiments import results as results_lib
from random_bases import cli, config_lib, models, train
from random_bases import workdir as workdir_lib
from random_bases.data import preprocess

ROOT = pathlib.Path(__file__).resolve().parents[1]

# --- the results writer, on metrics files it is given ------------------------------


def write_run(workdir, *, accuracies, status=None, description=None):
  """A workdir as a run leaves it: one metrics line per epoch, data.json, reproduce.json."""
  os.makedirs(workdir)
  with open(os.path.join(workdir, "metrics.jsonl"), "w") as f:
    for epoch, (validation, test) in enumerate(accuracies, 1):
      f.write(
        json.dumps(
          {
            "epoch": epoch,
            "validation_accuracy": validation,
            "test_accuracy": test,
            "train_seconds": 3.0,
            "eval_seconds": 1.0,
          }
        )
        + "\n"
      )
  if description:
    with open(os.path.join(workdir, "data.json"), "w") as f:
      json.dump(
        {
          "dataset": "mnist",
          "sample": False,
          "source": "files:/d/mnist",
          "description": description,
          "images": {"train": 50000},
        },
        f,
      )
  if status:
    with open(os.path.join(workdir, runs.STATUS_FILE), "w") as f:
      json.dump(status, f)


REPORT = {
  "title": "Table 1",
  "scale": "REDUCED scale: epochs=2",
  "columns": [
    {"metric": "validation_accuracy", "label": "validation acc %", "percent": True},
    {"metric": "test_accuracy", "label": "test acc %", "percent": True},
  ],
  "contrasts": [
    {
      "a": "FC-MNIST RBD",
      "b": "FC-MNIST SGD",
      "metric": "validation_accuracy",
      "paper": (4.4, None),
    }
  ],
  "notes": ["a note"],
}
MNIST = "MNIST (official IDX files) from /d/mnist"


@pytest.fixture
def rows(tmp_path):
  finished = {"status": "finished", "reason": None, "epochs": 2}
  write_run(
    tmp_path / "rbd0",
    accuracies=[(0.5, 0.5), (0.90, 0.89)],
    description=MNIST,
    status={**finished, "wall_seconds": 40.0},
  )
  write_run(
    tmp_path / "rbd1",
    accuracies=[(0.5, 0.5), (0.92, 0.91)],
    description=MNIST,
    status={**finished, "wall_seconds": 60.0},
  )
  # Seed 0 stopped early; seed 1 was killed after its first epoch (no status yet).
  write_run(
    tmp_path / "sgd0",
    accuracies=[(0.10, 0.11)],
    description=MNIST,
    status={
      "status": "stopped",
      "reason": "accuracy 0.100 <= 0.15",
      "epochs": 2,
      "wall_seconds": 10.0,
    },
  )
  write_run(tmp_path / "sgd1", accuracies=[(0.12, 0.13)], description=MNIST)
  rbd = {
    "name": "FC-MNIST RBD",
    "label": "RBD",
    "panel": "FC-MNIST",
    "paper": {"validation_accuracy": (93.893, 0.024)},
    "rate": "2^1 (paper Table 4)",
  }
  sgd = {
    "name": "FC-MNIST SGD",
    "label": "SGD",
    "panel": "FC-MNIST",
    "paper": {"validation_accuracy": (98.27, 0.09)},
    "rate": "2^-3 (tuned)",
  }
  return [
    results_lib.Row(rbd, [runs.read_workdir(str(tmp_path / f"rbd{s}"), s) for s in (0, 1)]),
    results_lib.Row(sgd, [runs.read_workdir(str(tmp_path / f"sgd{s}"), s) for s in (0, 1)]),
  ]


def test_results_table_against_the_paper(rows):
  text = results_lib.markdown(report=REPORT, rows=rows, header=[("Command", "`cmd`")])
  lines = text.splitlines()
  assert lines[:5] == [
    "# Table 1",
    "",
    "**Scale: REDUCED scale: epochs=2**",
    "",
    "- Command: `cmd`",
  ]
  # Sample std of 90 and 92 is sqrt(2) = 1.414; 91.00 - 93.893 = -2.89.
  assert (
    "| FC-MNIST RBD | 93.893 \u00b1 0.024 | 91.00 \u00b1 1.41 | \u22122.89 | "
    "90.00 \u00b1 1.41 | 0, 1 | 2 | 2^1 (paper Table 4) | MNIST (official IDX files) | "
    "1m40s |"
  ) in lines
  # Seed 0 stopped after epoch 1 (its wall time is known); seed 1, killed, has only its
  # epochs' time and is left out of the values: seed 0's run has ended.
  assert (
    "| FC-MNIST SGD | 98.27 \u00b1 0.09 | 10.00 | \u221288.27 | "
    "11.00 | 0, 1 | 1*, 1 (unfinished) | 2^-3 (tuned) | MNIST (official IDX files) | "
    "\u2265 0m14s |"
  ) in lines
  assert (
    "- FC-MNIST RBD \u2212 FC-MNIST SGD (validation accuracy, points): ours "
    "80.00 over 1 seed(s); paper 4.4"
  ) in lines
  assert "- FC-MNIST SGD, seed 0: stopped after epoch 1: accuracy 0.100 <= 0.15" in lines
  assert (
    "- FC-MNIST SGD, seed 1: unfinished after epoch 1 (training, or killed); left out of "
    "ours while another seed of the row has ended"
  ) in lines
  assert f"- {MNIST} (images: {{'train': 50000}})" in lines
  assert "- a note" in lines
  assert "- Code of the runs: not recorded (3 runs)" in lines  # the killed run has no status
  assert "- Wall time: 1m50s over 3 finished run(s), summed" in lines  # 40 + 60 + 10 s


def test_standard_error_column_from_the_seeds_or_the_evaluation_images(rows):
  body, _ = results_lib.table(rows, REPORT["columns"][:1], with_standard_error=True)
  assert body[0].startswith(
    "| run | paper validation acc % | ours validation acc % | SE | \u0394 |"
  )
  # Two seeds, 90 and 92: sample std sqrt(2), SE sqrt(2) / sqrt(2) = 1.
  assert body[2].startswith("| FC-MNIST RBD | 93.893 \u00b1 0.024 | 91.00 \u00b1 1.41 | 1.00 |")
  one = results_lib.RunResult(
    seed=0,
    workdir="w",
    metrics=[{"epoch": 1, "validation_accuracy": 0.8}],
    status=None,
    data={"images": {"validation": 10_000}},
  )
  row = results_lib.Row({"name": "one seed", "paper": {"validation_accuracy": (80, 1)}}, [one])
  # One seed: sqrt(0.8 * 0.2 / 10,000) = 0.004, in percent 0.40.
  assert results_lib.standard_error(row, REPORT["columns"][0]) == pytest.approx(0.4)
  body, _ = results_lib.table([row], REPORT["columns"][:1], with_standard_error=True)
  assert "| one seed | 80 \u00b1 1 | 80.00 | 0.40 | +0.00 |" in body[2]
  no_count = results_lib.Row(row.entry, [dataclasses.replace(one, data={})])
  assert results_lib.standard_error(no_count, REPORT["columns"][0]) is None


def test_a_mean_never_mixes_an_unfinished_run_with_ended_ones():
  """A seed still training (or killed, or extended past its status) is left out of the
  row's values once another seed has ended; while none has, the row shows them all."""
  column = REPORT["columns"][0]

  def run(seed, accuracies, status_epochs):
    metrics = [{"epoch": e + 1, "validation_accuracy": a} for e, a in enumerate(accuracies)]
    status = None if status_epochs is None else {"status": "finished", "epochs": status_epochs}
    return results_lib.RunResult(seed, f"w{seed}", metrics, status, None)

  ended = run(0, [0.5, 0.9], 2)
  training = run(1, [0.4], None)
  extended = run(2, [0.5, 0.9, 0.7], 2)  # finished 2 epochs, now training on to more
  row = results_lib.Row({"name": "r"}, [ended, training, extended])
  assert row.finals() == [ended]
  assert row.unfinished() == [training, extended]
  assert results_lib.ours(row, column) == (90.0, None)
  notes = []
  assert results_lib.epochs_text(row, notes) == "2, 1 (unfinished), 3 (unfinished)"
  assert len(notes) == 2
  # None ended yet: the row shows where its runs stand, all of them.
  row = results_lib.Row({"name": "r"}, [training, extended])
  assert results_lib.ours(row, column) == pytest.approx((55.0, 2**0.5 * 15))
  assert results_lib.epochs_text(row, []) == "1, 3"


def test_a_row_without_runs_says_so(tmp_path):
  row = results_lib.Row(
    {"name": "FC-MNIST NES", "paper": {"validation_accuracy": (22.5, 1.7)}},
    [runs.read_workdir(str(tmp_path / "none"), 0)],
  )
  body, notes = results_lib.table([row], REPORT["columns"])
  assert body[2] == (
    "| FC-MNIST NES | 22.5 \u00b1 1.7 | \u2014 | \u2014 | \u2014 | not run | "
    "\u2013 | \u2014 | \u2014 | \u2014 |"
  )
  assert notes == []


def test_curves_plot_marks_the_papers_values(rows, tmp_path):
  figure = plots.curves(rows, {"metric": "validation_accuracy"}, str(tmp_path / "c.png"))
  (ax,) = [a for a in figure.axes if a.get_visible()]
  assert ax.get_title() == "FC-MNIST" and ax.get_xlabel() == "epoch"
  assert ax.get_ylabel() == "validation accuracy (%)"
  lines = {line.get_label(): line for line in ax.get_lines()}
  assert list(lines["RBD"].get_ydata()) == pytest.approx([50.0, 91.0])  # mean over seeds
  paper = [
    line
    for line in ax.get_lines()
    if line.get_linestyle() == "--" and line.get_color() == lines["RBD"].get_color()
  ]
  assert paper[0].get_ydata()[0] == pytest.approx(93.893)
  assert "paper (final, dashed)" in [t.get_text() for t in ax.get_legend().get_texts()]
  assert os.path.getsize(tmp_path / "c.png") > 0


# --- data locations and workdir names ------------------------------------------------


def test_data_locations_fill_only_what_the_config_leaves_open(tmp_path):
  (tmp_path / "mnist").mkdir()
  data = runs.DataLocations.parse(f"mnist={tmp_path / 'mnist'}", str(tmp_path / "root"))
  assert data.flags() == [f"--data=mnist={tmp_path / 'mnist'}", f"--data_root={tmp_path / 'root'}"]
  assert (
    runs.DataLocations.parse(data.flags()[0][len("--data=") :], data.root) == data
  )  # the printed flags reproduce it
  config = config_lib.base_config()
  data.fill(config)
  assert config.data.dir == str(tmp_path / "mnist")
  config.data.dir, config.data.dataset = "", "cifar10"
  with pytest.raises(ValueError, match="root, does not exist"):
    data.fill(config)  # the root is the fallback; it must exist
  config.data.source = "sample"
  config.data.dataset = "mnist"
  data.fill(config)
  assert config.data.dir == ""  # the shipped sample needs no location
  config.data.source = "auto"
  with pytest.raises(ValueError, match=r"--data=mnist=PATH or --data_root"):
    runs.DataLocations({}, None).fill(config)
  with pytest.raises(ValueError, match="'svhn' is not supported"):
    runs.DataLocations.parse("svhn=/x", None)


def test_workdir_names_ignore_only_fields_a_rerun_may_change():
  assert set(runs.IGNORED_FIELDS) <= set(workdir_lib.RESUMABLE_FIELDS)
  config = config_lib.base_config()
  name = runs.workdir_name(config)
  assert name.startswith("fc-mnist-rbd-") and name.endswith("-s0")
  config.train.epochs, config.data.dir = 7, "/elsewhere"
  assert runs.workdir_name(config) == name
  for field, value in (
    ("learning_rate.rbd", 4.0),
    ("metrics.gradient_correlation", True),
    ("train.steps_per_epoch", 10),
  ):
    changed = config_lib.base_config()
    changed.update_from_flattened_dict({field: value})
    assert runs.workdir_name(changed) != name, field


# --- the runner end to end -------------------------------------------------------------

TINY_CONFIG = textwrap.dedent('''\
    """Two FC runs on the shipped MNIST sample; one diverges."""
    from configs import common

    ENTRIES = [
        {"name": "SGD", "method": "sgd", "learning_rate.sgd": 0.1},
        {"name": "SGD diverging", "method": "sgd", "learning_rate.sgd": 1e30},
    ]
    SAMPLE = {"data.source": "sample", "train.steps_per_epoch": 2,
              "train.log_every_steps": 2, "train.eval_examples": 100,
              "train.eval_batch_size": 100}

    def get_config(arg=None):
      arg = common.parse(arg)
      config = common.single(arg, epochs=1, entry=ENTRIES[0])
      common.apply(config, SAMPLE)
      return config

    def sweep(arg=None):
      return common.finish([dict(e) for e in ENTRIES], common.parse(arg))

    def report(arg=None):
      arg = common.parse(arg)
      return {"name": "tiny", "title": "Tiny", "scale": common.scale_note(arg, epochs=1),
              "columns": [{"metric": "validation_accuracy", "label": "val %",
                           "percent": True}],
              "plots": [{"kind": "curves", "metric": "validation_accuracy"}]}
    ''')


class Counting:
  """The trainer, counting calls; ``allowed=0`` fails any call."""

  def __init__(self, allowed=None):
    self.calls, self.allowed = [], allowed

  def __call__(self, config, workdir):
    self.calls.append(workdir)
    if self.allowed is not None and len(self.calls) > self.allowed:
      raise AssertionError(f"trained {workdir} again")
    return train.train_and_evaluate(config, workdir)


def test_runner_runs_skips_extends_and_resumes(tmp_path):
  config_file = tmp_path / "tiny.py"
  config_file.write_text(TINY_CONFIG)
  kwargs = dict(
    seeds=[0],
    data=runs.DataLocations({}, None),
    workdir_root=str(tmp_path / "runs"),
    results_dir=str(tmp_path / "results"),
    allow_dirty=True,  # whatever state the checkout is in (test_runs.py tests the refusal)
  )
  # The results of another selection, which this sweep must leave alone.
  os.makedirs(tmp_path / "results")
  other = (
    f"- {results_lib.COMMAND_LABEL}: `python -m experiments.reproduce --config=tiny.py:epochs=5`\n"
  )
  (tmp_path / "results" / "tiny.md").write_text(other)
  written = reproduce.reproduce(f"{config_file}:epochs=1", **kwargs)
  assert (tmp_path / "results" / "tiny.md").read_text() == other
  # Not the default argument: its own name, and so its plots (which plots.py decides).
  assert os.path.basename(written[0]) == "tiny@epochs=1.md"
  assert all(os.path.basename(p).startswith("tiny@epochs=1_") for p in written[1:])
  text = (tmp_path / "results" / "tiny@epochs=1.md").read_text()
  command = reproduce.command_line(
    f"{config_file}:epochs=1",
    **{k: v for k, v in kwargs.items() if k != "allow_dirty"},
    only="",
  )
  assert f"- Command (from the repository root): `{command}`" in text
  assert "| SGD | " in text and "SGD diverging, seed 0: diverged after epoch 0" in text
  workdirs = sorted(os.listdir(tmp_path / "runs"))
  assert len(workdirs) == 2
  statuses = {r: runs.read_status(str(tmp_path / "runs" / r)) for r in workdirs}
  assert sorted(s["status"] for s in statuses.values()) == ["diverged", "finished"]
  (sgd,) = [r for r, s in statuses.items() if s["status"] == "finished"]

  # Rerun: every run is finished or diverged for good, nothing trains.
  reproduce.reproduce(f"{config_file}:epochs=1", **kwargs, train_fn=Counting(allowed=0))

  # More epochs extend the same workdir; the diverged run stays as it is.
  trainer = Counting()
  reproduce.reproduce(f"{config_file}:epochs=2", **kwargs, train_fn=trainer)
  assert trainer.calls == [str(tmp_path / "runs" / sgd)]
  metrics = runs.read_metrics(str(tmp_path / "runs" / sgd / "metrics.jsonl"))
  assert [m["epoch"] for m in metrics] == [1, 2]

  # A run killed before its status and record were written is run again and resumes (no new
  # epochs).
  os.remove(tmp_path / "runs" / sgd / runs.STATUS_FILE)
  os.remove(tmp_path / "results" / "runs" / "tiny@epochs=2" / f"{sgd}.json")
  trainer = Counting()
  reproduce.reproduce(f"{config_file}:epochs=2", **kwargs, train_fn=trainer)
  assert len(trainer.calls) == 1
  assert len(runs.read_metrics(str(tmp_path / "runs" / sgd / "metrics.jsonl"))) == 2


def tiny_runs(tmp_path):
  """The tiny sweep's config file and its two runs (SGD, SGD diverging) at seed 0."""
  config_file = tmp_path / "tiny.py"
  config_file.write_text(TINY_CONFIG)
  data = runs.DataLocations({}, None)
  module = reproduce.load_config_module(str(config_file))
  return (
    config_file,
    [
      runs.make_run(module, None, entry, 0, data=data, workdir_root=str(tmp_path / "runs"))
      for entry in module.sweep(None)
    ],
  )


def reproduce_tiny(tmp_path, config_file, trainer):
  """The tiny sweep at seed 0 (``sweep_kwargs``'s workdirs and results under ``tmp_path``)."""
  reproduce.reproduce(
    str(config_file), **{**sweep_kwargs(tmp_path), "seeds": [0]}, train_fn=trainer
  )


def test_a_run_another_process_holds_is_skipped_and_the_sweep_goes_on(tmp_path, caplog):
  config_file, (sgd, diverging) = tiny_runs(tmp_path)
  held = workdir_lib.Workdir(sgd.workdir)  # as another sweep training it now holds it
  held.claim()
  trainer = Counting()
  try:
    with caplog.at_level(logging.WARNING):
      reproduce_tiny(tmp_path, config_file, trainer)
  finally:
    held.release()
  assert trainer.calls == [sgd.workdir, diverging.workdir]
  messages = [record.getMessage() for record in caplog.records]
  assert f"[run 1 of 2] SGD, seed 0: skipped: held by another process ({sgd.workdir})" in messages
  assert runs.read_status(sgd.workdir) is None  # not done: the next sweep runs it
  assert runs.read_status(diverging.workdir)["status"] == "diverged"


def test_a_run_another_process_finished_meanwhile_is_not_touched(tmp_path, caplog):
  """Two sweeps list the same runs; the one that gets to a run the other has finished
  since skips it, leaving that run's status (its wall time, its end) as it was."""
  config_file, (sgd, diverging) = tiny_runs(tmp_path)
  finished = {"status": "finished", "reason": None, "epochs": 1, "wall_seconds": 7.0}

  def trainer(config, workdir):
    # While this sweep trains its first run, another sweep finishes the second.
    os.makedirs(diverging.workdir, exist_ok=True)
    with open(os.path.join(diverging.workdir, runs.STATUS_FILE), "w") as f:
      json.dump(finished, f)
    trainer.calls.append(workdir)
    return train.train_and_evaluate(config, workdir)

  trainer.calls = []
  with caplog.at_level(logging.WARNING):
    reproduce_tiny(tmp_path, config_file, trainer)
  assert trainer.calls == [sgd.workdir]
  messages = [record.getMessage() for record in caplog.records]
  skipped = f"skipped: finished by another process ({diverging.workdir})"
  assert f"[run 2 of 2] SGD diverging, seed 0: {skipped}" in messages
  assert runs.read_status(diverging.workdir) == finished


# --- run records and --verify -----------------------------------------------------------


def sweep_kwargs(root):
  """The tiny sweep at seeds 0 and 1 with its workdirs, results and records under ``root``."""
  return dict(
    seeds=[0, 1],
    data=runs.DataLocations({}, None),
    workdir_root=str(root / "runs"),
    results_dir=str(root / "results"),
    allow_dirty=True,  # whatever state the checkout is in (test_runs.py tests the refusal)
  )


@pytest.fixture(scope="module")
def recorded(tmp_path_factory):
  """A finished tiny sweep: tiny.py, runs/ (workdirs), results/tiny.md, results/runs/tiny/."""
  root = tmp_path_factory.mktemp("recorded")
  (root / "tiny.py").write_text(TINY_CONFIG)
  reproduce.reproduce(str(root / "tiny.py"), **sweep_kwargs(root))
  return root


@pytest.fixture
def recorded_copy(recorded, tmp_path):
  """A copy of the finished sweep for a test to change."""
  shutil.copytree(recorded, tmp_path / "sweep")
  return tmp_path / "sweep"


def workdir_of(root, name, seed):
  """The workdir name of the run of entry ``name`` at ``seed``, found by its record."""
  records = runs.read_records(str(root / "results" / "runs" / "tiny"))
  (workdir,) = [w for w, r in records.items() if (r["name"], r["seed"]) == (name, seed)]
  return workdir


def read_record(root, workdir):
  with open(root / "results" / "runs" / "tiny" / f"{workdir}.json") as f:
    return json.load(f)


def test_each_run_that_ends_leaves_its_record_beside_the_results(recorded):
  workdirs = sorted(os.listdir(recorded / "runs"))
  assert len(workdirs) == 4  # two entries at two seeds
  assert sorted(os.listdir(recorded / "results" / "runs" / "tiny")) == [
    f"{w}.json" for w in workdirs
  ]
  for workdir in workdirs:
    record = read_record(recorded, workdir)
    path = recorded / "runs" / workdir
    assert record["workdir"] == workdir and record["seed"] == int(workdir[-1])
    assert record["status"] == runs.read_status(str(path))
    assert record["metrics"] == runs.read_metrics(str(path / "metrics.jsonl"))
    with open(path / "data.json") as f:
      assert record["data"] == json.load(f)
    with open(path / "config.json") as f:
      assert record["config"] == json.load(f)
    state = runs.code_state()
    assert (record["status"]["commit"], record["status"]["clean"]) == (state.commit, state.clean)
    assert record["status"]["status"] == (
      "diverged" if record["name"] == "SGD diverging" else "finished"
    )
  text = (recorded / "results" / "tiny.md").read_text()
  assert f"- Run records: {recorded / 'results' / 'runs' / 'tiny'}/ (one JSON per run)" in text


def without_times(text):
  """A results file without the lines that say when it was written."""
  return [line for line in text.splitlines() if not line.startswith(("- Started", "- Written"))]


def test_records_alone_rewrite_the_results_file_and_its_plots(recorded_copy, caplog):
  root = recorded_copy
  spec = str(root / "tiny.py")
  sgd1 = workdir_of(root, "SGD", 1)
  exported = read_record(root, sgd1)
  os.remove(root / "results" / "runs" / "tiny" / f"{sgd1}.json")
  # A run done in its workdir but without a record (run before records were kept) gets one.
  with caplog.at_level(logging.INFO):
    written = reproduce.reproduce(spec, **sweep_kwargs(root), train_fn=Counting(allowed=0))
  assert read_record(root, sgd1) == exported
  record_path = root / "results" / "runs" / "tiny" / f"{sgd1}.json"
  assert f"Record of SGD, seed 1: {record_path}" in [r.getMessage() for r in caplog.records]
  from_workdirs = (root / "results" / "tiny.md").read_text()

  shutil.rmtree(root / "runs")
  for path in written:
    os.remove(path)
  # Every run has a record, so none trains; the file and plots come from the records.
  assert reproduce.reproduce(spec, **sweep_kwargs(root), train_fn=Counting(allowed=0)) == written
  assert all(os.path.getsize(path) > 0 for path in written)
  assert without_times((root / "results" / "tiny.md").read_text()) == without_times(from_workdirs)
  assert "| SGD | " in from_workdirs and "SGD diverging, seed 1: diverged" in from_workdirs


def test_verify_reruns_the_first_recorded_runs_and_they_agree_bit_for_bit(recorded, capsys):
  records = runs.read_records(str(recorded / "results" / "runs" / "tiny"))
  found = reproduce.verify(
    str(recorded / "tiny.py"),
    cells=2,
    data=runs.DataLocations({}, None),
    results_dir=str(recorded / "results"),
    allow_dirty=True,
  )
  assert [(run.name, run.seed, differ) for run, differ in found] == [
    ("SGD", 0, []),
    ("SGD", 1, []),
  ]
  lines = capsys.readouterr().out.splitlines()
  assert lines[0].startswith(
    "Rerunning 2 of the 4 recorded runs of tiny (the first in sweep order) at "
  )
  for line, (run, _) in zip(lines[1:], found, strict=True):
    final = read_record(recorded, os.path.basename(run.workdir))["metrics"][-1]
    value = json.dumps(final["validation_accuracy"])
    assert line == (
      f"SGD, seed {run.seed}: validation_accuracy recorded {value}, rerun {value}: AGREE"
    )
    assert not os.path.exists(run.workdir)  # a temporary workdir, removed
  assert runs.read_records(str(recorded / "results" / "runs" / "tiny")) == records  # untouched


def test_verify_with_only_reruns_the_cells_it_picks_from_the_whole_files_records(recorded, capsys):
  found = reproduce.verify(
    str(recorded / "tiny.py"),
    cells=1,
    data=runs.DataLocations({}, None),
    results_dir=str(recorded / "results"),
    only="^SGD$",
    allow_dirty=True,
  )
  assert [(run.name, run.seed, differ) for run, differ in found] == [("SGD", 0, [])]
  lines = capsys.readouterr().out.splitlines()
  assert lines[0].startswith("Rerunning 1 of the 2 recorded runs of tiny (the first in sweep ")


def test_verify_says_which_rerun_differs_from_a_tampered_record_and_exits_1(recorded_copy):
  root = recorded_copy
  sgd0 = workdir_of(root, "SGD", 0)
  record = read_record(root, sgd0)
  true_value = record["metrics"][-1]["validation_accuracy"]
  tampered = math.nextafter(true_value, 2.0)  # the last bit of one metric
  record["metrics"][-1]["validation_accuracy"] = tampered
  record["status"]["commit"] = "0" * 40
  with open(root / "results" / "runs" / "tiny" / f"{sgd0}.json", "w") as f:
    json.dump(record, f)
  shutil.rmtree(root / "runs")  # a rerun needs no workdir of the sweep
  out = subprocess.run(
    [
      sys.executable,
      "-m",
      "experiments.reproduce",
      f"--config={root / 'tiny.py'}",
      f"--results_dir={root / 'results'}",
      "--verify=1",
      "--allow_dirty",
    ],
    cwd=ROOT,
    capture_output=True,
    text=True,
    env=dict(os.environ, JAX_PLATFORMS="cpu"),
  )
  assert out.returncode == 1, out.stderr
  (line,) = [line for line in out.stdout.splitlines() if line.startswith("SGD, seed 0")]
  recorded_at = "0000000 (clean)" if record["status"]["clean"] else "0000000 with uncommitted"
  assert line.startswith(
    f"SGD, seed 0: validation_accuracy recorded {json.dumps(tampered)}, rerun "
    f"{json.dumps(true_value)}: DIFFER (validation_accuracy) (recorded at {recorded_at}"
  )
  assert out.stderr.strip().splitlines()[-1] == "1 of 1 rerun(s) DIFFER from their records"
  assert read_record(root, sgd0) == record  # a rerun writes no record


def test_verify_refuses_a_run_recorded_with_another_number_of_devices(recorded_copy, capsys):
  """On CPU a run's floats depend on the process's device count (Fig. 5's K = 1 run, recorded
  with 16 devices, differs when rerun with 1), so --verify says how to rerun it instead."""
  root = recorded_copy
  sgd0 = workdir_of(root, "SGD", 0)
  record = read_record(root, sgd0)
  assert (record["status"]["devices"], record["status"]["platform"]) == (1, "cpu")
  record["status"]["devices"] = 16
  with open(root / "results" / "runs" / "tiny" / f"{sgd0}.json", "w") as f:
    json.dump(record, f)
  with pytest.raises(ValueError) as e:
    reproduce.verify(
      str(root / "tiny.py"),
      cells=1,
      data=runs.DataLocations({}, None),
      results_dir=str(root / "results"),
      allow_dirty=True,
      train_fn=Counting(allowed=0),
    )
  assert str(e.value) == (
    "SGD, seed 0 was recorded in a process with 16 cpu device(s) and this one has 1: the "
    "numbers depend on it; rerun --verify with as many (on CPU: "
    "XLA_FLAGS=--xla_force_host_platform_device_count=16)"
  )
  assert "Rerunning" not in capsys.readouterr().out  # refused before anything ran


def test_the_command_line_reports_errors_in_one_line(tmp_path):
  out = subprocess.run(
    [sys.executable, "-m", "experiments.reproduce", "--config=configs/nope.py"],
    cwd=ROOT,
    capture_output=True,
    text=True,
    env=dict(os.environ, JAX_PLATFORMS="cpu"),
  )
  assert out.returncode == 1
  assert out.stderr.strip().splitlines() == ["Invalid input: --config: no file 'configs/nope.py'"]


def test_an_interrupted_sweep_says_how_to_go_on(monkeypatch, capsys):
  monkeypatch.delenv(cli.TRACEBACK_ENV_VAR, raising=False)
  monkeypatch.setattr(sys, "argv", ["reproduce.py", "--config=configs/table1.py:epochs=1"])

  def interrupted():
    raise KeyboardInterrupt

  with pytest.raises(SystemExit) as exit_:
    cli.report_errors(interrupted, interrupted=reproduce.interrupted_message)
  assert exit_.value.code == 130
  assert capsys.readouterr().err == (
    "Interrupted: finished runs are kept and the interrupted one resumes from its last "
    "checkpoint; the same command goes on: python -m experiments.reproduce "
    "--config=configs/table1.py:epochs=1\n"
  )


# --- the results file's name -------------------------------------------------------------


def committed_results() -> list[tuple[pathlib.Path, str]]:
  """``(path, command)`` of every file in results/ that experiments.reproduce wrote."""
  found = []
  for path in sorted((ROOT / "results").rglob("*.md")):
    command = results_lib.read_command(str(path))
    if command and command.startswith("python -m experiments.reproduce "):
      found.append((path, command))
  return found


@pytest.mark.parametrize(
  "path,command",
  committed_results(),
  ids=[str(path.relative_to(ROOT)) for path, _ in committed_results()],
)
def test_committed_results_keep_their_names_when_rerun_with_their_commands(path, command):
  values = dict(w[2:].split("=", 1) for w in shlex.split(command) if w.startswith("--"))
  assert ROOT / values["results_dir"] == path.parent
  config_path, arg = reproduce.split_spec(values["config"])
  module = reproduce.load_config_module(str(ROOT / config_path))
  stem = module.report(arg)["name"]
  name = reproduce.results_stem(module, stem, arg, values.get("only", ""), str(path.parent))
  assert name == path.stem
  # Any other scale or selection gets a file of its own.
  assert reproduce.results_stem(module, stem, "epochs=1,steps=40", "", str(path.parent)) == (
    f"{stem}@epochs=1,steps=40"
  )


def test_a_reduced_or_partial_sweep_never_takes_another_selections_file(tmp_path):
  module = reproduce.load_config_module(str(ROOT / "configs" / "table1.py"))

  def name(arg, only=""):
    return reproduce.results_stem(module, "table1", arg, only, str(tmp_path))

  # No results yet: the bare name is the default argument's, with every entry.
  assert name(None) == name("epochs=0,eval=-1") == "table1"
  assert (
    name("epochs=1,steps=40") == name("steps=40,eval=-1,epochs=1") == "table1@epochs=1,steps=40"
  )
  assert name("runlocal") == name("runlocal=true") == "table1@runlocal"
  assert name(None, only="FC-MNIST") == "table1@only=FC-MNIST"
  # A name that a file system or a markdown link would mangle is cleaned and hashed.
  partial = name("epochs=1", only="FC-MNIST (RBD|SGD)")
  assert partial.startswith("table1@epochs=1,only=FC-MNIST__RBD_SGD_~")
  assert partial != name("epochs=1", only="FC-MNIST (RBD|FPD)")
  assert len(name(",".join(f"{k}=7" for k in ("epochs", "steps", "eval", "nes_steps")))) < 100
  # The committed Table 1 (a reduced scale): its own command keeps its name, and any other
  # selection, the config's default argument included, writes another file.
  shutil.copy(ROOT / "results" / "table1.md", tmp_path / "table1.md")
  assert name("nes_steps=20,epochs=1,steps=400,eval=2000") == "table1"
  assert name(None) == "table1@default"
  assert name("epochs=1,steps=40") == "table1@epochs=1,steps=40"
  assert name("epochs=1,steps=400,eval=2000,nes_steps=20", only="CNN") == (
    "table1@epochs=1,steps=400,eval=2000,nes_steps=20,only=CNN"
  )
  # A file whose header names no command belongs to no selection.
  (tmp_path / "table1.md").write_text("# Table 1\n")
  assert name(None) == "table1@default"


# --- the tuner ---------------------------------------------------------------------------


def test_search_refines_around_the_coarse_best():
  tried = []

  def loss_at(k):
    tried.append(k)
    return (k - 2.4) ** 2

  losses = tune.search(loss_at, coarse=[-12, -9, -6, -3, 0, 3], lo=-19, hi=7)
  assert tune.best_rate(losses) == 2
  assert tried == [-12, -9, -6, -3, 0, 3, 2, 4, 1]


def test_search_walks_past_the_grid_edge_up_to_the_papers_bound():
  losses = tune.search(lambda k: -k, coarse=[-3, 0, 3], lo=-19, hi=7)
  assert sorted(losses) == [-3, 0, 2, 3, 4, 5, 6, 7]
  assert tune.best_rate(losses) == 7


def test_search_goes_lower_while_every_trial_diverges():
  losses = tune.search(
    lambda k: math.inf if k > -5 else 1.0 + (k + 7) ** 2, coarse=[-3, 0], lo=-19, hi=7
  )
  assert tune.best_rate(losses) == -7
  assert sorted(losses) == [-8, -7, -6, -5, -4, -3, 0]


def fake_trainer(calls):
  """Writes a heldout loss of (log2(rate) - 1.6)^2 without training; >= 2^4 diverges."""

  def fake(config, workdir):
    calls.append(workdir)
    log2 = math.log2(config.learning_rate[config.method])
    if log2 >= 4:
      raise train.TrainingDiverged("the train loss is nan")
    os.makedirs(workdir, exist_ok=True)
    with open(os.path.join(workdir, "metrics.jsonl"), "w") as f:
      f.write(
        json.dumps(
          {
            "epoch": 1,
            "heldout_loss": (log2 - 1.6) ** 2,
            "heldout_accuracy": 0.5,
            "test_accuracy": 0.25,
          }
        )
        + "\n"
      )
    return {"state": None, "history": [], "stopped": None}

  return fake


def test_tuner_writes_table4_and_the_lines_for_learning_rates(tmp_path):
  spec = f"{ROOT / 'configs' / 'table4.py'}:runlocal,pairs=fc-mnist,methods=sgd,lo=-3,hi=5,stride=3"
  kwargs = dict(
    seeds=[0],
    data=runs.DataLocations({}, None),
    workdir_root=str(tmp_path / "runs"),
    results_dir=str(tmp_path / "results"),
    allow_dirty=True,
  )
  calls = []
  written = reproduce.reproduce(spec, **kwargs, train_fn=fake_trainer(calls))
  # hi=5,stride=3 are the defaults, so the selection leaves them out.
  name = "table4_coarse_runlocal@runlocal,pairs=fc-mnist,methods=sgd,lo=-3"
  assert [os.path.basename(p) for p in written] == [f"{name}.md", f"{name}_tuning.png"]
  assert len(calls) == 6  # coarse -3, 0, 3; then 2, 4 (diverges), 1
  lines = (tmp_path / "results" / f"{name}.md").read_text().splitlines()
  # Table 4's FC-MNIST SGD: 2^-8 per example, applied 2^-3.
  # The row without its last cell, the wall time (a loaded machine takes seconds).
  assert (
    "| FC | MNIST | SGD | -3 | 2 | +5 | 0.1600 | 50.00 | 25.00 | -3: 21.2, 0: 2.56, "
    "1: 0.36, 2: 0.16, 3: 1.96, 4: diverged |"
  ) in [line.rsplit(" ", 2)[0] for line in lines]
  assert "    ('fc', 'mnist', 'sgd', None, None): 2,  # heldout_loss 0.16" in lines
  reproduce.reproduce(spec, **kwargs, train_fn=fake_trainer(calls))
  assert len(calls) == 6  # resumed search: every trial is done
  # The refining trials have records too: without workdirs the same search and table.
  shutil.rmtree(tmp_path / "runs")
  reproduce.reproduce(spec, **kwargs, train_fn=fake_trainer(calls))
  assert len(calls) == 6
  text = (tmp_path / "results" / f"{name}.md").read_text()
  assert without_times(text) == without_times("\n".join(lines))


# --- the analyses (Fig. 2, Fig. B.8) -----------------------------------------------------


def test_quasi_orthogonality_matches_independent_isotropic_vectors():
  pairs = 200
  data = analysis.quasi_orthogonality(
    {"dims": [1000, 100_000], "pairs": pairs, "distributions": ["normal", "bernoulli"], "seed": 0}
  )
  for distribution in ("normal", "bernoulli"):
    for i, n in enumerate(data["dims"]):
      # For independent unit vectors, cos has mean 0 and variance 1/n, and |cos|
      # mean sqrt(2 / (pi n)), variance (1 - 2/pi) / n: four standard errors.
      assert abs(data["mean"][distribution][i]) < 4 / math.sqrt(n * pairs)
      assert data["abs_mean"][distribution][i] == pytest.approx(
        math.sqrt(2 / (math.pi * n)), abs=4 * math.sqrt((1 - 2 / math.pi) / (n * pairs))
      )


def test_landscape_is_the_loss_along_unit_directions_and_is_kept(tmp_path):
  module = reproduce.load_config_module(str(ROOT / "configs" / "fig2.py"))
  (entry,) = module.sweep("runlocal")
  run = runs.make_run(
    module, "runlocal", entry, 0, data=runs.DataLocations({}, None), workdir_root=str(tmp_path)
  )
  model = models.create_model("fc")
  params = models.init_variables(model, key=jax.random.key(3), input_shape=(28, 28, 1))["params"]
  epochs_trained = []

  def trained_to(config, workdir):
    epochs_trained.append(config.train.epochs)
    os.makedirs(workdir, exist_ok=True)
    return {"state": {"params": params, "batch_stats": {}}, "stopped": None}

  spec = {
    "epochs": [1, 2],
    "distributions": ["normal", "bernoulli"],
    "directions": 3,
    "radius": 2.0,
    "points": 3,
    "examples": 50,
  }
  curves = analysis.landscape(run, spec, trained_to)
  assert epochs_trained == [1, 2]  # trained to each epoch in turn, resuming the workdir

  images, labels = train.load_data(run.config).eval_splits["validation"]
  inputs = preprocess.preprocess_eval_batch(jnp.asarray(images[:50]), dataset="mnist")
  flat, unravel = ravel_pytree(params)

  def loss(flat_params):
    logits = model.apply({"params": unravel(flat_params)}, inputs, train=False)
    return float(optax.softmax_cross_entropy_with_integer_labels(logits, labels[:50]).mean())

  for distribution in ("normal", "bernoulli"):
    phi = np.asarray(analysis.unit_directions(0, 3, flat.size, distribution))
    np.testing.assert_allclose(np.linalg.norm(phi, axis=1), 1.0, rtol=1e-5)
    mean = curves["1"][distribution]["mean"]
    assert mean[1] == pytest.approx(loss(flat), rel=1e-5)  # a = 0
    assert mean[2] == pytest.approx(np.mean([loss(flat + 2.0 * p) for p in phi]), rel=1e-4)
    assert mean[0] == pytest.approx(np.mean([loss(flat - 2.0 * p) for p in phi]), rel=1e-4)
  # Kept in the workdir: a rerun neither trains nor evaluates again.
  assert analysis.landscape(run, spec, lambda *a: pytest.fail("recomputed")) == curves


def test_landscape_file_header_counts_the_run_it_just_trained(tmp_path):
  # Before: the header was written before the probe trained, so a fresh Fig. 2
  # said "Code of the runs: no run has ended yet" and "0 finished run(s)".
  model = models.create_model("fc")
  params = models.init_variables(model, key=jax.random.key(3), input_shape=(28, 28, 1))["params"]

  def trained_to(config, workdir):
    os.makedirs(workdir, exist_ok=True)
    return {"state": {"params": params, "batch_stats": {}}, "history": [], "stopped": None}

  reproduce.reproduce(
    f"{ROOT / 'configs' / 'fig2.py'}:runlocal,directions=2",
    seeds=[0],
    data=runs.DataLocations({}, None),
    workdir_root=str(tmp_path / "runs"),
    results_dir=str(tmp_path / "results"),
    allow_dirty=True,
    train_fn=trained_to,
  )
  (written,) = (tmp_path / "results").glob("*.md")
  lines = written.read_text().splitlines()
  assert any(line.startswith("- Code of the runs: ") and "(1 run)" in line for line in lines)
  assert any(
    line.startswith("- Wall time: ") and "over 1 finished run(s)" in line for line in lines
  )


def test_against_plot_draws_means_over_seeds_and_the_reference(tmp_path):
  def row(name, x, accuracies):
    found = []
    for seed, accuracy in enumerate(accuracies):
      write_run(tmp_path / f"{name}{seed}", accuracies=[(accuracy, accuracy)])
      found.append(runs.read_workdir(str(tmp_path / f"{name}{seed}"), seed))
    entry = {"name": name} if x is None else {"name": name, "label": "RBD", "x": x}
    return results_lib.Row(entry, found)

  rows = [row("d10", 10, [0.5, 0.6]), row("d100", 100, [0.7]), row("SGD", None, [0.8])]
  spec = {
    "kind": "against",
    "x_label": "d",
    "log_x": True,
    "metrics": ["validation_accuracy"],
    "reference": {
      "name": "SGD",
      "metric": "validation_accuracy",
      "fraction": 0.9,
      "label": "90 % of SGD",
    },
  }
  figure = plots.against(rows, spec, str(tmp_path / "a.png"))
  (ax,) = [a for a in figure.axes if a.get_visible()]
  (rbd,) = [c for c in ax.containers if c.get_label() == "RBD"]  # the error bars
  assert list(rbd.lines[0].get_xdata()) == [10, 100]
  assert list(rbd.lines[0].get_ydata()) == pytest.approx([55.0, 70.0])  # mean over seeds
  lines = {line.get_label(): line for line in ax.get_lines()}
  assert lines["SGD"].get_ydata()[0] == pytest.approx(80.0)
  assert lines["90 % of SGD"].get_ydata()[0] == pytest.approx(72.0)
  assert ax.get_xscale() == "log" and ax.get_xlabel() == "d"


def test_a_sweep_needing_more_workers_devices_than_there_are_is_refused_before_it_runs(tmp_path):
  # Fig. 5 asks for 8 and 16 workers; this process has one CPU device.
  trainer = Counting(allowed=0)
  with pytest.raises(ValueError) as e:
    reproduce.reproduce(
      f"{ROOT / 'configs' / 'fig5.py'}:runlocal",
      seeds=[0],
      data=runs.DataLocations({}, None),
      workdir_root=str(tmp_path / "runs"),
      results_dir=str(tmp_path / "results"),
      allow_dirty=True,
      train_fn=trainer,
    )
  assert str(e.value) == (
    "workers=16 (run 'RBD K = 16') needs 16 devices, but this process has 1 cpu device(s); "
    "on CPU start the runner with XLA_FLAGS=--xla_force_host_platform_device_count=16"
  )
  assert trainer.calls == [] and not (tmp_path / "runs").exists()
