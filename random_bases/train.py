"""The trainer: any paper model, any method, driven by one config.

``train_and_evaluate(config, workdir)`` reads top to bottom: validate the
config, claim the workdir (its lock, a write check) and check it may take the
config, load the data once onto the device, restore the newest intact
checkpoint (or initialise), then for each epoch run it and write it, and
finish. An epoch is a Python loop dispatching one jitted,
donated step after another without waiting (the batch is gathered and
augmented on the device); the metrics come to the host once per
``train.log_every_steps`` steps. Evaluation runs the eval splits, resident on
the device, batch by batch through one jitted function and fetches the sums
once. Everything random is a pure function of ``config.seed`` and the step
held in the train state: the epoch's shuffle, each batch's augmentation and
each step's bases. So a run resumed from its last checkpoint ends with exactly
the parameters of an uninterrupted one.

What the workdir holds, and how a rerun resumes, refuses or extends a run, is
``random_bases/workdir.py``'s contract. A non-finite loss stops the run with
``TrainingDiverged``; the paper's early stopping (``train.early_stopping``) is
a normal stop.

**Workers** (``config.workers = K > 1``, Alg. 1 right of the paper): the step
runs once per worker over the axis ``distributed.WORKER_AXIS`` of a device
mesh, under ``jax.shard_map`` (one device per worker) or ``jax.vmap`` (all on
one device). Worker w takes the w-th of the step's K batches of
``train.batch_size`` images, augments it with its own key and differentiates
at its own (device-varying) copy of the parameters, so its gradient stays on
its device. RBD and FPD then exchange only coordinates: the update is the
paper's sum over workers of their projections, K x d floats all-gathered.
SGD and NES average the K gradients (a D-float all-reduce): SGD with K
workers is SGD on the step's K x batch_size images. Parameters, optimizer
state and metrics stay replicated; batch-norm statistics are averaged over
the workers. Only process 0 locks the workdir and writes metrics,
TensorBoard and the run's record; every process checks it can write there and
takes part in saving and restoring checkpoints.
"""

from __future__ import annotations

import math
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
import tensorboardX
from absl import logging
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

import random_bases as rb
from random_bases import config_lib, data, distributed, models
from random_bases import workdir as workdir_lib
from random_bases.data import preprocess

WORKERS = distributed.WORKER_AXIS

# Early stopping (PAPER.md): a diverged loss, or chance-level accuracy late.
DIVERGED_LOSS = 1000.0
CHANCE_ACCURACY, CHANCE_CHECK_EPOCH = 0.15, 4


class TrainingDiverged(RuntimeError):
  """The train loss of a log interval, or an evaluation loss, is not finite."""


def make_optimizer(
  method: str, *, config, phase: int, axis_name: str | None = None
) -> optax.GradientTransformation:
  """The optax transformation of one phase.

  ``config.train.optimizer``: ``sgd`` applies the gradient (NES: its
  estimate; RBD/FPD: the projected gradient) as it is; ``adam`` applies it
  by Adam, for RBD/FPD on the subspace coordinates (Li et al. 2018).
  ``config.train.weight_decay`` adds that multiple of the parameters to the
  gradient first (L2 in the loss). ``axis_name``: the workers' axis, which
  RBD and FPD exchange coordinates over.
  """
  lr = config.learning_rate[method]
  adam = config.train.optimizer == "adam"
  if method in ("sgd", "nes"):
    tx = optax.adam(lr) if adam else optax.sgd(lr)
  else:
    tx = _projected_optimizer(method, lr, config=config, phase=phase, axis_name=axis_name)
  if config.train.weight_decay:
    tx = optax.chain(optax.add_decayed_weights(config.train.weight_decay), tx)
  return tx


def _projected_optimizer(
  method: str, lr: float, *, config, phase: int, axis_name: str | None
) -> optax.GradientTransformation:
  """RBD or FPD with the config's bases (and Adam on the coordinates for train.optimizer=adam)."""
  bases = config.bases
  kwargs = dict(
    # Each phase draws its own stream of bases.
    seed=jax.random.fold_in(jax.random.key(config.seed), phase),
    distribution=bases.distribution,
    normalize=bases.normalize,
    compartments=config_lib.parse_compartments(bases.compartments),
    allocation=bases.allocation,
    generator=bases.generator,
    block_rows=bases.block_rows or None,
    structure=bases.structure,
    axis_name=axis_name,
    coordinate_transform=optax.scale_by_adam() if config.train.optimizer == "adam" else None,
  )
  if method == "rbd":
    return rb.rbd(lr, bases.d, **kwargs)
  return rb.fpd(lr, bases.d, **kwargs)


