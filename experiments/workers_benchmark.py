"""K workers (Alg. 1 right, §4.3, Fig. 5): what they send, what they cost, how they learn.

Three measurements through the trainer (``random_bases.train.Trainer``),
each configuration in a fresh subprocess whose XLA_FLAGS give it K CPU
devices (``--xla_force_host_platform_device_count``):

  python experiments/workers_benchmark.py communication   # every paper model (~2 min, 2 cores)
  python experiments/workers_benchmark.py cost            # 1, 2, 4, 8 workers (~2.5 min)
  python experiments/workers_benchmark.py accuracy        # Fig. 5 reduced, 1 vs 8 (~7 min)
  python experiments/workers_benchmark.py all --json workers.json

**communication** compiles the trainer's step with 8 workers on 8 devices
for SGD (data-parallel) and RBD (d = 250) on every paper model, with random
images of the model's input shape, and lists every collective of the
compiled program with its result shape (``distributed.collectives``).
Bytes per step: the sum of those results' sizes on one device (a ring
algorithm moves about twice an all-reduce's and once an all-gather's).

**cost** times the trainer's step (median of ``--steps`` after 2 warm-up
steps) for 1, 2, 4 and 8 workers on as many virtual CPU devices, FC on
MNIST shapes, batch 32 per worker, RBD at d = 250 and data-parallel SGD.
The virtual devices share the machine's cores, so this measures the
overhead of K workers (each regenerates all K bases every step: (1 + K) d D
random numbers per worker, K (1 + K) d D on the machine), not a speed-up.

**accuracy** trains FC on the real MNIST (``$RANDOM_BASES_DATA_DIR/mnist``)
with RBD (d = 50 per worker, learning rate 16 unless ``--d`` and
``--learning-rate`` say otherwise), 1 worker and 8 workers (8 devices) for
the same number of training images, over seeds; it reports validation and
test accuracy.
Held fixed: the model, d per worker, the learning rate (the update is the
paper's sum over workers, so 8 workers take steps about 8 times larger and 8
times fewer), batch 32 per worker, augmentation, the images seen.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import tempfile
import time

if not __package__:  # python experiments/workers_benchmark.py: make `experiments` importable
  sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from experiments.benchmarks import child_process  # noqa: E402

# (model, dataset) of every paper model, with its parameter count D.
MODELS = (
  ("fc", "mnist"),
  ("cnn", "mnist"),
  ("cnn", "cifar10"),
  ("resnet8", "cifar10"),
  ("resnet32", "cifar10"),
)
COMMUNICATION_WORKERS, COMMUNICATION_D = 8, 250
COST_WORKERS = (1, 2, 4, 8)


def trainer_config(model, dataset, method, *, workers, d, seed=0, **train_fields):
  from random_bases import config_lib

  config = config_lib.base_config()
  config.model, config.data.dataset, config.method = model, dataset, method
  config.workers = workers
  config.seed = seed
  config.bases.d = d
  config.train.eval_batch_size = 1000 if workers == 1 else 1024
  for name, value in train_fields.items():
    config.train[name] = value
  return config


def synthetic_dataset(dataset: str, num_train: int):
  """Random images of the dataset's shape: the step's cost does not depend on them."""
  import numpy as np

  from random_bases import data
  from random_bases.data import sources

  rng = np.random.default_rng(0)
  shape = sources.image_shape(dataset)
  images = rng.integers(0, 256, (num_train, *shape), dtype=np.uint8)
  labels = rng.integers(0, 10, num_train).astype(np.int32)
  return data.Dataset(
    name=dataset,
    source="synthetic",
    description=f"random images of {dataset}'s shape",
    is_sample=False,
    train_images=images,
    train_labels=labels,
    eval_splits={"test": (images[:1024], labels[:1024])},
    num_classes=10,
    image_shape=shape,
  )


# --- children: one measurement each, in a process with K devices ------------


def child_communication(model: str, dataset: str) -> dict:
  import jax

  from random_bases import distributed, models, train

  rows = {}
  for method in ("sgd", "rbd"):
    config = trainer_config(
      model, dataset, method, workers=COMMUNICATION_WORKERS, d=COMMUNICATION_D
    )
    trainer = train.Trainer(config, synthetic_dataset(dataset, 32 * COMMUNICATION_WORKERS))
    state = trainer.initial_state()
    compiled = (
      trainer.train_steps(0, 1)
      .lower(state, trainer.train_images, trainer.train_labels, trainer.epoch_order(0))
      .compile()
    )
    found = distributed.collectives(compiled.as_text())
    rows[method] = {
      "collectives": [[c.op, [list(dims) for _, dims in c.shapes], c.bytes] for c in found],
      "bytes": sum(c.bytes for c in found),
      "largest_floats": max(c.elements for c in found),
    }
  rows["num_params"] = models.count_params(state["params"])
  rows["devices"] = len(jax.devices())
  return rows


def child_cost(method: str, workers: int, steps: int) -> dict:
  import jax

  from random_bases import train

  config = trainer_config("fc", "mnist", method, workers=workers, d=250)
  trainer = train.Trainer(config, synthetic_dataset("mnist", 32 * workers * (steps + 2)))
  state, order = trainer.initial_state(), trainer.epoch_order(0)
  times = []
  for i in range(steps + 2):
    start = time.perf_counter()
    state, _ = trainer.train_steps(0, 1)(state, trainer.train_images, trainer.train_labels, order)
    jax.block_until_ready(state)
    if i >= 2:  # the first two compile and warm up
      times.append(time.perf_counter() - start)
  step = statistics.median(times)
  return {
    "method": method,
    "workers": workers,
    "step_ms": 1e3 * step,
    "step_ms_all": [1e3 * t for t in times],
    "steps_per_s": 1 / step,
    "images_per_s": 32 * workers / step,
  }


def child_accuracy(
  workers: int, seed: int, images: int, d: int, learning_rate: float, data_dir: str
) -> dict:
  from random_bases import train

  config = trainer_config(
    "fc",
    "mnist",
    "rbd",
    workers=workers,
    d=d,
    seed=seed,
    epochs=1,
    steps_per_epoch=images // (32 * workers),
    log_every_steps=100,
    checkpoint=False,
  )
  config.learning_rate.rbd = learning_rate
  config.data.source = "files"
  config.data.dir = data_dir
  with tempfile.TemporaryDirectory() as workdir:
    start = time.perf_counter()
    record = train.train_and_evaluate(config, workdir)["history"][-1]
  return {
    "workers": workers,
    "seed": seed,
    "images_seen": record["step"] * 32 * workers,
    "steps": record["step"],
    "validation_accuracy": record["validation_accuracy"],
    "test_accuracy": record["test_accuracy"],
    "train_loss": record["train_loss"],
    "seconds": time.perf_counter() - start,
  }


# --- tables ----------------------------------------------------------------


def communication_table(rows: list[dict]) -> str:
  lines = [
    f"| model | D | SGD: all-reduce floats | SGD bytes | RBD (d = {COMMUNICATION_D}): "
    "all-gather floats | RBD: all-reduce floats | RBD bytes | SGD / RBD bytes |",
    "| --- | --- | --- | --- | --- | --- | --- | --- |",
  ]

  def floats(method_row, op):
    return sum(
      sum(math.prod(dims) for dims in shapes)
      for name, shapes, _ in method_row["collectives"]
      if name == op
    )

  for row in rows:
    sgd, rbd = row["sgd"], row["rbd"]
    lines.append(
      f"| {row['model']}-{row['dataset']} | {row['num_params']:,} | "
      f"{floats(sgd, 'all-reduce'):,} | {sgd['bytes']:,} | {floats(rbd, 'all-gather'):,} | "
      f"{floats(rbd, 'all-reduce'):,} | {rbd['bytes']:,} | {sgd['bytes'] / rbd['bytes']:,.0f} |"
    )
  return "\n".join(lines)


def cost_table(rows: list[dict]) -> str:
  lines = [
    "| method | workers | step ms (median) | steps/s | images/s | step vs 1 worker |",
    "| --- | --- | --- | --- | --- | --- |",
  ]
  for row in rows:
    base = next(r for r in rows if r["method"] == row["method"] and r["workers"] == 1)
    lines.append(
      f"| {row['method']} | {row['workers']} | {row['step_ms']:.1f} | "
      f"{row['steps_per_s']:.2f} | {row['images_per_s']:,.0f} | "
      f"{row['step_ms'] / base['step_ms']:.1f}x |"
    )
  return "\n".join(lines)


def accuracy_table(rows: list[dict]) -> str:
  lines = [
    "| workers | steps | images seen | validation accuracy % (per seed) | mean ± std | "
    "test accuracy % (per seed) | mean ± std |",
    "| --- | --- | --- | --- | --- | --- | --- |",
  ]
  for workers in sorted({r["workers"] for r in rows}):
    mine = [r for r in rows if r["workers"] == workers]
    cells = []
    for key in ("validation_accuracy", "test_accuracy"):
      values = [100 * r[key] for r in mine]
      spread = statistics.stdev(values) if len(values) > 1 else 0.0
      cells += [
        " / ".join(f"{v:.2f}" for v in values),
        f"{statistics.mean(values):.2f} ± {spread:.2f}",
      ]
    lines.append(
      f"| {workers} | {mine[0]['steps']} | {mine[0]['images_seen']:,} | " + " | ".join(cells) + " |"
    )
  return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("what", nargs="?", choices=("communication", "cost", "accuracy", "all"))
  parser.add_argument("--steps", type=int, default=5, help="timed steps per cost row")
  parser.add_argument("--seeds", default="0,1,2", help="accuracy: seeds")
  parser.add_argument("--images", type=int, default=25_600, help="accuracy: images seen per run")
  parser.add_argument("--d", type=int, default=50, help="accuracy: directions per worker")
  parser.add_argument(
    "--learning-rate", type=float, default=16.0, help="accuracy: RBD's (README quickstart's)"
  )
  parser.add_argument(
    "--data-dir",
    default=os.path.join(os.environ.get("RANDOM_BASES_DATA_DIR", ""), "mnist"),
    help="accuracy: the MNIST IDX files",
  )
  parser.add_argument("--json", default=None, help="also write every measurement here")
  args = parser.parse_args(argv)
  if args.what is None:
    parser.error("say what to measure: communication, cost, accuracy or all")
  results = {}
  started = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
  if args.what in ("communication", "all"):
    rows = []
    for model, dataset in MODELS:
      row = child_process.run(
        child_communication,
        env=child_process.cpu_devices(COMMUNICATION_WORKERS),
        model=model,
        dataset=dataset,
      )
      rows.append({"model": model, "dataset": dataset, **row})
    results["communication"] = rows
    print(f"\n{COMMUNICATION_WORKERS} workers, bytes per step per device\n")
    print(communication_table(rows))
  if args.what in ("cost", "all"):
    rows = [
      child_process.run(
        child_cost,
        env=child_process.cpu_devices(workers),
        method=method,
        workers=workers,
        steps=args.steps,
      )
      for method in ("rbd", "sgd")
      for workers in COST_WORKERS
    ]
    results["cost"] = rows
    print("\nFC on MNIST shapes, batch 32 per worker, RBD d = 250, virtual CPU devices\n")
    print(cost_table(rows))
  if args.what in ("accuracy", "all"):
    rows = [
      child_process.run(
        child_accuracy,
        env=child_process.cpu_devices(workers),
        workers=workers,
        seed=int(seed),
        images=args.images,
        d=args.d,
        learning_rate=args.learning_rate,
        data_dir=args.data_dir,
      )
      for workers in (1, 8)
      for seed in args.seeds.split(",")
    ]
    results["accuracy"] = rows
    print(
      f"\nFC on MNIST, RBD d = {args.d} per worker, learning rate {args.learning_rate}, "
      f"{args.images:,} images per run\n"
    )
    print(accuracy_table(rows))
  print(f"\nStarted {started}; {os.cpu_count()} CPU cores.")
  if args.json:
    with open(args.json, "w") as f:
      json.dump(results, f, indent=1)


if __name__ == "__main__":
  main()
