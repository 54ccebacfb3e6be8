"""The results' plots (PNG, matplotlib, Agg), drawn next to the results files.

A config's ``report(arg)["plots"]`` lists the plots of its results file; each
spec has a ``kind``:

* ``bars``: the last epoch's ``metric``, one panel per ``panel`` of the sweep
  (a model-data pair), one bar per row: the mean over seeds, +- the sample
  std over seeds (two or more seeds), each seed a small dot, the paper's
  value a hollow diamond. A seed that diverged is a red x (at its last value,
  or at the bottom of the panel when it left none) with "diverged" beside
  it; a row that has not run says "not run". Nothing is silently missing.
  Tables 1-3 and the one-epoch figures.
* ``curves``: ``metric`` per epoch, one line per row (mean over seeds, a band
  of +- std), the paper's final value as a dashed line in the same colour
  (Fig. B.6 style; ``switches`` marks Fig. 3's switch epochs). Every row has
  its own line style and marker, so lines that coincide stay visible; a
  diverged seed ends in a red x. ``draw`` skips it when no row has two
  epochs (no epoch axis to draw).
* ``against``: last-epoch ``metrics`` against the rows' ``x`` (d, K), a panel
  per metric, mean +- std over seeds and each seed; rows without ``x`` are
  horizontal references (Fig. B.7, Fig. 4). ``reference`` draws a fraction
  of one row's value; ``geometry`` ({"metric", "D"}) draws
  sqrt(d / D) / sqrt(1 + d / D), the correlation of independent random
  directions with any gradient (Fig. B.7's whole-vector correlation).
* ``tuning``: the held-out loss against log2 of the rate, the paper's rate
  and ours marked (Table 4; drawn by experiments/tune.py).
* ``tuning_lengths``: the same for the tuner's successive halving, one line
  per trial length (experiments/tune.py).
* ``landscape``: the loss along random directions by distribution and epoch
  (Fig. 2; experiments/analysis.py).
* ``orthogonality``: the mean cosine of random pairs against the dimension,
  with +- 1 / sqrt(n), and the mean |cosine| (Fig. B.8;
  experiments/analysis.py).

Rates: a row's ``rate`` goes into its legend entry where the rows of a panel
differ by rate, else once into the panel's title (``against``: each point is
marked with its 2^k where a line's rates differ).

Each function returns the figure after saving it, so tests can read what
was drawn.
"""

from __future__ import annotations

import dataclasses
import math
import os
import textwrap

import matplotlib
import matplotlib.lines
import matplotlib.patches
import matplotlib.ticker
import matplotlib.transforms

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # pylint: disable=wrong-import-position
import numpy as np  # pylint: disable=wrong-import-position

from experiments import results as results_lib  # pylint: disable=wrong-import-position

# Names of the per-epoch metrics, for axis labels.
METRIC_LABELS = {
  "validation_accuracy": "validation accuracy (%)",
  "test_accuracy": "test accuracy (%)",
  "heldout_accuracy": "held-out accuracy (%)",
  "train_accuracy": "train accuracy (%)",
  "validation_loss": "validation loss",
  "heldout_loss": "held-out loss (25 % of the training split)",
  "test_loss": "test loss",
  "train_loss": "train loss",
  "correlation_mean": "update-gradient cosine (mean over tensors)",
  "correlation_whole": "update-gradient cosine (whole vector)",
  "images_per_second": "training images / s",
}
PAPER_STYLE = dict(linestyle="--", linewidth=1.0, alpha=0.8)
# The paper's value in bar charts: a hollow diamond.
PAPER_MARKER = dict(
  marker="D", markersize=8, markerfacecolor="none", markeredgecolor="black", linestyle="none"
)
SEED_MARKER = dict(marker="o", markersize=3.5, color="black", linestyle="none", alpha=0.8)
DIVERGED_COLOR = "tab:red"
DIVERGED_MARKER = dict(
  marker="x", markersize=9, markeredgewidth=2, color=DIVERGED_COLOR, linestyle="none"
)
STOPPED_MARKER = dict(
  marker="v", markersize=5, markerfacecolor="none", markeredgecolor="black", linestyle="none"
)
# Line styles and markers of curves, cycled per row ("--" is the paper's).
LINE_STYLES = ("-", "-.", ":")
MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*", "<", ">", "h")
WRAP = 48  # characters per legend line


