"""The trainer end to end on tiny configs (the shipped MNIST sample)."""

import json
import os
import pathlib
import pickle
import re
import subprocess
import sys

import jax
import numpy as np
import pytest

from random_bases import config_lib, train
from random_bases import data as data_lib

ROOT = pathlib.Path(__file__).resolve().parents[1]


def tiny_config(method="rbd", **overrides):
  config = config_lib.base_config()
  config.method = method
  config.data.source = "sample"
  config.data.holdout_size = 400
  config.bases.d = 50
  config.learning_rate.rbd = 16.0
  config.learning_rate.fpd = 16.0
  config.learning_rate.sgd = 0.1
  config.learning_rate.nes = 2.0**-10
  config.train.epochs = 1
  config.train.steps_per_epoch = 30
  config.train.log_every_steps = 15
  config.train.eval_examples = 300
  config_lib.set_fields(config, overrides)
  return config


def initial_test_loss(config):
  data = data_lib.load_dataset("mnist", source="sample", holdout_size=400)
  trainer = train.Trainer(config, data)
  return trainer.evaluate(trainer.initial_state())["test_loss"]


@pytest.mark.parametrize("method", ["sgd", "rbd", "fpd", "nes"])
def test_each_method_lowers_the_loss(method, tmp_path):
  config = tiny_config(method, **{"train.checkpoint": False, "train.steps_per_epoch": 50})
  if method == "nes":
    config.bases.d = 40  # loss evaluations per step
  result = train.train_and_evaluate(config, str(tmp_path))
  before = initial_test_loss(config)
  after = result["history"][-1]["test_loss"]
  assert after < before - 0.05, (method, before, after)


def test_resume_equals_uninterrupted(tmp_path):
  whole = train.train_and_evaluate(tiny_config(**{"train.epochs": 2}), str(tmp_path / "a"))
  first = train.train_and_evaluate(tiny_config(**{"train.epochs": 1}), str(tmp_path / "b"))
  assert len(first["history"]) == 1
  resumed = train.train_and_evaluate(tiny_config(**{"train.epochs": 2}), str(tmp_path / "b"))
  assert [r["epoch"] for r in resumed["history"]] == [2]  # only the missing epoch ran
  for a, b in zip(jax.tree.leaves(whole["state"]), jax.tree.leaves(resumed["state"])):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  lines = (tmp_path / "b" / "metrics.jsonl").read_text().splitlines()
  assert [json.loads(row)["epoch"] for row in lines] == [1, 2]


# One tiny fixed run, recorded when written (jax 0.10.2, CPU). A change here
# means the trajectory changed: say why in the commit.
GOLDEN = {
  "train_loss": 2.3775,
  "train_accuracy": 0.1125,
  "test_loss": 2.2703,
  "test_accuracy": 0.1033,
}


def test_golden_metrics_of_a_tiny_run(tmp_path):
  record = train.train_and_evaluate(
    tiny_config(**{"train.checkpoint": False, "bases.generator": "threefry"}), str(tmp_path)
  )["history"][0]
  for key, value in GOLDEN.items():
    assert record[key] == pytest.approx(value, abs=2e-3), key


def test_outputs_written_to_workdir(tmp_path):
  train.train_and_evaluate(tiny_config(**{"train.epochs": 2}), str(tmp_path))
  config = json.loads((tmp_path / "config.json").read_text())
  assert config["bases"]["d"] == 50
  data_record = json.loads((tmp_path / "data.json").read_text())
  assert (data_record["dataset"], data_record["sample"], data_record["images"]) == (
    "mnist",
    True,
    {"train": 1600, "validation": 400, "test": 1000},
  )
  lines = [json.loads(row) for row in (tmp_path / "metrics.jsonl").read_text().splitlines()]
  assert [row["epoch"] for row in lines] == [1, 2]
  assert {"validation_accuracy", "test_accuracy", "train_loss", "images_per_second"} <= set(
    lines[0]
  )
  assert any(f.startswith("events.out.tfevents") for f in os.listdir(tmp_path / "tensorboard"))
  assert sorted(os.listdir(tmp_path / "checkpoints")) == ["1", "2"]


def test_hybrid_phases_switch_methods(tmp_path):
  config = tiny_config(**{"train.epochs": 2, "phases": "rbd:1,sgd", "train.checkpoint": False})
  history = train.train_and_evaluate(config, str(tmp_path))["history"]
  assert [r["method"] for r in history] == ["rbd", "sgd"]
  assert history[1]["test_loss"] < history[0]["test_loss"]


