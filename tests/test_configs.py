"""The table and figure configs: every sweep entry builds, runlocal trains, rates resolve."""

import json
import math
import pathlib
import re

import jax
import pytest

from configs import common, learning_rates
from experiments import reproduce
from random_bases import config_lib, distributed, train
from random_bases.method import compartments as comp_lib

ROOT = pathlib.Path(__file__).resolve().parents[1]
# Every config file that defines a sweep (default.py is the main job's single run).
SWEEP_CONFIGS = sorted(
  p.name for p in (ROOT / "configs").glob("*.py") if "def sweep(" in p.read_text()
)


def load(name):
  return reproduce.load_config_module(str(ROOT / "configs" / name))


def test_every_table_and_figure_has_a_config():
  assert SWEEP_CONFIGS == [
    "fig1.py",
    "fig2.py",
    "fig3.py",
    "fig4.py",
    "fig5.py",
    "figb10.py",
    "figb13.py",
    "figb15.py",
    "figb7.py",
    "figb8.py",
    "intrinsic_dimension.py",
    "table1.py",
    "table1_full.py",
    "table2.py",
    "table3.py",
    "table4.py",
  ]


@pytest.mark.parametrize("name", SWEEP_CONFIGS)
@pytest.mark.parametrize("arg", [None, "runlocal"])
def test_every_sweep_entry_builds_a_valid_distinct_run(name, arg, tmp_path):
  module = load(name)
  report = module.report(arg)
  entries = module.sweep(arg)
  data = reproduce.DataLocations({}, str(tmp_path))
  runs = [
    reproduce.make_run(module, arg, entry, 0, data=data, workdir_root=str(tmp_path))
    for entry in entries
  ]  # make_run validates each config
  names = [e["name"] for e in entries]
  assert len(set(names)) == len(names)
  if arg is None:  # (runlocal maps every dataset to the MNIST sample)
    # Entries that differ only in their name would be one run reported twice.
    assert len({r.workdir for r in runs}) == len(runs), names
  # No entry inherits a field from get_config's example run: all set the same fields.
  assert len({frozenset(k for k in e if k not in common.META_KEYS) for e in entries}) <= 1
  for run in runs:
    if arg == "runlocal":
      assert (run.config.data.source, run.config.train.steps_per_epoch) == ("sample", 3)
    else:
      assert run.config.data.dir == str(tmp_path)  # filled by the runner, not the config
  assert report["name"].endswith("_runlocal") == (arg == "runlocal")
  for column in report.get("columns", []):
    assert column["metric"] and column["label"]


def test_table1_rows_are_the_papers():
  entries = load("table1.py").sweep()
  assert [e["name"] for e in entries[:4]] == [
    "FC-MNIST NES",
    "FC-MNIST FPD",
    "FC-MNIST RBD",
    "FC-MNIST SGD",
  ]
  assert entries[2]["paper"] == {"validation_accuracy": (93.893, 0.024)}
  assert entries[-1]["paper"] == {"validation_accuracy": (81.4, 0.4)}  # CNN-CIFAR10 SGD
  assert {e["bases.d"] for e in entries} == {250}


def test_table_cells_are_selected_by_the_config_argument():
  table1, table2 = load("table1.py"), load("table2.py")
  config = table1.get_config("model=cnn,dataset=cifar10,method=sgd")
  entry = next(e for e in table1.sweep() if e["name"] == "CNN-CIFAR10 SGD")
  assert (config.model, config.data.dataset, config.method) == ("cnn", "cifar10", "sgd")
  assert config.learning_rate.sgd == entry["learning_rate.sgd"]
  assert config.train.epochs == 100
  config = table2.get_config("model=fc,dataset=fashion_mnist,distribution=uniform")
  assert (config.model, config.data.dataset, config.bases.distribution) == (
    "fc",
    "fashion_mnist",
    "uniform",
  )
  with pytest.raises(ValueError, match="not a row of this table"):
    table1.get_config("model=resnet8,dataset=mnist")
  with pytest.raises(ValueError, match="method='adam'"):
    table1.get_config("method=adam")


