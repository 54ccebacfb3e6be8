"""The trainer end to end on tiny configs (the shipped MNIST sample)."""

import json
import math
import os
import pathlib
import pickle
import re
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import reference
from jax.flatten_util import ravel_pytree
from reference import tiny_config  # test_workdir.py imports it from here too

from random_bases import config_lib, models, train
from random_bases import data as data_lib
from random_bases.data import preprocess

ROOT = pathlib.Path(__file__).resolve().parents[1]
FC_PARAMETERS = 101_770  # PAPER.md, "Models": FC on 28x28x1


def initial_test_loss(config):
  trainer = train.Trainer(config, reference.sample_data())
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


def expected_projection_cosine(d, dim):
  """E cos(g, P P^T g) for d random unit directions in R^dim: sqrt(d/D) / sqrt(1 + d/D).

  With c_i = <g, phi_i>: E sum c_i^2 = d |g|^2 / D and E |P P^T g|^2 =
  d |g|^2 / D (1 + (d - 1) / D), whatever g is.
  """
  q = d / dim
  return math.sqrt(q) / math.sqrt(1 + q)


def expected_nes_cosine(d, dim):
  """cos(g, NES estimate) with centred-rank fitness over d perturbations N(0, I_D).

  With phi_n = a_n g/|g| + psi_n (a_n ~ N(0, 1), psi_n nearly orthogonal, of
  length sqrt(D)) and to first order in sigma the ranks those of a_n, the
  estimate is sum_n w_n phi_n with w the centred ranks of a: its cosine with
  g is S / sqrt(S^2 + D sum w^2), S = E sum w_n a_n = sum_i w_i m_i, m_i the
  expected normal order statistics (Blom's approximation). For d = 20 S is
  0.928 sqrt(d sum w^2): 93 % of RBD's cosine with d directions.
  """
  from statistics import NormalDist

  w = [i / (d - 1) - 0.5 for i in range(d)]
  m = [NormalDist().inv_cdf((i + 1 - 0.375) / (d + 0.25)) for i in range(d)]
  s = sum(a * b for a, b in zip(w, m))
  return s / math.sqrt(s * s + dim * sum(x * x for x in w))


def correlation_run(method, tmp_path, **overrides):
  config = tiny_config(
    method, **{"metrics.gradient_correlation": True, "train.checkpoint": False, **overrides}
  )
  return train.train_and_evaluate(config, str(tmp_path))["history"][0]


def test_gradient_correlation_of_sgd_is_one(tmp_path):
  sgd = correlation_run("sgd", tmp_path)
  # SGD's update is the gradient itself.
  assert sgd["correlation_whole"] == pytest.approx(1.0, abs=1e-5)
  assert sgd["correlation_min"] == pytest.approx(1.0, abs=1e-4)
  assert sgd["correlation_std"] == pytest.approx(0.0, abs=1e-4)


def test_gradient_correlation_of_rbd_is_the_projection_cosine(tmp_path):
  rbd = correlation_run("rbd", tmp_path)  # d = 50, the mean over 30 steps
  expected = expected_projection_cosine(50, FC_PARAMETERS)  # 0.02216
  # Over seeds 0-7 this run's mean cosine was 0.02193 +- 0.00035 (1.6 %),
  # 1 % below the formula (the mean of a ratio). +-6 % is 4 std; d = 25 or
  # 100 would give 0.0157 or 0.0313.
  assert rbd["correlation_whole"] == pytest.approx(expected, rel=0.06)
  assert -1 <= rbd["correlation_min"] <= rbd["correlation_mean"] <= rbd["correlation_max"] <= 1
  assert rbd["correlation_std"] > 0


NES_CORRELATION_RUN = {"bases.d": 20, "train.steps_per_epoch": 16, "train.log_every_steps": 4}


def test_gradient_correlation_of_nes_has_its_known_scale(tmp_path):
  # NES needs no backward pass for its update; the metric computes one.
  nes = correlation_run("nes", tmp_path, **NES_CORRELATION_RUN)
  expected = expected_nes_cosine(20, FC_PARAMETERS)  # 0.01301
  # Over seeds 0-7 the mean over 16 steps was 0.01269 +- 0.00048 (3.7 %).
  # +-15 % is 4 std; 10 or 40 perturbations would give 0.0092 or 0.0184, raw
  # fitness (the loss itself, dominated by its mean) about 0.0003.
  assert nes["correlation_whole"] == pytest.approx(expected, rel=0.15)
  assert -1 <= nes["correlation_min"] <= nes["correlation_max"] <= 1


