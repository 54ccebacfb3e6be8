"""Intrinsic dimension in one command: d_int of FPD and RBD for any model and data.

  python -m experiments.intrinsic_dimension --config=configs/intrinsic_dimension.py[:arg] \
      --data_root=DIR [--data=fashion_mnist=/usr/share/datasets/fashion-mnist] [--seeds=0,1,2]

Li, Farkhoor, Liu & Yosinski (ICLR 2018): train in a fixed random subspace,
theta = theta_0 + P c with P in R^{D x d} (FPD), and call

    d_int(f) = min { d : A(d) >= f * A_SGD },

the smallest d whose accuracy A(d) reaches the fraction f of the accuracy
A_SGD of training all D parameters (d_int90: f = 0.9). RBD's counterpart
re-draws P every step. Accuracies are means over seeds.

The search (pure functions, no training: ``search``, ``bracket``,
``estimate``) evaluates a coarse geometric grid ``d_min * factor^k``, walks
past its ends while the threshold is crossed below the grid or never
reached in it (down to d = 1, up to d = D), then bisects in log d on the
bracket [lo, hi] (lo: the largest d tried below the smallest d reaching
it, hi) at sqrt(lo hi), for ``bisections`` steps or until hi = lo + 1. It
assumes A(d) crosses the threshold once inside the bracket. Reported per
threshold: d_int = hi (the smallest d tried that reaches it), the bracket
(the grid's uncertainty), the crossing interpolated linearly in log d
between lo and hi, and each seed's own d_int on the same d's (the seeds'
uncertainty).

Under the config's ``searched`` rate rule each d first runs a line search
over powers of two on the first seed (``search_rate``: the lowest final
training loss, a diverged run counting as infinite), and the other seeds
train at the rate it picks; d's accuracy is the mean over the seeds at
that rate.

The running (``measure``): each pair's SGD baseline, then per method the
search, each (method, d, rate, seed) an ordinary run of the runner
(``experiments/runs.py``): its own workdir, resumed when killed, skipped
when done, its record under ``<records_dir>/<results name>/`` when it ends,
so a killed search goes on where it stopped and the results file is
rebuilt from committed records without training (the search replays: its
next d depends only on accuracies already recorded). A diverged run counts
as accuracy 0 (it solved nothing) and is named in the results. After every
d the results file (``<results_dir>/<name>.md``, named as
``experiments/reproduce.py`` names them) and its plot are rewritten.
"""

from __future__ import annotations

import dataclasses
import math
import os
import sys
import time
from collections.abc import Callable, Mapping, Sequence

# --- the search: pure functions -----------------------------------------------------------


def check_fractions(fractions: Sequence[float]) -> tuple[float, ...]:
  """The fractions as floats; a ValueError unless each is in (0, 1] and there is one."""
  if not fractions:
    raise ValueError("fractions is empty; give at least one fraction in (0, 1], e.g. 0.9")
  for fraction in fractions:
    if isinstance(fraction, bool) or not isinstance(fraction, (int, float)):
      raise ValueError(f"fraction={fraction!r} must be a number in (0, 1]")
    if not (0.0 < fraction <= 1.0):  # NaN fails too
      raise ValueError(f"fraction={fraction!r} is outside (0, 1]; allowed: 0 < fraction <= 1")
  return tuple(float(f) for f in fractions)


def check_bisections(bisections: int) -> int:
  if isinstance(bisections, bool) or not isinstance(bisections, int) or bisections < 0:
    raise ValueError(f"bisections={bisections!r} must be an integer >= 0")
  return bisections


def check_span(span: int, field: str = "span") -> int:
  """The rate search's span; a ValueError unless it is an integer >= 1."""
  if isinstance(span, bool) or not isinstance(span, int) or span < 1:
    raise ValueError(f"{field}={span!r} must be an integer >= 1")
  return span


