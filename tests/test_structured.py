"""Structured bases (SRHT, Fastfood) against dense matrices built from their definitions.

The references take only the random numbers from the documented key chain
(``compartment_key`` -> ``fold_in(piece)``) and build H (scipy), the Feistel
bijection (in plain Python), T, its rows and their scales in float64.
"""

import os

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import reference
import scipy.linalg

import random_bases as rb
from random_bases import config_lib, train
from random_bases.method import directions as dirs
from random_bases.method import structured as st

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# --- the reference, from the definitions ---------------------------------------


def reference_feistel(key, values, bits, generator):
  """The Feistel bijection of structured.py written out on Python ints."""
  splits = st._round_splits(bits)
  tables = [
    np.asarray(st.random_words(jax.random.fold_in(key, r), 2**low, generator))
    for r, (_, low) in enumerate(splits)
  ]
  whitening = int(st.random_words(jax.random.fold_in(key, st.FEISTEL_ROUNDS), 1, generator)[0])
  out = []
  for x in values:
    for (high, low), table in zip(splits, tables):
      left, right = x >> low, x & ((1 << low) - 1)
      x = (right << high) | ((left ^ int(table[right])) & ((1 << high) - 1))
    out.append(x ^ (whitening & ((1 << bits) - 1)))
  return np.array(out)


def piece(key, which, count, distribution, generator):
  """The random numbers of one piece: row 0 of the generator at fold_in(key, which)."""
  keys = jax.random.fold_in(key, which)[None]
  values = dirs.sample_rows(keys, count, distribution=distribution, generator=generator)
  return np.asarray(values[0], np.float64)


def reference_directions(key, structure, n, d, normalize="norm", generator="hash"):
  """The d x n matrix whose rows are the directions, from the definitions."""
  size = 1 << max(n - 1, 0).bit_length()
  bits = size.bit_length() - 1
  h = scipy.linalg.hadamard(size).astype(np.float64)
  signs = piece(key, st.SIGNS, size, "bernoulli", generator)
  rows = reference_feistel(jax.random.fold_in(key, st.ROWS), range(d), bits, generator)
  assert len(set(rows.tolist())) == d  # sampled without replacement
  if structure == "srht":
    t = (h @ np.diag(signs))[rows]
  else:
    gaussian = piece(key, st.GAUSSIAN, size, "normal", generator)
    perm = reference_feistel(jax.random.fold_in(key, st.PERMUTATION), range(size), bits, generator)
    pi = np.zeros((size, size))
    pi[np.arange(size), perm] = 1.0  # (Pi x)_k = x[perm[k]]
    z = piece(key, st.CHI, d, "normal", generator)
    c = 2.0 / (9.0 * size)
    chi = np.sqrt(size) * np.maximum(1.0 - c + z * np.sqrt(c), 0.0) ** 1.5
    scale = chi / (np.linalg.norm(gaussian) * np.sqrt(size))  # S
    t = scale[:, None] * (h @ np.diag(gaussian) @ pi @ h @ np.diag(signs))[rows]
    np.testing.assert_allclose(np.linalg.norm(t, axis=1), chi, rtol=1e-9)  # full rows: chi(N)
  directions = t[:, :n]
  if normalize == "norm":
    if structure == "srht":
      return directions / np.linalg.norm(directions, axis=1, keepdims=True)
    # Fastfood: the root-mean-square length of the restricted row, sqrt(n / N) of the full one.
    return directions / (np.linalg.norm(t, axis=1, keepdims=True) * np.sqrt(n / size))
  if normalize == "expected":
    return directions / np.sqrt(n)
  return directions


def make_params():
  # Pytree order: a (3 x 4 = 12), b (5), c (16): D = 33, N = 64 as one compartment.
  return {
    "a": jnp.linspace(-1.0, 1.0, 12).reshape(3, 4),
    "b": jnp.linspace(0.5, -0.5, 5),
    "c": jnp.linspace(0.0, 1.0, 16),
  }


def make_grad(seed=0):
  leaves, treedef = jax.tree.flatten(make_params())
  keys = jax.random.split(jax.random.key(seed), len(leaves))
  return treedef.unflatten([jax.random.normal(k, x.shape) for k, x in zip(keys, leaves)])


SIZES = {"a": 12, "b": 5, "c": 16}