def test_gradient_correlation_metric(tmp_path):
  sgd = train.train_and_evaluate(
    tiny_config("sgd", **{"metrics.gradient_correlation": True, "train.checkpoint": False}),
    str(tmp_path / "sgd"),
  )["history"][0]
  # SGD's update is the gradient itself.
  assert sgd["correlation_whole"] == pytest.approx(1.0, abs=1e-5)
  assert sgd["correlation_min"] == pytest.approx(1.0, abs=1e-4)
  rbd = train.train_and_evaluate(
    tiny_config("rbd", **{"metrics.gradient_correlation": True, "train.checkpoint": False}),
    str(tmp_path / "rbd"),
  )["history"][0]
  # A d-dimensional random projection keeps about sqrt(d / D) of the direction.
  assert 0.5 * np.sqrt(50 / 101_770) < rbd["correlation_whole"] < 3 * np.sqrt(50 / 101_770)
  assert -1 <= rbd["correlation_min"] <= rbd["correlation_mean"] <= rbd["correlation_max"] <= 1
  assert rbd["correlation_std"] > 0
  # NES needs no backward pass for its update; the metric computes one.
  nes = train.train_and_evaluate(
    tiny_config(
      "nes",
      **{
        "metrics.gradient_correlation": True,
        "train.checkpoint": False,
        "bases.d": 20,
        "train.steps_per_epoch": 4,
        "train.log_every_steps": 4,
      },
    ),
    str(tmp_path / "nes"),
  )["history"][0]
  assert -1 <= nes["correlation_min"] <= nes["correlation_max"] <= 1
  assert -1 <= nes["correlation_whole"] <= 1


def test_forward_mode_trains_like_reverse_mode(tmp_path):
  common = {
    "train.checkpoint": False,
    "train.steps_per_epoch": 4,
    "train.log_every_steps": 4,
    "bases.d": 8,
  }
  reverse = train.train_and_evaluate(tiny_config(**common), str(tmp_path / "r"))
  forward = train.train_and_evaluate(
    tiny_config(**common, **{"bases.coordinates": "forward"}), str(tmp_path / "f")
  )
  for a, b in zip(
    jax.tree.leaves(reverse["state"]["params"]), jax.tree.leaves(forward["state"]["params"])
  ):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-6)


