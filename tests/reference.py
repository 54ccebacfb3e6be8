"""Explicit dense references for the random-bases tests.

These rebuild the basis straight from the documented key contract
(``fold_in(seed, step, worker, compartment, row)``) with ``jax.random``, so
the library's block-wise loops are checked against plain dense algebra.
"""

import jax
import jax.numpy as jnp
import numpy as np


def row_key(seed, step, worker, compartment, row):
  key = jax.random.key(seed)
  for value in (step, worker, compartment, row):
    key = jax.random.fold_in(key, value)
  return key


def dense_basis(seed, step, worker, compartment, dim, n, distribution="normal",
                normalize="norm"):
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
  return np.concatenate([np.ravel(np.asarray(x, np.float64))
                         for x in jax.tree.leaves(tree)])
