"""Direction generation: the key contract, determinism, distributions."""

import dataclasses
import os
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import reference

from random_bases.method import directions as dirs
from random_bases.method import projection

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.parametrize("distribution", dirs.DISTRIBUTIONS)
def test_threefry_rows_follow_the_documented_key_chain(distribution):
  key = dirs.compartment_key(7, step=3, worker=2, compartment=1)
  got = dirs.materialize_directions(
    key, jnp.arange(5), 40, distribution=distribution, generator="threefry"
  )
  want = reference.dense_basis(7, 3, 2, 1, 5, 40, distribution).T
  np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("generator", dirs.GENERATORS)
def test_eager_and_jit_are_bit_identical(generator):
  key = dirs.compartment_key(0, step=11, worker=0, compartment=0)
  make = lambda k: dirs.materialize_directions(k, jnp.arange(6), 1001, generator=generator)
  np.testing.assert_array_equal(np.asarray(make(key)), np.asarray(jax.jit(make)(key)))


@pytest.mark.parametrize("generator", dirs.GENERATORS)
def test_directions_do_not_depend_on_the_block_size(generator):
  key = dirs.compartment_key(1, step=0, worker=0, compartment=0)
  whole = np.asarray(dirs.materialize_directions(key, jnp.arange(12), 300, generator=generator))
  for rows in (1, 5, 12):
    basis = projection.Basis(
      key,
      n=300,
      dim=12,
      distribution="normal",
      normalize="norm",
      generator=generator,
      block_rows=rows,
    )
    blocks = []
    for b in range(basis.num_blocks):
      raw, scale, valid = basis.block(jnp.asarray(b))
      blocks.append(np.asarray(raw * scale[:, None])[np.asarray(valid)])
    np.testing.assert_array_equal(np.concatenate(blocks), whole)


@pytest.mark.parametrize("generator", dirs.GENERATORS)
@pytest.mark.parametrize("distribution", dirs.DISTRIBUTIONS)
def test_unit_norm_and_expected_norm(distribution, generator):
  key = dirs.compartment_key(2, step=0, worker=0, compartment=0)
  unit = dirs.materialize_directions(
    key, jnp.arange(8), 5000, distribution=distribution, generator=generator
  )
  np.testing.assert_allclose(np.linalg.norm(unit, axis=1), 1.0, rtol=1e-5)
  expected = dirs.materialize_directions(
    key, jnp.arange(8), 5000, distribution=distribution, normalize="expected", generator=generator
  )
  # Close to unit length, but not exactly: scaled by a constant.
  np.testing.assert_allclose(np.linalg.norm(expected, axis=1), 1.0, atol=0.05)
  raw = dirs.sample_rows(
    dirs.row_keys(key, jnp.arange(8)), 5000, distribution=distribution, generator=generator
  )
  np.testing.assert_allclose(
    expected, raw / np.sqrt(5000 * dirs.SECOND_MOMENT[distribution]), rtol=1e-6
  )


# (mean, variance, third central moment, kurtosis) of each distribution.
MOMENTS = {
  "normal": (0.0, 1.0, 0.0, 3.0),
  "uniform": (0.0, 1 / 3, 0.0, 1.8),
  "bernoulli": (0.0, 1.0, 0.0, 1.0),
}


@pytest.mark.parametrize("generator", dirs.GENERATORS)
@pytest.mark.parametrize("distribution", dirs.DISTRIBUTIONS)
def test_moments_of_each_distribution(distribution, generator):
  key = dirs.compartment_key(3, step=0, worker=0, compartment=0)
  x = np.asarray(
    dirs.sample_rows(
      dirs.row_keys(key, jnp.arange(20)), 50_000, distribution=distribution, generator=generator
    ),
    np.float64,
  ).ravel()
  mean, var, third, kurt = MOMENTS[distribution]
  n = x.size  # 1e6 samples: standard errors ~1e-3
  assert abs(x.mean() - mean) < 5 * np.sqrt(var / n)
  assert abs(x.var() - var) < 0.005 * max(var, 1)
  c = x - x.mean()
  assert abs((c**3).mean()) < 0.01
  assert abs((c**4).mean() / x.var() ** 2 - kurt) < 0.02
  if distribution == "bernoulli":
    assert set(np.unique(x)) == {-1.0, 1.0}
  if distribution == "uniform":
    assert x.min() >= -1 and x.max() <= 1


