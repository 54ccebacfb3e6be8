"""rbd and fpd inside the optax machinery users wrap optimisers in.

Every expected value is built by hand from the dense basis of
``reference.dense_basis`` (threefry directions, the documented key chain).
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import reference
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

import random_bases as rb
from random_bases.method import transform

SEED, D, d = 3, 17, 4


def make_params():
  # Pytree (and flat-vector) order: b (5), w (3 x 4).
  return {"w": jnp.linspace(-1.0, 1.0, 12).reshape(3, 4), "b": jnp.linspace(0.5, -0.5, 5)}


def make_grad(seed):
  return jax.tree.map(lambda x: jax.random.normal(jax.random.key(seed), x.shape), make_params())


def projected(g, step):
  """P_step P_step^T g as a flat float64 vector."""
  p = reference.dense_basis(SEED, step, 0, 0, d, D)
  return p @ (p.T @ reference.flat(g))


def rbd(learning_rate=0.1, **kwargs):
  return rb.rbd(learning_rate, d, seed=SEED, generator="threefry", **kwargs)


def assert_flat_close(update, want):
  np.testing.assert_allclose(reference.flat(update), want, rtol=2e-5, atol=2e-6)


# --- optax.tree.map_params ----------------------------------------------------


@pytest.mark.parametrize("factory", [rb.rbd, rb.fpd])
def test_map_params_over_the_state(factory):
  tx = factory(0.1, d, seed=SEED)
  params = make_params()
  _, state = tx.update(make_grad(0), tx.init(params), params)
  # The state holds nothing parameter-shaped: a map over parameters keeps it.
  mapped = optax.tree.map_params(tx, lambda x: x.astype(jnp.bfloat16), state)
  assert mapped == state
  assert int(mapped[0].count) == 1
  # The documented use: the state's sharding from the parameters' specs.
  specs = {"w": P("x", None), "b": P()}
  state_specs = optax.tree.map_params(
    tx, lambda _, spec: spec, state, specs, transform_non_params=lambda _: P()
  )
  assert state_specs == (
    rb.ScaleByRandomBasesState(count=P(), param_signature=P()),
    optax.EmptyState(),
  )
  mesh = Mesh(np.array(jax.devices()[:1]), ("x",))
  shardings = jax.tree.map(
    lambda spec: NamedSharding(mesh, spec), state_specs, is_leaf=lambda x: isinstance(x, P)
  )
  placed = jax.jit(tx.init, out_shardings=shardings)(params)
  assert int(placed[0].count) == 0
  assert placed[0].param_signature == state[0].param_signature


def test_map_params_through_a_chain_with_adam():
  tx = optax.chain(rb.scale_by_random_bases(d, seed=SEED), optax.adam(1e-2))
  params = make_params()
  state = tx.init(params)
  specs = {"w": P("x", None), "b": P()}
  state_specs = optax.tree.map_params(
    tx, lambda _, spec: spec, state, specs, transform_non_params=lambda _: None
  )
  rbd_specs, (adam_specs, _) = state_specs
  assert rbd_specs == rb.ScaleByRandomBasesState(count=None, param_signature=None)
  assert adam_specs.mu == specs and adam_specs.nu == specs and adam_specs.count is None


def test_init_without_leaves_records_no_parameters():
  # What map_params does: init on a tree without leaves must not fail.
  tx = rbd()
  state = tx.init({})
  assert state[0].param_signature == transform.NO_PARAMETERS
  with pytest.raises(
    ValueError,
    match=r"updates has parameters \['b', 'w'\] but "
    r"init was given a tree without any",
  ):
    tx.update(make_grad(0), state, make_params())


# --- optax.inject_hyperparams -------------------------------------------------


@pytest.mark.parametrize("factory", [rb.rbd, rb.fpd])
def test_inject_hyperparams_gives_the_plain_update(factory):
  injected = optax.inject_hyperparams(factory, static_args=("d",))(learning_rate=0.01, d=2)
  plain = factory(0.01, 2)
  params = make_params()
  state, plain_state = injected.init(params), plain.init(params)
  # learning_rate and the int seed are injected as arrays.
  assert set(state.hyperparams) == {"learning_rate", "seed"}
  for step in range(2):
    g = make_grad(step)
    update, state = jax.jit(injected.update)(g, state, params)
    want, plain_state = plain.update(g, plain_state, params)
    np.testing.assert_allclose(reference.flat(update), reference.flat(want), rtol=1e-6, atol=1e-8)


def test_injected_schedule_scales_each_update():
  schedule = optax.exponential_decay(0.5, transition_steps=1, decay_rate=0.5)
  tx = optax.inject_hyperparams(rb.rbd, static_args="d")(
    learning_rate=schedule, d=d, seed=SEED, generator="threefry"
  )
  params = make_params()
  state = tx.init(params)
  g = make_grad(1)
  update_fn = jax.jit(tx.update)
  for step, lr in enumerate((0.5, 0.25, 0.125)):
    update, state = update_fn(g, state, params)
    assert_flat_close(update, -lr * projected(g, step))


def test_injected_rate_can_be_set_in_the_state():
  tx = optax.inject_hyperparams(rb.rbd, static_args="d")(
    learning_rate=0.1, d=d, seed=SEED, generator="threefry"
  )
  params = make_params()
  state = tx.init(params)
  state.hyperparams["learning_rate"] = jnp.asarray(2.0)
  g = make_grad(2)
  update, state = tx.update(g, state, params)
  assert_flat_close(update, -2.0 * projected(g, 0))


def test_inject_hyperparams_asks_for_static_structural_arguments():
  with pytest.raises(ValueError, match=r"d=Array\(2.*list 'd' in static_args"):
    optax.inject_hyperparams(rb.rbd)(learning_rate=0.1, d=2).init(make_params())


# --- wrappers and chains ------------------------------------------------------


def test_chain_clips_the_projected_update():
  # Clipping after the projection: u = P P^T g, scaled to norm <= 0.05.
  tx = optax.chain(
    rb.scale_by_random_bases(d, seed=SEED, generator="threefry"),
    optax.clip_by_global_norm(0.05),
    optax.scale_by_learning_rate(0.3),
  )
  params = make_params()
  state = tx.init(params)
  for step in range(2):
    g = make_grad(10 + step)
    update, state = tx.update(g, state, params)
    u = projected(g, step)
    assert np.linalg.norm(u) > 0.05  # the clip is active
    assert_flat_close(update, -0.3 * u * 0.05 / np.linalg.norm(u))


def test_multi_steps_projects_the_mean_gradient_once_per_k_steps():
  tx = optax.MultiSteps(rbd(0.5), every_k_schedule=2)
  params = make_params()
  state = tx.init(params)
  update_fn = jax.jit(tx.update)
  grads = [make_grad(20 + i) for i in range(4)]
  for i, g in enumerate(grads):
    update, state = update_fn(g, state, params)
    if i % 2 == 0:
      np.testing.assert_array_equal(reference.flat(update), np.zeros(D))
    else:  # the inner rbd has taken i // 2 steps: its basis is P_{i // 2}
      mean = jax.tree.map(lambda a, b: (a + b) / 2, grads[i - 1], g)
      assert_flat_close(update, -0.5 * projected(mean, i // 2))


def test_apply_if_finite_skips_a_nan_gradient_without_advancing_the_basis():
  tx = optax.apply_if_finite(rbd(0.5), max_consecutive_errors=3)
  params = make_params()
  state = tx.init(params)
  update_fn = jax.jit(tx.update)
  bad = jax.tree.map(lambda x: x.at[0].set(jnp.nan), make_grad(30))
  update, state = update_fn(bad, state, params)
  np.testing.assert_array_equal(reference.flat(update), np.zeros(D))
  assert int(state.total_notfinite) == 1 and int(state.inner_state[0].count) == 0
  g = make_grad(31)
  update, state = update_fn(g, state, params)
  assert_flat_close(update, -0.5 * projected(g, 0))  # still the step-0 basis


def test_tree_utils_read_and_set_the_step_that_keys_the_basis():
  tx = rbd(1.0)
  params = make_params()
  state = tx.init(params)
  g = make_grad(40)
  _, state = tx.update(g, state, params)
  assert int(optax.tree_utils.tree_get(state, "count")) == 1
  state = optax.tree_utils.tree_set(state, count=jnp.asarray(7, jnp.int32))
  update, state = tx.update(g, state, params)
  assert_flat_close(update, -projected(g, 7))
  assert int(optax.tree_utils.tree_get(state, "count")) == 8


def test_gradient_of_other_parameters_is_rejected_at_trace_time():
  # Reproduces the reported case: a gradient of {"v"} against init's {"w"}
  # used to return an update.
  g = jnp.ones(20)
  tx = rb.rbd(0.1, 2)
  with pytest.raises(ValueError, match=r"missing 'w' \(20,\) float32; unexpected 'v' \(20,\)"):
    tx.update({"v": g}, tx.init({"w": g}), {"v": g})
  # inject_hyperparams builds a new rbd for every update: the check lives in
  # the state, not in the transformation.
  wrapped = optax.inject_hyperparams(rb.rbd, static_args="d")(learning_rate=0.1, d=2)
  with pytest.raises(ValueError, match=r"missing 'w' \(20,\) float32; unexpected 'v' \(20,\)"):
    jax.jit(wrapped.update)({"v": g}, wrapped.init({"w": g}), {"v": g})