def check_dims(dims: Sequence[int], *, big_d: int, field: str = "grid") -> list[int]:
  """The d's sorted; a ValueError unless each is an integer in [1, D] and there is one."""
  if not dims:
    raise ValueError(f"{field} is empty; give at least one d in [1, D = {big_d:,}]")
  for d in dims:
    if isinstance(d, bool) or not isinstance(d, int):
      raise ValueError(f"{field}: d={d!r} must be an integer in [1, D = {big_d:,}]")
    if d <= 0:
      raise ValueError(f"{field}: d={d} must be >= 1; allowed: 1 <= d <= D = {big_d:,}")
    if d > big_d:
      raise ValueError(
        f"{field}: d={d:,} is beyond D = {big_d:,}, the model's number of parameters; "
        f"allowed: 1 <= d <= {big_d:,}"
      )
  return sorted(set(dims))


def geometric_grid(d_min: int, d_max: int, factor: float, *, big_d: int) -> list[int]:
  """``round(d_min * factor^k)`` for k = 0, 1, ... while <= ``d_max``: the coarse grid.

  Raises a ValueError (naming the field and the allowed values) for d_min or
  d_max outside [1, D], d_max < d_min, or factor <= 1.
  """
  check_dims([d_min], big_d=big_d, field="d_min")
  check_dims([d_max], big_d=big_d, field="d_max")
  if d_max < d_min:
    raise ValueError(f"d_max={d_max} is below d_min={d_min}; allowed: d_min <= d_max")
  if isinstance(factor, bool) or not isinstance(factor, (int, float)) or not factor > 1:
    raise ValueError(f"factor={factor!r} must be a number > 1")
  dims, k = [], 0
  while (d := round(d_min * factor**k)) <= d_max:
    dims.append(d)
    k += 1
  return sorted(set(dims))


def threshold(baseline: float, fraction: float) -> float:
  """f * A_SGD: the accuracy d must reach."""
  (fraction,) = check_fractions([fraction])
  if not math.isfinite(baseline) or baseline <= 0:
    raise ValueError(f"baseline accuracy={baseline!r} must be a finite number > 0")
  return fraction * baseline


def bracket(means: Mapping[int, float], level: float) -> tuple[int | None, int | None]:
  """(lo, hi): hi the smallest d whose accuracy reaches ``level``, lo the largest tried below it.

  hi is None when no d reaches it; lo is None when the smallest d tried does.
  Every d tried below hi is below the level, by hi's definition.
  """
  reaching = [d for d, accuracy in means.items() if accuracy >= level]
  if not reaching:
    return (max(means) if means else None), None
  hi = min(reaching)
  below = [d for d in means if d < hi]
  return (max(below) if below else None), hi


def midpoint(lo: int, hi: int) -> int | None:
  """The integer nearest sqrt(lo hi) strictly inside (lo, hi); None when hi <= lo + 1."""
  if hi <= lo + 1:
    return None
  return min(max(round(math.sqrt(lo * hi)), lo + 1), hi - 1)


def search(
  accuracy_at: Callable[[int], float],
  *,
  grid: Sequence[int],
  levels: Sequence[float],
  big_d: int,
  factor: float,
  bisections: int,
) -> dict[int, float]:
  """Grid, walk, bisect: every d tried and its accuracy (``accuracy_at``, a mean over seeds).

  Args:
    accuracy_at: d -> the accuracy trained at d (called once per d).
    grid: the coarse grid, tried first (checked: integers in [1, D]).
    levels: the accuracies to bracket (f * A_SGD per fraction), in order.
    big_d: D; no d beyond it is tried.
    factor: the walk's ratio past the grid's ends.
    bisections: bisection steps per level.
  """
  grid = check_dims(list(grid), big_d=big_d)
  check_bisections(bisections)
  tried: dict[int, float] = {}

  def at(d: int) -> float:
    if d not in tried:
      tried[d] = accuracy_at(d)
    return tried[d]

  for d in grid:
    at(d)
  for level in levels:
    while True:  # walk down while the smallest d tried already reaches the level
      lo, hi = bracket(tried, level)
      if lo is not None or hi is None or hi == 1:
        break
      at(max(1, min(hi - 1, math.floor(hi / factor))))
    while True:  # walk up while no d tried reaches it
      lo, hi = bracket(tried, level)
      if hi is not None or lo >= big_d:
        break
      at(min(big_d, max(lo + 1, math.ceil(lo * factor))))
    for _ in range(bisections):
      lo, hi = bracket(tried, level)
      middle = None if lo is None or hi is None else midpoint(lo, hi)
      if middle is None:
        break
      at(middle)
  return dict(sorted(tried.items()))


