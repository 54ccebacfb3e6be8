"""Block-wise projection onto a random basis and back, never storing it.

For one basis of ``dim`` directions in R^n (rows of Phi, keyed per row, see
``directions``) these loops compute

    c = Phi g          (coordinates, ``project``)
    u = Phi^T c        (expansion, ``expand``)

``block_rows`` directions at a time inside ``lax.scan``: each block is
generated, used, and dropped, so the extra memory is O(block_rows x n) whatever
``dim`` is. ``project_and_expand`` fuses both products on the same block while
it is in cache, so a single-worker step generates every direction once.

A row's scale (1/||phi||, 1/sqrt(n E[x^2]) or 1) is applied to the products,
not to the block, which saves a pass over the block.

A structured basis (``structure='srht'`` or ``'fastfood'``, see
``structured``) skips the loops: its products are a few Hadamard transforms
(reverse mode), and its blocks are materialised only for forward mode.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import jax
import jax.numpy as jnp

from random_bases.method import directions as dirs
from random_bases.method import structured

# Elements per generated block when ``block_rows`` is None. On CPU, 2^21
# float32 (8 MiB; 17 rows of the 122,570-parameter CNN) was the best
# compromise on 2 cores (experiments/benchmark.py): blocks need enough rows
# for XLA to split the generating loops between threads (1-row blocks ran at
# a quarter of the speed), and must stay in the last-level cache between
# generation and the two products (2^22 lost up to a third on FC). On GPU and
# TPU, 2^24 (64 MiB) makes launches big enough to fill the device and keeps
# memory modest; these were not re-tuned (no accelerator was available).
DEFAULT_BLOCK_ELEMENTS = {"cpu": 2**21, "gpu": 2**24, "tpu": 2**24}

# coordinate_fn(raw_rows [B, n], scale [B]) -> coordinates [B] of the
# scaled directions raw_rows * scale[:, None].
CoordinateFn = Callable[[jax.Array, jax.Array], jax.Array]


def default_block_rows(n: int, dim: int, backend: str | None = None) -> int:
  """Rows per block: about DEFAULT_BLOCK_ELEMENTS, split evenly over ``dim``.

  The blocks are as even as possible (e.g. 2 x 10 rather than 16 + 4 for 20
  directions), so the padding rows generated in the last block, and thrown
  away, are fewer than the number of blocks.
  """
  backend = backend or jax.default_backend()
  target = DEFAULT_BLOCK_ELEMENTS.get(backend, DEFAULT_BLOCK_ELEMENTS["cpu"])
  rows = max(1, min(dim, target // max(n, 1)))
  num_blocks = -(-dim // rows)
  return -(-dim // num_blocks)


# Compared and hashed by identity (eq=False): it holds a key array, which has
# neither a hash nor a single truth value.
@dataclasses.dataclass(frozen=True, eq=False)
class Basis:
  """One basis of ``dim`` directions in R^n: its key and how rows are made.

  Attributes:
    key: typed PRNG key of the basis (``directions.compartment_key``).
    n: length of every direction.
    dim: number of directions.
    distribution: one of ``directions.DISTRIBUTIONS``.
    normalize: ``'norm'``, ``'expected'`` or ``'none'``.
    generator: one of ``directions.GENERATORS``.
    block_rows: directions generated at a time; None picks
      ``default_block_rows(n, dim)``. Never more than ``dim``.
    structure: ``'dense'`` (i.i.d. rows of ``distribution``), or ``'srht'``
      or ``'fastfood'`` (``structured.StructuredBasis``; ``distribution`` is
      not used).
  """

  key: jax.Array | None
  _: dataclasses.KW_ONLY
  n: int
  dim: int
  distribution: str
  normalize: str
  generator: str
  block_rows: int | None = None
  structure: str = "dense"

  def __post_init__(self):
    # Resolved once, so every loop over the basis sees the same block size
    # (and dataclasses.replace keeps it).
    rows = min(self.block_rows or default_block_rows(self.n, self.dim), self.dim)
    object.__setattr__(self, "block_rows", rows)

  @property
  def num_blocks(self) -> int:
    return -(-self.dim // self.block_rows)

  def as_structured(self) -> structured.StructuredBasis:
    """The structured basis of the same key, size and normalisation."""
    return structured.StructuredBasis(
      self.key,
      n=self.n,
      dim=self.dim,
      structure=self.structure,
      normalize=self.normalize,
      generator=self.generator,
    )

  def block(self, b: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Raw rows [B, n], their scales [B], and which rows exist (< dim)."""
    rows = b * self.block_rows + jnp.arange(self.block_rows)
    if self.structure != "dense":
      raw, scale = self.as_structured().rows(jnp.minimum(rows, self.dim - 1))
      return raw, scale, rows < self.dim
    raw = dirs.sample_rows(
      dirs.row_keys(self.key, rows),
      self.n,
      distribution=self.distribution,
      generator=self.generator,
    )
    scale = dirs.row_scale(raw, normalize=self.normalize, distribution=self.distribution)
    return raw, scale, rows < self.dim

  def blocks_of(self, coords: jax.Array) -> jax.Array:
    """Coordinates [dim] as [num_blocks, block_rows], zero-padded."""
    pad = self.num_blocks * self.block_rows - self.dim
    return jnp.pad(coords, (0, pad)).reshape(self.num_blocks, self.block_rows)

  def expansion_weights(self, coords: jax.Array, scale: jax.Array) -> jax.Array:
    """Weights of the raw rows in ``Phi^T coords``: coords times each row's scale."""
    # Without normalisation the reference code divides the projection by d.
    if self.normalize == "none":
      return coords * (scale / self.dim)
    return coords * scale


