"""Tests for experiments/intrinsic_dimension.py (the d_int search) and its config.

The search is tested as pure functions on accuracy curves whose crossing is
known (a step at d*, a curve given per seed), and end to end on a problem
whose intrinsic dimension is k by construction: a least-squares loss that
depends on k directions only, minimised exactly inside the subspace that
the library's own FPD basis spans.
"""

from __future__ import annotations

import functools
import importlib.util
import json
import math
import os
import pathlib
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import random_bases as rb
from configs import learning_rates
from experiments import intrinsic_dimension as idim
from experiments.runs import DataLocations

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = os.path.join(ROOT, "configs", "intrinsic_dimension.py")


@functools.cache
def config_module():
  spec = importlib.util.spec_from_file_location("config_intrinsic_dimension_test", CONFIG)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def step_curve(d_star: int, calls: list[int]):
  """Accuracy 1 from d_star on, 0.5 below it; records the d's asked for."""

  def accuracy_at(d: int) -> float:
    calls.append(d)
    return 1.0 if d >= d_star else 0.5

  return accuracy_at


# --- the grid and the checks ---------------------------------------------------------------


def test_geometric_grid():
  assert idim.geometric_grid(16, 16384, 4, big_d=101_770) == [16, 64, 256, 1024, 4096, 16384]
  assert idim.geometric_grid(10, 100, 2.0, big_d=1000) == [10, 20, 40, 80]
  assert idim.geometric_grid(5, 5, 3, big_d=5) == [5]


@pytest.mark.parametrize("bad", [0.0, -0.1, 1.5, float("nan"), True, "0.9"])
def test_fraction_outside_0_1_refused(bad):
  with pytest.raises(ValueError, match=r"fraction=.*(0, 1\])"):
    idim.check_fractions([bad])


def test_fraction_edges_and_empty():
  assert idim.check_fractions([1, 0.5]) == (1.0, 0.5)
  with pytest.raises(ValueError, match=r"fractions is empty.*\(0, 1\]"):
    idim.check_fractions([])
  assert idim.threshold(0.98, 0.5) == 0.49
  with pytest.raises(ValueError, match="baseline accuracy"):
    idim.threshold(0.0, 0.9)


@pytest.mark.parametrize(
  "dims, message",
  [
    ([], r"grid is empty; give at least one d in \[1, D = 100\]"),
    ([0, 10], r"grid: d=0 must be >= 1; allowed: 1 <= d <= D = 100"),
    ([-3], r"grid: d=-3 must be >= 1"),
    ([10, 101], r"grid: d=101 is beyond D = 100.*allowed: 1 <= d <= 100"),
    ([2.5], r"grid: d=2.5 must be an integer in \[1, D = 100\]"),
  ],
)
def test_bad_grid_refused(dims, message):
  with pytest.raises(ValueError, match=message):
    idim.check_dims(dims, big_d=100)
  with pytest.raises(ValueError, match=message):  # the search checks before its first d
    idim.search(step_curve(5, []), grid=dims, levels=[0.9], big_d=100, factor=2, bisections=1)


@pytest.mark.parametrize(
  "kwargs, message",
  [
    (dict(d_min=0, d_max=10, factor=2), r"d_min: d=0 must be >= 1"),
    (dict(d_min=4, d_max=200, factor=2), r"d_max: d=200 is beyond D = 100"),
    (dict(d_min=20, d_max=10, factor=2), r"d_max=10 is below d_min=20"),
    (dict(d_min=2, d_max=10, factor=1.0), r"factor=1.0 must be a number > 1"),
  ],
)
def test_bad_grid_arguments_refused(kwargs, message):
  with pytest.raises(ValueError, match=message):
    idim.geometric_grid(**kwargs, big_d=100)


# --- bracketing and bisection on synthetic curves -------------------------------------------


