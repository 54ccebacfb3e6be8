"""Random directions as pure functions of keys.

A basis is never stored. Direction ``i`` of compartment ``k`` drawn by worker
``w`` at step ``t`` is a pure function of the key

    key(seed) -> fold_in(t) -> fold_in(w) -> fold_in(k) -> fold_in(i)

so any device can regenerate any worker's directions at any time, bit for bit,
eager or under ``jit``, on one device or many. Keying every *row* (rather than
a block of rows) makes the directions independent of the block size used to
generate them: the block size is a speed/memory knob only.

Two generators turn a row key into ``n`` numbers:

* ``"hash"`` (the default) — a keyed counter hash written in ``jax.numpy``:
  the row key's two 32-bit words and the column index go through two rounds
  of a 32-bit integer mixer (xor-shift-multiply, Wellons' ``lowbias32``
  constants). Uniforms take the top 24 bits, Bernoulli signs the top bit.
  Normals come from the Box–Muller transform, which turns each pair of
  uniforms (u, v) into two independent normals
  sqrt(-2 ln u) (cos 2 pi v, sin 2 pi v); ln, sin and cos are float32
  polynomials on reduced ranges (ln through the exponent/mantissa split, sin
  and cos on one octant, mapped to the others by the square's symmetries)
  that agree with the true functions to float32 rounding, because XLA's
  general sin/cos would dominate the cost of a step.
* ``"threefry"`` — ``jax.random`` itself, the reference generator. Select it
  with ``generator="threefry"``.

Both are pure functions of the same ``fold_in`` keys, bit-identical eager or
under ``jit`` and for any block size; they draw different numbers.

Distributions (Table 2 of the paper): ``normal`` N(0, 1), ``uniform`` U[-1, 1]
and ``bernoulli`` (±1 with p = 0.5).
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np

from random_bases.checks import check_choice

DISTRIBUTIONS = ("normal", "uniform", "bernoulli")
GENERATORS = ("threefry", "hash")
DEFAULT_GENERATOR = "hash"
NORMALIZATIONS = ("norm", "expected", "none")

# E[x^2] of one entry, so that "expected" scaling divides by sqrt(n E[x^2]),
# the expected length of an n-dimensional direction (sqrt(n) for normal
# entries, as the reference code does).
SECOND_MOMENT = {"normal": 1.0, "uniform": 1.0 / 3.0, "bernoulli": 1.0}


def base_key(seed) -> jax.Array:
  """A typed PRNG key from an int seed or an existing (typed or raw) key.

  An integer scalar array counts as an int seed (``optax.inject_hyperparams``
  passes numeric arguments that way), traced or not.
  """
  if isinstance(seed, (int, np.integer)) and not isinstance(seed, bool):
    return jax.random.key(int(seed))
  if isinstance(seed, jax.Array) and jnp.issubdtype(seed.dtype, jax.dtypes.prng_key):
    return seed
  if (
    isinstance(seed, (jax.Array, np.ndarray))
    and seed.shape == ()
    and jnp.issubdtype(seed.dtype, jnp.integer)
  ):
    return jax.random.key(seed)
  if (
    isinstance(seed, (jax.Array, np.ndarray))
    and seed.dtype == np.uint32
    and seed.shape[-1:] == (2,)
  ):
    return jax.random.wrap_key_data(seed)
  raise ValueError(
    f"seed={seed!r} must be an int (or integer scalar array), "
    "a typed PRNG key (jax.random.key) or raw uint32[2] key data"
  )


def compartment_key(seed, *, step, worker, compartment) -> jax.Array:
  """Key of one basis: (seed, step, worker, compartment), via fold_in."""
  key = base_key(seed)
  key = jax.random.fold_in(key, step)
  key = jax.random.fold_in(key, worker)
  return jax.random.fold_in(key, compartment)


def row_keys(key: jax.Array, rows: jax.Array) -> jax.Array:
  """One key per direction (row) of a basis."""
  return jax.vmap(lambda r: jax.random.fold_in(key, r))(rows)


# ----------------------------------------------------------------------------
# The counter-hash generator.

_GOLDEN = np.uint32(0x9E3779B9)


def _mix32(x: jax.Array) -> jax.Array:
  """A bijective 32-bit mixer with full avalanche (lowbias32 constants)."""
  x = x ^ (x >> 16)
  x = x * np.uint32(0x7FEB352D)
  x = x ^ (x >> 15)
  x = x * np.uint32(0x846CA68B)
  return x ^ (x >> 16)


def hash_bits(key_words: jax.Array, counters: jax.Array) -> jax.Array:
  """uint32 bits for (row key, counter) pairs.

  Args:
    key_words: uint32 [..., 2], the two words of each row key.
    counters: uint32 [m], the column counters.

  Returns:
    uint32 [..., m].
  """
  k0 = key_words[..., 0:1]
  k1 = key_words[..., 1:2]
  # The golden-ratio multiply spreads consecutive counters before mixing;
  # the second word enters between the two rounds, so rows that share one
  # word still get unrelated streams.
  x = _mix32(counters * _GOLDEN ^ k0)
  return _mix32(x + k1)


def _unit_interval_open_left(bits: jax.Array) -> jax.Array:
  """(0, 1] from the top 24 bits, exact in float32 and never 0 (for log)."""
  k_plus_one = ((bits >> 8).astype(jnp.int32) + 1).astype(jnp.float32)
  return k_plus_one * np.float32(2.0**-24)


# Float32 polynomials for Box-Muller's transcendental functions. XLA's CPU
# sin/cos do a general range reduction and run at a fifth of the hash's speed;
# Box-Muller needs them only on a known small range, where short polynomials
# are as accurate as float32. Coefficients: near-minimax fits (Lawson's
# reweighted least squares on a dense grid), rounded to float32; the bounds
# below are of the fits, tests/test_generators.py checks the float32 code.

# log2(1 + f) = f P(f) on [sqrt(1/2) - 1, sqrt(2) - 1], relative error 2.6e-8.
_LOG2_1P_OVER_F = tuple(
  np.float32(c)
  for c in (
    1.4426950216293335,
    -0.7213473320007324,
    0.48091062903404236,
    -0.3607036769390106,
    0.28791624307632446,
    -0.23894482851028442,
    0.21571563184261322,
    -0.20726971328258514,
    0.12583690881729126,
  )
)
# sin(pi/4 w) = w S(w^2) on [0, 1], relative error 3.2e-9.
_SIN_QUARTER_PI_OVER_W = tuple(
  np.float32(c)
  for c in (0.7853981852531433, -0.08074543625116348, 0.00249000103212893, -3.595047746784985e-05)
)
# cos(pi/4 w) = C(w^2) on [0, 1], absolute error 2.8e-8 (cos >= 0.707 there).
_COS_QUARTER_PI = tuple(
  np.float32(c) for c in (1.0, -0.3084242641925812, 0.015849916264414787, -0.0003188807750120759)
)
_MINUS_TWO_LN2 = np.float32(-2.0 * math.log(2.0))
_SQRT_HALF_BITS = np.uint32(0x3F3504F3)  # float32 sqrt(1/2)
_ONE_BITS = np.uint32(0x3F800000)  # float32 1.0
_SIGN_BIT = np.uint32(0x80000000)


def _polynomial(coefficients, x: jax.Array) -> jax.Array:
  """sum_k coefficients[k] x^k by Horner's rule."""
  result = coefficients[-1]
  for c in coefficients[-2::-1]:
    result = result * x + c
  return result