def _percent(metric: str) -> float:
  return 100.0 if metric.endswith("_accuracy") else 1.0


def _grid(count: int, *, width: float = 5.0, height: float = 3.8, layout: str | None = None):
  cols = min(3, count)
  rows = math.ceil(count / cols)
  fig, axes = plt.subplots(
    rows, cols, figsize=(width * cols, height * rows), squeeze=False, layout=layout
  )
  for ax in axes.flat[count:]:
    ax.set_visible(False)
  return fig, list(axes.flat[:count])


def _colors(labels: list[str]) -> dict[str, str]:
  cycle = plt.rcParams["axes.prop_cycle"].by_key()["color"]
  return {label: cycle[i % len(cycle)] for i, label in enumerate(labels)}


def _save(fig, path: str):
  if fig.get_layout_engine() is None:
    fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)
  return fig


def _panels(row: results_lib.Row) -> list[str]:
  panel = row.entry.get("panel", "")
  return list(panel) if isinstance(panel, (list, tuple)) else [panel]


def _label(row: results_lib.Row) -> str:
  return row.entry.get("label", row.name)


def _wrap(text: str, width: int = WRAP) -> str:
  return "\n".join(textwrap.wrap(text, width, subsequent_indent="  ")) or text


# --- seeds, rates ----------------------------------------------------------------------------


@dataclasses.dataclass
class Seed:
  """One seed's run as a plot shows it.

  ``state``: "ok", "stopped" (early stopping), "diverged" (its status, or a
  non-finite value), "not run" (no metrics and no status) or "no value"
  (ran, but the metric is missing). ``value`` is the last epoch's value in
  the plot's units, None where there is none.
  """

  seed: int
  value: float | None
  epoch: int | None
  state: str


def seeds(row: results_lib.Row, metric: str) -> list[Seed]:
  """The row's runs for ``metric``, one per seed, with how each ended."""
  scale = _percent(metric)
  out = []
  for run in row.runs:
    status = (run.status or {}).get("status")
    final = run.final or {}
    value = final.get(metric)
    if value is not None and not math.isfinite(value):
      value, status = None, "diverged"
    value = None if value is None else value * scale
    if status in ("diverged", "stopped"):
      state = status
    elif run.final is None and not run.status:
      state = "not run"
    else:
      state = "ok" if value is not None else "no value"
    out.append(Seed(run.seed, value, final.get("epoch"), state))
  return out


def _failures(states: list[str]) -> str:
  """ "diverged", "2 seeds diverged", "not run", ... for the seeds that left no value."""
  parts = []
  for state in ("diverged", "not run", "no value"):
    count = states.count(state)
    if count:
      parts.append(state if count == 1 else f"{count} seeds {state}")
  return ", ".join(parts)


def _shared_rate(rows: list[results_lib.Row]) -> str | None:
  """The rate every row prints, if they all print the same one."""
  rates = {row.entry.get("rate") for row in rows}
  return rates.pop() if len(rates) == 1 else None


def _rate_entries(rows: list[results_lib.Row], texts: dict[str, str]) -> tuple[dict, list]:
  """Legend texts with each row's rate where the rows differ by rate.

  Returns:
    ``{label: text}`` for the rows' legend entries, and extra ``(handle,
    text)`` pairs: one line "all rows: rate ..." when the rows share a rate.
  """
  shared = _shared_rate(rows)
  out = dict(texts)
  extra = []
  if shared is not None:
    extra.append((matplotlib.patches.Patch(visible=False), _wrap(f"all rows: rate {shared}")))
  else:
    for row in rows:
      if row.entry.get("rate"):
        label = _label(row)
        out[label] = _wrap(f"{texts.get(label, label)}: rate {row.entry['rate']}")
  return out, extra