def test_bracket():
  means = {10: 0.1, 20: 0.5, 40: 0.95, 80: 0.97}
  assert idim.bracket(means, 0.9) == (20, 40)
  assert idim.bracket(means, 0.95) == (20, 40)  # reaching includes equality
  assert idim.bracket(means, 0.99) == (80, None)
  assert idim.bracket(means, 0.05) == (None, 10)
  # Not monotone: the smallest d reaching wins, lo is the largest d below it.
  assert idim.bracket({10: 0.95, 20: 0.5, 40: 0.95}, 0.9) == (None, 10)
  assert idim.bracket({10: 0.1, 20: 0.95, 40: 0.5, 80: 0.97}, 0.9) == (10, 20)


def test_midpoint():
  assert idim.midpoint(256, 1024) == 512
  assert idim.midpoint(256, 362) == 304  # sqrt(92,672) = 304.4
  assert idim.midpoint(4, 6) == 5
  assert idim.midpoint(4, 5) is None
  assert idim.midpoint(1, 3) == 2


def test_search_bisects_the_bracket_in_log_d():
  calls = []
  tried = idim.search(
    step_curve(300, calls), grid=[16, 64, 256, 1024], levels=[0.9], big_d=5000, factor=4,
    bisections=4,
  )  # fmt: skip
  # (256, 1024) -> 512 reaches -> 362 reaches -> 304 reaches -> 279 does not.
  assert calls == [16, 64, 256, 1024, 512, 362, 304, 279]
  assert idim.bracket(tried, 0.9) == (279, 304)
  # Bisecting on to the end finds the step exactly, each d asked for once.
  calls = []
  tried = idim.search(
    step_curve(300, calls), grid=[16, 64, 256, 1024], levels=[0.9], big_d=5000, factor=4,
    bisections=50,
  )  # fmt: skip
  assert idim.bracket(tried, 0.9) == (299, 300)
  assert len(calls) == len(set(calls)) < 20


def test_search_walks_below_and_above_the_grid():
  calls = []
  tried = idim.search(
    step_curve(3, calls), grid=[16, 64], levels=[0.9], big_d=100, factor=4, bisections=0
  )
  assert calls == [16, 64, 4, 1]  # 16 reaches: walk down 16 / 4 = 4 (reaches), then 1
  assert idim.bracket(tried, 0.9) == (1, 4)
  calls = []
  tried = idim.search(
    step_curve(5000, calls), grid=[16, 64, 256], levels=[0.9], big_d=10_000, factor=4,
    bisections=0,
  )  # fmt: skip
  assert calls == [16, 64, 256, 1024, 4096, 10_000]  # the walk stops at D
  assert idim.bracket(tried, 0.9) == (4096, 10_000)
  calls = []
  tried = idim.search(
    step_curve(5000, calls), grid=[16], levels=[0.9], big_d=300, factor=4, bisections=3
  )
  assert calls == [16, 64, 256, 300]  # never reached, not even at D
  assert idim.bracket(tried, 0.9) == (300, None)


def test_search_shares_its_points_between_fractions():
  """Two levels: the second bisects from every d the first tried."""
  calls = []

  def accuracy_at(d):  # rises linearly in log2 d from 0 at d = 1 to 1 at d = 1024
    calls.append(d)
    return math.log2(d) / 10

  tried = idim.search(
    accuracy_at, grid=[1, 4, 16, 64, 256, 1024], levels=[0.5, 0.8], big_d=1024, factor=4,
    bisections=30,
  )  # fmt: skip
  assert len(calls) == len(set(calls))
  assert idim.bracket(tried, 0.5) == (31, 32)  # log2(32) / 10 = 0.5
  lo, hi = idim.bracket(tried, 0.8)  # 2^8 = 256 is in the grid
  assert (lo, hi) == (255, 256)


