"""The learning-rate tuner: PAPER.md's search, coarse to fine or by successive halving.

PAPER.md: powers of two between given bounds (2^-19 .. 2^7), each trial
trained on a random 75 % of the training split, the lowest loss on the other
25 % wins. Two ways to spend the machine on it (``report["tune"]["search"]``):

* ``coarse`` (``search``): every trial one length; the config's coarse grid
  first, then single steps around the best until both its neighbours have
  been tried, never past the paper's bounds. If the losses are unimodal in
  log2 of the rate, that finds the same power as the full grid. Short trials
  favour large rates, so its choice need not hold at the table's length.
* ``halving`` (``successive_halving``): every power of the grid at the first
  (short) length, the best part carried on to the next (longer) length, and
  so on; the lowest loss at the longest length wins. A trial at a longer
  length extends the same run (the length is ``train.epochs``, which the
  workdir's name leaves out), so carrying a rate on costs only the added
  steps, and the loss of every rate at every length it reached is in its
  run's ``metrics.jsonl`` and record. results/table4*.md then shows how the
  best rate moves with the trial's length.

Run through ``python -m experiments.reproduce --config=configs/table4.py:...``;
every trial is an ordinary run of the runner (``experiments/runs.py``: own
workdir and record, skipped when done, resumed when killed), so an
interrupted search picks up where it stopped, and its table is rewritten
from the records alone when the workdirs are gone. The chosen rates are printed as the lines of
configs/learning_rates.py TUNED, the one place the table configs read them.

Two processes may run the same search (two shells, two machines on one file
system): a group whose next trial the other process trains now is put aside
and taken up again after the other groups; when every group left waits on
the other process, this one polls until that trial is done and reads its
result, so the two share the groups and neither trains a run twice.
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
from random_bases import workdir as workdir_lib

# How long a search whose every remaining group waits on another process
# sleeps before it looks again.
HELD_POLL_SECONDS = 30.0


class TrialHeld(Exception):
  """Another process trains a run of the trial this search needs next."""


def _wait_for_other_process(seconds: float) -> None:
  time.sleep(seconds)


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


def survivors(tried: int, keep: int, floor: int) -> int:
  """How many of ``tried`` rates go on to the next length: the best 1/``keep``, at least ``floor``.

  Never more than were tried; ``ceil`` so that a rung of 4 with ``keep=3`` carries 2.
  """
  return min(tried, max(floor, math.ceil(tried / keep)))


def successive_halving(
  loss_at: Callable[[int, int], float],
  *,
  rates: list[int],
  lengths: list[int],
  keep: int,
  floor: int,
) -> dict[int, dict[int, float]]:
  """Successive halving over powers of two; returns {length: {log2: loss}} for every trial run.

  Args:
    loss_at: (log2 of the rate, length) -> the held-out loss at that length
      (inf for a trial that diverged at or before it).
    rates: the powers tried at the first length.
    lengths: the trials' lengths, increasing (the caller's unit: epochs).
    keep, floor: the best ``survivors(n, keep, floor)`` of the n rates tried at a
      length go on to the next; a rate with an infinite loss never does. Ties go
      to the smaller rate, as in ``best_rate``.

  The search stops early when no rate has a finite loss. The chosen rate is
  ``best_rate`` of the last length reached (``chosen``).
  """
  if list(lengths) != sorted(set(lengths)) or not lengths or lengths[0] < 1:
    raise ValueError(f"lengths={lengths}: need increasing positive lengths")
  alive = sorted(set(rates))
  table: dict[int, dict[int, float]] = {}
  for i, length in enumerate(lengths):
    table[length] = {k: loss_at(k, length) for k in alive}
    finite = sorted((loss, k) for k, loss in table[length].items() if math.isfinite(loss))
    if not finite or i + 1 == len(lengths):
      break
    alive = sorted(k for _, k in finite[: survivors(len(alive), keep, floor)])
  return table


def chosen(table: dict[int, dict[int, float]]) -> int | None:
  """The rate with the lowest loss at the longest length reached; None if all diverged there."""
  return best_rate(table[max(table)]) if table else None


def trial_entry_at(entry: dict, log2: int, epochs: int) -> dict:
  """``entry`` at the rate 2**log2 for ``epochs``: the run of every shorter length, extended."""
  return {**trial_entry(entry, log2), "train.epochs": epochs}


def loss_at_epoch(runs: list[runs_lib.Run], metric: str, epoch: int) -> float:
  """Mean over seeds of ``metric`` at ``epoch``; inf if a seed has no finite value there.

  A run that diverged after ``epoch`` still has its value at ``epoch``; one that
  diverged at or before it has none (inf).
  """
  values = []
  for run in runs:
    rows = [row for row in runs_lib.run_result(run).metrics if row.get("epoch") == epoch]
    value = rows[-1].get(metric) if rows else None
    if value is None or not math.isfinite(value):
      return math.inf
    values.append(value)
  return sum(values) / len(values)


def _steps_at(runs: list[runs_lib.Run], epoch: int) -> int | None:
  """The training step a trial had reached at ``epoch`` (from its metrics), if it got there."""
  for run in runs:
    for row in runs_lib.run_result(run).metrics:
      if row.get("epoch") == epoch and row.get("step") is not None:
        return row["step"]
  return None


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
  partial: bool = False,
) -> list[str]:
  """Searches every group of the sweep (the config's coarse trials) and writes the table.

  Args:
    report: the config's report; ``report["tune"]`` has the bounds and metric.
    runs: the coarse trials at every seed.
    runs_of: entry -> its runs (one per seed), for the refining trials.
    train_fn: the trainer.
    header: the results file's header lines.
    results_dir: where the results file and its plot go.
    partial: train nothing: search each group only as far as its trials are
      done, write the groups that got to the end, and name the others in the
      file's "Partial" line (a long search's file from its records so far).

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
  trained = 0  # runs this process trained, to tell waiting from progress

  def run_trial(trial: list[runs_lib.Run]) -> None:
    """Trains the trial's unfinished runs (one per seed); raises TrialHeld if another holds one."""
    nonlocal trained
    runs_lib.export_records(trial)
    for run in trial:
      if not runs_lib.is_done(run):
        if partial:
          raise TrialHeld(run.workdir)  # not trained here: the group stays unsearched
        progress.start(run)
        tic = time.perf_counter()
        try:
          status, _ = runs_lib.execute(run, train_fn)
        except workdir_lib.WorkdirLocked as e:
          progress.skip(run, f"held by another process ({run.workdir}); back to it later")
          raise TrialHeld(run.workdir) from e
        progress.finish(run, time.perf_counter() - tic, status)
        trained += 1

  halving = spec.get("search", "coarse") == "halving"
  writer = write_halving if halving else write

  def write_searched(extra: tuple[tuple[str, str], ...] = ()) -> list[str]:
    """The file of the groups searched so far, in the sweep's order of groups."""
    done = {g: searched[g] for g in groups if g in searched}
    return writer(report, done, [*header, *extra], results_dir)

  # Each group's trials, kept across retries so a refinement is planned once.
  trials_of: dict[str, dict] = {group: {} for group in groups}
  pending = list(groups)
  while pending:
    held, trained_before = [], trained
    for group in pending:
      try:
        if halving:
          searched[group] = _halve_group(
            groups[group], spec, runs_of, run_trial, progress, trials_of[group]
          )
        else:
          searched[group] = _search_group(
            groups[group], spec, runs_of, run_trial, progress, trials_of[group]
          )
      except TrialHeld:
        held.append(group)
        continue
      written = write_searched()  # each group's result when it is done
    if partial:
      if held:
        note = f"{len(groups) - len(held)} of {len(groups)} groups searched; not yet: "
        written = write_searched((("Partial", note + ", ".join(held)),))
      break
    if held and trained == trained_before:
      logging.info(
        "%d group(s) wait on trials another process trains (%s); looking again in %.0f s",
        len(held),
        ", ".join(held),
        HELD_POLL_SECONDS,
      )
      _wait_for_other_process(HELD_POLL_SECONDS)
    pending = held
  return written