def search_rate(
  loss_at: Callable[[int], float], *, start: int, span: int
) -> tuple[int, dict[int, float]]:
  """The log2 rate with the lowest loss, by a line search over powers of two.

  Tries ``start - 1``, ``start`` and ``start + 1``, then steps down (up) by
  one while the lowest loss is at the smallest (largest) rate tried, never
  more than ``span`` from ``start``. A loss of ``inf`` (a diverged run)
  never wins over a finite one; while every rate tried diverges the search
  steps down. Ties go to the smaller rate.

  Args:
    loss_at: log2 rate -> the loss trained at it (called once per rate).
    start: the first rate's log2.
    span: the farthest the search goes from ``start`` (>= 1).

  Returns:
    (the chosen log2, every log2 tried -> its loss).
  """
  check_span(span)
  tried: dict[int, float] = {}
  for log2 in (start - 1, start, start + 1):
    tried[log2] = loss_at(log2)

  def best() -> int:
    return min(tried, key=lambda k: (tried[k], k))

  while True:
    chosen = best()
    if chosen == min(tried) and chosen > start - span:
      tried[chosen - 1] = loss_at(chosen - 1)
    elif chosen == max(tried) and chosen < start + span and math.isfinite(tried[chosen]):
      tried[chosen + 1] = loss_at(chosen + 1)
    else:
      return chosen, dict(sorted(tried.items()))


@dataclasses.dataclass(frozen=True)
class Estimate:
  """d_int at one fraction, from the accuracies at the d's tried.

  Attributes:
    fraction, level: f and f * A_SGD.
    lo, hi: the bracket (``bracket``); ``hi`` is d_int, None if never reached.
    interpolated: the crossing linear in log d between (lo, A(lo)) and (hi, A(hi)).
    per_seed: each seed's d_int on the same d's (None: that seed never reaches it).
  """

  fraction: float
  level: float
  lo: int | None
  hi: int | None
  interpolated: float | None
  per_seed: tuple[int | None, ...]

  @property
  def d_int(self) -> int | None:
    return self.hi

  def describe(self) -> str:
    """d_int in words: "750 (bracket 640..750)", "<= 16", "> 16,384"."""
    if self.hi is None:
      return f"> {self.lo:,} (not reached)" if self.lo is not None else "not measured"
    if self.lo is None:
      return f"\u2264 {self.hi:,} (reached at the smallest d tried)"
    return f"{self.hi:,} (bracket {self.lo:,}..{self.hi:,})"


def estimate(curve: Mapping[int, Sequence[float]], *, baseline: float, fraction: float) -> Estimate:
  """d_int at ``fraction`` of ``baseline`` from ``curve``: d -> the accuracy of each seed.

  Seeds are matched by position: ``curve[d][i]`` is seed i's accuracy at d,
  and every d has the same seeds. The mean curve gives d_int and its
  bracket; seed i's own curve gives its d_int.
  """
  level = threshold(baseline, fraction)
  counts = {len(v) for v in curve.values()}
  if len(counts) > 1 or 0 in counts:
    raise ValueError(f"every d needs the same seeds' accuracies; counts per d: {sorted(counts)}")
  means = {d: sum(v) / len(v) for d, v in curve.items()}
  lo, hi = bracket(means, level)
  interpolated = None
  if lo is not None and hi is not None:
    a_lo, a_hi = means[lo], means[hi]
    t = (level - a_lo) / (a_hi - a_lo) if a_hi > a_lo else 1.0
    interpolated = math.exp(math.log(lo) + t * (math.log(hi) - math.log(lo)))
  seeds = counts.pop() if counts else 0
  per_seed = tuple(bracket({d: v[i] for d, v in curve.items()}, level)[1] for i in range(seeds))
  return Estimate(fraction, level, lo, hi, interpolated, per_seed)


