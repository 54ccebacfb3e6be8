"""Command line: ``python -m random_bases.main --config=configs/x.py[:arg] --workdir=DIR``.

Flags only; ``random_bases.train.train_and_evaluate`` does the work.
Override any field with ``--config.a.b=value`` (unknown fields are errors).
``--describe`` (with or without ``--config``) prints every field with its
value, default and meaning, the arguments of the config file (``:runlocal``,
``:epochs=1,steps=400`` ...) and the config files next to ``--config`` (else
in ``./configs``). Rerunning into a workdir resumes it, after Ctrl-C too
(``random_bases/workdir.py`` states the contract). The whole config is
written to ``<workdir>/config.json`` (and logged with ``--verbosity=1``).

A bad flag, config or data location, a workdir that cannot be used (held by
another run, another config, a full or read-only disk), or a diverged run
ends in one message and exit code 1; Ctrl-C says how to resume and exits
with 130. ``--traceback`` (or ``RANDOM_BASES_TRACEBACK=1``) shows Python's
traceback instead.

Several processes (``--config.workers`` over all their devices) run the same
command with ``--coordinator_address``, ``--num_processes`` and
``--process_id`` (or ``--distributed`` where JAX finds them in the
environment): ``jax.distributed.initialize``.
"""

from __future__ import annotations

import os
import re
import shlex
import sys

from absl import app, flags, logging
from ml_collections import config_flags

from random_bases import cli, config_lib, distributed, train
from random_bases import workdir as workdir_lib

FLAGS = flags.FLAGS

# How ml_collections recognises an override: --config.a.b[=v] or --noconfig.a.b.
_OVERRIDE = re.compile(r"^--?(?:no)?config\.([^=]+)")


def define_flags() -> None:
  """Defines this command's flags once (at parse time, so importing this module defines none).

  ``experiments/reproduce.py`` shares ``random_bases.cli`` with this
  command and has a ``--config`` flag of its own.
  """
  if "workdir" in FLAGS:
    return
  config_flags.DEFINE_config_file(
    "config",
    None,
    "Experiment config file, configs/<name>.py[:arg]; --describe lists the config "
    "files, the file's arguments and every field.",
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
    "Print every config field (name, value, default, meaning), the arguments of "
    "--config's file and the config files, then exit.",
  )
  cli.define_traceback_flag()


# --- flags ---------------------------------------------------------------------------


def parse_flags(argv: list[str]) -> list[str]:
  """absl's flag parsing, with every user error one line and --help exiting 0.

  ml_collections raises a bare AttributeError deep in flag parsing for an
  override of a field that does not exist, so the overrides are checked
  against the schema first, and so is the config file.
  """
  define_flags()
  argv = [argv[0], *("--help" if arg == "-h" else arg for arg in argv[1:])]
  if cli.HELP_FLAGS.isdisjoint(argv[1:]):
    for arg in argv[1:]:
      match = _OVERRIDE.match(arg)
      if match:
        try:
          config_lib.check_field_name(match.group(1))
        except ValueError as e:
          cli.flag_error(f"{arg}: {e}")
    spec = cli.flag_value(argv, "config")
    if spec is not None:
      try:
        cli.check_config_spec(spec)
      except ValueError as e:
        if cli.traceback_wanted():
          raise
        cli.flag_error(f"--config={spec}: {e}")
  return cli.parse_absl_flags(argv)


# --- --describe -------------------------------------------------------------------------


def describe() -> str:
  """The field table of ``--config`` (or the defaults), its file's arguments, the config files."""
  if FLAGS.config is not None:
    spec = config_flags.get_config_filename(FLAGS["config"])
    path = spec.partition(":")[0]
    directory = os.path.dirname(path) or "."
    lines = [
      f"Fields of {spec} (override with --config.<field>=value):",
      config_lib.describe(FLAGS.config),
      "",
      *cli.describe_config_args(path),
      "",
    ]
  else:
    directory = "configs"
    lines = [
      "Fields and defaults (override with --config.<field>=value):",
      config_lib.describe(None),
      "",
    ]
  files = cli.config_files(directory)
  if files:
    lines.append(
      f"Config files in {directory} (--config={directory}/<file>[:arg]; "
      "add --config to --describe to list a file's arguments):"
    )
    width = max(len(name) for name, _ in files)
    lines += [f"  {name:<{width}}  {summary}" for name, summary in files]
  else:
    lines.append(f"No config files in {os.path.abspath(directory)}.")
  return "\n".join(lines)


# --- the run ---------------------------------------------------------------------------


def interrupted_message(workdir: str) -> str:
  """Where an interrupted run stands, and the command that resumes it."""
  try:
    epochs = workdir_lib.Workdir(workdir).checkpoint_epochs()
  except OSError:
    epochs = []
  command = shlex.join(["python", "-m", "random_bases.main", *sys.argv[1:]])
  if epochs:
    return (
      f"Interrupted: {workdir} holds a checkpoint after epoch {epochs[-1]}; "
      f"the same command resumes from it: {command}"
    )
  return (
    f"Interrupted before {workdir} held a checkpoint; the same command starts the run "
    f"again: {command}"
  )


def initialize_distributed() -> None:
  process_flags = (FLAGS.coordinator_address, FLAGS.num_processes, FLAGS.process_id)
  if FLAGS.distributed or any(flag is not None for flag in process_flags):
    try:
      distributed.initialize(*process_flags)
    except TypeError as e:
      raise ValueError(str(e)) from e


def main(argv):
  if len(argv) > 1:
    sys.exit(f"Unexpected arguments: {argv[1:]} (--help lists the flags)")
  if FLAGS.describe:
    print(describe())
    return
  if FLAGS.config is None or FLAGS.workdir is None:
    sys.exit(
      "--config and --workdir are required (--help lists the flags; --describe the "
      "config files and fields)"
    )
  workdir = os.path.expanduser(FLAGS.workdir)
  config = FLAGS.config

  def report(function, value_error):
    return cli.report_errors(
      function, interrupted=lambda: interrupted_message(workdir), value_error=value_error
    )

  workdir_lib.quiet_orbax_logs()
  report(initialize_distributed, "Invalid distributed setup")
  cli.expand_paths(config)
  report(lambda: config_lib.validate(config), "Invalid config")
  logging.info(
    "Config %s into %s (every field: config.json there)",
    config_flags.get_config_filename(FLAGS["config"]),
    workdir,
  )
  # The whole config: config.json in the workdir has it, so the log only on request.
  logging.debug("Config:\n%s", config)
  # Bad input found while loading (a data dir missing files) is a ValueError.
  report(lambda: train.train_and_evaluate(config, workdir), "Invalid input")


if __name__ == "__main__":
  app.run(main, flags_parser=parse_flags)
