"""The trainer: any paper model, any method, driven by one config.

``train_and_evaluate(config, workdir)`` validates the config, loads the data
once onto the device, and trains epoch by epoch, each epoch a few jitted
chunks of ``train.log_every_steps`` steps (``lax.scan``). Everything random is
a pure function of ``config.seed`` and the step held in the train state: the
epoch's shuffle, each batch's augmentation and each step's bases. So a run
resumed from its last checkpoint ends with exactly the parameters of an
uninterrupted one.

Written to ``workdir``: ``config.json``, ``metrics.jsonl`` (one line per
epoch), TensorBoard summaries in ``tensorboard/`` and orbax checkpoints in
``checkpoints/`` (one per epoch, the last two kept).
"""

from __future__ import annotations

import json
import math
import os
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp
import tensorboardX
from absl import logging

import random_bases as rb
from random_bases import config_lib, input_pipeline, models

# Early stopping (PAPER.md): a diverged loss, or chance-level accuracy late.
DIVERGED_LOSS = 1000.0
CHANCE_ACCURACY, CHANCE_CHECK_EPOCH = 0.15, 4


def make_optimizer(method: str, *, config, phase: int) -> optax.GradientTransformation:
  """The optax transformation of one phase. NES's estimate is applied by SGD."""
  lr = config.learning_rate[method]
  if method in ("sgd", "nes"):
    return optax.sgd(lr)
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
  )
  if method == "rbd":
    return rb.rbd(lr, bases.d, **kwargs)
  return rb.fpd(lr, bases.d, **kwargs)


