"""Step time, throughput and peak memory of random bases descent against SGD.

Times one jitted training step (gradient, optimiser update, parameter update)
of RBD, FPD and SGD on the paper's networks with random inputs, batch 32, and
the library's default settings unless a row says otherwise:

  python experiments/benchmark.py               # FC-MNIST, CNN, ResNet-8 (~3.5 min, 2 cores)
  python experiments/benchmark.py --runs 2      # everything twice, and the spread (~7 min)
  python experiments/benchmark.py --quick       # CNN at d = 250 and 10,000 only (~30 s)
  python experiments/benchmark.py --models cnn --dims 250,1000,10000 --steps 7

Every configuration (model, method, d, ...) runs in a fresh subprocess, so its
peak resident memory (ru_maxrss) is its own. Each subprocess also times the
SGD step of the same model, interleaved with the method's steps (5 SGD steps
after each), and reports the ratio of the two medians: ratios are taken
within one process, so they hold when the machine's speed drifts between
processes.

Columns: step ms (median over --steps timed steps after --warmup steps, each
ended by block_until_ready); ratio to SGD (that median / the SGD step's
median, same process); images/s (32 / step); random samples/s (random
numbers drawn per step, sum over compartments of d_k n_k, / step); peak RSS
(MiB, the whole process: Python, the runtime, compiled programs, buffers).

The generator table times the inner loop alone on the CNN's D = 122,570:
"generate" draws blocks of directions and sums them; "fused" draws them and
computes c = Phi g and u = Phi^T c on each block, as the optimiser does.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time

MODELS = ("fc", "cnn", "resnet8")
MODEL_TITLES = {"fc": "FC on MNIST shapes (28x28x1)",
                "cnn": "CNN on CIFAR-10 shapes (32x32x3)",
                "resnet8": "ResNet-8 on CIFAR-10 shapes (32x32x3)"}
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

  def basis_kwargs(self) -> dict:
    kwargs = {"distribution": self.distribution}
    for name in ("generator", "compartments", "allocation"):
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
      logits, new_state = model.apply({"params": params, **model_state}, images,
                                      train=True, mutable=list(model_state))
    else:
      logits, new_state = model.apply({"params": params}, images, train=True), {}
    loss = optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()
    return loss, new_state

  def timed_steps(tx):
    """A function that runs one training step with ``tx`` and returns its time."""
    @jax.jit
    def train_step(params, opt_state, model_state, images, labels):
      (loss, new_state), grads = jax.value_and_grad(loss_fn, has_aux=True)(
          params, model_state, images, labels)
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
    layout = rb.make_layout(params, d=config.d, compartments=kwargs.get("compartments"),
                            allocation=kwargs.get("allocation", "proportional"))
    directions = sum(c.dim for c in layout.compartments)
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
      "samples_per_s": samples_per_step / step_s,
      "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,  # KiB
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
      basis = projection.Basis(key, n=n, dim=dim, distribution=distribution,
                               normalize="norm", generator=generator, block_rows=None)

      @jax.jit
      def generate(key, basis=basis):
        def body(total, b):
          rows = b * basis.block_rows + jnp.arange(basis.block_rows)
          raw = dirs.sample_rows(dirs.row_keys(key, rows), n, distribution=basis.distribution,
                                 generator=basis.generator)
          return total + jnp.sum(raw), None
        return jax.lax.scan(body, 0.0, jnp.arange(basis.num_blocks))[0]

      @jax.jit
      def fused(key, g, basis=basis):
        return projection.project_and_expand(basis.with_key(key),
                                             projection.matvec_coordinates(g))[1]

      row = {"generator": generator, "distribution": distribution,
             "block_rows": basis.block_rows}
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
      cpu = next(line.split(":", 1)[1].strip() for line in f
                 if line.startswith("model name"))
  except (OSError, StopIteration):
    pass
  now = datetime.datetime.now(datetime.timezone.utc)
  return {"nproc": os.cpu_count(), "cpu": cpu, "platform": platform.platform(),
          "python": platform.python_version(), "jax": jax.__version__,
          "backend": jax.default_backend(), "date": now.strftime("%Y-%m-%d %H:%M UTC")}


def _method_label(row: dict) -> str:
  if row["compartments"]:
    return f"{row['method']} ({row['compartments']}, {row['allocation']})"
  return row["method"]


def _directions_label(row: dict) -> str:
  if row["compartments"]:
    return f"{row['directions']:,} (d={row['d']})"
  return f"{row['directions']:,}"


def model_table(rows: list[dict]) -> str:
  lines = ["| method | d | distribution | generator | step ms | ratio to SGD | images/s "
           "| random samples/s | peak RSS MiB |", "|" + " --- |" * 9]
  for r in rows:
    if r["method"] == "sgd":
      lines.append(f"| sgd | D = {r['num_params']:,} | — | — | {r['step_ms']:.2f} | 1.00 "
                   f"| {r['images_per_s']:,.0f} | — | {r['peak_rss_mib']:.0f} |")
      continue
    generator = r["generator_used"] + ("" if r["generator"] else " (default)")
    lines.append(f"| {_method_label(r)} | {_directions_label(r)} | {r['distribution']} "
                 f"| {generator} | {r['step_ms']:.1f} | {r['ratio']:.2f} "
                 f"| {r['images_per_s']:,.1f} | {r['samples_per_s'] / 1e6:,.0f} M "
                 f"| {r['peak_rss_mib']:.0f} |")
  return "\n".join(lines)


def generator_table(rows: list[dict]) -> str:
  lines = [f"Generators alone: n = {GENERATOR_N:,}, {GENERATOR_DIM} directions, "
           f"default block rows ({rows[0]['block_rows']}).", "",
           "| generator | distribution | generate, M samples/s "
           "| fused with c = Phi g and u = Phi^T c, M samples/s |",
           "| --- | --- | --- | --- |"]
  for r in rows:
    lines.append(f"| {r['generator']} | {r['distribution']} | {r['generate'] / 1e6:,.0f} "
                 f"| {r['fused'] / 1e6:,.0f} |")
  return "\n".join(lines)


def _spread(values: list[float]) -> str:
  return f"{100 * (max(values) - min(values)) / statistics.mean(values):.0f} %"


def spread_table(runs: list[list[dict]]) -> str:
  """Every configuration's ratio, images/s and peak RSS in each run, and spreads."""
  lines = ["| model | method | d | distribution | generator | ratio to SGD per run "
           "| spread | images/s per run | spread | peak RSS MiB per run |",
           "|" + " --- |" * 10]
  by_config: dict[tuple, list[dict]] = {}
  for run in runs:
    for row in run:
      key = tuple(row[k] for k in ("model", "method", "d", "distribution", "generator",
                                   "compartments", "allocation"))
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
        f"| {_spread(speeds)} | {' / '.join(f'{x:.0f}' for x in memory)} |")
  return "\n".join(lines)