def example_losses(logits, labels) -> jax.Array:
  """Softmax cross-entropy of each example: the loss trained on and evaluated."""
  return optax.softmax_cross_entropy_with_integer_labels(logits, labels)


def update_correlation(updates, grads) -> dict[str, jax.Array]:
  """Cosine of the descent direction -updates with the gradient.

  Per parameter tensor (the reference code's statistic) and over the whole
  parameter vector, the latter from the per-tensor dot products and norms.
  """
  dots, update_sq, grad_sq = [], [], []
  for u, g in zip(jax.tree.leaves(updates), jax.tree.leaves(grads)):
    u, g = -u.ravel().astype(jnp.float32), g.ravel().astype(jnp.float32)
    dots.append(jnp.dot(u, g))
    update_sq.append(jnp.dot(u, u))
    grad_sq.append(jnp.dot(g, g))
  dots, update_sq, grad_sq = jnp.stack(dots), jnp.stack(update_sq), jnp.stack(grad_sq)
  per_tensor = dots / (jnp.sqrt(update_sq * grad_sq) + 1e-30)
  whole = jnp.sum(dots) / (jnp.sqrt(jnp.sum(update_sq) * jnp.sum(grad_sq)) + 1e-30)
  return {"per_tensor": per_tensor, "whole": whole}


