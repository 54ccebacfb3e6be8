"""Intrinsic dimension: the smallest d at which FPD (and RBD) reach 90 % of SGD's accuracy.

  python -m experiments.intrinsic_dimension --config=configs/intrinsic_dimension.py \
      --data_root=DIR --data=fashion_mnist=/usr/share/datasets/fashion-mnist --seeds=0,1,2
  python -m experiments.intrinsic_dimension \
      --config=configs/intrinsic_dimension.py:pairs=li_fc-mnist,epochs=100 --data_root=DIR
  python -m experiments.intrinsic_dimension --config=configs/intrinsic_dimension.py:runlocal \
      --workdir_root=/tmp/id --results_dir=/tmp/id/results

Li, Farkhoor, Liu & Yosinski (ICLR 2018) train a network in a fixed random
d-dimensional subspace, theta = theta_0 + P c (FPD), and call d_int90 the
smallest d whose accuracy reaches 90 % of the accuracy of training all D
parameters. RBD's counterpart re-draws the basis every step. The measurement
(``experiments/intrinsic_dimension.py``) trains the SGD baseline, then runs
this config's coarse geometric grid of d for each method and bisects on the
crossing of each threshold; every (method, d, seed) is an ordinary run of the
runner (``experiments/runs.py``). Beside ``get_config``, ``sweep`` and
``report`` (``configs/common.py``), the measurement calls ``parse`` (the
checked argument) and ``point`` (the entry of a method at a d). Run through
``experiments.reproduce``, this config trains only the baselines and the
coarse grid (no bisection) and writes its plain table to the same results
name: use ``experiments.intrinsic_dimension``.

Argument keys (beside the scale keys of ``configs/common.py``):

* ``pairs``: ``+``-joined ``<model>-<dataset>``, default the six below.
* ``methods``: ``fpd+rbd``; ``fractions``: ``+``-joined thresholds in (0, 1]
  (``0.9`` is d_int90); ``d_min``, ``d_max``, ``factor``: the coarse grid
  ``d_min * factor^k <= d_max``; ``bisections``: steps of bisection per
  threshold (each halves the bracket in log d).
* ``structure``: ``srht`` (default: each step costs O(D log D) whatever d
  is, so every d costs about as much as SGD), ``fastfood`` (Li et al.'s
  projection for large D) or ``dense`` (i.i.d. Gaussian rows: O(d D) a step).
* ``rate_rule``: the learning rate at d from the rate at d = 250 (below).
* ``rate_span``: how far the searched rule's line search may go from its
  start, in halvings or doublings (default ``RATE_SPAN``).
* ``rates``: ``sgd=-3+fpd=5+rbd=4`` overrides the log2 rates at d = 250.
* ``metric``: the accuracy the threshold is on; '' = the protocol's.
* ``optimizer``: ``sgd`` (default: plain steps at the seed paper's tuned
  rates) or ``adam`` (Li et al.'s: Adam at 2^-10 ~ their 1e-3 on the
  baseline and on the subspace coordinates, their weight decay on their
  networks; with ``rate_rule=fixed`` or ``searched``).

Training length: ``epochs`` (0 = ``EPOCHS``, 3, this measurement's
affordable default on 2 CPU cores; both papers train 100: ``epochs=100``),
``steps`` per epoch (-1 = the whole training split), ``eval`` images.

Protocols. The seed paper's FC and CNN (MNIST, Fashion-MNIST): its protocol
(batch 32, augmentation, 10,000 training images held out, validation
accuracy), SGD without momentum. Li et al.'s networks (``li_fc``
784-200-200-10, 199,210 parameters; ``li_lenet``, 44,426; MNIST): their
code's batch 128, all 60,000 training images, no augmentation, accuracy on
the 10,000 test images (their validation set). Differences from Li et al.,
stated in the results file too:

* Optimizer: they train the subspace coordinates (and the baseline) with Adam
  at 1e-3 and L2 weight decay (1e-5 FC, 1e-4 LeNet). ``optimizer=adam,
  rate_rule=fixed`` does the same (at 2^-10). The default, plain SGD steps
  without weight decay, uses the seed paper's tuned rates
  (``configs/learning_rates.py``), borrowed from its FC (for ``li_fc``) and
  CNN (for ``li_lenet``) on MNIST and labelled so.
* Projection: Li et al. use dense columns for the FC and Fastfood for LeNet;
  here every d uses ``structure``. With plain SGD, FPD's step
  theta <- theta - eta P P^T g is exactly SGD on c in theta_0 + P c.
* Initialisation: He-normal kernels and zero biases like theirs (flax's
  truncated normal, variance 2 / fan_in).

Rate rules (``rate_rule``). With unit directions the expected FPD/RBD step
is (d / D) eta g, so keeping eta d fixed keeps the expected step of a run
tuned at d = 250 (``learning_rates.for_total_d``); the rules start from the
rate eta_250 found there:

* ``searched`` (default): a line search over powers of two at every d. The
  first seed trains at 2^(c-1), 2^c and 2^(c+1), where 2^c is the capped
  rule's rate at d, and goes on halving (doubling) while the lowest final
  training loss is at the smallest (largest) rate tried, at most
  ``rate_span`` steps from c; a diverged run counts as infinite loss.
  The other seeds train at the rate with the lowest loss, and d's accuracy
  is the mean over all seeds at that rate. Measured on FC-MNIST under the
  capped rule, both d_int90 crossings sat exactly where the rule halves the
  rate, and at fixed d = 250 rates RBD's accuracy fell as d grew
  (results/README.md, "Intrinsic dimension"): no single eta_250 scaled by
  250 / d serves every d, so each d gets its own.
* ``capped``: eta_250 * 250 / d above d = 250 (nearest power of
  two), eta_250 below. Below d = 250 the step's curvature no longer falls
  with d (the largest curvature along d random unit directions tends to the
  mean, tr(H) / D), so a larger rate would only risk divergence.
* ``scaled``: eta_250 * 250 / d at every d.
* ``fixed``: eta_250 at every d.

Published (Li et al. 2018, Table 1): d_int90 = 750 for their MNIST FC and 290
for their MNIST LeNet; ``LI_PUBLISHED`` prints them beside ours.
"""

