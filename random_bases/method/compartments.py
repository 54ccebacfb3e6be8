"""Compartments: how the parameter vector is split into independent bases.

The parameters (any pytree) are viewed as one flat float32 vector of length D.
A *compartment* is a contiguous range of that vector with its own basis of
``dim`` directions (§3.1.1 of the paper). The flat vector is laid out so that
every compartment is contiguous: leaves are ordered by the compartment they
belong to (in pytree order within a compartment), or, for even slices, kept in
pytree order and cut into K ranges.

Schemes (``compartments=``):

* ``None`` — one basis over all parameters (the paper's default).
* ``K`` (int) — K even slices of the flat vector; the first ``D mod K``
  slices are one element longer.
* ``"leaf"`` — one compartment per parameter tensor (the rule that gives
  Table 3's d for ResNet-8).
* ``"module"`` — one per module: leaves that share the name without its last
  part (e.g. ``Dense_0/kernel`` and ``Dense_0/bias``).
* a sequence of regular expressions — one compartment per rule; a leaf joins
  the first rule that ``re.search``-es its name (``"Dense_0/kernel"``).
  Every leaf must be covered and every rule must match a leaf.

A leaf's *name* is its pytree key path as the user wrote it, '/'-joined:
dict keys, attribute names and sequence indices (``layers/0/weight`` for an
equinox MLP, ``mlp/~/linear/w`` for haiku, ``Dense_0/kernel`` for linen). A
``.value`` attribute that is the only child of its node is a box around the
array, not a name the user chose (flax NNX's ``Variable``, linen's
``nn.Partitioned``), so it is left out: an NNX model's kernel is
``dense_out/kernel``, whether ``init`` sees its ``Param`` or ``update`` the
plain array.

Allocation of directions (``allocation=``, with ``d``):

* ``"proportional"`` — ``d`` is the total; compartment k gets
  ``d * n_k / D`` rounded by the largest-remainder method: floors first, then
  the leftover directions go one each to the compartments with the largest
  fractional parts (ties to the earlier compartment), so the d_k sum to d.
* ``"fixed"`` — every compartment gets ``d`` (total K d; Fig. B.10's 5 x 250).
* ``"compression"`` — ``d`` is read as a compression factor c:
  ``d_k = max(ceil(n_k / c), 10)``, rounded up to even, and at most n_k (a
  compartment with fewer parameters than that gets one direction per
  parameter). With per-tensor compartments this reproduces Table 3's d
  exactly (c = 10, 25, 50, 100 give 7,982, 3,328, 1,782, 1,018 on ResNet-8).
* a sequence of ints for ``d`` gives every compartment's d explicitly.

Every compartment needs ``1 <= d_k <= n_k``: more unit directions than
dimensions span nothing new and make ``P P^T`` scale the projected gradient
up (its eigenvalues are about d_k / n_k), so ``make_layout`` rejects it.

``make_layout`` reads only shapes and dtypes, so it accepts a tree of
``jax.ShapeDtypeStruct`` (e.g. from ``jax.eval_shape``): a trainer can check a
configuration against its model before loading data or compiling anything.
"""

from __future__ import annotations

import collections
import dataclasses
import math
import re
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from random_bases.checks import check_choice

ALLOCATIONS = ("proportional", "fixed", "compression")
SCHEMES = ("leaf", "module")
MIN_COMPRESSED_DIM = 10


@dataclasses.dataclass(frozen=True)
class Compartment:
  """One contiguous range ``[start, start + size)`` of the flat vector."""

  name: str
  start: int
  size: int
  dim: int


@dataclasses.dataclass(frozen=True)
class BasisLayout:
  """Where every parameter sits in the flat vector and which basis owns it.

  Attributes:
    treedef: structure of the parameter pytree.
    paths: the name of every leaf (``leaf_names``), in pytree order.
    shapes, dtypes: of every leaf, in pytree order.
    leaf_order: the order in which leaves are concatenated.
    compartments: the contiguous compartments, in flat-vector order.
  """

  treedef: jax.tree_util.PyTreeDef
  paths: tuple[str, ...]
  shapes: tuple[tuple[int, ...], ...]
  dtypes: tuple[np.dtype, ...]
  leaf_order: tuple[int, ...]
  compartments: tuple[Compartment, ...]

  @property
  def size(self) -> int:
    """D, the number of parameters."""
    return sum(c.size for c in self.compartments)

  @property
  def dim(self) -> int:
    """d, the total number of directions."""
    return sum(c.dim for c in self.compartments)

  def ravel(self, tree) -> jax.Array:
    """The pytree as one float32 vector, in layout order."""
    leaves = self.treedef.flatten_up_to(tree)
    return jnp.concatenate([jnp.ravel(leaves[i]).astype(jnp.float32) for i in self.leaf_order])

  def unravel(self, flat: jax.Array):
    """Inverse of ``ravel``; each leaf gets back its own shape and dtype."""
    sizes = [math.prod(self.shapes[i]) for i in self.leaf_order]
    pieces = jnp.split(flat, np.cumsum(sizes)[:-1])
    leaves = [None] * len(self.shapes)
    for i, piece in zip(self.leaf_order, pieces):
      leaves[i] = piece.reshape(self.shapes[i]).astype(self.dtypes[i])
    return self.treedef.unflatten(leaves)