def test_estimate_from_seeds():
  curve = {100: [0.5, 0.625], 200: [0.625, 0.875], 400: [0.875, 1.0]}
  est = idim.estimate(curve, baseline=1.0, fraction=0.75)
  # Means 0.5625, 0.75, 0.9375: 200 is the first to reach 0.75; each seed on its own:
  # seed 0 reaches it at 400, seed 1 at 200.
  assert (est.level, est.lo, est.hi, est.d_int) == (0.75, 100, 200, 200)
  assert est.per_seed == (400, 200)
  assert est.interpolated == pytest.approx(200)
  assert est.describe() == "200 (bracket 100..200)"
  # Halfway between the accuracies at 100 and 400: halfway in log d, sqrt(100 * 400).
  est = idim.estimate({100: [0.5], 400: [1.0]}, baseline=1.0, fraction=0.75)
  assert est.interpolated == pytest.approx(200.0)
  assert idim.estimate({100: [0.5], 400: [0.6]}, baseline=1.0, fraction=0.9).describe() == (
    "> 400 (not reached)"
  )
  assert (
    idim.estimate({100: [0.95]}, baseline=1.0, fraction=0.9).describe().startswith("\u2264 100")
  )
  with pytest.raises(ValueError, match="same seeds"):
    idim.estimate({100: [0.5], 400: [0.6, 0.7]}, baseline=1.0, fraction=0.9)


def quadratic_losses(best: int, calls: list[int], diverge_above: float = math.inf):
  """log2 -> (log2 - best)^2 + 0.1, inf above ``diverge_above``; records each call."""

  def loss_at(log2):
    calls.append(log2)
    return math.inf if log2 > diverge_above else (log2 - best) ** 2 + 0.1

  return loss_at


@pytest.mark.parametrize("best", [-3, -2, -1, 0, 1, 2, 3])
def test_search_rate_finds_the_best_power_of_two_within_its_span(best):
  calls = []
  chosen, tried = idim.search_rate(quadratic_losses(best, calls), start=0, span=3)
  assert chosen == best
  assert sorted(calls) == sorted(set(calls))  # each rate trained once
  # The tries: the first three, then one step at a time to one past the best.
  expected = set(range(min(-1, best - 1), max(1, best + 1) + 1)) & set(range(-3, 4))
  assert set(tried) == expected
  assert tried[best] == 0.1


def test_search_rate_stops_at_its_span_and_steps_down_past_divergence():
  calls = []
  chosen, tried = idim.search_rate(quadratic_losses(7, calls), start=0, span=3)
  assert (chosen, sorted(tried)) == (3, [-1, 0, 1, 2, 3])  # best beyond the span: its edge
  calls = []
  chosen, tried = idim.search_rate(quadratic_losses(2, calls, diverge_above=0), start=0, span=3)
  assert (chosen, sorted(tried)) == (0, [-1, 0, 1])  # never walks up past a diverged rate
  calls = []
  chosen, tried = idim.search_rate(lambda log2: math.inf, start=0, span=2)
  assert (chosen, sorted(tried)) == (-2, [-2, -1, 0, 1])  # all diverge: down to the span
  chosen, _ = idim.search_rate(lambda log2: 1.0, start=5, span=1)
  assert chosen == 4  # ties go to the smaller rate
  with pytest.raises(ValueError, match="span=0 must be an integer >= 1"):
    idim.search_rate(lambda log2: 1.0, start=0, span=0)


def test_a_rate_chosen_at_the_end_of_the_tries_is_marked():
  tries = {2: (0.5, "finished"), 3: (0.4, "finished"), 4: (math.inf, "diverged")}
  assert idim._tries_text(tries, 2.0**3) == "2^2: 0.500, 2^3: 0.400*, 2^4: diverged"
  tries = {5: (0.5, "finished"), 6: (0.4, "finished"), 7: (0.3, "finished")}
  assert idim._tries_text(tries, 2.0**7).endswith(
    "2^7: 0.300* (the span's end: a rate beyond it was not tried)"
  )


def test_log_spread():
  assert idim.log_spread([100, 400]) == "200 \u00d7/ 2.67 (100, 400)"
  assert idim.log_spread([250]) == "250"
  assert idim.log_spread([None, 300]) == "\u2014, 300"


