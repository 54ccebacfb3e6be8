"""Explicit dense references for the random-bases tests.

These rebuild the basis straight from the documented key contract
(``fold_in(seed, step, worker, compartment, row)``) with ``jax.random``, so
the library's block-wise loops are checked against plain dense algebra.
"""

import fcntl
import json
import os
import pathlib
import subprocess
import sys
import tempfile
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest


def row_key(seed, step, worker, compartment, row):
  """``seed``: an int, or a typed key (the trainer's ``fold_in(key(seed), phase)``)."""
  typed_key = isinstance(seed, jax.Array) and jnp.issubdtype(seed.dtype, jax.dtypes.prng_key)
  key = seed if typed_key else jax.random.key(seed)
  for value in (step, worker, compartment, row):
    key = jax.random.fold_in(key, value)
  return key


def dense_basis(seed, step, worker, compartment, dim, n, distribution="normal", normalize="norm"):
  """P as a [n, dim] matrix whose columns are the directions."""
  rows = []
  for i in range(dim):
    k = row_key(seed, step, worker, compartment, i)
    if distribution == "normal":
      r = jax.random.normal(k, (n,))
    elif distribution == "uniform":
      r = jax.random.uniform(k, (n,), minval=-1.0, maxval=1.0)
    else:
      r = jax.random.rademacher(k, (n,), jnp.float32)
    rows.append(np.asarray(r, np.float64))
  rows = np.stack(rows)
  if normalize == "norm":
    rows /= np.linalg.norm(rows, axis=1, keepdims=True)
  elif normalize == "expected":
    m2 = {"normal": 1.0, "uniform": 1 / 3, "bernoulli": 1.0}[distribution]
    rows /= np.sqrt(n * m2)
  return rows.T


def block_projection(vectors, groups, dims, *, seed=0, step=0, worker=0, **basis_kw):
  """Block-diagonal P P^T g built by hand, leaf by leaf.

  vectors: {leaf name: flat float64 gradient}; groups: the compartments, each
  a list of leaf names in their order in the flat vector; dims: d_k of each.
  Returns {leaf name: flat float64 update}.
  """
  result = {}
  for c, names in enumerate(groups):
    v = np.concatenate([vectors[name] for name in names])
    p = dense_basis(seed, step, worker, c, dims[c], len(v), **basis_kw)
    u = p @ (p.T @ v)
    sizes = [len(vectors[name]) for name in names]
    result.update(zip(names, np.split(u, np.cumsum(sizes)[:-1])))
  return result


def flat(tree):
  """Leaves concatenated in pytree order, as float64 numpy."""
  return np.concatenate([np.ravel(np.asarray(x, np.float64)) for x in jax.tree.leaves(tree)])


# Read once, at import: tests that change the variable to test the library's
# own search must not move the real data they compare against.
# The repository root: fresh processes run there.
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DATA_ROOT = os.environ.get("RANDOM_BASES_DATA_DIR", "")


def require_data(path, what):
  """`path` as a pathlib.Path if it exists; else the test cannot run.

  Under CI (CI=true) a missing data set fails the test, so CI never passes
  without the real data; elsewhere it skips, saying what is missing.
  """
  path = pathlib.Path(path)
  if not path.exists():
    missing_data(f"{what} not found at {path}")
  return path


def missing_data(message):
  """Fails the test under CI (CI=true), skips it elsewhere."""
  if os.environ.get("CI", "").lower() in ("true", "1"):
    pytest.fail(message + " (CI=true: missing data is a failure)")
  pytest.skip(message)


def shared_dataset(*parts):
  """$RANDOM_BASES_DATA_DIR/<parts>: the real data .ci/run points the tests at."""
  if not DATA_ROOT:
    missing_data(
      f"{'/'.join(parts)}: RANDOM_BASES_DATA_DIR is not set (point "
      "it at the shared datasets, e.g. ../shared/datasets)"
    )
  return require_data(pathlib.Path(DATA_ROOT, *parts).resolve(), "/".join(parts))