def test_antithetic_raw_nes_is_a_projection_on_half_the_directions(tmp_path):
  # f(+phi) - f(-phi) = 2 sigma <g, phi> + O(sigma^3): the mirrored pairs
  # cancel the loss's mean, and the estimate is (2/d) sum <g, phi> phi over
  # d/2 directions, whose cosine is the projection's with d/2 = 10.
  nes = correlation_run(
    "nes", tmp_path, **NES_CORRELATION_RUN, **{"nes.antithetic": True, "nes.fitness": "raw"}
  )
  expected = expected_projection_cosine(10, FC_PARAMETERS)  # 0.00991
  # Over seeds 0-5: 0.00959 +- 0.00036 (3.7 %); +-15 % is 4 std.
  assert nes["correlation_whole"] == pytest.approx(expected, rel=0.15)


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


# --- each setting reaches the step: the first update against a reference -------

ONE_STEP = {"train.steps_per_epoch": 1, "train.log_every_steps": 1, "bases.generator": "threefry"}


def batch_loss(model, images, labels):
  """params -> the mean cross-entropy of ``model`` on the batch (train mode, no BN)."""

  def loss(params):
    logits = model.apply({"params": params}, images, train=True)
    return cross_entropy(logits, labels).mean()

  return loss


def cross_entropy(logits, labels):
  return -jnp.take_along_axis(jax.nn.log_softmax(logits), labels[:, None], axis=-1)[:, 0]


def first_step(config):
  """Runs the trainer's first step of ``config`` on the MNIST sample.

  Returns (trainer, params before, params after, clean batch, batch as the
  step saw it, labels): the batch is the first ``train.batch_size`` images of
  epoch 0's shuffle, augmented with the step's key when ``data.augment``.
  """
  trainer = train.Trainer(config, reference.sample_data())
  state = trainer.initial_state()
  before = jax.tree.map(np.array, state["params"])  # copies: the step donates the state
  order = trainer.epoch_order(0)
  after, _ = trainer.run_steps(0, state, order, 1)
  index = np.asarray(order)[: config.train.batch_size]
  raw = trainer.dataset.train_images[index]
  clean = preprocess.preprocess_eval_batch(raw, dataset="mnist")
  seen = clean
  if config.data.augment:
    key = jax.random.fold_in(trainer.augment_key, 0)  # step 0's augmentation
    parts = None if config.data.augment_parts == "all" else config.data.augment_parts.split("+")
    seen = preprocess.preprocess_train_batch(key, raw, dataset="mnist", parts=parts)
  labels = jnp.asarray(trainer.dataset.train_labels[index])
  return trainer, before, jax.tree.map(np.array, after["params"]), clean, seen, labels


def relative_difference(a, b):
  return np.linalg.norm(a - b) / np.linalg.norm(b)


@pytest.mark.parametrize("augment", [True, False])
def test_data_augment_decides_the_batch_the_first_step_sees(augment):
  config = tiny_config("sgd", **ONE_STEP, **{"data.augment": augment})
  trainer, before, after, clean, seen, labels = first_step(config)
  step = reference.flat(after) - reference.flat(before)
  lr = config.learning_rate.sgd

  def sgd_step(images):
    return -lr * reference.flat(jax.grad(batch_loss(trainer.model, images, labels))(before))

  np.testing.assert_allclose(step, sgd_step(seen), rtol=1e-4, atol=1e-6 * np.abs(step).max())
  if augment:  # crops shift the digits and brightness the pixels: another gradient
    assert relative_difference(sgd_step(clean), sgd_step(seen)) > 0.1
    assert np.abs(np.asarray(seen) - np.asarray(clean)).max() > 0.1