def cross_entropy(logits, labels):
  return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()


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
  """Holds the compiled functions of one run; see ``train_and_evaluate``."""

  def __init__(self, config, dataset: input_pipeline.Dataset):
    self.config = config
    self.dataset = dataset
    self.model = models.create_model(config.model, num_classes=dataset.num_classes)
    self.phases = config_lib.parse_phases(config)
    self.train_images = jnp.asarray(dataset.train_images)
    self.train_labels = jnp.asarray(dataset.train_labels)
    num_train = len(dataset.train_labels)
    self.batch_size = config.train.batch_size
    if num_train < self.batch_size:
      raise ValueError(f"train.batch_size={self.batch_size} exceeds the "
                       f"{num_train} training images")
    full_epoch = num_train // self.batch_size  # the last partial batch is dropped
    self.steps_per_epoch = (full_epoch if config.train.steps_per_epoch == -1
                            else min(full_epoch, config.train.steps_per_epoch))
    root = jax.random.key(config.seed)
    self.shuffle_key = jax.random.fold_in(root, 1)
    self.augment_key = jax.random.fold_in(root, 2)
    self.nes_key = jax.random.fold_in(root, 3)
    self.init_key = jax.random.fold_in(root, 4)
    self._chunks = {}
    self._eval_step = jax.jit(self._eval_batch)

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
    return make_optimizer(self.phases[phase][0], config=self.config, phase=phase)

  def initial_state(self) -> dict[str, Any]:
    variables = models.init_variables(self.model, key=self.init_key,
                                      input_shape=self.dataset.image_shape)
    params = variables["params"]
    return {
        "step": jnp.zeros([], jnp.int32),
        "epochs_done": jnp.zeros([], jnp.int32),
        "params": params,
        "batch_stats": variables.get("batch_stats", {}),
        "opt_state": self.optimizer(0).init(params),
    }

  # --- the step -----------------------------------------------------------

  def _forward(self, params, batch_stats, images, train: bool):
    variables = {"params": params}
    if batch_stats:
      variables["batch_stats"] = batch_stats
      if train:
        logits, new = self.model.apply(variables, images, train=True,
                                       mutable=["batch_stats"])
        return logits, new["batch_stats"]
    return self.model.apply(variables, images, train=train), batch_stats

  def _train_step(self, phase: int, state, images, labels):
    method = self.phases[phase][0]
    tx = self.optimizer(phase)
    params, batch_stats = state["params"], state["batch_stats"]

    def loss_fn(p):
      logits, new_stats = self._forward(p, batch_stats, images, train=True)
      return cross_entropy(logits, labels), (logits, new_stats)

    want_correlation = self.config.metrics.gradient_correlation
    forward_mode = (method in ("rbd", "fpd") and
                    self.config.bases.coordinates == "forward")
    # NES and forward mode need no backward pass, unless the metric does.
    if (method == "nes" or forward_mode) and not want_correlation:
      loss, (logits, new_stats) = loss_fn(params)
      grads = None
    else:
      (loss, (logits, new_stats)), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)

    if method == "nes":
      estimate = rb.nes_gradient(
          lambda p: loss_fn(p)[0], params,
          key=jax.random.fold_in(self.nes_key, state["step"]), d=self.config.bases.d,
          sigma=self.config.nes.sigma, antithetic=self.config.nes.antithetic,
          fitness=self.config.nes.fitness, generator=self.config.bases.generator)
      updates, opt_state = tx.update(estimate, state["opt_state"], params)
    elif forward_mode:
      updates, opt_state = tx.update(None, state["opt_state"], params,
                                     value_fn=lambda p: loss_fn(p)[0])
    else:
      updates, opt_state = tx.update(grads, state["opt_state"], params)

    metrics = {"loss": loss,
               "accuracy": jnp.mean(jnp.argmax(logits, -1) == labels)}
    if want_correlation:
      metrics["correlation"] = update_correlation(updates, grads)
    new_state = dict(state, step=state["step"] + 1,
                     params=optax.apply_updates(params, updates),
                     batch_stats=new_stats, opt_state=opt_state)
    return new_state, metrics

  def _chunk(self, phase: int, num_steps: int):
    """A jitted run of ``num_steps`` steps starting at ``first`` in the epoch."""
    key = (phase, num_steps)
    if key in self._chunks:
      return self._chunks[key]
    batch = self.batch_size
    augment = self.config.data.augment
    name = self.dataset.name

    def run(state, order, first):
      def body(state, j):
        index = jax.lax.dynamic_slice_in_dim(order, (first + j) * batch, batch)
        images = jnp.take(self.train_images, index, axis=0)
        if augment:
          images = input_pipeline.preprocess_train_batch(
              jax.random.fold_in(self.augment_key, state["step"]), images, dataset=name)
        else:
          images = input_pipeline.preprocess_eval_batch(images, dataset=name)
        return self._train_step(phase, state, images, jnp.take(self.train_labels, index))
      return jax.lax.scan(body, state, jnp.arange(num_steps))

    self._chunks[key] = jax.jit(run)
    return self._chunks[key]

  def epoch_order(self, epoch: int) -> jax.Array:
    """The epoch's shuffle, a pure function of (seed, epoch)."""
    return jax.random.permutation(jax.random.fold_in(self.shuffle_key, epoch),
                                  len(self.dataset.train_labels))

  # --- evaluation ---------------------------------------------------------

  def _eval_batch(self, params, batch_stats, images, labels, mask):
    images = input_pipeline.preprocess_eval_batch(images, dataset=self.dataset.name)
    logits, _ = self._forward(params, batch_stats, images, train=False)
    losses = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
    correct = jnp.argmax(logits, -1) == labels
    return jnp.sum(losses * mask), jnp.sum(correct * mask)

  def evaluate(self, state) -> dict[str, float]:
    results = {}
    size = self.config.train.eval_batch_size
    for split, (images, labels) in self.dataset.eval_splits.items():
      if self.config.train.eval_examples != -1:
        images, labels = images[:self.config.train.eval_examples], labels[:self.config.train.eval_examples]
      total_loss, total_correct = 0.0, 0.0
      for start in range(0, len(labels), size):
        x, y = images[start:start + size], labels[start:start + size]
        pad = size - len(y)  # one compiled shape: pad the last batch, mask it out
        mask = np.concatenate([np.ones(len(y), np.float32), np.zeros(pad, np.float32)])
        x = np.concatenate([x, np.zeros((pad,) + x.shape[1:], x.dtype)])
        y = np.concatenate([y, np.zeros(pad, y.dtype)])
        loss, correct = self._eval_step(state["params"], state["batch_stats"], x, y, mask)
        total_loss += float(loss)
        total_correct += float(correct)
      results[f"{split}_loss"] = total_loss / len(labels)
      results[f"{split}_accuracy"] = total_correct / len(labels)
    return results