from __future__ import annotations

import functools
import math

import jax

from configs import common, learning_rates
from random_bases import checks, config_lib

# The six model/data pairs measured by default: the seed paper's FC and CNN on
# MNIST and Fashion-MNIST, and Li et al.'s two MNIST networks.
PAIRS = (
  ("fc", "mnist"),
  ("cnn", "mnist"),
  ("fc", "fashion_mnist"),
  ("cnn", "fashion_mnist"),
  ("li_fc", "mnist"),
  ("li_lenet", "mnist"),
)
MODEL_TITLES = {**common.MODEL_TITLES, "li_fc": "Li-FC", "li_lenet": "Li-LeNet"}
METHODS = ("fpd", "rbd")
RATE_RULES = ("searched", "capped", "scaled", "fixed")
# The searched rule tries rates 2^(c-1), 2^c, 2^(c+1) around the capped rule's
# 2^c and walks on while the best is at an edge, at most rate_span halvings
# or doublings from c. A bound is needed: where FPD barely learns (small d)
# the loss falls towards its initial value as the rate falls, with no end.
# 3 cut Li-LeNet's FPD search short at the d_int90 crossing (d = 279).
RATE_SPAN = 5
# What the searched rule minimises: the first seed's final training loss (a
# diverged run counts as infinite). Not the thresholded accuracy, which would
# pick each d's rate on the numbers d_int is read from.
RATE_SEARCH_METRIC = "train_loss"
OPTIMIZERS = ("sgd", "adam")
# optimizer=adam, Li et al.'s setup: Adam at 1e-3 for the baseline and the
# subspace coordinates (here 2^-10 = 0.98e-3: rates are powers of two), with
# L2 weight decay on their networks (their code: 1e-5 FC, 1e-4 LeNet).
ADAM_LOG2 = -10
LI_WEIGHT_DECAY = {"li_fc": 1e-5, "li_lenet": 1e-4}
STRUCTURES = ("srht", "fastfood", "dense")
# Li et al. 2018, Table 1: d_int90 of FPD with Adam, 100 epochs (MNIST).
LI_PUBLISHED = {("li_fc", "mnist"): 750, ("li_lenet", "mnist"): 290}
# For Li et al.'s networks, whose rates nobody tuned: the seed paper's model
# whose tuned rates they borrow.
BORROWED_RATES = {"li_fc": "fc", "li_lenet": "cnn"}
# Both papers train 100 epochs; this measurement's default is what 2 CPU
# cores afford for ~60 runs a pair (results name the length they ran).
PAPER_EPOCHS = 100
EPOCHS = 3
# Each protocol's fields, and the accuracy its threshold is on.
SEED_PAPER_PROTOCOL = {
  "train.batch_size": 32,
  "data.holdout": "validation",
  "data.augment": True,
}
LI_PROTOCOL = {"train.batch_size": 128, "data.holdout": "none", "data.augment": False}
SEED_PAPER_METRIC, LI_METRIC = "validation_accuracy", "test_accuracy"
# The fields any entry sets: every entry sets all of them (the schema's
# default where it has no value of its own), so a run's config does not
# depend on which other entries were built with it.
ENTRY_FIELDS = (
  "model",
  "data.dataset",
  "method",
  "learning_rate.sgd",
  "learning_rate.fpd",
  "learning_rate.rbd",
  "bases.d",
  "bases.structure",
  "train.optimizer",
  "train.weight_decay",
  *SEED_PAPER_PROTOCOL,
)