def test_data_augment_parts_reach_the_first_step():
  config = tiny_config("sgd", **ONE_STEP, **{"data.augment_parts": "brightness"})
  trainer, before, after, clean, seen, labels = first_step(config)
  step = reference.flat(after) - reference.flat(before)
  grad = jax.grad(batch_loss(trainer.model, seen, labels))(before)
  want = -config.learning_rate.sgd * reference.flat(grad)
  np.testing.assert_allclose(step, want, rtol=1e-4, atol=1e-6 * np.abs(step).max())
  # Brightness alone: every image is the clean one shifted by one constant (no crop).
  shift = np.asarray(seen) - np.asarray(clean)
  np.testing.assert_allclose(shift, shift[:, :1, :1, :] + 0 * shift, atol=1e-6)
  assert np.abs(shift).max() > 0.1


def dense_rbd_step(config, grad, dim, **basis):
  """-lr P P^T g (divided by d without normalisation), P built by hand (threefry)."""
  seed = jax.random.fold_in(jax.random.key(config.seed), 0)  # phase 0's bases
  kwargs = {"distribution": config.bases.distribution, "normalize": config.bases.normalize}
  kwargs.update(basis)
  p = reference.dense_basis(seed, 0, 0, 0, config.bases.d, dim, **kwargs)
  update = p @ (p.T @ grad)
  if kwargs["normalize"] == "none":
    update /= config.bases.d  # the reference code's scale (PAPER.md)
  return -config.learning_rate.rbd * update


@pytest.mark.parametrize(
  "setting,value",
  [
    ("bases.normalize", "norm"),
    ("bases.normalize", "expected"),
    ("bases.normalize", "none"),
    ("bases.distribution", "uniform"),
    ("bases.distribution", "bernoulli"),
    ("bases.block_rows", 7),
  ],
)
def test_each_bases_setting_reaches_the_first_rbd_update(setting, value):
  config = tiny_config("rbd", **ONE_STEP, **{"data.augment": False, setting: value})
  trainer, before, after, _, seen, labels = first_step(config)
  step = reference.flat(after) - reference.flat(before)
  grad = reference.flat(jax.grad(batch_loss(trainer.model, seen, labels))(before))
  want = dense_rbd_step(config, grad, FC_PARAMETERS)
  np.testing.assert_allclose(step, want, rtol=1e-3, atol=1e-4 * np.abs(want).max())
  default = dense_rbd_step(config, grad, FC_PARAMETERS, distribution="normal", normalize="norm")
  # What the setting implies against unit normal directions of the same keys.
  if value == "expected":  # rows of length sqrt(n) +- 0.4 %, divided by sqrt(n): almost unit
    assert 1e-4 < relative_difference(step, default) < 0.03
  elif value == "none":  # raw rows of squared length ~n, the sum divided by d: n/d times
    assert relative_difference(step * config.bases.d / FC_PARAMETERS, default) < 0.03
  elif setting == "bases.distribution":
    # Other directions. From the same keys jax.random's uniform and normal
    # entries are monotone in the same bits, so the two updates stay
    # correlated, but far from equal.
    assert relative_difference(step, default) > 0.1
  elif setting == "bases.block_rows":  # a schedule: the same update, in ceil(50/7) = 8 blocks
    np.testing.assert_allclose(step, default, rtol=1e-3, atol=1e-4 * np.abs(want).max())
    state = trainer.initial_state()
    jaxpr = str(
      jax.make_jaxpr(trainer.train_steps(0, 1))(
        state, trainer.train_images, trainer.train_labels, trainer.epoch_order(0)
      )
    )
    # Every scan over blocks has 8 steps; the automatic block of 17 rows gives 3.
    assert set(re.findall(r"length=(\d+)", jaxpr)) == {"8"}


def nes_reference_step(config, trainer, before, images, labels, **nes):
  """-lr times PAPER.md's NES estimate at ``before`` on the batch (tests/reference.py)."""
  theta, unravel = ravel_pytree(before)
  loss = jax.jit(lambda flat: batch_loss(trainer.model, images, labels)(unravel(flat)))
  settings = {k: config.nes[k] for k in ("sigma", "antithetic", "fitness")}
  settings.update(nes)
  estimate = reference.nes_estimate(
    lambda flat: float(loss(jnp.asarray(flat, jnp.float32))),
    np.asarray(theta, np.float64),
    jax.random.fold_in(trainer.nes_key, 0),  # step 0's perturbations
    config.bases.d,
    settings["sigma"],
    antithetic=settings["antithetic"],
    fitness=settings["fitness"],
  )
  return -config.learning_rate.nes * estimate