def _minus_two_log(u: jax.Array) -> jax.Array:
  """-2 ln(u) for float32 u in (0, 1], without a division or jnp.log.

  Writes u = 2^e m with m in [sqrt(1/2), sqrt(2)) (musl's logf reduction):
  adding bits(1) - bits(sqrt(1/2)) to u's bits carries into the exponent
  field exactly when u's significand is >= sqrt(2), so the sum's exponent is
  e, and its low 23 bits on top of sqrt(1/2)'s bits rebuild m. Then
  -2 ln u = -2 ln 2 (e + log2(1 + f)) with f = m - 1 in [-0.29, 0.41).

  In base 2 the integer e is added to a single product, f P(f). With
  e ln 2 + f P(f), an add of two products, XLA's fused kernels may turn
  either product into the fused multiply-add, and which one depends on the
  surrounding program: the bits would too.
  """
  shifted = jax.lax.bitcast_convert_type(u, jnp.uint32) + (_ONE_BITS - _SQRT_HALF_BITS)
  exponent = ((shifted >> 23).astype(jnp.int32) - 127).astype(jnp.float32)
  mantissa = jax.lax.bitcast_convert_type(
    (shifted & np.uint32(0x7FFFFF)) + _SQRT_HALF_BITS, jnp.float32
  )
  f = mantissa - 1.0  # exact
  return _MINUS_TWO_LN2 * (exponent + f * _polynomial(_LOG2_1P_OVER_F, f))