def expected_update(g, groups, dims, structure, *, seed=0, step=0, worker=0, **kw):
  """Block-diagonal P P^T g over compartments of leaf names, float64 [D] in pytree order."""
  pieces = {}
  for k, names in enumerate(groups):
    v = np.concatenate([np.ravel(np.asarray(g[name], np.float64)) for name in names])
    key = dirs.compartment_key(seed, step=step, worker=worker, compartment=k)
    p = reference_directions(key, structure, len(v), dims[k], **kw)
    u = p.T @ (p @ v)
    if kw.get("normalize") == "none":
      u = u / dims[k]
    for name, part in zip(names, np.split(u, np.cumsum([SIZES[x] for x in names])[:-1])):
      pieces[name] = part
  return np.concatenate([pieces[name] for name in ("a", "b", "c")])


STRUCTURED = ("srht", "fastfood")


# --- the Walsh-Hadamard transform and the bijection --------------------------------


def test_hadamard_transform_is_the_sylvester_matrix():
  for bits in (0, 1, 6, 13):  # 13: three Kronecker factors
    x = np.random.default_rng(bits).standard_normal((2, 2**bits)).astype(np.float32)
    got = np.asarray(jax.jit(st.hadamard_transform)(x))
    # Rows of H from the definition, H[i, j] = (-1)^popcount(i & j), at most 64 of them.
    rows = np.unique(np.random.default_rng(0).integers(0, 2**bits, 64))
    h = np.array([[(-1.0) ** bin(i & j).count("1") for j in range(2**bits)] for i in rows])
    np.testing.assert_allclose(got[:, rows], x @ h.T, rtol=1e-5, atol=1e-4 * 2 ** (bits / 2))
  np.testing.assert_array_equal(st.hadamard_matrix(5), scipy.linalg.hadamard(32))
  with pytest.raises(ValueError, match="power-of-two last axis, got 12"):
    st.hadamard_transform(jnp.ones(12))


@pytest.mark.parametrize("generator", dirs.GENERATORS)
def test_feistel_is_a_bijection_matching_its_definition(generator):
  key = jax.random.key(5)
  for bits in (0, 1, 4, 11, 17):
    x = jnp.arange(2**bits, dtype=jnp.uint32)
    y = np.asarray(st.feistel_permutation(key, x, bits=bits, generator=generator))
    np.testing.assert_array_equal(np.sort(y), np.arange(2**bits))  # distinct: a permutation
    if bits in (4, 11):
      np.testing.assert_array_equal(y, reference_feistel(key, range(2**bits), bits, generator))


def test_each_row_is_picked_with_probability_d_over_n():
  # The whitening xor: over keys, slot 0 lands on every row of N = 8 equally.
  keys = jax.vmap(jax.random.key)(jnp.arange(4000))
  first = jax.vmap(
    lambda k: st.feistel_permutation(k, jnp.zeros(1, jnp.uint32), bits=3, generator="hash")
  )(keys)
  counts = np.bincount(np.asarray(first).ravel(), minlength=8)
  assert np.all(np.abs(counts - 500) < 5 * np.sqrt(500 * 7 / 8)), counts  # 5 sigma


# --- the update against the dense reference --------------------------------------

CASES = [
  # (compartments, d, allocation, groups, dims)
  (None, 7, "proportional", [["a", "b", "c"]], [7]),
  # max(ceil(n_k / 2), 10), even, capped at n_k = 12, 5, 16.
  ("leaf", 2.0, "compression", [["a"], ["b"], ["c"]], [10, 5, 10]),
  ((r"a|b", r"c"), (4, 16), "proportional", [["a", "b"], ["c"]], [4, 16]),
]


@pytest.mark.parametrize("structure", STRUCTURED)
@pytest.mark.parametrize("compartments,d,allocation,groups,dims", CASES)
def test_update_equals_dense_projection(structure, compartments, d, allocation, groups, dims):
  tx = rb.scale_by_random_bases(
    d, seed=4, compartments=compartments, allocation=allocation, structure=structure
  )
  g = make_grad()
  state = tx.init(make_params())
  for step in range(2):
    update, state = jax.jit(tx.update)(g, state)
    want = expected_update(g, groups, dims, structure, seed=4, step=step)
    np.testing.assert_allclose(reference.flat(update), want, rtol=2e-5, atol=2e-6)


