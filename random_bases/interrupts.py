"""Ctrl-C that is not lost.

Python turns SIGINT into a KeyboardInterrupt wherever the main thread runs
Python next. When that is code called from C++ (a ``__del__``, a library's
callback), the exception is reported as unraisable and dropped, and the run
goes on as if nothing was pressed. ``caught`` records every SIGINT as well
as raising it; the training loop calls ``raise_if_requested`` between
dispatches, so a dropped interrupt still stops the run there.
"""

from __future__ import annotations

import contextlib
import signal
import threading

_requested = threading.Event()


def _on_sigint(signum, frame) -> None:
  del signum, frame
  _requested.set()
  raise KeyboardInterrupt


@contextlib.contextmanager
def caught():
  """Within: SIGINT is recorded and raised. A no-op off the main thread, or where
  SIGINT is not Python's default (ignored, or handled by someone else)."""
  if (
    threading.current_thread() is not threading.main_thread()
    or signal.getsignal(signal.SIGINT) is not signal.default_int_handler
  ):
    yield
    return
  _requested.clear()
  previous = signal.signal(signal.SIGINT, _on_sigint)
  try:
    yield
  finally:
    signal.signal(signal.SIGINT, previous)
    _requested.clear()


def raise_if_requested() -> None:
  """Raises KeyboardInterrupt if a SIGINT came within ``caught`` (even one dropped since)."""
  if _requested.is_set():
    raise KeyboardInterrupt