MEANINGS = {
  **common.SCALE_MEANINGS,
  "epochs": f"epochs to train; 0 = {EPOCHS} (this measurement's default; the papers: "
  f"{PAPER_EPOCHS})",
  "pairs": "+-joined <model>-<dataset> pairs to measure",
  "methods": "+-joined methods whose d_int is searched: fpd, rbd",
  "fractions": "+-joined fractions of the baseline's accuracy, each in (0, 1]",
  "d_min": "the coarse grid's smallest d",
  "d_max": "the coarse grid's largest d (at most D)",
  "factor": "the coarse grid's ratio (> 1)",
  "bisections": "bisection steps per threshold after the grid",
  "structure": "srht | fastfood | dense: the bases' structure",
  "rate_rule": "searched | capped | scaled | fixed: the rate at d (from the rate at d = 250)",
  "rate_span": "the searched rule's farthest try from its start, in halvings or doublings",
  "rates": "log2 rates at d = 250 overriding the tuned ones: sgd=-3+fpd=5+rbd=4",
  "metric": "the accuracy thresholded; '' = the protocol's",
  "optimizer": "sgd | adam: plain steps at tuned rates, or Li et al.'s Adam (2^-10) on the "
  "baseline and the subspace coordinates, with their weight decay on their networks",
}
DEFAULTS = dict(
  pairs="+".join(f"{m}-{d}" for m, d in PAIRS),
  methods="+".join(METHODS),
  fractions="0.9",
  d_min=16,
  d_max=16384,
  factor=4.0,
  bisections=4,
  structure="srht",
  rate_rule="searched",
  rate_span=RATE_SPAN,
  optimizer="sgd",
  rates="",
  metric="",
)


def parse(arg: str | None):
  """The argument, with every key checked (a ValueError names the key and allowed values)."""
  parsed = config_lib.parse_arg(arg, meanings=MEANINGS, **common.SCALE_DEFAULTS, **DEFAULTS)
  pairs(parsed)
  methods(parsed)
  checks.check_choice("structure", parsed.structure, STRUCTURES)
  checks.check_choice("rate_rule", parsed.rate_rule, RATE_RULES)
  checks.check_choice("optimizer", parsed.optimizer, OPTIMIZERS)
  from experiments import intrinsic_dimension  # the pure search; no jax work

  intrinsic_dimension.check_span(parsed.rate_span, field="rate_span")
  if parsed.optimizer == "adam" and parsed.rate_rule in ("capped", "scaled"):
    raise ValueError(
      f"rate_rule={parsed.rate_rule!r} scales the rate by 250 / d, the size of a plain step; "
      "Adam's step does not grow with the gradient: with optimizer=adam use rate_rule='fixed' "
      "(Li et al.) or 'searched'"
    )
  given_rates(parsed)
  if parsed.metric:
    checks.check_choice("metric", parsed.metric, (SEED_PAPER_METRIC, LI_METRIC))
  if parsed.epochs < 0:
    raise ValueError(f"epochs={parsed.epochs} must be >= 0 (0 = {EPOCHS})")
  return parsed