def test_table3_configs_give_the_papers_d(tmp_path):
  # PAPER.md Table 3: c = 10, 25, 50, 100 -> d = 7,982, 3,328, 1,782, 1,018.
  module = load("table3.py")
  data = reproduce.DataLocations({}, str(tmp_path))
  for entry in module.sweep():
    config = reproduce.make_run(
      module, None, entry, 0, data=data, workdir_root=str(tmp_path)
    ).config
    assert config.metrics.gradient_correlation
    assert config.train.epochs == 80
    if config.method == "sgd":
      continue
    layout = comp_lib.make_layout(
      config_lib.param_shapes(config.model, config.data.dataset),
      d=config.bases.d,
      compartments=config_lib.parse_compartments(config.bases.compartments),
      allocation=config.bases.allocation,
    )
    assert layout.dim == entry["x"]
  assert [e["x"] for e in module.sweep()] == [78_330, 7_982, 3_328, 1_782, 1_018, 7_982]


def test_figb10_compares_five_times_250_with_one_basis_of_1250(tmp_path):
  module = load("figb10.py")
  data = reproduce.DataLocations({}, str(tmp_path))
  for entry in module.sweep():
    config = reproduce.make_run(
      module, None, entry, 0, data=data, workdir_root=str(tmp_path)
    ).config
    layout = comp_lib.make_layout(
      config_lib.param_shapes(config.model, config.data.dataset),
      d=config.bases.d,
      compartments=config_lib.parse_compartments(config.bases.compartments),
      allocation=config.bases.allocation,
    )
    expected = [250] * 5 if "per layer" in entry["name"] else [1250]
    assert [c.dim for c in layout.compartments] == expected


def test_scaled_sweeps_keep_nes_on_its_budget_and_drop_switches_past_the_end():
  entries = load("table1.py").sweep("epochs=2,steps=100,nes_steps=5")
  steps = {e["name"]: e["train.steps_per_epoch"] for e in entries}
  assert steps["CNN-MNIST NES"] == 5 and steps["CNN-MNIST RBD"] == 100
  names = [e["name"] for e in load("fig3.py").sweep("epochs=6")]
  assert names == [
    "RBD only",
    "SGD only",
    "RBD->SGD after 1",
    "SGD->RBD after 1",
    "RBD->SGD after 2",
    "SGD->RBD after 2",
    "RBD->SGD after 5",
    "SGD->RBD after 5",
  ]
  assert "REDUCED" in load("table1.py").report("epochs=2")["scale"]
  assert load("table1.py").report()["scale"].startswith("the paper's scale")


def test_table4_sweep_is_the_coarse_grid_on_the_tune_holdout():
  module = load("table4.py")
  arg = "pairs=fc-mnist+cnn-mnist,methods=sgd+rbd,lo=-12,hi=5,stride=3"
  entries = module.sweep(arg)
  assert len(entries) == 2 * 2 * 6
  assert [e["log2_rate"] for e in entries[:6]] == [-12, -9, -6, -3, 0, 3]
  assert entries[0]["learning_rate.sgd"] == 2.0**-12
  assert entries[0]["paper"] == {"log2_rate": (-3, 0)}  # Table 4: -8, applied x 32
  assert module.get_config(arg).data.holdout == "tune"
  with pytest.raises(ValueError, match="lo=-20"):
    module.sweep("lo=-20")