def mnist_fc_problem(num_test=None):
  """Real MNIST (first 20,000 training images) and an FC model at its init.

  Reads $RANDOM_BASES_DATA_DIR/mnist (see shared_dataset).

  Returns:
    (x_train, y_train, x_test, y_test, model, params0, loss) with
    loss(params, x, y) the mean softmax cross-entropy.
  """
  import optax

  from random_bases import data as data_lib
  from random_bases import models

  data = data_lib.load_dataset(
    "mnist", source="files", data_dir=str(shared_dataset("mnist")), holdout="none"
  )
  x_train = jnp.asarray(data.train_images[:20_000], jnp.float32) / 255.0
  y_train = jnp.asarray(data.train_labels[:20_000])
  x_test, y_test = data.eval_splits["test"]
  x_test = jnp.asarray(x_test[:num_test], jnp.float32) / 255.0
  y_test = jnp.asarray(y_test[:num_test])
  model = models.create_model("fc")
  params0 = models.init_variables(model, key=jax.random.key(0), input_shape=(28, 28, 1))["params"]

  def loss(params, x, y):
    logits = model.apply({"params": params}, x, train=False)
    return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

  return x_train, y_train, x_test, y_test, model, params0, loss


CHECKSUM_SCRIPT = """
import jax, jax.numpy as jnp, random_bases as rb
params = {{"w": jnp.linspace(-1.0, 1.0, 1000).reshape(10, 100),
          "b": jnp.linspace(0.0, 1.0, 10)}}
tx = rb.rbd(0.5, 64, seed=1234, compartments="leaf", allocation="proportional"{generator})
state = tx.init(params)
for _ in range(3):
  updates, state = jax.jit(tx.update)(params, state)
weights = jnp.arange(1, 1011, dtype=jnp.float32)
flat = jnp.concatenate([updates["b"], updates["w"].ravel()])
print(repr(float(jnp.dot(flat, weights))), repr(float(jnp.sum(flat ** 2))))
"""


def update_checksum_in_fresh_process(generator=None):
  """Two checksums of the third rbd update of a fixed problem, in a new process.

  generator=None uses the library's default.
  """
  argument = "" if generator is None else f", generator={generator!r}"
  out = subprocess.run(
    [sys.executable, "-c", CHECKSUM_SCRIPT.format(generator=argument)],
    check=True,
    cwd=ROOT,
    capture_output=True,
    text=True,
    env=dict(os.environ, JAX_PLATFORMS="cpu"),
  ).stdout.split()
  return [float(v) for v in out]


EIGHT_DEVICE_SCRIPT = """
      import jax, jax.numpy as jnp, numpy as np, optax, random_bases as rb
      from jax.sharding import Mesh, PartitionSpec as P
      K = 8
      X = jax.random.normal(jax.random.key(0), (K, 16, 5))
      Y = jnp.sin(X.sum(-1))
      params = {{"w": jnp.zeros((5, 7)), "v": jnp.zeros((7,))}}
      def loss(p, x, y):
        return jnp.mean((jnp.tanh(x @ p["w"] + 0.1) @ p["v"] - y) ** 2)
      tx = rb.rbd(0.5, 6, seed=3, axis_name="workers", compartments="leaf",
                  allocation="fixed"{extra})
      def step(p, s, x, y):
        g = jax.grad(loss)(p, x, y)
        u, s = tx.update(g, s, p)
        return optax.apply_updates(p, u), s
      def run(mapped):
        p, s = params, tx.init(params)
        traj = []
        for t in range({steps}):
          p, s = mapped(p, s, X, Y)
          traj.append(np.concatenate([np.ravel(p["v"]), np.ravel(p["w"])]))
        return np.stack(traj)
      one = jax.jit(jax.vmap(step, in_axes=(None, None, 0, 0), out_axes=None,
                             axis_name="workers"))
      mesh = Mesh(np.array(jax.devices()), ("workers",))
      many = jax.jit(jax.shard_map(
          lambda p, s, x, y: step(p, s, x[0], y[0]), mesh=mesh,
          in_specs=(P(), P(), P("workers"), P("workers")), out_specs=(P(), P()),
          check_vma=False))
      a, b = run(one), run(many)
      # The workers' only collective: one all-gather of K x d coordinates.
      hlo = many.lower(params, tx.init(params), X, Y).as_text()
      assert hlo.count('stablehlo.all_gather"') == 1 and "tensor<8x12xf32>" in hlo, hlo
      assert "all_reduce" not in hlo and "reduce_scatter" not in hlo
      assert len(jax.devices()) == 8
      assert np.abs(a[-1] - a[0]).max() > 1e-3, "the trajectory must move"
      np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
      print("max difference", np.abs(a - b).max())
  """