def generator_spread_table(runs: list[list[dict]]) -> str:
  lines = ["| generator | distribution | generate, M samples/s per run | spread "
           "| fused, M samples/s per run | spread |", "|" + " --- |" * 6]
  for i, r in enumerate(runs[0]):
    generate = [run[i]["generate"] / 1e6 for run in runs]
    fused = [run[i]["fused"] / 1e6 for run in runs]
    lines.append(f"| {r['generator']} | {r['distribution']} "
                 f"| {' / '.join(f'{x:,.0f}' for x in generate)} | {_spread(generate)} "
                 f"| {' / '.join(f'{x:,.0f}' for x in fused)} | {_spread(fused)} |")
  return "\n".join(lines)


def target_verdicts(rows: list[dict]) -> list[str]:
  """The targets of the issue, on the CNN rows with the library's defaults."""
  def default_rbd(d):
    return next((r for r in rows if r["model"] == "cnn" and r["method"] == "rbd"
                 and r["d"] == d and r["distribution"] == "normal"
                 and r["generator"] is None and r["compartments"] is None), None)
  small, large = default_rbd(250), default_rbd(10_000)
  verdict = lambda ok: "met" if ok else "NOT met"
  lines = []
  if small:
    lines.append(f"CNN, d = 250: RBD step / SGD step = {small['ratio']:.2f} (target <= 4): "
                 + verdict(small["ratio"] <= 4))
  if large:
    lines.append(f"CNN, d = 10,000: {large['images_per_s']:.1f} images/s (target >= 8): "
                 + verdict(large["images_per_s"] >= 8))
  if small and large:
    growth = large["peak_rss_mib"] / small["peak_rss_mib"]
    lines.append(f"CNN, peak RSS at d = 10,000 / at d = 250 = {large['peak_rss_mib']:.0f} / "
                 f"{small['peak_rss_mib']:.0f} MiB = {growth:.2f} (target <= 1.3): "
                 + verdict(growth <= 1.3))
  return lines