def pairs(arg) -> list[tuple[str, str]]:
  """The argument's pairs; a ValueError lists the allowed ones."""
  allowed = [f"{m}-{d}" for m, d in PAIRS]
  chosen = [p for p in arg.pairs.split("+") if p]
  if not chosen:
    raise ValueError(f"pairs={arg.pairs!r} names no pair; allowed: {', '.join(allowed)}")
  for pair in chosen:
    checks.check_choice("pairs", pair, allowed)
  return [PAIRS[allowed.index(p)] for p in chosen]


def methods(arg) -> list[str]:
  chosen = [m for m in arg.methods.split("+") if m]
  if not chosen:
    raise ValueError(f"methods={arg.methods!r} names no method; allowed: fpd, rbd")
  for method in chosen:
    checks.check_choice("methods", method, METHODS)
  return chosen


def given_rates(arg) -> dict[str, int]:
  """``rates=sgd=-3+fpd=5`` -> ``{"sgd": -3, "fpd": 5}``."""
  found = {}
  for item in filter(None, arg.rates.split("+")):
    method, eq, log2 = item.partition("=")
    checks.check_choice("rates method", method, ("sgd", *METHODS))
    try:
      found[method] = int(log2)
    except ValueError as e:
      raise ValueError(f"rates item {item!r} must be <method>=<integer log2 rate>") from e
    if not eq:
      raise ValueError(f"rates item {item!r} must be <method>=<integer log2 rate>")
  return found


def fractions(arg) -> list[float]:
  """The thresholds' fractions (checked by the measurement's ``check_fractions``)."""
  try:
    return [float(f) for f in arg.fractions.split("+") if f]
  except ValueError as e:
    raise ValueError(f"fractions={arg.fractions!r} must be +-joined numbers in (0, 1]") from e


def is_li(model: str) -> bool:
  return model in BORROWED_RATES


def metric(arg, model: str) -> str:
  """The accuracy thresholded for ``model``: the argument's, else its protocol's."""
  return arg.metric or (LI_METRIC if is_li(model) else SEED_PAPER_METRIC)


def pair_key(model: str, dataset: str) -> str:
  return f"{model}-{dataset}"


def pair_title(model: str, dataset: str) -> str:
  return f"{MODEL_TITLES[model]}-{common.DATA_TITLES[dataset]}"


@functools.cache
def parameter_count(model: str, dataset: str) -> int:
  """D, the model's number of parameters (shapes only, nothing is computed)."""
  shapes = config_lib.param_shapes(model, dataset)
  return sum(math.prod(leaf.shape) for leaf in jax.tree.leaves(shapes))


def rate_250(arg, model: str, dataset: str, method: str) -> learning_rates.Rate:
  """The rate at d = 250 (SGD: its rate): given, tuned or the paper's; borrowed for Li's."""
  given = given_rates(arg)
  if method in given:
    return learning_rates.Rate(given[method], "given in the argument rates=")
  if arg.optimizer == "adam":
    return learning_rates.Rate(ADAM_LOG2, "Adam; Li et al.'s 1e-3 as a power of two")
  source = BORROWED_RATES.get(model, model)
  found = learning_rates.rate(source, dataset, method)
  if source != model:
    found = learning_rates.noted(
      found, f"borrowed from {MODEL_TITLES[source]}-{common.DATA_TITLES[dataset]}"
    )
  return found


def rate_at(arg, model: str, dataset: str, method: str, d: int) -> learning_rates.Rate:
  """``method``'s rate at ``d`` under ``arg.rate_rule`` (the docstring states the rules).

  Under ``searched`` this is the capped rule's rate, where the search starts.
  """
  base = rate_250(arg, model, dataset, method)
  if method == "sgd" or d == 250:
    return base
  if arg.optimizer == "adam":
    return learning_rates.noted(base, f"Adam: the same rate at d = {d:,}")
  if arg.rate_rule == "fixed":
    return learning_rates.noted(base, f"the d = 250 rate, not scaled to d = {d:,} (rule fixed)")
  if arg.rate_rule in ("capped", "searched") and d < 250:
    return learning_rates.noted(
      base, f"the d = 250 rate, not scaled to d = {d:,} (rule capped: scaled above 250 only)"
    )
  return learning_rates.for_total_d(base, d)


