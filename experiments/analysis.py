"""The figures that are analyses rather than sweeps: Fig. 2 and Fig. B.8.

* ``landscape`` (Fig. 2): the loss at theta + a * phi along unit random
  directions phi of each distribution, averaged over directions, at several
  epochs of one run. The run is trained to each epoch in turn (raising
  ``train.epochs`` resumes its workdir), and each epoch's curves are kept in
  ``landscape.json`` in the workdir, so a rerun recomputes nothing.
* ``quasi_orthogonality`` (Fig. B.8): the cosine of pairs of random vectors
  from the optimiser's own generator against the dimension.
"""

from __future__ import annotations

import dataclasses
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.flatten_util import ravel_pytree

from experiments import results as results_lib
from experiments import runs as runs_lib
from random_bases import models, train
from random_bases.data import preprocess
from random_bases.method import directions as dirs

LANDSCAPE_FILE = "landscape.json"
# Rows of random vectors generated at once, capped at this many numbers.
MAX_BLOCK_NUMBERS = 1 << 24


def unit_directions(seed: int, count: int, n: int, distribution: str) -> jax.Array:
  """``count`` unit vectors of length ``n`` with ``distribution`` entries: [count, n]."""
  return dirs.materialize_directions(
    jax.random.key(seed), jnp.arange(count), n, distribution=distribution, normalize="norm"
  )


def loss_along(
  config, state, images, labels, directions: jax.Array, alphas: np.ndarray
) -> np.ndarray:
  """Mean cross-entropy at params + a * direction: [len(directions), len(alphas)]."""
  model = models.create_model(config.model, num_classes=10)
  flat, unravel = ravel_pytree(state["params"])
  batch_stats = state["batch_stats"]
  inputs = preprocess.preprocess_eval_batch(jnp.asarray(images), dataset=config.data.dataset)
  labels = jnp.asarray(labels)

  def loss(flat_params):
    variables = {"params": unravel(flat_params)}
    if batch_stats:
      variables["batch_stats"] = batch_stats
    logits = model.apply(variables, inputs, train=False)
    return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()

  along = jax.jit(
    lambda direction: jax.vmap(lambda a: loss(flat + a * direction))(
      jnp.asarray(alphas, jnp.float32)
    )
  )
  return np.stack([np.asarray(along(direction)) for direction in directions])


def _probe_images(config, examples: int):
  """The first ``examples`` images of the held-out split (else the test split)."""
  dataset = train.load_data(config)
  split = next(s for s in ("validation", "heldout", "test") if s in dataset.eval_splits)
  images, labels = dataset.eval_splits[split]
  return images[:examples], labels[:examples], split


def landscape(run: runs_lib.Run, spec: dict, train_fn) -> dict:
  """Per distribution and epoch, the loss along ``spec["directions"]`` directions.

  Returns:
    ``{"alphas": [...], "split": eval split, "loss"|"std": {distribution:
    {epoch: [per alpha]}}}``, the mean and std over directions.
  """
  path = os.path.join(run.workdir, LANDSCAPE_FILE)
  cache = {}
  if os.path.exists(path):
    with open(path) as f:
      cache = json.load(f)
  alphas = np.linspace(-spec["radius"], spec["radius"], spec["points"])
  probe = None
  for epoch in spec["epochs"]:
    if str(epoch) in cache:
      continue
    config = run.config.copy_and_resolve_references()
    config.train.epochs = epoch
    status, result = runs_lib.execute(dataclasses.replace(run, config=config), train_fn)
    if result is None or status["status"] == "stopped":
      raise ValueError(
        f"{run.name} (seed {run.seed}) {status['status']} before epoch "
        f"{epoch}, so its landscape there cannot be probed: {status['reason']}"
      )
    state = result["state"]
    if probe is None:
      probe = _probe_images(config, spec["examples"])
    images, labels, split = probe
    n = sum(x.size for x in jax.tree.leaves(state["params"]))
    cache[str(epoch)] = {"split": split}
    for distribution in spec["distributions"]:
      directions = unit_directions(run.seed, spec["directions"], n, distribution)
      losses = loss_along(config, state, images, labels, directions, alphas)
      cache[str(epoch)][distribution] = {
        "mean": losses.mean(0).tolist(),
        "std": losses.std(0).tolist(),
      }
    with open(path, "w") as f:
      json.dump(cache, f)
  return cache


