"""Step time, throughput and peak memory of random bases descent against SGD.

Times one jitted training step (gradient, optimiser update, parameter update)
of RBD, FPD and SGD on the paper's networks with random inputs, batch 32, and
the library's default settings unless a row says otherwise:

  python experiments/benchmark.py               # FC-MNIST, CNN, ResNet-8 (~3.5 min, 2 cores)
  python experiments/benchmark.py --runs 2      # everything twice, and the spread (~7 min)
  python experiments/benchmark.py --quick       # CNN at d = 250 and 10,000 only (~30 s)
  python experiments/benchmark.py --models cnn --dims 250,1000,10000 --steps 7
  python experiments/benchmark.py --structure srht,fastfood   # structured bases (~8 min)

With ``--structure`` the tables hold SGD, dense RBD at d = 250 for
reference, and RBD with each structured basis at --dims (default 250, 10,000
and 100,000) on FC and the CNN (one compartment) and, on ResNet-8, with
per-tensor compartments ("leaf") at compression factors c = 100, 10 and 1
(d = 1,018, 7,982 and every one of the 78,330 directions); plus a table of
the Walsh-Hadamard transform (``--hadamard``).

Every configuration (model, method, d, ...) runs in a fresh subprocess, so its
peak resident memory (ru_maxrss) is its own. Each subprocess also times the
SGD step of the same model, interleaved with the method's steps (5 SGD steps
after each), and reports the ratio of the two medians: ratios are taken
within one process, so they hold when the machine's speed drifts between
processes.

Columns: step ms (median over --steps timed steps after --warmup steps, each
ended by block_until_ready); ratio to SGD (that median / the SGD step's
median, same process); images/s (32 / step); random samples/s (random
numbers drawn per step, sum over compartments of d_k n_k, / step; "—" for
structured bases, which draw O(N) numbers a step); peak RSS (MiB, the whole
process: Python, the runtime, compiled programs, buffers).

The generator table times the inner loop alone on the CNN's D = 122,570:
"generate" draws blocks of directions and sums them; "fused" draws them and
computes c = Phi g and u = Phi^T c on each block, as the optimiser does.

The Hadamard table times ``structured.hadamard_transform`` (a Kronecker
factorisation into matmuls of at most 64 x 64) against a butterfly of log2 N
sum-and-difference stages written here, alone on a vector of N = 2^17 and
inside a Fastfood basis's c = Phi g and u = Phi^T c on the CNN's 122,570
parameters (four transforms; the butterfly is patched in for its row).
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import math
import os
import platform
import resource
import statistics
import subprocess
import sys
import time

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
# The generator table: the CNN's D, and enough directions for ~30 blocks.
GENERATOR_N, GENERATOR_DIM = 122_570, 512


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


STRUCTURED_DIMS = "250,10000,100000"
# ResNet-8's structured rows: per-tensor compartments at these compression
# factors (d = 1,018, 7,982 and 78,330, Table 3's rule).
RESNET8_COMPRESSIONS = (100, 10, 1)


def structured_configs_for(model: str, dims: list[int], structures: list[str]) -> list[Config]:
  """The rows of one model's table of structured bases."""
  rows = [Config(model, "sgd"), Config(model, "rbd", 250)]
  for structure in structures:
    if model == "resnet8":
      rows += [
        Config(model, "rbd", c, compartments="leaf", allocation="compression", structure=structure)
        for c in RESNET8_COMPRESSIONS
      ]
    else:
      rows += [Config(model, "rbd", d, structure=structure) for d in dims]
  return rows


# ----------------------------------------------------------------------------
# Child processes: one configuration, or the generator table.


def measure(config: Config, *, steps: int, warmup: int) -> dict:
  """Times the configuration's step and the SGD step, interleaved."""
  import inspect

  import jax
  import optax

  import random_bases as rb
  from random_bases import models

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
    "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,  # KiB
  }


