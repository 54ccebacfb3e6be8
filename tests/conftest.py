"""Test-session settings shared by every test and the processes tests start."""

import os
import tempfile

# Many tests compile the same tiny trainer step, in this process, in the other
# xdist worker and in the fresh processes the CLI and multi-device tests
# start. JAX's persistent compilation cache (set before jax is imported, and
# inherited by those processes) compiles each such program once per machine.
# It keys entries by program, jax version and flags, so a hit returns the same
# executable a compile would: no test's numbers depend on it.
os.environ.setdefault(
  "JAX_COMPILATION_CACHE_DIR",
  os.path.join(tempfile.gettempdir(), f"random_bases_test_jax_cache_{os.getuid()}"),
)
