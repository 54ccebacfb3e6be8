"""The learning rates of every table and figure, in one place: the paper's and ours.

Every rate here is an applied step size, stored as its log2: the update is
exactly ``-2**log2 * direction`` (``config.learning_rate.<method>``).

* ``PAPER``: Table 4 at d = 250 (PAPER.md). Its SGD column holds the
  reference code's per-example rates, which the code multiplies by the batch
  size (32 = 2^5), so the applied SGD rate is 2^(k + 5). Its RBD and FPD
  columns are read as applied rates (PAPER.md explains why).
* ``PAPER_FIGURES``: rates the paper gives for single figures (Fig. B.7 per
  d, Fig. B.15 per distribution).
* ``TUNED``: rates chosen by our tuner's coarse-to-fine search
  (``experiments/tune.py``) at the reduced scale, copied from
  ``results/table4_coarse.md``, which states the scale they were tuned at and the
  exact command. Edit this dict, nothing else, when the tuner is rerun.
* ``TUNED_AT_LENGTH``: rates chosen by the tuner's successive halving
  (``configs/table4.py:search=halving``), whose longest trials are at least a
  quarter of the table's 100 epochs, keyed with the bases' structure, copied
  from ``results/table4.md`` (Table 4's file). Only
  ``configs/table1_full.py`` reads them (``searched_rate``); ``rate()`` does not.

``rate()`` looks a key up in that order of preference (ours first) and says
where the value came from; the results files print that source beside each
row, so a row run with an untuned rate says so.
"""

from __future__ import annotations

import dataclasses
import math

# The reference code's SGD step is its per-example rate times the batch size.
SGD_BATCH_LOG2 = 5  # batch 32

# PAPER.md, Table 4 (log2, d = 250, normal directions). SGD per example.
PAPER = {
  ("fc", "mnist"): {"rbd": 1, "fpd": -1, "sgd": -8},
  ("fc", "fashion_mnist"): {"rbd": -1, "fpd": -1, "sgd": -7},
  ("fc", "cifar10"): {"rbd": -5, "fpd": -5, "sgd": -12},
  ("cnn", "mnist"): {"rbd": -1, "fpd": -3, "sgd": -10},
  ("cnn", "fashion_mnist"): {"rbd": -3, "fpd": -1, "sgd": -9},
  ("cnn", "cifar10"): {"rbd": -3, "fpd": -1, "sgd": -11},
  ("resnet8", "cifar10"): {"rbd": 3, "sgd": -3},
}

# Rates the paper gives for one figure, keyed like TUNED: (model, dataset,
# method, d, distribution) -> applied log2.
PAPER_FIGURES = {
  # Fig. B.7, CNN on CIFAR-10: d = 10, 100, 1000, 10000.
  ("cnn", "cifar10", "rbd", 10, "normal"): -1,
  ("cnn", "cifar10", "rbd", 100, "normal"): -2,
  ("cnn", "cifar10", "rbd", 1000, "normal"): -3,
  ("cnn", "cifar10", "rbd", 10000, "normal"): -5,
  # Fig. B.15. PAPER.md does not name the pair; normal's 2^-3 is Table 4's
  # CNN-CIFAR10 RBD rate, so the three are filed under that pair.
  ("cnn", "cifar10", "rbd", 250, "uniform"): 1,
  ("cnn", "cifar10", "rbd", 250, "bernoulli"): -1,
}