class Trainer:
  """Holds the compiled functions of one run; see ``train_and_evaluate``.

  Args:
    config: the run's config.
    dataset: the data, in host memory.
    mesh: for ``config.workers > 1``, the devices the workers run on: a mesh
      whose ``distributed.WORKER_AXIS`` axis has one device per worker
      (``shard_map``) or a single device (``vmap``). Default:
      ``distributed.worker_mesh(config.workers)``.
  """

  def __init__(self, config, dataset: data.Dataset, *, mesh: Mesh | None = None):
    self.config = config
    self.dataset = dataset
    self.model = models.create_model(config.model, num_classes=dataset.num_classes)
    self.phases = config_lib.parse_phases(config)
    self.workers = config.workers
    self.mesh = distributed.resolve_mesh(config.workers, mesh)
    self.one_device_per_worker = self.mesh is not None and self.mesh.shape[WORKERS] > 1
    self.train_images = self.place(dataset.train_images)
    self.train_labels = self.place(dataset.train_labels)
    self.batch_size = config.train.batch_size
    self.images_per_step = self.batch_size * self.workers
    self.steps_per_epoch = config_lib.steps_per_epoch(config, len(dataset.train_labels))
    root = jax.random.key(config.seed)
    self.shuffle_key = jax.random.fold_in(root, 1)
    self.augment_key = jax.random.fold_in(root, 2)
    self.nes_key = jax.random.fold_in(root, 3)
    self.init_key = jax.random.fold_in(root, 4)
    self._train_steps = {}
    self.eval_splits = self._device_eval_splits()
    self._eval_step = jax.jit(self._eval_batch)

  def _one_at_a_time(self, outputs):
    """``outputs`` of a call, once computed if the workers are on CPU devices.

    XLA:CPU runs every device's program on one shared pool of threads: with
    calls queued behind a call's collectives, the later calls can hold the
    threads it waits for, a deadlock (100 queued steps of 8 workers on 2
    cores did). There, calls run one at a time; GPUs and TPUs order them per
    device.
    """
    if self.one_device_per_worker and self.mesh.devices.flat[0].platform == "cpu":
      jax.block_until_ready(outputs)
    return outputs

  def place(self, tree):
    """On the device, or replicated over the workers' mesh."""
    if self.mesh is None:
      return jax.tree.map(jnp.asarray, tree)
    return jax.device_put(tree, NamedSharding(self.mesh, P()))

  # --- state --------------------------------------------------------------

  def phase_at(self, epoch: int) -> int:
    """Index of the phase that trains epoch ``epoch`` (0-based)."""
    end = 0
    for i, (_, count) in enumerate(self.phases):
      end += count
      if epoch < end:
        return i
    return len(self.phases) - 1

  def optimizer(self, phase: int):
    return make_optimizer(
      self.phases[phase][0],
      config=self.config,
      phase=phase,
      axis_name=WORKERS if self.workers > 1 else None,
    )

  def initial_state(self) -> dict[str, Any]:
    variables = models.init_variables(
      self.model, key=self.init_key, input_shape=self.dataset.image_shape
    )
    params = variables["params"]
    return self.place(
      {
        "step": jnp.zeros([], jnp.int32),
        "epochs_done": jnp.zeros([], jnp.int32),
        "params": params,
        "batch_stats": variables.get("batch_stats", {}),
        "opt_state": self.optimizer(0).init(params),
      }
    )

  def checkpoint_target(self, epochs_done: int) -> dict[str, Any]:
    """The structure of the state saved after ``epochs_done`` epochs (its phase's)."""
    state = self.initial_state()
    phase = self.phase_at(epochs_done - 1)
    return dict(state, opt_state=self.place(self.optimizer(phase).init(state["params"])))

  def enter_epoch(self, state, epoch: int) -> dict[str, Any]:
    """The state to train ``epoch`` from: a new phase starts a new optimizer state."""
    phase = self.phase_at(epoch)
    if epoch == 0 or self.phase_at(epoch - 1) == phase:
      return state
    logging.info("Epoch %d: switching to %s", epoch + 1, self.phases[phase][0])
    return dict(state, opt_state=self.place(self.optimizer(phase).init(state["params"])))

  # --- the step -----------------------------------------------------------

  def _forward(self, params, batch_stats, images, train: bool):
    variables = {"params": params}
    if batch_stats:
      variables["batch_stats"] = batch_stats
      if train:
        logits, new = self.model.apply(variables, images, train=True, mutable=["batch_stats"])
        return logits, new["batch_stats"]
    return self.model.apply(variables, images, train=train), batch_stats

  def _mean_over_workers(self, tree):
    """The mean over the workers (one worker: ``tree`` itself)."""
    return jax.lax.pmean(tree, WORKERS) if self.workers > 1 else tree

  def _train_step(self, phase: int, state, images, labels, worker=None):
    """One step of one worker (``worker``: its index, None for a single worker)."""
    method = self.phases[phase][0]
    tx = self.optimizer(phase)
    params, batch_stats = state["params"], state["batch_stats"]
    # Under shard_map, a worker differentiating at the replicated parameters
    # would get the gradient summed over the workers (JAX inserts a D-float
    # all-reduce); at its device-varying copy the gradient stays local.
    local_params = params
    if self.one_device_per_worker:
      local_params = jax.lax.pcast(params, WORKERS, to="varying")

    def loss_fn(p):
      logits, new_stats = self._forward(p, batch_stats, images, train=True)
      return example_losses(logits, labels).mean(), (logits, new_stats)

    want_correlation = self.config.metrics.gradient_correlation
    forward_mode = method in ("rbd", "fpd") and self.config.bases.coordinates == "forward"
    # NES and forward mode need no backward pass, unless the metric does.
    if (method == "nes" or forward_mode) and not want_correlation:
      loss, (logits, new_stats) = loss_fn(params)
      grads = batch_grads = None
    else:
      (loss, (logits, new_stats)), grads = jax.value_and_grad(loss_fn, has_aux=True)(local_params)
      # SGD's update and the correlation metric's reference: the gradient of
      # the step's whole batch, the mean of the workers' gradients.
      if method == "sgd" or want_correlation:
        batch_grads = self._mean_over_workers(grads)

    if method == "nes":
      nes_key = jax.random.fold_in(self.nes_key, state["step"])
      if worker is not None:
        nes_key = jax.random.fold_in(nes_key, worker)
      estimate = rb.nes_gradient(
        lambda p: loss_fn(p)[0],
        params,
        key=nes_key,
        d=self.config.bases.d,
        sigma=self.config.nes.sigma,
        antithetic=self.config.nes.antithetic,
        fitness=self.config.nes.fitness,
        generator=self.config.bases.generator,
      )
      updates, opt_state = tx.update(self._mean_over_workers(estimate), state["opt_state"], params)
    elif forward_mode:  # directional derivatives at this worker's copy, as the gradient
      updates, opt_state = tx.update(
        None, state["opt_state"], local_params, value_fn=lambda p: loss_fn(p)[0]
      )
    elif method == "sgd":
      updates, opt_state = tx.update(batch_grads, state["opt_state"], params)
    else:  # each worker projects its own gradient
      updates, opt_state = tx.update(grads, state["opt_state"], params)

    metrics = {"loss": loss, "accuracy": jnp.mean(jnp.argmax(logits, -1) == labels)}
    metrics = self._mean_over_workers(metrics)
    if want_correlation:
      metrics["correlation"] = update_correlation(updates, batch_grads)
    new_state = dict(
      state,
      step=state["step"] + 1,
      params=optax.apply_updates(params, updates),
      batch_stats=self._mean_over_workers(new_stats),
      opt_state=opt_state,
    )
    return new_state, metrics

  def train_steps(self, phase: int, num_steps: int):
    """``num_steps`` steps of ``phase`` as one jitted call.

    ``(state, images, labels, order) -> (state, metrics)``, the metrics with a
    leading axis of ``num_steps``. Each step picks its batch on the device
    from the epoch's shuffle ``order`` at the position ``state["step"]``
    implies, so a call needs nothing from the host and the loop dispatches
    it asynchronously; the state is donated. The steps are unrolled, not a
    ``lax.scan``: on XLA:CPU a convolution inside a loop body runs several
    times slower than the same convolution in straight-line code
    (jax-ml/jax#12868). With workers the steps run once per worker, mapped
    over the mesh (``shard_map``) or on its one device (``vmap``); every
    argument and result is replicated.
    """
    cache_key = (phase, num_steps)
    if cache_key in self._train_steps:
      return self._train_steps[cache_key]
    batch = self.batch_size
    steps_per_epoch = self.steps_per_epoch
    augment = self.config.data.augment
    augment_parts = config_lib.augment_parts(self.config)
    name = self.dataset.name
    workers = self.workers

    def one_step(state, train_images, train_labels, order):
      # Every epoch has steps_per_epoch steps, so the step counter gives the
      # position in the epoch; a resumed run picks up the same batches.
      position = state["step"] % steps_per_epoch
      augment_key = jax.random.fold_in(self.augment_key, state["step"])
      if workers > 1:
        # Worker w takes the w-th batch of the step's workers x batch images.
        worker = jax.lax.axis_index(WORKERS)
        start = (position * workers + worker) * batch
        augment_key = jax.random.fold_in(augment_key, worker)
      else:
        worker, start = None, position * batch
      index = jax.lax.dynamic_slice_in_dim(order, start, batch)
      images = jnp.take(train_images, index, axis=0)
      if augment:
        images = preprocess.preprocess_train_batch(
          augment_key, images, dataset=name, parts=augment_parts
        )
      else:
        images = preprocess.preprocess_eval_batch(images, dataset=name)
      return self._train_step(phase, state, images, jnp.take(train_labels, index), worker)

    def steps(state, train_images, train_labels, order):
      per_step = []
      for _ in range(num_steps):
        state, metrics = one_step(state, train_images, train_labels, order)
        per_step.append(metrics)
      return state, jax.tree.map(lambda *xs: jnp.stack(xs), *per_step)

    if self.one_device_per_worker:
      replicated = (P(),) * 4
      steps = jax.shard_map(steps, mesh=self.mesh, in_specs=replicated, out_specs=(P(), P()))
    elif workers > 1:
      steps = jax.vmap(steps, in_axes=None, out_axes=None, axis_name=WORKERS, axis_size=workers)
    self._train_steps[cache_key] = jax.jit(steps, donate_argnums=0)
    return self._train_steps[cache_key]

  def run_steps(self, phase: int, state, order: jax.Array, num_steps: int):
    """Runs ``num_steps`` steps; returns the state and the steps' metrics.

    Calls of ``train.steps_per_dispatch`` steps are dispatched without
    waiting (one at a time for workers on CPU devices); the metrics come to
    the host in one transfer at the end, as numpy arrays with a leading axis
    of ``num_steps``.
    """
    per_call = self.config.train.steps_per_dispatch
    chunks = []
    done = 0
    while done < num_steps:
      count = min(per_call, num_steps - done)
      state, metrics = self.train_steps(phase, count)(
        state, self.train_images, self.train_labels, order
      )
      chunks.append(self._one_at_a_time(metrics))
      done += count
    chunks = jax.device_get(chunks)
    return state, jax.tree.map(lambda *xs: np.concatenate(xs), *chunks)

  def epoch_order(self, epoch: int) -> jax.Array:
    """The epoch's shuffle, a pure function of (seed, epoch)."""
    return self.place(
      jax.random.permutation(
        jax.random.fold_in(self.shuffle_key, epoch), len(self.dataset.train_labels)
      )
    )

  # --- evaluation ---------------------------------------------------------

  def _device_eval_splits(self) -> dict[str, tuple[jax.Array, jax.Array, jax.Array]]:
    """Each eval split on the device, padded to whole batches, with its mask."""
    size = self.config.train.eval_batch_size
    limit = self.config.train.eval_examples
    splits = {}
    for split, (images, labels) in self.dataset.eval_splits.items():
      if limit != -1:
        images, labels = images[:limit], labels[:limit]
      # One compiled shape: pad the last batch, mask the padding out.
      pad = -len(labels) % size
      mask = np.concatenate([np.ones(len(labels), np.float32), np.zeros(pad, np.float32)])
      images = np.concatenate([images, np.zeros((pad,) + images.shape[1:], images.dtype)])
      labels = np.concatenate([labels, np.zeros(pad, labels.dtype)])
      splits[split] = self.place((images, labels, mask))
    return splits

  def _eval_batch(self, params, batch_stats, images, labels, mask, start):
    """Summed loss and correct predictions of the batch at ``start``."""
    size = self.config.train.eval_batch_size
    images, labels, mask = (
      jax.lax.dynamic_slice_in_dim(x, start, size) for x in (images, labels, mask)
    )
    if self.one_device_per_worker:  # each device evaluates its share of the batch
      images = jax.lax.with_sharding_constraint(images, NamedSharding(self.mesh, P(WORKERS)))
    images = preprocess.preprocess_eval_batch(images, dataset=self.dataset.name)
    logits, _ = self._forward(params, batch_stats, images, train=False)
    correct = jnp.argmax(logits, -1) == labels
    return jnp.sum(example_losses(logits, labels) * mask), jnp.sum(correct * mask)

  def evaluate(self, state) -> dict[str, float]:
    """Loss and accuracy on every eval split, fetched in one transfer."""
    size = self.config.train.eval_batch_size
    sums = {}
    for split, (images, labels, mask) in self.eval_splits.items():
      sums[split] = [
        self._one_at_a_time(
          self._eval_step(state["params"], state["batch_stats"], images, labels, mask, start)
        )
        for start in range(0, len(labels), size)
      ]
    sums = jax.device_get(sums)
    results = {}
    for split, batches in sums.items():
      count = float(np.sum(self.eval_splits[split][2]))
      results[f"{split}_loss"] = (
        float(np.sum([loss for loss, _ in batches], dtype=np.float64)) / count
      )
      results[f"{split}_accuracy"] = (
        float(np.sum([c for _, c in batches], dtype=np.float64)) / count
      )
    return results