def log_spread(values: Sequence[int | None]) -> str:
  """The seeds' d_int as their geometric mean x/ geometric std, and the values."""
  found = [v for v in values if v is not None]
  text = ", ".join("\u2014" if v is None else f"{v:,}" for v in values)
  if len(found) < 2:
    return text or "\u2014"
  logs = [math.log(v) for v in found]
  mean = sum(logs) / len(logs)
  std = math.sqrt(sum((x - mean) ** 2 for x in logs) / (len(logs) - 1))
  return f"{math.exp(mean):,.0f} \u00d7/ {math.exp(std):.2f} ({text})"


# --- running ----------------------------------------------------------------------------------


@dataclasses.dataclass
class PairState:
  """One pair's runs as the measurement has made them: the baseline and per method per d."""

  spec: dict
  baseline: list
  points: dict[str, dict[int, list]] = dataclasses.field(default_factory=dict)
  # The searched rule's tries: method -> d -> log2 rate -> the first seed's run.
  tries: dict[str, dict[int, dict[int, object]]] = dataclasses.field(default_factory=dict)


def run_accuracy(run, metric: str) -> tuple[float | None, str]:
  """A run's final ``metric`` and its state: (value, "ok"), (0.0, "diverged"), (None, "not run")."""
  from experiments import runs as runs_lib

  found = runs_lib.run_result(run)
  status = (found.status or {}).get("status")
  if status == "diverged":
    return 0.0, "diverged"
  if found.final is None or found.final.get(metric) is None or status is None:
    return None, "not run"
  return float(found.final[metric]), status


def run_loss(run, metric: str) -> tuple[float, str]:
  """A tried rate's loss and state: (final ``metric``, "finished"), or (inf, why not)."""
  from experiments import runs as runs_lib

  found = runs_lib.run_result(run)
  status = (found.status or {}).get("status")
  if status == "diverged":  # maybe before its first epoch's metrics
    return math.inf, status
  if status is None or found.final is None:
    return math.inf, "not run"
  value = found.final.get(metric)
  if status != "finished" or value is None or not math.isfinite(value):
    return math.inf, status
  return float(value), status


def _execute_all(runs: list, train_fn, progress, planned: set[str]) -> int:
  """Trains the runs that are not done (a run with a record or a finished workdir is).

  ``planned``: the workdirs the progress count includes already (the coarse
  plan); a bisection's run adds itself. Returns how many runs trained.
  """
  from experiments import runs as runs_lib

  runs_lib.export_records(runs)
  trained = 0
  for run in runs:
    if not runs_lib.is_done(run):
      if run.workdir not in planned:
        progress.grow(1)
      progress.start(run)
      tic = time.perf_counter()
      status, _ = runs_lib.execute(run, train_fn)
      progress.finish(run, time.perf_counter() - tic, status)
      trained += 1
  return trained


def _mean(runs: list, metric: str) -> float:
  values = [run_accuracy(run, metric)[0] for run in runs]
  if any(v is None for v in values):
    raise RuntimeError(f"runs without a result after running: {[r.workdir for r in runs]}")
  return sum(values) / len(values)