def _search_group(group_runs, spec, runs_of, run_trial, progress, by_rate) -> dict:
  """One group's coarse-to-fine search: {"entry", "losses" {log2: loss}, "runs"}.

  ``by_rate`` maps log2 to the trial's runs (one per seed); filled here and
  kept by the caller, so a search retried after a held trial plans nothing twice.
  """
  template = group_runs[0].entry
  if not by_rate:
    for run in group_runs:
      by_rate.setdefault(run.entry["log2_rate"], []).append(run)
  coarse = sorted({run.entry["log2_rate"] for run in group_runs})

  def loss_at(log2: int) -> float:
    if log2 not in by_rate:
      by_rate[log2] = runs_of(trial_entry(template, log2))
      progress.grow(sum(not runs_lib.is_done(r) for r in by_rate[log2]))
    run_trial(by_rate[log2])
    return trial_loss(by_rate[log2], spec["metric"])

  losses = search(loss_at, coarse=coarse, lo=spec["lo"], hi=spec["hi"])
  logging.info(
    "%s: best 2^%s (%s)",
    template["group"],
    best_rate(losses),
    ", ".join(f"2^{k}: {v:.4g}" for k, v in sorted(losses.items())),
  )
  return {"entry": template, "losses": losses, "runs": by_rate}