def _flip_sign(x: jax.Array, sign_bits: jax.Array) -> jax.Array:
  """x with its sign bit xor-ed with the top bit of ``sign_bits``."""
  x_bits = jax.lax.bitcast_convert_type(x, jnp.uint32)
  return jax.lax.bitcast_convert_type(x_bits ^ (sign_bits & _SIGN_BIT), jnp.float32)


def _unit_circle(bits: jax.Array) -> tuple[jax.Array, jax.Array]:
  """(cos a, sin a) for an angle a uniform on [0, 2 pi), from 26 of 32 bits.

  The top 23 bits place w at the centre of one of 2^23 equal cells of
  [0, 1] (exactly: they become the mantissa of a float in [1, 2)); bit 2
  swaps (cos pi/4 w, sin pi/4 w) (reflection in the diagonal), bits 0 and 1
  give the signs of the two coordinates. The 8 symmetries of the square map
  the octant [0, pi/4] onto all 8, so a is uniform on the circle, and sin
  and cos are needed on [0, pi/4] only.

  The polynomials take w, not the angle pi/4 w: XLA reassociates a product
  of products with constants, (w c)(w c) -> (w w)(c c), in some shapes and
  not others, which would make the bits depend on the block size.
  """
  one_to_two = jax.lax.bitcast_convert_type((bits >> 9) | _ONE_BITS, jnp.float32)
  w = (one_to_two - 1.0) + np.float32(2.0**-24)  # both steps exact
  w2 = w * w
  sin_t = w * _polynomial(_SIN_QUARTER_PI_OVER_W, w2)
  cos_t = _polynomial(_COS_QUARTER_PI, w2)
  swap = (bits & np.uint32(4)) != 0
  x = jnp.where(swap, sin_t, cos_t)
  y = jnp.where(swap, cos_t, sin_t)
  return _flip_sign(x, bits << 31), _flip_sign(y, bits << 30)


def _box_muller(radius_bits: jax.Array, angle_bits: jax.Array) -> tuple[jax.Array, jax.Array]:
  """Two independent N(0, 1) from two words: r (cos a, sin a), r^2 = -2 ln u.

  u has 24 bits, so r <= sqrt(2 ln 2^24) = 5.77: the exact transform exceeds
  that with probability 2^-24 per pair; every other deviation from it is at
  float32 resolution.
  """
  radius = jnp.sqrt(_minus_two_log(_unit_interval_open_left(radius_bits)))
  x, y = _unit_circle(angle_bits)
  return radius * x, radius * y


def _hash_sample(keys: jax.Array, n: int, distribution: str) -> jax.Array:
  words = jax.random.key_data(keys).reshape(keys.shape[0], -1)[:, :2]
  words = words.astype(jnp.uint32)
  if distribution == "normal":
    # Pair i uses counters 2i and 2i + 1; its two normals go to columns i and
    # half + i.
    half = (n + 1) // 2
    counters = jnp.arange(half, dtype=jnp.uint32)
    x, y = _box_muller(hash_bits(words, 2 * counters), hash_bits(words, 2 * counters + 1))
    return jnp.concatenate([x, y], axis=-1)[:, :n]
  bits = hash_bits(words, jnp.arange(n, dtype=jnp.uint32))
  if distribution == "uniform":
    return 2.0 * _unit_interval_open_left(bits) - 1.0
  # bernoulli: the top bit decides the sign.
  return jnp.where(bits >> 31 == 1, np.float32(1.0), np.float32(-1.0))