def _summarise(chunks: list[dict]) -> dict[str, float]:
  """Means over steps of the chunks' per-step metrics."""
  out = {
      "train_loss": float(np.mean(np.concatenate([np.asarray(c["loss"]) for c in chunks]))),
      "train_accuracy": float(np.mean(np.concatenate([np.asarray(c["accuracy"]) for c in chunks]))),
  }
  if "correlation" in chunks[0]:
    per_tensor = np.concatenate([np.asarray(c["correlation"]["per_tensor"]).ravel() for c in chunks])
    whole = np.concatenate([np.asarray(c["correlation"]["whole"]) for c in chunks])
    out.update(correlation_mean=float(per_tensor.mean()),
               correlation_std=float(per_tensor.std()),
               correlation_min=float(per_tensor.min()),
               correlation_max=float(per_tensor.max()),
               correlation_whole=float(whole.mean()))
  return out


def _format_seconds(seconds: float) -> str:
  seconds = int(seconds)
  h, rem = divmod(seconds, 3600)
  return f"{h}h{rem // 60:02d}m" if h else f"{rem // 60}m{rem % 60:02d}s"


def _should_stop(config, epochs_done: int, evaluation: dict[str, float]) -> str | None:
  if not config.train.early_stopping:
    return None
  split = next((s for s in ("validation", "heldout", "test")
                if f"{s}_loss" in evaluation), None)
  loss, accuracy = evaluation[f"{split}_loss"], evaluation[f"{split}_accuracy"]
  if math.isnan(loss) or loss > DIVERGED_LOSS:
    return f"{split} loss {loss} is NaN or > {DIVERGED_LOSS}"
  if epochs_done >= CHANCE_CHECK_EPOCH and accuracy <= CHANCE_ACCURACY:
    return f"{split} accuracy {accuracy:.3f} <= {CHANCE_ACCURACY} after epoch {epochs_done}"
  return None


