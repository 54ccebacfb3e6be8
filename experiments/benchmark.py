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
sum-and-difference stages (``benchmarks/structured.py``), alone on a vector of N = 2^17 and
inside a Fastfood basis's c = Phi g and u = Phi^T c on the CNN's 122,570
parameters (four transforms; the butterfly is patched in for its row).

This file is the command line; what each table measures is a module of
``experiments/benchmarks/``: ``step_cost`` (the model tables and targets),
``generators``, ``structured`` (structured rows and the Hadamard table) and
``end_to_end``, each run in a child process by ``child_process``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys

if not __package__:  # python experiments/benchmark.py: make `experiments` importable
  sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from experiments.benchmarks import (  # noqa: E402
  child_process,
  common,
  end_to_end,
  generators,
  step_cost,
  structured,
)
from experiments.benchmarks.step_cost import Config  # noqa: E402


def parse_args(argv: list[str]) -> argparse.Namespace:
  models, structures = step_cost.MODELS, ("dense",) + structured.STRUCTURES
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument(
    "--models", default=",".join(models), help="comma-separated subset of " + ",".join(models)
  )
  parser.add_argument(
    "--dims",
    default=None,
    help="comma-separated d of the rbd rows with default settings "
    f"(default {step_cost.DEFAULT_DIMS}; with --structure {structured.DEFAULT_DIMS})",
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
  args = parser.parse_args(argv)

  models_given = any(a == "--models" or a.startswith("--models=") for a in argv)
  args.models = args.models.split(",") if models_given or not args.quick else ["cnn"]
  for model in args.models:
    if model not in models:
      parser.error(f"--models: {model!r} is not one of {', '.join(models)}")
  args.structure = args.structure.split(",")
  for structure in args.structure:
    if structure not in structures:
      parser.error(f"--structure: {structure!r} is not one of {', '.join(structures)}")
  args.structure = [s for s in args.structure if s != "dense"]
  default_dims = structured.DEFAULT_DIMS if args.structure else step_cost.DEFAULT_DIMS
  args.dims = [int(d) for d in (args.dims or default_dims).split(",")]
  args.steps = args.steps or (3 if args.quick else 5)
  if args.generators is None:
    args.generators = not args.quick and not args.structure
  if args.hadamard is None:
    args.hadamard = bool(args.structure)
  return args


def model_rows(args: argparse.Namespace, model: str) -> list[dict]:
  """One model's table: each configuration's step cost, each in a fresh process."""
  if args.structure:
    configs = structured.structured_configs_for(model, args.dims, args.structure)
  else:
    configs = step_cost.configs_for(model, args.dims, quick=args.quick)
  return [
    child_process.run(
      step_cost.measure,
      config=dataclasses.asdict(config),
      steps=args.steps,
      warmup=args.warmup,
    )
    for config in configs
  ]


def end_to_end_rows(args: argparse.Namespace) -> list[dict]:
  """SGD and RBD (first of --dims) through the trainer, for every model with data."""
  rows = []
  for model in args.models:
    data = end_to_end.data_location(model, mnist=args.mnist, cifar10=args.cifar10)
    if data is None:
      print(f"(no end-to-end rows for {model}: pass --mnist / --cifar10)")
      continue
    for config in (Config(model, "sgd"), Config(model, "rbd", args.dims[0])):
      rows.append(
        child_process.run(
          end_to_end.measure_end_to_end,
          config=dataclasses.asdict(config),
          data=data,
          steps=args.steps,
          warmup=args.warmup,
        )
      )
  return rows


def main(argv: list[str] | None = None) -> None:
  argv = sys.argv[1:] if argv is None else argv
  args = parse_args(argv)
  bare = not args.end_to_end_only  # the tables of bare steps, generators and Hadamard

  machine = common.machine_description()
  print(f"# python experiments/benchmark.py {' '.join(argv)}".rstrip())
  print(
    f"# {machine['date']}; nproc {machine['nproc']}, {machine['cpu']}; "
    f"jax {machine['jax']} ({machine['backend']}); {machine['platform']}"
  )
  runs, generator_runs, end_to_end_runs, hadamard_runs = [], [], [], []
  for run in range(args.runs):
    print(f"\n## Run {run + 1} of {args.runs}\n", flush=True)
    rows = []
    for model in args.models if bare else ():
      rows_of_model = model_rows(args, model)
      rows += rows_of_model
      title = step_cost.MODEL_TITLES[model]
      print(f"### {title}, D = {rows_of_model[0]['num_params']:,}, batch {step_cost.BATCH}\n")
      print(step_cost.model_table(rows_of_model) + "\n", flush=True)
    if args.end_to_end or args.end_to_end_only:
      e2e_rows = end_to_end_rows(args)
      if e2e_rows:
        print(f"### Through the trainer (train_and_evaluate), batch {step_cost.BATCH}, real data\n")
        print(end_to_end.end_to_end_table(e2e_rows) + "\n", flush=True)
        for line in end_to_end.end_to_end_verdicts(e2e_rows):
          print("- " + line)
        end_to_end_runs.append(e2e_rows)
    if args.generators and bare:
      generator_runs.append(child_process.run(generators.measure_generators))
      print(generators.generator_table(generator_runs[-1]) + "\n", flush=True)
    if args.hadamard and bare:
      hadamard_runs.append(child_process.run(structured.measure_hadamard))
      print(structured.hadamard_table(hadamard_runs[-1]) + "\n", flush=True)
    for line in step_cost.target_verdicts(rows) + structured.structured_verdicts(rows):
      print("- " + line)
    runs.append(rows)
  if args.runs > 1 and any(runs):  # the bare rows; --end-to-end-only has none
    print(f"\n## Spread over the {args.runs} runs: (max - min) / mean\n")
    print(step_cost.spread_table(runs))
    if generator_runs:
      print("\n" + generators.generator_spread_table(generator_runs))
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
