"""What the command-line tools share: one-line user errors, flag parsing, config files.

``random_bases.main`` and ``experiments/reproduce.py`` report every error the
user can act on (a bad flag, config file or argument, data location, an
unusable workdir, a diverged run) as one line and exit code 1, Ctrl-C as one
line saying how to resume and exit code 130. ``--traceback`` (or
``RANDOM_BASES_TRACEBACK=1``) shows Python's traceback instead; a bug always
keeps it.
"""

from __future__ import annotations

import ast
import errno
import importlib.util
import os
import re
import sys
from collections.abc import Callable
from typing import Any, NoReturn

from absl import flags

from random_bases import config_lib, train
from random_bases import workdir as workdir_lib

FLAGS = flags.FLAGS

TRACEBACK_ENV_VAR = "RANDOM_BASES_TRACEBACK"
# The shell's convention for a process ended by SIGINT.
INTERRUPTED_EXIT_CODE = 130

# OSError numbers that describe the machine or a path the user gave (a full or
# read-only disk, a missing or forbidden folder), not a bug in the code.
USER_ERRNOS = frozenset(
  {
    errno.ENOSPC,
    errno.EDQUOT,
    errno.EROFS,
    errno.EACCES,
    errno.EPERM,
    errno.ENOENT,
    errno.ENOTDIR,
    errno.EISDIR,
    errno.EEXIST,
    errno.ENAMETOOLONG,
    errno.EIO,
  }
)

# absl's help flags; "-h" is read as "--help".
HELP_FLAGS = frozenset(
  f"{dashes}{name}" for dashes in ("-", "--") for name in ("help", "helpshort", "helpfull", "?")
)


def define_traceback_flag() -> None:
  if "traceback" not in FLAGS:
    flags.DEFINE_bool(
      "traceback",
      False,
      f"On an error, show Python's traceback instead of one line (or set {TRACEBACK_ENV_VAR}=1).",
    )


def traceback_wanted() -> bool:
  """Whether errors should propagate with their traceback: --traceback or the env var."""
  if os.environ.get(TRACEBACK_ENV_VAR, "").lower() in ("1", "true", "yes"):
    return True
  return "traceback" in FLAGS and FLAGS.is_parsed() and bool(FLAGS.traceback)


def user_error_message(error: BaseException, *, value_error: str = "Invalid input") -> str | None:
  """The one message that reports ``error`` to the user, or None for a bug.

  Args:
    error: what was raised.
    value_error: the words before a ValueError's message (bad config or data).
  """
  if isinstance(error, (workdir_lib.WorkdirError, train.TrainingDiverged)):
    return f"{type(error).__name__}: {error}"
  if isinstance(error, ValueError):
    return f"{value_error}: {error}"
  if isinstance(error, OSError) and error.errno in USER_ERRNOS:
    return f"{type(error).__name__}: {error}"
  return None


def report_errors(
  function: Callable[[], Any],
  *,
  interrupted: Callable[[], str],
  value_error: str = "Invalid input",
) -> Any:
  """Returns ``function()``; a user-facing error ends the process with one message.

  A bug keeps its traceback, and so does every error with ``--traceback`` or
  ``$RANDOM_BASES_TRACEBACK``.

  Args:
    function: the work.
    interrupted: the message for Ctrl-C (where and how to resume); exit code 130.
    value_error: the words before a ValueError's message.
  """
  try:
    return function()
  except KeyboardInterrupt:
    if traceback_wanted():
      raise
    sys.stderr.write(interrupted() + "\n")
    sys.exit(INTERRUPTED_EXIT_CODE)
  except Exception as e:
    message = user_error_message(e, value_error=value_error)
    if message is None or traceback_wanted():
      raise
    sys.exit(message)


def flag_error(message: str) -> NoReturn:
  sys.stderr.write(f"FATAL Flags parsing error: {message}\n")
  sys.exit(1)


def flag_value(argv: list[str], name: str) -> str | None:
  """The last value of ``--name=V``, ``--name V`` or ``-name=V`` in ``argv``, else None."""
  value = None
  args = argv[1:]
  for i, arg in enumerate(args):
    if arg == "--":  # absl stops reading flags here
      break
    for spelling in (f"--{name}", f"-{name}"):
      if arg.startswith(spelling + "="):
        value = arg[len(spelling) + 1 :]
      elif arg == spelling and i + 1 < len(args):
        value = args[i + 1]
  return value