def _summarise(chunks: list[dict]) -> dict[str, float]:
  """Means over steps of the chunks' per-step metrics."""
  out = {
    "train_loss": float(np.mean(np.concatenate([np.asarray(c["loss"]) for c in chunks]))),
    "train_accuracy": float(np.mean(np.concatenate([np.asarray(c["accuracy"]) for c in chunks]))),
  }
  if "correlation" in chunks[0]:
    per_tensor = np.concatenate(
      [np.asarray(c["correlation"]["per_tensor"]).ravel() for c in chunks]
    )
    whole = np.concatenate([np.asarray(c["correlation"]["whole"]) for c in chunks])
    out.update(
      correlation_mean=float(per_tensor.mean()),
      correlation_std=float(per_tensor.std()),
      correlation_min=float(per_tensor.min()),
      correlation_max=float(per_tensor.max()),
      correlation_whole=float(whole.mean()),
    )
  return out


def _format_seconds(seconds: float) -> str:
  seconds = int(seconds)
  h, rem = divmod(seconds, 3600)
  return f"{h}h{rem // 60:02d}m" if h else f"{rem // 60}m{rem % 60:02d}s"


class _Progress:
  """Steps run so far in this process, for the progress lines' ETA."""

  def __init__(self, steps_to_run: int):
    self.start = time.perf_counter()
    self.steps_run = 0
    self.steps_to_run = steps_to_run

  def advance(self, steps: int) -> str:
    """Counts ``steps`` more; returns the time left, formatted."""
    self.steps_run += steps
    rate = self.steps_run / (time.perf_counter() - self.start)
    return _format_seconds((self.steps_to_run - self.steps_run) / rate)