def assert_one_and_eight_devices_agree(*, steps: int, extra_rbd_kwargs: str = "") -> None:
  """8 workers (8 XLA CPU devices, shard_map) equal 8 vmapped ones on 1 device.

  Runs in a fresh process, since the device count is fixed when jax starts.
  Also checks the step's only collective is one all-gather of K x d
  coordinates. ``extra_rbd_kwargs`` is Python source appended to ``rb.rbd``'s
  arguments (for example ``', structure="srht"'``).
  """
  script = textwrap.dedent(EIGHT_DEVICE_SCRIPT).format(extra=extra_rbd_kwargs, steps=steps)
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8", JAX_PLATFORMS="cpu")
  subprocess.run([sys.executable, "-c", script], check=True, env=env, cwd=ROOT)


# --- tiny trainer runs, shared by the test files ------------------------------

# The tiny run every trainer test starts from: FC on the MNIST sample shipped
# with the package (1,600 training images after a 400-image holdout), RBD with
# d = 50, one epoch of 30 steps logged every 15, 300 images per eval split.
TINY_RUN = {
  "data.source": "sample",
  "data.holdout_size": 400,
  "bases.d": 50,
  "learning_rate.rbd": 16.0,
  "learning_rate.fpd": 16.0,
  "learning_rate.sgd": 0.1,
  "learning_rate.nes": 2.0**-10,
  "train.epochs": 1,
  "train.steps_per_epoch": 30,
  "train.log_every_steps": 15,
  "train.eval_examples": 300,
}


def tiny_config(method="rbd", **overrides):
  """``base_config()`` with ``TINY_RUN``, ``method`` and dotted-field ``overrides``.

  Overrides use the config's own names: ``tiny_config("sgd", workers=2,
  **{"bases.d": 10})``.
  """
  from random_bases import config_lib

  config = config_lib.base_config()
  config.method = method
  config_lib.set_fields(config, {**TINY_RUN, **overrides})
  return config


def quick_config(**overrides):
  """``tiny_config()`` of 10 steps an epoch (logged every 5), 200 images per eval split."""
  return tiny_config(
    **{
      "train.steps_per_epoch": 10,
      "train.log_every_steps": 5,
      "train.eval_examples": 200,
      **overrides,
    }
  )


TIMINGS = ("train_seconds", "eval_seconds", "images_per_second")


def without_timings(rows):
  """Metrics lines without their wall-clock fields, which differ from run to run."""
  return [{k: v for k, v in row.items() if k not in TIMINGS} for row in rows]


def assert_same_state(a, b):
  """Two ``train_and_evaluate`` results end with bit-identical states."""
  for x, y in zip(jax.tree.leaves(a["state"]), jax.tree.leaves(b["state"])):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def sample_data():
  """The MNIST sample of ``TINY_RUN`` (400 images held out), as the trainer loads it."""
  from random_bases import data as data_lib

  return data_lib.load_dataset("mnist", source="sample", holdout_size=400)