# Ours: (model, dataset, method, d, distribution) -> applied log2, from
# results/table4_coarse.md (tuned on 75 % of the training set at the reduced scale
# stated there; see that file for the losses behind each choice). SGD keys
# have d = distribution = None, NES keys distribution = None.
# That file (named table4.md until 2026-12-01) of 2026-11-30, rerun from 95440d6: every
# pair, one epoch of 200 steps (NES: 20) per trial, 5,000 held-out images; tests/test_configs.py
# checks this dict against the file's printed lines. Short trials favour large rates: with
# 1,000-step trials CNN-CIFAR10 RBD's best is 2^2, not 2^3
# (results/table4_long_trials/), and several of these rates diverge within
# 400 steps (results/README.md, Findings 2).
TUNED: dict[tuple, int] = {
  ("fc", "mnist", "sgd", None, None): -3,  # heldout_loss 0.8334
  ("fc", "mnist", "rbd", 250, "normal"): 4,  # heldout_loss 1.274
  ("fc", "mnist", "fpd", 250, "normal"): 5,  # heldout_loss 1.527
  ("fc", "mnist", "nes", 250, None): -7,  # heldout_loss 1.988
  ("fc", "fashion_mnist", "sgd", None, None): -3,  # heldout_loss 0.8592
  ("fc", "fashion_mnist", "rbd", 250, "normal"): 3,  # heldout_loss 1.102
  ("fc", "fashion_mnist", "fpd", 250, "normal"): 4,  # heldout_loss 1.21
  ("fc", "cifar10", "sgd", None, None): -6,  # heldout_loss 2.057
  ("fc", "cifar10", "rbd", 250, "normal"): 2,  # heldout_loss 2.435
  ("fc", "cifar10", "fpd", 250, "normal"): 2,  # heldout_loss 2.79
  ("cnn", "mnist", "sgd", None, None): -2,  # heldout_loss 0.3622
  ("cnn", "mnist", "rbd", 250, "normal"): 3,  # heldout_loss 1.975
  ("cnn", "mnist", "fpd", 250, "normal"): 4,  # heldout_loss 1.638
  ("cnn", "mnist", "nes", 250, None): -7,  # heldout_loss 2.146
  ("cnn", "fashion_mnist", "sgd", None, None): -2,  # heldout_loss 0.9655
  ("cnn", "fashion_mnist", "rbd", 250, "normal"): 3,  # heldout_loss 1.81
  ("cnn", "fashion_mnist", "fpd", 250, "normal"): 4,  # heldout_loss 1.693
  ("cnn", "cifar10", "sgd", None, None): -4,  # heldout_loss 1.873
  ("cnn", "cifar10", "rbd", 250, "normal"): 3,  # heldout_loss 2.069
  ("cnn", "cifar10", "fpd", 250, "normal"): 3,  # heldout_loss 2.09
  ("resnet8", "cifar10", "sgd", None, None): -3,  # heldout_loss 1.797
  ("resnet8", "cifar10", "rbd", 250, "normal"): 4,  # heldout_loss 1.976
}

# Ours at length: (model, dataset, method, d, structure) -> applied log2, copied from the
# "For configs/learning_rates.py (TUNED_AT_LENGTH)" lines of the halving search's results
# file (results/table4.md, which states the lengths and the command; tests/test_configs.py
# checks this dict against its printed lines).
# SGD keys have d = structure = None (``length_key``).
TUNED_AT_LENGTH: dict[tuple, int] = {
  # All nine groups of the search: eight run from 5481e97, FC-CIFAR10 FPD's last trials
  # from 98624b1 (the records name each run's commit).
  ("fc", "mnist", "sgd", None, None): -3,  # heldout_loss 0.08935
  ("fc", "mnist", "rbd", 250, "srht"): 1,  # heldout_loss 0.2975
  ("fc", "mnist", "fpd", 250, "srht"): 2,  # heldout_loss 1.52
  ("fc", "fashion_mnist", "sgd", None, None): -4,  # heldout_loss 0.4015
  ("fc", "fashion_mnist", "rbd", 250, "srht"): 1,  # heldout_loss 0.6112
  ("fc", "fashion_mnist", "fpd", 250, "srht"): 1,  # heldout_loss 1.04
  ("fc", "cifar10", "sgd", None, None): -7,  # heldout_loss 1.473
  ("fc", "cifar10", "rbd", 250, "srht"): -1,  # heldout_loss 1.919
  ("fc", "cifar10", "fpd", 250, "srht"): -3,  # heldout_loss 2.721
}

# NES has no rate in the paper. Its centred-rank update, sum_i u_i phi_i /
# (sigma d) with u_i in [-0.5, 0.5], does not depend on the scale of the loss,
# so a rate tuned for a model on one dataset serves the model on another;
# with none tuned, NES uses the library's default step.
NES_UNTUNED_LOG2 = -10


@dataclasses.dataclass(frozen=True)
class Rate:
  """An applied step size 2**log2 and where it comes from."""

  log2: int
  source: str

  @property
  def value(self) -> float:
    return 2.0**self.log2

  def __str__(self) -> str:
    return f"2^{self.log2} ({self.source})"


def key(
  model: str, dataset: str, method: str, d: int | None = 250, distribution: str | None = "normal"
) -> tuple:
  """The lookup key: SGD ignores d and the distribution, NES the distribution."""
  if method == "sgd":
    d, distribution = None, None
  elif method == "nes":
    distribution = None
  return (model, dataset, method, d, distribution)


