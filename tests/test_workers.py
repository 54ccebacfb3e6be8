"""K workers (Alg. 1 right): the transformation and the trainer, on one and on eight devices.

The in-process tests run the workers vmapped on the one CPU device. What
needs eight devices runs in one subprocess (XLA_FLAGS must be set before JAX
starts); the ``eight_devices`` fixture holds its results.
"""

import json
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import reference
from jax.sharding import Mesh

import random_bases as rb
from random_bases import data as data_lib
from random_bases import distributed, train

# Four steps of d = 10 logged every 2, 200 images per eval split in one batch.
FOUR_STEPS = {
  "bases.d": 10,
  "train.steps_per_epoch": 4,
  "train.log_every_steps": 2,
  "train.eval_examples": 200,
  "train.eval_batch_size": 200,
}


def small_config(method="rbd", **overrides):
  return reference.tiny_config(method, **{**FOUR_STEPS, **overrides})


sample_data = reference.sample_data
one_device_mesh = reference.one_device_mesh


# --- the transformation --------------------------------------------------------

K, D_PER_WORKER, N = 4, 3, 40


def shared_gradient():
  return {"w": jax.random.normal(jax.random.key(7), (N,))}


def concatenated_update(g, workers):
  """One worker with every worker's directions side by side: P P^T g, P = [P^0 ... P^K-1]."""
  p = np.concatenate(
    [reference.dense_basis(5, 0, w, 0, D_PER_WORKER, N) for w in range(workers)], axis=1
  )
  return p @ (p.T @ np.asarray(g["w"], np.float64))


def test_k_workers_on_one_batch_equal_one_worker_with_all_their_directions():
  tx = rb.scale_by_random_bases(D_PER_WORKER, seed=5, axis_name="workers", generator="threefry")
  g = shared_gradient()
  state = tx.init(g)
  updates, _ = jax.vmap(lambda _: tx.update(g, state), axis_name="workers")(jnp.arange(K))
  want = concatenated_update(g, K)
  for w in range(K):
    np.testing.assert_allclose(updates["w"][w], want, rtol=2e-5, atol=2e-6)


# --- the trainer, workers vmapped on one device ----------------------------------


def test_sgd_with_workers_is_sgd_on_their_joint_batch():
  # Worker w takes the w-th of the step's batches: together the images one
  # worker with a K times larger batch takes, and the gradient mean is that
  # batch's gradient.
  data = sample_data()
  common = {"data.augment": False, "train.eval_batch_size": 100}
  four = train.Trainer(
    small_config("sgd", workers=4, **common, **{"train.batch_size": 8}),
    data,
    mesh=one_device_mesh(),
  )
  one = train.Trainer(small_config("sgd", **common, **{"train.batch_size": 32}), data)
  order = one.epoch_order(0)
  state_four, metrics_four = four.run_steps(0, four.initial_state(), order, 4)
  state_one, metrics_one = one.run_steps(0, one.initial_state(), order, 4)
  np.testing.assert_allclose(metrics_four["loss"], metrics_one["loss"], rtol=1e-5)
  assert np.abs(metrics_one["loss"][-1] - metrics_one["loss"][0]) > 1e-3
  for a, b in zip(jax.tree.leaves(state_four["params"]), jax.tree.leaves(state_one["params"])):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_resume_with_workers_equals_uninterrupted(tmp_path):
  mesh = one_device_mesh()
  config = small_config(workers=2, **{"train.epochs": 2})
  whole = train.train_and_evaluate(config, str(tmp_path / "a"), mesh=mesh)
  config.train.epochs = 1
  train.train_and_evaluate(config, str(tmp_path / "b"), mesh=mesh)
  config.train.epochs = 2
  resumed = train.train_and_evaluate(config, str(tmp_path / "b"), mesh=mesh)
  assert [r["epoch"] for r in resumed["history"]] == [2]
  for a, b in zip(jax.tree.leaves(whole["state"]), jax.tree.leaves(resumed["state"])):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  lines = {
    run: [json.loads(r) for r in (tmp_path / run / "metrics.jsonl").read_text().splitlines()]
    for run in ("a", "b")
  }
  assert [(r["epoch"], r["step"]) for r in lines["b"]] == [(1, 4), (2, 8)]
  for key in ("train_loss", "train_accuracy", "validation_loss", "test_loss"):
    assert [r[key] for r in lines["b"]] == [r[key] for r in lines["a"]], key


