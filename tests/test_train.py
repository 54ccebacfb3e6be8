"""The trainer end to end on tiny configs (the shipped MNIST sample)."""

import json
import os
import pathlib
import pickle
import subprocess
import sys

import jax
import numpy as np
import pytest

from random_bases import config_lib, input_pipeline, train

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
  for dotted, value in overrides.items():
    node = config
    *parents, leaf = dotted.split(".")
    for p in parents:
      node = node[p]
    node[leaf] = value
  return config


def initial_test_loss(config):
  data = input_pipeline.load_dataset("mnist", source="sample", holdout_size=400)
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
  assert [json.loads(l)["epoch"] for l in lines] == [1, 2]


# One tiny fixed run, recorded when written (jax 0.10.2, CPU). A change here
# means the trajectory changed: say why in the commit.
GOLDEN = {"train_loss": 2.3775, "train_accuracy": 0.1125,
          "test_loss": 2.2703, "test_accuracy": 0.1033}


def test_golden_metrics_of_a_tiny_run(tmp_path):
  record = train.train_and_evaluate(
      tiny_config(**{"train.checkpoint": False, "bases.generator": "threefry"}),
      str(tmp_path))["history"][0]
  for key, value in GOLDEN.items():
    assert record[key] == pytest.approx(value, abs=2e-3), key


def test_outputs_written_to_workdir(tmp_path):
  train.train_and_evaluate(tiny_config(**{"train.epochs": 2}), str(tmp_path))
  config = json.loads((tmp_path / "config.json").read_text())
  assert config["bases"]["d"] == 50
  lines = [json.loads(l) for l in (tmp_path / "metrics.jsonl").read_text().splitlines()]
  assert [l["epoch"] for l in lines] == [1, 2]
  assert {"validation_accuracy", "test_accuracy", "train_loss", "images_per_second"} <= set(lines[0])
  assert any(f.startswith("events.out.tfevents") for f in os.listdir(tmp_path / "tensorboard"))
  assert sorted(os.listdir(tmp_path / "checkpoints")) == ["1", "2"]


def test_hybrid_phases_switch_methods(tmp_path):
  config = tiny_config(**{"train.epochs": 2, "phases": "rbd:1,sgd",
                          "train.checkpoint": False})
  history = train.train_and_evaluate(config, str(tmp_path))["history"]
  assert [r["method"] for r in history] == ["rbd", "sgd"]
  assert history[1]["test_loss"] < history[0]["test_loss"]


def test_gradient_correlation_metric(tmp_path):
  sgd = train.train_and_evaluate(
      tiny_config("sgd", **{"metrics.gradient_correlation": True, "train.checkpoint": False}),
      str(tmp_path / "sgd"))["history"][0]
  # SGD's update is the gradient itself.
  assert sgd["correlation_whole"] == pytest.approx(1.0, abs=1e-5)
  assert sgd["correlation_min"] == pytest.approx(1.0, abs=1e-4)
  rbd = train.train_and_evaluate(
      tiny_config("rbd", **{"metrics.gradient_correlation": True, "train.checkpoint": False}),
      str(tmp_path / "rbd"))["history"][0]
  # A d-dimensional random projection keeps about sqrt(d / D) of the direction.
  assert 0.5 * np.sqrt(50 / 101_770) < rbd["correlation_whole"] < 3 * np.sqrt(50 / 101_770)
  assert -1 <= rbd["correlation_min"] <= rbd["correlation_mean"] <= rbd["correlation_max"] <= 1
  assert rbd["correlation_std"] > 0
  # NES needs no backward pass for its update; the metric computes one.
  nes = train.train_and_evaluate(
      tiny_config("nes", **{"metrics.gradient_correlation": True, "train.checkpoint": False,
                            "bases.d": 20, "train.steps_per_epoch": 4,
                            "train.log_every_steps": 4}),
      str(tmp_path / "nes"))["history"][0]
  assert -1 <= nes["correlation_min"] <= nes["correlation_max"] <= 1
  assert -1 <= nes["correlation_whole"] <= 1


def test_forward_mode_trains_like_reverse_mode(tmp_path):
  common = {"train.checkpoint": False, "train.steps_per_epoch": 4,
            "train.log_every_steps": 4, "bases.d": 8}
  reverse = train.train_and_evaluate(tiny_config(**common), str(tmp_path / "r"))
  forward = train.train_and_evaluate(
      tiny_config(**common, **{"bases.coordinates": "forward"}), str(tmp_path / "f"))
  for a, b in zip(jax.tree.leaves(reverse["state"]["params"]),
                  jax.tree.leaves(forward["state"]["params"])):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-6)


