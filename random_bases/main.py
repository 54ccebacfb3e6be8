"""Command line: ``python -m random_bases.main --config=configs/x.py[:arg] --workdir=DIR``.

Flags only; ``random_bases.train.train_and_evaluate`` does the work.
Override any field with ``--config.a.b=value`` (unknown fields are errors);
``--describe`` prints every field with its value and meaning, and the config
files next to ``--config`` (else in ``./configs``). Rerunning into a workdir
resumes it (``random_bases/workdir.py`` states the contract).

Several processes (``--config.workers`` over all their devices) run the same
command with ``--coordinator_address``, ``--num_processes`` and
``--process_id`` (or ``--distributed`` where JAX finds them in the
environment): ``jax.distributed.initialize``.
"""

from __future__ import annotations

import ast
import os
import re
import sys

from absl import app, flags, logging
from ml_collections import config_flags

from random_bases import config_lib, distributed, train
from random_bases import workdir as workdir_lib

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file(
  "config",
  None,
  "Experiment config file, configs/<name>.py[:arg]; --describe lists "
  "the config files and every field.",
  lock_config=True,
)
flags.DEFINE_string(
  "workdir",
  None,
  "Directory for config.json, metrics.jsonl, tensorboard/ and "
  "checkpoints/; rerunning into it resumes the run.",
)
flags.DEFINE_string(
  "coordinator_address",
  None,
  "Multi-process runs: host:port where process 0 serves JAX's coordinator "
  "(default $JAX_COORDINATOR_ADDRESS, or the cluster's).",
)
flags.DEFINE_integer("num_processes", None, "Multi-process runs: how many processes run.")
flags.DEFINE_integer("process_id", None, "Multi-process runs: this process's index, from 0.")
flags.DEFINE_bool(
  "distributed",
  False,
  "Join a multi-process run (jax.distributed.initialize) whose coordinator, process "
  "count and index JAX reads from the environment ($JAX_COORDINATOR_ADDRESS; SLURM, "
  "Open MPI, Kubernetes, Cloud TPU); implied by the three flags above.",
)
flags.DEFINE_bool(
  "describe",
  False,
  "Print every config field (name, value, meaning) and the config files, then exit.",
)

# How ml_collections recognises an override: --config.a.b[=v] or --noconfig.a.b.
_OVERRIDE = re.compile(r"^--?(?:no)?config\.([^=]+)")


def parse_flags(argv: list[str]) -> list[str]:
  """absl's flag parsing; an override of a field that does not exist is one line.

  ml_collections raises a bare AttributeError deep in flag parsing for those,
  so the overrides are checked against the schema first.
  """
  for arg in argv[1:]:
    match = _OVERRIDE.match(arg)
    if match:
      try:
        config_lib.check_field_name(match.group(1))
      except ValueError as e:
        sys.stderr.write(f"FATAL Flags parsing error: {arg}: {e}\n")
        sys.exit(1)
  return app.parse_flags_with_usage(argv)


def config_files(directory: str) -> list[tuple[str, str]]:
  """``[(file name, first docstring line)]`` of the config files in ``directory``.

  A config file defines ``get_config``; the files are parsed, not imported.
  """
  if not os.path.isdir(directory):
    return []
  files = []
  for name in sorted(os.listdir(directory)):
    if not name.endswith(".py"):
      continue
    with open(os.path.join(directory, name)) as f:
      module = ast.parse(f.read())
    if any(isinstance(node, ast.FunctionDef) and node.name == "get_config" for node in module.body):
      docstring = ast.get_docstring(module) or ""
      files.append((name, docstring.strip().split("\n")[0]))
  return files


def describe() -> str:
  """The field table of ``--config`` (or the defaults) and the config files."""
  if FLAGS.config is not None:
    path = config_flags.get_config_filename(FLAGS["config"])
    directory = os.path.dirname(path.partition(":")[0]) or "."
    heading = f"Fields of {path} (override with --config.<field>=value):"
  else:
    directory = "configs"
    heading = "Fields and defaults (override with --config.<field>=value):"
  lines = [heading, config_lib.describe(FLAGS.config), ""]
  files = config_files(directory)
  if files:
    lines.append(f"Config files in {directory} (--config={directory}/<file>[:arg]):")
    width = max(len(name) for name, _ in files)
    lines += [f"  {name:<{width}}  {summary}" for name, summary in files]
  else:
    lines.append(f"No config files in {os.path.abspath(directory)}.")
  return "\n".join(lines)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
  if FLAGS.describe:
    print(describe())
    return
  if FLAGS.config is None or FLAGS.workdir is None:
    raise app.UsageError(
      "--config and --workdir are required (--describe lists the config files and fields)"
    )
  workdir_lib.quiet_orbax_logs()
  process_flags = (FLAGS.coordinator_address, FLAGS.num_processes, FLAGS.process_id)
  if FLAGS.distributed or any(flag is not None for flag in process_flags):
    try:
      distributed.initialize(*process_flags)
    except (ValueError, TypeError) as e:
      sys.exit(f"Invalid distributed setup: {e}")
  try:
    config_lib.validate(FLAGS.config)
  except ValueError as e:
    sys.exit(f"Invalid config: {e}")
  logging.info("Config:\n%s", FLAGS.config)
  try:
    train.train_and_evaluate(FLAGS.config, FLAGS.workdir)
  except workdir_lib.WorkdirMismatch as e:
    sys.exit(f"{type(e).__name__}: {e}")
  except ValueError as e:  # bad input found while loading: a data dir missing files
    sys.exit(f"Invalid input: {e}")
  except train.TrainingDiverged as e:
    sys.exit(f"{type(e).__name__}: {e}")


if __name__ == "__main__":
  app.run(main, flags_parser=parse_flags)