@pytest.mark.parametrize("structure", STRUCTURED)
@pytest.mark.parametrize(
  "normalize,generator", [("norm", "threefry"), ("expected", "hash"), ("none", "hash")]
)
def test_normalizations_and_generators_match_dense(structure, normalize, generator):
  tx = rb.scale_by_random_bases(
    6, seed=1, structure=structure, normalize=normalize, generator=generator
  )
  g = make_grad(1)
  update, _ = tx.update(g, tx.init(g))
  want = expected_update(
    g, [["a", "b", "c"]], [6], structure, seed=1, normalize=normalize, generator=generator
  )
  np.testing.assert_allclose(reference.flat(update), want, rtol=2e-5, atol=2e-6)


def test_srht_with_all_n_rows_of_a_power_of_two_is_the_identity():
  g = {"w": jax.random.normal(jax.random.key(0), (64,)), "v": jnp.linspace(-1.0, 1.0, 16)}
  tx = rb.scale_by_random_bases([16, 64], structure="srht", compartments="leaf")
  update, _ = jax.jit(tx.update)(g, tx.init(g))
  np.testing.assert_allclose(reference.flat(update), reference.flat(g), rtol=1e-5, atol=1e-6)
  # Its directions are orthonormal.
  key = dirs.compartment_key(0, step=0, worker=0, compartment=0)
  basis = st.StructuredBasis(
    key, n=64, dim=64, structure="srht", normalize="norm", generator="hash"
  )
  raw, weights = basis.rows(jnp.arange(64))
  p = np.asarray(raw * weights[:, None], np.float64)
  np.testing.assert_allclose(p @ p.T, np.eye(64), atol=1e-6)


def test_srht_expected_update_is_d_over_n_times_the_gradient():
  # Rows are picked without replacement, each with probability d/N: E[P P^T] = (d/N) I.
  n, d, steps = 32, 4, 4000
  g = {"w": jax.random.normal(jax.random.key(2), (n,))}
  tx = rb.scale_by_random_bases(d, seed=9, structure="srht")
  state = tx.init(g)
  counts = jnp.arange(steps, dtype=jnp.int32)
  updates = jax.jit(jax.vmap(lambda t: tx.update(g, state._replace(count=t))[0]["w"]))(counts)
  mean = np.asarray(updates, np.float64).mean(axis=0)
  gf = np.asarray(g["w"], np.float64)
  # Per coordinate, u_j has standard deviation about sqrt(d/N) |g|/sqrt(N); the mean
  # of 4000 is within 5 standard errors.
  tolerance = 5 * np.sqrt(d / n) * np.linalg.norm(gf) / np.sqrt(n) / np.sqrt(steps)
  np.testing.assert_allclose(mean, d / n * gf, atol=tolerance)


def test_fastfood_rows_have_gaussian_entries_and_chi_lengths():
  # Raw rows (normalize='none') of 200 bases of 16 directions in R^256.
  n, d, bases = 256, 16, 200

  @jax.jit
  def directions(step):
    key = dirs.compartment_key(0, step=step, worker=0, compartment=0)
    basis = st.StructuredBasis(
      key, n=n, dim=d, structure="fastfood", normalize="none", generator="hash"
    )
    raw, weights = basis.rows(jnp.arange(d))
    return raw * weights[:, None]

  rows = np.stack([np.asarray(directions(s), np.float64) for s in range(bases)])
  entries = rows.ravel()
  assert abs(entries.mean()) < 0.01
  assert abs(entries.var() - 1.0) < 0.02
  assert abs(np.mean(entries**4) / entries.var() ** 2 - 3.0) < 0.05  # kurtosis of N(0, 1)
  squared_lengths = np.sum(rows**2, axis=-1).ravel()  # chi^2(n): mean n, variance 2n
  assert abs(squared_lengths.mean() / n - 1.0) < 0.02
  assert abs(squared_lengths.var() / (2 * n) - 1.0) < 0.1
  # Rows of one basis share G: cos = sum_k (H_i H_j)_k G_k^2 / ||G||^2, whose
  # variance is 2 / (N + 2), twice that of independent Gaussian directions.
  unit = rows / np.linalg.norm(rows, axis=-1, keepdims=True)
  i, j = np.triu_indices(d, 1)
  cosines = np.einsum("bik,bjk->bij", unit, unit)[:, i, j].ravel()
  assert abs(cosines.mean()) < 0.005
  np.testing.assert_allclose(cosines.var(), 2.0 / (n + 2), rtol=0.1)


