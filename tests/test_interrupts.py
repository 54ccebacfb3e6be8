"""random_bases.interrupts: a SIGINT whose KeyboardInterrupt is dropped still stops the loop."""

import contextlib
import signal

import pytest

from random_bases import interrupts


def swallowed_sigint() -> None:
  """A SIGINT landing in code whose exception is dropped, as in a ``__del__``."""
  with contextlib.suppress(KeyboardInterrupt):
    signal.raise_signal(signal.SIGINT)


def test_a_dropped_interrupt_is_raised_at_the_next_check_and_the_handler_restored():
  before = signal.getsignal(signal.SIGINT)
  with interrupts.caught():
    interrupts.raise_if_requested()  # nothing pressed: nothing raised
    swallowed_sigint()
    with pytest.raises(KeyboardInterrupt):
      interrupts.raise_if_requested()
  assert signal.getsignal(signal.SIGINT) is before
  interrupts.raise_if_requested()  # cleared on the way out


def test_without_caught_a_dropped_interrupt_is_lost():
  # The reference: Python's own handler, which is what the training loop had before.
  swallowed_sigint()
  interrupts.raise_if_requested()


def test_a_sigint_that_someone_else_handles_is_left_to_them():
  seen = []
  previous = signal.signal(signal.SIGINT, lambda signum, frame: seen.append(signum))
  try:
    with interrupts.caught():
      signal.raise_signal(signal.SIGINT)
      interrupts.raise_if_requested()
    assert seen == [signal.SIGINT]
  finally:
    signal.signal(signal.SIGINT, previous)