def test_rates_prefer_ours_then_the_papers(monkeypatch):
  monkeypatch.setattr(learning_rates, "TUNED", {})  # the paper's alone first
  rate = learning_rates.rate
  assert (rate("fc", "mnist", "sgd").log2, rate("fc", "mnist", "sgd").source) == (
    -3,
    "paper Table 4",
  )  # 2^-8 per example x 32
  assert rate("fc", "mnist", "rbd").log2 == 1
  assert (rate("cnn", "cifar10", "rbd", d=10).log2, rate("cnn", "cifar10", "rbd", d=10).source) == (
    -1,
    "paper Fig. B.7",
  )
  assert rate("cnn", "cifar10", "rbd", distribution="uniform").log2 == 1  # Fig. B.15
  assert rate("cnn", "cifar10", "rbd", d=2).source == "paper Table 4 at d=250, normal"
  assert rate("resnet8", "cifar10", "fpd").log2 == 3  # Table 4 has no FPD rate there
  assert rate("fc", "mnist", "nes").source == "untuned default"
  monkeypatch.setitem(learning_rates.TUNED, ("fc", "mnist", "sgd", None, None), -4)
  monkeypatch.setitem(learning_rates.TUNED, ("cnn", "cifar10", "rbd", 250, "normal"), 2)
  assert str(rate("fc", "mnist", "sgd")) == "2^-4 (tuned)"
  assert rate("fc", "mnist", "sgd", d=10).log2 == -4  # SGD has no d
  # Fig. B.7's rate at d = 10 (2^-1) moves with ours at d = 250 (2 = Table 4's -3 + 5).
  assert (rate("cnn", "cifar10", "rbd", d=10).log2, rate("cnn", "cifar10", "rbd", d=10).source) == (
    4,
    "paper Fig. B.7's 2^-1 +5 (ours - Table 4's at d=250)",
  )
  assert rate("cnn", "cifar10", "rbd", distribution="uniform").log2 == 1  # B.15 as given
  assert (rate("cnn", "cifar10", "rbd", d=2).log2, rate("cnn", "cifar10", "rbd", d=2).source) == (
    2,
    "tuned at d=250, normal",
  )
  monkeypatch.setitem(learning_rates.TUNED, ("fc", "mnist", "nes", 250, None), -9)
  assert str(rate("fc", "cifar10", "nes")) == "2^-9 (tuned on mnist)"
  assert rate("cnn", "cifar10", "nes").source == "untuned default"
  with pytest.raises(ValueError, match="no learning rate for method='fpd'"):
    rate("resnet32", "cifar10", "fpd")


def test_a_rate_for_more_directions_keeps_eta_times_d():
  tuned = learning_rates.Rate(4, "tuned")
  # 250 / 7,982 = 2^-5.0, 250 / 1,250 = 2^-2.3, 250 / 1,018 = 2^-2.03: nearest powers.
  assert [learning_rates.for_total_d(tuned, d).log2 for d in (7_982, 1_250, 1_018, 250)] == [
    -1,
    2,
    2,
    4,
  ]
  assert str(learning_rates.for_total_d(tuned, 1_250)) == "2^2 (2^4 (tuned) x 250 / 1,250)"


# Each config's example run (get_config), as the paper and configs/learning_rates.py
# give it: model, method, d (Table 3: the compression factor c), the directions'
# distribution, compartments and allocation, the applied learning rate as a log2
# (ours, tuned, where the tuner ran, else the paper's Table 4 or figure), the
# paper's dataset and epochs, and whether the gradient correlation is measured.
EXAMPLE_RUNS = {
  # Table 1's first RBD cell, FC-MNIST, d = 250; tuned 2^4 (Table 4: 2^1).
  "table1.py": dict(model="fc", dataset="mnist", method="rbd", d=250, lr=4, epochs=100),
  # Table 1 at length: FC-MNIST RBD with an SRHT basis at Table 4's 2^1 (no search needed).
  "table1_full.py": dict(model="fc", dataset="mnist", method="rbd", d=250, lr=1, epochs=100),
  # Table 2's Bernoulli column at the pair's normal rate (unit directions).
  "table2.py": dict(
    model="fc", dataset="mnist", method="rbd", d=250, lr=4, epochs=100, distribution="bernoulli"
  ),
  # Table 3's "RBD 10x": per-tensor compartments, c = 10 (d = 7,982), 80 epochs,
  # the d = 250 rate 2^4 times 250 / 7,982 = 2^-1.
  "table3.py": dict(
    model="resnet8",
    dataset="cifar10",
    method="rbd",
    d=10,
    lr=-1,
    epochs=80,
    compartments="leaf",
    allocation="compression",
    correlation=True,
  ),
  # Table 4: the tuner's trials (75/25 split, no early stop) from the base config.
  "table4.py": dict(model="fc", dataset="mnist", method="rbd", d=250, lr=1, epochs=1),
  # Fig. 1: ResNet-8 on CIFAR-10 at d = 500 (d = 250's tuned rate), Table 3's 80 epochs.
  "fig1.py": dict(model="resnet8", dataset="cifar10", method="rbd", d=500, lr=4, epochs=80),
  # Fig. 2: the FC-MNIST RBD run probed at epochs 1, 5, 25.
  "fig2.py": dict(model="fc", dataset="mnist", method="rbd", d=250, lr=4, epochs=25),
  # Fig. 3: CNN-CIFAR10; one epoch under runlocal leaves no switch.
  "fig3.py": dict(model="cnn", dataset="cifar10", method="rbd", d=250, lr=3, epochs=100),
  # Fig. 4: 8 even compartments.
  "fig4.py": dict(
    model="cnn", dataset="cifar10", method="rbd", d=250, lr=3, epochs=100, compartments="8"
  ),
  # Fig. B.7: d = 1000 at the figure's 2^-3, shifted +6 with our d = 250 rate.
  "figb7.py": dict(
    model="cnn", dataset="cifar10", method="rbd", d=1000, lr=3, epochs=100, correlation=True
  ),
  # Fig. B.8 trains nothing: the base config.
  # Fig. 5: 8 workers of RBD at FC-MNIST's one-worker rate.
  "fig5.py": dict(model="fc", dataset="mnist", method="rbd", d=250, lr=4, epochs=100, workers=8),
  "figb8.py": dict(model="fc", dataset="mnist", method="rbd", d=250, lr=1, epochs=1),
  # Fig. B.10: 5 layers x 250 at CNN-MNIST's 2^3 times 250 / 1,250 = 2^0.68, rounded to 2^1.
  "figb10.py": dict(
    model="cnn",
    dataset="mnist",
    method="rbd",
    d=250,
    lr=1,
    epochs=100,
    compartments="module",
    allocation="fixed",
  ),
  # Fig. B.13: d = 2 for 2,000 epochs.
  "figb13.py": dict(model="cnn", dataset="cifar10", method="rbd", d=2, lr=3, epochs=2000),
  # Fig. B.15: normal directions at the pair's rate.
  "figb15.py": dict(model="cnn", dataset="cifar10", method="rbd", d=250, lr=3, epochs=100),
  # Intrinsic dimension: FPD at d = 1024 on FC-MNIST, its d = 250 rate 2^5 x 250 / 1024 = 2^3,
  # for the measurement's default 3 epochs.
  "intrinsic_dimension.py": dict(model="fc", dataset="mnist", method="fpd", d=1024, lr=3, epochs=3),
}