def _entry_name(entry) -> str:
  for attr in ("key", "name", "idx"):
    if hasattr(entry, attr):
      return str(getattr(entry, attr))
  return str(entry)


def _is_box(entry) -> bool:
  return isinstance(entry, jax.tree_util.GetAttrKey) and entry.name == "value"


def leaf_names(tree) -> tuple[str, ...]:
  """The user-facing name of every leaf, in pytree order (see the module docstring).

  ``{"params": {"Dense_0": {"kernel": w}}}`` gives ``("params/Dense_0/kernel",)``;
  an NNX ``State`` of ``Param``s gives the same names as its plain arrays.
  """
  paths = [path for path, _ in jax.tree_util.tree_flatten_with_path(tree)[0]]
  parts = [tuple(_entry_name(entry) for entry in path) for path in paths]
  # How many leaves sit below each node: a box holds exactly one.
  below = collections.Counter(p[:k] for p in parts for k in range(len(p)))
  names = []
  for path, p in zip(paths, parts):
    if path and _is_box(path[-1]) and below[p[:-1]] == 1:
      p = p[:-1]
    names.append("/".join(p))
  return tuple(names)


def validate_scheme(compartments) -> None:
  """Checks the ``compartments`` argument without seeing any parameters."""
  if compartments is None:
    return
  if isinstance(compartments, bool):
    pass  # bool is an int; reject it below with the generic message
  elif isinstance(compartments, (int, np.integer)):
    if compartments < 1:
      raise ValueError(
        f"compartments={compartments} must be >= 1 (the number of even "
        "slices); allowed values: None, a positive int, 'leaf', 'module', "
        "or a sequence of regular expressions"
      )
    return
  elif isinstance(compartments, str):
    if compartments in SCHEMES:
      return
  elif isinstance(compartments, Sequence) and compartments:
    for rule in compartments:
      if not isinstance(rule, str):
        raise ValueError(f"compartments rule {rule!r} must be a regular-expression string")
      try:
        re.compile(rule)
      except re.error as e:
        raise ValueError(
          f"compartments rule {rule!r} is not a valid regular expression: {e}"
        ) from e
    return
  raise ValueError(
    f"compartments={compartments!r} is not supported; allowed values: None, "
    "a positive int (even slices), 'leaf', 'module', or a non-empty "
    "sequence of regular expressions over parameter names"
  )


def validate_allocation(d, allocation: str) -> None:
  """Checks ``d`` and ``allocation`` without seeing any parameters."""
  check_choice("allocation", allocation, ALLOCATIONS)
  if isinstance(d, Sequence) and not isinstance(d, str):
    if allocation == "compression":
      raise ValueError(
        "d must be a single compression factor when allocation='compression', not a sequence"
      )
    if not d or any(_not_positive_int(v) for v in d):
      raise ValueError(f"d={list(d)} must be positive integers, one per compartment")
    return
  if allocation == "compression":
    if isinstance(d, bool) or not isinstance(d, (int, float, np.number)) or d <= 0:
      raise ValueError(
        f"d={d!r} is read as the compression factor c when allocation='compression' and must be > 0"
      )
    return
  if _not_positive_int(d):
    raise ValueError(f"d={d!r} must be a positive integer (the number of random directions)")


def _not_positive_int(v) -> bool:
  return isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v <= 0