@pytest.mark.parametrize(
  "setting,value",
  [("nes.sigma", 0.01), ("nes.sigma", 0.1), ("nes.antithetic", True), ("nes.fitness", "raw")],
)
def test_each_nes_setting_reaches_the_first_update(setting, value):
  config = tiny_config("nes", **ONE_STEP, **{"data.augment": False, "bases.d": 8, setting: value})
  trainer, before, after, _, seen, labels = first_step(config)
  step = reference.flat(after) - reference.flat(before)
  want = nes_reference_step(config, trainer, before, seen, labels)
  np.testing.assert_allclose(step, want, rtol=1e-3, atol=1e-4 * np.abs(want).max())
  default = nes_reference_step(
    config, trainer, before, seen, labels, sigma=0.01, antithetic=False, fitness="centered_ranks"
  )
  if setting == "nes.fitness":
    # Raw fitness weights phi_n by the loss (~2.3) instead of a rank in
    # [-0.5, 0.5]: the same directions, several times longer.
    assert np.linalg.norm(step) > 3 * np.linalg.norm(default)
  elif value != 0.01:
    assert relative_difference(step, default) > 0.5


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
  # One step of RBD with per-tensor compartments, c = 200, on CIFAR pickles,
  # recomputed by hand: the batch, its loss, batch-norm statistics and update.
  write_cifar(tmp_path / "cifar")
  config = tiny_config(
    "rbd",
    **{
      "model": "resnet8",
      "data.dataset": "cifar10",
      "data.source": "files",
      "data.dir": str(tmp_path / "cifar"),
      "data.holdout_size": 16,
      "train.steps_per_epoch": 1,
      "train.log_every_steps": 1,
      "bases.compartments": "leaf",
      "bases.allocation": "compression",
      "bases.d": 200,
      "bases.generator": "threefry",
      "train.checkpoint": False,
    },
  )
  trainer = train.Trainer(config, train.load_data(config))
  initial = trainer.initial_state()
  # Copies: the step donates the state.
  params0, stats0 = (jax.tree.map(np.array, initial[k]) for k in ("params", "batch_stats"))
  assert models.count_params(params0) == 78_330  # PAPER.md, "Models": ResNet-8
  order = trainer.epoch_order(0)
  result, metrics = trainer.run_steps(0, initial, order, 1)
  index = np.asarray(order)[:32]  # the first step's batch, augmented with its key
  images = preprocess.preprocess_train_batch(
    jax.random.fold_in(trainer.augment_key, 0),
    trainer.dataset.train_images[index],
    dataset="cifar10",
  )
  labels = jnp.asarray(trainer.dataset.train_labels[index])

  # Batch norm: running = 0.9 running + 0.1 batch, from mean 0 and variance 1.
  stem = np.asarray(
    jax.lax.conv_general_dilated(
      images,
      params0["stem_conv"]["kernel"],
      (1, 1),
      "SAME",
      dimension_numbers=("NHWC", "HWIO", "NHWC"),
      precision=jax.lax.Precision.HIGHEST,
    ),
    np.float64,
  )
  stats = result["batch_stats"]
  np.testing.assert_allclose(stats["stem_bn"]["mean"], 0.1 * stem.mean((0, 1, 2)), atol=1e-5)
  np.testing.assert_allclose(stats["stem_bn"]["var"], 0.9 + 0.1 * stem.var((0, 1, 2)), rtol=1e-4)
  variables = {"params": params0, "batch_stats": stats0}

  def loss(params):
    logits, new = trainer.model.apply(
      {**variables, "params": params}, images, train=True, mutable=["batch_stats"]
    )
    return cross_entropy(logits, labels).mean(), new["batch_stats"]

  (value, batch_stats), grads = jax.jit(jax.value_and_grad(loss, has_aux=True))(params0)
  assert metrics["loss"][0] == pytest.approx(float(value), rel=1e-5)
  for (path, got), want in zip(
    jax.tree_util.tree_leaves_with_path(stats), jax.tree.leaves(batch_stats)
  ):  # every layer's statistics are the first batch's, at the initial parameters
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5, err_msg=jax.tree_util.keystr(path))

  # The update: -lr P P^T g per tensor, d_v = max(ceil(n_v / 200), 10) rounded up
  # to even (PAPER.md, Table 3's rule), compartment k keyed by its index.
  names = [jax.tree_util.keystr(p) for p, _ in jax.tree_util.tree_leaves_with_path(params0)]
  vectors = dict(zip(names, (np.ravel(np.asarray(g, np.float64)) for g in jax.tree.leaves(grads))))
  dims = [max(math.ceil(v.size / 200), 10) for v in vectors.values()]
  dims = [min(k + k % 2, v.size) for k, v in zip(dims, vectors.values())]
  update = reference.block_projection(
    vectors,
    [[name] for name in names],
    dims,
    seed=jax.random.fold_in(jax.random.key(config.seed), 0),
  )
  after = jax.device_get(result["params"])
  for name, new, old in zip(names, jax.tree.leaves(after), jax.tree.leaves(params0)):
    want = -config.learning_rate.rbd * update[name]
    got = np.ravel(np.asarray(new, np.float64) - np.asarray(old, np.float64))
    np.testing.assert_allclose(got, want, rtol=1e-3, atol=1e-3 * np.abs(want).max(), err_msg=name)


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