def should_stop(config, epochs_done: int, evaluation: dict[str, Any]) -> str | None:
  """The paper's early-stopping rule on one epoch's metrics: why to stop, or None."""
  if not config.train.early_stopping:
    return None
  split = next(s for s in ("validation", "heldout", "test") if f"{s}_loss" in evaluation)
  loss, accuracy = evaluation[f"{split}_loss"], evaluation[f"{split}_accuracy"]
  if loss > DIVERGED_LOSS:
    return f"{split} loss {loss} > {DIVERGED_LOSS}"
  if epochs_done >= CHANCE_CHECK_EPOCH and accuracy <= CHANCE_ACCURACY:
    return f"{split} accuracy {accuracy:.3f} <= {CHANCE_ACCURACY} after epoch {epochs_done}"
  return None


# --- the steps of train_and_evaluate, in order --------------------------------


def prepare_workdir(config, workdir: str) -> workdir_lib.Workdir:
  """The run's workdir, claimed, once it is clear ``config`` may continue what it holds.

  Comes before any data is loaded or anything compiled: process 0 (the one
  that writes the run's files) locks the workdir, every process checks it
  can write there (each writes its part of a checkpoint), then the config is
  compared with the run held there. Across processes, if one cannot go on
  none does. The caller releases the workdir (``run.release()``) at the end.

  Raises:
    workdir_lib.WorkdirLocked: another run is writing the workdir.
    workdir_lib.WorkdirNotWritable: the workdir cannot be created or written.
    workdir_lib.WorkdirMismatch: it holds a run of another config.
    workdir_lib.WorkdirError: another process of this run hit one of these.
  """
  run = workdir_lib.Workdir(workdir)
  failure = None
  try:
    run.claim(lock=distributed.is_primary())
    run.check_config(config)
  except Exception as error:  # pylint: disable=broad-except  (re-raised below, in step)
    failure = error
  try:
    _stop_together(failure, workdir)
  except BaseException:
    run.release()
    raise
  return run


