"""rbd and fpd inside the training loops of flax NNX, flax linen and equinox.

Each loop is the library's own (``nnx.Optimizer``, linen's ``TrainState``,
equinox's ``filter_value_and_grad`` / ``apply_updates``). Every test checks
the names the user sees, that the update equals -eta P_t P_t^T g built by
hand for the same key (t = the step for RBD, 0 for FPD), and that the loss
falls.
"""

import collections
import pathlib
import re

import equinox as eqx
import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import reference
from flax import linen as nn
from flax import nnx
from flax.training import train_state

import random_bases as rb

SEED = 3
STEPS = 60
# Steps whose update is checked against the dense reference.
CHECKED_STEPS = (0, 1, STEPS - 1)
X = jax.random.normal(jax.random.key(1), (64, 6))
Y = jnp.argmax(X @ jax.random.normal(jax.random.key(2), (6, 3)), axis=-1)

# The bases' step at update t: RBD draws a new basis every step, FPD keeps
# the first.
BASIS_STEP = {"rbd": lambda t: t, "fpd": lambda t: 0}
FACTORY = {"rbd": rb.rbd, "fpd": rb.fpd}


def cross_entropy(logits):
  return optax.softmax_cross_entropy_with_integer_labels(logits, Y).mean()


def by_name(tree) -> dict[str, np.ndarray]:
  """{name: flat float64 leaf} in pytree order, with the names the library gives."""
  leaves = jax.tree.leaves(tree)
  names = rb.make_layout(tree, d=1).paths
  return {n: np.ravel(np.asarray(x, np.float64)) for n, x in zip(names, leaves)}


def expected_update(grads, groups, dims, *, step, learning_rate, clip=None):
  """-eta P P^T g per compartment, g first clipped to global norm ``clip``."""
  vectors = by_name(grads)
  if clip is not None:
    norm = np.sqrt(sum(np.sum(v**2) for v in vectors.values()))
    vectors = {n: v * min(1.0, clip / norm) for n, v in vectors.items()}
  projected = reference.block_projection(vectors, groups, dims, seed=SEED, step=step)
  return {n: -learning_rate * u for n, u in projected.items()}


def assert_update(updates, want):
  got = by_name(updates)
  assert sorted(got) == sorted(want)
  for name, value in want.items():
    np.testing.assert_allclose(got[name], value, rtol=2e-4, atol=2e-6, err_msg=name)


