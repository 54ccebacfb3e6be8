"""Structured random bases: SRHT and Fastfood, O(N log N) whatever d is.

An i.i.d. basis of d directions in R^n costs d x n random numbers a step. A
structured basis draws O(N) random numbers and applies all its d directions
with a few Walsh-Hadamard transforms of size N = 2^ceil(log2 n), so a step
costs O(N log N) time and O(N) memory for any d <= n.

Its directions are d rows of an N x N operator T, restricted to the n real
coordinates (the gradient is zero-padded to N) and scaled:

    phi_r = w_r T[rho(r), :n],   r = 0 .. d - 1.

* ``"srht"``, the subsampled randomized Hadamard transform: T = H D, with H
  the Sylvester-Hadamard matrix (entries +-1, H H = N I) and D a diagonal of
  random signs. Each direction has +-1 entries (a Bernoulli direction), and
  distinct rows are orthogonal on R^N: with n = N a power of two they are an
  orthonormal set, and d = N directions give P P^T = I.
* ``"fastfood"`` (Le, Sarlos & Smola, ICML 2013; Li et al. 2018 use it for
  fixed projections): T = H G Pi H B, with B random signs, Pi a random
  permutation, G a diagonal of N(0, 1) entries, and the rows scaled by S,
  s_r / (||G|| sqrt(N)) with s_r ~ chi(N) (Wilson-Hilferty: s = sqrt(N)
  (1 - 2/(9N) + z sqrt(2/(9N)))^(3/2), z ~ N(0, 1), clipped at 0), so a full
  row has the length of an N(0, I_N) vector. Entries are Gaussian-like with
  unit variance; unlike i.i.d. rows, the rows of one basis share G, so two of
  them have cosine sum_k (H_i H_j)_k G_k^2 / ||G||^2, of variance 2/(N + 2):
  twice that of independent Gaussian directions (1/N).

``rho`` picks d distinct rows (sampling without replacement) with a keyed
bijection of [0, N): a four-round Feistel network on the index's bits, whose
round functions are tables of random words (2^ceil(bits/2) entries), then an
xor with a random word, so every row is picked with probability exactly d/N.
It costs O(d + sqrt(N)) (O(N) for Fastfood's Pi, the same network with
another key): 0.6 ms for all N = 2^17 indices on 2 CPU cores, where a
sort-based ``jax.random.permutation`` took 160 ms, 200 times a transform.

Normalisation (``normalize``), as for dense bases, with raw entries of unit
variance: ``norm`` makes each direction unit length, ``expected`` divides by
sqrt(n), ``none`` leaves the raw rows (and the update is divided by d). SRHT
rows have length sqrt(n) exactly. A Fastfood row restricted to n < N
coordinates has no closed-form length (computing it costs a transform per
row), so ``norm`` divides it by its root-mean-square restricted length,
sqrt(n/N) times its full length: exact when n = N; otherwise its squared
length is 1 on average, with a relative spread of sqrt(2 (N - n) / (n N))
(0.1 % for the 122,570 parameters of the paper's CNN, 7 % for n = 100).

Keys: the compartment's key (``directions.compartment_key``: seed, step,
worker, compartment), then one ``fold_in`` per random piece (``SIGNS``,
``GAUSSIAN``, ``CHI``, ``ROWS``, ``PERMUTATION``) and, for the Feistel
tables, one per round. The transform gives every compartment d_k <= n_k <= N
directions, so one N x N operator (one block) is always enough.

The products never form T: c = Phi g is ``w * (T pad(g))[rho]`` and
u = Phi^T c is ``(T^T z)[:n]`` with z zero but for z[rho] = w c: two Hadamard
transforms for SRHT, four for Fastfood. ``rows`` materialises directions for
forward (jvp) mode and for inspection.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from random_bases.checks import check_choice
from random_bases.method import directions as dirs

STRUCTURES = ("dense", "srht", "fastfood")
# The Kronecker factorisation's largest factor, H_64. Factors of 2^4 to 2^8
# ran within the noise of each other on 2 CPU cores.
KRONECKER_FACTOR_BITS = 6
FEISTEL_ROUNDS = 4
# fold_in values of the random pieces of a basis.
SIGNS, GAUSSIAN, CHI, ROWS, PERMUTATION = range(5)


def padded_size(n: int) -> int:
  """N = 2^ceil(log2 n), the size of the transforms for n coordinates."""
  return 1 << max(n - 1, 0).bit_length()


# ----------------------------------------------------------------------------
# The Walsh-Hadamard transform.


def hadamard_matrix(bits: int) -> np.ndarray:
  """The Sylvester-Hadamard matrix of size 2^bits: H[i, j] = (-1)^popcount(i & j)."""
  matrix = np.ones((1, 1), np.float32)
  for _ in range(bits):
    matrix = np.block([[matrix, matrix], [matrix, -matrix]])
  return matrix


def hadamard_transform(x: jax.Array) -> jax.Array:
  """H x along the last axis (Sylvester order, entries +-1, not normalised).

  H_N = H_{2^b1} (x) ... (x) H_{2^bk} with factors of at most
  ``KRONECKER_FACTOR_BITS`` bits: x is reshaped to one axis per factor and
  each small dense H is applied along its axis, a matmul. On 2 CPU cores a
  butterfly of log2 N sum-and-difference stages ran 20 % faster alone (N =
  2^17: 0.65-0.71 against 0.79-0.89 ms), but inside Fastfood's products,
  where XLA fuses the transforms with the gathers and scalings around them,
  this factorisation was 10-35 % faster (2.5-3.8 against 3.7-4.3 ms;
  BENCHMARKS.md). On GPU and TPU the matmuls run on the matrix units (not
  measured: no accelerator was available).

  Args:
    x: float array [..., N], N a power of two.

  Returns:
    H x, the shape and dtype of x.
  """
  *lead, size = x.shape
  if size & (size - 1) or size == 0:
    raise ValueError(f"hadamard_transform needs a power-of-two last axis, got {size}")
  bits = size.bit_length() - 1
  factors = max(1, -(-bits // KRONECKER_FACTOR_BITS))
  factor_bits = [bits // factors + (i < bits % factors) for i in range(factors)]
  y = x.reshape(*lead, *(2**b for b in factor_bits))
  axes = "abcdefgh"[:factors]
  for i, b in enumerate(factor_bits):
    # The +-1 products are exact; HIGHEST keeps GPUs from rounding x to TF32.
    y = jnp.einsum(
      f"...{axes},{axes[i]}z->...{axes.replace(axes[i], 'z')}",
      y,
      jnp.asarray(hadamard_matrix(b), x.dtype),
      precision=jax.lax.Precision.HIGHEST,
    )
  return y.reshape(*lead, size)


# ----------------------------------------------------------------------------
# Keyed bijections of [0, 2^bits): rows without replacement, permutations.


def random_words(key: jax.Array, count: int, generator: str) -> jax.Array:
  """``count`` uniform uint32 words keyed by ``key``, from ``generator``."""
  if generator == "threefry":
    return jax.random.bits(key, (count,), jnp.uint32)
  words = jax.random.key_data(key).reshape(-1)[:2].astype(jnp.uint32)
  return dirs.hash_bits(words, jnp.arange(count, dtype=jnp.uint32))


def _mask(bits: int) -> np.uint32:
  return np.uint32((1 << bits) - 1)


def _round_splits(bits: int) -> list[tuple[int, int]]:
  """(high, low) bit counts of each round; the halves swap places every round."""
  high, low = bits // 2, bits - bits // 2
  return [(high, low) if r % 2 == 0 else (low, high) for r in range(FEISTEL_ROUNDS)]


@functools.partial(jax.jit, static_argnames=("bits", "generator"))
def feistel_permutation(key: jax.Array, x: jax.Array, *, bits: int, generator: str) -> jax.Array:
  """A keyed bijection of [0, 2^bits) applied to ``x``.

  Four Feistel rounds on the index's bits, split into a high and a low part:
  (L, R) -> (R, L xor F_r(R)), each round's F_r a table of random words
  indexed by R, then an xor with a random word. Every round is a bijection
  whatever F_r is, so distinct inputs give distinct outputs; the final xor
  makes every output equally likely for each input.

  Args:
    key: typed PRNG key of the bijection.
    x: uint32 indices in [0, 2^bits).
    bits: log2 of the domain's size, at most 31.
    generator: one of ``directions.GENERATORS``, draws the tables.

  Returns:
    uint32, the shape of x.
  """
  splits = _round_splits(bits)
  tables = [
    random_words(jax.random.fold_in(key, r), 2**low, generator) for r, (_, low) in enumerate(splits)
  ]
  whitening = random_words(jax.random.fold_in(key, FEISTEL_ROUNDS), 1, generator)[0] & _mask(bits)
  x = x.astype(jnp.uint32)
  for (high, low), table in zip(splits, tables):
    left, right = x >> low, x & _mask(low)
    x = (right << high) | ((left ^ table[right.astype(jnp.int32)]) & _mask(high))
  return x ^ whitening


# ----------------------------------------------------------------------------
# The bases.


class Draw(NamedTuple):
  """The random pieces of one structured basis.

  Attributes:
    signs: float32 [N], +-1: D (SRHT) or B (Fastfood).
    rows: int32 [dim], distinct rows rho(r) of T.
    weights: float32 [dim], w_r: the row's scale in the direction.
    gaussian: float32 [N], G (Fastfood; None for SRHT).
    permutation: int32 [N], Pi as (Pi x)_k = x[permutation[k]] (Fastfood).
  """

  signs: jax.Array
  rows: jax.Array
  weights: jax.Array
  gaussian: jax.Array | None = None
  permutation: jax.Array | None = None


# Jitted, as directions.row_scale, so that eager calls run the fused kernels a
# jitted step runs (the sum of squares contracted into multiply-adds), and
# written with at most one inexact product per add: the weights are the same
# bits eager and under jit.
@functools.partial(jax.jit, static_argnames=("n", "normalize"))
def fastfood_weights(gaussian: jax.Array, z: jax.Array, *, n: int, normalize: str) -> jax.Array:
  """w_r of Fastfood rows from G [N] and one standard normal z_r per row.

  The raw row r is s_r / (||G|| sqrt(N)) (H G Pi H B)[rho(r)], with
  s_r ~ chi(N) by Wilson-Hilferty: s = sqrt(N) t^(3/2), t = 1 - 2/(9N) +
  z sqrt(2/(9N)) (clipped at 0); the sqrt(N)s cancel.
  """
  size = gaussian.shape[0]
  gaussian_length = jnp.sqrt(jnp.sum(jnp.square(gaussian)))
  if normalize == "norm":
    # s_r cancels; sqrt(n / N) of the full length sqrt(N) ||G|| is the
    # root-mean-square length of the restricted row (exact when n = N).
    return jnp.full(z.shape, 1.0 / math.sqrt(n), jnp.float32) / gaussian_length
  c = 2.0 / (9.0 * size)
  t = jnp.maximum(np.float32(1.0 - c) + z * np.float32(math.sqrt(c)), 0.0)
  if normalize == "expected":
    return t * jnp.sqrt(t) / (gaussian_length * np.float32(math.sqrt(n)))
  return t * jnp.sqrt(t) / gaussian_length


# Compared and hashed by identity (eq=False): it holds a key array.
@dataclasses.dataclass(frozen=True, eq=False)
class StructuredBasis:
  """``dim`` directions in R^n: rows of an N x N SRHT or Fastfood operator.

  Attributes:
    key: typed PRNG key of the basis (``directions.compartment_key``).
    n: length of every direction.
    dim: number of directions, at most N = ``padded_size(n)``.
    structure: ``'srht'`` or ``'fastfood'``.
    normalize: ``'norm'``, ``'expected'`` or ``'none'``.
    generator: one of ``directions.GENERATORS``, draws every random piece.
  """

  key: jax.Array
  _: dataclasses.KW_ONLY
  n: int
  dim: int
  structure: str
  normalize: str
  generator: str

  def __post_init__(self):
    check_choice("structure", self.structure, STRUCTURES[1:])
    if not 1 <= self.dim <= self.size:
      raise ValueError(
        f"a structured basis has 1 to N = {self.size} directions for n = {self.n}, not {self.dim}"
      )

  @property
  def size(self) -> int:
    """N, the padded length."""
    return padded_size(self.n)

  def _piece(self, piece: int, count: int, distribution: str) -> jax.Array:
    keys = jax.random.fold_in(self.key, piece)[None]
    values = dirs.sample_rows(keys, count, distribution=distribution, generator=self.generator)
    return values[0]

  def _bijection(self, piece: int, x: jax.Array) -> jax.Array:
    bits = self.size.bit_length() - 1
    key = jax.random.fold_in(self.key, piece)
    return feistel_permutation(key, x, bits=bits, generator=self.generator).astype(jnp.int32)

  def draw(self) -> Draw:
    """Every random piece of the basis, from its key."""
    signs = self._piece(SIGNS, self.size, "bernoulli")
    rows = self._bijection(ROWS, jnp.arange(self.dim, dtype=jnp.uint32))
    if self.structure == "srht":
      # Every row has n entries +-1: length sqrt(n) (expected and exact).
      value = 1.0 if self.normalize == "none" else 1.0 / math.sqrt(self.n)
      return Draw(signs, rows, jnp.full((self.dim,), value, jnp.float32))
    gaussian = self._piece(GAUSSIAN, self.size, "normal")
    permutation = self._bijection(PERMUTATION, jnp.arange(self.size, dtype=jnp.uint32))
    chi_normals = self._piece(CHI, self.dim, "normal")
    weights = fastfood_weights(gaussian, chi_normals, n=self.n, normalize=self.normalize)
    return Draw(signs, rows, weights, gaussian, permutation)

  def apply(self, draw: Draw, x: jax.Array) -> jax.Array:
    """T x for x [N]."""
    y = hadamard_transform(draw.signs * x)
    if self.structure == "srht":
      return y
    return hadamard_transform(draw.gaussian * y[draw.permutation])

  def apply_transposed(self, draw: Draw, z: jax.Array) -> jax.Array:
    """T^T z for z [N]."""
    if self.structure == "srht":
      return draw.signs * hadamard_transform(z)
    y = hadamard_transform(z)
    # (Pi^T y)[permutation[k]] = y[k]: a scatter, cheaper than inverting Pi.
    y = jnp.zeros_like(y).at[draw.permutation].set(draw.gaussian * y, unique_indices=True)
    return draw.signs * hadamard_transform(y)

  def expansion_weights(self, coords: jax.Array, draw: Draw) -> jax.Array:
    """Weights of T's rows rho(r) in ``Phi^T coords``."""
    # Without normalisation the reference code divides the projection by d.
    if self.normalize == "none":
      return coords * (draw.weights / self.dim)
    return coords * draw.weights

  def project(self, g: jax.Array, draw: Draw | None = None) -> jax.Array:
    """Coordinates c = Phi g [dim] of g [n]."""
    draw = self.draw() if draw is None else draw
    padded = jnp.pad(g.astype(jnp.float32), (0, self.size - self.n))
    return self.apply(draw, padded)[draw.rows] * draw.weights

  def expand(self, coords: jax.Array, out: jax.Array | None = None, draw: Draw | None = None):
    """``out + Phi^T coords`` [n]."""
    draw = self.draw() if draw is None else draw
    # zeros_like keeps coords' shard_map type (device-varying or not).
    z = jnp.zeros_like(coords, jnp.float32, shape=(self.size,))
    z = z.at[draw.rows].set(self.expansion_weights(coords, draw), unique_indices=True)
    u = self.apply_transposed(draw, z)[: self.n]
    return u if out is None else out + u

  def project_and_expand(self, g: jax.Array) -> tuple[jax.Array, jax.Array]:
    """(c, Phi^T c) with one draw of the random pieces."""
    draw = self.draw()
    c = self.project(g, draw)
    return c, self.expand(c, draw=draw)

  def rows(self, slots: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Directions ``slots`` (int [B], < dim) as raw rows [B, n] and weights [B].

    ``raw * weights[:, None]`` are the directions. Costs O(B n) for SRHT and
    B transforms for Fastfood: for forward mode and inspection, not the
    reverse-mode step.
    """
    draw = self.draw()
    rows = draw.rows[slots].astype(jnp.uint32)
    index = jnp.arange(self.size, dtype=jnp.uint32)
    hadamard_rows = jnp.where(
      jax.lax.population_count(rows[:, None] & index[None, :]) % 2 == 1,
      np.float32(-1.0),
      np.float32(1.0),
    )
    if self.structure == "srht":
      raw = hadamard_rows * draw.signs
    else:
      # Row rho of H G Pi H B: ((H_rho G) Pi) H B, and (a Pi)[permutation[k]] = a[k].
      mixed = (
        jnp.zeros_like(hadamard_rows)
        .at[:, draw.permutation]
        .set(hadamard_rows * draw.gaussian, unique_indices=True)
      )
      raw = hadamard_transform(mixed) * draw.signs
    return raw[:, : self.n], draw.weights[slots]
