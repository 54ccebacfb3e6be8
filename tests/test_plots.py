"""The results' plots, drawn from hand-built rows: what each chart shows, not only the file."""

import math
import os
import pathlib

import matplotlib.collections
import matplotlib.container
import numpy as np
import pytest

from experiments import plots, reproduce
from experiments import results as results_lib

ROOT = pathlib.Path(__file__).resolve().parents[1]
FINISHED = {"status": "finished", "reason": None}
DIVERGED = {"status": "diverged", "reason": "the train loss is nan"}


def run(seed, accuracies, status=FINISHED, **metrics):
  """A seed's run: one record per epoch (accuracies as fractions), ``metrics`` at every epoch."""
  records = [
    {"epoch": epoch, "validation_accuracy": accuracy, **metrics}
    for epoch, accuracy in enumerate(accuracies, 1)
  ]
  return results_lib.RunResult(seed, f"/runs/{seed}", records, dict(status), None)


def row(name, runs, **entry):
  return results_lib.Row({"name": name, **entry}, runs)


def visible(figure):
  return [ax for ax in figure.axes if ax.get_visible()]


def texts(ax):
  return [t.get_text() for t in ax.texts]


def legend_texts(legend):
  return [t.get_text() for t in legend.get_texts()]


def errorbars(ax):
  return [c for c in ax.containers if isinstance(c, matplotlib.container.ErrorbarContainer)]


def lines_labelled(ax, label):
  return [line for line in ax.get_lines() if line.get_label() == label]


# --- bars ------------------------------------------------------------------------------------


@pytest.fixture
def table_rows():
  """Table 1's shape: two seeds, the paper's value, a rate per row, one run diverged."""
  pair = {"panel": "FC-MNIST"}
  return [
    row(
      "FC-MNIST NES",
      [run(0, [], DIVERGED), run(1, [0.30])],
      label="NES",
      paper={"validation_accuracy": (22.5, 1.7)},
      rate="2^-7 (tuned)",
      **pair,
    ),
    row(
      "FC-MNIST FPD",
      [run(0, [], DIVERGED), run(1, [], DIVERGED)],
      label="FPD",
      paper={"validation_accuracy": (80.0, 0.4)},
      rate="2^5 (tuned)",
      **pair,
    ),
    row(
      "FC-MNIST RBD",
      [run(0, [0.90]), run(1, [0.92])],
      label="RBD",
      paper={"validation_accuracy": (93.893, 0.024)},
      rate="2^4 (tuned)",
      **pair,
    ),
    row(
      "FC-MNIST SGD",
      [run(0, [0.80]), run(1, [0.84], {"status": "stopped", "reason": "acc"})],
      label="SGD",
      paper={"validation_accuracy": (98.27, 0.09)},
      rate="2^-3 (tuned)",
      **pair,
    ),
    # Another pair where every row shares one rate, and a row that has not run.
    row("CNN-MNIST RBD", [run(0, [0.50]), run(1, [0.70])], label="RBD", panel="CNN-MNIST"),
    row(
      "CNN-MNIST SGD",
      [results_lib.RunResult(0, "/runs/x", [], None, None)],
      label="SGD",
      panel="CNN-MNIST",
    ),
  ]