# --- a problem whose intrinsic dimension is k by construction -------------------------------

BIG_D = 64


@pytest.mark.parametrize("structure", ["dense", "srht"])
def test_fpd_basis_spans_d_dimensions(structure):
  # FPD's update of a gradient g is -eta P P^T g; applied to the D unit
  # vectors it gives -eta P P^T, whose rank is the dimension of FPD's subspace.
  d = 5
  tx = rb.fpd(1.0, d, seed=3, structure=structure)
  params = {"w": jnp.zeros(BIG_D)}
  state = tx.init(params)
  project = jax.jit(jax.vmap(lambda g: -tx.update({"w": g}, state, params)[0]["w"]))
  gram = np.asarray(project(jnp.eye(BIG_D)), np.float64)
  values = np.linalg.eigvalsh((gram + gram.T) / 2)
  # P P^T's nonzero eigenvalues are those of the Gram matrix of d unit vectors
  # (all 1 for SRHT's orthogonal rows); float32 rounding leaves ~1e-7 for the rest.
  assert np.sum(values > 1e-3) == d
  if structure == "srht":
    np.testing.assert_allclose(np.sort(values)[-d:], np.ones(d), atol=1e-5)


@functools.cache
def unit_directions() -> np.ndarray:
  """64 unit random directions in R^64 from the library's generator: rows of [64, 64]."""
  from random_bases.method import directions as dirs

  rows = dirs.materialize_directions(jax.random.key(3), jnp.arange(BIG_D), BIG_D)
  return np.asarray(rows, np.float64)


def solved_fraction(d: int, k: int) -> float:
  """1 - min over theta_0 + span(phi_1..phi_d) of |U^T theta - b|^2 / |U^T theta_0 - b|^2.

  U: k orthonormal directions, theta_0 = 0; the minimum is exact (least squares).
  """
  rng = np.random.default_rng(k)
  directions, _ = np.linalg.qr(rng.standard_normal((BIG_D, k)))
  target = rng.standard_normal(k)
  reduced = directions.T @ unit_directions()[:d].T  # the loss's k numbers against c: [k, d]
  coefficients = np.linalg.lstsq(reduced, target, rcond=None)[0]
  residual = reduced @ coefficients - target
  return 1.0 - float(residual @ residual) / float(target @ target)


@pytest.mark.parametrize("k", [1, 3, 7, 12, 40])
def test_search_finds_the_dimension_of_a_rank_k_problem(k):
  # The loss depends on theta only through U^T theta (k numbers): a subspace
  # of d >= k random directions reaches every target, one of d < k does not
  # (the part of b outside a random d-dimensional subspace of R^k is nonzero).
  # With the full space solving it exactly (baseline 1), d_int at a fraction
  # just below 1 is k.
  grid = idim.geometric_grid(2, 64, 2, big_d=BIG_D)
  fraction = 1 - 1e-6
  tried = idim.search(
    lambda d: solved_fraction(d, k),
    grid=grid,
    levels=[idim.threshold(1.0, fraction)],
    big_d=BIG_D,
    factor=2,
    bisections=10,
  )
  est = idim.estimate({d: [a] for d, a in tried.items()}, baseline=1.0, fraction=fraction)
  assert (est.lo, est.d_int) == ((k - 1, k) if k > 1 else (None, 1))
  if k > 1:
    assert tried[k - 1] < 1 - 1e-3  # well below: the crossing is sharp


# --- the config and the command ----------------------------------------------------------------