def _short_rate(rate: str | None) -> str | None:
  """ "2^3 (tuned)" -> "2^3"."""
  return rate.split(" ", 1)[0] if rate else None


def _bottom(ax):
  """A transform: x in data units, y in axes units (0 = the panel's bottom)."""
  return matplotlib.transforms.blended_transform_factory(ax.transData, ax.transAxes)


def _mark_failed(ax, x: float, text: str) -> None:
  """An x at the panel's bottom at ``x`` (red if a seed diverged, else gray), ``text`` above it."""
  color = DIVERGED_COLOR if "diverged" in text else "gray"
  marker = dict(DIVERGED_MARKER, color=color)
  ax.plot([x], [0.0], transform=_bottom(ax), clip_on=False, zorder=5, label="_failed", **marker)
  ax.text(
    x,
    0.05,
    text,
    transform=_bottom(ax),
    rotation=90,
    ha="center",
    va="bottom",
    fontsize=7,
    color=color,
    zorder=5,
  )


def _legend_below(ax, entries: list[tuple], tick_lines: int) -> None:
  """The panel's legend under its tick labels (``tick_lines`` lines of them)."""
  below = matplotlib.transforms.offset_copy(
    ax.transAxes, fig=ax.figure, y=-(8 + 11 * tick_lines), units="points"
  )
  ax.legend(
    *zip(*entries),
    fontsize=7,
    loc="upper center",
    bbox_to_anchor=(0.5, 0.0),
    bbox_transform=below,
    frameon=False,
  )


def _key(has: set[str]) -> list[tuple]:
  """Legend entries explaining the markers of a chart: (handle, text)."""
  entries = []
  if "bar" in has:
    entries.append((matplotlib.patches.Patch(color="gray", alpha=0.6), "mean over seeds"))
  if "std" in has:
    line = matplotlib.lines.Line2D([], [], color="black", marker="_", markersize=8)
    entries.append((line, "\u00b1 std over seeds"))
  if "seed" in has:
    entries.append((matplotlib.lines.Line2D([], [], **SEED_MARKER), "one seed"))
  if "stopped" in has:
    entries.append((matplotlib.lines.Line2D([], [], **STOPPED_MARKER), "seed stopped early"))
  if "paper" in has:
    entries.append((matplotlib.lines.Line2D([], [], **PAPER_MARKER), "paper"))
  if "diverged" in has:
    entries.append((matplotlib.lines.Line2D([], [], **DIVERGED_MARKER), "diverged"))
  return entries


# --- bars ------------------------------------------------------------------------------------