# The end-to-end rows: the paper's model/data pairs through the trainer.
END_TO_END = {"fc": "mnist", "cnn": "cifar10", "resnet8": "cifar10"}
# Steps per epoch through the trainer: about this many seconds of steady
# state at the bare step's speed, within these bounds.
END_TO_END_SECONDS, END_TO_END_MIN_STEPS, END_TO_END_MAX_STEPS = 4.0, 40, 1500
END_TO_END_EVAL_EXAMPLES = 2000


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


def measure_end_to_end(config: Config, *, data: dict, steps: int, warmup: int) -> dict:
  """The trainer's steady-state step and eval time against the bare jitted ones.

  ``train_and_evaluate`` runs two epochs of about ``END_TO_END_SECONDS`` each on the
  real data set (augmentation on, as the paper trains); the second epoch's
  time per step (compilation is in the first) is compared with the median
  bare step of the same model and method, timed before and after the run in
  this process. Evaluation (``END_TO_END_EVAL_EXAMPLES`` examples per split)
  is timed by ``measure_eval``.
  """
  import tempfile

  from random_bases import config_lib, train

  bare_before = measure(config, steps=steps, warmup=warmup)
  train_config = config_lib.base_config()
  train_config.model = config.model
  train_config.data.dataset = END_TO_END[config.model]
  train_config.data.source = data["source"]
  train_config.data.dir = data["dir"]
  train_config.method = config.method
  if config.method != "sgd":
    train_config.bases.d = config.d
  train_config.learning_rate[config.method] = LEARNING_RATES[config.method]
  train_config.train.epochs = 2
  steps_per_epoch = int(1e3 * END_TO_END_SECONDS / bare_before["step_ms"])
  train_config.train.steps_per_epoch = min(
    max(steps_per_epoch, END_TO_END_MIN_STEPS), END_TO_END_MAX_STEPS
  )
  train_config.train.eval_examples = END_TO_END_EVAL_EXAMPLES
  train_config.train.checkpoint = False
  with tempfile.TemporaryDirectory() as workdir:
    history = train.train_and_evaluate(train_config, workdir)["history"]
  bare_after = measure(config, steps=steps, warmup=warmup)

  epoch = history[-1]
  bare_ms = (bare_before["step_ms"] + bare_after["step_ms"]) / 2
  trainer_ms = 1e3 * epoch["train_seconds"] / train_config.train.steps_per_epoch
  trainer_eval_ms, bare_eval_ms = measure_eval(train_config, repeats=5)
  return {
    **dataclasses.asdict(config),
    "dataset": END_TO_END[config.model],
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
    "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
  }


def measure_generators(*, n: int, dim: int, repeats: int) -> list[dict]:
  """Samples/s of each generator and distribution: generation alone, and fused."""
  import jax
  import jax.numpy as jnp

  from random_bases.method import directions as dirs
  from random_bases.method import projection

  key = dirs.compartment_key(0, step=0, worker=0, compartment=0)
  g = jax.random.normal(jax.random.key(3), (n,))
  results = []
  for generator in dirs.GENERATORS:
    for distribution in dirs.DISTRIBUTIONS:
      basis = projection.Basis(
        key,
        n=n,
        dim=dim,
        distribution=distribution,
        normalize="norm",
        generator=generator,
        block_rows=None,
      )

      @jax.jit
      def generate(key, basis=basis):
        def body(total, b):
          rows = b * basis.block_rows + jnp.arange(basis.block_rows)
          raw = dirs.sample_rows(
            dirs.row_keys(key, rows), n, distribution=basis.distribution, generator=basis.generator
          )
          return total + jnp.sum(raw), None

        return jax.lax.scan(body, 0.0, jnp.arange(basis.num_blocks))[0]

      @jax.jit
      def fused(key, g, basis=basis):
        return projection.project_and_expand(
          dataclasses.replace(basis, key=key), projection.matvec_coordinates(g)
        )[1]

      row = {"generator": generator, "distribution": distribution, "block_rows": basis.block_rows}
      samples = basis.num_blocks * basis.block_rows * n
      for name, fn, args in (("generate", generate, (key,)), ("fused", fused, (key, g))):
        jax.block_until_ready(fn(*args))
        times = []
        for _ in range(repeats):
          start = time.perf_counter()
          jax.block_until_ready(fn(*args))
          times.append(time.perf_counter() - start)
        row[name] = samples / statistics.median(times)
      results.append(row)
  return results