def test_config_refuses_bad_input_before_anything_runs():
  module = config_module()
  cases = {
    "fractions=1.5": r"fraction=1.5 is outside \(0, 1\]",
    "fractions=0": r"fraction=0.0 is outside \(0, 1\]",
    "pairs=li_lenet-mnist,d_max=50000": r"d_max: d=50,000 is beyond D = 44,426",
    "d_min=0": r"d_min: d=0 must be >= 1",
    "factor=1.0": r"factor=1.0 must be a number > 1",
    "pairs=resnet8-cifar10": r"pairs='resnet8-cifar10' is not supported; allowed values: 'fc-",
    "methods=nes": r"methods='nes' is not supported; allowed values: 'fpd', 'rbd'",
    "rate_rule=linear": r"rate_rule='linear' is not supported; allowed values: 'searched'",
    "structure=sparse": r"structure='sparse' is not supported",
    "bisections=-1": r"bisections=-1 must be an integer >= 0",
    "rate_span=0": r"rate_span=0 must be an integer >= 1",
  }
  for arg, message in cases.items():
    with pytest.raises(ValueError, match=message):
      module.report(arg)


def test_command_refuses_bad_input_before_training(tmp_path):
  def never(config, workdir):
    raise AssertionError("nothing may train")

  with pytest.raises(ValueError, match=r"fraction=2.0 is outside \(0, 1\]"):
    idim.run(
      f"{CONFIG}:runlocal,fractions=2",
      seeds=[0],
      data=DataLocations({}, None),
      workdir_root=str(tmp_path / "runs"),
      results_dir=str(tmp_path / "results"),
      allow_dirty=True,
      train_fn=never,
    )
  assert not os.listdir(tmp_path)


def test_rate_rules():
  module = config_module()
  tuned = learning_rates.rate("fc", "mnist", "fpd").log2
  capped = module.parse("pairs=fc-mnist,rate_rule=capped")
  assert module.rate_at(capped, "fc", "mnist", "fpd", 1000).log2 == tuned - 2  # x 250 / 1000
  assert module.rate_at(capped, "fc", "mnist", "fpd", 16).log2 == tuned  # not scaled up
  scaled = module.parse("rate_rule=scaled")
  assert module.rate_at(scaled, "fc", "mnist", "fpd", 16).log2 == tuned + 4  # round(log2 15.6)
  fixed = module.parse("rate_rule=fixed")
  assert module.rate_at(fixed, "fc", "mnist", "fpd", 4000).log2 == tuned
  li = module.rate_at(capped, "li_fc", "mnist", "fpd", 250)
  assert li.log2 == tuned and "borrowed from FC-MNIST" in li.source
  given = module.parse("rates=fpd=-2")
  assert module.rate_at(given, "li_lenet", "mnist", "fpd", 500).log2 == -3
  # The searched rule (the default) starts each d at the capped rule's rate,
  # and its entries name the rate they try, so the tries at one d differ.
  searched = module.parse("pairs=fc-mnist")
  assert searched.rate_rule == "searched"
  assert module.search_start(searched, "fc", "mnist", "fpd", 1000) == tuned - 2
  entry = module.point(searched, "fc", "mnist", "fpd", 1000, tuned + 1)
  assert entry["learning_rate.fpd"] == 2.0 ** (tuned + 1)
  assert entry["name"] == f"FC-MNIST FPD d = 1000 at 2^{tuned + 1}"
  assert entry["rate"].startswith(f"2^{tuned + 1} (searched at d = 1,000")
  with pytest.raises(ValueError, match="rate_rule=searched: the entry of fpd at d=1000 needs"):
    module.point(searched, "fc", "mnist", "fpd", 1000)
  with pytest.raises(ValueError, match="log2=3 is for rate_rule=searched, not 'capped'"):
    module.point(capped, "fc", "mnist", "fpd", 1000, 3)
  # The plan before any result: each grid d's first try, first seed only.
  first_tries = [e for e in module.sweep("pairs=fc-mnist,d_max=64") if e["method"] != "sgd"]
  assert [(e["bases.d"], e["learning_rate." + e["method"]], e["seeds"]) for e in first_tries] == [
    (16, 2.0**tuned, 1),
    (64, 2.0**tuned, 1),
    (16, 2.0 ** learning_rates.rate("fc", "mnist", "rbd").log2, 1),
    (64, 2.0 ** learning_rates.rate("fc", "mnist", "rbd").log2, 1),
  ]


