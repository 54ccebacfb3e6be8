"""Is a structured basis as good a search space as i.i.d. normal directions?

RBD with dense normal, SRHT and Fastfood bases (unit directions, one
compartment) at d = 250 and d = 10,000 on FC-MNIST, CNN-Fashion-MNIST and
CNN-CIFAR-10, at a reduced scale that fits about half an hour of 2 CPU cores:
``--steps`` training steps at d = 250, ``--large-steps`` at d = 10,000 (a
dense step there costs about a second), batch 32, no augmentation, test
accuracy on the first ``--eval-images`` test images, ``--seeds`` seeds.

Learning rates: one rate per (task, d), shared by the bases. For unit
directions E[P P^T] = (d/D) I for all three, so at the same rate their
expected steps are equal and they differ only in the noise of P P^T g.
Seed 0 runs every rate of a grid (powers of 2, ``GRIDS``) with every
basis at d = 250, and with the structured bases at d = 10,000 (dense ones
cost too much there); the shared rate minimises the bases' mean training loss
over the last fifth of the steps, and each basis's own best rate is reported
beside it. Seed 0's run at the shared rate is reused; seeds 1, 2 ... run at
it only. SGD at the library's tuned or Table 4 rate gives the scale.

Per step it records the training loss and the whole-vector cosine of the
update P P^T g with the gradient g (the gradient correlation). To first
order, cos = sqrt(d/D) / sqrt(1 + c d/D): E[g^T P P^T g] = (d/D) |g|^2 for
all three, while E|P P^T g|^2 = (d/D) |g|^2 (1 + c d/D) grows with the
overlap of the directions, c = 0 for orthogonal rows (SRHT), 1 for
independent ones (dense: pairwise cosines of variance 1/D) and about 2 for
Fastfood's (variance 2/N). The report's "model" column is this value.

  python -m experiments.structured_bases --mnist ../shared/datasets/mnist \\
      --fashion-mnist /usr/share/datasets/fashion-mnist \\
      --cifar10 ../shared/datasets/cifar10-jpeg/cifar10-jpeg.tar.gz \\
      --out results/structured_bases.md

writes the Markdown report, ``<out>.json`` (every run) and ``<out>.png``;
``--replot`` rewrites the report and the plot from ``<out>.json``.
"""

from __future__ import annotations

import argparse
import datetime
import functools
import json
import math
import os
import platform
import statistics
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

import random_bases as rb
from configs import learning_rates
from random_bases import data as data_lib
from random_bases import models
from random_bases.data import preprocess

TASKS = {  # name: (model, dataset, data source)
  "FC-MNIST": ("fc", "mnist", "files"),
  "CNN-FMNIST": ("cnn", "fashion_mnist", "files"),
  "CNN-CIFAR10": ("cnn", "cifar10", "folder"),
}
STRUCTURES = ("dense", "srht", "fastfood")
# c in the first-order gradient correlation sqrt(d/D) / sqrt(1 + c d/D).
OVERLAP = {"srht": 0.0, "dense": 1.0, "fastfood": 2.0}
DIMS = (250, 10_000)
# The log2 rate grids per d: short runs favour larger rates than Table 4's
# 100 epochs (results/table4_coarse.md tuned 2^4 for FC and CNN on MNIST at 200
# steps); the update grows with d (Fig. B.7 lowers the rate with d).
GRIDS = {250: (2, 3, 4, 5), 10_000: (0, 1, 2)}
BATCH = 32
READING = "## Reading"
CHECK_EVERY = 10  # steps between checks for divergence


def load(task: str, args) -> dict:
  model_name, dataset, source = TASKS[task]
  data_dir = {"mnist": args.mnist, "fashion_mnist": args.fashion_mnist, "cifar10": args.cifar10}
  data = data_lib.load_dataset(dataset, source=source, data_dir=data_dir[dataset], holdout="none")
  test_images, test_labels = data.eval_splits["test"]
  return {
    "model": model_name,
    "dataset": dataset,
    "source": data.source,
    "train_images": jnp.asarray(data.train_images),
    "train_labels": jnp.asarray(data.train_labels),
    "test_images": jnp.asarray(test_images[: args.eval_images]),
    "test_labels": jnp.asarray(test_labels[: args.eval_images]),
    "image_shape": tuple(data.train_images.shape[1:]),
  }


