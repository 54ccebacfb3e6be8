"""The method layer depends on jax and optax only."""

import subprocess
import sys


def test_method_layer_imports_no_framework_above_it():
  script = (
    "import sys, random_bases, random_bases.method\n"
    "bad = [m for m in ('flax', 'tensorflow', 'tensorflow_datasets', "
    "'ml_collections', 'random_bases.train', 'random_bases.models', "
    "'random_bases.data') if m in sys.modules]\n"
    "assert not bad, bad\n"
  )
  subprocess.run([sys.executable, "-c", script], check=True)
