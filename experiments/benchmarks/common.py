"""What the benchmarks share: the machine, timing, peak memory and table cells."""

from __future__ import annotations

import datetime
import os
import platform
import resource
import statistics
import time
from collections.abc import Callable


def machine_description() -> dict:
  """The CPU, core count, platform, Python and jax versions, backend and date."""
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


def peak_rss_mib() -> float:
  """This process's peak resident memory so far, in MiB."""
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB


def median_seconds(fn: Callable, *args, repeats: int) -> float:
  """Median time of ``fn(*args)`` over ``repeats`` calls after an untimed one (compilation).

  Each call is ended by ``jax.block_until_ready``.
  """
  import jax

  jax.block_until_ready(fn(*args))
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    jax.block_until_ready(fn(*args))
    times.append(time.perf_counter() - start)
  return statistics.median(times)


def spread(values: list[float]) -> str:
  """(max - min) / mean, in percent: a table cell."""
  return f"{100 * (max(values) - min(values)) / statistics.mean(values):.0f} %"


def verdict(ok: bool) -> str:
  return "met" if ok else "NOT met"