def test_optimizer_adam_is_li_et_al_s_setup():
  module = config_module()
  arg = module.parse("pairs=li_fc-mnist,optimizer=adam,rate_rule=fixed")
  for method, d in (("sgd", None), ("fpd", 16), ("fpd", 4096), ("rbd", 1000)):
    entry = module.point(arg, "li_fc", "mnist", method, d)
    assert entry[f"learning_rate.{method}"] == 2.0**-10  # at every d: Adam's step is not scaled
    assert (entry["train.optimizer"], entry["train.weight_decay"]) == ("adam", 1e-5)
  lenet = module.point(arg, "li_lenet", "mnist", "fpd", 100)
  assert lenet["train.weight_decay"] == 1e-4
  seed_paper = module.point(arg, "fc", "mnist", "fpd", 100)
  assert (seed_paper["train.optimizer"], seed_paper["train.weight_decay"]) == ("adam", 0.0)
  searched = module.parse("optimizer=adam")
  assert module.search_start(searched, "fc", "mnist", "rbd", 4000) == -10
  # The default: plain steps, no decay, so the runs made before these fields keep their names.
  plain = module.point(module.parse("rate_rule=capped"), "fc", "mnist", "fpd", 100)
  assert (plain["train.optimizer"], plain["train.weight_decay"]) == ("sgd", 0.0)
  report = module.report("pairs=li_fc-mnist,optimizer=adam,rate_rule=fixed")
  assert any("optimizer=adam" in note for note in report["notes"])
  with pytest.raises(ValueError, match=r"rate_rule='capped' scales the rate by 250 / d"):
    module.parse("optimizer=adam,rate_rule=capped")
  with pytest.raises(ValueError, match=r"optimizer='rmsprop' is not supported"):
    module.parse("optimizer=rmsprop")


def test_entries_set_the_protocol_and_the_same_fields():
  module = config_module()
  arg = module.parse("pairs=fc-mnist+li_lenet-mnist,d_max=256,rate_rule=capped")
  entries = module.sweep("pairs=fc-mnist+li_lenet-mnist,d_max=256,rate_rule=capped")
  names = [e["name"] for e in entries]
  assert names[:4] == [
    "FC-MNIST SGD",
    "FC-MNIST FPD d = 16",
    "FC-MNIST FPD d = 64",
    "FC-MNIST FPD d = 256",
  ]
  assert len(names) == len(set(names)) == 2 * (1 + 2 * 3)
  assert {frozenset(k for k in e if "." in k or k in ("model", "method")) for e in entries} == {
    frozenset(module.ENTRY_FIELDS)
  }
  lenet = module.point(arg, "li_lenet", "mnist", "rbd", 100)
  assert (lenet["train.batch_size"], lenet["data.holdout"], lenet["data.augment"]) == (
    128, "none", False,
  )  # fmt: skip
  assert (lenet["bases.d"], lenet["bases.structure"], lenet["x"]) == (100, "srht", 100)
  report = module.report("pairs=fc-mnist+li_fc-mnist")
  pairs = report["intrinsic_dimension"]["pairs"]
  assert [(p["D"], p["metric"], p["published"]) for p in pairs] == [
    (101_770, "validation_accuracy", None),
    (199_210, "test_accuracy", 750),
  ]
  assert module.LI_PUBLISHED == {("li_fc", "mnist"): 750, ("li_lenet", "mnist"): 290}


def write_epoch(workdir: str, **metrics) -> dict:
  """What a train_fn leaves: one epoch of ``metrics`` in the workdir; nothing stopped it."""
  os.makedirs(workdir, exist_ok=True)
  with open(os.path.join(workdir, "metrics.jsonl"), "w") as f:
    f.write(json.dumps({"epoch": 1, **metrics}) + "\n")
  return {"stopped": None}


def command_kwargs(tmp_path) -> dict:
  """``idim.run``'s arguments beside the config: two seeds, workdirs and results in tmp_path."""
  return dict(
    seeds=[0, 1],
    data=DataLocations({}, None),
    workdir_root=str(tmp_path / "runs"),
    results_dir=str(tmp_path / "results"),
    allow_dirty=True,
  )