def one_device_mesh():
  """A ``workers`` mesh of this process's first device: K workers vmapped on it."""
  from jax.sharding import Mesh

  from random_bases import distributed

  return Mesh(np.array(jax.devices()[:1]), (distributed.WORKER_AXIS,))


TESTS = os.path.dirname(os.path.abspath(__file__))


def run_in_fresh_process(script, *args, devices=None, check=True):
  """Runs the Python source ``script`` with ``args`` in a new process, on CPU.

  It runs in the repository root with this folder on ``PYTHONPATH``, so the
  script imports ``reference`` (never another test module: importing one runs
  its module-level code and ties the files together). ``devices``: the number
  of XLA CPU devices, fixed when jax starts. Returns the
  ``subprocess.CompletedProcess`` (text output); with ``check``, a non-zero
  exit fails the test with the end of its stderr.
  """
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  env["PYTHONPATH"] = os.pathsep.join(p for p in (TESTS, env.get("PYTHONPATH", "")) if p)
  if devices is not None:
    env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices}"
  done = subprocess.run(
    [sys.executable, "-c", script, *map(str, args)],
    cwd=ROOT,
    env=env,
    capture_output=True,
    text=True,
  )
  if check and done.returncode != 0:
    pytest.fail(f"the script exited with {done.returncode}:\n{done.stderr[-5000:]}")
  return done


def computed_once_per_session(name, compute):
  """``compute()``'s JSON-able result, computed by one pytest-xdist worker of this run.

  A module-scoped fixture runs once per xdist worker, so an expensive one
  (an 8-device subprocess) would run on every worker that gets one of its
  tests. Under xdist every worker of one ``pytest -n N`` run shares
  ``PYTEST_XDIST_TESTRUNUID``: the first to take the flock computes and
  writes the file, the others wait and read it. The file lives under the
  system temp folder, named by that run id, so no other run reads it.
  Without xdist it simply computes.
  """
  run_id = os.environ.get("PYTEST_XDIST_TESTRUNUID")
  if not run_id:
    return compute()
  folder = os.path.join(tempfile.gettempdir(), f"random-bases-tests-{run_id}")
  os.makedirs(folder, exist_ok=True)
  path = os.path.join(folder, f"{name}.json")
  with open(path + ".lock", "w") as lock:
    fcntl.flock(lock, fcntl.LOCK_EX)
    if os.path.exists(path):
      with open(path) as f:
        return json.load(f)
    value = compute()
    with open(path + ".tmp", "w") as f:
      json.dump(value, f)
    os.replace(path + ".tmp", path)
    return value


def nes_estimate(loss_at, theta, key, d, sigma, *, antithetic=False, fitness="centered_ranks"):
  """PAPER.md's NES estimate g = 1/(sigma d) sum_n f_n phi_n, written out in float64.

  ``loss_at``: flat parameters (float64 numpy) -> the loss; ``theta``: the flat
  parameters; phi_n = ``jax.random.normal(fold_in(key, n))`` (the threefry
  generator's perturbations), d/2 of them and their mirrors when
  ``antithetic``. ``fitness``: ``"raw"`` (f_n = loss) or ``"centered_ranks"``
  (the losses sorted worst first, the n-th gets u = n/(d - 1) - 0.5, f = -u).
  """
  count = d // 2 if antithetic else d
  phi = np.stack(
    [
      np.asarray(jax.random.normal(jax.random.fold_in(key, n), (theta.size,)), np.float64)
      for n in range(count)
    ]
  )
  if antithetic:
    phi = np.concatenate([phi, -phi])
  losses = np.array([loss_at(theta + sigma * p) for p in phi])
  if fitness == "raw":
    f = losses
  else:
    ranks = np.empty(d)
    ranks[np.argsort(-losses, kind="stable")] = np.arange(d)
    f = -(ranks / (d - 1) - 0.5)
  return (f[:, None] * phi).sum(0) / (sigma * d)
