"""The results' plots (PNG, matplotlib), drawn next to the results files.

* ``curves``: a metric per epoch, one panel per ``panel`` of the sweep, one
  line per entry (mean over seeds), the paper's final value as a dashed
  line in the same colour (Fig. B.6 style; Fig. 3 marks the switches).
* ``against``: last-epoch metrics against the entries' ``x`` (d, K), mean
  +- std over seeds; entries without ``x`` are horizontal references
  (Fig. B.7, Fig. 4).
* ``tuning``: the held-out loss against log2 of the rate, the paper's rate
  and ours marked (Table 4).
* ``landscape``: the loss along random directions by distribution and epoch
  (Fig. 2).
* ``orthogonality``: the mean |cosine| of random pairs against dimension
  (Fig. B.8).

Each function returns the figure after saving it, so tests can read what
was drawn.
"""

from __future__ import annotations

import math
import os

import matplotlib
import matplotlib.ticker

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


def _percent(metric: str) -> float:
  return 100.0 if metric.endswith("_accuracy") else 1.0


def _grid(count: int):
  cols = min(3, count)
  rows = math.ceil(count / cols)
  fig, axes = plt.subplots(rows, cols, figsize=(5 * cols, 3.8 * rows), squeeze=False)
  for ax in axes.flat[count:]:
    ax.set_visible(False)
  return fig, list(axes.flat[:count])


def _colors(labels: list[str]) -> dict[str, str]:
  cycle = plt.rcParams["axes.prop_cycle"].by_key()["color"]
  return {label: cycle[i % len(cycle)] for i, label in enumerate(labels)}


def _save(fig, path: str):
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)
  return fig


def _panels(row: results_lib.Row) -> list[str]:
  panel = row.entry.get("panel", "")
  return list(panel) if isinstance(panel, (list, tuple)) else [panel]


def epoch_means(row: results_lib.Row, metric: str) -> tuple[list[int], list[float]]:
  """Epochs and the metric's mean over the seeds that reached each epoch."""
  by_epoch: dict[int, list[float]] = {}
  for run in row.runs:
    for record in run.metrics:
      if record.get(metric) is not None:
        by_epoch.setdefault(record["epoch"], []).append(record[metric])
  epochs = sorted(by_epoch)
  return epochs, [float(np.mean(by_epoch[e])) for e in epochs]


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
  colors = _colors(list(dict.fromkeys(row.entry.get("label", row.name) for row in rows)))
  fig, axes = _grid(len(panels))
  for ax, panel in zip(axes, panels):
    has_paper = False
    for row in rows:
      if panel not in _panels(row):
        continue
      label = row.entry.get("label", row.name)
      epochs, values = epoch_means(row, metric)
      if epochs:
        ax.plot(
          epochs,
          [v * scale for v in values],
          marker="o" if len(epochs) < 12 else None,
          markersize=3,
          color=colors[label],
          label=label,
        )
      paper = row.entry.get("paper", {}).get(metric)
      if paper is not None:
        ax.axhline(paper[0], color=colors[label], **PAPER_STYLE)
        has_paper = True
      switch = _switch_epoch(row.entry) if spec.get("switches") else None
      if switch is not None:
        ax.axvline(switch, color=colors[label], linestyle=":", alpha=0.6)
    if has_paper:
      ax.plot([], [], color="gray", label="paper (final, dashed)", **PAPER_STYLE)
    ax.set_title(panel)
    ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
    ax.set_xlabel("epoch")
    ax.set_ylabel(METRIC_LABELS.get(metric, metric))
    ax.legend(fontsize=7)
  return _save(fig, path)


def against(rows: list[results_lib.Row], spec: dict, path: str):
  """Last-epoch metrics against the entries' x, a panel per metric."""
  lines = list(dict.fromkeys(row.entry.get("label", row.name) for row in rows if "x" in row.entry))
  colors = _colors(lines)
  fig, axes = _grid(len(spec["metrics"]))
  for ax, metric in zip(axes, spec["metrics"]):
    scale = _percent(metric)
    for line in lines:
      points = []
      for row in rows:
        values = row.values(metric)
        if "x" in row.entry and row.entry.get("label", row.name) == line and values:
          mean, std = results_lib.mean_std([v * scale for v in values])
          points.append((row.entry["x"], mean, std or 0.0))
      if points:
        points.sort()
        xs, ys, errs = zip(*points)
        ax.errorbar(xs, ys, yerr=errs, marker="o", capsize=3, color=colors[line], label=line)
    for row in rows:
      values = row.values(metric)
      if "x" not in row.entry and values:
        ax.axhline(
          np.mean(values) * scale, color="black", linestyle="-.", linewidth=1, label=row.name
        )
    reference = spec.get("reference")
    if reference and reference["metric"] == metric:
      base = [r for r in rows if r.name == reference["name"] and r.values(metric)]
      if base:
        ax.axhline(
          reference["fraction"] * np.mean(base[0].values(metric)) * scale,
          color="gray",
          label=reference["label"],
          **PAPER_STYLE,
        )
    if spec.get("log_x"):
      ax.set_xscale("log")
    ax.set_xlabel(spec["x_label"])
    ax.set_ylabel(METRIC_LABELS.get(metric, metric))
    ax.legend(fontsize=7)
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
  """Mean |cosine| of random pairs against dimension, with sqrt(2 / (pi n)).

  Args:
    data: ``dims`` and ``abs_mean``/``abs_std``: {distribution: [per dim]}.
    path: the PNG to write.
  """
  fig, axes = _grid(1)
  ax = axes[0]
  dims = np.asarray(data["dims"], float)
  for distribution, means in data["abs_mean"].items():
    ax.errorbar(
      dims, means, yerr=data["abs_std"][distribution], marker="o", capsize=3, label=distribution
    )
  ax.plot(
    dims, np.sqrt(2 / (np.pi * dims)), color="black", linestyle="--", label="sqrt(2 / (pi n))"
  )
  ax.set_xscale("log")
  ax.set_yscale("log")
  ax.set_xlabel("dimension n")
  ax.set_ylabel(f"mean |cosine| of {data['pairs']} random pairs")
  ax.legend(fontsize=7)
  return _save(fig, path)


# Plots drawn from a sweep's rows; "tuning", "landscape" and "orthogonality"
# are drawn by experiments/tune.py and experiments/analysis.py from their data.
ROW_PLOTS = {"curves": curves, "against": against}


def draw(report: dict, rows: list[results_lib.Row], results_dir: str) -> list[str]:
  """The report's row plots as ``<name>_<kind>_<metric>.png``; returns the paths."""
  written = []
  for spec in report.get("plots", []):
    if spec["kind"] not in ROW_PLOTS:
      continue
    metric = spec.get("metric") or "-".join(spec["metrics"])
    path = os.path.join(results_dir, f"{report['name']}_{spec['kind']}_{metric}.png")
    ROW_PLOTS[spec["kind"]](rows, spec, path)
    written.append(path)
  return written