def test_gradient_correlation_with_workers_is_against_the_joint_batch(tmp_path):
  # Data-parallel SGD's update is the gradient of the step's whole batch.
  record = train.train_and_evaluate(
    small_config(
      "sgd", workers=4, **{"metrics.gradient_correlation": True, "train.checkpoint": False}
    ),
    str(tmp_path),
    mesh=one_device_mesh(),
  )["history"][0]
  assert record["correlation_whole"] == pytest.approx(1.0, abs=1e-5)
  assert record["correlation_min"] == pytest.approx(1.0, abs=1e-4)


# --- errors, before anything is loaded, compiled or written ---------------------


@pytest.mark.parametrize(
  "overrides,mesh_axes,match",
  [
    ({"workers": 0}, None, r"workers=0 must be a positive integer"),
    (
      {"workers": 3},
      None,
      r"train.eval_batch_size=200 must be divisible by workers=3",
    ),
    (
      {"workers": 60, "train.eval_batch_size": 600},
      None,
      r"train.batch_size=32 x workers=60 exceeds the 1600 training images",
    ),
    ({"workers": 8}, None, r"workers=8 needs 8 devices, but 1 cpu device\(s\) are available"),
    ({"workers": 2}, ("data",), r"the mesh has axes \('data',\) but no 'workers' axis"),
    ({}, ("workers",), r"a mesh runs workers > 1"),
  ],
)
def test_bad_workers_fail_before_loading_or_writing(
  overrides, mesh_axes, match, tmp_path, monkeypatch
):
  def no_loading(*args, **kwargs):
    raise AssertionError("data was loaded before the workers were checked")

  monkeypatch.setattr(data_lib, "load_dataset", no_loading)
  mesh = None if mesh_axes is None else Mesh(np.array(jax.devices()[:1]), mesh_axes)
  with pytest.raises(ValueError, match=match):
    train.train_and_evaluate(small_config(**overrides), str(tmp_path / "run"), mesh=mesh)
  assert not (tmp_path / "run").exists()


# --- what a compiled program sends --------------------------------------------


def test_collectives_lists_each_with_its_result_shapes():
  hlo = textwrap.dedent("""
      %all-gather.1 = f32[8,20]{1,0} all-gather(f32[1,20]{1,0} %x), channel_id=1, dimensions={0}
      %all-reduce.2 = (f32[], s32[]) all-reduce(f32[] %a, s32[] %b), channel_id=2, to_apply=%sum
      %all-reduce-start = f32[784,128]{1,0} all-reduce-start(f32[784,128]{1,0} %g), to_apply=%sum
      %all-reduce-done = f32[784,128]{1,0} all-reduce-done(f32[784,128]{1,0} %all-reduce-start)
      %fusion = f32[8,20]{1,0} fusion(f32[8,20]{1,0} %all-gather.1), kind=kLoop
  """)
  found = distributed.collectives(hlo)
  assert [(c.op, c.shapes, c.elements, c.bytes) for c in found] == [
    ("all-gather", (("f32", (8, 20)),), 160, 640),
    ("all-reduce", (("f32", ()), ("s32", ())), 2, 8),
    ("all-reduce", (("f32", (784, 128)),), 100_352, 401_408),
  ]


# --- eight CPU devices, in one subprocess -----------------------------------------