def test_bars_show_means_seeds_errors_the_paper_and_every_row(table_rows, tmp_path):
  path = tmp_path / "bars.png"
  figure = plots.bars(table_rows, {"kind": "bars", "metric": "validation_accuracy"}, str(path))
  assert os.path.getsize(path) > 0
  fc, cnn = visible(figure)
  assert (fc.get_title(), cnn.get_title()) == ("FC-MNIST", "CNN-MNIST")
  assert fc.get_ylabel() == "validation accuracy (%)"
  # Every row has its tick, the ones that left no value included, with its mean +- std.
  ticks = [t.get_text() for t in fc.get_xticklabels()]
  assert [t.splitlines()[0] for t in ticks] == ["NES", "FPD", "RBD", "SGD"]
  assert ticks[2] == "RBD\n91.0 \u00b1 1.4"  # sample std of 90 and 92
  assert ticks[1] == "FPD"  # no value: no number
  # A bar per row with a value: the mean over seeds.
  heights = [c.patches[0].get_height() for c in fc.containers if hasattr(c, "patches")]
  assert heights == pytest.approx([30.0, 91.0, 82.0])
  # Error bars only where two seeds left a value (RBD, SGD), +- the sample std.
  bars = errorbars(fc)
  assert [c.get_label() for c in bars] == ["RBD \u00b1 std", "SGD \u00b1 std"]
  (segment,) = bars[0].lines[2][0].get_segments()
  assert [y for _, y in segment] == pytest.approx([91.0 - math.sqrt(2), 91.0 + math.sqrt(2)])
  # Each seed's own value is a dot; SGD's seed that stopped early has its own marker.
  seeds = sorted(v for line in lines_labelled(fc, "_seed") for v in line.get_ydata())
  assert seeds == pytest.approx([30.0, 80.0, 90.0, 92.0])
  assert [list(line.get_ydata()) for line in lines_labelled(fc, "_stopped")] == [[84.0]]
  # The paper's value of every row, hollow.
  papers = {line.get_label(): line.get_ydata()[0] for line in fc.get_lines()}
  assert papers["RBD paper"] == pytest.approx(93.893)
  assert papers["FPD paper"] == pytest.approx(80.0)  # drawn though FPD left no value
  assert lines_labelled(fc, "RBD paper")[0].get_markerfacecolor() == "none"
  # Diverged runs are marked, never missing: NES's one seed, FPD's two.
  assert texts(fc) == ["diverged", "2 seeds diverged"]
  failed = lines_labelled(fc, "_failed")
  assert [line.get_marker() for line in failed] == ["x", "x"]
  assert [line.get_xdata()[0] for line in failed] == [0, 1]  # under NES and FPD
  # The rows differ by rate: each legend entry names its row's rate.
  assert legend_texts(fc.get_legend()) == [
    "NES: rate 2^-7 (tuned)",
    "FPD: rate 2^5 (tuned)",
    "RBD: rate 2^4 (tuned)",
    "SGD: rate 2^-3 (tuned)",
  ]
  # The key explains every marker.
  (key,) = figure.legends
  assert legend_texts(key) == [
    "mean over seeds",
    "\u00b1 std over seeds",
    "one seed",
    "seed stopped early",
    "paper",
    "diverged",
  ]
  # The other pair: a row that has not run says so.
  assert [t.get_text() for t in cnn.get_xticklabels()] == ["RBD\n60.0 \u00b1 14.1", "SGD"]
  assert texts(cnn) == ["not run"]


def test_bars_print_a_rate_the_rows_share_once(tmp_path):
  rate = "2^1 (2^3 (tuned) x 250 / 1,250)"
  rows = [
    row("per layer", [run(0, [0.2])], panel="CNN-CIFAR10", rate=rate),
    row("one basis", [run(0, [], DIVERGED)], panel="CNN-CIFAR10", rate=rate),
  ]
  figure = plots.bars(rows, {"metric": "validation_accuracy"}, str(tmp_path / "b.png"))
  (ax,) = visible(figure)
  assert legend_texts(ax.get_legend()) == [f"all rows: rate {rate}"]
  assert errorbars(ax) == []  # one seed: no error bar
  assert texts(ax) == ["diverged"]


def test_a_diverged_seed_with_epochs_is_marked_at_its_last_value(tmp_path):
  rows = [row("RBD", [run(0, [0.3, 0.4], DIVERGED), run(1, [0.5, 0.6])], panel="p")]
  figure = plots.bars(rows, {"metric": "validation_accuracy"}, str(tmp_path / "b.png"))
  (ax,) = visible(figure)
  (cross,) = lines_labelled(ax, "_diverged")
  assert (cross.get_marker(), cross.get_ydata()[0]) == ("x", pytest.approx(40.0))
  assert texts(ax) == ["diverged"]
  assert [line.get_ydata()[0] for line in lines_labelled(ax, "_seed")] == pytest.approx([60.0])


# --- curves ----------------------------------------------------------------------------------