@pytest.mark.parametrize("structure", STRUCTURED)
def test_directions_are_unit_vectors_with_norm(structure):
  # n = 48 < N = 64: SRHT rows are exactly unit; Fastfood ones on average.
  key = dirs.compartment_key(3, step=0, worker=0, compartment=0)
  basis = st.StructuredBasis(
    key, n=48, dim=40, structure=structure, normalize="norm", generator="hash"
  )
  raw, weights = basis.rows(jnp.arange(40))
  lengths = np.linalg.norm(np.asarray(raw * weights[:, None], np.float64), axis=1)
  if structure == "srht":
    np.testing.assert_allclose(lengths, 1.0, rtol=1e-6)
  else:  # relative spread of the squared length: sqrt(2 (N - n) / (n N)) = 0.1
    assert abs(np.mean(lengths**2) - 1.0) < 0.05 and np.std(lengths**2) < 0.2


# --- determinism, workers, devices --------------------------------------------------


@pytest.mark.parametrize("structure", STRUCTURED)
def test_deterministic_eager_jit_and_fixed_for_fpd(structure):
  key = dirs.compartment_key(5, step=0, worker=0, compartment=1)
  basis = st.StructuredBasis(
    key, n=16, dim=4, structure=structure, normalize="none", generator="hash"
  )
  for eager_piece, jitted_piece in zip(basis.draw(), jax.jit(basis.draw)()):
    np.testing.assert_array_equal(jitted_piece, eager_piece)  # the same random pieces
  g = make_grad(4)
  tx = rb.scale_by_random_bases(9, seed=5, structure=structure)
  state = tx.init(g)
  update = jax.jit(tx.update)
  first, next_state = update(g, state)
  if structure == "fastfood":  # SRHT's products are a subset of Fastfood's
    # The products round alike up to the contraction of multiply-adds, which
    # XLA does in fused kernels only.
    eager, _ = tx.update(g, state)
    np.testing.assert_allclose(reference.flat(eager), reference.flat(first), rtol=1e-6, atol=1e-7)
  np.testing.assert_array_equal(reference.flat(update(g, state)[0]), reference.flat(first))
  redrawn, _ = update(g, next_state)
  assert np.abs(reference.flat(redrawn) - reference.flat(first)).max() > 1e-3
  fixed = rb.scale_by_random_bases(9, seed=5, structure=structure, redraw=False)
  update = jax.jit(fixed.update)
  first, fixed_state = update(g, fixed.init(g))
  later, _ = update(g, fixed_state._replace(count=jnp.asarray(7, jnp.int32)))
  np.testing.assert_array_equal(reference.flat(later), reference.flat(first))