RECORD_KEYS = {
  "epoch",
  "step",
  "method",
  "train_loss",
  "train_accuracy",
  "test_loss",
  "test_accuracy",
  "train_seconds",
  "eval_seconds",
  "images_per_second",
}
CORRELATION_KEYS = {f"correlation_{s}" for s in ("mean", "std", "min", "max", "whole")}


def test_every_config_has_an_expected_example_run():
  assert sorted(EXAMPLE_RUNS) == SWEEP_CONFIGS


@pytest.mark.parametrize("name", SWEEP_CONFIGS)
def test_example_run_is_the_papers(name):
  want = EXAMPLE_RUNS[name]
  config = load(name).get_config()
  assert (config.model, config.data.dataset, config.method, config.phases) == (
    want["model"],
    want["dataset"],
    want["method"],
    "rbd:1,sgd" if name == "fig3.py" else "",
  )
  assert (config.bases.d, config.train.epochs) == (want["d"], want["epochs"])


@pytest.mark.parametrize("name", SWEEP_CONFIGS)
def test_runlocal_trains_a_few_steps(name, tmp_path):
  want = EXAMPLE_RUNS[name]
  config = load(name).get_config("runlocal")
  # runlocal keeps the run and shrinks its data and length (common.RUNLOCAL).
  assert (config.model, config.method, config.phases, config.bases.d) == (
    want["model"],
    want["method"],
    "",
    want["d"],
  )
  assert config.bases.distribution == want.get("distribution", "normal")
  assert config.bases.compartments == want.get("compartments", "none")
  assert config.bases.allocation == want.get("allocation", "proportional")
  assert config.learning_rate[config.method] == 2.0 ** want["lr"]
  assert config.metrics.gradient_correlation == want.get("correlation", False)
  assert (config.data.dataset, config.data.source) == ("mnist", "sample")
  assert (config.train.epochs, config.train.steps_per_epoch, config.train.eval_examples) == (
    1,
    3,
    200,
  )
  tune = name == "table4.py"
  assert config.data.holdout == ("tune" if tune else "validation")
  assert config.train.early_stopping is False

  assert config.workers == want.get("workers", 1)
  # This process has one device: K workers run vmapped on a mesh of it (test_workers.py
  # checks that against K devices).
  mesh = None if config.workers == 1 else jax.make_mesh((1,), (distributed.WORKER_AXIS,))
  result = train.train_and_evaluate(config, str(tmp_path), mesh=mesh)
  (record,) = result["history"]
  assert (record["epoch"], record["step"], record["method"]) == (1, 3, want["method"])
  assert int(result["state"]["step"]) == 3
  held_out = "heldout" if tune else "validation"
  keys = RECORD_KEYS | {f"{held_out}_loss", f"{held_out}_accuracy"}
  if want.get("correlation"):
    keys |= CORRELATION_KEYS
  assert set(record) == keys
  lines = [json.loads(row) for row in (tmp_path / "metrics.jsonl").read_text().splitlines()]
  assert [(row["epoch"], row["step"]) for row in lines] == [(1, 3)]
  images = json.loads((tmp_path / "data.json").read_text())["images"]
  # The 2,000-image sample: 25 % held out to tune, else the 10,000 held out clipped to 400.
  assert images == (
    {"train": 1500, "heldout": 500, "test": 1000}
    if tune
    else {"train": 1600, "validation": 400, "test": 1000}
  )