def check_run(history, method, groups, dims, *, learning_rate, clip=None):
  """history[t] = (loss, grads, updates) of step t."""
  for t in CHECKED_STEPS:
    _, grads, updates = history[t]
    rate = learning_rate(t) if callable(learning_rate) else learning_rate
    want = expected_update(
      grads, groups, dims, step=BASIS_STEP[method](t), learning_rate=rate, clip=clip
    )
    assert_update(updates, want)
  losses = [float(loss) for loss, _, _ in history]
  assert losses[-1] < 0.75 * losses[0], losses[:: STEPS // 6]  # falls by a quarter or more


# --- flax NNX ---------------------------------------------------------------


class NNXModel(nnx.Module):
  def __init__(self, rngs):
    self.dense_in = nnx.Linear(6, 16, rngs=rngs)
    self.bn = nnx.BatchNorm(16, rngs=rngs)
    self.dense_out = nnx.Linear(16, 3, rngs=rngs)

  def __call__(self, x):
    return self.dense_out(jax.nn.relu(self.bn(self.dense_in(x))))


NNX_NAMES = ["bn/bias", "bn/scale", "dense_in/bias", "dense_in/kernel"]
NNX_NAMES += ["dense_out/bias", "dense_out/kernel"]


def train_nnx(tx, wrt=nnx.Param):
  """nnx.Optimizer's loop, as in flax's examples; the history of every step."""
  model = NNXModel(nnx.Rngs(0))
  optimizer = nnx.Optimizer(model, tx, wrt=wrt)

  @nnx.jit
  def train_step(model, optimizer):
    loss, grads = nnx.value_and_grad(lambda m: cross_entropy(m(X)), argnums=nnx.DiffState(0, wrt))(
      model
    )
    updates = optimizer.update(model, grads)
    return loss, grads, updates

  return [train_step(model, optimizer) for _ in range(STEPS)]


@pytest.mark.parametrize("method", ["rbd", "fpd"])
def test_nnx_optimizer(method):
  history = train_nnx(FACTORY[method](2.0, 16, seed=SEED, generator="threefry"))
  assert list(by_name(history[0][1])) == NNX_NAMES  # no '/value' in the names
  check_run(history, method, [NNX_NAMES], [16], learning_rate=2.0)


@pytest.mark.parametrize("method", ["rbd", "fpd"])
def test_nnx_optimizer_in_a_chain_with_clipping(method):
  tx = optax.chain(
    optax.clip_by_global_norm(0.5), FACTORY[method](4.0, 16, seed=SEED, generator="threefry")
  )
  check_run(train_nnx(tx), method, [NNX_NAMES], [16], learning_rate=4.0, clip=0.5)


@pytest.mark.parametrize("method", ["rbd", "fpd"])
def test_nnx_module_compartments_are_the_modules(method):
  tx = FACTORY[method](
    2.0, 6, seed=SEED, compartments="module", allocation="fixed", generator="threefry"
  )
  history = train_nnx(tx)
  modules = [NNX_NAMES[0:2], NNX_NAMES[2:4], NNX_NAMES[4:6]]  # bn, dense_in, dense_out
  layout = rb.make_layout(history[0][1], d=6, compartments="module", allocation="fixed")
  assert [c.name for c in layout.compartments] == ["bn", "dense_in", "dense_out"]
  check_run(history, method, modules, [6, 6, 6], learning_rate=2.0)


@pytest.mark.parametrize("method", ["rbd", "fpd"])
def test_nnx_regex_compartments_match_the_names_the_user_sees(method):
  tx = FACTORY[method](
    2.0, (12, 4), seed=SEED, compartments=(r"kernel$", r".*"), generator="threefry"
  )
  kernels = ["dense_in/kernel", "dense_out/kernel"]
  rest = ["bn/bias", "bn/scale", "dense_in/bias", "dense_out/bias"]
  check_run(train_nnx(tx), method, [kernels, rest], [12, 4], learning_rate=2.0)


@pytest.mark.parametrize("method", ["rbd", "fpd"])
def test_nnx_inject_hyperparams_with_a_schedule(method):
  schedule = optax.linear_schedule(3.0, 1.0, STEPS)
  tx = optax.inject_hyperparams(FACTORY[method], static_args=("d", "generator"))(
    learning_rate=schedule, d=16, seed=SEED, generator="threefry"
  )
  check_run(train_nnx(tx), method, [NNX_NAMES], [16], learning_rate=schedule)


@pytest.mark.parametrize("method", ["rbd", "fpd"])
def test_nnx_optimizer_over_part_of_the_model(method):
  # wrt picks the output layer only: the rest of the model stays as it is.
  wrt = nnx.All(nnx.Param, nnx.PathContains("dense_out"))
  model_before = nnx.state(NNXModel(nnx.Rngs(0)), nnx.Param)
  history = train_nnx(FACTORY[method](1.0, 16, seed=SEED, generator="threefry"), wrt=wrt)
  head = ["dense_out/bias", "dense_out/kernel"]
  assert list(by_name(history[0][1])) == head
  for t in CHECKED_STEPS:
    _, grads, updates = history[t]
    assert_update(
      updates, expected_update(grads, [head], [16], step=BASIS_STEP[method](t), learning_rate=1.0)
    )
  assert float(history[-1][0]) < 0.9 * float(history[0][0])
  assert len(jax.tree.leaves(model_before)) == 6


def test_nnx_gradient_of_other_variables_is_refused():
  model = NNXModel(nnx.Rngs(0))
  optimizer = nnx.Optimizer(model, rb.rbd(1.0, 8), wrt=nnx.Param)
  grads = nnx.grad(lambda m: cross_entropy(m(X)), argnums=nnx.DiffState(0, nnx.Param))(model)
  wider = NNXModel(nnx.Rngs(0))
  wider.dense_out = nnx.Linear(16, 4, rngs=nnx.Rngs(1))
  wide_grads = nnx.grad(lambda m: m(X).sum())(wider)
  with pytest.raises(
    ValueError, match=r"'dense_out/kernel' has shape \(16, 4\), expected \(16, 3\)"
  ):
    optimizer.update(wider, wide_grads)
  optimizer.update(model, grads)  # the right gradient still goes through


# --- flax linen -------------------------------------------------------------


class LinenModel(nn.Module):
  @nn.compact
  def __call__(self, x, train: bool):
    x = nn.relu(nn.BatchNorm(use_running_average=not train)(nn.Dense(16)(x)))
    return nn.Dense(3)(x)


class TrainStateWithBatchStats(train_state.TrainState):
  batch_stats: flax.core.FrozenDict


LINEN_NAMES = ["BatchNorm_0/bias", "BatchNorm_0/scale", "Dense_0/bias", "Dense_0/kernel"]
LINEN_NAMES += ["Dense_1/bias", "Dense_1/kernel"]


@pytest.mark.parametrize("method", ["rbd", "fpd"])
@pytest.mark.parametrize("container", ["FrozenDict", "dict"])
def test_linen_train_state(method, container):
  model = LinenModel()
  variables = model.init(jax.random.key(0), X, train=False)
  to_container = flax.core.freeze if container == "FrozenDict" else flax.core.unfreeze
  state = TrainStateWithBatchStats.create(
    apply_fn=model.apply,
    params=to_container(variables["params"]),
    batch_stats=variables["batch_stats"],
    tx=FACTORY[method](2.0, 16, seed=SEED, generator="threefry"),
  )

  @jax.jit
  def train_step(state):
    def loss_fn(params):
      logits, updated = state.apply_fn(
        {"params": params, "batch_stats": state.batch_stats}, X, train=True, mutable="batch_stats"
      )
      return cross_entropy(logits), updated

    (loss, updated), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    new_state = state.apply_gradients(grads=grads, batch_stats=updated["batch_stats"])
    updates = jax.tree.map(jnp.subtract, new_state.params, state.params)
    return new_state, (loss, grads, updates)

  history = []
  for _ in range(STEPS):
    state, record = train_step(state)
    history.append(record)
  assert list(by_name(history[0][1])) == LINEN_NAMES
  check_run(history, method, [LINEN_NAMES], [16], learning_rate=2.0)


# --- equinox ----------------------------------------------------------------

EQX_NAMES = [f"layers/{i}/{leaf}" for i in range(3) for leaf in ("weight", "bias")]


@pytest.mark.parametrize("method", ["rbd", "fpd"])
@pytest.mark.parametrize("compartments", [None, "module"])
def test_equinox_filtered_training(method, compartments):
  model = eqx.nn.MLP(6, 3, width_size=16, depth=2, key=jax.random.key(0))
  # Without batch norm the MLP takes larger steps than the models above.
  d = 16 if compartments is None else 8
  tx = FACTORY[method](
    5.0, d, seed=SEED, compartments=compartments, allocation="fixed", generator="threefry"
  )
  opt_state = tx.init(eqx.filter(model, eqx.is_inexact_array))

  @eqx.filter_jit
  def train_step(model, opt_state):
    loss, grads = eqx.filter_value_and_grad(lambda m: cross_entropy(jax.vmap(m)(X)))(model)
    updates, opt_state = tx.update(grads, opt_state, eqx.filter(model, eqx.is_inexact_array))
    return eqx.apply_updates(model, updates), opt_state, (loss, grads, updates)

  history = []
  for _ in range(STEPS):
    model, opt_state, record = train_step(model, opt_state)
    history.append(record)
  assert list(by_name(history[0][1])) == EQX_NAMES  # the activation is a None leaf
  if compartments is None:
    check_run(history, method, [EQX_NAMES], [16], learning_rate=5.0)
  else:  # one compartment per layer: layers/0, layers/1, layers/2
    layers = [EQX_NAMES[0:2], EQX_NAMES[2:4], EQX_NAMES[4:6]]
    check_run(history, method, layers, [8, 8, 8], learning_rate=5.0)


# --- plain containers: haiku-style dicts, lists, tuples ---------------------


def mlp_params(container: str):
  keys = jax.random.split(jax.random.key(0), 2)
  w0 = jax.random.normal(keys[0], (6, 16)) / np.sqrt(6)
  w1 = jax.random.normal(keys[1], (16, 3)) / 4.0
  b0, b1 = jnp.zeros(16), jnp.zeros(3)
  if container == "haiku":
    return {"mlp/~/linear_0": {"w": w0, "b": b0}, "mlp/~/linear_1": {"w": w1, "b": b1}}
  if container == "list":
    return [[w0, b0], [w1, b1]]
  return ((w0, b0), (w1, b1))


def mlp_layers(params):
  if isinstance(params, dict):
    return [(p["w"], p["b"]) for p in params.values()]
  return [tuple(layer) for layer in params]


PLAIN_NAMES = {
  "haiku": [
    ["mlp/~/linear_0/b", "mlp/~/linear_0/w"],
    ["mlp/~/linear_1/b", "mlp/~/linear_1/w"],
  ],
  "list": [["0/0", "0/1"], ["1/0", "1/1"]],
  "tuple": [["0/0", "0/1"], ["1/0", "1/1"]],
}


@pytest.mark.parametrize("method", ["rbd", "fpd"])
@pytest.mark.parametrize("container", ["haiku", "list", "tuple"])
def test_plain_containers_with_module_compartments(method, container):
  def loss_fn(params):
    (w0, b0), (w1, b1) = mlp_layers(params)
    return cross_entropy(jax.nn.relu(X @ w0 + b0) @ w1 + b1)

  tx = FACTORY[method](
    2.0, 8, seed=SEED, compartments="module", allocation="fixed", generator="threefry"
  )
  params = mlp_params(container)
  opt_state = tx.init(params)

  @jax.jit
  def train_step(params, opt_state):
    loss, grads = jax.value_and_grad(loss_fn)(params)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, (loss, grads, updates)

  history = []
  for _ in range(STEPS):
    params, opt_state, record = train_step(params, opt_state)
    history.append(record)
  assert type(params) is type(mlp_params(container))
  check_run(history, method, PLAIN_NAMES[container], [8, 8], learning_rate=2.0)


def test_boxes_are_left_out_of_names_but_fields_named_value_are_kept():
  tree = {
    "w": nn.Partitioned(jnp.ones(3), names=("x",)),  # a box: one child, '.value'
    "v": collections.OrderedDict(value=jnp.ones(2), other=jnp.ones(2)),
  }
  assert rb.make_layout(tree, d=1).paths == ("v/value", "v/other", "w")


# --- the README's snippets --------------------------------------------------

README_SECTION = "## Use it from flax NNX, linen and equinox"


def readme_snippets():
  text = (pathlib.Path(reference.ROOT) / "README.md").read_text()
  section = text.split(README_SECTION, 1)[1].split("\n## ", 1)[0]
  return re.findall(r"```python\n(.*?)```", section, flags=re.DOTALL)


def test_the_readme_has_one_snippet_per_library():
  snippets = readme_snippets()
  assert [("nnx.Optimizer" in s, "TrainState" in s, "eqx." in s) for s in snippets] == [
    (True, False, False),
    (False, True, False),
    (False, False, True),
  ]


@pytest.mark.parametrize("index", range(3), ids=["nnx", "linen", "equinox"])
def test_readme_snippet_runs_as_written_and_trains(index):
  namespace = {}
  exec(compile(readme_snippets()[index], f"README.md snippet {index}", "exec"), namespace)
  losses = namespace["losses"]
  assert len(losses) == 100 and losses[-1] < 0.75 * losses[0], losses[::20]