def _halve_group(group_runs, spec, runs_of, run_trial, progress, trials) -> dict:
  """One group's successive halving: {"entry", "table" {epochs: {log2: loss}}, "runs"}.

  ``trials`` maps (log2, epochs) to the trial's runs (filled here, kept by the
  caller across retries); the runs of one rate at every length share a
  workdir, each longer trial extending the shorter one.
  """
  template = group_runs[0].entry
  if not trials:
    for run in group_runs:
      trials.setdefault((run.entry["log2_rate"], run.entry["train.epochs"]), []).append(run)
  first = {run.entry["log2_rate"] for run in group_runs}

  def loss_at(log2: int, epochs: int) -> float:
    if (log2, epochs) not in trials:
      trials[log2, epochs] = runs_of(trial_entry_at(template, log2, epochs))
      progress.grow(sum(not runs_lib.is_done(r) for r in trials[log2, epochs]))
    run_trial(trials[log2, epochs])
    return loss_at_epoch(trials[log2, epochs], spec["metric"], epochs)

  table = successive_halving(
    loss_at,
    rates=sorted(first),
    lengths=spec["rungs"],
    keep=spec["keep"],
    floor=spec["floor"],
  )
  for epochs, losses in table.items():
    logging.info(
      "%s at %d epochs: best 2^%s (%s)",
      template["group"],
      epochs,
      best_rate(losses),
      ", ".join(f"2^{k}: {v:.4g}" for k, v in sorted(losses.items())),
    )
  return {"entry": template, "table": table, "runs": trials}


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


def _statuses(searched: dict[str, dict]) -> list[str]:
  """Every trial run's status, for the results file's header."""
  return [
    runs_lib.run_result(run).status
    for result in searched.values()
    for trial in result["runs"].values()
    for run in trial
  ]


def write(
  report: dict, searched: dict[str, dict], header: list[tuple[str, str]], results_dir: str
) -> list[str]:
  """results/<name>.md (paper's rate and ours side by side) and its plot."""
  from experiments import plots

  os.makedirs(results_dir, exist_ok=True)
  spec = report["tune"]
  metric = spec["metric"]
  lines = results_lib.head(report, header, _statuses(searched))
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
  path = os.path.join(results_dir, f"{report['name']}.md")
  plot_path = os.path.join(results_dir, f"{report['name']}_tuning.png")
  if not plot_groups:  # a partial file before any group has finished: nothing to draw
    with open(path, "w") as f:
      f.write("\n".join(lines))
    return [path]
  plots.tuning(plot_groups, plot_path)
  lines += ["", f"![{os.path.basename(plot_path)}]({os.path.basename(plot_path)})", ""]
  with open(path, "w") as f:
    f.write("\n".join(lines))
  return [path, plot_path]