def measure(
  sweep,
  *,
  runs_of: Callable[[dict], list],
  train_fn,
  write: Callable[[dict[str, PairState]], None],
) -> dict[str, PairState]:
  """Each pair's baseline, then each method's search; ``write`` after every d that trained.

  Args:
    sweep: ``reproduce.Sweep`` of the config (its ``report()['intrinsic_dimension']``).
    runs_of: entry -> its runs, one per seed (the first seed only for ``"seeds": 1``).
    train_fn: the trainer.
    write: called with every pair's state so far, after each d whose runs
      trained (so a killed search leaves its file current) and once at the
      end; not after recorded runs, so a replay from records writes once.
  """
  from experiments import runs as runs_lib

  spec = sweep.report["intrinsic_dimension"]
  arg = sweep.module.parse(sweep.arg)
  # The count starts with the plan's runs not done (baselines and grids); the
  # walks and bisections add theirs as the search asks for them.
  plan = [run for entry in sweep.entries for run in runs_of(entry)]
  planned = {run.workdir for run in plan if not runs_lib.is_done(run)}
  progress = runs_lib.Progress(len(planned))
  states: dict[str, PairState] = {}
  for pair in spec["pairs"]:
    model, dataset, metric = pair["model"], pair["dataset"], pair["metric"]
    baseline_runs = runs_of(sweep.module.point(arg, model, dataset, "sgd"))
    state = states[pair["key"]] = PairState(pair, baseline_runs)
    if _execute_all(baseline_runs, train_fn, progress, planned):
      write(states)
    baseline = _mean(baseline_runs, metric)
    levels = [threshold(baseline, f) for f in spec["fractions"]] if baseline > 0 else []
    if not levels:
      logging_warning(f"{pair['title']}: the SGD baseline has accuracy 0; nothing to search")
      continue
    for method in spec["methods"]:
      points = state.points.setdefault(method, {})
      tries = state.tries.setdefault(method, {})

      def searched_log2(d, model=model, dataset=dataset, method=method, tries=tries):
        """The searched rule's log2 rate at d (its tries trained), or None for the other rules."""
        search_spec = spec.get("rate_search")
        if not search_spec:
          return None
        tried = tries.setdefault(d, {})

        def loss_at(log2):
          entry = {**sweep.module.point(arg, model, dataset, method, d, log2), "seeds": 1}
          tried[log2] = runs_of(entry)[0]
          if _execute_all([tried[log2]], train_fn, progress, planned):
            write(states)
          return run_loss(tried[log2], search_spec["metric"])[0]

        start = sweep.module.search_start(arg, model, dataset, method, d)
        return search_rate(loss_at, start=start, span=search_spec["span"])[0]

      def accuracy_at(d, model=model, dataset=dataset, method=method, points=points, metric=metric):
        log2 = searched_log2(d)
        points[d] = runs_of(sweep.module.point(arg, model, dataset, method, d, log2))
        if _execute_all(points[d], train_fn, progress, planned):
          write(states)
        return _mean(points[d], metric)

      search(
        accuracy_at,
        grid=pair["grid"],
        levels=levels,
        big_d=pair["D"],
        factor=spec["factor"],
        bisections=spec["bisections"],
      )
  write(states)
  return states


def logging_warning(text: str) -> None:
  from absl import logging

  logging.warning("%s", text)


# --- the results file --------------------------------------------------------------------------


def _pct(value: float | None) -> str:
  return "\u2014" if value is None else f"{100 * value:.2f}"


def _mean_std(values: list[float]) -> str:
  from experiments import results as results_lib

  if not values:
    return "\u2014"
  mean, std = results_lib.mean_std([100 * v for v in values])
  return f"{mean:.2f}" if std is None else f"{mean:.2f} \u00b1 {std:.2f}"


def pair_summary(state: PairState, spec: dict) -> dict:
  """Baseline, per method the curve (complete d's only), the estimates and the rate search's
  tries (by ``spec['rate_search']['metric']``), failures named."""
  fractions = spec["fractions"]
  search_metric = (spec.get("rate_search") or {}).get("metric")
  metric = state.spec["metric"]
  base = [run_accuracy(r, metric) for r in state.baseline]
  baseline_values = [v for v, _ in base if v is not None]
  done = len(baseline_values) == len(base) and baseline_values
  summary = {"baseline": baseline_values, "methods": {}, "failures": []}
  for method, points in state.points.items():
    curve, states, rates = {}, {}, {}
    for d, runs in sorted(points.items()):
      found = [run_accuracy(r, metric) for r in runs]
      states[d] = [s for _, s in found]
      rates[d] = runs[0].entry.get("rate", "\u2014")
      for run, (_, s) in zip(runs, found, strict=True):
        if s in ("diverged", "stopped"):
          summary["failures"].append(f"{run.name}, seed {run.seed}: {s}")
      if all(v is not None for v, _ in found):
        curve[d] = [v for v, _ in found]
    estimates = []
    if done and curve and sum(baseline_values) > 0:
      baseline = sum(baseline_values) / len(baseline_values)
      estimates = [estimate(curve, baseline=baseline, fraction=f) for f in fractions]
    summary["methods"][method] = {
      "curve": curve,
      "states": states,
      "rates": rates,
      "tries": {
        d: {log2: run_loss(run, search_metric) for log2, run in tried.items()}
        for d, tried in state.tries.get(method, {}).items()
        if search_metric
      },
      "estimates": estimates,
    }
  return summary


