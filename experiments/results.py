"""The results writer: a sweep's runs -> one markdown table against the paper.

Takes each run as ``experiments/runs.py`` reads it (from its workdir, else
its record: metrics, data identity, status) and writes, for each sweep
entry, the paper's value +- std, ours (mean +- std over seeds, the last
epoch of each run), the difference, the seeds, the epochs actually run, the
rate, the data used and the time taken. Nothing here trains or imports jax.
"""

from __future__ import annotations

import collections
import dataclasses
import datetime
import math
import os
from typing import Any

# The header line of a results file that holds the command which wrote it.
COMMAND_LABEL = "Command (from the repository root)"


@dataclasses.dataclass
class RunResult:
  """One seed's run as its workdir or record holds it (empty ``metrics`` if it has not run)."""

  seed: int
  workdir: str
  metrics: list[dict[str, Any]]
  status: dict[str, Any] | None
  data: dict[str, Any] | None

  @property
  def final(self) -> dict[str, Any] | None:
    return self.metrics[-1] if self.metrics else None

  @property
  def ended(self) -> bool:
    """Its session ended it: finished at the epochs its status names, stopped or diverged.

    A run without a status (training now, or killed), or one extended past the
    epochs of its status (training on), has not ended.
    """
    if self.status is None or self.final is None:
      return False
    if self.status.get("status") in ("stopped", "diverged"):
      return True
    return self.final.get("epoch") == self.status.get("epochs")


@dataclasses.dataclass
class Row:
  """A sweep entry and its runs, one per seed."""

  entry: dict[str, Any]
  runs: list[RunResult]

  @property
  def name(self) -> str:
    return self.entry["name"]

  def finals(self) -> list[RunResult]:
    """The runs its values come from: the ended ones, or while none has, those with epochs.

    A run still training (or killed) is left out once another seed of the row
    has ended, so a mean never mixes a run's last epoch with another's epoch
    in the middle (``unfinished``).
    """
    started = [run for run in self.runs if run.final is not None]
    ended = [run for run in started if run.ended]
    return ended or started

  def unfinished(self) -> list[RunResult]:
    """The runs with epochs that ``finals`` leaves out."""
    finals = {id(run) for run in self.finals()}
    return [run for run in self.runs if run.final is not None and id(run) not in finals]

  def values(self, metric: str) -> list[float]:
    """The metric's last-epoch value of every run that has it (missing or null skipped)."""
    return [run.final[metric] for run in self.finals() if run.final.get(metric) is not None]


def read_command(path: str) -> str | None:
  """The command in the header of the results file ``path``; None if it has none or is absent."""
  if not os.path.exists(path):
    return None
  prefix = f"- {COMMAND_LABEL}: `"
  with open(path) as f:
    for line in f:
      line = line.rstrip("\n")
      if line.startswith(prefix) and line.endswith("`"):
        return line[len(prefix) : -1]
  return None


def mean_std(values: list[float]) -> tuple[float, float | None]:
  """Mean and sample std (n - 1); the std is None for fewer than two values."""
  mean = sum(values) / len(values)
  if len(values) < 2:
    return mean, None
  var = sum((v - mean) ** 2 for v in values) / (len(values) - 1)
  return mean, math.sqrt(var)


# --- formatting -------------------------------------------------------------


def _scale(column: dict) -> float:
  return 100.0 if column.get("percent") else 1.0


def _digits(column: dict) -> int:
  return column.get("digits", 2 if column.get("percent") else 3)


def _number(value: float, digits: int, signed: bool = False) -> str:
  text = f"{value:+.{digits}f}" if signed else f"{value:.{digits}f}"
  return text.replace("-", "\u2212")


def format_paper(value: tuple[float, float | None] | None) -> str:
  """The paper's ``(mean, std)`` as printed there."""
  if value is None:
    return "\u2014"
  mean, std = value
  return f"{mean:g}" if std is None else f"{mean:g} \u00b1 {std:g}"


def ours(row: Row, column: dict) -> tuple[float, float | None] | None:
  """Our value of ``column`` in the column's units: mean over seeds, and its +-.

  The +- is the std over seeds, or, for a column with a ``spread`` metric
  (the correlation's std over tensors and steps), that metric's mean.
  """
  values = row.values(column["metric"])
  if not values:
    return None
  scale = _scale(column)
  mean, std = mean_std([v * scale for v in values])
  if "spread" in column:
    spreads = row.values(column["spread"])
    std = sum(spreads) / len(spreads) * scale if spreads else None
  return mean, std


def standard_error(row: Row, column: dict) -> float | None:
  """The SE of ``ours(row, column)``'s mean, in the column's units.

  Two or more seeds: the seeds' sample std / sqrt(n), which holds the
  evaluation's noise too. One seed of an accuracy: the binomial SE on the
  split's images (the run's data record), sqrt(p (1 - p) / N), evaluation
  noise only and so a lower bound. Otherwise None.
  """
  values = row.values(column["metric"])
  if len(values) > 1 and "spread" not in column:
    return mean_std(values)[1] * _scale(column) / math.sqrt(len(values))
  split, _, kind = column["metric"].rpartition("_")
  if len(values) != 1 or kind != "accuracy":
    return None
  images = ((row.finals()[0].data or {}).get("images") or {}).get(split)
  if not images:
    return None
  p = values[0]
  return math.sqrt(p * (1 - p) / images) * _scale(column)


