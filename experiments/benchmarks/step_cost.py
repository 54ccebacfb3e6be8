"""The cost of one training step with each transform, against SGD's, on the paper's models.

One jitted step (gradient, optimiser update, parameter update) of RBD, FPD or
SGD at batch 32 on random inputs, interleaved with SGD steps of the same
model in the same process; the tables of these rows, their spread over runs
and the issue's targets on the CNN. ``experiments/benchmark.py``'s docstring
describes the columns.
"""

from __future__ import annotations

import dataclasses
import statistics
import time

from experiments.benchmarks import common

MODELS = ("fc", "cnn", "resnet8")
MODEL_TITLES = {
  "fc": "FC on MNIST shapes (28x28x1)",
  "cnn": "CNN on CIFAR-10 shapes (32x32x3)",
  "resnet8": "ResNet-8 on CIFAR-10 shapes (32x32x3)",
}
INPUT_SHAPES = {"fc": (28, 28, 1), "cnn": (32, 32, 3), "resnet8": (32, 32, 3)}
BATCH = 32
# Only the speed matters here; the rates just keep the parameters finite.
LEARNING_RATES = {"sgd": 0.01, "rbd": 0.125, "fpd": 0.125}
# SGD steps timed after each timed step of the method.
SGD_STEPS_PER_ROUND = 5
DEFAULT_DIMS = "250,10000"


@dataclasses.dataclass(frozen=True)
class Config:
  """One row of a table: what ``sgd``, ``rbd`` or ``fpd`` is built with.

  ``None`` for generator, compartments and allocation means the library's
  default: the argument is not passed.
  """

  model: str
  method: str  # "sgd", "rbd" or "fpd"
  d: int = 0
  distribution: str = "normal"
  generator: str | None = None
  compartments: str | None = None
  allocation: str | None = None
  structure: str | None = None

  def basis_kwargs(self) -> dict:
    kwargs = {"distribution": self.distribution}
    for name in ("generator", "compartments", "allocation", "structure"):
      if getattr(self, name) is not None:
        kwargs[name] = getattr(self, name)
    return kwargs


def configs_for(model: str, dims: list[int], *, quick: bool) -> list[Config]:
  """The rows of one model's table."""
  rows = [Config(model, "sgd")] + [Config(model, "rbd", d) for d in dims]
  if quick:
    return rows
  rows += [
    Config(model, "rbd", 250, generator="threefry"),  # the reference generator
    Config(model, "rbd", 250, distribution="uniform"),
    Config(model, "rbd", 250, distribution="bernoulli"),
    Config(model, "fpd", 250),
  ]
  if model == "resnet8":
    # Table 3: one compartment per tensor, d_k = max(ceil(n_k / 10), 10): 7,982.
    rows.append(Config(model, "rbd", 10, compartments="leaf", allocation="compression"))
  else:
    # Fig. B.10: one compartment per layer, 250 directions each.
    rows.append(Config(model, "rbd", 250, compartments="module", allocation="fixed"))
  return rows


def measure(config: dict, *, steps: int, warmup: int) -> dict:
  """Times the configuration's step and the SGD step, interleaved.

  ``config`` holds a ``Config``'s fields (``dataclasses.asdict``), so that a
  child process (``child_process.run``) can be given it.
  """
  import inspect

  import jax
  import optax

  import random_bases as rb
  from random_bases import models

  config = Config(**config)
  model = models.create_model(config.model)
  shape = INPUT_SHAPES[config.model]
  variables = models.init_variables(model, key=jax.random.key(0), input_shape=shape)
  params = variables["params"]
  model_state = {k: v for k, v in variables.items() if k != "params"}  # batch_stats
  images = jax.random.normal(jax.random.key(1), (BATCH,) + shape)
  labels = jax.random.randint(jax.random.key(2), (BATCH,), 0, 10)

  def loss_fn(params, model_state, images, labels):
    if model_state:
      logits, new_state = model.apply(
        {"params": params, **model_state}, images, train=True, mutable=list(model_state)
      )
    else:
      logits, new_state = model.apply({"params": params}, images, train=True), {}
    loss = optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()
    return loss, new_state

  def timed_steps(tx):
    """A function that runs one training step with ``tx`` and returns its time."""

    @jax.jit
    def train_step(params, opt_state, model_state, images, labels):
      (loss, new_state), grads = jax.value_and_grad(loss_fn, has_aux=True)(
        params, model_state, images, labels
      )
      updates, opt_state = tx.update(grads, opt_state, params)
      return optax.apply_updates(params, updates), opt_state, new_state, loss

    carry = [params, tx.init(params), model_state]

    def run_once() -> float:
      start = time.perf_counter()
      *new_carry, loss = train_step(*carry, images, labels)
      jax.block_until_ready((new_carry, loss))
      carry[:] = new_carry
      return time.perf_counter() - start

    return run_once

  sgd = method = timed_steps(optax.sgd(LEARNING_RATES["sgd"]))
  directions = samples_per_step = 0
  generator = None
  if config.method != "sgd":
    factory = rb.rbd if config.method == "rbd" else rb.fpd
    kwargs = config.basis_kwargs()
    method = timed_steps(factory(LEARNING_RATES[config.method], config.d, **kwargs))
    layout = rb.make_layout(
      params,
      d=config.d,
      compartments=kwargs.get("compartments"),
      allocation=kwargs.get("allocation", "proportional"),
    )
    directions = sum(c.dim for c in layout.compartments)
    if config.structure is None:
      samples_per_step = sum(c.dim * c.size for c in layout.compartments)
    default = inspect.signature(rb.scale_by_random_bases).parameters["generator"].default
    generator = config.generator or default

  for _ in range(warmup):
    method()
    sgd()
  # Interleaved rounds; SGD steps are cheap, so each round times several,
  # which steadies the median of the baseline (0.3 ms for FC).
  sgd_times, method_times = [], []
  for _ in range(steps):
    method_times.append(method())
    sgd_times += [sgd() for _ in range(SGD_STEPS_PER_ROUND)]

  step_s, sgd_s = statistics.median(method_times), statistics.median(sgd_times)
  return {
    **dataclasses.asdict(config),
    "generator_used": generator,
    "num_params": sum(x.size for x in jax.tree.leaves(params)),
    "directions": directions,
    "step_ms": 1e3 * step_s,
    "step_ms_all": [1e3 * t for t in method_times],
    "sgd_ms": 1e3 * sgd_s,
    "ratio": step_s / sgd_s,
    "images_per_s": BATCH / step_s,
    "samples_per_s": samples_per_step / step_s if config.structure is None else None,
    "peak_rss_mib": common.peak_rss_mib(),
  }


