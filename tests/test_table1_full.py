"""configs/table1_full.py (issue 20): Table 1's FC rows at the paper's length, against PAPER.md."""

import json
import os
import pathlib

import pytest

from configs import common, learning_rates
from experiments import reproduce, runs

ROOT = pathlib.Path(__file__).resolve().parents[1]

# PAPER.md Table 4 (log2; SGD per example, applied x 32 = +5) and Table 1 (validation %).
TABLE4 = {
  ("fc", "mnist"): {"rbd": 1, "fpd": -1, "sgd": -8},
  ("fc", "fashion_mnist"): {"rbd": -1, "fpd": -1, "sgd": -7},
  ("fc", "cifar10"): {"rbd": -5, "fpd": -5, "sgd": -12},
  ("cnn", "mnist"): {"rbd": -1, "fpd": -3, "sgd": -10},
  ("cnn", "fashion_mnist"): {"rbd": -3, "fpd": -1, "sgd": -9},
  ("cnn", "cifar10"): {"rbd": -3, "fpd": -1, "sgd": -11},
}
TABLE1_FC = {
  ("fc", "mnist"): {"nes": 22.5, "fpd": 80, "rbd": 93.893, "sgd": 98.27},
  ("fc", "fashion_mnist"): {"nes": 45, "fpd": 77.3, "rbd": 85.65, "sgd": 87.32},
  ("fc", "cifar10"): {"nes": 17.8, "fpd": 21.4, "rbd": 43.77, "sgd": 52.09},
}


def load():
  return reproduce.load_config_module(str(ROOT / "configs" / "table1_full.py"))


def applied(model, dataset, method):
  return TABLE4[model, dataset][method] + (5 if method == "sgd" else 0)


def entries_by_name(arg=None):
  return {e["name"]: e for e in load().sweep(arg)}


def test_rows_follow_the_papers_settings(monkeypatch, tmp_path):
  monkeypatch.setattr(learning_rates, "TUNED_AT_LENGTH", {})
  entries = entries_by_name()
  data = runs.DataLocations({}, str(tmp_path))
  for e in entries.values():  # the runs' full configs: batch, holdout, evaluation
    config = runs.make_run(load(), None, e, 0, data=data, workdir_root=str(tmp_path)).config
    assert (config.train.batch_size, config.train.steps_per_epoch) == (32, -1)
    assert (config.data.holdout, config.data.holdout_size, config.train.eval_examples) == (
      "validation",
      10_000,
      -1,
    )
  fc = [e for e in entries.values() if e["model"] == "fc" and e["method"] != "nes"]
  # Paper rate, and without augmentation (no searched rate yet); the two dense anchors;
  # FC-MNIST FPD with one part of the augmentation each.
  assert len(fc) == 3 * 3 * 2 + 2 + 2
  for e in entries.values():
    method, pair = e["method"], (e["model"], e["data.dataset"])
    assert e["bases.d"] == 250
    assert e["data.augment"] == ("no aug" not in e["name"])
    parts = {"crop only": "crop", "brightness only": "brightness"}
    assert e["data.augment_parts"] == next((v for k, v in parts.items() if k in e["name"]), "all")
    if method in ("rbd", "fpd"):
      assert e["bases.structure"] == ("dense" if "dense anchor" in e["name"] else "srht")
    else:
      assert e["bases.structure"] == "dense"  # SGD and NES have no structured basis
    if method != "nes":
      assert e[f"learning_rate.{method}"] == 2.0 ** applied(*pair, method)
      assert e["rate"].startswith(f"2^{applied(*pair, method)} (paper Table 4")
    if e["model"] == "fc":
      assert e["paper"]["validation_accuracy"][0] == TABLE1_FC[pair][method]
  for name in ("FC-MNIST RBD paper rate", "FC-CIFAR10 SGD paper rate, no aug"):
    assert (entries[name]["train.epochs"], entries[name]["seeds"]) == (100, 1)
  for part in ("crop", "brightness"):
    ablation = entries[f"FC-MNIST FPD paper rate, {part} only"]
    assert (ablation["train.epochs"], ablation["seeds"], ablation["method"]) == (100, 1, "fpd")
  assert entries["FC-FMNIST NES 1 epoch"]["train.epochs"] == 1
  assert entries["FC-MNIST RBD dense anchor, 20 epochs"]["train.epochs"] == 20
  cnn = [e for e in entries.values() if e["model"] == "cnn"]
  assert sorted((e["data.dataset"], e["method"]) for e in cnn) == sorted(
    (d, m) for d in ("mnist", "fashion_mnist", "cifar10") for m in ("sgd", "rbd", "fpd")
  )
  assert {(e["train.epochs"], e["seeds"]) for e in cnn} == {(10, 1)}
  lengths = entries_by_name("cnn_epochs=12,nes_epochs=3,anchor_epochs=7,epochs=50")
  assert lengths["CNN-CIFAR10 RBD paper rate, 12 epochs"]["train.epochs"] == 12
  assert lengths["FC-MNIST NES 3 epochs"]["train.epochs"] == 3
  assert lengths["FC-MNIST FPD dense anchor, 7 epochs"]["train.epochs"] == 7
  assert lengths["FC-MNIST SGD paper rate"]["train.epochs"] == 50