def _groups(paths: Sequence[str], compartments) -> list[tuple[str, list[int]]]:
  """Leaf indices of each compartment for the leaf-based schemes."""
  if compartments is None:
    return [("all", list(range(len(paths))))]
  if compartments == "leaf":
    return [(p, [i]) for i, p in enumerate(paths)]
  if compartments == "module":
    groups: dict[str, list[int]] = {}
    for i, p in enumerate(paths):
      groups.setdefault(p.rpartition("/")[0] or p, []).append(i)
    return list(groups.items())
  rules = [re.compile(r) for r in compartments]
  members: list[list[int]] = [[] for _ in rules]
  for i, p in enumerate(paths):
    for r, rule in enumerate(rules):
      if rule.search(p):
        members[r].append(i)
        break
    else:
      raise ValueError(
        f"compartments: parameter {p!r} is covered by no rule; rules: "
        f"{list(compartments)}. Add a rule (e.g. '.*') that matches it."
      )
  for rule, m in zip(compartments, members):
    if not m:
      raise ValueError(
        f"compartments rule {rule!r} covers no parameter (or only ones an "
        f"earlier rule took); parameter names: {list(paths)}"
      )
  return [(rule, m) for rule, m in zip(compartments, members)]


def allocate(sizes: Sequence[int], d, allocation: str) -> list[int]:
  """Directions per compartment; see the module docstring for the rules."""
  if isinstance(d, Sequence):
    if len(d) != len(sizes):
      raise ValueError(f"d has {len(d)} entries but there are {len(sizes)} compartments")
    return [int(v) for v in d]
  if allocation == "fixed":
    return [int(d)] * len(sizes)
  if allocation == "compression":
    dims = [max(math.ceil(n / d), MIN_COMPRESSED_DIM) for n in sizes]
    return [min(k + (k % 2), n) for k, n in zip(dims, sizes)]
  total = sum(sizes)
  exact = [d * n / total for n in sizes]
  dims = [math.floor(x) for x in exact]
  leftover = int(d) - sum(dims)
  by_remainder = sorted(range(len(sizes)), key=lambda k: (dims[k] - exact[k], k))
  for k in by_remainder[:leftover]:
    dims[k] += 1
  return dims


def make_layout(tree, *, d, compartments=None, allocation: str = "proportional") -> BasisLayout:
  """Builds the layout for a parameter pytree (shapes only are read).

  Args:
    tree: the parameters, or any pytree of the same structure whose leaves
      have ``shape`` (and optionally ``dtype``), such as
      ``jax.ShapeDtypeStruct``.
    d: directions; see the module docstring.
    compartments: the compartment scheme; see the module docstring.
    allocation: ``'proportional'``, ``'fixed'`` or ``'compression'``.

  Returns:
    The ``BasisLayout``.

  Raises:
    ValueError: when the tree has no leaves, a rule covers no parameter, a
      parameter is covered by no rule, there are more slices than
      parameters, or a compartment gets d_k < 1 or d_k > n_k directions.
  """
  validate_scheme(compartments)
  validate_allocation(d, allocation)
  leaves, treedef = jax.tree_util.tree_flatten(tree)
  if not leaves:
    raise ValueError("the parameter pytree has no leaves")
  paths = leaf_names(tree)
  shapes = tuple(tuple(np.shape(x)) for x in leaves)
  dtypes = tuple(np.dtype(getattr(x, "dtype", np.float32)) for x in leaves)
  sizes = [math.prod(s) for s in shapes]
  total = sum(sizes)

  if isinstance(compartments, (int, np.integer)) and not isinstance(compartments, bool):
    if compartments > total:
      raise ValueError(
        f"compartments={compartments} even slices is more than the {total} parameters"
      )
    base, extra = divmod(total, int(compartments))
    names = [f"slice {k}/{compartments}" for k in range(compartments)]
    slice_sizes = [base + (k < extra) for k in range(compartments)]
    leaf_order = tuple(range(len(paths)))
  else:
    groups = _groups(paths, compartments)
    names = [name for name, _ in groups]
    slice_sizes = [sum(sizes[i] for i in m) for _, m in groups]
    leaf_order = tuple(i for _, m in groups for i in m)

  dims = allocate(slice_sizes, d, allocation)
  for name, n, k in zip(names, slice_sizes, dims):
    if k <= 0:
      raise ValueError(
        f"compartment {name!r} ({n} parameters) gets d_k={k} directions; "
        f"every compartment needs d_k >= 1: raise d (now {d}), use "
        "allocation='fixed', or use fewer compartments"
      )
    if k > n:
      raise ValueError(
        f"compartment {name!r} ({n} parameters) gets d_k={k} directions; "
        f"every compartment needs d_k <= n_k, its number of parameters: "
        f"lower d (now {d}), use fewer compartments, or use "
        "allocation='compression', which caps d_k at n_k"
      )
  starts = np.concatenate([[0], np.cumsum(slice_sizes)[:-1]]).astype(int)
  comps = tuple(
    Compartment(name, int(s), int(n), int(k))
    for name, s, n, k in zip(names, starts, slice_sizes, dims)
  )
  return BasisLayout(treedef, paths, shapes, dtypes, leaf_order, comps)