def _stop_together(failure: Exception | None, workdir: str) -> None:
  """Raises ``failure``; across processes, every process raises if any has a failure.

  A process stopping alone would leave the others waiting for it in the
  run's first collective.
  """
  if jax.process_count() > 1:
    failed = np.asarray(multihost_utils.process_allgather(np.int32(failure is not None)))
    if failure is None and failed.any():
      raise workdir_lib.WorkdirError(
        f"workdir {workdir}: process {int(np.argmax(failed))} of this run cannot use it "
        "(its output says why), so this process stops too."
      )
  if failure is not None:
    raise failure


def load_data(config) -> data.Dataset:
  dataset = data.load_dataset(
    config.data.dataset,
    source=config.data.source,
    data_dir=config.data.dir or None,
    holdout=config.data.holdout,
    holdout_size=config.data.holdout_size,
    holdout_seed=config.data.holdout_seed,
    cache_dir=config.data.cache_dir or None,
  )
  logging.info("Data: %s", dataset.description)
  return dataset


def restore_or_init(
  config, trainer: Trainer, run: workdir_lib.Workdir
) -> tuple[dict[str, Any], workdir_lib.Checkpoints | None, str | None]:
  """Records the accepted run and returns the state to continue from.

  The first step that writes: config.json and data.json (after checking the
  data is the run's), then the newest intact checkpoint's state, or a fresh
  one. The metrics are cut back to that checkpoint's epoch; a run that had
  stopped early there stays stopped. Across processes, process 0 writes and
  every process restores.

  Returns:
    ``(state, checkpoints or None, early-stopping reason or None)``.
  """
  identity = workdir_lib.data_identity(trainer.dataset)
  run.check_data(identity)
  primary = distributed.is_primary()
  if primary:
    run.write_record(config, identity)
  state, checkpoints, epochs_done = trainer.initial_state(), None, 0
  if config.train.checkpoint:
    checkpoints = run.checkpoints(primary=primary)
    epochs_done, restored = checkpoints.restore(trainer.checkpoint_target)
    if restored is not None:
      state = restored
      logging.info(
        "Resumed from the checkpoint after epoch %d (step %d)", epochs_done, int(state["step"])
      )
  if primary:
    run.trim_metrics(epochs_done)
  distributed.sync("metrics trimmed")
  rows = run.read_metrics()
  stopped = None
  if rows and rows[-1]["epoch"] == epochs_done:
    stopped = should_stop(config, epochs_done, rows[-1])
  if stopped:
    logging.warning("The run stopped early after epoch %d: %s", epochs_done, stopped)
  return state, checkpoints, stopped