def rate(
  model: str, dataset: str, method: str, *, d: int = 250, distribution: str = "normal"
) -> Rate:
  """The applied rate of ``method`` on ``model``/``dataset``, ours before the paper's.

  Order: our tuned rate for exactly this key; the paper's rate for this key
  (Table 4, or a figure's; Fig. B.7's rates against d shifted by our tuned
  rate's offset from Table 4's at d = 250); at another d or distribution, our tuned rate,
  then Table 4's, at d = 250 with normal directions; for FPD on a pair
  Table 4 leaves blank, its RBD rate (ours, else the paper's); for NES, the model's rate tuned on
  another dataset, else an untuned default.
  """
  exact = key(model, dataset, method, d, distribution)
  default = key(model, dataset, method)
  table4 = PAPER.get((model, dataset), {})
  if exact in TUNED:
    return Rate(TUNED[exact], "tuned")
  if exact in PAPER_FIGURES:
    if distribution != "normal":
      return Rate(PAPER_FIGURES[exact], "paper Fig. B.15")
    # Fig. B.7's rates at other d are relative to Table 4's at d = 250: where
    # ours at d = 250 differs, the figure's rates move with it, so the curve
    # against d keeps the paper's ratios between its rates.
    if default in TUNED and method in table4:
      shift = TUNED[default] - _applied_table4(method, table4[method])
      return Rate(
        PAPER_FIGURES[exact] + shift,
        f"paper Fig. B.7's 2^{PAPER_FIGURES[exact]} {shift:+d} (ours - Table 4's at d=250)",
      )
    return Rate(PAPER_FIGURES[exact], "paper Fig. B.7")
  if exact == default and method in table4:
    return Rate(_applied_table4(method, table4[method]), "paper Table 4")
  if default in TUNED:
    return Rate(TUNED[default], "tuned at d=250, normal")
  if method in table4:
    return Rate(_applied_table4(method, table4[method]), "paper Table 4 at d=250, normal")
  if method == "fpd":
    rbd = key(model, dataset, "rbd")
    if rbd in TUNED:
      return Rate(TUNED[rbd], "our RBD rate (no FPD rate tuned or given)")
    if "rbd" in table4:
      return Rate(table4["rbd"], "paper Table 4's RBD rate (no FPD rate given)")
  if method == "nes":
    for other in ("mnist", "fashion_mnist", "cifar10"):
      tuned = TUNED.get(key(model, other, method, d))
      if tuned is not None:
        return Rate(tuned, f"tuned on {other}")
    return Rate(NES_UNTUNED_LOG2, "untuned default")
  raise ValueError(
    f"no learning rate for method={method!r} on model={model!r}, "
    f"dataset={dataset!r}: add it to configs/learning_rates.py TUNED "
    "(run the tuner, configs/table4.py)"
  )


def for_total_d(rate_250: Rate, d: int) -> Rate:
  """A rate tuned at d = 250 scaled by 250 / d, to the nearest power of two.

  With unit directions the expected update is (d / n) eta g (per
  compartment: d_k / n_k), so keeping eta * d fixed keeps the tuned run's
  expected step. Used where a row has many more directions than the tuned
  d = 250 run (Table 3's 1,018-7,982 per-tensor directions, Fig. B.10's
  1,250): at the d = 250 rate those rows blew up within 100 steps.
  """
  log2 = rate_250.log2 + round(math.log2(250 / d))
  return Rate(log2, f"{rate_250} x 250 / {d:,}")


def length_key(
  model: str, dataset: str, method: str, *, d: int | None = 250, structure: str | None = "srht"
) -> tuple:
  """The ``TUNED_AT_LENGTH`` key: SGD ignores d and the structure."""
  if method == "sgd":
    d, structure = None, None
  return (model, dataset, method, d, structure)


def searched_rate(
  model: str, dataset: str, method: str, *, d: int = 250, structure: str = "srht"
) -> Rate | None:
  """Our rate searched at length (``TUNED_AT_LENGTH``), or None where that search has not run.

  No fallback: a caller without a rate must leave the run out and say so.
  """
  found = TUNED_AT_LENGTH.get(length_key(model, dataset, method, d=d, structure=structure))
  if found is None:
    return None
  return Rate(found, "searched at length, successive halving")


def paper_log2(model: str, dataset: str, method: str) -> int | None:
  """Table 4's rate as an applied log2 (SGD converted), or None where it has none."""
  table4 = PAPER.get((model, dataset), {})
  if method not in table4:
    return None
  return _applied_table4(method, table4[method])