def protocol(model: str) -> dict:
  return LI_PROTOCOL if is_li(model) else SEED_PAPER_PROTOCOL


def search_start(arg, model: str, dataset: str, method: str, d: int) -> int:
  """The searched rule's first log2 rate at ``d``: the capped rule's."""
  return rate_at(arg, model, dataset, method, d).log2


def first_log2(arg, model: str, dataset: str, method: str, d: int) -> int | None:
  """The log2 rate of the first run at ``d``: the search's start under ``searched``, else None."""
  return search_start(arg, model, dataset, method, d) if arg.rate_rule == "searched" else None


def point(
  arg, model: str, dataset: str, method: str, d: int | None = None, log2: int | None = None
) -> dict:
  """The entry of ``method`` at ``d`` on the pair (SGD: the baseline, no d).

  ``log2``: the rate 2^log2 the searched rule tries at ``d`` (its name says
  the rate, so the tries at one d are told apart). Every entry sets every
  field of ``ENTRY_FIELDS``; under runlocal the data becomes the shipped
  MNIST sample (the name keeps the pair).
  """
  defaults = {f.name: f.default for f in config_lib.FIELDS}
  title = pair_title(model, dataset)
  if method == "sgd":
    rate = rate_at(arg, model, dataset, "sgd", 0)
    entry = {"name": f"{title} SGD", "label": "SGD"}
  else:
    if not isinstance(d, int) or isinstance(d, bool) or d <= 0:
      raise ValueError(f"d={d!r} must be a positive integer")
    if arg.rate_rule == "searched":
      if log2 is None:
        raise ValueError(f"rate_rule=searched: the entry of {method} at d={d} needs its log2 rate")
      start = search_start(arg, model, dataset, method, d)
      rate = learning_rates.Rate(
        log2, f"searched at d = {d:,}: first seed's lowest final training loss; start 2^{start}"
      )
      name = f"{title} {common.METHOD_TITLES[method]} d = {d} at 2^{log2}"
    else:
      if log2 is not None:
        raise ValueError(f"log2={log2} is for rate_rule=searched, not {arg.rate_rule!r}")
      rate = rate_at(arg, model, dataset, method, d)
      name = f"{title} {common.METHOD_TITLES[method]} d = {d}"
    entry = {
      "name": name,
      "label": common.METHOD_TITLES[method],
      "x": d,
      "bases.d": d,
      "bases.structure": arg.structure,
    }
  entry.update(
    {
      "group": pair_key(model, dataset),
      "panel": title,
      "rate": str(rate),
      "model": model,
      "data.dataset": dataset,
      "method": method,
      f"learning_rate.{method}": rate.value,
      "train.optimizer": arg.optimizer,
      "train.weight_decay": LI_WEIGHT_DECAY.get(model, 0.0) if arg.optimizer == "adam" else 0.0,
      **protocol(model),
    }
  )
  for name in ENTRY_FIELDS:
    entry.setdefault(name, defaults[name])
  if arg.runlocal:
    entry.update({k: v for k, v in common.RUNLOCAL.items() if k.startswith("data.")})
  return entry


def grid(arg, model: str, dataset: str) -> list[int]:
  """The coarse grid for the pair, checked against its D (the measurement's ``geometric_grid``)."""
  from experiments import intrinsic_dimension  # the pure search; no jax work

  return intrinsic_dimension.geometric_grid(
    arg.d_min, arg.d_max, arg.factor, big_d=parameter_count(model, dataset)
  )


def base(arg):
  config = common.base(arg, epochs=EPOCHS)
  return config


def get_config(arg=None):
  """The first pair's FPD at d = 1024 (or ``d_max`` if smaller), at the rule's (first) rate."""
  arg = parse(arg)
  model, dataset = pairs(arg)[0]
  config = base(arg)
  d = min(1024, arg.d_max)
  log2 = first_log2(arg, model, dataset, "fpd", d)
  common.apply(config, point(arg, model, dataset, "fpd", d, log2))
  return config


