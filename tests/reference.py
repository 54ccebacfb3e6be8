"""Explicit dense references for the random-bases tests.

These rebuild the basis straight from the documented key contract
(``fold_in(seed, step, worker, compartment, row)``) with ``jax.random``, so
the library's block-wise loops are checked against plain dense algebra.
"""

import os
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest


def row_key(seed, step, worker, compartment, row):
  key = jax.random.key(seed)
  for value in (step, worker, compartment, row):
    key = jax.random.fold_in(key, value)
  return key


def dense_basis(seed, step, worker, compartment, dim, n, distribution="normal", normalize="norm"):
  """P as a [n, dim] matrix whose columns are the directions."""
  rows = []
  for i in range(dim):
    k = row_key(seed, step, worker, compartment, i)
    if distribution == "normal":
      r = jax.random.normal(k, (n,))
    elif distribution == "uniform":
      r = jax.random.uniform(k, (n,), minval=-1.0, maxval=1.0)
    else:
      r = jax.random.rademacher(k, (n,), jnp.float32)
    rows.append(np.asarray(r, np.float64))
  rows = np.stack(rows)
  if normalize == "norm":
    rows /= np.linalg.norm(rows, axis=1, keepdims=True)
  elif normalize == "expected":
    m2 = {"normal": 1.0, "uniform": 1 / 3, "bernoulli": 1.0}[distribution]
    rows /= np.sqrt(n * m2)
  return rows.T


def flat(tree):
  """Leaves concatenated in pytree order, as float64 numpy."""
  return np.concatenate([np.ravel(np.asarray(x, np.float64)) for x in jax.tree.leaves(tree)])


# Read once, at import: tests that change the variable to test the library's
# own search must not move the real data they compare against.
DATA_ROOT = os.environ.get("RANDOM_BASES_DATA_DIR", "")


def require_data(path, what):
  """`path` as a pathlib.Path if it exists; else the test cannot run.

  Under CI (CI=true) a missing data set fails the test, so CI never passes
  without the real data; elsewhere it skips, saying what is missing.
  """
  path = pathlib.Path(path)
  if not path.exists():
    missing_data(f"{what} not found at {path}")
  return path


def missing_data(message):
  """Fails the test under CI (CI=true), skips it elsewhere."""
  if os.environ.get("CI", "").lower() in ("true", "1"):
    pytest.fail(message + " (CI=true: missing data is a failure)")
  pytest.skip(message)


def shared_dataset(*parts):
  """$RANDOM_BASES_DATA_DIR/<parts>: the real data .ci/run points the tests at."""
  if not DATA_ROOT:
    missing_data(
      f"{'/'.join(parts)}: RANDOM_BASES_DATA_DIR is not set (point "
      "it at the shared datasets, e.g. ../shared/datasets)"
    )
  return require_data(pathlib.Path(DATA_ROOT, *parts).resolve(), "/".join(parts))


def mnist_fc_problem(num_test=None):
  """Real MNIST (first 20,000 training images) and an FC model at its init.

  Reads $RANDOM_BASES_DATA_DIR/mnist (see shared_dataset).

  Returns:
    (x_train, y_train, x_test, y_test, model, params0, loss) with
    loss(params, x, y) the mean softmax cross-entropy.
  """
  import optax

  from random_bases import data as data_lib
  from random_bases import models

  data = data_lib.load_dataset(
    "mnist", source="files", data_dir=str(shared_dataset("mnist")), holdout="none"
  )
  x_train = jnp.asarray(data.train_images[:20_000], jnp.float32) / 255.0
  y_train = jnp.asarray(data.train_labels[:20_000])
  x_test, y_test = data.eval_splits["test"]
  x_test = jnp.asarray(x_test[:num_test], jnp.float32) / 255.0
  y_test = jnp.asarray(y_test[:num_test])
  model = models.create_model("fc")
  params0 = models.init_variables(model, key=jax.random.key(0), input_shape=(28, 28, 1))["params"]

  def loss(params, x, y):
    logits = model.apply({"params": params}, x, train=False)
    return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

  return x_train, y_train, x_test, y_test, model, params0, loss


CHECKSUM_SCRIPT = """
import jax, jax.numpy as jnp, random_bases as rb
params = {{"w": jnp.linspace(-1.0, 1.0, 1000).reshape(10, 100),
          "b": jnp.linspace(0.0, 1.0, 10)}}
tx = rb.rbd(0.5, 64, seed=1234, compartments="leaf", allocation="proportional"{generator})
state = tx.init(params)
for _ in range(3):
  updates, state = jax.jit(tx.update)(params, state)
weights = jnp.arange(1, 1011, dtype=jnp.float32)
flat = jnp.concatenate([updates["b"], updates["w"].ravel()])
print(repr(float(jnp.dot(flat, weights))), repr(float(jnp.sum(flat ** 2))))
"""


def update_checksum_in_fresh_process(generator=None):
  """Two checksums of the third rbd update of a fixed problem, in a new process.

  generator=None uses the library's default.
  """
  import os
  import subprocess
  import sys

  argument = "" if generator is None else f", generator={generator!r}"
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  out = subprocess.run(
    [sys.executable, "-c", CHECKSUM_SCRIPT.format(generator=argument)],
    check=True,
    cwd=root,
    capture_output=True,
    text=True,
    env=dict(os.environ, JAX_PLATFORMS="cpu"),
  ).stdout.split()
  return [float(v) for v in out]