# =============================================================================================
# Rate labels and plot specs (issue 19): every printed rate says what it was found for, and
# each table's report chooses its charts. Labels only: no test here changes what runs.
# =============================================================================================

# Fixed rates for the label tests, so they do not move when the tuner is rerun.
CNN_CIFAR10_RBD = ("cnn", "cifar10", "rbd", 250, "normal")


def _log2(value):
  log2 = math.log2(value)
  assert log2 == int(log2)
  return int(log2)


def _entries(name, arg=None):
  return {e["name"]: e for e in load(name).sweep(arg)}


def _flat(text):
  return " ".join(text.split())


@pytest.mark.parametrize("name", SWEEP_CONFIGS)
def test_every_printed_rate_is_the_rate_the_row_runs(name):
  for entry in load(name).sweep():
    method = entry.get("method")
    if not entry.get("rate") or entry.get("phases") or method is None:
      continue
    k = _log2(entry[f"learning_rate.{method}"])
    rate = entry["rate"]
    assert rate.startswith(f"2^{k} ") or f"{method.upper()} 2^{k} " in rate, (entry["name"], rate)


@pytest.mark.parametrize("name", SWEEP_CONFIGS)
def test_a_bare_tuned_label_means_tuned_for_exactly_this_run(name):
  """ "2^k (tuned)" only where the tuner chose k for this model, data, method, d and
  distribution, with one basis: never for a rate borrowed from another setting."""
  for entry in load(name).sweep():
    rate = entry.get("rate", "")
    if not re.fullmatch(r"2\^-?\d+ \(tuned\)", rate):
      continue
    method = entry["method"]
    key = learning_rates.key(
      entry["model"],
      entry["data.dataset"],
      method,
      entry.get("bases.d", 250),
      entry.get("bases.distribution", "normal"),
    )
    assert key in learning_rates.TUNED, (name, entry["name"], rate)
    assert entry.get("bases.compartments", "none") == "none", (name, entry["name"])
    assert learning_rates.TUNED[key] == _log2(entry[f"learning_rate.{method}"])


@pytest.mark.parametrize("name", SWEEP_CONFIGS)
def test_a_d_250_rate_run_at_another_d_says_it_is_not_scaled(name):
  for entry in load(name).sweep():
    method, d = entry.get("method"), entry.get("bases.d", 250)
    if method not in ("rbd", "fpd") or d == 250 or "x 250 /" in entry.get("rate", "x 250 /"):
      continue
    if f"searched at d = {d:,}" in entry["rate"]:  # chosen at this d: nothing was carried over
      continue
    key = learning_rates.key(entry["model"], entry["data.dataset"], method, d)
    if key in learning_rates.TUNED or key in learning_rates.PAPER_FIGURES:
      continue
    assert f"not scaled to d = {d:,}" in entry["rate"], (name, entry["name"], entry["rate"])


def test_table2_labels_normals_rate_as_normals_on_the_other_distributions(monkeypatch):
  monkeypatch.setitem(learning_rates.TUNED, ("fc", "mnist", "rbd", 250, "normal"), 4)
  entries = _entries("table2.py")
  normal = entries["FC-MNIST Normal"]
  assert normal["rate"] == "2^4 (tuned)"
  for title, distribution in (("Uniform", "uniform"), ("Bernoulli-0.5", "bernoulli")):
    entry = entries[f"FC-MNIST {title}"]
    borrowed = "normal's rate, tuned for normal directions at d = 250"
    assert entry["rate"] == f"2^4 ({borrowed}; not tuned for {distribution})"
    assert entry["learning_rate.rbd"] == normal["learning_rate.rbd"] == 2.0**4
  for entry in entries.values():  # every pair: no "(tuned)" on a borrowed rate
    if entry["bases.distribution"] != "normal":
      assert "(tuned)" not in entry["rate"] and "normal's rate" in entry["rate"]