def format_ours(value: tuple[float, float | None] | None, digits: int) -> str:
  if value is None:
    return "\u2014"
  mean, std = value
  text = _number(mean, digits)
  return text if std is None else f"{text} \u00b1 {_number(std, digits)}"


def format_seconds(seconds: float) -> str:
  seconds = int(round(seconds))
  hours, rest = divmod(seconds, 3600)
  if hours:
    return f"{hours}h{rest // 60:02d}m"
  return f"{rest // 60}m{rest % 60:02d}s"


def epochs_text(row: Row, notes: list[str]) -> str:
  """Epochs done per seed ("3" when all agree); a run that stopped gets * and a note.

  A run left out of the row's values (``Row.unfinished``) gets "(unfinished)" and a note.
  """
  texts = []
  unfinished = {id(run) for run in row.unfinished()}
  for run in row.runs:
    status = run.status or {}
    epoch = run.final["epoch"] if run.final else None
    if status.get("status") in ("stopped", "diverged"):
      notes.append(
        f"{row.name}, seed {run.seed}: {status['status']} after epoch "
        f"{epoch or 0}: {status.get('reason')}"
      )
      texts.append(f"{epoch or 0}*")
    elif id(run) in unfinished:
      notes.append(
        f"{row.name}, seed {run.seed}: unfinished after epoch {epoch} (training, or "
        "killed); left out of ours while another seed of the row has ended"
      )
      texts.append(f"{epoch} (unfinished)")
    else:
      texts.append("\u2013" if epoch is None else str(epoch))
  return texts[0] if len(set(texts)) == 1 else ", ".join(texts)


def seeds_text(row: Row) -> str:
  """The seeds that ran (ended, or have epochs)."""
  seeds = [str(run.seed) for run in row.runs if run.final is not None or run.status]
  return ", ".join(seeds) or "not run"


def data_label(run: RunResult) -> str:
  """The data in a few words: the description's head, e.g. "CIFAR-10 (JPEG re-encoding)"."""
  data = run.data or {}
  if data.get("description"):
    return data["description"].split(" from ")[0]
  if data.get("sample"):
    return f"{data.get('dataset')} SAMPLE"
  if data:  # no description recorded: the source's kind and file or folder name
    kind, _, where = data.get("source", "?").partition(":")
    return f"{data.get('dataset')} ({kind} {os.path.basename(where)})".replace(" )", ")")
  return "?"


def time_text(row: Row) -> str:
  """Wall time of the row's runs; "≥" when a run's time is known only from its epochs."""
  total, lower_bound, counted = 0.0, False, False
  for run in row.runs:
    if run.status and "wall_seconds" in run.status:
      total += run.status["wall_seconds"]
    elif run.metrics:
      total += sum(m.get("train_seconds", 0) + m.get("eval_seconds", 0) for m in run.metrics)
      lower_bound = True
    else:
      continue
    counted = True
  if not counted:
    return "\u2014"
  return ("\u2265 " if lower_bound else "") + format_seconds(total)


def table(
  rows: list[Row], columns: list[dict], *, with_standard_error: bool = False
) -> tuple[list[str], list[str]]:
  """The markdown table's lines, and the notes its cells refer to.

  ``with_standard_error``: an "SE" column after each of ours compared with the paper.
  """
  notes: list[str] = []
  with_paper = {
    c["metric"] for c in columns if any(c["metric"] in r.entry.get("paper", {}) for r in rows)
  }
  head = ["run"]
  for c in columns:
    if c["metric"] in with_paper:
      head += [f"paper {c['label']}", f"ours {c['label']}"]
      head += ["SE", "\u0394"] if with_standard_error else ["\u0394"]
    else:
      head.append(f"ours {c['label']}")
  head += ["seeds", "epochs", "rate", "data", "time"]
  lines = ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
  for row in rows:
    cells = [row.name]
    for c in columns:
      value = ours(row, c)
      digits = _digits(c)
      if c["metric"] in with_paper:
        paper = row.entry.get("paper", {}).get(c["metric"])
        delta = (
          "\u2014"
          if paper is None or value is None
          else _number(value[0] - paper[0], digits, signed=True)
        )
        cells += [format_paper(paper), format_ours(value, digits)]
        if with_standard_error:
          error = standard_error(row, c)
          cells.append("\u2014" if error is None else _number(error, digits))
        cells.append(delta)
      else:
        cells.append(format_ours(value, digits))
    finals = row.finals()
    cells.append(seeds_text(row))
    cells.append(epochs_text(row, notes))
    cells.append(row.entry.get("rate", "\u2014"))
    cells.append(", ".join(sorted({data_label(r) for r in finals})) or "\u2014")
    cells.append(time_text(row))
    lines.append("| " + " | ".join(cells) + " |")
  return lines, notes