def main(argv: list[str] | None = None) -> None:
  argv = sys.argv[1:] if argv is None else argv
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--models", default=",".join(MODELS),
                      help="comma-separated subset of " + ",".join(MODELS))
  parser.add_argument("--dims", default="250,10000",
                      help="comma-separated d of the rbd rows with default settings")
  parser.add_argument("--runs", type=int, default=1,
                      help="run every configuration this many times, each in a fresh process")
  parser.add_argument("--steps", type=int, default=None,
                      help="timed steps per configuration (default 5, 3 with --quick)")
  parser.add_argument("--warmup", type=int, default=2, help="untimed steps (compilation)")
  parser.add_argument("--quick", action="store_true",
                      help="CNN only (unless --models), the --dims rows only, "
                      "no generator table")
  parser.add_argument("--generators", action=argparse.BooleanOptionalAction, default=None,
                      help="time the generators alone (default: yes unless --quick)")
  parser.add_argument("--json", default=None, help="also write every measurement here")
  parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
  args = parser.parse_args(argv)

  if args.child is not None:
    payload = json.loads(args.child)
    if payload["kind"] == "generators":
      result = measure_generators(n=GENERATOR_N, dim=GENERATOR_DIM, repeats=5)
    else:
      result = measure(Config(**payload["config"]), steps=payload["steps"],
                       warmup=payload["warmup"])
    print(json.dumps(result))
    return

  models_given = any(a == "--models" or a.startswith("--models=") for a in argv)
  models = args.models.split(",") if models_given or not args.quick else ["cnn"]
  for model in models:
    if model not in MODELS:
      parser.error(f"--models: {model!r} is not one of {', '.join(MODELS)}")
  dims = [int(d) for d in args.dims.split(",")]
  steps = args.steps or (3 if args.quick else 5)
  with_generators = not args.quick if args.generators is None else args.generators

  machine = machine_description()
  print(f"# python experiments/benchmark.py {' '.join(argv)}".rstrip())
  print(f"# {machine['date']}; nproc {machine['nproc']}, {machine['cpu']}; "
        f"jax {machine['jax']} ({machine['backend']}); {machine['platform']}")
  runs, generator_runs = [], []
  for run in range(args.runs):
    print(f"\n## Run {run + 1} of {args.runs}\n", flush=True)
    rows = []
    for model in models:
      model_rows = [run_child({"kind": "config", "config": dataclasses.asdict(config),
                               "steps": steps, "warmup": args.warmup})
                    for config in configs_for(model, dims, quick=args.quick)]
      rows += model_rows
      print(f"### {MODEL_TITLES[model]}, D = {model_rows[0]['num_params']:,}, "
            f"batch {BATCH}\n")
      print(model_table(model_rows) + "\n", flush=True)
    if with_generators:
      generator_runs.append(run_child({"kind": "generators"}))
      print(generator_table(generator_runs[-1]) + "\n", flush=True)
    for line in target_verdicts(rows):
      print("- " + line)
    runs.append(rows)
  if args.runs > 1:
    print(f"\n## Spread over the {args.runs} runs: (max - min) / mean\n")
    print(spread_table(runs))
    if generator_runs:
      print("\n" + generator_spread_table(generator_runs))
  if args.json:
    with open(args.json, "w") as f:
      json.dump({"machine": machine, "argv": argv, "runs": runs,
                 "generators": generator_runs}, f, indent=1)


if __name__ == "__main__":
  main()
