"""The command line as a user sees it: help, errors in one line, Ctrl-C, --describe, paths.

Most tests run ``python -m random_bases.main`` as a subprocess on tiny runs of
the MNIST sample shipped with the package (``configs/default.py:runlocal``,
cut to a few steps). ``tests/test_train.py`` has the earlier command-line
tests (resume, refusal, unknown fields, divergence, the field table).
"""

import errno
import json
import os
import pathlib
import re
import signal
import subprocess
import sys

import pytest

from random_bases import cli, config_lib, train
from random_bases import workdir as workdir_lib

ROOT = pathlib.Path(__file__).resolve().parents[1]
DEFAULT = str(ROOT / "configs" / "default.py")
# A run of a few seconds: 4 steps of d = 10, 200 images evaluated.
TINY = [
  f"--config={DEFAULT}:runlocal",
  "--config.train.epochs=1",
  "--config.bases.d=10",
  "--config.train.steps_per_epoch=4",
  "--config.train.log_every_steps=2",
  "--config.train.eval_examples=200",
  "--config.train.eval_batch_size=100",
]


def environment(**extra):
  env = {k: v for k, v in os.environ.items() if k != cli.TRACEBACK_ENV_VAR}
  return dict(env, JAX_PLATFORMS="cpu", PYTHONPATH=str(ROOT), **extra)


def command(*args):
  return [sys.executable, "-m", "random_bases.main", *args]


def run_main(*args, cwd=ROOT, **env):
  return subprocess.run(
    command(*args), cwd=cwd, capture_output=True, text=True, env=environment(**env)
  )


ABSL_LOG_LINE = re.compile(r"^[IWEF]\d{4} \d\d:\d\d:\d\d\.\d+ +\d+ \S+:\d+\] ")


def message_lines(stderr: str) -> list[str]:
  """stderr without absl's log lines ("I1130 11:42:02.442 140 train.py:605] ...")."""
  return [line for line in stderr.splitlines() if line and not ABSL_LOG_LINE.match(line)]


# --- --help ------------------------------------------------------------------------------


@pytest.mark.parametrize("flag", ["--help", "-h"])
def test_help_exits_0_and_says_where_the_fields_are(flag):
  # Before: absl's --help exited with 1; -h was an unknown flag.
  out = run_main(flag)
  assert out.returncode == 0, out.stderr[-2000:]
  assert "--describe" in out.stdout and "--traceback" in out.stdout
  assert cli.TRACEBACK_ENV_VAR in out.stdout


# --- errors in flags and config files ------------------------------------------------------


@pytest.mark.parametrize(
  "spec,expected",
  [
    (
      "configs/nope.py",
      "FATAL Flags parsing error: --config=configs/nope.py: no file 'configs/nope.py' "
      "(config files in configs: default.py, fig1.py,",
    ),
    (
      "configs/default.py:runlocl",
      "FATAL Flags parsing error: --config=configs/default.py:runlocl: config argument "
      "'runlocl' is unknown; allowed: runlocal",
    ),
    (
      "configs/table1.py:epochs=two",
      "FATAL Flags parsing error: --config=configs/table1.py:epochs=two: config argument "
      "epochs='two' must be of type int",
    ),
  ],
)
def test_a_bad_config_file_or_argument_is_one_line(spec, expected, tmp_path):
  # Before: a 15-43-line traceback.
  out = run_main(f"--config={spec}", f"--workdir={tmp_path / 'run'}")
  assert out.returncode == 1
  (line,) = out.stderr.strip().splitlines()
  assert line.startswith(expected)
  assert not (tmp_path / "run").exists()


def test_an_unknown_flag_is_one_line():
  out = run_main(f"--config={DEFAULT}", "--workdri=/tmp/x")
  assert out.returncode == 1
  assert out.stderr.strip().splitlines() == [
    "FATAL Flags parsing error: Unknown command line flag 'workdri'. Did you mean: workdir ? "
    "(--help lists the flags)"
  ]


def test_missing_workdir_is_one_line():
  out = run_main(f"--config={DEFAULT}")
  assert out.returncode == 1
  assert out.stderr.strip().splitlines() == [
    "--config and --workdir are required (--help lists the flags; --describe the config "
    "files and fields)"
  ]


# --- --describe: the config file's arguments ---------------------------------------------------