def train(task_data: dict, *, structure: str | None, d: int, lr: float, seed: int, steps: int):
  """One run: per-step losses and gradient correlations, final test accuracy."""
  dataset = task_data["dataset"]
  model = models.create_model(task_data["model"])
  params = models.init_variables(
    model, key=jax.random.key(seed), input_shape=task_data["image_shape"]
  )["params"]
  train_x, train_y = task_data["train_images"], task_data["train_labels"]
  if structure is None:  # SGD
    tx = optax.identity()
  else:
    tx = rb.scale_by_random_bases(
      d, seed=jax.random.fold_in(jax.random.key(seed), 7), structure=structure
    )
  opt_state = tx.init(params)
  batch_key = jax.random.fold_in(jax.random.key(seed), 1)

  def loss_fn(p, images, labels):
    logits = model.apply({"params": p}, images, train=True)
    return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()

  # One jitted step per dispatch: XLA:CPU runs convolutions inside a loop
  # body (lax.scan) several times slower (BENCHMARKS.md, "Through the trainer").
  # The data are arguments: captured, they would be compiled in as constants.
  @functools.partial(jax.jit, donate_argnums=(0, 1))
  def one_step(p, s, t, train_x, train_y):
    index = jax.random.randint(jax.random.fold_in(batch_key, t), (BATCH,), 0, len(train_y))
    images = preprocess.preprocess_eval_batch(train_x[index], dataset=dataset)
    loss, g = jax.value_and_grad(loss_fn)(p, images, train_y[index])
    u, s = tx.update(g, s)
    flat_u, flat_g = (jnp.concatenate([jnp.ravel(x) for x in jax.tree.leaves(v)]) for v in (u, g))
    cos = jnp.dot(flat_u, flat_g) / (jnp.linalg.norm(flat_u) * jnp.linalg.norm(flat_g) + 1e-30)
    p = jax.tree.map(lambda a, b: a - lr * b, p, u)
    return p, s, loss, cos

  losses, cosines = [], []
  began = time.perf_counter()
  for start in range(0, steps, CHECK_EVERY):
    chunk = []
    for t in range(start, start + CHECK_EVERY):
      step = jnp.asarray(t, jnp.int32)
      params, opt_state, loss, cos = one_step(params, opt_state, step, train_x, train_y)
      chunk.append((loss, cos))
    losses += [float(loss) for loss, _ in chunk]
    cosines += [float(cos) for _, cos in chunk]
    if not np.isfinite(losses[-1]):
      break
  seconds = time.perf_counter() - began
  images = preprocess.preprocess_eval_batch(task_data["test_images"], dataset=dataset)
  logits = jax.jit(lambda p, x: model.apply({"params": p}, x, train=False))(params, images)
  accuracy = float(jnp.mean(jnp.argmax(logits, -1) == task_data["test_labels"]))
  tail = losses[-max(1, len(losses) // 5) :]
  return {
    "losses": losses,
    "cosines": cosines,
    "final_loss": statistics.fmean(tail) if np.all(np.isfinite(tail)) else math.inf,
    "test_accuracy": accuracy if np.isfinite(losses[-1]) else math.nan,
    "seconds": seconds,
  }


def run_all(args) -> dict:
  seeds = [int(s) for s in args.seeds.split(",")]
  runs = []

  def record(task, structure, d, log2, seed, steps, task_data):
    result = train(task_data, structure=structure, d=d, lr=2.0**log2, seed=seed, steps=steps)
    row = {
      "task": task,
      "structure": structure or "sgd",
      "d": d,
      "log2_lr": log2,
      "seed": seed,
      "steps": steps,
      **result,
    }
    runs.append(row)
    print(
      f"{task} {row['structure']} d={d} lr=2^{log2} seed={seed}: loss {row['final_loss']:.3f} "
      f"acc {row['test_accuracy']:.3f} cos {statistics.fmean(row['cosines']):.3f} "
      f"({row['seconds']:.0f} s)",
      flush=True,
    )
    return row

  chosen = {}
  for task in args.tasks.split(","):
    task_data = load(task, args)
    model_name, dataset, _ = TASKS[task]
    sgd_rate = learning_rates.rate(model_name, dataset, "sgd")
    for seed in seeds:
      record(task, None, 0, sgd_rate.log2, seed, args.steps, task_data)
    for d in DIMS:
      steps = args.steps if d == 250 else args.large_steps
      swept = ("dense", "srht", "fastfood") if d == 250 else ("srht", "fastfood")
      grid = GRIDS[d]
      sweep = {
        (s, g): record(task, s, d, g, seeds[0], steps, task_data) for s in swept for g in grid
      }
      mean_loss = {g: statistics.fmean(sweep[s, g]["final_loss"] for s in swept) for g in grid}
      best = min(grid, key=lambda g: mean_loss[g])
      own = {s: min(grid, key=lambda g, s=s: sweep[s, g]["final_loss"]) for s in swept}
      chosen[task, d] = {"log2_lr": best, "grid": grid, "mean_loss": mean_loss, "own_best": own}
      print(f"{task} d={d}: shared rate 2^{best}; each basis's own best {own}", flush=True)
      for structure in STRUCTURES:
        for seed in seeds:
          if structure in swept and seed == seeds[0]:
            continue  # the sweep's run
          record(task, structure, d, best, seed, steps, task_data)
  return {"runs": runs, "chosen": {f"{t}|{d}": v for (t, d), v in chosen.items()}}


# ----------------------------------------------------------------------------
# The report.


def _mean_std(values, digits: int = 3) -> str:
  values = list(values)
  if len(values) == 1:
    return f"{values[0]:.{digits}f}"
  return f"{statistics.fmean(values):.{digits}f} ± {statistics.stdev(values):.{digits}f}"


def final_runs(results: dict, task: str, structure: str, d: int) -> list[dict]:
  if structure == "sgd":
    return [r for r in results["runs"] if r["task"] == task and r["structure"] == "sgd"]
  rate = results["chosen"][f"{task}|{d}"]["log2_lr"]
  return [
    r
    for r in results["runs"]
    if r["task"] == task and r["structure"] == structure and r["d"] == d and r["log2_lr"] == rate
  ]


def plot(results: dict, tasks: list[str], path: str) -> None:
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  colours = {"dense": "tab:blue", "srht": "tab:orange", "fastfood": "tab:green", "sgd": "0.5"}
  fig, axes = plt.subplots(3, len(tasks), figsize=(4.2 * len(tasks), 10), squeeze=False)
  for col, task in enumerate(tasks):
    for row, d in enumerate(DIMS):
      ax = axes[row, col]
      for structure in STRUCTURES + ("sgd",):
        runs = final_runs(results, task, structure, d)
        if not runs:
          continue
        steps = min(r["steps"] for r in runs)
        curves = np.array([r["losses"][:steps] for r in runs], np.float64)
        kernel = np.ones(10) / 10  # 10-step moving average of the batch loss
        smooth = np.array([np.convolve(c, kernel, mode="valid") for c in curves])
        x = np.arange(smooth.shape[1]) + 10
        mean, std = smooth.mean(0), smooth.std(0)
        ax.plot(x, mean, color=colours[structure], label=structure)
        ax.fill_between(x, mean - std, mean + std, color=colours[structure], alpha=0.2)
      ax.set_title(f"{task}, d = {d:,}")
      ax.set_xlabel("step")
      ax.set_ylabel("training loss (10-step mean)")
      ax.legend(fontsize=8)
    ax = axes[2, col]
    width = 0.25
    for k, structure in enumerate(STRUCTURES):
      means = [
        statistics.fmean(
          statistics.fmean(r["cosines"]) for r in final_runs(results, task, structure, d)
        )
        for d in DIMS
      ]
      ax.bar(
        np.arange(len(DIMS)) + (k - 1) * width,
        means,
        width,
        color=colours[structure],
        label=structure,
      )
    ax.set_xticks(np.arange(len(DIMS)), [f"d = {d:,}" for d in DIMS])
    ax.set_ylabel("gradient correlation (mean cosine)")
    ax.set_title(f"{task}: cos(P P^T g, g)")
    ax.legend(fontsize=8)
  fig.tight_layout()
  fig.savefig(path, dpi=110)


def report(results: dict, args, path: str) -> None:
  tasks = args.tasks.split(",")
  lines = [
    "# Structured random bases: SRHT and Fastfood against dense normal directions",
    "",
    f"Written by `experiments/structured_bases.py` on {results['date']} ({results['machine']}).",
    "",
    "```bash",
    f"python -m experiments.structured_bases {' '.join(results['argv'])}",
    "```",
    "",
  ]
  lines += ["## Final runs (the shared rate; mean ± std over seeds)", ""]
  lines += [
    "| task | d | basis | log2 rate | steps | test accuracy % | training loss (last fifth) "
    "| gradient correlation | model | s per run |",
    "|" + " --- |" * 10,
  ]
  for task in tasks:
    sizes = results["sizes"][task]
    for d in DIMS:
      for structure in STRUCTURES:
        runs = final_runs(results, task, structure, d)
        lines.append(
          f"| {task} | {d:,} | {structure} | {runs[0]['log2_lr']} | {runs[0]['steps']} "
          f"| {_mean_std([100 * r['test_accuracy'] for r in runs], 1)} "
          f"| {_mean_std([r['final_loss'] for r in runs])} "
          f"| {_mean_std([statistics.fmean(r['cosines']) for r in runs])} "
          f"| {math.sqrt(d / sizes / (1 + OVERLAP[structure] * d / sizes)):.3f} "
          f"| {statistics.fmean(r['seconds'] for r in runs):.0f} |"
        )
    runs = final_runs(results, task, "sgd", 0)
    lines.append(
      f"| {task} | D = {sizes:,} | SGD | {runs[0]['log2_lr']} | {runs[0]['steps']} "
      f"| {_mean_std([100 * r['test_accuracy'] for r in runs], 1)} "
      f"| {_mean_std([r['final_loss'] for r in runs])} | 1 | 1 "
      f"| {statistics.fmean(r['seconds'] for r in runs):.0f} |"
    )
  lines += ["", "## Learning-rate sweep (seed 0, training loss over the last fifth)", ""]
  lines += ["| task | d | basis | log2 rate: loss | own best |", "|" + " --- |" * 5]
  for task in tasks:
    for d in DIMS:
      chosen = results["chosen"][f"{task}|{d}"]
      for structure, own in chosen["own_best"].items():
        cells = []
        for g in chosen["grid"]:
          run = next(
            r
            for r in results["runs"]
            if r["task"] == task
            and r["structure"] == structure
            and r["d"] == d
            and r["log2_lr"] == g
            and r["seed"] == 0
          )
          mark = " (shared)" if g == chosen["log2_lr"] else ""
          cells.append(f"{g}: {run['final_loss']:.3f}{mark}")
        lines.append(f"| {task} | {d:,} | {structure} | " + ", ".join(cells) + f" | {own} |")
  lines.append("")
  # A hand-written "## Reading" section at the end of an earlier report is kept.
  if os.path.exists(path):
    with open(path) as f:
      _, marker, reading = f.read().partition(READING)
    lines += [marker + reading] if marker else []
  with open(path, "w") as f:
    f.write("\n".join(lines))


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--mnist", help="MNIST IDX directory")
  parser.add_argument("--fashion-mnist", help="Fashion-MNIST IDX directory")
  parser.add_argument("--cifar10", help="CIFAR-10 image folder or .tar.gz")
  parser.add_argument("--tasks", default=",".join(TASKS), help="comma-separated subset")
  parser.add_argument("--seeds", default="0,1,2")
  parser.add_argument("--steps", type=int, default=250, help="training steps at d = 250")
  parser.add_argument("--large-steps", type=int, default=50, help="training steps at d = 10,000")
  parser.add_argument("--eval-images", type=int, default=2000)
  parser.add_argument("--out", default="results/structured_bases.md")
  parser.add_argument("--replot", action="store_true", help="only rewrite the report and plot")
  args = parser.parse_args(argv)
  stem = os.path.splitext(args.out)[0]
  if args.replot:
    with open(stem + ".json") as f:
      results = json.load(f)
    args.tasks = ",".join(results["sizes"])
    report(results, args, args.out)
    plot(results, args.tasks.split(","), stem + ".png")
    return
  if not (args.mnist and args.fashion_mnist and args.cifar10):
    parser.error("--mnist, --fashion-mnist and --cifar10 are required (the data sets' folders)")
  if args.steps % CHECK_EVERY or args.large_steps % CHECK_EVERY:
    parser.error(f"--steps and --large-steps must be multiples of {CHECK_EVERY}")
  results = run_all(args)
  results["argv"] = sys.argv[1:] if argv is None else argv
  results["date"] = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
  cores = os.cpu_count()
  results["machine"] = f"{cores} CPU cores, {platform.machine()}, jax {jax.__version__}"
  results["sizes"] = {}
  for task in args.tasks.split(","):
    model_name, dataset, _ = TASKS[task]
    shape = {"mnist": (28, 28, 1), "fashion_mnist": (28, 28, 1), "cifar10": (32, 32, 3)}[dataset]
    variables = jax.eval_shape(
      lambda m=model_name, s=shape: models.init_variables(
        models.create_model(m), key=jax.random.key(0), input_shape=s
      )
    )
    results["sizes"][task] = models.count_params(variables["params"])
  with open(stem + ".json", "w") as f:
    json.dump(results, f)
  report(results, args, args.out)
  plot(results, args.tasks.split(","), stem + ".png")
  print(f"wrote {args.out}, {stem}.json, {stem}.png")


if __name__ == "__main__":
  main()