@pytest.mark.parametrize("method", ["sgd", "fpd", "rbd"])
def test_optimizer_adam_and_weight_decay_build_the_documented_chain(method):
  """train.optimizer=adam: optax.adam for SGD, Adam on the coordinates for FPD/RBD; L2 first."""
  import optax

  import random_bases as rb

  config = tiny_config(method, **{"train.optimizer": "adam", "train.weight_decay": 0.01})
  config_lib.validate(config)
  params = {"w": jnp.linspace(-1.0, 1.0, 80), "b": jnp.array([0.5, -0.5])}
  lr = config.learning_rate[method]
  seed = jax.random.fold_in(jax.random.key(config.seed), 0)  # phase 0's seed
  if method == "sgd":
    inner = optax.adam(lr)
  else:
    factory = rb.fpd if method == "fpd" else rb.rbd
    inner = factory(
      lr,
      config.bases.d,
      seed=seed,
      generator=config.bases.generator,
      coordinate_transform=optax.scale_by_adam(),
    )
  want_tx = optax.chain(optax.add_decayed_weights(0.01), inner)
  got_tx = train.make_optimizer(method, config=config, phase=0)
  got_state, want_state = got_tx.init(params), want_tx.init(params)
  for step in range(3):
    g = {"w": jnp.sin(jnp.arange(80.0) + step), "b": jnp.array([1.0, -2.0]) * step}
    got, got_state = got_tx.update(g, got_state, params)
    want, want_state = want_tx.update(g, want_state, params)
    np.testing.assert_array_equal(ravel_pytree(got)[0], ravel_pytree(want)[0])
    params = jax.tree.map(lambda p, u: p + u, params, got)
  # The default stays the seed paper's plain steps without decay.
  plain = tiny_config(method)
  assert (plain.train.optimizer, plain.train.weight_decay) == ("sgd", 0.0)


@pytest.mark.parametrize(
  "overrides, message",
  [
    ({"train.optimizer": "rmsprop"}, r"train.optimizer='rmsprop' is not supported.*'sgd', 'adam'"),
    ({"train.weight_decay": -1e-4}, r"train.weight_decay=-0.0001 must be a number >= 0"),
    (
      {"train.optimizer": "adam", "workers": 2},
      r"train.optimizer='adam' with RBD/FPD .* needs workers=1, not 2",
    ),
    (
      {"train.weight_decay": 1e-4, "bases.coordinates": "forward"},
      r"train.weight_decay adds weight_decay \* theta to the gradient, which forward mode",
    ),
  ],
)
def test_bad_optimizer_settings_are_refused(overrides, message):
  with pytest.raises(ValueError, match=message):
    config_lib.validate(tiny_config("rbd", **overrides))