def _applied_table4(method: str, log2: int) -> int:
  return log2 + SGD_BATCH_LOG2 if method == "sgd" else log2


# --- labels for rates that a config uses beyond what they were found for ----------------
#
# The helpers below never change a rate's value: they return the same log2 as
# ``rate()``/``for_total_d()`` with a source that says whose rate it is, and
# what it was not tuned or scaled for, so a results file never prints
# "(tuned)" beside a rate that was tuned for something else.

METHOD_NAMES = {"rbd": "RBD", "fpd": "FPD", "nes": "NES", "sgd": "SGD"}
MODEL_NAMES = {"fc": "FC", "cnn": "CNN", "resnet8": "ResNet-8", "resnet32": "ResNet-32"}


def noted(found: Rate, note: str) -> Rate:
  """``found`` with ``note`` appended to its source: "2^3 (tuned; <note>)"."""
  return Rate(found.log2, f"{found.source}; {note}")


def _found_for(found: Rate, what: str) -> str:
  """ "tuned for <what>", or the source and what it is for when it was not tuned."""
  return f"tuned for {what}" if found.source == "tuned" else f"{found.source}, for {what}"


def for_distribution(
  model: str, dataset: str, distribution: str, *, method: str = "rbd", d: int = 250
) -> Rate:
  """The rate for normal directions, used with ``distribution`` (Table 2, Fig. B.15's other pairs).

  Its label says it is normal's and that none was tuned for ``distribution``
  (or, if one was, that it is not used).
  """
  normal = rate(model, dataset, method, d=d)
  if distribution == "normal":
    return normal
  own = key(model, dataset, method, d, distribution) in TUNED
  return Rate(
    normal.log2,
    f"normal's rate, {_found_for(normal, f'normal directions at d = {d}')}; "
    + (f"{distribution}'s own tuned rate not used" if own else f"not tuned for {distribution}"),
  )


def scaled_rbd_rate(model: str, dataset: str, method: str, d: int) -> Rate:
  """RBD's d = 250 rate scaled by 250 / d (``for_total_d``), for ``method`` (Table 3).

  For RBD the label is ``for_total_d``'s; for another method it also says that
  this is RBD's rate and that no rate of ``method`` was tuned for the model.
  """
  rbd = rate(model, dataset, "rbd")
  scaled = for_total_d(rbd, d)
  if method == "rbd":
    return scaled
  name, model_name = METHOD_NAMES[method], MODEL_NAMES.get(model, model)
  own = key(model, dataset, method) in TUNED or method in PAPER.get((model, dataset), {})
  return Rate(
    scaled.log2,
    f"RBD's rate 2^{rbd.log2} ({_found_for(rbd, 'RBD at d = 250')}) x 250 / {d:,}; "
    + (
      f"{name}'s own rate for {model_name} not used"
      if own
      else f"no {name} rate tuned for {model_name}"
    ),
  )


def unscaled(model: str, dataset: str, method: str) -> bool:
  """Whether ``rate()`` at a d other than 250 falls back to the d = 250 rate.

  True when neither our tuner nor a paper figure has a rate for that d, so
  ``rate()`` returns the one found at d = 250 (for FPD without one: RBD's) as
  it is. SGD has no d; NES's fallbacks (another dataset's rate at the same d,
  the untuned default) do not depend on d.
  """
  if method == "sgd":
    return False
  default = key(model, dataset, method)
  table4 = PAPER.get((model, dataset), {})
  if method == "nes":
    return default in TUNED
  return default in TUNED or method in table4 or method == "fpd"


def rate_at(model: str, dataset: str, method: str, *, d: int, distribution: str = "normal") -> Rate:
  """``rate()`` at ``d``, its label saying "not scaled to d = <d>" where it is d = 250's.

  ``rate()``'s own labels are kept as they are (tests and results files quote
  them); configs that run at a d other than 250 use this one.
  """
  found = rate(model, dataset, method, d=d, distribution=distribution)
  exact = key(model, dataset, method, d, distribution)
  if d == 250 or exact in TUNED or exact in PAPER_FIGURES or not unscaled(model, dataset, method):
    return found
  if "d=250" in found.source:
    return noted(found, f"not scaled to d = {d:,}")
  return noted(found, f"the d = 250 rate, not scaled to d = {d:,}")