def _threefry_sample(keys: jax.Array, n: int, distribution: str) -> jax.Array:
  if distribution == "normal":
    draw = lambda k: jax.random.normal(k, (n,), jnp.float32)
  elif distribution == "uniform":
    draw = lambda k: jax.random.uniform(k, (n,), jnp.float32, -1.0, 1.0)
  else:
    draw = lambda k: jax.random.rademacher(k, (n,), jnp.float32)
  return jax.vmap(draw)(keys)


def sample_rows(
  keys: jax.Array, n: int, *, distribution: str = "normal", generator: str = DEFAULT_GENERATOR
) -> jax.Array:
  """Raw (unscaled) directions, one row per key.

  Args:
    keys: typed keys [B], one per direction (see ``row_keys``).
    n: length of each direction.
    distribution: one of ``DISTRIBUTIONS``.
    generator: one of ``GENERATORS``.

  Returns:
    float32 [B, n].
  """
  check_choice("distribution", distribution, DISTRIBUTIONS)
  check_choice("generator", generator, GENERATORS)
  return _compiled_sample(keys, n=n, distribution=distribution, generator=generator)


# XLA contracts a * b + c into one fused multiply-add inside a fused kernel,
# which op-by-op eager execution cannot, so polynomials (the hash's
# Box-Muller, threefry's erf_inv) would round differently eager and under
# jit. As one jitted function, the sampler is compiled into fused kernels
# when called eagerly too. Inside a bigger program XLA may still fuse it with
# its consumers (the barrier below is honoured by some backends, but XLA:CPU
# drops optimization barriers before fusion), so the hash sampler's
# arithmetic is written to give the same bits however it is fused:
# conversions and power-of-two scalings are exact, and every float add has
# at most one inexact product as an operand, so each multiply-add is
# contracted the same way in every kernel (tests/test_generators.py checks
# odd and tiny shapes inside the optimiser's loops).
@functools.partial(jax.jit, static_argnames=("n", "distribution", "generator"))
def _compiled_sample(keys: jax.Array, *, n: int, distribution: str, generator: str) -> jax.Array:
  sample = _hash_sample if generator == "hash" else _threefry_sample
  return jax.lax.optimization_barrier(sample(keys, n, distribution))


# Jitted for the reason given at _compiled_sample: under jit the sum of
# squares is fused and contracted into multiply-adds, eagerly it is not.
@functools.partial(jax.jit, static_argnames=("normalize", "distribution"))
def row_scale(rows: jax.Array, *, normalize: str, distribution: str) -> jax.Array:
  """Per-row factor that makes ``rows * scale[:, None]`` the directions.

  ``norm`` divides each row by its own length (unit directions, the paper);
  ``expected`` by the expected length sqrt(n E[x^2]) (the reference code's
  1/sqrt(D) for normal entries); ``none`` leaves rows as drawn.
  """
  if normalize == "norm":
    # sqrt and divide are correctly rounded everywhere; rsqrt is an
    # approximation whose bits vary between vector and scalar code.
    return 1.0 / jnp.sqrt(jnp.sum(jnp.square(rows), axis=-1))
  if normalize == "expected":
    value = 1.0 / math.sqrt(rows.shape[-1] * SECOND_MOMENT[distribution])
    return jnp.full(rows.shape[:-1], value, jnp.float32)
  return jnp.ones(rows.shape[:-1], jnp.float32)


def materialize_directions(
  key: jax.Array,
  rows: jax.Array,
  n: int,
  *,
  distribution: str = "normal",
  normalize: str = "norm",
  generator: str = DEFAULT_GENERATOR,
) -> jax.Array:
  """The scaled directions ``rows`` of the basis keyed by ``key``: [len(rows), n].

  This materialises the rows asked for; the optimiser never asks for more
  than one block at a time. Use it for inspection and dense references.
  """
  raw = sample_rows(row_keys(key, rows), n, distribution=distribution, generator=generator)
  return raw * row_scale(raw, normalize=normalize, distribution=distribution)[:, None]