def test_curves_keep_coinciding_lines_visible_and_mark_divergence(tmp_path):
  """Fig. 3: q = 5 follows RBD only for five epochs, then diverges."""
  shared = {"panel": ["RBD->SGD"], "rate": "RBD 2^3 (tuned), SGD 2^-3 (tuned)"}
  rbd = [0.21, 0.25, 0.26, 0.27, 0.20, 0.20]
  rows = [
    row("RBD only", [run(0, rbd)], **shared),
    row("SGD only", [run(0, [0.28, 0.36, 0.36, 0.40, 0.36, 0.38])], **shared),
    row("q = 5", [run(0, rbd[:5], DIVERGED)], phases="rbd:5,sgd", **shared),
  ]
  spec = {"metric": "validation_accuracy", "switches": True}
  figure = plots.curves(rows, spec, str(tmp_path / "c.png"))
  (ax,) = visible(figure)
  lines = {name: lines_labelled(ax, name)[0] for name in ("RBD only", "SGD only", "q = 5")}
  assert list(lines["q = 5"].get_ydata()) == pytest.approx([21.0, 25.0, 26.0, 27.0, 20.0])
  # Distinct styles; the later line thinner and with smaller markers, drawn on top.
  styles = {(line.get_linestyle(), line.get_marker()) for line in lines.values()}
  assert len(styles) == 3
  assert lines["RBD only"].get_linewidth() > lines["q = 5"].get_linewidth()
  assert lines["RBD only"].get_markersize() > lines["q = 5"].get_markersize()
  assert lines["q = 5"].get_zorder() > lines["RBD only"].get_zorder()
  # The switch, and the divergence at the last epoch it reached.
  assert any(list(line.get_xdata()) == [5, 5] for line in ax.get_lines())
  (cross,) = lines_labelled(ax, "_diverged")
  assert (cross.get_xdata()[0], cross.get_ydata()[0]) == (5, pytest.approx(20.0))
  assert "q = 5: diverged" in texts(ax)
  legend = legend_texts(ax.get_legend())
  assert legend[:3] == ["RBD only", "SGD only", "q = 5"]
  assert "all rows: rate RBD 2^3 (tuned), SGD 2^-3 (tuned)" in legend
  assert "seed diverged" in legend


def test_curves_name_each_rows_rate_where_they_differ(tmp_path):
  rows = [
    row("RBD d = 2", [run(0, [0.3, 0.4])], panel="p", rate="2^3 (tuned; not scaled to d = 2)"),
    row("SGD", [run(0, [0.4, 0.5]), run(1, [0.6, 0.7])], panel="p", rate="2^-3 (tuned)"),
  ]
  figure = plots.curves(rows, {"metric": "validation_accuracy"}, str(tmp_path / "c.png"))
  (ax,) = visible(figure)
  assert legend_texts(ax.get_legend()) == [
    "RBD d = 2: rate 2^3 (tuned; not scaled to d = 2)",
    "SGD: rate 2^-3 (tuned)",
  ]
  # Two seeds: a band of +- std around the mean.
  (band,) = [c for c in ax.collections if isinstance(c, matplotlib.collections.PolyCollection)]
  ys = band.get_paths()[0].vertices[:, 1]
  assert (ys.min(), ys.max()) == pytest.approx((50 - math.sqrt(200), 60 + math.sqrt(200)))


# --- against d -------------------------------------------------------------------------------


def test_against_draws_the_whole_vector_correlation_beside_its_formula(tmp_path):
  big_d = 122_570

  def rbd(d, rate, runs):
    return row(f"RBD d = {d}", runs, label="RBD", x=d, rate=rate)

  def whole(d):
    return float(np.sqrt(d / big_d) / np.sqrt(1 + d / big_d))

  rows = [
    rbd(10, "2^5 (paper Fig. B.7's)", [run(0, [0.17], correlation_whole=whole(10))]),
    rbd(250, "2^3 (tuned)", [run(0, [0.25], correlation_whole=whole(250))]),
    rbd(10_000, "2^1 (paper Fig. B.7's)", [run(0, [], DIVERGED)]),
    row("SGD", [run(0, [0.32])], rate="2^-3 (tuned)"),
  ]
  spec = {
    "kind": "against",
    "x_label": "d",
    "log_x": True,
    "metrics": ["validation_accuracy", "correlation_whole"],
    "geometry": {"metric": "correlation_whole", "D": big_d},
  }
  figure = plots.against(rows, spec, str(tmp_path / "a.png"))
  accuracy, correlation = visible(figure)
  (formula,) = [
    line for line in correlation.get_lines() if line.get_label().startswith("sqrt(d/D)")
  ]
  assert formula.get_xdata()[-1] == pytest.approx(10_000)
  assert formula.get_ydata()[-1] == pytest.approx(0.2747, abs=1e-4)  # README: 0.275 at 10^4
  assert "D = 122,570" in formula.get_label()
  assert not [line for line in accuracy.get_lines() if line.get_label().startswith("sqrt")]
  (points,) = errorbars(correlation)
  assert list(points.lines[0].get_ydata()) == pytest.approx([whole(10), whole(250)])
  # The rates differ along the line: each point carries its own.
  assert sorted(texts(accuracy)) == ["2^3", "2^5", "diverged"]
  assert "RBD (rate at each point)" in legend_texts(accuracy.get_legend())
  assert "SGD: rate 2^-3 (tuned)" in legend_texts(accuracy.get_legend())
  # d = 10^4 diverged: marked at its d, not left out.
  (cross,) = lines_labelled(accuracy, "_failed")
  assert cross.get_xdata()[0] == 10_000
  assert [t.get_text() for t in accuracy.get_xticklabels()] == ["10", "250", "10,000"]