def state_runs(state: PairState) -> list:
  """Every run of the pair: the baseline, each d's seeds and the rate search's tries, once each."""
  runs = list(state.baseline)
  runs += [r for points in state.points.values() for rs in points.values() for r in rs]
  runs += [r for tries in state.tries.values() for tried in tries.values() for r in tried.values()]
  unique = {run.workdir: run for run in runs}
  return list(unique.values())


def points_rate(state: PairState, method: str, d: int) -> float | None:
  """The learning rate d's seeds trained at (None before they ran)."""
  runs = state.points.get(method, {}).get(d)
  return float(runs[0].config.learning_rate[method]) if runs else None


def _tries_text(tries: Mapping[int, tuple[float, str]] | None, chosen: float | None) -> str:
  """ "2^2: 0.412, 2^3: 0.351*, 2^4: diverged" (* the rate the seeds trained at)."""
  if not tries:
    return "\u2014"
  cells = []
  for log2, (loss, status) in sorted(tries.items()):
    star = "*" if chosen is not None and chosen == 2.0**log2 else ""
    text = f"{loss:.3f}" if math.isfinite(loss) else status
    cells.append(f"2^{log2}: {text}{star}")
  # The search steps past a best rate at either end of the tries unless its
  # span stops it, so a chosen end rate is one the span cut short.
  ends = (2.0 ** min(tries), 2.0 ** max(tries))
  edge = " (the span's end: a rate beyond it was not tried)" if chosen in ends else ""
  return ", ".join(cells) + edge