def write_cifar(directory: pathlib.Path, train_count=96, test_count=40):
  rng = np.random.default_rng(0)
  directory.mkdir(parents=True)
  for name, count in [(f"data_batch_{i}", train_count // 5) for i in range(1, 6)] + [
      ("test_batch", test_count)]:
    batch = {b"data": rng.integers(0, 256, (count, 3072), dtype=np.uint8),
             b"labels": rng.integers(0, 10, count).tolist()}
    with open(directory / name, "wb") as f:
      pickle.dump(batch, f, protocol=2)


def test_resnet8_on_cifar_files_with_batch_norm(tmp_path):
  write_cifar(tmp_path / "cifar")
  config = tiny_config("rbd", **{
      "model": "resnet8", "data.dataset": "cifar10", "data.source": "files",
      "data.dir": str(tmp_path / "cifar"), "data.holdout_size": 16,
      "train.steps_per_epoch": 2, "train.log_every_steps": 2,
      "bases.compartments": "leaf", "bases.allocation": "compression", "bases.d": 50,
      "train.checkpoint": False})
  result = train.train_and_evaluate(config, str(tmp_path / "run"))
  record = result["history"][0]
  assert {"validation_accuracy", "test_accuracy"} <= set(record)
  stats = result["state"]["batch_stats"]["stem_bn"]["mean"]
  assert np.abs(np.asarray(stats)).max() > 0  # BN statistics moved: state, not bases


def test_early_stopping_on_divergence(tmp_path):
  config = tiny_config("sgd", **{"learning_rate.sgd": 1e6, "train.epochs": 3,
                                 "train.early_stopping": True, "train.checkpoint": False})
  result = train.train_and_evaluate(config, str(tmp_path))
  assert len(result["history"]) == 1 and "NaN or > 1000" in result["stopped"]


@pytest.mark.parametrize("overrides,match", [
    ({"model": "vgg"}, r"model='vgg'.*'fc', 'cnn', 'resnet8', 'resnet32'"),
    ({"method": "adam"}, r"method='adam'.*'sgd', 'rbd', 'fpd', 'nes'"),
    ({"data.dataset": "svhn"}, r"data.dataset='svhn'.*'mnist'"),
    ({"bases.d": 0}, r"bases.d=0 must be a positive integer"),
    ({"bases.distribution": "cauchy"}, r"bases.distribution='cauchy'"),
    ({"bases.compartments": "layers"}, r"bases.compartments='layers'"),
    ({"phases": "rbd:1,sgd:5"}, r"cover 6 epochs but train.epochs=1"),
    ({"learning_rate.rbd": -1.0}, r"learning_rate.rbd=-1.0 must be > 0"),
])
def test_bad_config_fails_before_loading_or_compiling(overrides, match, tmp_path, monkeypatch):
  def no_loading(*args, **kwargs):
    raise AssertionError("data was loaded before the config was validated")
  monkeypatch.setattr(input_pipeline, "load_dataset", no_loading)
  with pytest.raises(ValueError, match=match):
    train.train_and_evaluate(tiny_config(**overrides), str(tmp_path))


def run_main(*args, cwd=ROOT):
  return subprocess.run([sys.executable, "-m", "random_bases.main", *args],
                        cwd=cwd, capture_output=True, text=True,
                        env=dict(os.environ, JAX_PLATFORMS="cpu"))


def test_command_line_runs_with_overrides_and_shows_progress(tmp_path):
  out = run_main("--config=configs/default.py:runlocal", f"--workdir={tmp_path}",
                 "--config.train.epochs=1", "--config.bases.d=20")
  assert out.returncode == 0, out.stderr[-3000:]
  assert "img/s" in out.stderr and "ETA" in out.stderr and "SAMPLE" in out.stderr
  assert json.loads((tmp_path / "config.json").read_text())["bases"]["d"] == 20


def test_command_line_rejects_unknown_override_key(tmp_path):
  out = run_main("--config=configs/default.py", f"--workdir={tmp_path}",
                 "--config.train.epochz=3")
  assert out.returncode != 0
  assert "epochz" in out.stderr
  assert not (tmp_path / "config.json").exists()


def test_config_argument_parsing():
  assert config_lib.parse_arg("runlocal", runlocal=False).runlocal is True
  arg = config_lib.parse_arg("model=cnn,d=500", model="fc", d=250)
  assert (arg.model, arg.d) == ("cnn", 500)
  with pytest.raises(ValueError, match="config argument 'x' is unknown; allowed: d, model"):
    config_lib.parse_arg("x=1", model="fc", d=250)
