"""Compartment layouts and the allocation of directions."""

import jax
import jax.numpy as jnp
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
  variables = jax.eval_shape(
    lambda: models.init_variables(
      models.create_model("resnet8"), key=jax.random.key(0), input_shape=(32, 32, 3)
    )
  )
  layout = rb.make_layout(variables["params"], d=c, compartments="leaf", allocation="compression")
  assert len(layout.compartments) == 32  # every conv kernel, BN scale/offset, dense kernel/bias
  assert layout.size == 78_330
  assert layout.dim == expected
  assert all(k.dim % 2 == 0 and k.dim >= 10 for k in layout.compartments)


def test_layout_ravel_unravel_round_trip_and_contiguity():
  tree = {
    "x": {"kernel": np.arange(6.0, dtype=np.float32).reshape(2, 3), "bias": np.ones(2, np.float32)},
    "y": {"bias": np.full(3, 7.0, np.float32)},
  }
  layout = rb.make_layout(tree, d=2, compartments=["bias", "kernel"], allocation="fixed")
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
  variables = jax.eval_shape(
    lambda: models.init_variables(
      models.create_model("cnn"), key=jax.random.key(0), input_shape=(28, 28, 1)
    )
  )
  layout = rb.make_layout(variables["params"], d=250, compartments="module", allocation="fixed")
  # Fig. B.10: five CNN layers x 250 directions.
  assert len(layout.compartments) == 5 and layout.dim == 1250
  assert layout.size == 93_322


def test_compression_caps_d_k_at_the_compartment_size():
  # max(ceil(n / 10), 10) rounded up to even: 10, 10, 10, 10, 100; capped at
  # n for the 3- and 9-entry tensors.
  assert comp_lib.allocate([3, 9, 11, 40, 1000], 10, "compression") == [3, 9, 10, 10, 100]
  # c = 1: ceil(11 / 1) = 11, rounded up to 12, capped at 11.
  assert comp_lib.allocate([11, 30], 1, "compression") == [11, 30]


@pytest.mark.parametrize(
  "d,compartments,allocation,match",
  [
    (21, None, "proportional", r"compartment 'all' \(20 parameters\) gets d_k=21"),
    (8, "leaf", "fixed", r"compartment 'b' \(5 parameters\) gets d_k=8"),
    ([5, 16], "leaf", "proportional", r"compartment 'w' \(15 parameters\) gets d_k=16"),
  ],
)
def test_more_directions_than_parameters_is_rejected(d, compartments, allocation, match):
  tree = {"b": np.zeros(5, np.float32), "w": np.zeros((3, 5), np.float32)}
  with pytest.raises(ValueError, match=match + r" directions; every compartment needs d_k <= n_k"):
    rb.make_layout(tree, d=d, compartments=compartments, allocation=allocation)
  # As many directions as parameters is the largest allowed.
  layout = rb.make_layout(tree, d=[5, 15], compartments="leaf")
  assert [c.dim for c in layout.compartments] == [5, 15]


def test_layout_from_shapes_alone_equals_layout_from_arrays():
  arrays = {
    "conv": {"kernel": np.zeros((3, 3, 2, 4), np.float32), "bias": np.zeros(4, np.float32)},
    "dense": {"kernel": np.zeros((36, 10), jnp.bfloat16)},
  }
  shapes = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), arrays)
  from_shapes = rb.make_layout(shapes, d=10, compartments="leaf", allocation="compression")
  assert from_shapes == rb.make_layout(arrays, d=10, compartments="leaf", allocation="compression")
  assert [(c.name, c.size, c.dim) for c in from_shapes.compartments] == [
    ("conv/bias", 4, 4),
    ("conv/kernel", 72, 10),
    ("dense/kernel", 360, 36),
  ]
  assert from_shapes.dtypes == (np.float32, np.float32, jnp.bfloat16)
  # A configuration that cannot fit is rejected from the shapes alone.
  with pytest.raises(ValueError, match=r"'conv/bias' \(4 parameters\) gets d_k=50"):
    rb.make_layout(shapes, d=50, compartments="leaf", allocation="fixed")