def test_describe_lists_the_arguments_of_the_config_file():
  # Before: every field, but not runlocal, epochs, steps ... nor model=.
  out = run_main("--describe", "--config=configs/table1.py:epochs=2")
  assert out.returncode == 0, out.stderr[-2000:]
  section = out.stdout.split("Arguments of configs/table1.py")[1].split("\n\n")[0]
  rows = {line.split()[0]: line.split(None, 3)[1:] for line in section.splitlines()[1:]}
  assert list(rows) == [
    "key",
    "runlocal",
    "epochs",
    "steps",
    "eval",
    "nes_steps",
    "model",
    "dataset",
    "method",
  ]
  assert rows["runlocal"][:2] == ["flag", "false"]
  assert rows["epochs"] == ["int", "0", "epochs to train; 0 = the paper's"]
  assert rows["steps"][:2] == ["int", "-1"] and "whole training split" in rows["steps"][2]
  assert rows["model"][:2] == ["str", "fc"] and "the sweep runs all" in rows["model"][2]
  assert "train.epochs" in out.stdout and "2 (default 100)" in out.stdout  # the fields too


def test_config_args_come_from_what_the_config_hands_to_parse_arg():
  module = cli.load_config_file(str(ROOT / "configs" / "table4.py"))
  args = {a.name: a for a in config_lib.config_args(module.sweep)}
  assert args["lo"].default == -12 and args["runlocal"].default is False
  assert args["nes_steps"].meaning.startswith("NES's steps per epoch")
  default = cli.load_config_file(DEFAULT)
  assert [(a.name, a.default) for a in config_lib.config_args(default.get_config)] == [
    ("runlocal", False)
  ]
  # Outside config_args nothing is recorded.
  assert config_lib.parse_arg("runlocal", runlocal=False).runlocal is True


# --- a run: no config dump, ~ expanded -------------------------------------------------------


def test_a_run_expands_home_and_writes_its_config_to_the_workdir_not_the_console(tmp_path):
  # Before: a 50-line config dump on every start, and --workdir=~/x made ./~/x.
  home = tmp_path / "home"
  home.mkdir()
  out = run_main(
    *TINY, "--workdir=~/run", "--config.data.cache_dir=~/cache", cwd=tmp_path, HOME=str(home)
  )
  assert out.returncode == 0, out.stderr[-3000:]
  assert not (tmp_path / "~").exists()
  record = json.loads((home / "run" / "config.json").read_text())
  assert record["bases"]["d"] == 10 and record["data"]["cache_dir"] == str(home / "cache")
  assert f"Results in {home / 'run'}" in out.stderr
  assert "Config:\n" not in out.stderr and "  d: 10\n" not in out.stderr
  assert len(out.stderr.splitlines()) < 30, out.stderr  # the dump alone was 50 lines


def test_expand_paths_expands_the_data_locations(monkeypatch):
  monkeypatch.setenv("HOME", "/home/someone")
  config = config_lib.base_config()
  config.data.dir, config.data.cache_dir = "~/data/mnist", "~/cache"
  cli.expand_paths(config)
  assert (config.data.dir, config.data.cache_dir) == (
    "/home/someone/data/mnist",
    "/home/someone/cache",
  )


def test_a_refusal_is_the_one_message_without_a_config_dump(tmp_path):
  # A workdir holding a run with d = 20; this command asks for d = 10.
  workdir = tmp_path / "run"
  workdir.mkdir()
  held = cli.load_config_file(DEFAULT).get_config("runlocal")
  held.bases.d = 20
  (workdir / "config.json").write_text(held.to_json_best_effort())
  (workdir / "metrics.jsonl").write_text(json.dumps({"epoch": 1}) + "\n")
  out = run_main(*TINY, f"--workdir={workdir}")
  assert out.returncode == 1
  assert "Traceback" not in out.stderr and "Config:\n" not in out.stderr
  lines = message_lines(out.stderr)
  assert lines[0] == (
    f"WorkdirMismatch: workdir {workdir} holds a run with a different config (old -> new):"
  )
  assert "  bases.d: 20 -> 10" in lines


# --- user-facing errors: one line, the traceback on request ------------------------------------


def test_an_unusable_workdir_is_one_line_and_the_traceback_is_on_request(tmp_path):
  (tmp_path / "file").write_text("")
  workdir = tmp_path / "file" / "run"  # under a file: ENOTDIR
  out = run_main(*TINY, f"--workdir={workdir}")
  assert out.returncode == 1
  assert "Traceback" not in out.stderr
  (line,) = message_lines(out.stderr)
  assert str(workdir) in line or str(tmp_path / "file") in line
  out = run_main(*TINY, f"--workdir={workdir}", "--traceback")
  assert out.returncode == 1 and "Traceback (most recent call last)" in out.stderr