def test_table3_fpd_label_says_it_is_rbds_rate_scaled(monkeypatch):
  monkeypatch.setitem(learning_rates.TUNED, ("resnet8", "cifar10", "rbd", 250, "normal"), 4)
  entries = _entries("table3.py")
  fpd, rbd = entries["FPD 10x (d = 7,982)"], entries["RBD 10x (d = 7,982)"]
  scaled = "RBD's rate 2^4 (tuned for RBD at d = 250) x 250 / 7,982"
  assert fpd["rate"] == f"2^-1 ({scaled}; no FPD rate tuned for ResNet-8)"
  assert fpd["learning_rate.fpd"] == rbd["learning_rate.rbd"] == 2.0**-1
  assert rbd["rate"] == "2^-1 (2^4 (tuned) x 250 / 7,982)"


def test_fig1_labels_the_d_250_rates_as_not_scaled_to_500(monkeypatch):
  monkeypatch.setitem(learning_rates.TUNED, ("resnet8", "cifar10", "rbd", 250, "normal"), 4)
  entries = _entries("fig1.py")
  assert entries["RBD"]["rate"] == "2^4 (tuned at d=250, normal; not scaled to d = 500)"
  assert entries["FPD"]["rate"] == (
    "2^4 (our RBD rate (no FPD rate tuned or given); the d = 250 rate, not scaled to d = 500)"
  )
  assert "not scaled" not in entries["SGD"]["rate"] + entries["NES"]["rate"]
  assert entries["RBD"]["bases.d"] == 500


def test_fig2_prints_the_rate_of_the_probed_run(monkeypatch):
  monkeypatch.setitem(learning_rates.TUNED, ("fc", "mnist", "rbd", 250, "normal"), 4)
  (entry,) = load("fig2.py").sweep()
  notes = load("fig2.py").report()["notes"]
  assert entry["rate"] == "2^4 (tuned)"
  assert any("learning rate 2^4 (tuned)" in note for note in notes)


def test_figb13_labels_each_ds_own_rule(monkeypatch):
  monkeypatch.setitem(learning_rates.TUNED, CNN_CIFAR10_RBD, 3)
  entries = _entries("figb13.py")
  assert entries["RBD d = 2"]["rate"] == "2^3 (tuned at d=250, normal; not scaled to d = 2)"
  assert entries["RBD d = 50"]["rate"] == "2^3 (tuned at d=250, normal; not scaled to d = 50)"
  # d = 10 follows Fig. B.7's rate, shifted like ours at d = 250 (3 - Table 4's -3 = +6).
  assert entries["RBD d = 10"]["rate"] == (
    "2^5 (paper Fig. B.7's 2^-1 +6 (ours - Table 4's at d=250))"
  )
  assert [_log2(entries[f"RBD d = {d}"]["learning_rate.rbd"]) for d in (2, 10, 50)] == [3, 5, 3]


def test_figb15_labels_show_that_only_normals_rate_is_shifted(monkeypatch):
  monkeypatch.setitem(learning_rates.TUNED, CNN_CIFAR10_RBD, 3)
  entries = _entries("figb15.py")
  assert entries["normal"]["rate"] == "2^3 (tuned; the paper's 2^-3 shifted by +6)"
  assert entries["uniform"]["rate"] == (
    "2^1 (paper Fig. B.15; as printed, not shifted by normal's +6)"
  )
  assert entries["bernoulli"]["rate"] == (
    "2^-1 (paper Fig. B.15; as printed, not shifted by normal's +6)"
  )
  # A pair without Fig. B.15's rates: all at normal's, labelled as normal's.
  other = _entries("figb15.py", "pair=fc-mnist")
  assert "normal's rate" in other["uniform"]["rate"]
  assert other["uniform"]["learning_rate.rbd"] == other["normal"]["learning_rate.rbd"]


