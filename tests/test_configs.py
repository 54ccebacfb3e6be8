"""The table and figure configs: every sweep entry builds, runlocal trains, rates resolve."""

import os
import pathlib

import pytest

from configs import common, learning_rates
from experiments import reproduce
from random_bases import config_lib, train
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
    "figb10.py",
    "figb13.py",
    "figb15.py",
    "figb7.py",
    "figb8.py",
    "table1.py",
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


@pytest.mark.parametrize("name", SWEEP_CONFIGS)
def test_runlocal_trains_a_few_steps(name, tmp_path):
  config = load(name).get_config("runlocal")
  result = train.train_and_evaluate(config, str(tmp_path))
  (record,) = result["history"]
  assert (record["epoch"], record["step"]) == (1, common.RUNLOCAL["train.steps_per_epoch"])
  assert record["method"] == config_lib.parse_phases(config)[0][0]
  assert os.path.exists(tmp_path / "metrics.jsonl")
