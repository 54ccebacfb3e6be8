"""Runs a function in a fresh Python process and returns its result, through JSON.

A fresh process has its own peak resident memory, its own compiled programs
and the environment it is given, such as the number of virtual CPU devices
(``cpu_devices``), which XLA reads once at start-up. The function must be
importable (a module's top-level function) and take and return JSON values.
"""

from __future__ import annotations

import importlib
import json
import os
import subprocess
import sys
import tempfile
from collections.abc import Callable
from typing import Any

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# How much of a failed child's output the error carries.
ERROR_TAIL_CHARS = 4000


def cpu_devices(count: int) -> dict[str, str]:
  """The environment that gives a process ``count`` virtual CPU devices and no others."""
  return {
    "XLA_FLAGS": f"--xla_force_host_platform_device_count={count}",
    "JAX_PLATFORMS": "cpu",
  }


def importable_name(function: Callable) -> str:
  """``module:function``, with a script's ``__main__`` named by its path under ROOT."""
  module = function.__module__
  if module == "__main__":
    main = sys.modules["__main__"]
    if main.__spec__ is not None:  # python -m experiments.x
      module = main.__spec__.name
    else:  # python experiments/x.py
      path = os.path.relpath(os.path.abspath(main.__file__), ROOT)
      module = os.path.splitext(path)[0].replace(os.sep, ".")
  return f"{module}:{function.__qualname__}"


def run(function: Callable, /, env: dict[str, str] | None = None, **kwargs) -> Any:
  """``function(**kwargs)`` in a fresh process, with ``env`` over this one's environment."""
  with tempfile.TemporaryDirectory() as tmp:
    result_path = os.path.join(tmp, "result.json")
    command = [
      sys.executable,
      "-m",
      __spec__.name,
      importable_name(function),
      json.dumps(kwargs),
      result_path,
    ]
    done = subprocess.run(
      command, env={**os.environ, **(env or {})}, cwd=ROOT, capture_output=True, text=True
    )
    if done.returncode:
      raise RuntimeError(
        f"{importable_name(function)}(**{kwargs}) failed in a child process:\n"
        + done.stderr[-ERROR_TAIL_CHARS:]
      )
    with open(result_path) as f:
      return json.load(f)


def _child(name: str, kwargs_json: str, result_path: str) -> None:
  module, function = name.split(":")
  result = getattr(importlib.import_module(module), function)(**json.loads(kwargs_json))
  with open(result_path, "w") as f:
    json.dump(result, f)


if __name__ == "__main__":
  _child(*sys.argv[1:])