def test_fig4_labels_rates_found_with_one_basis():
  entries = _entries("fig4.py")
  assert "K = " not in entries["RBD K = 1"]["rate"]
  assert entries["RBD K = 8"]["rate"].endswith("; found for K = 1, not retuned for K = 8)")
  assert entries["RBD K = 8"]["learning_rate.rbd"] == entries["RBD K = 1"]["learning_rate.rbd"]


def test_rate_labels_never_change_the_rate():
  rate = learning_rates.Rate(4, "tuned")
  assert learning_rates.noted(rate, "a note") == learning_rates.Rate(4, "tuned; a note")
  for model, dataset in common.PAIRS:
    normal = learning_rates.rate(model, dataset, "rbd")
    for distribution in ("uniform", "bernoulli"):
      assert learning_rates.for_distribution(model, dataset, distribution).log2 == normal.log2
    assert learning_rates.for_distribution(model, dataset, "normal") == normal
    for d in (2, 500, 10_000):
      assert (
        learning_rates.rate_at(model, dataset, "rbd", d=d).log2
        == learning_rates.rate(model, dataset, "rbd", d=d).log2
      )
  scaled = learning_rates.for_total_d(learning_rates.rate("resnet8", "cifar10", "rbd"), 3_328)
  assert learning_rates.scaled_rbd_rate("resnet8", "cifar10", "rbd", 3_328) == scaled
  assert learning_rates.scaled_rbd_rate("resnet8", "cifar10", "fpd", 3_328).log2 == scaled.log2


# Tables and the figures the paper shows as values per run get bar charts; curves are drawn
# (experiments/plots.draw) only when the runs have two or more epochs.
BAR_CHARTS = (
  "table1.py",
  "table2.py",
  "table3.py",
  "fig1.py",
  "fig3.py",
  "figb10.py",
  "figb13.py",
  "figb15.py",
)


@pytest.mark.parametrize("name", BAR_CHARTS)
def test_tables_chart_their_rows_as_bars(name):
  specs = load(name).report()["plots"]
  kinds = [(spec["kind"], spec.get("metric")) for spec in specs]
  assert kinds[0] == ("bars", "validation_accuracy")
  # A per-epoch plot of a metric always has its bars, so one-epoch runs still have a chart.
  assert ("curves", "validation_accuracy") in kinds


def test_table3_charts_the_correlation_too():
  kinds = [(s["kind"], s.get("metric")) for s in load("table3.py").report()["plots"]]
  assert ("bars", "correlation_mean") in kinds


def test_figb7_plots_the_whole_vector_correlation_against_its_formula():
  (spec,) = load("figb7.py").report()["plots"]
  assert spec["kind"] == "against"
  assert spec["metrics"] == ["validation_accuracy", "correlation_mean", "correlation_whole"]
  # results/README.md, claim 5: D = 122,570 for the CNN on CIFAR-10.
  assert spec["geometry"] == {"metric": "correlation_whole", "D": 122_570}


def _printed_rates(results_file: str, marker: str) -> dict:
  """The rates a tuner's results file prints for configs/learning_rates.py after ``marker``."""
  text = (ROOT / "results" / results_file).read_text()
  block = text.split(marker)[1]
  block = block.split("```python")[1].split("```")[0]
  printed = {}
  for line in block.strip().splitlines():
    key, log2 = line.split("#")[0].strip().rstrip(",").rsplit(":", 1)
    printed[eval(key)] = int(log2)  # noqa: S307 -- a tuple literal from our own file
  return printed


def test_tuned_rates_are_the_ones_results_table4_coarse_prints():
  """TUNED is copied from results/table4_coarse.md's "For configs/learning_rates.py
  (TUNED)" lines: a rerun of the search that changes a rate must change the
  dict (and so rerun the rows that use it), never leave the two apart."""
  printed = _printed_rates("table4_coarse.md", "For configs/learning_rates.py (TUNED):")
  assert printed == learning_rates.TUNED


def test_rates_at_length_are_the_ones_results_table4_prints():
  """TUNED_AT_LENGTH is copied from results/table4.md (the halving search,
  Table 4's file): Table 1's searched rows run at exactly the rates it chose."""
  printed = _printed_rates("table4.md", "For configs/learning_rates.py (TUNED_AT_LENGTH")
  assert printed == learning_rates.TUNED_AT_LENGTH