def runlocal_fc_mnist_search(accuracy_at) -> dict[int, float]:
  """The reference: ``idim.search`` as the runlocal FC-MNIST command runs it, 12 bisections."""
  return idim.search(
    accuracy_at,
    grid=[16, 64, 256, 1024, 4096, 16384],
    levels=[0.9],
    big_d=101_770,
    factor=4,
    bisections=12,
  )


def fake_trainer(step_at_seed: dict[int, int], trained: list):
  """A train_fn that writes one epoch whose accuracy is a step in d: 0.95 from step_at_seed[seed].

  SGD gets 1.0, so the 0.9 threshold is 0.9; nothing is computed.
  """

  def train_fn(config, workdir):
    trained.append(os.path.basename(workdir))
    if config.method == "sgd":
      accuracy = 1.0
    else:
      accuracy = 0.95 if config.bases.d >= step_at_seed[config.seed] else 0.5
    return write_epoch(workdir, validation_accuracy=accuracy)

  return train_fn


def test_command_searches_with_runs_resumes_and_rebuilds_from_records(tmp_path, monkeypatch):
  plots = []
  monkeypatch.setattr(idim, "plot", lambda report, states, path: plots.append(path))
  spec = f"{CONFIG}:runlocal,pairs=fc-mnist,methods=fpd,bisections=12,rate_rule=capped"
  kwargs = command_kwargs(tmp_path)
  trained = []
  written = idim.run(spec, train_fn=fake_trainer({0: 300, 1: 400}, trained), **kwargs)
  # The reference: the same search on the mean of the two seeds' steps.
  tried = runlocal_fc_mnist_search(
    lambda d: ((0.95 if d >= 300 else 0.5) + (0.95 if d >= 400 else 0.5)) / 2
  )
  assert idim.bracket(tried, 0.9) == (399, 400)
  assert len(trained) == 2 * (1 + len(tried))  # every (d, seed) and the baselines, once each
  text = pathlib.Path(written[0]).read_text()
  seed_0 = min(d for d in tried if d >= 300)
  row = (
    "| FC-MNIST | 101,770 | validation accuracy | 100.00 \u00b1 0.00 | FPD | 0.9 | 90.00 | "
    f"400 (bracket 399..400) | 400 | {idim.log_spread([seed_0, 400])} | \u2014 |"
  )
  assert row in text
  assert "| FPD | 362 | 72.50 \u00b1 31.82 | 2 finished |" in text
  records = os.path.join(str(tmp_path / "results"), "runs", os.path.basename(written[0])[:-3])
  assert len(os.listdir(records)) == len(trained)
  # The file is rewritten after the baseline, after each d and at the end.
  assert plots == [written[1]] * (1 + len(tried) + 1)

  def never(config, workdir):
    raise AssertionError("a done run was trained again")

  # A rerun trains nothing and writes once; with the workdirs gone, the
  # records rebuild the same table.
  del plots[:]
  assert idim.run(spec, train_fn=never, **kwargs) == written
  assert row in pathlib.Path(written[0]).read_text()
  shutil.rmtree(tmp_path / "runs")
  idim.run(spec, train_fn=never, **kwargs)
  assert row in pathlib.Path(written[0]).read_text()
  assert plots == [written[1]] * 2