def markdown(report: dict, states: dict[str, PairState], header: list[tuple[str, str]]) -> str:
  """The results file: per pair the baseline, d_int per method and fraction, and the curve."""
  from experiments import results as results_lib
  from experiments import runs as runs_lib

  spec = report["intrinsic_dimension"]
  all_runs = [run for state in states.values() for run in state_runs(state)]
  lines = results_lib.head(report, header, [runs_lib.run_result(r).status for r in all_runs])
  lines += [
    f"- Search: coarse grid d_min * {spec['factor']:g}^k, walked past its ends while "
    f"needed (1 <= d <= D), then {spec['bisections']} bisection step(s) in log d per "
    f"threshold; thresholds: {', '.join(f'{f:g}' for f in spec['fractions'])} of the SGD "
    "baseline's accuracy (mean over seeds)",
    f"- Bases: structure {spec['structure']}, unit-length directions, one compartment; "
    f"rate rule: {spec['rate_rule']} (configs/intrinsic_dimension.py states the rules; "
    "each d's rate is in the curve table)",
    *(
      [
        f"- Rate search at every d: the first seed trains at powers of two around the capped "
        f"rule's rate, at most {spec['rate_search']['span']} halvings or doublings from it, "
        f"and the other seeds at the rate with the lowest final "
        f"{spec['rate_search']['metric'].replace('_', ' ')} (diverged: infinite); each d's "
        "tries are in the curve table, the chosen one starred"
      ]
      if spec.get("rate_search")
      else []
    ),
    "",
    "d_int: the smallest d tried whose mean accuracy reaches the threshold; bracket: the "
    "largest d tried below it and d_int (the grid's uncertainty); interpolated: the crossing "
    "linear in log d inside the bracket; seeds: each seed's own d_int on the same d's, as "
    "geometric mean \u00d7/ geometric std (the seeds' uncertainty).",
    "",
    "| pair | D | protocol metric | SGD baseline % | method | fraction | threshold % | "
    "d_int | interpolated | seeds | Li et al. d_int90 |",
    "|" + " --- |" * 11,
  ]
  curves_lines, failures = [], []
  for key, state in states.items():
    pair = state.spec
    summary = pair_summary(state, spec)
    failures += summary["failures"]
    published = pair.get("published")
    for method, found in summary["methods"].items():
      for est in found["estimates"] or [None]:
        cells = [
          pair["title"],
          f"{pair['D']:,}",
          pair["metric"].replace("_", " "),
          _mean_std(summary["baseline"]),
          method.upper(),
          "\u2014" if est is None else f"{est.fraction:g}",
          "\u2014" if est is None else _pct(est.level),
          "not yet" if est is None else est.describe(),
          "\u2014" if est is None or est.interpolated is None else f"{est.interpolated:,.0f}",
          "\u2014" if est is None else log_spread(est.per_seed),
          (
            f"{published:,} (FPD, Adam)"
            if published and method == "fpd" and (est is None or est.fraction == 0.9)
            else "\u2014"
          ),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    if not summary["methods"]:
      li_text = f"{published:,} (FPD, Adam)" if published else "\u2014"
      lines.append(
        f"| {pair['title']} | {pair['D']:,} | {pair['metric'].replace('_', ' ')} | "
        f"{_mean_std(summary['baseline'])} | \u2014 | | | not yet | | | {li_text} |"
      )
    curves_lines += [
      "",
      f"### {pair['title']} ({key}): accuracy % against d",
      "",
      f"Protocol: {pair['protocol']}. Baseline (SGD, rate {state.baseline[0].entry['rate']}): "
      f"{_mean_std(summary['baseline'])}.",
      "",
      "| method | d | acc % (mean \u00b1 std over seeds) | runs | rate | rates tried: "
      "first seed's final training loss |",
      "| --- | --- | --- | --- | --- | --- |",
    ]
    for method, found in summary["methods"].items():
      for d, run_states in found["states"].items():
        values = found["curve"].get(d, [])
        counted = ", ".join(f"{run_states.count(s)} {s}" for s in sorted(set(run_states)))
        curves_lines.append(
          f"| {method.upper()} | {d:,} | {_mean_std(values)} | {counted} | {found['rates'][d]} "
          f"| {_tries_text(found['tries'].get(d), points_rate(state, method, d))} |"
        )
  lines += curves_lines
  lines += ["", "Notes:", ""] + [f"- {n}" for n in report.get("notes", [])]
  lines += [f"- {f}" for f in failures]
  return "\n".join(lines) + "\n"


def plot(report: dict, states: dict[str, PairState], path: str) -> None:
  """Accuracy against d (log axis) per pair: seeds as dots, means as lines, SGD and thresholds."""
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  import matplotlib.ticker

  spec = report["intrinsic_dimension"]
  count = max(1, len(states))
  cols = min(3, count)
  rows = math.ceil(count / cols)
  fig, axes = plt.subplots(rows, cols, figsize=(5.2 * cols, 4.0 * rows), squeeze=False)
  colors = {"fpd": "tab:blue", "rbd": "tab:orange"}
  for ax, state in zip(axes.flat, states.values(), strict=False):
    pair = state.spec
    summary = pair_summary(state, spec)
    if summary["baseline"]:
      baseline = sum(summary["baseline"]) / len(summary["baseline"])
      ax.axhline(100 * baseline, color="black", lw=1, label="SGD (all D)")
      for f in spec["fractions"]:
        level = 100 * f * baseline
        ax.axhline(level, color="gray", lw=1, ls="--")
        # x in axes units, y in data units: the label sits at the left end of its line.
        ax.text(0.01, level, f"{f:g} \u00d7 SGD", transform=ax.get_yaxis_transform(),
                va="bottom", fontsize=7, color="gray")  # fmt: skip
    for method, found in summary["methods"].items():
      ds = sorted(found["curve"])
      if not ds:
        continue
      means = [100 * sum(found["curve"][d]) / len(found["curve"][d]) for d in ds]
      ax.plot(ds, means, "-o", ms=3, color=colors[method], label=method.upper())
      for d in ds:
        ax.plot([d] * len(found["curve"][d]), [100 * v for v in found["curve"][d]], ".",
                color=colors[method], alpha=0.4, ms=4)  # fmt: skip
      for est in found["estimates"]:
        if est.d_int is not None:
          ax.axvline(est.d_int, color=colors[method], lw=0.8, ls=":")
    if pair.get("published"):
      ax.axvline(pair["published"], color="green", lw=1, ls="-.", label="Li et al. d_int90")
    ax.set_xscale("log")
    ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    ax.set_xlabel("d")
    ax.set_ylabel(f"{pair['metric'].replace('_', ' ')} %")
    ax.set_title(f"{pair['title']} (D = {pair['D']:,})", fontsize=10)
    ax.legend(fontsize=7, loc="lower right")
  for ax in list(axes.flat)[count:]:
    ax.axis("off")
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)