# --- successive halving's results file -------------------------------------------------------


def _length_text(epochs: int, steps: int | None) -> str:
  """ "2,500 steps (4 ep)" where a trial's metrics give the step, else "4 epochs"."""
  return f"{steps:,} steps ({epochs} ep)" if steps else f"{epochs} epochs"


def _value_text(runs: list[runs_lib.Run], key: str, epoch: int) -> str:
  """The mean over seeds of ``key`` at ``epoch`` (accuracies in %); a dash if none."""
  values = [
    row[key]
    for run in runs
    for row in runs_lib.run_result(run).metrics
    if row.get("epoch") == epoch and row.get(key) is not None
  ]
  if not values:
    return "\u2014"
  mean = sum(values) / len(values)
  return f"{100 * mean:.2f}" if key.endswith("accuracy") else f"{mean:.4f}"


def halving_rows(result: dict) -> dict:
  """What the results file and plot show of one group's search.

  Returns a dict with ``model``, ``dataset``, ``method``, ``structure``,
  ``paper`` (Table 4's applied log2 or None), ``lengths`` [(epochs, steps or
  None)], ``best`` {epochs: best log2 among the rates tried at that length},
  ``chosen`` (the best at the longest length reached) and ``table``.
  """
  entry, table = result["entry"], result["table"]
  steps = {}
  for epochs, losses in table.items():
    steps[epochs] = next(
      (s for k in losses if (s := _steps_at(result["runs"][k, epochs], epochs)) is not None), None
    )
  return {
    "model": entry["model"],
    "dataset": entry["data.dataset"],
    "method": entry["method"],
    "structure": entry.get("bases.structure", "dense") if entry["method"] != "sgd" else "\u2014",
    "paper": entry.get("paper", {}).get("log2_rate", (None,))[0],
    "lengths": [(epochs, steps[epochs]) for epochs in sorted(table)],
    "best": {epochs: best_rate(losses) for epochs, losses in table.items()},
    "chosen": chosen(table),
    "table": table,
  }


def _loss_cell(loss: float | None, *, best: bool) -> str:
  if loss is None:
    return ""
  text = f"{loss:.4g}" if math.isfinite(loss) else "diverged"
  return f"**{text}**" if best else text