# --- Fig. B.8 --------------------------------------------------------------------------------


def test_orthogonality_plots_the_mean_cosine_in_its_band_and_the_mean_abs(tmp_path):
  dims = [10, 100, 1000]
  data = {
    "dims": dims,
    "pairs": 100,
    "mean": {"normal": [0.01, -0.002, 0.0005], "bernoulli": [-0.02, 0.001, 0.0]},
    "abs_mean": {"normal": [0.25, 0.08, 0.025], "bernoulli": [0.24, 0.08, 0.026]},
    "abs_std": {"normal": [0.2, 0.06, 0.02], "bernoulli": [0.2, 0.06, 0.02]},
  }
  figure = plots.orthogonality(data, str(tmp_path / "o.png"))
  signed, absolute = visible(figure)
  assert signed.get_ylabel() == "mean cosine of 100 random pairs"
  assert list(lines_labelled(signed, "normal")[0].get_ydata()) == [0.01, -0.002, 0.0005]
  assert signed.get_yscale() == "linear" and signed.get_xscale() == "log"
  bands = [c for c in signed.collections if isinstance(c, matplotlib.collections.PolyCollection)]
  assert [b.get_label() for b in bands] == [
    "\u00b1 1 / sqrt(n): one pair",
    "\u00b1 1 / sqrt(100 n): mean of 100",
  ]
  assert bands[0].get_paths()[0].vertices[:, 1].max() == pytest.approx(1 / math.sqrt(10))
  assert "mean |cosine|" in absolute.get_ylabel() and absolute.get_yscale() == "log"
  (reference,) = lines_labelled(absolute, "sqrt(2 / (pi n))")
  assert reference.get_ydata() == pytest.approx(np.sqrt(2 / (np.pi * np.asarray(dims))))


# --- draw: the config's report chooses the charts -------------------------------------------


def test_draw_skips_curves_without_an_epoch_axis(tmp_path):
  report = {
    "name": "t",
    "plots": [
      {"kind": "bars", "metric": "validation_accuracy"},
      {"kind": "curves", "metric": "validation_accuracy"},
      {"kind": "landscape"},  # drawn by the analysis, not here
    ],
  }
  one_epoch = [row("RBD", [run(0, [0.5])], panel="p")]
  assert plots.draw(report, one_epoch, str(tmp_path)) == [
    str(tmp_path / "t_bars_validation_accuracy.png")
  ]
  two_epochs = [row("RBD", [run(0, [0.5, 0.6])], panel="p")]
  assert plots.draw(report, two_epochs, str(tmp_path)) == [
    str(tmp_path / "t_bars_validation_accuracy.png"),
    str(tmp_path / "t_curves_validation_accuracy.png"),
  ]


def test_draw_table2s_report_shows_every_distribution_and_its_rate(tmp_path):
  """Table 2's own sweep and report: CNN-MNIST's three rows are there, diverged or not."""
  module = reproduce.load_config_module(str(ROOT / "configs" / "table2.py"))
  entries = [e for e in module.sweep() if e["panel"] in ("CNN-MNIST", "CNN-CIFAR10")]
  rows = []
  for entry in entries:
    if entry["panel"] == "CNN-MNIST" and entry["label"] != "Normal":
      runs = [run(0, [], DIVERGED), run(1, [], DIVERGED)]
    else:
      runs = [run(0, [0.25]), run(1, [0.27])]
    rows.append(results_lib.Row(entry, runs))
  report = module.report()
  (path,) = plots.draw(report, rows, str(tmp_path))
  assert path.endswith("table2_bars_validation_accuracy.png")
  # draw does not return the figure: redraw the same spec to read it.
  (spec,) = [s for s in report["plots"] if s["kind"] == "bars"]
  mnist, cifar = visible(plots.bars(rows, spec, str(tmp_path / "again.png")))
  ticks = [t.get_text().splitlines()[0] for t in mnist.get_xticklabels()]
  assert ticks == ["Bernoulli-0.5", "Uniform", "Normal"]
  assert texts(mnist) == ["2 seeds diverged", "2 seeds diverged"]
  assert len(errorbars(mnist)) == 1 and len(errorbars(cifar)) == 3
  legend = legend_texts(mnist.get_legend())
  assert legend[2].startswith("Normal: rate 2^") and "normal's" not in legend[2]
  assert all("not tuned for" in text.replace("\n  ", " ") for text in legend[:2])