def write_results(
  report: dict, states: dict[str, PairState], header: list[tuple[str, str]], results_dir: str
) -> list[str]:
  """``<results_dir>/<name>.md`` and ``<name>.png``; returns their paths."""
  os.makedirs(results_dir, exist_ok=True)
  path = os.path.join(results_dir, f"{report['name']}.md")
  plot_path = os.path.join(results_dir, f"{report['name']}.png")
  plot(report, states, plot_path)
  text = markdown(report, states, header)
  text += f"\n![{os.path.basename(plot_path)}]({os.path.basename(plot_path)})\n"
  with open(path, "w") as f:
    f.write(text)
  return [path, plot_path]


# --- the command -----------------------------------------------------------------------------


def run(
  spec: str,
  *,
  seeds: list[int],
  data,
  workdir_root: str,
  results_dir: str,
  records_dir: str | None = None,
  allow_dirty: bool = False,
  train_fn=None,
) -> list[str]:
  """Measures d_int for the config ``spec`` (resuming) and writes the results; returns the files.

  Raises:
    ValueError: a bad config, argument (fractions, grid, d beyond D ...) or data
      location, or a dirty tree without ``allow_dirty``, before anything trains.
  """
  from experiments import reproduce
  from experiments import runs as runs_lib
  from random_bases import train

  train_fn = train_fn or train.train_and_evaluate
  if not seeds:
    raise ValueError("--seeds is empty; give at least one seed")
  sweep = reproduce.Sweep.load(spec, only="", results_dir=results_dir, records_dir=records_dir)
  if "intrinsic_dimension" not in sweep.report:
    raise ValueError(
      f"config {spec!r} has no intrinsic_dimension report; use experiments.reproduce"
    )

  def runs_of(entry: dict) -> list:
    return sweep.runs_of(entry, seeds, data=data, workdir_root=workdir_root)

  for entry in sweep.entries:  # every known run's config checked before anything trains
    runs_of(entry)
  runs_lib.require_clean(allow_dirty)
  command = reproduce.command_line(
    spec,
    seeds=seeds,
    data=data,
    workdir_root=workdir_root,
    results_dir=results_dir,
    records_dir=records_dir,
    only="",
    module="experiments.intrinsic_dimension",
  )
  head = reproduce.header(command, seeds, "", sweep.records)
  written: list[str] = []

  def write(states):
    written[:] = write_results(sweep.report, states, head, results_dir)

  measure(sweep, runs_of=runs_of, train_fn=train_fn, write=write)
  return written


def _define_flags() -> None:
  from experiments import reproduce

  reproduce.define_sweep_flags(
    config_help="configs/intrinsic_dimension.py[:arg]",
    seeds_help="seeds; every d runs once per seed",
  )


def main(argv) -> None:
  from absl import flags

  from experiments import reproduce
  from experiments.runs import DataLocations
  from random_bases import cli
  from random_bases import workdir as workdir_lib

  if len(argv) > 1:
    sys.exit(f"Unexpected arguments: {argv[1:]} (--help lists the flags)")
  workdir_lib.quiet_orbax_logs()
  values = flags.FLAGS

  def go() -> None:
    written = run(
      values.config,
      seeds=reproduce.parse_seeds(values.seeds),
      data=DataLocations.parse(values.data, values.data_root),
      workdir_root=os.path.expanduser(values.workdir_root),
      results_dir=os.path.expanduser(values.results_dir),
      records_dir=values.records_dir and os.path.expanduser(values.records_dir),
      allow_dirty=values.allow_dirty,
    )
    print("Wrote " + ", ".join(written), flush=True)

  cli.report_errors(
    go, interrupted=lambda: reproduce.interrupted_message("experiments.intrinsic_dimension")
  )


if __name__ == "__main__":
  from absl import app

  from random_bases import cli

  _define_flags()
  app.run(main, flags_parser=cli.parse_absl_flags)
