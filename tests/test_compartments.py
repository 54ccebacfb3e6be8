"""Compartment layouts and the allocation of directions."""

import jax
import numpy as np
import pytest

import random_bases as rb
from random_bases import models
from random_bases.method import compartments as comp_lib


def test_proportional_allocation_uses_largest_remainders():
  # exact shares 0.7, 1.4, 4.9: floors 0, 1, 4; the two leftovers go to the
  # largest fractional parts (0.9, then 0.7).
  assert comp_lib.allocate([10, 20, 70], 7, "proportional") == [1, 1, 5]
  for d in range(3, 200, 7):
    dims = comp_lib.allocate([13, 1, 400, 77], d, "proportional")
    assert sum(dims) == d


def test_fixed_and_explicit_allocation():
  assert comp_lib.allocate([5, 6], 4, "fixed") == [4, 4]
  assert comp_lib.allocate([5, 6], [2, 9], "proportional") == [2, 9]


@pytest.mark.parametrize("c,expected", [(10, 7982), (25, 3328), (50, 1782), (100, 1018)])
def test_table3_dimensions_of_resnet8(c, expected):
  variables = jax.eval_shape(lambda: models.init_variables(
      models.create_model("resnet8"), key=jax.random.key(0), input_shape=(32, 32, 3)))
  layout = rb.make_layout(variables["params"], d=c, compartments="leaf",
                          allocation="compression")
  assert len(layout.compartments) == 32  # every conv kernel, BN scale/offset, dense kernel/bias
  assert layout.size == 78_330
  assert layout.dim == expected
  assert all(k.dim % 2 == 0 and k.dim >= 10 for k in layout.compartments)


def test_layout_ravel_unravel_round_trip_and_contiguity():
  tree = {"x": {"kernel": np.arange(6.0, dtype=np.float32).reshape(2, 3),
                "bias": np.ones(2, np.float32)},
          "y": {"bias": np.full(3, 7.0, np.float32)}}
  layout = rb.make_layout(tree, d=2, compartments=["bias", "kernel"],
                          allocation="fixed")
  # Biases first (rule order), then kernels: every compartment contiguous.
  assert [c.name for c in layout.compartments] == ["bias", "kernel"]
  assert [(c.start, c.size) for c in layout.compartments] == [(0, 5), (5, 6)]
  flat = np.asarray(layout.ravel(tree))
  np.testing.assert_array_equal(flat, [1, 1, 7, 7, 7, 0, 1, 2, 3, 4, 5])
  back = layout.unravel(layout.ravel(tree))
  for a, b in zip(jax.tree.leaves(back), jax.tree.leaves(tree)):
    np.testing.assert_array_equal(a, b)


def test_even_slices_spread_the_remainder():
  layout = rb.make_layout({"w": np.zeros(10)}, d=3, compartments=3, allocation="fixed")
  assert [c.size for c in layout.compartments] == [4, 3, 3]


def test_module_scheme_groups_by_parent_path():
  variables = jax.eval_shape(lambda: models.init_variables(
      models.create_model("cnn"), key=jax.random.key(0), input_shape=(28, 28, 1)))
  layout = rb.make_layout(variables["params"], d=250, compartments="module",
                          allocation="fixed")
  # Fig. B.10: five CNN layers x 250 directions.
  assert len(layout.compartments) == 5 and layout.dim == 1250
  assert layout.size == 93_322
