"""Argument checks shared by every layer (pure Python, no dependencies).

Each raises a ``ValueError`` that names the argument and the allowed values,
so a bad setting fails with one clear line before anything is compiled.
"""

from __future__ import annotations


def check_choice(name: str, value, allowed) -> None:
  """Raises a ValueError naming the argument and its allowed values."""
  if value not in allowed:
    raise ValueError(
      f"{name}={value!r} is not supported; allowed values: " + ", ".join(repr(a) for a in allowed)
    )