def run_epoch(
  trainer: Trainer,
  state,
  epoch: int,
  writer: tensorboardX.SummaryWriter | None,
  progress: _Progress,
) -> tuple[dict[str, Any], dict[str, Any]]:
  """Trains and evaluates epoch ``epoch`` (0-based); returns the state and its record.

  Raises:
    TrainingDiverged: a log interval's train loss or an evaluation loss is not
      finite (nothing of the epoch is written).
  """
  config = trainer.config
  state = trainer.enter_epoch(state, epoch)
  phase = trainer.phase_at(epoch)
  method = trainer.phases[phase][0]
  log_every = config.train.log_every_steps
  order = trainer.epoch_order(epoch)
  epoch_start, chunks = time.perf_counter(), []
  for first in range(0, trainer.steps_per_epoch, log_every):
    count = min(log_every, trainer.steps_per_epoch - first)
    tic = time.perf_counter()
    state, metrics = trainer.run_steps(phase, state, order, count)
    elapsed = time.perf_counter() - tic
    chunks.append(metrics)
    interval = _summarise([metrics])
    if not math.isfinite(interval["train_loss"]):
      raise TrainingDiverged(
        f"epoch {epoch + 1}, steps {first + 1}-{first + count}: the train loss is "
        f"{interval['train_loss']} ({method} at learning_rate.{method}="
        f"{config.learning_rate[method]}); nothing of this epoch was written"
      )
    step = int(state["step"])
    if writer is not None:  # None in processes other than 0
      for k, v in interval.items():
        writer.add_scalar(f"interval/{k}", v, step)
    correlation = (
      f"  corr {interval['correlation_whole']:.4f}" if "correlation_whole" in interval else ""
    )
    logging.info(
      "epoch %d/%d  step %d/%d  %s  loss %.4f  acc %.4f%s  %.0f img/s  ETA %s",
      epoch + 1,
      config.train.epochs,
      first + count,
      trainer.steps_per_epoch,
      method,
      interval["train_loss"],
      interval["train_accuracy"],
      correlation,
      count * trainer.images_per_step / elapsed,
      progress.advance(count),
    )
  train_seconds = time.perf_counter() - epoch_start
  state["epochs_done"] = trainer.place(jnp.asarray(epoch + 1, jnp.int32))
  record = {"epoch": epoch + 1, "step": int(state["step"]), "method": method}
  record.update(_summarise(chunks))
  eval_start = time.perf_counter()
  evaluation = trainer.evaluate(state)
  for key, value in evaluation.items():
    if key.endswith("_loss") and not math.isfinite(value):
      raise TrainingDiverged(
        f"epoch {epoch + 1}: the {key.replace('_', ' ')} is {value}; "
        "nothing of this epoch was written"
      )
  record.update(evaluation)
  record["eval_seconds"] = time.perf_counter() - eval_start
  record["train_seconds"] = train_seconds
  record["images_per_second"] = trainer.steps_per_epoch * trainer.images_per_step / train_seconds
  logging.info(
    "epoch %d done: %s",
    epoch + 1,
    "  ".join(f"{k} {v:.4f}" for k, v in record.items() if isinstance(v, float)),
  )
  return state, record


def write_epoch(
  run: workdir_lib.Workdir,
  writer: tensorboardX.SummaryWriter | None,
  checkpoints: workdir_lib.Checkpoints | None,
  state,
  record,
) -> None:
  """Metrics line, TensorBoard scalars, then the checkpoint, committed before returning.

  In this order every committed checkpoint has its metrics line; lines and
  events past the checkpoint a rerun restores are dropped then (workdir.py).
  Across processes only process 0 writes metrics (its ``writer``; the others
  pass None), and every process takes part in the checkpoint.

  Raises:
    workdir_lib.WorkdirNotWritable: a write failed (the run stops before the
      next epoch; a rerun resumes from the last complete checkpoint).
  """
  if writer is not None:
    run.append_metrics(record)
    with workdir_lib.writing(run.tensorboard_dir):
      for k, v in record.items():
        if isinstance(v, float):
          writer.add_scalar(k, v, record["step"])
      writer.flush()
  if checkpoints is not None:
    checkpoints.save(record["epoch"], state)