def train_and_evaluate(config, workdir: str) -> dict[str, Any]:
  """Trains and evaluates as ``config`` says, writing everything to ``workdir``.

  Returns:
    ``{"state": final train state, "history": [per-epoch metrics], "stopped":
    early-stopping reason or None}``.
  """
  config_lib.validate(config)
  os.makedirs(workdir, exist_ok=True)
  with open(os.path.join(workdir, "config.json"), "w") as f:
    f.write(config.to_json_best_effort(indent=2, sort_keys=True))

  dataset = input_pipeline.load_dataset(
      config.data.dataset, source=config.data.source, data_dir=config.data.dir or None,
      holdout=config.data.holdout, holdout_size=config.data.holdout_size,
      holdout_seed=config.data.holdout_seed)
  logging.info("Data: %s from %s%s", dataset.name, dataset.source,
               " -- a SMALL SAMPLE, not the full dataset" if dataset.is_sample else "")
  trainer = Trainer(config, dataset)
  state = trainer.initial_state()
  num_params = models.count_params(state["params"])
  logging.info("Model %s: %d trainable parameters; phases %s; %d steps per epoch",
               config.model, num_params, trainer.phases, trainer.steps_per_epoch)

  checkpoints = None
  if config.train.checkpoint:
    checkpoints = ocp.CheckpointManager(
        os.path.abspath(os.path.join(workdir, "checkpoints")),
        options=ocp.CheckpointManagerOptions(max_to_keep=2, create=True))
    latest = checkpoints.latest_step()
    if latest is not None:
      phase = trainer.phase_at(latest - 1)
      target = dict(state, opt_state=trainer.optimizer(phase).init(state["params"]))
      state = checkpoints.restore(latest, args=ocp.args.StandardRestore(target))
      logging.info("Resumed from the checkpoint after epoch %d (step %d)",
                   latest, int(state["step"]))

  writer = tensorboardX.SummaryWriter(os.path.join(workdir, "tensorboard"))
  history, stopped = [], None
  total_epochs = config.train.epochs
  start_epoch = int(state["epochs_done"])
  log_every = config.train.log_every_steps
  run_start, steps_run = time.perf_counter(), 0
  steps_left_total = (total_epochs - start_epoch) * trainer.steps_per_epoch
  for epoch in range(start_epoch, total_epochs):
    phase = trainer.phase_at(epoch)
    if epoch > 0 and trainer.phase_at(epoch - 1) != phase:
      logging.info("Epoch %d: switching to %s", epoch + 1, trainer.phases[phase][0])
      state["opt_state"] = trainer.optimizer(phase).init(state["params"])
    order = trainer.epoch_order(epoch)
    epoch_start, chunks = time.perf_counter(), []
    for first in range(0, trainer.steps_per_epoch, log_every):
      count = min(log_every, trainer.steps_per_epoch - first)
      tic = time.perf_counter()
      state, metrics = trainer._chunk(phase, count)(state, order, first)
      metrics = jax.device_get(metrics)
      elapsed = time.perf_counter() - tic
      chunks.append(metrics)
      steps_run += count
      rate = steps_run / (time.perf_counter() - run_start)
      interval = _summarise([metrics])
      step = int(state["step"])
      for k, v in interval.items():
        writer.add_scalar(f"interval/{k}", v, step)
      correlation = (f"  corr {interval['correlation_whole']:.4f}"
                     if "correlation_whole" in interval else "")
      logging.info(
          "epoch %d/%d  step %d/%d  %s  loss %.4f  acc %.4f%s  %.0f img/s  ETA %s",
          epoch + 1, total_epochs, first + count, trainer.steps_per_epoch,
          trainer.phases[phase][0], interval["train_loss"], interval["train_accuracy"],
          correlation, count * trainer.batch_size / elapsed,
          _format_seconds((steps_left_total - steps_run) / rate))
    train_seconds = time.perf_counter() - epoch_start
    state["epochs_done"] = jnp.asarray(epoch + 1, jnp.int32)
    record = {"epoch": epoch + 1, "step": int(state["step"]),
              "method": trainer.phases[phase][0]}
    record.update(_summarise(chunks))
    record.update(trainer.evaluate(state))
    record["train_seconds"] = train_seconds
    record["images_per_second"] = trainer.steps_per_epoch * trainer.batch_size / train_seconds
    history.append(record)
    logging.info("epoch %d done: %s", epoch + 1,
                 "  ".join(f"{k} {v:.4f}" for k, v in record.items()
                           if isinstance(v, float)))
    with open(os.path.join(workdir, "metrics.jsonl"), "a") as f:
      f.write(json.dumps(record) + "\n")
    for k, v in record.items():
      if isinstance(v, float):
        writer.add_scalar(k, v, record["step"])
    writer.flush()
    if checkpoints is not None:
      checkpoints.save(epoch + 1, args=ocp.args.StandardSave(state))
    stopped = _should_stop(config, epoch + 1, record)
    if stopped:
      logging.warning("Early stop after epoch %d: %s", epoch + 1, stopped)
      break
  if checkpoints is not None:
    checkpoints.wait_until_finished()
    checkpoints.close()
  writer.close()
  return {"state": state, "history": history, "stopped": stopped}