def contrasts(rows: list[Row], specs: list[dict]) -> list[str]:
  """ "a - b" per spec: ours as the mean +- std of per-seed differences, beside the paper's."""
  by_name = {row.name: row for row in rows}
  lines = []
  for spec in specs:
    a, b = by_name[spec["a"]], by_name[spec["b"]]
    column = {"metric": spec["metric"], "percent": True}
    finals_b = {run.seed: run.final for run in b.finals()}
    differences = [
      100 * (run.final[spec["metric"]] - finals_b[run.seed][spec["metric"]])
      for run in a.finals()
      if run.seed in finals_b
    ]
    value = mean_std(differences) if differences else None
    lines.append(
      f"- {spec['a']} \u2212 {spec['b']} ({spec['metric'].replace('_', ' ')}, "
      f"points): ours {format_ours(value, _digits(column))} over "
      f"{len(differences)} seed(s); paper {format_paper(spec['paper'])}"
    )
  return lines


def data_sources(rows: list[Row]) -> list[str]:
  """Every distinct data the runs used, with where it came from."""
  found = {}
  for row in rows:
    for run in row.finals():
      data = run.data or {}
      text = data.get("description") or data.get("source")
      if text:
        found[text] = data.get("images")
  return [
    f"- {text}" + (f" (images: {images})" if images else "")
    for text, images in sorted(found.items())
  ]


def code_text(status: dict) -> str:
  """The code a run ran from, as its status records it: the commit and whether it was clean."""
  if "commit" not in status:  # statuses written before commits were recorded
    return status.get("code", "not recorded")
  if status["commit"] is None:
    return "not a git checkout (commit unknown)"
  return f"{status['commit'][:7]} " + ("(clean)" if status["clean"] else "with uncommitted changes")


def code_of_runs(statuses: list[dict | None]) -> str:
  """The code versions the runs were trained with (from their statuses), counted."""
  counts = collections.Counter(code_text(status) for status in statuses if status)
  return (
    "; ".join(f"{code} ({n} run{'s' * (n > 1)})" for code, n in counts.items())
    or "no run has ended yet"
  )


def head(report: dict, header: list[tuple[str, str]], statuses: list[dict | None]) -> list[str]:
  """Title, scale, the runner's header lines, when this was written and with what code.

  Args:
    report: the config's report (title, scale).
    header: ``(label, text)`` lines (command, seeds, ...).
    statuses: the status files of the runs behind the results (none: no runs).
  """
  now = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
  items = [*header, ("Written", now)]
  if statuses:
    items.append(("Code of the runs", code_of_runs(statuses)))
    ended = [status["wall_seconds"] for status in statuses if status and "wall_seconds" in status]
    items.append(
      ("Wall time", f"{format_seconds(sum(ended))} over {len(ended)} finished run(s), summed")
    )
  return [f"# {report['title']}", "", f"**Scale: {report['scale']}**", ""] + [
    f"- {label}: {text}" for label, text in items
  ]


def markdown(*, report: dict, rows: list[Row], header: list[tuple[str, str]]) -> str:
  """The whole results file.

  Args:
    report: the config's ``report(arg)`` (title, scale, columns, contrasts, notes).
    rows: one per sweep entry.
    header: ``(label, text)`` lines printed under the title (command, seeds, ...).
  """
  lines = head(report, header, [run.status for row in rows for run in row.runs])
  lines.append("")
  with_standard_error = report.get("standard_error", False)
  body, notes = table(rows, report["columns"], with_standard_error=with_standard_error)
  lines += body
  lines.append("")
  if report.get("contrasts"):
    lines += ["Differences:", ""] + contrasts(rows, report["contrasts"]) + [""]
  sources = data_sources(rows)
  if sources:
    lines += ["Data used:", ""] + sources + [""]
  explained = [
    "ours: the last epoch of each seed's run, mean \u00b1 sample std over seeds "
    "(no \u00b1 with one seed); \u0394 = ours \u2212 paper.",
    *(
      [
        "SE: the standard error of ours: the seeds' std / sqrt(seeds) for two or more "
        "seeds; for one seed the binomial SE of the accuracy on the split's images, "
        "sqrt(p (1 - p) / N), evaluation noise only (a lower bound)."
      ]
      if with_standard_error
      else []
    ),
    "epochs: epochs done per seed; * = stopped early (below). time: wall time of "
    "the runs' sessions, loading and compiling included, except in a session killed "
    "before its run ended, which counts its epochs' train and eval time only (\u2265: "
    "a run not finished yet, likewise).",
  ]
  lines += ["Notes:", ""] + [f"- {n}" for n in [*report.get("notes", []), *explained, *notes]]
  return "\n".join(lines) + "\n"