def bars(rows: list[results_lib.Row], spec: dict, path: str):
  """The last epoch's metric: a panel per sweep panel, a bar per row (see the module doc)."""
  metric = spec["metric"]
  digits = 1 if _percent(metric) != 1.0 else 3
  panels = list(dict.fromkeys(p for row in rows for p in _panels(row)))
  colors = _colors(list(dict.fromkeys(_label(row) for row in rows)))
  members = {p: [row for row in rows if p in _panels(row)] for p in panels}
  widest = max(len(m) for m in members.values())
  legend_lines = max(
    sum(len(_wrap(f"{_label(r)}: rate {r.entry.get('rate', '')}").splitlines()) for r in m)
    for m in members.values()
  )
  fig, axes = _grid(
    len(panels),
    width=max(3.8, 0.75 * widest + 2.0),
    height=3.6 + 0.14 * legend_lines,
    layout="constrained",
  )
  has: set[str] = set()
  for ax, panel in zip(axes, panels):
    handles, texts, ticks = {}, {}, []
    for i, row in enumerate(members[panel]):
      label = _label(row)
      found = seeds(row, metric)
      values = [s.value for s in found if s.value is not None]
      tick = _wrap(label, 18)
      if values:  # the bar, and its mean (+- std) under the row's name
        mean, std = results_lib.mean_std(values)
        ax.bar(i, mean, width=0.6, color=colors[label], alpha=0.6, label=label)
        has.add("bar")
        tick += f"\n{mean:.{digits}f}"
        if std is not None:
          ax.errorbar(
            i, mean, yerr=std, color="black", capsize=5, linewidth=1.2, label=f"{label} \u00b1 std"
          )
          has.add("std")
          tick += f" \u00b1 {std:.{digits}f}"
      ticks.append(tick)
      handles[label] = matplotlib.patches.Patch(color=colors[label], alpha=0.6)
      texts[label] = label
      offsets = np.linspace(-0.15, 0.15, len(found)) if len(found) > 1 else [0.0]
      for offset, s in zip(offsets, found):
        if s.value is None:
          continue
        if s.state == "diverged":
          ax.plot([i + offset], [s.value], zorder=4, label="_diverged", **DIVERGED_MARKER)
          ax.annotate(
            "diverged",
            (i + offset, s.value),
            xytext=(4, 0),
            textcoords="offset points",
            fontsize=7,
            color=DIVERGED_COLOR,
            va="center",
          )
          has.add("diverged")
        elif s.state == "stopped":
          ax.plot([i + offset], [s.value], zorder=4, label="_stopped", **STOPPED_MARKER)
          has.add("stopped")
        else:
          ax.plot([i + offset], [s.value], zorder=4, label="_seed", **SEED_MARKER)
          has.add("seed")
      failed = _failures([s.state for s in found if s.value is None])
      if failed:
        _mark_failed(ax, i, failed)
        has.update({"diverged"} if "diverged" in failed else set())
      paper = row.entry.get("paper", {}).get(metric)
      if paper is not None:
        ax.plot([i], [paper[0]], zorder=6, label=f"{label} paper", **PAPER_MARKER)
        has.add("paper")
    names, extra = _rate_entries(members[panel], texts)
    ax.set_xticks(range(len(members[panel])), ticks, fontsize=8)
    ax.set_xlim(-0.6, len(members[panel]) - 0.4)
    ax.set_ylim(bottom=0)
    ax.margins(y=0.12)
    ax.set_title(panel or spec.get("title", ""))
    ax.set_ylabel(METRIC_LABELS.get(metric, metric))
    # Rows that differ by rate: one entry each; else the shared rate, once.
    entries = extra or [(handles[label], names[label]) for label in handles]
    if extra or any(r.entry.get("rate") for r in members[panel]):
      _legend_below(ax, entries, max(len(t.splitlines()) for t in ticks))
  key = _key(has)
  if key:
    fig.legend(*zip(*key), loc="outside upper center", ncols=len(key), fontsize=8, frameon=False)
  return _save(fig, path)


# --- curves ----------------------------------------------------------------------------------


def epoch_means(row: results_lib.Row, metric: str) -> tuple[list[int], list[float]]:
  """Epochs and the metric's mean over the seeds that reached each epoch."""
  epochs, means, _ = _epoch_stats(row, metric)
  return epochs, means


def _epoch_stats(row: results_lib.Row, metric: str):
  """Epochs, the metric's mean over the seeds that reached each, and the std (0 for one)."""
  by_epoch: dict[int, list[float]] = {}
  for run in row.runs:
    for record in run.metrics:
      value = record.get(metric)
      if value is not None and math.isfinite(value):
        by_epoch.setdefault(record["epoch"], []).append(value)
  epochs = sorted(by_epoch)
  means = [float(np.mean(by_epoch[e])) for e in epochs]
  stds = [float(np.std(by_epoch[e], ddof=1)) if len(by_epoch[e]) > 1 else 0.0 for e in epochs]
  return epochs, means, stds


def has_epoch_axis(rows: list[results_lib.Row], metric: str) -> bool:
  """Whether some row has the metric at two or more epochs (a curve to draw)."""
  return any(len(_epoch_stats(row, metric)[0]) > 1 for row in rows)


def _switch_epoch(entry: dict) -> int | None:
  """q of a hybrid 'rbd:q,sgd' entry."""
  first = entry.get("phases", "").split(",")[0]
  _, _, count = first.partition(":")
  return int(count) if count else None