def test_different_keys_give_different_directions():
  a = dirs.materialize_directions(
    dirs.compartment_key(0, step=0, worker=0, compartment=0), jnp.arange(2), 64
  )
  for step, worker, comp in [(1, 0, 0), (0, 1, 0), (0, 0, 1)]:
    b = dirs.materialize_directions(
      dirs.compartment_key(0, step=step, worker=worker, compartment=comp), jnp.arange(2), 64
    )
    assert not np.allclose(a, b)
    assert abs(float(jnp.sum(a[0] * b[0]))) < 0.6


def test_bad_choices_name_the_argument():
  keys = dirs.row_keys(jax.random.key(0), jnp.arange(2))
  with pytest.raises(ValueError, match="distribution.*'normal', 'uniform', 'bernoulli'"):
    dirs.sample_rows(keys, 4, distribution="cauchy")
  with pytest.raises(ValueError, match="generator.*'threefry', 'hash'"):
    dirs.sample_rows(keys, 4, generator="mt19937")


def test_integer_array_seed_keys_the_same_bases_as_the_int():
  # optax.inject_hyperparams hands an int seed over as an int32 array,
  # concrete in init and traced in update.
  want = jax.random.key_data(dirs.compartment_key(1234, step=2, worker=0, compartment=1))
  for seed in (jnp.asarray(1234), np.int32(1234), np.asarray(1234, np.uint32)):
    got = dirs.compartment_key(seed, step=2, worker=0, compartment=1)
    np.testing.assert_array_equal(jax.random.key_data(got), want)
  traced = jax.jit(
    lambda s: jax.random.key_data(dirs.compartment_key(s, step=2, worker=0, compartment=1))
  )(jnp.asarray(1234))
  np.testing.assert_array_equal(traced, want)
  for bad in (jnp.asarray(1.5), jnp.arange(3), True):
    with pytest.raises(ValueError, match="seed=.*must be an int"):
      dirs.base_key(bad)


def test_basis_is_a_frozen_dataclass_replaced_per_key():
  a = projection.Basis(
    jax.random.key(0),
    n=300,
    dim=20,
    distribution="normal",
    normalize="norm",
    generator="threefry",
    block_rows=None,
  )
  # The default block size is resolved once and kept by dataclasses.replace.
  assert a.block_rows == projection.default_block_rows(300, 20)
  assert a.num_blocks == -(-20 // a.block_rows)
  with pytest.raises(dataclasses.FrozenInstanceError):
    a.dim = 3
  b = dataclasses.replace(a, key=jax.random.key(1))
  assert (b.n, b.dim, b.block_rows, b.generator) == (300, 20, a.block_rows, "threefry")
  np.testing.assert_array_equal(
    np.asarray(b.block(jnp.asarray(0))[0]),
    np.asarray(
      dirs.sample_rows(
        dirs.row_keys(jax.random.key(1), jnp.arange(b.block_rows)), 300, generator="threefry"
      )
    ),
  )
  assert (
    projection.Basis(
      None, n=300, dim=4, distribution="normal", normalize="norm", generator="hash", block_rows=16
    ).block_rows
    == 4
  )


def test_directions_identical_on_one_and_eight_devices():
  script = textwrap.dedent("""
      import jax, jax.numpy as jnp, numpy as np
      from jax.sharding import Mesh, PartitionSpec as P
      from random_bases.method import directions as dirs
      assert len(jax.devices()) == 8
      mesh = Mesh(np.array(jax.devices()), ("w",))
      def per_device(step):
        w = jax.lax.axis_index("w")
        rows = []
        for gen in ("threefry", "hash"):
          for j in range(8):
            key = dirs.compartment_key(5, step=step[0], worker=j, compartment=w)
            rows.append(dirs.materialize_directions(key, jnp.arange(3), 257,
                                                    generator=gen))
        return jnp.stack(rows)[None]
      f = jax.jit(jax.shard_map(per_device, mesh=mesh, in_specs=P(),
                                out_specs=P("w")))
      out = np.asarray(f(jnp.array([4])))
      np.save({path!r}, out)
  """)
  out_path = os.path.join(ROOT, ".pytest_cache", "dirs8.npy")
  os.makedirs(os.path.dirname(out_path), exist_ok=True)
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8", JAX_PLATFORMS="cpu")
  subprocess.run(
    [sys.executable, "-c", script.format(path=out_path)], check=True, env=env, cwd=ROOT
  )
  many = np.load(out_path)
  for w in range(8):
    rows = []
    for gen in ("threefry", "hash"):
      for j in range(8):
        key = dirs.compartment_key(5, step=4, worker=j, compartment=w)
        rows.append(np.asarray(dirs.materialize_directions(key, jnp.arange(3), 257, generator=gen)))
    np.testing.assert_array_equal(many[w], np.stack(rows))