def butterfly_hadamard(x):
  """H x by log2 N stages of sums and differences: the alternative to the library's."""
  import jax.numpy as jnp

  *lead, size = x.shape
  half = 1
  while half < size:
    pairs = x.reshape(*lead, size // (2 * half), 2, half)
    a, b = pairs[..., 0, :], pairs[..., 1, :]
    x = jnp.stack([a + b, a - b], axis=-2).reshape(*lead, size)
    half *= 2
  return x


def measure_hadamard(*, repeats: int) -> list[dict]:
  """ms of the Kronecker and butterfly transforms, alone and inside Fastfood."""
  import jax

  from random_bases.method import directions as dirs
  from random_bases.method import structured

  n = 122_570
  size = structured.padded_size(n)
  x = jax.random.normal(jax.random.key(0), (size,))
  g = x[:n]
  key = dirs.compartment_key(0, step=0, worker=0, compartment=0)
  basis = structured.StructuredBasis(
    key, n=n, dim=250, structure="fastfood", normalize="norm", generator="hash"
  )
  library = structured.hadamard_transform

  def median_ms(fn, arg):
    jax.block_until_ready(fn(arg))
    times = []
    for _ in range(repeats):
      start = time.perf_counter()
      jax.block_until_ready(fn(arg))
      times.append(time.perf_counter() - start)
    return 1e3 * statistics.median(times)

  rows = []
  for name, transform in (("kronecker (library)", library), ("butterfly", butterfly_hadamard)):
    structured.hadamard_transform = transform  # what the basis's products call
    rows.append(
      {
        "method": name,
        "alone_ms": median_ms(jax.jit(transform), x),
        "fastfood_ms": median_ms(jax.jit(basis.project_and_expand), g),
      }
    )
  structured.hadamard_transform = library
  return rows


# ----------------------------------------------------------------------------
# The parent process: run the children, print the tables.


def run_child(payload: dict):
  command = [sys.executable, os.path.abspath(__file__), "--child", json.dumps(payload)]
  done = subprocess.run(command, capture_output=True, text=True, check=False)
  if done.returncode != 0:
    sys.stderr.write(done.stderr)
    raise RuntimeError(f"benchmark child failed: {payload}")
  return json.loads(done.stdout.strip().splitlines()[-1])


def machine_description() -> dict:
  import jax

  cpu = "unknown"
  try:
    with open("/proc/cpuinfo") as f:
      cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
  except (OSError, StopIteration):
    pass
  now = datetime.datetime.now(datetime.UTC)
  return {
    "nproc": os.cpu_count(),
    "cpu": cpu,
    "platform": platform.platform(),
    "python": platform.python_version(),
    "jax": jax.__version__,
    "backend": jax.default_backend(),
    "date": now.strftime("%Y-%m-%d %H:%M UTC"),
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


def generator_table(rows: list[dict]) -> str:
  lines = [
    f"Generators alone: n = {GENERATOR_N:,}, {GENERATOR_DIM} directions, "
    f"default block rows ({rows[0]['block_rows']}).",
    "",
    "| generator | distribution | generate, M samples/s "
    "| fused with c = Phi g and u = Phi^T c, M samples/s |",
    "| --- | --- | --- | --- |",
  ]
  for r in rows:
    lines.append(
      f"| {r['generator']} | {r['distribution']} | {r['generate'] / 1e6:,.0f} "
      f"| {r['fused'] / 1e6:,.0f} |"
    )
  return "\n".join(lines)


def _spread(values: list[float]) -> str:
  return f"{100 * (max(values) - min(values)) / statistics.mean(values):.0f} %"


def spread_table(runs: list[list[dict]]) -> str:
  """Every configuration's ratio, images/s and peak RSS in each run, and spreads."""
  lines = [
    "| model | method | d | distribution | generator | ratio to SGD per run "
    "| spread | images/s per run | spread | peak RSS MiB per run |",
    "|" + " --- |" * 10,
  ]
  by_config: dict[tuple, list[dict]] = {}
  for run in runs:
    for row in run:
      key = tuple(
        row.get(k)
        for k in (
          "model",
          "method",
          "d",
          "distribution",
          "generator",
          "compartments",
          "allocation",
          "structure",
        )
      )
      by_config.setdefault(key, []).append(row)
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
      f"| {_spread(ratios)} | {' / '.join(f'{x:,.1f}' for x in speeds)} "
      f"| {_spread(speeds)} | {' / '.join(f'{x:.0f}' for x in memory)} |"
    )
  return "\n".join(lines)


def generator_spread_table(runs: list[list[dict]]) -> str:
  lines = [
    "| generator | distribution | generate, M samples/s per run | spread "
    "| fused, M samples/s per run | spread |",
    "|" + " --- |" * 6,
  ]
  for i, r in enumerate(runs[0]):
    generate = [run[i]["generate"] / 1e6 for run in runs]
    fused = [run[i]["fused"] / 1e6 for run in runs]
    lines.append(
      f"| {r['generator']} | {r['distribution']} "
      f"| {' / '.join(f'{x:,.0f}' for x in generate)} | {_spread(generate)} "
      f"| {' / '.join(f'{x:,.0f}' for x in fused)} | {_spread(fused)} |"
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
  verdict = lambda ok: "met" if ok else "NOT met"
  lines = []
  if small:
    lines.append(
      f"CNN, d = 250: RBD step / SGD step = {small['ratio']:.2f} (target <= 4): "
      + verdict(small["ratio"] <= 4)
    )
  if large:
    lines.append(
      f"CNN, d = 10,000: {large['images_per_s']:.1f} images/s (target >= 8): "
      + verdict(large["images_per_s"] >= 8)
    )
  if small and large:
    growth = large["peak_rss_mib"] / small["peak_rss_mib"]
    lines.append(
      f"CNN, peak RSS at d = 10,000 / at d = 250 = {large['peak_rss_mib']:.0f} / "
      f"{small['peak_rss_mib']:.0f} MiB = {growth:.2f} (target <= 1.3): " + verdict(growth <= 1.3)
    )
  return lines


def hadamard_table(rows: list[dict]) -> str:
  lines = [
    "Walsh-Hadamard transform, N = 2^17: alone, and in a Fastfood basis's c = Phi g and "
    "u = Phi^T c on n = 122,570 (d = 250, four transforms).",
    "",
    "| method | transform alone, ms | Fastfood project and expand, ms |",
    "| --- | --- | --- |",
  ]
  for r in rows:
    lines.append(f"| {r['method']} | {r['alone_ms']:.2f} | {r['fastfood_ms']:.2f} |")
  return "\n".join(lines)


def structured_verdicts(rows: list[dict]) -> list[str]:
  """The structured bases' targets, on the CNN's rows of each structure."""
  lines = []
  verdict = lambda ok: "met" if ok else "NOT met"
  for structure in sorted({r["structure"] for r in rows if r.get("structure")}):
    by_d = {
      r["d"]: r
      for r in rows
      if r["model"] == "cnn" and r.get("structure") == structure and r["compartments"] is None
    }
    if 250 in by_d:
      ratio = by_d[250]["ratio"]
      lines.append(
        f"CNN {structure}, d = 250: RBD step / SGD step = {ratio:.2f} (target <= 1.2): "
        + verdict(ratio <= 1.2)
      )
    if 10_000 in by_d:
      r = by_d[10_000]
      lines.append(
        f"CNN {structure}, d = 10,000: RBD step / SGD step = {r['ratio']:.2f} (target <= 1.5), "
        f"{r['images_per_s']:.0f} images/s (target > 600): "
        + verdict(r["ratio"] <= 1.5 and r["images_per_s"] > 600)
      )
    if 250 in by_d and 100_000 in by_d:
      small, large = by_d[250]["peak_rss_mib"], by_d[100_000]["peak_rss_mib"]
      lines.append(
        f"CNN {structure}, peak RSS at d = 100,000 / at d = 250 = {large:.0f} / {small:.0f} MiB "
        f"= {large / small:.2f} (target <= 1.3): " + verdict(large / small <= 1.3)
      )
  return lines


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
      f"{r['eval_ratio']:.2f} (eval), target <= 1.25: " + ("met" if ok else "NOT met")
    )
  return lines


def end_to_end_data(args, model: str) -> dict | None:
  """Where the trainer finds the model's data set, or None if not given."""
  if END_TO_END[model] == "mnist":
    return {"source": "files", "dir": args.mnist} if args.mnist else None
  return {"source": "folder", "dir": args.cifar10} if args.cifar10 else None


def main(argv: list[str] | None = None) -> None:
  argv = sys.argv[1:] if argv is None else argv
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument(
    "--models", default=",".join(MODELS), help="comma-separated subset of " + ",".join(MODELS)
  )
  parser.add_argument(
    "--dims",
    default=None,
    help="comma-separated d of the rbd rows with default settings "
    f"(default 250,10000; with --structure {STRUCTURED_DIMS})",
  )
  parser.add_argument(
    "--structure",
    default="dense",
    help="comma-separated structured bases (srht, fastfood) to tabulate instead of the "
    "dense bases' rows",
  )
  parser.add_argument(
    "--hadamard",
    action=argparse.BooleanOptionalAction,
    default=None,
    help="time the Walsh-Hadamard transform (default: yes with --structure)",
  )
  parser.add_argument(
    "--runs",
    type=int,
    default=1,
    help="run every configuration this many times, each in a fresh process",
  )
  parser.add_argument(
    "--steps",
    type=int,
    default=None,
    help="timed steps per configuration (default 5, 3 with --quick)",
  )
  parser.add_argument("--warmup", type=int, default=2, help="untimed steps (compilation)")
  parser.add_argument(
    "--quick",
    action="store_true",
    help="CNN only (unless --models), the --dims rows only, no generator table",
  )
  parser.add_argument(
    "--generators",
    action=argparse.BooleanOptionalAction,
    default=None,
    help="time the generators alone (default: yes unless --quick)",
  )
  parser.add_argument(
    "--end-to-end",
    action=argparse.BooleanOptionalAction,
    default=True,
    help="also time SGD and RBD (first of --dims) through the trainer",
  )
  parser.add_argument("--end-to-end-only", action="store_true", help="only the end-to-end rows")
  parser.add_argument(
    "--mnist", default=None, help="MNIST IDX directory for the FC end-to-end rows"
  )
  parser.add_argument(
    "--cifar10",
    default=None,
    help="CIFAR-10 image folder (directory or .tar.gz) for the CNN and ResNet-8 end-to-end rows",
  )
  parser.add_argument("--json", default=None, help="also write every measurement here")
  parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
  args = parser.parse_args(argv)

  if args.child is not None:
    payload = json.loads(args.child)
    if payload["kind"] == "generators":
      result = measure_generators(n=GENERATOR_N, dim=GENERATOR_DIM, repeats=5)
    elif payload["kind"] == "hadamard":
      result = measure_hadamard(repeats=20)
    elif payload["kind"] == "end_to_end":
      result = measure_end_to_end(
        Config(**payload["config"]),
        data=payload["data"],
        steps=payload["steps"],
        warmup=payload["warmup"],
      )
    else:
      result = measure(
        Config(**payload["config"]), steps=payload["steps"], warmup=payload["warmup"]
      )
    print(json.dumps(result))
    return

  models_given = any(a == "--models" or a.startswith("--models=") for a in argv)
  models = args.models.split(",") if models_given or not args.quick else ["cnn"]
  for model in models:
    if model not in MODELS:
      parser.error(f"--models: {model!r} is not one of {', '.join(MODELS)}")
  structures = [s for s in args.structure.split(",") if s != "dense"]
  for structure in structures:
    if structure not in ("srht", "fastfood"):
      parser.error(f"--structure: {structure!r} is not one of dense, srht, fastfood")
  dims = [
    int(d) for d in (args.dims or (STRUCTURED_DIMS if structures else "250,10000")).split(",")
  ]
  steps = args.steps or (3 if args.quick else 5)
  default_generators = not args.quick and not structures
  with_generators = default_generators if args.generators is None else args.generators
  with_hadamard = bool(structures) if args.hadamard is None else args.hadamard

  machine = machine_description()
  print(f"# python experiments/benchmark.py {' '.join(argv)}".rstrip())
  print(
    f"# {machine['date']}; nproc {machine['nproc']}, {machine['cpu']}; "
    f"jax {machine['jax']} ({machine['backend']}); {machine['platform']}"
  )
  runs, generator_runs, end_to_end_runs, hadamard_runs = [], [], [], []
  for run in range(args.runs):
    print(f"\n## Run {run + 1} of {args.runs}\n", flush=True)
    rows = []
    for model in models if not args.end_to_end_only else ():
      model_rows = [
        run_child(
          {
            "kind": "config",
            "config": dataclasses.asdict(config),
            "steps": steps,
            "warmup": args.warmup,
          }
        )
        for config in (
          structured_configs_for(model, dims, structures)
          if structures
          else configs_for(model, dims, quick=args.quick)
        )
      ]
      rows += model_rows
      print(f"### {MODEL_TITLES[model]}, D = {model_rows[0]['num_params']:,}, batch {BATCH}\n")
      print(model_table(model_rows) + "\n", flush=True)
    if args.end_to_end or args.end_to_end_only:
      e2e_rows = []
      for model in models:
        data = end_to_end_data(args, model)
        if data is None:
          print(f"(no end-to-end rows for {model}: pass --mnist / --cifar10)")
          continue
        for config in (Config(model, "sgd"), Config(model, "rbd", dims[0])):
          e2e_rows.append(
            run_child(
              {
                "kind": "end_to_end",
                "data": data,
                "config": dataclasses.asdict(config),
                "steps": steps,
                "warmup": args.warmup,
              }
            )
          )
      if e2e_rows:
        print(f"### Through the trainer (train_and_evaluate), batch {BATCH}, real data\n")
        print(end_to_end_table(e2e_rows) + "\n", flush=True)
        for line in end_to_end_verdicts(e2e_rows):
          print("- " + line)
        end_to_end_runs.append(e2e_rows)
    if with_generators and not args.end_to_end_only:
      generator_runs.append(run_child({"kind": "generators"}))
      print(generator_table(generator_runs[-1]) + "\n", flush=True)
    if with_hadamard and not args.end_to_end_only:
      hadamard_runs.append(run_child({"kind": "hadamard"}))
      print(hadamard_table(hadamard_runs[-1]) + "\n", flush=True)
    for line in target_verdicts(rows) + structured_verdicts(rows):
      print("- " + line)
    runs.append(rows)
  if args.runs > 1 and any(runs):  # the bare rows; --end-to-end-only has none
    print(f"\n## Spread over the {args.runs} runs: (max - min) / mean\n")
    print(spread_table(runs))
    if generator_runs:
      print("\n" + generator_spread_table(generator_runs))
  if args.json:
    with open(args.json, "w") as f:
      json.dump(
        {
          "machine": machine,
          "argv": argv,
          "runs": runs,
          "generators": generator_runs,
          "end_to_end": end_to_end_runs,
          "hadamard": hadamard_runs,
        },
        f,
        indent=1,
      )


if __name__ == "__main__":
  main()