def curves(rows: list[results_lib.Row], spec: dict, path: str):
  """One panel per sweep panel; one line per entry; the paper's values dashed."""
  metric = spec["metric"]
  scale = _percent(metric)
  panels = list(dict.fromkeys(p for row in rows for p in _panels(row)))
  colors = _colors(list(dict.fromkeys(_label(row) for row in rows)))
  fig, axes = _grid(len(panels), height=3.8 + 0.12 * len(rows), layout="constrained")
  for ax, panel in zip(axes, panels):
    members = [row for row in rows if panel in _panels(row)]
    has_paper, has_diverged = False, False
    handles, texts = {}, {}
    for i, row in enumerate(members):
      label = _label(row)
      epochs, values, stds = _epoch_stats(row, metric)
      if epochs:
        ys, errs = np.asarray(values) * scale, np.asarray(stds) * scale
        # Later rows on top, thinner and with smaller markers: coinciding lines stay visible.
        (line,) = ax.plot(
          epochs,
          ys,
          linestyle=LINE_STYLES[i % len(LINE_STYLES)],
          marker=MARKERS[i % len(MARKERS)],
          markersize=max(3.0, 8.0 - 4.0 * i / max(1, len(members) - 1)),
          markerfacecolor="none" if i % 2 == 0 else colors[label],
          markevery=max(1, len(epochs) // 12),
          linewidth=2.8 - 1.6 * i / max(1, len(members) - 1),
          color=colors[label],
          label=label,
          zorder=2 + i / len(members),
        )
        handles[label], texts[label] = line, label
        if errs.any():
          ax.fill_between(epochs, ys - errs, ys + errs, color=colors[label], alpha=0.12)
      for s in seeds(row, metric):
        if s.state != "diverged":
          continue
        has_diverged = True
        if s.value is None:
          _mark_failed(ax, s.epoch or (epochs[0] if epochs else 1), "diverged")
        else:
          ax.plot([s.epoch], [s.value], zorder=5, label="_diverged", **DIVERGED_MARKER)
          ax.annotate(
            f"{label}: diverged",
            (s.epoch, s.value),
            xytext=(4, -10),
            textcoords="offset points",
            fontsize=7,
            color=DIVERGED_COLOR,
          )
      paper = row.entry.get("paper", {}).get(metric)
      if paper is not None:
        ax.axhline(paper[0], color=colors[label], **PAPER_STYLE)
        has_paper = True
      switch = _switch_epoch(row.entry) if spec.get("switches") else None
      if switch is not None:
        ax.axvline(switch, color=colors[label], linestyle=":", alpha=0.6)
    names, extra = _rate_entries(members, texts)
    entries = [(handles[label], names[label]) for label in handles] + extra
    if has_paper:
      entries.append(
        (matplotlib.lines.Line2D([], [], color="gray", **PAPER_STYLE), "paper (final, dashed)")
      )
    if has_diverged:
      entries.append((matplotlib.lines.Line2D([], [], **DIVERGED_MARKER), "seed diverged"))
    ax.set_title(panel)
    ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
    ax.set_xlabel("epoch")
    ax.set_ylabel(METRIC_LABELS.get(metric, metric))
    if entries:
      _legend_below(ax, entries, 2)
  return _save(fig, path)


# --- against d or K --------------------------------------------------------------------------


def geometry(d, big_d: float):
  """sqrt(d / D) / sqrt(1 + d / D): the cosine of g with its projection on d random directions."""
  r = np.asarray(d, float) / big_d
  return np.sqrt(r) / np.sqrt(1 + r)


def against(rows: list[results_lib.Row], spec: dict, path: str):
  """Last-epoch metrics against the entries' x, a panel per metric."""
  lines = list(dict.fromkeys(_label(row) for row in rows if "x" in row.entry))
  colors = _colors(lines)
  fig, axes = _grid(len(spec["metrics"]))
  for ax, metric in zip(axes, spec["metrics"]):
    texts = {}
    for line in lines:
      members = sorted(
        (r for r in rows if "x" in r.entry and _label(r) == line), key=lambda r: r.entry["x"]
      )
      points, shorts = [], []
      for row in members:
        found = seeds(row, metric)
        values = [s.value for s in found if s.value is not None]
        x = row.entry["x"]
        shorts.append(_short_rate(row.entry.get("rate")))
        if values:
          mean, std = results_lib.mean_std(values)
          points.append((x, mean, std or 0.0, shorts[-1]))
          ax.plot([x] * len(values), values, label="_seeds", **dict(SEED_MARKER, alpha=0.5))
        for s in found:
          if s.state == "diverged" and s.value is not None:  # its last value before diverging
            ax.plot([x], [s.value], zorder=5, label="_diverged", **DIVERGED_MARKER)
        failed = _failures([s.state for s in found if s.value is None])
        if failed:
          _mark_failed(ax, x, failed)
      if points:
        xs, ys, errs, rates = zip(*points)
        ax.errorbar(xs, ys, yerr=errs, marker="o", capsize=3, color=colors[line], label=line)
        if len(set(shorts)) > 1:  # each point's own rate
          for x, y, rate in zip(xs, ys, rates):
            ax.annotate(
              rate,
              (x, y),
              xytext=(0, 6),
              textcoords="offset points",
              fontsize=7,
              ha="center",
              color=colors[line],
            )
      texts[line] = line
      if len(set(shorts)) == 1 and shorts[0]:
        texts[line] = f"{line}, rate {shorts[0]}"
      elif len(set(shorts)) > 1:
        texts[line] = f"{line} (rate at each point)"
    for row in rows:
      values = [s.value for s in seeds(row, metric) if s.value is not None]
      if "x" not in row.entry and values:
        ax.axhline(np.mean(values), color="black", linestyle="-.", linewidth=1, label=row.name)
        if row.entry.get("rate"):
          texts[row.name] = _wrap(f"{row.name}: rate {row.entry['rate']}")
    reference = spec.get("reference")
    if reference and reference["metric"] == metric:
      base = [r for r in rows if r.name == reference["name"] and r.values(metric)]
      if base:
        ax.axhline(
          reference["fraction"] * np.mean(base[0].values(metric)) * _percent(metric),
          color="gray",
          label=reference["label"],
          **PAPER_STYLE,
        )
    formula = spec.get("geometry")
    if formula and formula["metric"] == metric:
      xs = [r.entry["x"] for r in rows if "x" in r.entry]
      if xs:
        grid = (
          np.geomspace(min(xs), max(xs), 100)
          if spec.get("log_x")
          else np.linspace(min(xs), max(xs), 100)
        )
        ax.plot(
          grid,
          geometry(grid, formula["D"]),
          color="black",
          linestyle=":",
          linewidth=1.5,
          label=f"sqrt(d/D) / sqrt(1 + d/D), D = {formula['D']:,} (random directions)",
        )
    if spec.get("log_x"):
      ax.set_xscale("log")
    xs = sorted({r.entry["x"] for r in rows if "x" in r.entry})
    if 0 < len(xs) <= 10:  # ticks at the rows' d or K
      ax.set_xticks(xs, [f"{x:,}" for x in xs])
      ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    ax.margins(y=0.1)
    ax.set_xlabel(spec["x_label"])
    ax.set_ylabel(METRIC_LABELS.get(metric, metric))
    handles, labels = ax.get_legend_handles_labels()
    ax.legend(handles, [texts.get(label, label) for label in labels], fontsize=7)
  return _save(fig, path)


def tuning(groups: list[dict], path: str):
  """Held-out loss against log2 of the rate; a panel per pair, a line per method.

  Args:
    groups: dicts with ``panel``, ``label``, ``losses`` ({log2: loss, inf if
      diverged}), ``paper`` and ``ours`` (log2 or None).
    path: the PNG to write.
  """
  panels = list(dict.fromkeys(g["panel"] for g in groups))
  colors = _colors(list(dict.fromkeys(g["label"] for g in groups)))
  fig, axes = _grid(len(panels))
  for ax, panel in zip(axes, panels):
    members = [g for g in groups if g["panel"] == panel]
    finite = [v for g in members for v in g["losses"].values() if math.isfinite(v)]
    top = min(max(finite, default=3.0), 10.0) * 1.1
    for group in members:
      color = colors[group["label"]]
      ks = sorted(group["losses"])
      ys = [group["losses"][k] for k in ks]
      shown = [(k, y) for k, y in zip(ks, ys) if math.isfinite(y) and y <= top]
      if shown:
        ax.plot(*zip(*shown), marker="o", markersize=3, color=color, label=group["label"])
      off = [k for k, y in zip(ks, ys) if not (math.isfinite(y) and y <= top)]
      if off:
        ax.plot(off, [top] * len(off), "x", color=color)
      if group["paper"] is not None:
        ax.axvline(group["paper"], color=color, **PAPER_STYLE)
      if group["ours"] is not None:
        ax.plot([group["ours"]], [group["losses"][group["ours"]]], "*", markersize=12, color=color)
    ax.plot([], [], color="gray", label="paper's rate (dashed)", **PAPER_STYLE)
    ax.plot([], [], "*", color="gray", label="ours (lowest loss)")
    ax.plot([], [], "x", color="gray", label="diverged or off the chart")
    ax.set_ylim(0, top * 1.05)
    ax.set_title(panel)
    ax.set_xlabel("log2 of the applied learning rate")
    ax.set_ylabel(METRIC_LABELS["heldout_loss"])
    ax.legend(fontsize=7)
  return _save(fig, path)


def tuning_lengths(groups: list[dict], path: str):
  """Held-out loss against log2 of the rate, a panel per searched group, a line per trial length.

  The successive-halving search's plot: longer lines carry fewer rates (only
  the best part of each length goes on). A star marks each length's best
  rate, a dashed line the paper's rate, an x a diverged trial.

  Args:
    groups: dicts with ``panel`` (title), ``lines`` ({length label: {log2:
      loss, inf if diverged}}, shortest first), ``paper`` and ``chosen`` (log2 or None).
    path: the PNG to write.
  """
  fig, axes = _grid(len(groups))
  for ax, group in zip(axes, groups):
    finite = [v for losses in group["lines"].values() for v in losses.values() if math.isfinite(v)]
    top = min(max(finite, default=3.0), 10.0) * 1.1
    colors = _colors(list(group["lines"]))
    for label, losses in group["lines"].items():
      color = colors[label]
      shown = [(k, v) for k, v in sorted(losses.items()) if math.isfinite(v) and v <= top]
      if shown:
        ax.plot(*zip(*shown), marker="o", markersize=3, color=color, label=label)
        best = min(shown, key=lambda kv: (kv[1], kv[0]))
        ax.plot([best[0]], [best[1]], "*", markersize=11, color=color)
      off = [k for k, v in sorted(losses.items()) if not (math.isfinite(v) and v <= top)]
      if off:
        ax.plot(off, [top] * len(off), "x", color=color)
    if group["paper"] is not None:
      ax.axvline(group["paper"], color="gray", **PAPER_STYLE)
    ax.plot([], [], color="gray", label="paper's rate (dashed)", **PAPER_STYLE)
    ax.plot([], [], "*", color="gray", label="best of the length")
    ax.plot([], [], "x", color="gray", label="diverged or off the chart")
    ax.set_ylim(0, top * 1.05)
    chosen = "" if group["chosen"] is None else f" (chosen 2^{group['chosen']})"
    ax.set_title(group["panel"] + chosen)
    ax.set_xlabel("log2 of the applied learning rate")
    ax.set_ylabel(METRIC_LABELS["heldout_loss"])
    ax.legend(fontsize=7)
  return _save(fig, path)


def landscape(data: dict, path: str):
  """Mean loss along random directions, a panel per distribution, a line per epoch.

  Args:
    data: ``alphas`` and ``loss``/``std``: {distribution: {epoch: [per alpha]}}.
    path: the PNG to write.
  """
  distributions = list(data["loss"])
  fig, axes = _grid(len(distributions))
  alphas = np.asarray(data["alphas"])
  for ax, distribution in zip(axes, distributions):
    for epoch, loss in sorted(data["loss"][distribution].items(), key=lambda kv: int(kv[0])):
      loss, std = np.asarray(loss), np.asarray(data["std"][distribution][epoch])
      ax.plot(alphas, loss, label=f"epoch {epoch}")
      ax.fill_between(alphas, loss - std, loss + std, alpha=0.2)
    ax.set_title(f"{distribution} directions")
    ax.set_xlabel("displacement a along a unit direction")
    ax.set_ylabel(f"loss (mean over {data['directions']} directions)")
    ax.legend(fontsize=7)
  return _save(fig, path)


def orthogonality(data: dict, path: str):
  """Fig. B.8: the mean cosine of random pairs against the dimension, and the mean |cosine|.

  Left, as the paper plots it: the mean cosine of ``pairs`` pairs per
  dimension n, in a band of +- 1 / sqrt(n) (the std of one cosine of two
  independent isotropic unit vectors) and +- 1 / sqrt(n pairs) (the std of
  the mean). Right: the mean |cosine|, +- its std / sqrt(pairs), beside
  sqrt(2 / (pi n)).

  Args:
    data: ``dims``, ``pairs`` and ``mean``/``abs_mean``/``abs_std``:
      {distribution: [per dim]}.
    path: the PNG to write.
  """
  fig, (signed, absolute) = _grid(2, width=5.5, height=4.2)
  dims = np.asarray(data["dims"], float)
  pairs = data["pairs"]
  one = 1 / np.sqrt(dims)
  signed.fill_between(
    dims, -one, one, color="gray", alpha=0.15, label="\u00b1 1 / sqrt(n): one pair"
  )
  signed.fill_between(
    dims,
    -one / np.sqrt(pairs),
    one / np.sqrt(pairs),
    color="gray",
    alpha=0.35,
    label=f"\u00b1 1 / sqrt({pairs} n): mean of {pairs}",
  )
  signed.axhline(0.0, color="black", linewidth=0.8)
  for i, (distribution, means) in enumerate(data["mean"].items()):
    signed.plot(
      dims,
      means,
      marker=MARKERS[i % len(MARKERS)],
      linestyle=LINE_STYLES[i % len(LINE_STYLES)],
      markersize=6 - i,
      label=distribution,
    )
  signed.set_ylabel(f"mean cosine of {pairs} random pairs")
  for i, (distribution, means) in enumerate(data["abs_mean"].items()):
    absolute.errorbar(
      dims,
      means,
      yerr=np.asarray(data["abs_std"][distribution]) / np.sqrt(pairs),
      marker=MARKERS[i % len(MARKERS)],
      linestyle=LINE_STYLES[i % len(LINE_STYLES)],
      markersize=6 - i,
      capsize=3,
      label=distribution,
    )
  absolute.plot(
    dims, np.sqrt(2 / (np.pi * dims)), color="black", linestyle="--", label="sqrt(2 / (pi n))"
  )
  absolute.set_yscale("log")
  absolute.set_ylabel(f"mean |cosine| of {pairs} pairs (\u00b1 std / sqrt({pairs}))")
  for ax in (signed, absolute):
    ax.set_xscale("log")
    ax.set_xlabel("dimension n")
    ax.legend(fontsize=7)
  return _save(fig, path)


# Plots drawn from a sweep's rows; "tuning", "landscape" and "orthogonality"
# are drawn by experiments/tune.py and experiments/analysis.py from their data.
ROW_PLOTS = {"bars": bars, "curves": curves, "against": against}


def draw(report: dict, rows: list[results_lib.Row], results_dir: str) -> list[str]:
  """The report's row plots as ``<name>_<kind>_<metric>.png``; returns the paths.

  A ``curves`` plot is left out while no row has two epochs of its metric:
  its ``bars`` sibling shows the one epoch.
  """
  written = []
  for spec in report.get("plots", []):
    if spec["kind"] not in ROW_PLOTS:
      continue
    metric = spec.get("metric") or "-".join(spec["metrics"])
    if spec["kind"] == "curves" and not has_epoch_axis(rows, spec["metric"]):
      continue
    path = os.path.join(results_dir, f"{report['name']}_{spec['kind']}_{metric}.png")
    ROW_PLOTS[spec["kind"]](rows, spec, path)
    written.append(path)
  return written