# argv[1]: JSON of the settings below (the trainer's overrides, the
# transformation's d and gradient), so the script imports only reference.
EIGHT_DEVICES_SCRIPT = """
import json, sys
import jax, jax.numpy as jnp, numpy as np, optax
from jax.sharding import Mesh, PartitionSpec as P
import random_bases as rb
from random_bases import distributed, train
import reference

settings = json.loads(sys.argv[1])
out = {}
assert len(jax.devices()) == 8

# The transformation under shard_map's default checks, every worker on the
# same batch. pcast makes each worker's gradient its own: at the replicated
# parameters JAX would all-reduce the gradient over the workers.
tx = rb.scale_by_random_bases(settings["d"], seed=5, axis_name="workers", generator="threefry")
g = {"w": jnp.asarray(settings["gradient"], jnp.float32)}
params = {"w": jnp.zeros_like(g["w"])}
mesh = Mesh(np.array(jax.devices()), ("workers",))
def update(params, state):
  local = jax.lax.pcast(params, "workers", to="varying")
  grad = jax.grad(lambda p: jnp.vdot(p["w"], g["w"]))(local)  # = g on every worker
  return tx.update(grad, state)[0]
mapped = jax.jit(jax.shard_map(update, mesh=mesh, in_specs=(P(), P()), out_specs=P()))
state = tx.init(params)
out["transform_update"] = np.asarray(mapped(params, state)["w"]).tolist()
def collectives(compiled):
  return [[c.op, c.elements] for c in distributed.collectives(compiled.as_text())]
out["transform_collectives"] = collectives(mapped.lower(params, state).compile())

# The trainer: 8 devices (shard_map) against 1 device (vmap), step by step;
# forward-mode RBD on 8 devices against reverse mode.
data = reference.sample_data()
runs = {
    "rbd": ("rbd", {}, ("devices", "vmap")),
    "sgd": ("sgd", {}, ("devices", "vmap")),
    "nes": ("nes", {"learning_rate.nes": 0.01}, ("devices", "vmap")),
    "forward": ("rbd", {"bases.coordinates": "forward"}, ("devices",)),
}
meshes = {"devices": None, "vmap": reference.one_device_mesh()}
trajectories = {}
for run, (method, overrides, mappings) in runs.items():
  config = reference.tiny_config(
      method, workers=8, **{**settings["trainer"], "bases.d": 12, **overrides})
  for name in mappings:
    trainer = train.Trainer(config, data, mesh=meshes[name])
    state, order = trainer.initial_state(), trainer.epoch_order(0)
    compiled = trainer.train_steps(0, 1).lower(
        state, trainer.train_images, trainer.train_labels, order).compile()
    if name == "devices":
      out[f"{run}_collectives"] = collectives(compiled)
    flat = []
    for _ in range(4):  # np.ravel waits for each step: XLA:CPU must not queue them
      state, _ = compiled(state, trainer.train_images, trainer.train_labels, order)
      flat.append(np.concatenate([np.ravel(x) for x in jax.tree.leaves(state["params"])]))
    trajectories[run, name] = np.stack(flat)
for run, reference_run in (("rbd", "vmap"), ("sgd", "vmap"), ("nes", "vmap"), ("forward", "rbd")):
  devices = trajectories[run, "devices"]
  other = trajectories[
      (run, "vmap") if reference_run == "vmap" else (reference_run, "devices")]
  out[f"{run}_max_difference"] = float(np.abs(devices - other).max())
  out[f"{run}_movement"] = float(np.abs(devices[-1] - devices[0]).max())
print("RESULTS" + json.dumps(out))
"""


@pytest.fixture(scope="module")
def eight_devices():
  settings = {
    "trainer": FOUR_STEPS,
    "d": D_PER_WORKER,
    "gradient": np.asarray(shared_gradient()["w"]).tolist(),
  }

  def compute():
    run = reference.run_in_fresh_process(EIGHT_DEVICES_SCRIPT, json.dumps(settings), devices=8)
    return json.loads(run.stdout.split("RESULTS", 1)[1])

  return reference.computed_once_per_session("test_workers_eight_devices", compute)


def test_shard_map_with_default_checks_equals_the_concatenated_basis(eight_devices):
  # Before: "scan body function carry input and carry output must have equal types".
  want = concatenated_update(shared_gradient(), 8)
  np.testing.assert_allclose(eight_devices["transform_update"], want, rtol=2e-5, atol=2e-6)
  # One all-gather of K x d coordinates; no all-reduce of the gradient.
  assert eight_devices["transform_collectives"] == [["all-gather", 8 * D_PER_WORKER]]


@pytest.mark.parametrize("method", ["rbd", "sgd", "nes"])
def test_eight_devices_and_one_give_the_same_trajectory(eight_devices, method):
  assert eight_devices[f"{method}_movement"] > 1e-4, "the trajectory must move"
  assert eight_devices[f"{method}_max_difference"] < 1e-5


def test_forward_mode_on_eight_devices_follows_reverse_mode(eight_devices):
  # Before: a pvary error from jvp at the replicated parameters.
  assert eight_devices["forward_movement"] > 1e-4
  assert eight_devices["forward_max_difference"] < 1e-5


FC_PARAMETERS = 101_770


def test_rbd_step_sends_k_times_d_floats_and_sgd_step_all_reduces_d(eight_devices):
  rbd = eight_devices["rbd_collectives"]
  largest = max(elements for _, elements in rbd)
  assert largest == 8 * 12, rbd  # K x d coordinates
  # Besides it, only the metrics' scalars (loss and accuracy).
  assert sorted(rbd) == [["all-gather", 96], ["all-reduce", 2]], rbd
  sgd = eight_devices["sgd_collectives"]
  assert any(op == "all-reduce" and elements >= FC_PARAMETERS for op, elements in sgd), sgd
