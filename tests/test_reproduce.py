"""The runner, the results writer, the tuner's search and the plots."""

import json
import math
import os
import pathlib
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.flatten_util import ravel_pytree

from experiments import analysis, plots, reproduce, tune
from experiments import results as results_lib
from random_bases import config_lib, models, train
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
    with open(os.path.join(workdir, results_lib.STATUS_FILE), "w") as f:
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
    results_lib.Row(rbd, [results_lib.read_run(str(tmp_path / f"rbd{s}"), s) for s in (0, 1)]),
    results_lib.Row(sgd, [results_lib.read_run(str(tmp_path / f"sgd{s}"), s) for s in (0, 1)]),
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
  # Seed 0 stopped after epoch 1 (its wall time is known); seed 1 has only its epochs'.
  assert (
    "| FC-MNIST SGD | 98.27 \u00b1 0.09 | 11.00 \u00b1 1.41 | \u221287.27 | "
    "12.00 \u00b1 1.41 | 0, 1 | 1*, 1 | 2^-3 (tuned) | MNIST (official IDX files) | "
    "\u2265 0m14s |"
  ) in lines
  assert (
    "- FC-MNIST RBD \u2212 FC-MNIST SGD (validation accuracy, points): ours "
    "80.00 \u00b1 0.00 over 2 seed(s); paper 4.4"
  ) in lines
  assert "- FC-MNIST SGD, seed 0: stopped after epoch 1: accuracy 0.100 <= 0.15" in lines
  assert f"- {MNIST} (images: {{'train': 50000}})" in lines
  assert "- a note" in lines
  assert "- Code of the runs: not recorded (3 runs)" in lines  # the killed run has no status
  assert "- Wall time: 1m50s over 3 finished run(s), summed" in lines  # 40 + 60 + 10 s


def test_a_row_without_runs_says_so(tmp_path):
  row = results_lib.Row(
    {"name": "FC-MNIST NES", "paper": {"validation_accuracy": (22.5, 1.7)}},
    [results_lib.read_run(str(tmp_path / "none"), 0)],
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
  data = reproduce.DataLocations.parse(f"mnist={tmp_path / 'mnist'}", str(tmp_path / "root"))
  assert data.flags() == [f"--data=mnist={tmp_path / 'mnist'}", f"--data_root={tmp_path / 'root'}"]
  assert (
    reproduce.DataLocations.parse(data.flags()[0][len("--data=") :], data.root) == data
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
    reproduce.DataLocations({}, None).fill(config)
  with pytest.raises(ValueError, match="'svhn' is not supported"):
    reproduce.DataLocations.parse("svhn=/x", None)


def test_workdir_names_ignore_only_fields_a_rerun_may_change():
  assert set(reproduce.IGNORED_FIELDS) <= set(workdir_lib.RESUMABLE_FIELDS)
  config = config_lib.base_config()
  name = reproduce.workdir_name(config)
  assert name.startswith("fc-mnist-rbd-") and name.endswith("-s0")
  config.train.epochs, config.data.dir = 7, "/elsewhere"
  assert reproduce.workdir_name(config) == name
  for field, value in (
    ("learning_rate.rbd", 4.0),
    ("metrics.gradient_correlation", True),
    ("train.steps_per_epoch", 10),
  ):
    changed = config_lib.base_config()
    changed.update_from_flattened_dict({field: value})
    assert reproduce.workdir_name(changed) != name, field


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
    data=reproduce.DataLocations({}, None),
    workdir_root=str(tmp_path / "runs"),
    results_dir=str(tmp_path / "results"),
  )
  written = reproduce.reproduce(f"{config_file}:epochs=1", **kwargs)
  assert [os.path.basename(p) for p in written] == [
    "tiny.md",
    "tiny_curves_validation_accuracy.png",
  ]
  text = (tmp_path / "results" / "tiny.md").read_text()
  command = reproduce.command_line(f"{config_file}:epochs=1", **kwargs, only="")
  assert f"- Command (from the repository root): `{command}`" in text
  assert "| SGD | " in text and "SGD diverging, seed 0: diverged after epoch 0" in text
  runs = sorted(os.listdir(tmp_path / "runs"))
  assert len(runs) == 2
  statuses = {r: reproduce.read_status(str(tmp_path / "runs" / r)) for r in runs}
  assert sorted(s["status"] for s in statuses.values()) == ["diverged", "finished"]
  (sgd,) = [r for r, s in statuses.items() if s["status"] == "finished"]

  # Rerun: every run is finished or diverged for good, nothing trains.
  reproduce.reproduce(f"{config_file}:epochs=1", **kwargs, train_fn=Counting(allowed=0))

  # More epochs extend the same workdir; the diverged run stays as it is.
  trainer = Counting()
  reproduce.reproduce(f"{config_file}:epochs=2", **kwargs, train_fn=trainer)
  assert trainer.calls == [str(tmp_path / "runs" / sgd)]
  metrics = results_lib.read_metrics(str(tmp_path / "runs" / sgd / "metrics.jsonl"))
  assert [m["epoch"] for m in metrics] == [1, 2]

  # A run killed before its status was written is run again and resumes (no new epochs).
  os.remove(tmp_path / "runs" / sgd / results_lib.STATUS_FILE)
  trainer = Counting()
  reproduce.reproduce(f"{config_file}:epochs=2", **kwargs, train_fn=trainer)
  assert len(trainer.calls) == 1
  assert len(results_lib.read_metrics(str(tmp_path / "runs" / sgd / "metrics.jsonl"))) == 2


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
    data=reproduce.DataLocations({}, None),
    workdir_root=str(tmp_path / "runs"),
    results_dir=str(tmp_path / "results"),
  )
  calls = []
  written = reproduce.reproduce(spec, **kwargs, train_fn=fake_trainer(calls))
  assert [os.path.basename(p) for p in written] == [
    "table4_runlocal.md",
    "table4_runlocal_tuning.png",
  ]
  assert len(calls) == 6  # coarse -3, 0, 3; then 2, 4 (diverges), 1
  lines = (tmp_path / "results" / "table4_runlocal.md").read_text().splitlines()
  # Table 4's FC-MNIST SGD: 2^-8 per example, applied 2^-3.
  assert (
    "| FC | MNIST | SGD | -3 | 2 | +5 | 0.1600 | 50.00 | 25.00 | -3: 21.2, 0: 2.56, "
    "1: 0.36, 2: 0.16, 3: 1.96, 4: diverged | 0m00s |"
  ) in lines
  assert "    ('fc', 'mnist', 'sgd', None, None): 2,  # heldout_loss 0.16" in lines
  reproduce.reproduce(spec, **kwargs, train_fn=fake_trainer(calls))
  assert len(calls) == 6  # resumed search: every trial is done


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
  run = reproduce.make_run(
    module, "runlocal", entry, 0, data=reproduce.DataLocations({}, None), workdir_root=str(tmp_path)
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


def test_against_plot_draws_means_over_seeds_and_the_reference(tmp_path):
  def row(name, x, accuracies):
    runs = []
    for seed, accuracy in enumerate(accuracies):
      write_run(tmp_path / f"{name}{seed}", accuracies=[(accuracy, accuracy)])
      runs.append(results_lib.read_run(str(tmp_path / f"{name}{seed}"), seed))
    entry = {"name": name} if x is None else {"name": name, "label": "RBD", "x": x}
    return results_lib.Row(entry, runs)

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