@pytest.mark.parametrize("structure", STRUCTURED)
def test_forward_mode_equals_reverse_mode(structure):
  params = make_params()

  def loss(p):
    return jnp.sum(jnp.sin(p["a"])) * jnp.sum(p["b"] ** 2) + jnp.sum(p["c"] ** 3)

  tx = rb.scale_by_random_bases(
    5, seed=3, structure=structure, compartments="leaf", allocation="fixed"
  )
  state = tx.init(params)
  reverse, _ = tx.update(jax.grad(loss)(params), state, params)
  forward, _ = jax.jit(lambda s, p: tx.update(None, s, p, value_fn=loss))(state, params)
  np.testing.assert_allclose(reference.flat(forward), reference.flat(reverse), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("structure", STRUCTURED)
def test_workers_exchange_coordinates_and_apply_the_same_update(structure):
  K, d = 3, 5
  grads = [make_grad(10 + w) for w in range(K)]
  stacked = jax.tree.map(lambda *xs: jnp.stack(xs), *grads)
  tx = rb.scale_by_random_bases(d, seed=6, axis_name="workers", structure=structure)
  state = tx.init(make_params())
  updates, _ = jax.vmap(lambda g: tx.update(g, state), axis_name="workers")(stacked)
  want = sum(
    expected_update(grads[w], [["a", "b", "c"]], [d], structure, seed=6, worker=w) for w in range(K)
  )
  for w in range(K):
    got = reference.flat(jax.tree.map(lambda x: x[w], updates))  # noqa: B023
    np.testing.assert_allclose(got, want, rtol=2e-5, atol=2e-6)


def test_one_and_eight_devices_give_the_same_trajectory():
  # Fastfood: SRHT's products are a subset of its products.
  reference.assert_one_and_eight_devices_agree(steps=4, extra_rbd_kwargs=', structure="fastfood"')


# --- composition -------------------------------------------------------------------


def test_chain_schedule_and_inject_hyperparams():
  g = make_grad(5)
  schedule = optax.exponential_decay(0.5, transition_steps=1, decay_rate=0.5)
  tx = optax.chain(
    optax.clip_by_global_norm(0.1),
    optax.inject_hyperparams(rb.rbd, static_args="d")(
      learning_rate=schedule, d=4, seed=7, structure="fastfood"
    ),
  )
  state = tx.init(make_params())
  clipped = jax.tree.map(lambda x: x * 0.1 / optax.tree.norm(g), g)
  for step, lr in enumerate((0.5, 0.25)):
    update, state = jax.jit(tx.update)(g, state, make_params())
    want = expected_update(clipped, [["a", "b", "c"]], [4], "fastfood", seed=7, step=step)
    np.testing.assert_allclose(reference.flat(update), -lr * want, rtol=2e-5, atol=2e-6)


def test_fpd_and_bfloat16_leaves():
  params = {"a": jnp.ones((12,), jnp.bfloat16), "b": jnp.ones((5,), jnp.float32)}
  g = {"a": jnp.linspace(-1, 1, 12).astype(jnp.bfloat16), "b": jnp.linspace(1, 2, 5)}
  tx = rb.fpd(0.1, 8, seed=0, structure="srht")
  update, state = jax.jit(tx.update)(g, tx.init(params), params)
  assert update["a"].dtype == jnp.bfloat16 and update["b"].dtype == jnp.float32
  key = dirs.compartment_key(0, step=0, worker=0, compartment=0)
  p = reference_directions(key, "srht", 17, 8)
  gf = reference.flat(g)
  want = -0.1 * p.T @ (p @ gf)
  np.testing.assert_allclose(np.asarray(update["a"], np.float64), want[:12], atol=2e-3)
  np.testing.assert_allclose(np.asarray(update["b"]), want[12:], rtol=1e-4, atol=1e-6)
  again, _ = jax.jit(tx.update)(g, state, params)  # FPD: the same basis at step 1
  np.testing.assert_array_equal(np.asarray(again["b"]), np.asarray(update["b"]))


@pytest.mark.parametrize("structure", ["fastfood"])  # SRHT keeps a subset of its vectors
def test_memory_does_not_grow_with_d(structure):
  D = 100_000
  g = {"w": jax.ShapeDtypeStruct((D,), jnp.float32)}
  compiled = {}
  for d in (250, 100_000):
    tx = rb.scale_by_random_bases(d, structure=structure)
    compiled[d] = jax.jit(tx.update).lower(g, jax.eval_shape(tx.init, g)).compile()
  small, large = (compiled[d].memory_analysis().temp_size_in_bytes for d in (250, 100_000))
  assert large < 24 * 2**20, large  # a few vectors of N = 2^17 float32 (512 KiB each)
  assert large <= 1.3 * small + 2**20, (small, large)


# --- errors and the trainer's config -------------------------------------------------


@pytest.mark.parametrize(
  "kwargs,match",
  [
    (dict(structure="orthogonal"), r"structure='orthogonal'.*'dense', 'srht', 'fastfood'"),
    (
      dict(structure="srht", distribution="uniform"),
      r"distribution='uniform' applies to dense bases only: structure='srht'",
    ),
  ],
)
def test_factory_rejects_bad_arguments(kwargs, match):
  with pytest.raises(ValueError, match=match):
    rb.scale_by_random_bases(4, **kwargs)
  with pytest.raises(ValueError, match=match):
    rb.fpd(0.1, 4, **kwargs)


def test_trainer_config_selects_the_structure():
  config = config_lib.base_config()
  config.data.source = "sample"
  config.bases.d = 7
  config.bases.structure = "srht"
  config_lib.validate(config)
  params, g = make_params(), make_grad(8)
  tx = train.make_optimizer("rbd", config=config, phase=0)
  got, _ = tx.update(g, tx.init(params), params)
  seed = jax.random.fold_in(jax.random.key(config.seed), 0)  # phase 0's seed
  want = rb.rbd(config.learning_rate.rbd, 7, seed=seed, structure="srht")
  expected, _ = want.update(g, want.init(params), params)
  np.testing.assert_array_equal(reference.flat(got), reference.flat(expected))
  config.bases.structure = "hadamard"
  with pytest.raises(ValueError, match=r"bases.structure='hadamard'.*'dense', 'srht', 'fastfood'"):
    config_lib.validate(config)
  config.bases.structure = "fastfood"
  config.bases.distribution = "bernoulli"
  with pytest.raises(ValueError, match=r"bases.distribution='bernoulli' applies to dense bases"):
    config_lib.validate(config)
