"""The trainer's loop runs at the speed of its step: what makes that so.

The loop dispatches jitted steps without host round trips, and the step is
straight-line code (no XLA while loop, where convolutions are slow on CPU,
jax-ml/jax#12868). Speed itself is measured by experiments/benchmark.py.
"""

import re

import jax
import numpy as np
import pytest

from random_bases import config_lib, data, train
from random_bases.data import preprocess


def small_trainer(model="cnn", method="rbd", **train_fields):
  config = config_lib.base_config()
  config.model = model
  config.method = method
  config.data.source = "sample"
  config.data.holdout_size = 400
  config.bases.d = 20
  config.learning_rate.rbd = 1.0
  config.learning_rate.sgd = 0.05
  config.train.steps_per_epoch = 12
  config.train.eval_examples = 300
  config.train.eval_batch_size = 128
  for name, value in train_fields.items():
    config.train[name] = value
  dataset = data.load_dataset("mnist", source="sample", holdout_size=400)
  return train.Trainer(config, dataset)


def test_steps_need_no_host_transfer():
  trainer = small_trainer()
  state = trainer.initial_state()
  order = trainer.epoch_order(0)
  trainer.run_steps(0, state=trainer.initial_state(), order=order, num_steps=2)  # compile
  # Any implicit host<->device transfer (a Python scalar argument, a
  # float() of a device value) inside the loop raises here.
  with jax.transfer_guard("disallow"):
    state, metrics = trainer.run_steps(0, state, order, 10)
  assert metrics["loss"].shape == (10,)
  assert int(state["step"]) == 10


def convolutions_in_loops(hlo: str) -> int:
  """How many convolutions a compiled module runs inside while-loop bodies."""
  bodies = set(re.findall(r" while\(.*?body=%([\w.\-]+)", hlo))
  computations = {block.split(" ", 1)[0].lstrip("%"): block for block in hlo.split("\n\n")}
  return sum(computations[name].count(" convolution(") for name in bodies)


def test_the_loop_detector_finds_a_scanned_convolution():
  def scanned(x, w):
    body = lambda c, _: (jax.lax.conv(c, w, (1, 1), "SAME"), None)
    return jax.lax.scan(body, x, None, length=3)[0]

  x, w = np.ones((1, 2, 8, 8), np.float32), np.ones((2, 2, 3, 3), np.float32)
  assert convolutions_in_loops(jax.jit(scanned).lower(x, w).compile().as_text()) == 1


@pytest.mark.parametrize("method", ["sgd", "rbd"])
def test_compiled_step_has_no_loop_around_the_model(method):
  trainer = small_trainer(method=method)
  state = trainer.initial_state()
  lowered = trainer.train_steps(0, 1).lower(
    state, trainer.train_images, trainer.train_labels, trainer.epoch_order(0)
  )
  hlo = lowered.compile().as_text()
  assert " convolution(" in hlo
  assert convolutions_in_loops(hlo) == 0


def test_steps_per_dispatch_gives_the_same_trajectory():
  one = small_trainer(model="fc", steps_per_dispatch=1)
  four = small_trainer(model="fc", steps_per_dispatch=4)
  order = one.epoch_order(0)
  state_one, metrics_one = one.run_steps(0, one.initial_state(), order, 10)
  state_four, metrics_four = four.run_steps(0, four.initial_state(), order, 10)
  np.testing.assert_allclose(metrics_one["loss"], metrics_four["loss"], rtol=1e-5)
  for a, b in zip(jax.tree.leaves(state_one["params"]), jax.tree.leaves(state_four["params"])):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_evaluate_equals_a_plain_numpy_reference():
  trainer = small_trainer(model="fc", method="sgd")
  state = trainer.initial_state()
  results = trainer.evaluate(state)
  images, labels = trainer.dataset.eval_splits["test"]
  images, labels = images[:300], labels[:300]
  x = preprocess.preprocess_eval_batch(images, dataset="mnist")
  logits = np.asarray(trainer.model.apply({"params": state["params"]}, x, train=False), np.float64)
  log_probs = logits - logits.max(-1, keepdims=True)
  log_probs -= np.log(np.exp(log_probs).sum(-1, keepdims=True))
  expected_loss = -log_probs[np.arange(len(labels)), labels].mean()
  expected_accuracy = (logits.argmax(-1) == labels).mean()
  # 300 examples in batches of 128: the last batch is padded and masked.
  np.testing.assert_allclose(results["test_loss"], expected_loss, rtol=1e-5)
  assert results["test_accuracy"] == pytest.approx(expected_accuracy)