def quasi_orthogonality(spec: dict) -> dict:
  """Cosines of ``spec["pairs"]`` pairs of unit random vectors per dimension and distribution.

  Returns:
    ``{"dims", "pairs", "mean"|"abs_mean"|"abs_std": {distribution: [per dim]}}``.
  """
  out = {"dims": spec["dims"], "pairs": spec["pairs"], "mean": {}, "abs_mean": {}, "abs_std": {}}
  for distribution in spec["distributions"]:
    for key in ("mean", "abs_mean", "abs_std"):
      out[key][distribution] = []
    for n in spec["dims"]:
      key = jax.random.fold_in(jax.random.key(spec["seed"]), n)
      per_block = max(1, MAX_BLOCK_NUMBERS // (2 * n))
      cosines = []
      for first in range(0, spec["pairs"], per_block):
        rows = jnp.arange(2 * first, 2 * min(spec["pairs"], first + per_block))
        vectors = dirs.materialize_directions(
          key, rows, n, distribution=distribution, normalize="norm"
        )
        cosines.append(np.asarray(jnp.sum(vectors[0::2] * vectors[1::2], axis=1)))
      cosines = np.concatenate(cosines).astype(np.float64)
      out["mean"][distribution].append(float(cosines.mean()))
      out["abs_mean"][distribution].append(float(np.abs(cosines).mean()))
      out["abs_std"][distribution].append(float(np.abs(cosines).std()))
  return out


def analyse(report: dict, runs: list[runs_lib.Run], *, train_fn, header, results_dir) -> list[str]:
  """Runs the report's analysis and writes its results file and plot."""
  from experiments import plots

  os.makedirs(results_dir, exist_ok=True)
  spec = report["analysis"]
  # The landscape trains its runs; probe first so that the header's code and
  # wall time of the runs count them.
  per_seed = [landscape(run, spec, train_fn) for run in runs] if spec["kind"] == "landscape" else []
  lines = results_lib.head(report, header, [runs_lib.run_result(r).status for r in runs])
  lines.append("")
  plot_path = os.path.join(results_dir, f"{report['name']}_{spec['kind']}.png")
  if spec["kind"] == "orthogonality":
    data = quasi_orthogonality(spec)
    lines += [
      "| n | distribution | mean cosine | mean abs cosine | std abs cosine | sqrt(2 / (pi n)) |",
      "|" + " --- |" * 6,
    ]
    for distribution in spec["distributions"]:
      for i, n in enumerate(data["dims"]):
        lines.append(
          f"| {n:,} | {distribution} | {data['mean'][distribution][i]:+.5f} | "
          f"{data['abs_mean'][distribution][i]:.5f} | "
          f"{data['abs_std'][distribution][i]:.5f} | "
          f"{np.sqrt(2 / (np.pi * n)):.5f} |"
        )
    plots.orthogonality(data, plot_path)
  elif spec["kind"] == "landscape":
    alphas = np.linspace(-spec["radius"], spec["radius"], spec["points"])
    data = {"alphas": alphas.tolist(), "directions": spec["directions"], "loss": {}, "std": {}}
    for distribution in spec["distributions"]:
      data["loss"][distribution], data["std"][distribution] = {}, {}
      for epoch in spec["epochs"]:
        curves = [seed[str(epoch)][distribution] for seed in per_seed]
        data["loss"][distribution][epoch] = np.mean([c["mean"] for c in curves], 0).tolist()
        data["std"][distribution][epoch] = np.mean([c["std"] for c in curves], 0).tolist()
    shown = sorted({0, len(alphas) // 4, len(alphas) // 2, 3 * len(alphas) // 4, len(alphas) - 1})
    split = per_seed[0][str(spec["epochs"][0])]["split"]
    lines += [
      f"Mean loss over {spec['directions']} unit directions and "
      f"{len(runs)} seed(s), {spec['examples']} images of the {split} split:",
      "",
      "| distribution | epoch | " + " | ".join(f"a = {alphas[i]:+.2f}" for i in shown) + " |",
      "|" + " --- |" * (2 + len(shown)),
    ]
    for distribution in spec["distributions"]:
      for epoch in spec["epochs"]:
        loss = data["loss"][distribution][epoch]
        lines.append(
          f"| {distribution} | {epoch} | " + " | ".join(f"{loss[i]:.4f}" for i in shown) + " |"
        )
    plots.landscape(data, plot_path)
  else:
    raise ValueError(f"analysis kind {spec['kind']!r} is unknown; known: landscape, orthogonality")
  if report.get("notes"):
    lines += ["", "Notes:", ""] + [f"- {n}" for n in report["notes"]]
  lines += ["", f"![{os.path.basename(plot_path)}]({os.path.basename(plot_path)})", ""]
  path = os.path.join(results_dir, f"{report['name']}.md")
  with open(path, "w") as f:
    f.write("\n".join(lines))
  return [path, plot_path]