@pytest.mark.parametrize(
  "error,message",
  [
    (workdir_lib.WorkdirLocked("workdir /w is in use"), "WorkdirLocked: workdir /w is in use"),
    (workdir_lib.WorkdirNotWritable("no space"), "WorkdirNotWritable: no space"),
    (workdir_lib.WorkdirMismatch("other config"), "WorkdirMismatch: other config"),
    (workdir_lib.WorkdirError("held"), "WorkdirError: held"),
    (ValueError("no MNIST in /d"), "Invalid input: no MNIST in /d"),
    (train.TrainingDiverged("the loss is nan"), "TrainingDiverged: the loss is nan"),
    (
      OSError(errno.ENOSPC, "No space left on device", "/w/metrics.jsonl"),
      "OSError: [Errno 28] No space left on device: '/w/metrics.jsonl'",
    ),
    (
      PermissionError(errno.EACCES, "Permission denied", "/w"),
      "PermissionError: [Errno 13] Permission denied: '/w'",
    ),
    (OSError(errno.EROFS, "Read-only file system"), "OSError: [Errno 30] Read-only file system"),
    (RuntimeError("a bug"), None),
    (KeyError("a bug"), None),
    (OSError(errno.ECONNREFUSED, "Connection refused"), None),
  ],
)
def test_user_errors_have_one_message_and_bugs_none(error, message):
  assert cli.user_error_message(error) == message


def test_report_errors_exits_with_the_message_or_keeps_the_traceback(monkeypatch, capsys):
  monkeypatch.delenv(cli.TRACEBACK_ENV_VAR, raising=False)

  def fail(error):
    def function():
      raise error

    return function

  def interrupted():
    return "Interrupted: resume with the same command"

  with pytest.raises(SystemExit) as exit_:
    cli.report_errors(
      fail(ValueError("bad")), interrupted=interrupted, value_error="Invalid config"
    )
  assert exit_.value.code == "Invalid config: bad"  # printed to stderr, exit status 1
  with pytest.raises(SystemExit) as exit_:
    cli.report_errors(fail(KeyboardInterrupt()), interrupted=interrupted)
  assert exit_.value.code == cli.INTERRUPTED_EXIT_CODE == 130
  assert capsys.readouterr().err == "Interrupted: resume with the same command\n"
  with pytest.raises(RuntimeError):  # a bug keeps its traceback
    cli.report_errors(fail(RuntimeError("bug")), interrupted=interrupted)
  monkeypatch.setenv(cli.TRACEBACK_ENV_VAR, "1")
  with pytest.raises(ValueError):
    cli.report_errors(fail(ValueError("bad")), interrupted=interrupted)
  with pytest.raises(KeyboardInterrupt):
    cli.report_errors(fail(KeyboardInterrupt()), interrupted=interrupted)
  assert cli.report_errors(lambda: 7, interrupted=interrupted) == 7


# --- Ctrl-C ---------------------------------------------------------------------------------


def test_ctrl_c_says_how_to_resume_and_exits_130(tmp_path):
  # Before: a KeyboardInterrupt traceback.
  workdir = tmp_path / "run"
  args = [*TINY, f"--workdir={workdir}", "--config.train.epochs=1000"]
  # Started as from a terminal, with SIGINT at its default: a child inherits an
  # ignored SIGINT, and under pytest-xdist the worker's SIGINT was seen ignored
  # after other tests (the child then trained all 1000 epochs).
  process = subprocess.Popen(
    command(*args),
    cwd=ROOT,
    stderr=subprocess.PIPE,
    text=True,
    env=environment(),
    preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
  )
  seen = []
  try:
    for line in process.stderr:
      seen.append(line)
      if "img/s" in line:  # the first progress line: training has started
        break
    process.send_signal(signal.SIGINT)
    rest = process.stderr.read()
    process.wait(timeout=60)
  finally:
    process.kill()
  assert any("img/s" in line for line in seen), "".join(seen)[-3000:]
  assert process.returncode == 130, rest[-3000:]
  assert "Traceback" not in rest and "KeyboardInterrupt" not in rest
  (line,) = message_lines(rest)
  assert line.startswith("Interrupted") and str(workdir) in line
  assert line.endswith("python -m random_bases.main " + " ".join(args))