def sweep(arg=None):
  """The runs known before any result: each pair's SGD baseline and its coarse grid per method.

  Under ``searched`` the grid's entries are the first seed at the search's
  first rate (``"seeds": 1``). The measurement adds the other rates, seeds
  and the bisection's runs (``point``) as results come in.
  """
  arg = parse(arg)
  entries = []
  for model, dataset in pairs(arg):
    entries.append(point(arg, model, dataset, "sgd"))
    for method in methods(arg):
      for d in grid(arg, model, dataset):
        log2 = first_log2(arg, model, dataset, method, d)
        entry = point(arg, model, dataset, method, d, log2)
        entries.append(entry if log2 is None else {**entry, "seeds": 1})
  return entries


def scale_text(arg) -> str:
  """The training length in words, for the results header."""
  if arg.runlocal:
    return common.scale_note(arg, epochs=EPOCHS)
  epochs = arg.epochs or EPOCHS
  parts = [
    f"epochs={epochs}",
    f"steps/epoch={'all' if arg.steps == -1 else arg.steps}",
    f"eval images/split={'all' if arg.eval == -1 else arg.eval}",
  ]
  if epochs != PAPER_EPOCHS or arg.steps != -1:
    return (
      f"REDUCED training length ({PAPER_EPOCHS} epochs of the whole split in both "
      "papers), so d_int is not comparable with Li et al.'s: " + ", ".join(parts)
    )
  return "the papers' training length: " + ", ".join(parts)


def optimizer_notes(arg) -> list[str]:
  """What the optimizer means for the comparison with Li et al., for the results' notes."""
  if arg.optimizer == "sgd":
    return [
      "Li et al. train FPD and the baseline with Adam (1e-3) and L2 weight decay; here "
      "both are plain SGD steps (rates: each row's), so the published values are a "
      "reference, not the same measurement (optimizer=adam runs theirs)."
    ]
  return [
    "optimizer=adam: the baseline trains all D parameters by Adam and FPD/RBD train their "
    "coordinates by Adam (random_bases.scale_by_random_bases(coordinate_transform="
    "optax.scale_by_adam())), at 2^-10 (Li et al.: 1e-3), with L2 weight decay "
    + ", ".join(f"{MODEL_TITLES[m]} {w:g}" for m, w in LI_WEIGHT_DECAY.items())
    + " (their code; none on the seed paper's models). The 'SGD' rows are this Adam baseline.",
    "For RBD the coordinates belong to a new basis every step, so Adam's per-coordinate "
    "statistics (first and second moments) mix unrelated directions: its RBD rows are Adam "
    "applied as it is, not a tuned RBD.",
  ]


def report(arg=None):
  from experiments import intrinsic_dimension  # the pure search; no jax work

  arg = parse(arg)
  chosen = pairs(arg)
  spec = {
    "pairs": [
      {
        "key": pair_key(model, dataset),
        "model": model,
        "dataset": dataset,
        "title": pair_title(model, dataset),
        "D": parameter_count(model, dataset),
        "grid": grid(arg, model, dataset),
        "metric": metric(arg, model),
        "protocol": "Li et al.'s (batch 128, all 60,000 training images, no augmentation, "
        "test accuracy)"
        if is_li(model)
        else "the seed paper's (batch 32, augmentation, 10,000 held out, validation accuracy)",
        "published": LI_PUBLISHED.get((model, dataset)),
      }
      for model, dataset in chosen
    ],
    "methods": methods(arg),
    "fractions": intrinsic_dimension.check_fractions(fractions(arg)),
    "factor": arg.factor,
    "bisections": intrinsic_dimension.check_bisections(arg.bisections),
    "structure": arg.structure,
    "rate_rule": arg.rate_rule,
    "rate_search": {"span": arg.rate_span, "metric": RATE_SEARCH_METRIC}
    if arg.rate_rule == "searched"
    else None,
  }
  return {
    "name": common.results_name("intrinsic_dimension", arg),
    "title": "Intrinsic dimension: the smallest d at which FPD and RBD reach a fraction of "
    "SGD's accuracy",
    "scale": scale_text(arg),
    "columns": [
      {"metric": metric(arg, chosen[0][0]), "label": "acc %", "percent": True},
    ],
    "intrinsic_dimension": spec,
    "notes": [
      *optimizer_notes(arg),
      "Li et al.'s d_int90 (Table 1): 750 for their MNIST FC, 290 for their MNIST LeNet.",
    ],
  }
