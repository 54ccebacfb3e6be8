"""The learning-rate tuner: PAPER.md's search, coarse to fine, and results/table4.md.

PAPER.md: powers of two between given bounds (2^-19 .. 2^7), each trial
trained on a random 75 % of the training split, the lowest loss on the other
25 % wins. Trying all 27 powers for every method and pair is more than this
machine affords, so the search is coarse to fine (``search``): the config's
coarse grid first, then single steps around the best until both its
neighbours have been tried, never past the paper's bounds. If the losses are
unimodal in log2 of the rate, that finds the same power as the full grid.

Run through ``python -m experiments.reproduce --config=configs/table4.py:...``;
every trial is an ordinary run of the runner (``experiments/runs.py``: own
workdir and record, skipped when done, resumed when killed), so an
interrupted search picks up where it stopped, and its table is rewritten
from the records alone when the workdirs are gone. The chosen rates are printed as the lines of
configs/learning_rates.py TUNED, the one place the table configs read them.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable

from absl import logging

from configs import common, learning_rates
from experiments import results as results_lib
from experiments import runs as runs_lib


def best_rate(losses: dict[int, float]) -> int | None:
  """The power with the lowest finite loss (the smaller on a tie); None if none is finite."""
  finite = [(loss, k) for k, loss in sorted(losses.items()) if math.isfinite(loss)]
  return min(finite)[1] if finite else None


def search(
  loss_at: Callable[[int], float], *, coarse: list[int], lo: int, hi: int
) -> dict[int, float]:
  """Coarse to fine over powers of two; returns every power tried and its loss.

  Args:
    loss_at: log2 of the rate -> the held-out loss (inf for a diverged trial).
    coarse: the powers tried first.
    lo, hi: the bounds no trial goes past (the paper's 2^-19 and 2^7).

  After the coarse grid, the neighbours (k - 1, k + 1) of the best k are
  tried until both are known or out of bounds; a best at the grid's edge
  walks on past it. If every trial diverges, smaller rates are tried, one
  power at a time, down to ``lo``.
  """
  losses = {k: loss_at(k) for k in coarse}
  while True:
    best = best_rate(losses)
    if best is None:
      todo = [min(losses) - 1] if min(losses) - 1 >= lo else []
    else:
      todo = [k for k in (best - 1, best + 1) if lo <= k <= hi and k not in losses]
    if not todo:
      return losses
    for k in todo:
      losses[k] = loss_at(k)


def trial_entry(entry: dict, log2: int) -> dict:
  """``entry`` (a trial of the same group) at the rate 2**log2."""
  method = entry["method"]
  return {
    **entry,
    "name": f"{entry['group']} 2^{log2}",
    "log2_rate": log2,
    f"learning_rate.{method}": 2.0**log2,
  }


def trial_loss(runs: list[runs_lib.Run], metric: str) -> float:
  """Mean over seeds of the last epoch's ``metric``; inf if any seed diverged."""
  values = []
  for run in runs:
    found = runs_lib.run_result(run)
    value = found.final.get(metric) if found.final else None
    diverged = (found.status or {}).get("status") == "diverged"
    if diverged or value is None or not math.isfinite(value):
      return math.inf
    values.append(value)
  return sum(values) / len(values)


def tune(
  report: dict,
  runs: list[runs_lib.Run],
  *,
  runs_of: Callable[[dict], list],
  train_fn,
  header: list[tuple[str, str]],
  results_dir: str,
) -> list[str]:
  """Searches every group of the sweep (the config's coarse trials) and writes the table.

  Args:
    report: the config's report; ``report["tune"]`` has the bounds and metric.
    runs: the coarse trials at every seed.
    runs_of: entry -> its runs (one per seed), for the refining trials.
    train_fn: the trainer.
    header: the results file's header lines.
    results_dir: where table4.md and its plot go.

  Returns:
    The files written.
  """
  spec = report["tune"]
  groups: dict[str, list[runs_lib.Run]] = {}
  for run in runs:
    groups.setdefault(run.entry["group"], []).append(run)
  progress = runs_lib.Progress(sum(not runs_lib.is_done(r) for r in runs))
  searched: dict[str, dict] = {}
  written: list[str] = []
  for group, group_runs in groups.items():
    template = group_runs[0].entry
    by_rate: dict[int, list[runs_lib.Run]] = {}
    for run in group_runs:
      by_rate.setdefault(run.entry["log2_rate"], []).append(run)

    def loss_at(log2: int, template=template, by_rate=by_rate) -> float:
      if log2 not in by_rate:
        by_rate[log2] = runs_of(trial_entry(template, log2))
        progress.grow(sum(not runs_lib.is_done(r) for r in by_rate[log2]))
      runs_lib.export_records(by_rate[log2])
      for run in by_rate[log2]:
        if not runs_lib.is_done(run):
          progress.start(run)
          tic = time.perf_counter()
          status, _ = runs_lib.execute(run, train_fn)
          progress.finish(run, time.perf_counter() - tic, status)
      return trial_loss(by_rate[log2], spec["metric"])

    coarse = sorted(by_rate)
    losses = search(loss_at, coarse=coarse, lo=spec["lo"], hi=spec["hi"])
    searched[group] = {"entry": template, "losses": losses, "runs": by_rate}
    logging.info(
      "%s: best 2^%s (%s)",
      group,
      best_rate(losses),
      ", ".join(f"2^{k}: {v:.4g}" for k, v in sorted(losses.items())),
    )
    written = write(report, searched, header, results_dir)  # each group when it is done
  return written


def _group_row(result: dict) -> dict:
  entry = result["entry"]
  model, dataset, method = entry["model"], entry["data.dataset"], entry["method"]
  ours = best_rate(result["losses"])
  return {
    "model": model,
    "dataset": dataset,
    "method": method,
    "ours": ours,
    "paper": entry.get("paper", {}).get("log2_rate", (None,))[0],
    "d": entry.get("bases.d"),
    "distribution": entry.get("bases.distribution"),
  }


def _mean_text(finals: list[results_lib.RunResult], key: str) -> str:
  """The mean over seeds of the last epoch's ``key`` (accuracies in %)."""
  values = [r.final[key] for r in finals if r.final and r.final.get(key) is not None]
  if not values:
    return "\u2014"
  mean = sum(values) / len(values)
  return f"{100 * mean:.2f}" if key.endswith("accuracy") else f"{mean:.4f}"


def write(
  report: dict, searched: dict[str, dict], header: list[tuple[str, str]], results_dir: str
) -> list[str]:
  """results/<name>.md (paper's rate and ours side by side) and its plot."""
  from experiments import plots

  os.makedirs(results_dir, exist_ok=True)
  spec = report["tune"]
  metric = spec["metric"]
  statuses = [
    runs_lib.run_result(run).status
    for result in searched.values()
    for trial in result["runs"].values()
    for run in trial
  ]
  lines = results_lib.head(report, header, statuses)
  lines += [
    f"- Search: {spec['grid']}, within the paper's bounds 2^{spec['lo']}..2^"
    f"{spec['hi']}; d = {spec['d']}, {spec['distribution']} directions for RBD/FPD",
    "",
    "| network | data | method | paper log2 | ours log2 | ours \u2212 paper | "
    f"{metric} at ours | held-out acc % at ours | test acc % at ours | trials "
    f"(log2: {metric}) | time |",
    "|" + " --- |" * 11,
  ]
  snippet, plot_groups = [], []
  for result in searched.values():
    row = _group_row(result)
    ours, paper = row["ours"], row["paper"]
    finals = [] if ours is None else [runs_lib.run_result(run) for run in result["runs"][ours]]
    tried = ", ".join(
      f"{k}: {v:.3g}" if math.isfinite(v) else f"{k}: diverged"
      for k, v in sorted(result["losses"].items())
    )
    wall = sum(
      (runs_lib.run_result(run).status or {}).get("wall_seconds", 0.0)
      for trial in result["runs"].values()
      for run in trial
    )
    delta = "\u2014" if None in (ours, paper) else f"{ours - paper:+d}"
    cells = [
      common.MODEL_TITLES[row["model"]],
      common.DATA_TITLES[row["dataset"]],
      common.METHOD_TITLES[row["method"]],
      "\u2014" if paper is None else str(paper),
      "all diverged" if ours is None else str(ours),
      delta,
      _mean_text(finals, metric),
      _mean_text(finals, "heldout_accuracy"),
      _mean_text(finals, "test_accuracy"),
      tried,
      results_lib.format_seconds(wall),
    ]
    lines.append("| " + " | ".join(cells) + " |")
    if ours is not None:
      key = learning_rates.key(
        row["model"],
        row["dataset"],
        row["method"],
        row["d"] or 250,
        row["distribution"] or "normal",
      )
      snippet.append(f"    {key!r}: {ours},  # {metric} {result['losses'][ours]:.4g}")
    plot_groups.append(
      {
        "panel": result["entry"]["panel"],
        "label": result["entry"]["label"],
        "losses": result["losses"],
        "paper": paper,
        "ours": ours,
      }
    )
  lines += ["", "For configs/learning_rates.py (TUNED):", "", "```python"] + snippet + ["```", ""]
  lines += ["Notes:", ""] + [f"- {n}" for n in report.get("notes", [])]
  plot_path = os.path.join(results_dir, f"{report['name']}_tuning.png")
  plots.tuning(plot_groups, plot_path)
  lines += ["", f"![{os.path.basename(plot_path)}]({os.path.basename(plot_path)})", ""]
  path = os.path.join(results_dir, f"{report['name']}.md")
  with open(path, "w") as f:
    f.write("\n".join(lines))
  return [path, plot_path]