def write_cifar(directory: pathlib.Path, train_count=96, test_count=40):
  rng = np.random.default_rng(0)
  directory.mkdir(parents=True)
  for name, count in [(f"data_batch_{i}", train_count // 5) for i in range(1, 6)] + [
    ("test_batch", test_count)
  ]:
    batch = {
      b"data": rng.integers(0, 256, (count, 3072), dtype=np.uint8),
      b"labels": rng.integers(0, 10, count).tolist(),
    }
    with open(directory / name, "wb") as f:
      pickle.dump(batch, f, protocol=2)


def test_resnet8_on_cifar_files_with_batch_norm(tmp_path):
  write_cifar(tmp_path / "cifar")
  config = tiny_config(
    "rbd",
    **{
      "model": "resnet8",
      "data.dataset": "cifar10",
      "data.source": "files",
      "data.dir": str(tmp_path / "cifar"),
      "data.holdout_size": 16,
      "train.steps_per_epoch": 2,
      "train.log_every_steps": 2,
      "bases.compartments": "leaf",
      "bases.allocation": "compression",
      "bases.d": 50,
      "train.checkpoint": False,
    },
  )
  result = train.train_and_evaluate(config, str(tmp_path / "run"))
  record = result["history"][0]
  assert {"validation_accuracy", "test_accuracy"} <= set(record)
  stats = result["state"]["batch_stats"]["stem_bn"]["mean"]
  assert np.abs(np.asarray(stats)).max() > 0  # BN statistics moved: state, not bases


def test_a_diverging_run_stops_with_training_diverged(tmp_path):
  # Before: the loss went NaN, the run trained to the end, exited 0 and wrote bare NaN.
  config = tiny_config("sgd", **{"learning_rate.sgd": 1e6, "train.epochs": 3})
  with pytest.raises(
    train.TrainingDiverged, match=r"epoch 1, steps 1-15: the train loss is (nan|inf)"
  ):
    train.train_and_evaluate(config, str(tmp_path))
  assert not (tmp_path / "metrics.jsonl").exists()  # no epoch was done
  assert os.listdir(tmp_path / "checkpoints") == []


@pytest.mark.parametrize(
  "epochs_done,record,expected",
  [
    (1, {"validation_loss": 1000.5, "validation_accuracy": 0.5}, "validation loss 1000.5 > 1000.0"),
    (1, {"validation_loss": 999.0, "validation_accuracy": 0.1}, None),
    (
      4,
      {"validation_loss": 2.0, "validation_accuracy": 0.15},
      "validation accuracy 0.150 <= 0.15 after epoch 4",
    ),
    (4, {"validation_loss": 2.0, "validation_accuracy": 0.16}, None),
    (
      4,
      {"heldout_loss": 2.0, "heldout_accuracy": 0.1, "test_loss": 1.0, "test_accuracy": 0.9},
      "heldout accuracy 0.100 <= 0.15 after epoch 4",
    ),
  ],
)
def test_early_stopping_rule(epochs_done, record, expected):
  config = tiny_config(**{"train.early_stopping": True})
  assert train.should_stop(config, epochs_done, record) == expected
  config.train.early_stopping = False
  assert train.should_stop(config, epochs_done, record) is None


def test_an_early_stopped_run_stays_stopped_when_rerun(tmp_path):
  config = tiny_config(
    **{
      "train.early_stopping": True,
      "train.epochs": 2,
      "train.steps_per_epoch": 5,
      "train.log_every_steps": 5,
    }
  )
  first = train.train_and_evaluate(config, str(tmp_path))
  assert first["stopped"] is None and len(first["history"]) == 2
  # Make epoch 2's line one the rule stops at, then extend the run: an
  # uninterrupted run would have stopped after epoch 2.
  lines = [json.loads(row) for row in (tmp_path / "metrics.jsonl").read_text().splitlines()]
  lines[-1]["validation_loss"] = 5000.0
  (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(row) + "\n" for row in lines))
  config.train.epochs = 3
  rerun = train.train_and_evaluate(config, str(tmp_path))
  assert rerun["history"] == [] and "validation loss 5000.0 > 1000.0" in rerun["stopped"]


@pytest.mark.parametrize(
  "overrides,match",
  [
    ({"model": "vgg"}, r"model='vgg'.*'fc', 'cnn', 'resnet8', 'resnet32'"),
    ({"method": "adam"}, r"method='adam'.*'sgd', 'rbd', 'fpd', 'nes'"),
    ({"data.dataset": "svhn"}, r"data.dataset='svhn'.*'mnist'"),
    ({"bases.d": 0}, r"bases.d=0 must be a positive integer"),
    ({"bases.distribution": "cauchy"}, r"bases.distribution='cauchy'"),
    ({"bases.compartments": "layers"}, r"bases.compartments='layers'"),
    ({"phases": "rbd:1,sgd:5"}, r"cover 6 epochs but train.epochs=1"),
    ({"learning_rate.rbd": -1.0}, r"learning_rate.rbd=-1.0 must be > 0"),
    ({"learning_rate.rbd": float("inf")}, r"learning_rate.rbd=inf must be a finite number"),
    ({"bases.compartments": "re:conv;.*"}, r"bases.compartments='re:conv;.\*'"),
    ({"bases.d": 200_000}, r"do not fit model 'fc' \(101770 parameters"),
    (
      {"data.source": "files", "data.holdout_size": 60_000},
      r"data.holdout_size=60000 must be smaller than the 60000 training images",
    ),
    ({"train.batch_size": 5000}, r"train.batch_size=5000 exceeds the 1600 training images"),
  ],
)
def test_bad_config_fails_before_loading_or_writing(overrides, match, tmp_path, monkeypatch):
  def no_loading(*args, **kwargs):
    raise AssertionError("data was loaded before the config was validated")

  monkeypatch.setattr(data_lib, "load_dataset", no_loading)
  with pytest.raises(ValueError, match=match):
    train.train_and_evaluate(tiny_config(**overrides), str(tmp_path / "run"))
  assert not (tmp_path / "run").exists()


def run_main(*args, cwd=ROOT):
  return subprocess.run(
    [sys.executable, "-m", "random_bases.main", *args],
    cwd=cwd,
    capture_output=True,
    text=True,
    env=dict(os.environ, JAX_PLATFORMS="cpu"),
  )