def _close_after_failure(checkpoints, writer) -> None:
  """Closes what a failed run opened without hiding its error behind another."""
  for thing in (checkpoints, writer):
    if thing is None:
      continue
    try:
      thing.close()
    except Exception as error:  # pylint: disable=broad-except
      logging.debug("Closing %s after a failure: %s", type(thing).__name__, error)


def finish(run: workdir_lib.Workdir, config) -> None:
  """Says where the results are and what the final accuracies are."""
  outputs = ["metrics.jsonl", "tensorboard/"] + (
    ["checkpoints/"] if config.train.checkpoint else []
  )
  logging.info("Results in %s: %s", run.path, ", ".join(outputs))
  rows = run.read_metrics()
  if rows:
    splits = sorted(
      (
        k[: -len("_accuracy")]
        for k in rows[-1]
        if k.endswith("_accuracy") and k != "train_accuracy"
      ),
      key=lambda split: split == "test",
    )  # the held-out split first
    accuracies = [f"{split} accuracy {rows[-1][f'{split}_accuracy']:.4f}" for split in splits]
    logging.info("After epoch %d: %s", rows[-1]["epoch"], ", ".join(accuracies))


def train_and_evaluate(config, workdir: str, *, mesh: Mesh | None = None) -> dict[str, Any]:
  """Trains and evaluates as ``config`` says, writing everything to ``workdir``.

  Args:
    config: the run's config (``config_lib.FIELDS``).
    workdir: where the run's files go (``random_bases/workdir.py``).
    mesh: for ``config.workers > 1``, the workers' devices (see ``Trainer``);
      default: one device per worker, the first ``config.workers`` of
      ``jax.devices()`` (every process's, after ``distributed.initialize``).

  Returns:
    ``{"state": final train state, "history": [metrics of the epochs run now],
    "stopped": early-stopping reason or None}``.

  Raises:
    ValueError: an invalid config, too few devices for the workers or a mesh
      that cannot run them, or missing data, before anything is written.
    workdir_lib.WorkdirMismatch: the workdir holds a run of another config or
      other data (a ValueError), before anything but its lock file is written.
    workdir_lib.WorkdirLocked: another run is writing the workdir, before
      anything is loaded or written.
    workdir_lib.WorkdirNotWritable: the workdir cannot be written (checked
      before anything is loaded), or a write of the run failed: it stops there.
    workdir_lib.NoReadableCheckpoint: checkpoints exist but none reads back intact.
    TrainingDiverged: a loss became NaN or infinite.
  """
  config_lib.validate(config)
  mesh = distributed.resolve_mesh(config.workers, mesh)
  run = prepare_workdir(config, workdir)
  try:
    return _train_and_evaluate(config, run, mesh)
  finally:
    run.release()


def _train_and_evaluate(config, run: workdir_lib.Workdir, mesh: Mesh | None) -> dict[str, Any]:
  """``train_and_evaluate`` in a claimed workdir."""
  trainer = Trainer(config, load_data(config), mesh=mesh)
  state, checkpoints, stopped = restore_or_init(config, trainer, run)
  logging.info(
    "Model %s: %d trainable parameters; phases %s; %d steps per epoch; %d worker(s)",
    config.model,
    models.count_params(state["params"]),
    trainer.phases,
    trainer.steps_per_epoch,
    config.workers,
  )
  first_epoch = int(state["epochs_done"])
  writer = None  # only process 0 writes metrics and TensorBoard
  if distributed.is_primary():
    writer = run.summary_writer(restored_step=int(state["step"]))
  progress = _Progress((config.train.epochs - first_epoch) * trainer.steps_per_epoch)
  history = []
  try:
    for epoch in range(first_epoch, config.train.epochs):
      if stopped:
        break
      state, record = run_epoch(trainer, state, epoch, writer, progress)
      write_epoch(run, writer, checkpoints, state, record)
      history.append(record)
      stopped = should_stop(config, epoch + 1, record)
      if stopped:
        logging.warning("Early stop after epoch %d: %s", epoch + 1, stopped)
  except BaseException:
    _close_after_failure(checkpoints, writer)
    raise
  if checkpoints is not None:
    checkpoints.close()
  if writer is not None:
    with workdir_lib.writing(run.tensorboard_dir):
      writer.close()
  if distributed.is_primary():
    finish(run, config)
  return {"state": state, "history": history, "stopped": stopped}
