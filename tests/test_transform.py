"""scale_by_random_bases / rbd / fpd against explicit dense references."""

import collections
import os

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import reference
from jax.flatten_util import ravel_pytree

import random_bases as rb

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def make_params():
  # Pytree order: dense/bias (3), dense/kernel (4x3), out/bias (2), out/kernel (3x2).
  return {
    "dense": {
      "kernel": jnp.linspace(-1.0, 1.0, 12).reshape(4, 3),
      "bias": jnp.array([0.1, -0.2, 0.3]),
    },
    "out": {"kernel": jnp.linspace(0.5, -0.5, 6).reshape(3, 2), "bias": jnp.array([0.05, 0.0])},
  }


def make_grad(seed=0):
  leaves, treedef = jax.tree.flatten(make_params())
  keys = jax.random.split(jax.random.key(seed), len(leaves))
  return treedef.unflatten([jax.random.normal(k, x.shape) for k, x in zip(keys, leaves)])


def loss_fn(params):
  x = jnp.linspace(-1.0, 1.0, 20).reshape(5, 4)
  h = jnp.tanh(x @ params["dense"]["kernel"] + params["dense"]["bias"])
  y = h @ params["out"]["kernel"] + params["out"]["bias"]
  return jnp.mean((y - 0.3) ** 2) + 0.1 * jnp.sum(params["dense"]["kernel"] ** 3)


PATHS = ["dense/bias", "dense/kernel", "out/bias", "out/kernel"]
SIZES = {"dense/bias": 3, "dense/kernel": 12, "out/bias": 2, "out/kernel": 6}


def leaf(tree, path):
  a, b = path.split("/")
  return np.ravel(np.asarray(tree[a][b], np.float64))


