"""nes_gradient against the explicit NES formula of PAPER.md."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import reference

import random_bases as rb


def make_params():
  return {"a": jnp.linspace(-1.0, 1.0, 6).reshape(2, 3), "b": jnp.array([0.5, -0.5])}


def loss_fn(params):
  return jnp.sum(jnp.sin(params["a"]) ** 2) + jnp.sum((params["b"] - 1.0) ** 2)


def loss_at(flat):
  return float(
    loss_fn(
      {
        "a": jnp.asarray(flat[:6], jnp.float32).reshape(2, 3),
        "b": jnp.asarray(flat[6:], jnp.float32),
      }
    )
  )


@pytest.mark.parametrize("fitness", rb.FITNESS)
@pytest.mark.parametrize("antithetic", [False, True])
def test_matches_the_explicit_estimator(fitness, antithetic):
  # tests/reference.py writes PAPER.md's estimator out: d perturbations
  # phi_n = normal(fold_in(key, n)) (with antithetic, d/2 and their mirrors),
  # the losses shaped by `fitness`, g = sum f_n phi_n / (sigma d).
  key, d, sigma = jax.random.key(3), 10, 0.05
  got = reference.flat(
    rb.nes_gradient(
      loss_fn,
      make_params(),
      key=key,
      d=d,
      sigma=sigma,
      antithetic=antithetic,
      fitness=fitness,
      block_rows=3,
      generator="threefry",
    )
  )
  want = reference.nes_estimate(
    loss_at, reference.flat(make_params()), key, d, sigma, antithetic=antithetic, fitness=fitness
  )
  np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


def test_antithetic_raw_fitness_cancels_the_loss_and_its_curvature():
  # f(theta + s phi) - f(theta - s phi) = 2 s <g, phi> + O(s^3): with mirrored
  # pairs the raw estimate is (2/d) sum <g, phi_n> phi_n over the d/2
  # directions, with no term in the loss itself or its second derivative.
  key, d, sigma = jax.random.key(4), 8, 1e-3
  got = reference.flat(
    rb.nes_gradient(
      loss_fn, make_params(), key=key, d=d, sigma=sigma, antithetic=True, generator="threefry"
    )
  )
  grad = reference.flat(jax.grad(loss_fn)(make_params()))
  phi = np.stack(
    [np.asarray(jax.random.normal(jax.random.fold_in(key, n), (8,)), np.float64) for n in range(4)]
  )
  np.testing.assert_allclose(got, (2 / d) * (phi @ grad) @ phi, rtol=1e-2, atol=2e-3)


def test_centered_ranks_best_gets_plus_half():
  u = np.asarray(rb.centered_ranks(jnp.array([3.0, 1.0, 2.0, 5.0])))
  np.testing.assert_allclose(u, [-1 / 6, 0.5, 1 / 6, -0.5], rtol=1e-6)


def test_estimate_approaches_the_gradient():
  params = make_params()
  est = reference.flat(
    rb.nes_gradient(loss_fn, params, key=jax.random.key(0), d=4000, sigma=1e-3, antithetic=True)
  )
  true = reference.flat(jax.grad(loss_fn)(params))
  cosine = est @ true / np.linalg.norm(est) / np.linalg.norm(true)
  assert cosine > 0.97
  np.testing.assert_allclose(np.linalg.norm(est), np.linalg.norm(true), rtol=0.1)


@pytest.mark.parametrize(
  "kwargs,match",
  [
    (dict(d=0), "d=0 must be a positive integer"),
    (dict(d=5, antithetic=True), "must be even"),
    (dict(d=4, sigma=0.0), "sigma"),
    (dict(d=4, fitness="softmax"), "fitness='softmax'.*'raw', 'centered_ranks'"),
  ],
)
def test_rejects_bad_arguments(kwargs, match):
  with pytest.raises(ValueError, match=match):
    rb.nes_gradient(loss_fn, make_params(), key=jax.random.key(0), **kwargs)