def parse_absl_flags(argv: list[str]) -> list[str]:
  """``FLAGS(argv)``: an error is one line, and --help exits with 0 (absl: 2 lines, and 1)."""
  try:
    return FLAGS(argv)
  except flags.Error as e:
    flag_error(f"{e} (--help lists the flags)")
  except SystemExit as e:
    # absl's help flags print the usage and exit with 1; asking for help is no error.
    if e.code == 1:
      sys.exit(0)
    raise


def load_config_file(path: str):
  """The config file as a module, executed as ml_collections will execute it."""
  name = "config_file_" + re.sub(r"\W", "_", os.path.splitext(os.path.basename(path))[0])
  spec = importlib.util.spec_from_file_location(name, path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def check_config_spec(spec: str):
  """Loads ``--config``'s file and builds its config; returns the module.

  ml_collections reports a missing file only when the config is first used,
  and an argument its get_config rejects as a traceback inside the flag
  error, so both are checked here first.

  Raises:
    ValueError: one line naming the file or argument and what is allowed.
  """
  path, colon, arg = spec.partition(":")
  if not os.path.isfile(path):
    directory = os.path.dirname(path) or "."
    names = [name for name, _ in config_files(directory)]
    there = f"config files in {directory}: {', '.join(names)}" if names else "no config files there"
    raise ValueError(f"no file {path!r} ({there})")
  try:
    module = load_config_file(path)
  except ImportError as e:
    raise ValueError(f"{path} cannot be imported: {e} (run from the repository root)") from e
  if not callable(getattr(module, "get_config", None)):
    raise ValueError(f"{path} defines no get_config(arg)")
  module.get_config(*([arg] if colon else []))
  return module


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


def _accepted_args(function) -> list[config_lib.ConfigArg] | None:
  try:
    return config_lib.config_args(function)
  except Exception:  # noqa: BLE001 - a config that needs an argument lists none
    return None


def describe_config_args(path: str) -> list[str]:
  """The lines listing the keys of the argument of config file ``path``.

  They are what its ``get_config`` (this command) and ``sweep`` (the
  runner, ``experiments/reproduce.py``) hand to ``config_lib.parse_arg``.
  """
  module = load_config_file(path)
  single = _accepted_args(module.get_config)
  swept = _accepted_args(module.sweep) if callable(getattr(module, "sweep", None)) else None
  if single is None:
    return [f"The arguments of {path} could not be listed: its get_config() needs one."]
  if not single and not swept:
    return [f"{path} takes no argument."]
  keys = {arg.name: arg for arg in [*single, *(swept or [])]}
  in_single = {arg.name for arg in single}
  in_sweep = {arg.name for arg in swept or []}
  rows = [("key", "type", "default", "meaning")]
  for key, arg in keys.items():
    kind = "flag" if isinstance(arg.default, bool) else type(arg.default).__name__
    meaning = arg.meaning
    if swept is not None and key not in in_sweep:
      meaning = "(random_bases.main only: which run; the sweep runs all) " + meaning
    elif key not in in_single:
      meaning = "(the sweep only: experiments.reproduce) " + meaning
    rows.append((key, kind, config_lib.format_arg_value(arg.default), meaning.strip()))
  # A long default (a list of pairs) overflows its column rather than pushing every meaning right.
  widths = [max(len(row[i]) for row in rows if len(row[i]) <= 24) for i in range(3)]
  lines = [
    f"Arguments of {path} (--config={path}:key=value,...; a bare flag key means true; "
    "the file's docstring has examples):"
  ]
  for key, kind, default, meaning in rows:
    lines.append(
      f"  {key:<{widths[0]}}  {kind:<{widths[1]}}  {default:<{widths[2]}}  {meaning}".rstrip()
    )
  return lines


def expand_paths(config) -> None:
  """``~`` in the config's data paths means the home folder, as it does in --workdir."""
  config.data.dir = os.path.expanduser(config.data.dir)
  config.data.cache_dir = os.path.expanduser(config.data.cache_dir)