def test_command_searches_each_d_s_rate_and_rebuilds_from_records(tmp_path, monkeypatch):
  """The searched rule: the first seed tries rates, the others train at the lowest loss's."""
  monkeypatch.setattr(idim, "plot", lambda report, states, path: None)
  module = config_module()
  arg = module.parse("runlocal,pairs=fc-mnist,methods=fpd")

  def best_log2(d):  # below d = 300 two doublings above the start, from it two halvings
    return module.search_start(arg, "fc", "mnist", "fpd", d) + (2 if d < 300 else -2)

  trained = []

  def train_fn(config, workdir):
    trained.append((config.seed, config.bases.d, config.learning_rate[config.method]))
    log2 = round(math.log2(config.learning_rate[config.method]))
    if config.method == "sgd":
      loss, accuracy = 0.1, 1.0
    else:
      loss = (log2 - best_log2(config.bases.d)) ** 2 + 0.1
      # Only the best rate reaches the threshold: a wrong pick would move d_int.
      good = config.bases.d >= 300 and log2 == best_log2(config.bases.d)
      accuracy = 0.95 if good else 0.5
    return write_epoch(workdir, train_loss=loss, validation_accuracy=accuracy)

  spec = f"{CONFIG}:runlocal,pairs=fc-mnist,methods=fpd,bisections=12"
  kwargs = command_kwargs(tmp_path)
  written = idim.run(spec, train_fn=train_fn, **kwargs)
  tried = runlocal_fc_mnist_search(lambda d: 0.95 if d >= 300 else 0.5)
  assert idim.bracket(tried, 0.9) == (299, 300)
  for d in tried:
    start, best = module.search_start(arg, "fc", "mnist", "fpd", d), best_log2(d)
    # The first seed: the three first tries, then one step past the best.
    expected = range(start - 1, start + 4) if best > start else range(start - 3, start + 2)
    assert sorted(round(math.log2(lr)) for s, e, lr in trained if e == d and s == 0) == list(
      expected
    )
    # The other seed: once, at the chosen rate.
    assert [lr for s, e, lr in trained if e == d and s == 1] == [2.0**best]
  assert len(trained) == len(set(trained)) == 2 + 6 * len(tried)
  text = pathlib.Path(written[0]).read_text()
  assert "| FPD | 0.9 | 90.00 | 300 (bracket 299..300) |" in text
  start = module.search_start(arg, "fc", "mnist", "fpd", 1024)
  assert (
    f"| 2^{start - 3}: 1.100, 2^{start - 2}: 0.100*, 2^{start - 1}: 1.100, 2^{start}: 4.100, "
    f"2^{start + 1}: 9.100 |"
  ) in text
  assert "- Rate search at every d: the first seed trains at powers of two" in text
  assert "the span's end" not in text  # every best rate was inside the tries
  assert f"over {len(trained)} finished run(s)" in text  # the header counts the tries too

  def never(config, workdir):
    raise AssertionError("a done run was trained again")

  shutil.rmtree(tmp_path / "runs")  # the records alone rebuild the same file
  assert idim.run(spec, train_fn=never, **kwargs) == written
  rebuilt = pathlib.Path(written[0]).read_text()
  assert [x for x in rebuilt.splitlines() if x.startswith("| FPD")] == [
    x for x in text.splitlines() if x.startswith("| FPD")
  ]


def test_a_tried_rate_s_loss_and_state(tmp_path):
  """Finished: its final loss. Diverged (even before any epoch's metrics) or not run: inf."""
  from experiments import runs as runs_lib
  from random_bases import config_lib

  def run_with(name, status, metrics):
    workdir = tmp_path / name
    workdir.mkdir()
    (workdir / "metrics.jsonl").write_text("".join(json.dumps(m) + "\n" for m in metrics))
    if status:
      (workdir / runs_lib.STATUS_FILE).write_text(json.dumps({"status": status, "epochs": 1}))
    return runs_lib.Run({"name": name}, 0, config_lib.base_config(), str(workdir), None)

  row = {"epoch": 1, "train_loss": 0.25}
  assert idim.run_loss(run_with("done", "finished", [row]), "train_loss") == (0.25, "finished")
  assert idim.run_loss(run_with("blown", "diverged", []), "train_loss") == (math.inf, "diverged")
  assert idim.run_loss(run_with("killed", None, [row]), "train_loss") == (math.inf, "not run")
  nan = run_with("nan", "finished", [{"epoch": 1, "train_loss": math.nan}])
  assert idim.run_loss(nan, "train_loss") == (math.inf, "finished")
