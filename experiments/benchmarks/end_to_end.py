"""The trainer's steady-state step and evaluation against the bare jitted ones.

``train_and_evaluate`` on the real data set (augmentation on) against
``step_cost.measure``'s bare step of the same model and method, and
``Trainer.evaluate`` against a bare jitted forward pass.
"""

from __future__ import annotations

import dataclasses
import math
import statistics
import time

from experiments.benchmarks import common, step_cost

# The paper's model/data pairs.
DATASETS = {"fc": "mnist", "cnn": "cifar10", "resnet8": "cifar10"}
# Steps per epoch through the trainer: about this many seconds of steady
# state at the bare step's speed, within these bounds.
EPOCH_SECONDS, MIN_STEPS, MAX_STEPS = 4.0, 40, 1500
EVAL_EXAMPLES = 2000
EVAL_REPEATS = 5


def data_location(model: str, *, mnist: str | None, cifar10: str | None) -> dict | None:
  """Where the trainer finds the model's data set, or None if not given."""
  if DATASETS[model] == "mnist":
    return {"source": "files", "dir": mnist} if mnist else None
  return {"source": "folder", "dir": cifar10} if cifar10 else None


def measure_eval(train_config, *, repeats: int) -> tuple[float, float]:
  """Median ms per eval batch: ``Trainer.evaluate`` against a bare forward pass.

  The trainer's evaluation (every eval split, batch by batch, with its
  preprocessing, loss and accuracy sums) and a bare jitted forward pass of
  the same model over a random batch of the same size alternate, so both
  medians see the same machine.
  """
  import jax

  from random_bases import train

  trainer = train.Trainer(train_config, train.load_data(train_config))
  state = trainer.initial_state()
  size = train_config.train.eval_batch_size
  batches = sum(math.ceil(len(labels) / size) for _, labels, _ in trainer.eval_splits.values())
  variables = {"params": state["params"]}
  if state["batch_stats"]:
    variables["batch_stats"] = state["batch_stats"]
  images = jax.random.normal(jax.random.key(1), (size,) + trainer.dataset.image_shape)
  forward = jax.jit(lambda variables, images: trainer.model.apply(variables, images, train=False))

  def bare():
    for _ in range(batches):
      jax.block_until_ready(forward(variables, images))

  trainer_times, bare_times = [], []
  for i in range(repeats + 1):  # the first round compiles
    start = time.perf_counter()
    trainer.evaluate(state)
    middle = time.perf_counter()
    bare()
    if i:
      trainer_times.append(middle - start)
      bare_times.append(time.perf_counter() - middle)
  return (
    1e3 * statistics.median(trainer_times) / batches,
    1e3 * statistics.median(bare_times) / batches,
  )


def measure_end_to_end(config: dict, *, data: dict, steps: int, warmup: int) -> dict:
  """The trainer's steady-state step and eval time against the bare jitted ones.

  ``config`` holds a ``step_cost.Config``'s fields; ``data`` is
  ``data_location``'s. ``train_and_evaluate`` runs two epochs of about
  ``EPOCH_SECONDS`` each on the real data set (augmentation on, as the paper
  trains); the second epoch's time per step (compilation is in the first) is
  compared with the median bare step of the same model and method, timed
  before and after the run in this process. Evaluation (``EVAL_EXAMPLES``
  examples per split) is timed by ``measure_eval``.
  """
  import tempfile

  from random_bases import config_lib, train

  config = step_cost.Config(**config)
  bare_before = step_cost.measure(dataclasses.asdict(config), steps=steps, warmup=warmup)
  train_config = config_lib.base_config()
  train_config.model = config.model
  train_config.data.dataset = DATASETS[config.model]
  train_config.data.source = data["source"]
  train_config.data.dir = data["dir"]
  train_config.method = config.method
  if config.method != "sgd":
    train_config.bases.d = config.d
  train_config.learning_rate[config.method] = step_cost.LEARNING_RATES[config.method]
  train_config.train.epochs = 2
  steps_per_epoch = int(1e3 * EPOCH_SECONDS / bare_before["step_ms"])
  train_config.train.steps_per_epoch = min(max(steps_per_epoch, MIN_STEPS), MAX_STEPS)
  train_config.train.eval_examples = EVAL_EXAMPLES
  train_config.train.checkpoint = False
  with tempfile.TemporaryDirectory() as workdir:
    history = train.train_and_evaluate(train_config, workdir)["history"]
  bare_after = step_cost.measure(dataclasses.asdict(config), steps=steps, warmup=warmup)

  epoch = history[-1]
  bare_ms = (bare_before["step_ms"] + bare_after["step_ms"]) / 2
  trainer_ms = 1e3 * epoch["train_seconds"] / train_config.train.steps_per_epoch
  trainer_eval_ms, bare_eval_ms = measure_eval(train_config, repeats=EVAL_REPEATS)
  return {
    **dataclasses.asdict(config),
    "dataset": DATASETS[config.model],
    "num_params": bare_before["num_params"],
    "bare_ms": bare_ms,
    "bare_ms_before_after": [bare_before["step_ms"], bare_after["step_ms"]],
    "trainer_ms": trainer_ms,
    "trainer_steps_timed": train_config.train.steps_per_epoch,
    "ratio": trainer_ms / bare_ms,
    "trainer_images_per_s": epoch["images_per_second"],
    "bare_eval_ms": bare_eval_ms,
    "trainer_eval_ms": trainer_eval_ms,
    "eval_ratio": trainer_eval_ms / bare_eval_ms,
    "peak_rss_mib": common.peak_rss_mib(),
  }


def end_to_end_table(rows: list[dict]) -> str:
  lines = [
    "| model | data | method | bare step ms | trainer step ms | trainer / bare "
    "| trainer images/s | bare eval batch ms | trainer eval batch ms "
    "| trainer / bare (eval) |",
    "|" + " --- |" * 10,
  ]
  for r in rows:
    method = r["method"] + (f" d={r['d']}" if r["method"] != "sgd" else "")
    lines.append(
      f"| {r['model']} | {r['dataset']} | {method} | {r['bare_ms']:.2f} "
      f"| {r['trainer_ms']:.2f} | {r['ratio']:.2f} | {r['trainer_images_per_s']:,.0f} "
      f"| {r['bare_eval_ms']:.1f} | {r['trainer_eval_ms']:.1f} | {r['eval_ratio']:.2f} |"
    )
  return "\n".join(lines)


def end_to_end_verdicts(rows: list[dict]) -> list[str]:
  """The trainer's target: within 1.25x of the bare step, training and eval."""
  lines = []
  for r in rows:
    ok = r["ratio"] <= 1.25 and r["eval_ratio"] <= 1.25
    lines.append(
      f"{r['model']} {r['method']}: trainer / bare = {r['ratio']:.2f} (step), "
      f"{r['eval_ratio']:.2f} (eval), target <= 1.25: " + common.verdict(ok)
    )
  return lines