def test_command_line_runs_resumes_and_refuses_another_config(tmp_path):
  out = run_main(
    "--config=configs/default.py:runlocal",
    f"--workdir={tmp_path}",
    "--config.train.epochs=1",
    "--config.bases.d=20",
  )
  assert out.returncode == 0, out.stderr[-3000:]
  assert "img/s" in out.stderr and "ETA" in out.stderr and "SAMPLE" in out.stderr
  record = json.loads((tmp_path / "metrics.jsonl").read_text())
  # The end of the run says where the results are and what they are.
  assert f"Results in {tmp_path}: metrics.jsonl, tensorboard/, checkpoints/" in out.stderr
  assert (
    f"validation accuracy {record['validation_accuracy']:.4f}, test accuracy "
    f"{record['test_accuracy']:.4f}"
  ) in out.stderr
  config_json = (tmp_path / "config.json").read_text()
  assert json.loads(config_json)["bases"]["d"] == 20
  # Issue 7.1: a different config stops before anything is written.
  out = run_main(
    "--config=configs/default.py:runlocal",
    f"--workdir={tmp_path}",
    "--config.train.epochs=2",
    "--config.bases.d=10",
  )
  assert out.returncode == 1
  assert "WorkdirMismatch: workdir" in out.stderr and "  bases.d: 20 -> 10\n" in out.stderr
  assert "Traceback" not in out.stderr
  assert (tmp_path / "config.json").read_text() == config_json
  assert len((tmp_path / "metrics.jsonl").read_text().splitlines()) == 1


def test_command_line_rejects_unknown_override_key_in_one_line(tmp_path):
  # Before: 55 lines of traceback ending in AttributeError "'dd'".
  out = run_main(
    "--config=configs/default.py", f"--workdir={tmp_path / 'run'}", "--config.bases.dd=3"
  )
  assert out.returncode == 1
  fields = ", ".join(sorted(config_lib.base_config().bases.keys()))
  assert out.stderr.strip().splitlines() == [
    "FATAL Flags parsing error: --config.bases.dd=3: config field 'bases.dd' does not "
    f"exist; fields of bases: {fields}"
  ]
  assert not (tmp_path / "run").exists()


def test_command_line_rejects_non_finite_values_before_writing(tmp_path):
  out = run_main(
    "--config=configs/default.py", f"--workdir={tmp_path / 'run'}", "--config.learning_rate.rbd=inf"
  )
  assert out.returncode == 1
  assert out.stderr.strip().splitlines()[-1] == (
    "Invalid config: learning_rate.rbd=inf must be a finite number"
  )
  assert not (tmp_path / "run").exists()


def test_command_line_exits_1_when_training_diverges(tmp_path):
  out = run_main(
    "--config=configs/default.py:runlocal",
    f"--workdir={tmp_path}",
    "--config.method=sgd",
    "--config.learning_rate.sgd=1e6",
  )
  assert out.returncode == 1
  assert (
    out.stderr.strip()
    .splitlines()[-1]
    .startswith("TrainingDiverged: epoch 1, steps 1-10: the train loss is")
  )
  assert "Traceback" not in out.stderr


def test_command_line_describes_fields_and_config_files(tmp_path):
  out = run_main("--describe")
  assert out.returncode == 0, out.stderr[-3000:]
  for field in config_lib.FIELDS:
    assert any(
      line.startswith(field.name + " ") and field.meaning in line
      for line in out.stdout.splitlines()
    ), field.name
  files = [
    line.split()[0] for line in out.stdout.split("Config files in configs")[1].splitlines()[1:]
  ]
  assert files == sorted(
    p.name for p in (ROOT / "configs").glob("*.py") if "\ndef get_config(" in p.read_text()
  )
  assert re.search(
    r"\n  default.py +FC on MNIST trained by RBD with d = 250: the main job, "
    r"a short run.\n",
    out.stdout,
  )
  # The config files are found next to --config, wherever the command runs.
  out = run_main(f"--config={ROOT / 'configs' / 'default.py'}:runlocal", "--describe", cwd=tmp_path)
  assert out.returncode == 0, out.stderr[-3000:]
  assert "train.epochs                  2 (default 100)" in out.stdout
  assert re.search(r"\n  default.py +FC on MNIST", out.stdout)