@dataclasses.dataclass(frozen=True, eq=False)
class MatvecCoordinates:
  """Reverse mode: c_i = <g, phi_i> from the gradient g (a ``CoordinateFn``).

  It keeps g, so a structured basis can apply all its rows to g at once.
  """

  g: jax.Array

  def __call__(self, raw: jax.Array, scale: jax.Array) -> jax.Array:
    return jnp.dot(raw, self.g, precision=jax.lax.Precision.HIGHEST) * scale


def matvec_coordinates(g: jax.Array) -> MatvecCoordinates:
  """Reverse mode: c_i = <g, phi_i> from the gradient g."""
  return MatvecCoordinates(g)


def _transforms_apply(basis: Basis, coordinate_fn: CoordinateFn) -> bool:
  """Whether the structured transforms compute the coordinates (reverse mode)."""
  return basis.structure != "dense" and isinstance(coordinate_fn, MatvecCoordinates)


def project(basis: Basis, coordinate_fn: CoordinateFn) -> jax.Array:
  """Coordinates c [dim] of every direction of ``basis``."""
  if _transforms_apply(basis, coordinate_fn):
    return basis.as_structured().project(coordinate_fn.g)

  def body(_, b):
    raw, scale, valid = basis.block(b)
    return None, jnp.where(valid, coordinate_fn(raw, scale), 0.0)

  _, c = jax.lax.scan(body, None, jnp.arange(basis.num_blocks))
  return c.reshape(-1)[: basis.dim]


def expand(basis: Basis, coords: jax.Array, out: jax.Array | None = None) -> jax.Array:
  """``out + Phi^T coords``: the sum of the directions weighted by coords."""
  if basis.structure != "dense":
    return basis.as_structured().expand(coords, out)
  # zeros_like keeps coords' shard_map type (device-varying or not) for the loop carry.
  out = jnp.zeros_like(coords, jnp.float32, shape=(basis.n,)) if out is None else out

  def body(u, xs):
    b, c = xs
    raw, scale, _ = basis.block(b)
    weights = basis.expansion_weights(c, scale)
    return u + jnp.dot(weights, raw, precision=jax.lax.Precision.HIGHEST), None

  u, _ = jax.lax.scan(body, out, (jnp.arange(basis.num_blocks), basis.blocks_of(coords)))
  return u


def project_and_expand(basis: Basis, coordinate_fn: CoordinateFn) -> tuple[jax.Array, jax.Array]:
  """(c, Phi^T c) in one pass: each block is generated once and used twice."""
  if _transforms_apply(basis, coordinate_fn):
    return basis.as_structured().project_and_expand(coordinate_fn.g)

  def body(u, b):
    raw, scale, valid = basis.block(b)
    c = jnp.where(valid, coordinate_fn(raw, scale), 0.0)
    weights = basis.expansion_weights(c, scale)
    u = u + jnp.dot(weights, raw, precision=jax.lax.Precision.HIGHEST)
    return u, c

  u, c = jax.lax.scan(body, jnp.zeros((basis.n,), jnp.float32), jnp.arange(basis.num_blocks))
  return c.reshape(-1)[: basis.dim], u