def expected_update(g, groups, dims, *, seed=0, step=0, worker=0, **basis_kw):
  """Block-diagonal P P^T g built by hand.

  groups: list of compartments, each a list of leaf paths in order, or for
  even slices the string "slices:K".
  """
  if isinstance(groups, str):
    k = int(groups.split(":")[1])
    flat = np.concatenate([leaf(g, p) for p in PATHS])
    bounds = np.cumsum([0] + [len(flat) // k + (i < len(flat) % k) for i in range(k)])
    out = np.zeros_like(flat)
    for c in range(k):
      lo, hi = bounds[c], bounds[c + 1]
      p = reference.dense_basis(seed, step, worker, c, dims[c], hi - lo, **basis_kw)
      out[lo:hi] = p @ (p.T @ flat[lo:hi])
    return dict(zip(PATHS, np.split(out, np.cumsum([SIZES[p] for p in PATHS])[:-1])))
  vectors = {path: leaf(g, path) for path in PATHS}
  return reference.block_projection(
    vectors, groups, dims, seed=seed, step=step, worker=worker, **basis_kw
  )


def assert_update_matches(update, want, rtol=2e-5, atol=2e-6):
  for path in PATHS:
    np.testing.assert_allclose(leaf(update, path), want[path], rtol=rtol, atol=atol)


CASES = [
  # (compartments, d, allocation, groups, dims)
  (None, 5, "proportional", [PATHS], [5]),
  (3, 6, "proportional", "slices:3", [2, 2, 2]),
  ("leaf", 2, "fixed", [[p] for p in PATHS], [2, 2, 2, 2]),
  ("module", 4, "fixed", [PATHS[:2], PATHS[2:]], [4, 4]),
  ("leaf", 8, "proportional", [[p] for p in PATHS], [1, 4, 1, 2]),
  (
    (r"bias", r".*"),
    (3, 5),
    "proportional",
    [["dense/bias", "out/bias"], ["dense/kernel", "out/kernel"]],
    [3, 5],
  ),
  # max(ceil(n_k / 2), 10) capped at n_k = 3, 12, 2, 6.
  ("leaf", 2.0, "compression", [[p] for p in PATHS], [3, 10, 2, 6]),
]


@pytest.mark.parametrize("compartments,d,allocation,groups,dims", CASES)
def test_update_equals_dense_projection(compartments, d, allocation, groups, dims):
  tx = rb.scale_by_random_bases(
    d, seed=4, compartments=compartments, allocation=allocation, block_rows=3, generator="threefry"
  )
  g = make_grad()
  state = tx.init(make_params())
  update, state = tx.update(g, state)
  assert_update_matches(update, expected_update(g, groups, dims, seed=4))
  # The next step uses the step-1 bases.
  update, _ = tx.update(g, state)
  assert_update_matches(update, expected_update(g, groups, dims, seed=4, step=1))


@pytest.mark.parametrize("distribution", rb.DISTRIBUTIONS)
@pytest.mark.parametrize("normalize", ["norm", "expected"])
def test_distributions_and_scalings_match_dense(distribution, normalize):
  tx = rb.scale_by_random_bases(
    6, seed=1, distribution=distribution, normalize=normalize, generator="threefry"
  )
  g = make_grad(1)
  update, _ = tx.update(g, tx.init(g))
  assert_update_matches(
    update, expected_update(g, [PATHS], [6], seed=1, distribution=distribution, normalize=normalize)
  )


def test_unnormalised_update_is_divided_by_d():
  tx = rb.scale_by_random_bases(6, seed=1, normalize=False, generator="threefry")
  g = make_grad(1)
  update, _ = tx.update(g, tx.init(g))
  want = expected_update(g, [PATHS], [6], seed=1, normalize="none")
  assert_update_matches(update, {p: v / 6 for p, v in want.items()}, rtol=1e-4)


def test_update_is_linear_in_the_gradient():
  tx = rb.scale_by_random_bases(7, seed=2)
  g1, g2 = make_grad(1), make_grad(2)
  state = tx.init(g1)
  combo = jax.tree.map(lambda a, b: 2.0 * a - 3.0 * b, g1, g2)
  u1, u2, u12 = (reference.flat(tx.update(g, state)[0]) for g in (g1, g2, combo))
  np.testing.assert_allclose(u12, 2.0 * u1 - 3.0 * u2, rtol=1e-5, atol=1e-5)


def updates_of_random_gradients(tx, state, count, seed=0):
  keys = jax.random.split(jax.random.key(seed), count)
  grads = [jax.tree.map(lambda x, k=k: jax.random.normal(k, x.shape), make_grad()) for k in keys]
  update = jax.jit(tx.update)
  return np.stack([reference.flat(update(g, state)[0]) for g in grads])


def rank(matrix):
  s = np.linalg.svd(matrix, compute_uv=False)
  return int(np.sum(s > 1e-4 * s[0]))


def test_subspace_rank_redraw_and_fixed():
  d = 4
  for transform, union_rank in (
    (rb.scale_by_random_bases(d, seed=0), 2 * d),
    (rb.scale_by_random_bases(d, seed=0, redraw=False), d),
  ):
    state0 = transform.init(make_params())
    _, state1 = transform.update(make_grad(), state0)
    step0 = updates_of_random_gradients(transform, state0, 12)
    step1 = updates_of_random_gradients(transform, state1, 12, seed=1)
    assert rank(step0) == d and rank(step1) == d
    assert rank(np.concatenate([step0, step1])) == union_rank


def test_expected_update_is_proportional_to_gradient():
  # E[phi phi^T] = I / D for unit directions with i.i.d. symmetric entries,
  # so E[P P^T g] = (d / D) g.
  g = make_grad(3)
  D, d, steps = 23, 3, 1500
  transform = rb.scale_by_random_bases(d, seed=9)
  tx = jax.jit(transform.update)
  total = np.zeros(D)
  state = transform.init(g)
  for _ in range(steps):
    update, state = tx(g, state)
    total += reference.flat(update)
  mean, gf = total / steps, reference.flat(g)
  cosine = mean @ gf / np.linalg.norm(mean) / np.linalg.norm(gf)
  assert cosine > 0.97
  np.testing.assert_allclose(np.linalg.norm(mean) / np.linalg.norm(gf), d / D, rtol=0.1)


@pytest.mark.parametrize("compartments", [None, 2, "module"])
def test_forward_mode_equals_reverse_mode(compartments):
  params = make_params()
  tx = rb.scale_by_random_bases(5, seed=3, compartments=compartments, allocation="fixed")
  state = tx.init(params)
  reverse, _ = tx.update(jax.grad(loss_fn)(params), state, params)
  forward, _ = tx.update(None, state, params, value_fn=loss_fn)
  np.testing.assert_allclose(reference.flat(forward), reference.flat(reverse), rtol=1e-5, atol=1e-6)


def test_jit_equals_eager_and_block_size_is_only_a_schedule():
  g = make_grad(4)
  results = []
  for rows in (None, 1, 4, 9):
    tx = rb.scale_by_random_bases(9, seed=5, block_rows=rows)
    state = tx.init(g)
    results.append(reference.flat(tx.update(g, state)[0]))
    results.append(reference.flat(jax.jit(tx.update)(g, state)[0]))
  for r in results[1:]:
    np.testing.assert_allclose(r, results[0], rtol=1e-5, atol=1e-7)


def test_fixed_seed_gives_fixed_checksum_in_fresh_process():
  # Golden values recorded when this test was written (jax 0.10.2, CPU).
  np.testing.assert_allclose(
    reference.update_checksum_in_fresh_process("threefry"), GOLDEN_CHECKSUM, rtol=1e-5
  )


GOLDEN_CHECKSUM = [-5444.53955078125, 4.7313714027404785]


def test_composes_with_clipping_and_schedules():
  g = make_grad(5)
  schedule = optax.exponential_decay(0.5, transition_steps=1, decay_rate=0.5)
  tx = optax.chain(
    optax.clip_by_global_norm(0.1), rb.rbd(schedule, 4, seed=7, generator="threefry")
  )
  state = tx.init(make_params())
  clipped = jax.tree.map(lambda x: x * 0.1 / optax.tree.norm(g), g)
  for step, lr in enumerate((0.5, 0.25)):
    update, state = jax.jit(tx.update)(g, state, make_params())
    want = expected_update(clipped, [PATHS], [4], seed=7, step=step)
    assert_update_matches(update, {p: -lr * v for p, v in want.items()})


def test_adam_on_top_sees_the_projected_gradient():
  g = make_grad(6)
  tx = optax.chain(rb.scale_by_random_bases(4, seed=8, generator="threefry"), optax.adam(1e-2))
  adam = optax.adam(1e-2)
  state, adam_state = tx.init(g), adam.init(g)
  for step in range(3):
    update, state = tx.update(g, state)
    projected = expected_update(g, [PATHS], [4], seed=8, step=step)
    projected_tree = jax.tree.map(lambda x: x, g)
    for path in PATHS:
      a, b = path.split("/")
      projected_tree[a][b] = jnp.asarray(projected[path], jnp.float32).reshape(g[a][b].shape)
    want, adam_state = adam.update(projected_tree, adam_state)
    np.testing.assert_allclose(reference.flat(update), reference.flat(want), rtol=1e-4, atol=1e-6)


def test_partitioned_with_multi_transform():
  g = make_grad(7)
  labels = {"dense": {"kernel": "rbd", "bias": "rbd"}, "out": {"kernel": "sgd", "bias": "sgd"}}
  tx = optax.multi_transform(
    {"rbd": rb.rbd(1.0, 3, seed=2, generator="threefry"), "sgd": optax.sgd(1.0)}, labels
  )
  update, _ = tx.update(g, tx.init(make_params()), make_params())
  # rbd saw only the dense leaves: a 15-dimensional basis over them.
  want = expected_update(g, [["dense/bias", "dense/kernel"]], [3], seed=2)
  for path in ("dense/bias", "dense/kernel"):
    np.testing.assert_allclose(leaf(update, path), -want[path], rtol=2e-5, atol=1e-6)
  for path in ("out/bias", "out/kernel"):
    np.testing.assert_allclose(leaf(update, path), -leaf(g, path), rtol=1e-6)


def test_bfloat16_leaves():
  params = {"a": jnp.ones((50,), jnp.bfloat16), "b": jnp.ones((30,), jnp.float32)}
  g = {"a": jnp.linspace(-1, 1, 50).astype(jnp.bfloat16), "b": jnp.linspace(1, 2, 30)}
  tx = rb.rbd(0.1, 8, seed=0, generator="threefry")
  update, _ = jax.jit(tx.update)(g, tx.init(params), params)
  assert update["a"].dtype == jnp.bfloat16 and update["b"].dtype == jnp.float32
  p = reference.dense_basis(0, 0, 0, 0, 8, 80)
  gf = np.concatenate([np.asarray(g["a"], np.float64), np.asarray(g["b"], np.float64)])
  want = -0.1 * p @ (p.T @ gf)
  np.testing.assert_allclose(np.asarray(update["a"], np.float64), want[:50], atol=2e-3)
  np.testing.assert_allclose(np.asarray(update["b"]), want[50:], rtol=1e-4, atol=1e-6)
  new = optax.apply_updates(params, update)
  assert new["a"].dtype == jnp.bfloat16


def test_memory_does_not_grow_with_d():
  D, d = 100_000, 4096
  tx = rb.scale_by_random_bases(d)
  g = {"w": jax.ShapeDtypeStruct((D,), jnp.float32)}
  state = jax.eval_shape(tx.init, g)
  compiled = jax.jit(tx.update).lower(g, state).compile()
  temp = compiled.memory_analysis().temp_size_in_bytes
  assert temp < 64 * 2**20, temp
  # A quarter of the directions needs the same scratch space.
  small = jax.jit(rb.scale_by_random_bases(d // 4).update).lower(g, state).compile()
  assert temp <= 1.1 * small.memory_analysis().temp_size_in_bytes


def test_workers_exchange_coordinates_and_apply_the_same_update():
  K, d = 4, 3
  grads = [make_grad(10 + w) for w in range(K)]
  stacked = jax.tree.map(lambda *xs: jnp.stack(xs), *grads)
  tx = rb.scale_by_random_bases(d, seed=6, axis_name="workers", generator="threefry")
  state = tx.init(make_params())
  updates, _ = jax.vmap(lambda g: tx.update(g, state), axis_name="workers")(stacked)
  want = sum(
    np.concatenate([expected_update(grads[w], [PATHS], [d], seed=6, worker=w)[p] for p in PATHS])
    for w in range(K)
  )
  for w in range(K):
    got = np.concatenate([leaf(jax.tree.map(lambda x: x[w], updates), p) for p in PATHS])  # noqa: B023  (mapped at once)
    np.testing.assert_allclose(got, want, rtol=2e-5, atol=2e-6)


def test_one_and_eight_devices_give_the_same_trajectory():
  reference.assert_one_and_eight_devices_agree(steps=5)


# --- errors, raised by the factory or by init (before any jit) ---------------


@pytest.mark.parametrize(
  "kwargs,match",
  [
    (dict(d=0), r"d=0 must be a positive integer"),
    (dict(d=-3), r"d=-3 must be a positive integer"),
    (dict(d=2.5), r"d=2.5 must be a positive integer"),
    (dict(d=4, distribution="cauchy"), r"distribution='cauchy'.*'normal', 'uniform', 'bernoulli'"),
    (dict(d=4, normalize="l1"), r"normalize='l1'.*'norm', 'expected', 'none'"),
    (dict(d=4, generator="pcg"), r"generator='pcg'.*'threefry', 'hash'"),
    (dict(d=4, allocation="equal"), r"allocation='equal'.*'proportional', 'fixed', 'compression'"),
    (dict(d=4, compartments="layer"), r"compartments='layer'.*'leaf', 'module'"),
    (dict(d=4, compartments=0), r"compartments=0 must be >= 1"),
    (dict(d=4, compartments=["(unclosed"]), r"not a valid regular expression"),
    (dict(d=[3, 0]), r"must be positive integers"),
    (dict(d=0, allocation="compression"), r"compression factor"),
    (dict(d=4, block_rows=0), r"block_rows=0"),
    (dict(d=4, seed="abc"), r"seed"),
  ],
)
def test_factory_rejects_bad_arguments(kwargs, match):
  with pytest.raises(ValueError, match=match):
    rb.scale_by_random_bases(**kwargs)


@pytest.mark.parametrize(
  "kwargs,match",
  [
    (dict(d=4, compartments=["kernel"]), r"'dense/bias' is covered by no rule"),
    (dict(d=4, compartments=["kernel", "bias", "gamma"]), r"rule 'gamma' covers no parameter"),
    (dict(d=3, compartments="leaf"), r"gets d_k=0 directions"),
    (dict(d=[1, 2, 3], compartments="module"), r"d has 3 entries but there are 2"),
    (dict(d=4, compartments=100), r"more than the 23 parameters"),
    # 24 unit directions in R^23 would scale the update up by about 24/23.
    (
      dict(d=24),
      r"compartment 'all' \(23 parameters\) gets d_k=24 directions; "
      r"every compartment needs d_k <= n_k",
    ),
    (
      dict(d=3, compartments="leaf", allocation="fixed"),
      r"compartment 'out/bias' \(2 parameters\) gets d_k=3",
    ),
    (dict(d=[2, 9], compartments="module"), r"compartment 'out' \(8 parameters\) gets d_k=9"),
  ],
)
def test_init_rejects_compartments_that_do_not_fit(kwargs, match):
  tx = rb.scale_by_random_bases(**kwargs)
  with pytest.raises(ValueError, match=match):
    tx.init(make_params())


def test_fpd_fixes_redraw_and_update_needs_an_input():
  with pytest.raises(TypeError, match="redraw"):
    rb.fpd(0.1, 4, redraw=True)
  tx = rb.scale_by_random_bases(4)
  state = tx.init(make_params())
  with pytest.raises(ValueError, match="value_fn"):
    tx.update(None, state)
  with pytest.raises(ValueError, match="needs params"):
    tx.update(None, state, None, value_fn=loss_fn)


def test_more_directions_than_parameters_was_an_update_longer_than_the_gradient():
  # What d_k > n_k would do: P P^T of 100 unit directions in R^20 has
  # eigenvalues near 100/20, so the "projection" is about 5x the gradient.
  p = reference.dense_basis(0, 0, 0, 0, 100, 20)
  g = np.linspace(-1.0, 1.0, 20)
  assert np.linalg.norm(p @ (p.T @ g)) > 3 * np.linalg.norm(g)
  tx = rb.scale_by_random_bases(100, generator="threefry")
  with pytest.raises(ValueError, match=r"'all' \(20 parameters\) gets d_k=100"):
    tx.init({"w": jnp.asarray(g, jnp.float32)})


@pytest.mark.parametrize(
  "received,match",
  [
    (
      {"v": jnp.ones(20)},
      r"updates does not match the parameters given to init: "
      r"missing 'w' \(20,\) float32; unexpected 'v' \(20,\) float32",
    ),
    ({"w": jnp.ones(21)}, r"'w' has shape \(21,\), expected \(20,\)"),
    ({"w": jnp.ones((4, 5))}, r"'w' has shape \(4, 5\), expected \(20,\)"),
    ({"w": jnp.ones(20), "b": jnp.ones(3)}, r"given to init: unexpected 'b' \(3,\) float32"),
  ],
)
def test_update_rejects_a_gradient_unlike_the_params_of_init(received, match):
  tx = rb.rbd(0.1, 2, seed=0)
  state = tx.init({"w": jnp.ones(20)})
  with pytest.raises(ValueError, match=match):
    tx.update(received, state, received)
  with pytest.raises(ValueError, match=match):  # at trace time, under jit
    jax.jit(tx.update)(received, state, received)


def test_update_takes_the_same_leaves_in_another_container():
  # As in optax (and as flax NNX's Optimizer does: Variables at init, plain
  # arrays at update), only the leaves must match; the update comes back in
  # the container of the gradient.
  tx = rb.scale_by_random_bases(2, generator="threefry")
  g = jnp.linspace(-1.0, 1.0, 20)
  update, _ = tx.update([g], tx.init((jnp.ones(20),)))
  assert isinstance(update, list)
  p = reference.dense_basis(0, 0, 0, 0, 2, 20)
  np.testing.assert_allclose(update[0], p @ (p.T @ np.asarray(g, np.float64)), atol=2e-6)


def test_update_rejects_a_gradient_of_another_dtype():
  tx = rb.scale_by_random_bases(2)
  state = tx.init({"w": jnp.ones(20, jnp.float32)})
  with pytest.raises(ValueError, match=r"'w' has dtype bfloat16, expected float32"):
    tx.update({"w": jnp.ones(20, jnp.bfloat16)}, state)


def test_update_rejects_the_same_leaves_in_another_order():
  # An OrderedDict flattens in insertion order, a dict in sorted key order:
  # the flat vectors (and so the bases' coordinates) would not line up.
  tx = rb.scale_by_random_bases(2)
  state = tx.init({"a": jnp.ones(3), "b": jnp.ones(3)})
  reordered = collections.OrderedDict([("b", jnp.ones(3)), ("a", jnp.ones(3))])
  with pytest.raises(ValueError, match=r"leaves in the order \['b', 'a'\], expected \['a', 'b'\]"):
    tx.update(reordered, state)


def test_forward_mode_rejects_params_unlike_those_of_init():
  tx = rb.scale_by_random_bases(2)
  state = tx.init({"w": jnp.ones(20)})
  with pytest.raises(ValueError, match=r"params does not match.*'w' has shape \(21,\)"):
    tx.update(None, state, {"w": jnp.ones(21)}, value_fn=lambda p: jnp.sum(p["w"]))


@pytest.mark.parametrize("forward", [False, True])
def test_fpd_with_adam_on_the_coordinates_is_adam_on_theta_0_plus_p_c(forward):
  """Li et al.'s setup: Adam over c of L(theta_0 + P c), two compartments of their own P."""
  params, lr, steps = make_params(), 0.05, 6
  dims = [2, 3]  # the "dense" compartment (15 floats) and the "out" one (8)
  tx = rb.fpd(
    lr,
    dims,
    seed=3,
    generator="threefry",
    compartments=["dense/", "out/"],
    coordinate_transform=optax.scale_by_adam(),
  )
  state = tx.init(params)
  theta = params
  for _ in range(steps):
    if forward:
      updates, state = tx.update(None, state, theta, value_fn=loss_fn)
    else:
      updates, state = tx.update(jax.grad(loss_fn)(theta), state, theta)
    theta = optax.apply_updates(theta, updates)
  # The reference: the block-diagonal P built by hand, and optax.adam over c.
  blocks = [reference.dense_basis(3, 0, 0, k, dims[k], n) for k, n in enumerate((15, 8))]
  p = np.zeros((23, 5))
  p[:15, :2], p[15:, 2:] = blocks
  # ravel_pytree's order, dense/bias, dense/kernel, out/bias, out/kernel, is the compartments'.
  flat0, unravel = ravel_pytree(params)
  p_jnp = jnp.asarray(p, jnp.float32)

  def loss_of_c(c):
    return loss_fn(unravel(flat0 + p_jnp @ c))

  c, adam = jnp.zeros(5), optax.adam(lr)
  adam_state = adam.init(c)
  for _ in range(steps):
    step, adam_state = adam.update(jax.grad(loss_of_c)(c), adam_state)
    c = optax.apply_updates(c, step)
  want = flat0 + p_jnp @ c
  np.testing.assert_allclose(ravel_pytree(theta)[0], want, rtol=1e-4, atol=1e-6)
  assert state[0].coordinate_state.mu.shape == (5,)  # Adam's statistics: 2 x d floats


def test_coordinate_transform_identity_is_the_plain_update_and_bad_ones_are_refused():
  params, g = make_params(), make_grad(4)
  plain = rb.rbd(0.1, 7, seed=1)
  through = rb.rbd(0.1, 7, seed=1, coordinate_transform=optax.identity())
  plain_state, through_state = plain.init(params), through.init(params)
  for _ in range(2):  # the second step draws a new basis
    u1, plain_state = plain.update(g, plain_state)
    u2, through_state = through.update(g, through_state)
    np.testing.assert_allclose(reference.flat(u2), reference.flat(u1), rtol=1e-5, atol=1e-7)
  with pytest.raises(ValueError, match="coordinate_transform=.* must be None or an optax"):
    rb.scale_by_random_bases(4, coordinate_transform=lambda c: c)
  with pytest.raises(ValueError, match="coordinate_transform applies to a single worker"):
    rb.scale_by_random_bases(4, axis_name="workers", coordinate_transform=optax.identity())