def _method_label(row: dict) -> str:
  method = row["method"]
  if row.get("structure"):
    method += f" {row['structure']}"
  if row["compartments"]:
    return f"{method} ({row['compartments']}, {row['allocation']})"
  return method


def _directions_label(row: dict) -> str:
  if row["compartments"]:
    return f"{row['directions']:,} (d={row['d']})"
  return f"{row['directions']:,}"


def model_table(rows: list[dict]) -> str:
  lines = [
    "| method | d | distribution | generator | step ms | ratio to SGD | images/s "
    "| random samples/s | peak RSS MiB |",
    "|" + " --- |" * 9,
  ]
  for r in rows:
    if r["method"] == "sgd":
      lines.append(
        f"| sgd | D = {r['num_params']:,} | — | — | {r['step_ms']:.2f} | 1.00 "
        f"| {r['images_per_s']:,.0f} | — | {r['peak_rss_mib']:.0f} |"
      )
      continue
    generator = r["generator_used"] + ("" if r["generator"] else " (default)")
    distribution = "—" if r.get("structure") else r["distribution"]
    samples = "—" if r["samples_per_s"] is None else f"{r['samples_per_s'] / 1e6:,.0f} M"
    lines.append(
      f"| {_method_label(r)} | {_directions_label(r)} | {distribution} "
      f"| {generator} | {r['step_ms']:.1f} | {r['ratio']:.2f} "
      f"| {r['images_per_s']:,.1f} | {samples} | {r['peak_rss_mib']:.0f} |"
    )
  return "\n".join(lines)


def spread_table(runs: list[list[dict]]) -> str:
  """Every configuration's ratio, images/s and peak RSS in each run, and spreads."""
  lines = [
    "| model | method | d | distribution | generator | ratio to SGD per run "
    "| spread | images/s per run | spread | peak RSS MiB per run |",
    "|" + " --- |" * 10,
  ]
  fields = [field.name for field in dataclasses.fields(Config)]
  by_config: dict[tuple, list[dict]] = {}
  for run in runs:
    for row in run:
      by_config.setdefault(tuple(row.get(k) for k in fields), []).append(row)
  for rows in by_config.values():
    r = rows[0]
    if r["method"] == "sgd":
      continue
    ratios = [x["ratio"] for x in rows]
    speeds = [x["images_per_s"] for x in rows]
    memory = [x["peak_rss_mib"] for x in rows]
    lines.append(
      f"| {r['model']} | {_method_label(r)} | {_directions_label(r)} | {r['distribution']} "
      f"| {r['generator_used']} | {' / '.join(f'{x:.2f}' for x in ratios)} "
      f"| {common.spread(ratios)} | {' / '.join(f'{x:,.1f}' for x in speeds)} "
      f"| {common.spread(speeds)} | {' / '.join(f'{x:.0f}' for x in memory)} |"
    )
  return "\n".join(lines)


def target_verdicts(rows: list[dict]) -> list[str]:
  """The targets of the issue, on the CNN rows with the library's defaults."""

  def default_rbd(d):
    return next(
      (
        r
        for r in rows
        if r["model"] == "cnn"
        and r["method"] == "rbd"
        and r["d"] == d
        and r["distribution"] == "normal"
        and r["generator"] is None
        and r["compartments"] is None
        and r.get("structure") is None
      ),
      None,
    )

  small, large = default_rbd(250), default_rbd(10_000)
  lines = []
  if small:
    lines.append(
      f"CNN, d = 250: RBD step / SGD step = {small['ratio']:.2f} (target <= 4): "
      + common.verdict(small["ratio"] <= 4)
    )
  if large:
    lines.append(
      f"CNN, d = 10,000: {large['images_per_s']:.1f} images/s (target >= 8): "
      + common.verdict(large["images_per_s"] >= 8)
    )
  if small and large:
    growth = large["peak_rss_mib"] / small["peak_rss_mib"]
    lines.append(
      f"CNN, peak RSS at d = 10,000 / at d = 250 = {large['peak_rss_mib']:.0f} / "
      f"{small['peak_rss_mib']:.0f} MiB = {growth:.2f} (target <= 1.3): "
      + common.verdict(growth <= 1.3)
    )
  return lines