def write_halving(
  report: dict, searched: dict[str, dict], header: list[tuple[str, str]], results_dir: str
) -> list[str]:
  """The halving search's results file: the choice per group, how it moves with length, the losses.

  For each group: the best rate at every length (among the rates that reached
  it), the chosen one (the longest length's), Table 4's rate and where it
  landed (its loss at each length it reached, or "not carried on" from the
  length where it dropped out), and the full loss table (rates x lengths).
  Also the lines for configs/learning_rates.py TUNED_AT_LENGTH and the plot of
  loss against rate, one line per length.
  """
  from experiments import plots

  os.makedirs(results_dir, exist_ok=True)
  spec = report["tune"]
  metric = spec["metric"]
  lines = results_lib.head(report, header, _statuses(searched))
  lines += [
    f"- Search: {spec['grid']}",
    f"- Lengths: {spec['lengths_text']}",
    "",
    "## The chosen rate against the trial's length",
    "",
    "Each cell is the best rate (log2 of the applied step) among the rates trained to that "
    f"length, by {metric}; the last is the choice. Table 4's rate is the paper's for dense "
    "normal directions (SGD: per example x 32).",
    "",
    "| network | data | method | basis | paper log2 | best at each length | chosen | chosen "
    f"\u2212 paper | {metric} at chosen | held-out acc % | test acc % | the paper's rate | time |",
    "|" + " --- |" * 13,
  ]
  snippet, plot_groups, details = [], [], []
  for group, result in searched.items():
    row = halving_rows(result)
    pick, paper, table = row["chosen"], row["paper"], row["table"]
    last = max(table)
    at_pick = [] if pick is None else result["runs"][pick, last]
    moves = " \u2192 ".join(
      f"{_length_text(e, s)}: {row['best'][e] if row['best'][e] is not None else 'all diverged'}"
      for e, s in row["lengths"]
    )
    wall = sum(
      (runs_lib.run_result(run).status or {}).get("wall_seconds", 0.0)
      for (_, epochs), trial in result["runs"].items()
      if epochs == last
      for run in trial
    )  # the longest trial's wall time is every shorter one's too (extended runs)
    paper_text = _paper_landing(paper, row)
    cells = [
      common.MODEL_TITLES[row["model"]],
      common.DATA_TITLES[row["dataset"]],
      common.METHOD_TITLES[row["method"]],
      row["structure"],
      "\u2014" if paper is None else str(paper),
      moves,
      "all diverged" if pick is None else str(pick),
      "\u2014" if None in (pick, paper) else f"{pick - paper:+d}",
      "\u2014" if pick is None else _loss_cell(table[last][pick], best=False),
      _value_text(at_pick, "heldout_accuracy", last),
      _value_text(at_pick, "test_accuracy", last),
      paper_text,
      results_lib.format_seconds(wall),
    ]
    lines.append("| " + " | ".join(cells) + " |")
    if pick is not None and last == spec["rungs"][-1]:
      key = learning_rates.length_key(
        row["model"],
        row["dataset"],
        row["method"],
        structure=result["entry"].get("bases.structure", "dense"),
        d=result["entry"].get("bases.d", 250),
      )
      snippet.append(f"    {key!r}: {pick},  # {metric} {table[last][pick]:.4g}")
    rates = sorted({k for losses in table.values() for k in losses})
    details += [
      "",
      f"### {group}: {metric} per rate and length (bold: the best of the length)",
      "",
      "| log2 | " + " | ".join(_length_text(e, s) for e, s in row["lengths"]) + " |",
      "|" + " --- |" * (len(row["lengths"]) + 1),
    ]
    for k in rates:
      label = f"{k} (paper)" if k == paper else str(k)
      details.append(
        f"| {label} | "
        + " | ".join(
          _loss_cell(table[e].get(k), best=k == row["best"][e]) for e, _ in row["lengths"]
        )
        + " |"
      )
    plot_groups.append(
      {
        "panel": group,
        "lines": {_length_text(e, s): table[e] for e, s in row["lengths"]},
        "paper": paper,
        "chosen": pick,
      }
    )
  lines += details
  lines += [
    "",
    "For configs/learning_rates.py (TUNED_AT_LENGTH; only groups whose search reached the "
    "longest length):",
    "",
    "```python",
    *snippet,
    "```",
    "",
  ]
  lines += ["Notes:", ""] + [f"- {n}" for n in report.get("notes", [])]
  path = os.path.join(results_dir, f"{report['name']}.md")
  plot_path = os.path.join(results_dir, f"{report['name']}_tuning_lengths.png")
  if not plot_groups:  # a partial file before any group has finished: nothing to draw
    with open(path, "w") as f:
      f.write("\n".join(lines))
    return [path]
  plots.tuning_lengths(plot_groups, plot_path)
  lines += ["", f"![{os.path.basename(plot_path)}]({os.path.basename(plot_path)})", ""]
  with open(path, "w") as f:
    f.write("\n".join(lines))
  return [path, plot_path]


def _paper_landing(paper: int | None, row: dict) -> str:
  """Where Table 4's rate landed: its rank and loss at each length it reached, or why not."""
  if paper is None:
    return "none given"
  table = row["table"]
  if paper not in table[min(table)]:
    return f"2^{paper} is outside the grid"
  parts = []
  for epochs, steps in row["lengths"]:
    losses = table[epochs]
    if paper not in losses:
      parts.append(f"not carried on to {_length_text(epochs, steps)}")
      break
    finite = sorted(v for v in losses.values() if math.isfinite(v))
    loss = losses[paper]
    rank = f"#{finite.index(loss) + 1} of {len(losses)}" if math.isfinite(loss) else "diverged"
    parts.append(f"{_length_text(epochs, steps)}: {rank}")
  return "; ".join(parts)