def test_without_searched_rates_the_rows_are_left_out_visibly_or_refused(monkeypatch):
  monkeypatch.setattr(learning_rates, "TUNED_AT_LENGTH", {})
  module = load()
  assert not any("searched" in name for name in entries_by_name())
  (note,) = [n for n in module.report()["notes"] if n.startswith("NOT RUN")]
  assert "FC-MNIST RBD searched" in note and "FC-CIFAR10 SGD searched" in note
  assert "search=halving" in note
  with pytest.raises(ValueError, match="strict: no rate searched at length for fc-mnist fpd"):
    module.sweep("strict")


def test_searched_rates_run_at_three_seeds_and_replace_an_equal_paper_row(monkeypatch):
  tuned = {
    learning_rates.length_key(m, d, x, structure="srht"): applied(m, d, x) - 2
    for m, d in (("fc", "mnist"), ("fc", "fashion_mnist"), ("fc", "cifar10"))
    for x in ("sgd", "rbd", "fpd")
  }
  tuned["fc", "mnist", "rbd", 250, "srht"] = 1  # = Table 4's
  monkeypatch.setattr(learning_rates, "TUNED_AT_LENGTH", tuned)
  entries = entries_by_name()
  sgd = entries["FC-FMNIST SGD searched"]
  assert (sgd["learning_rate.sgd"], sgd["seeds"], sgd["train.epochs"]) == (2.0**-4, 3, 100)
  assert sgd["rate"] == "2^-4 (searched at length, successive halving)"
  assert "FC-FMNIST SGD paper rate" in entries
  same = entries["FC-MNIST RBD searched"]
  assert same["rate"] == "2^1 (searched at length, successive halving; = paper Table 4)"
  assert "FC-MNIST RBD paper rate" not in entries
  assert not any(n.startswith("NOT RUN") for n in load().report()["notes"])


def test_entries_run_at_their_own_number_of_seeds(monkeypatch, tmp_path):
  assert common.entry_seeds({"name": "a"}, [0, 1, 2]) == [0, 1, 2]
  assert common.entry_seeds({"name": "a", "seeds": 1}, [4, 5]) == [4]
  with pytest.raises(ValueError, match="seeds=0"):
    common.entry_seeds({"name": "a", "seeds": 0}, [0])
  monkeypatch.setattr(learning_rates, "TUNED_AT_LENGTH", {("fc", "mnist", "rbd", 250, "srht"): 3})
  calls = []

  def fake(config, workdir):
    calls.append((config.bases.structure, config.data.augment, config.seed))
    os.makedirs(workdir, exist_ok=True)
    row = {"epoch": 1, "step": 3, "validation_accuracy": 0.5, "test_accuracy": 0.5}
    with open(os.path.join(workdir, "metrics.jsonl"), "w") as f:
      f.write(json.dumps(row) + "\n")
    return {"state": None, "history": [], "stopped": None}

  # The results file is not what this tests: leave out its plots (the slow part).
  monkeypatch.setattr(reproduce, "write_results", lambda *args: [])
  reproduce.reproduce(
    f"{ROOT / 'configs' / 'table1_full.py'}:runlocal",
    seeds=[0, 1, 2],
    data=runs.DataLocations({}, None),
    workdir_root=str(tmp_path / "runs"),
    results_dir=str(tmp_path / "results"),
    only="^FC-MNIST RBD",
    allow_dirty=True,
    train_fn=fake,
  )
  assert sorted(calls) == sorted(
    [("srht", True, s) for s in (0, 1, 2)]  # searched
    + [("srht", True, 0), ("srht", False, 0), ("dense", True, 0)]  # paper, no aug, anchor
  )
