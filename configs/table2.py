"""Table 2: RBD with Bernoulli, uniform and normal directions on the six pairs.

  python -m experiments.reproduce --config=configs/table2.py --data_root=DIR

PAPER.md: RBD validation accuracy (%) after 100 epochs, d = 250, by the
distribution of the directions' entries (all normalised to unit length here).
Every distribution runs at the pair's RBD rate for normal directions at
d = 250 (configs/learning_rates.py): with unit directions the update's scale
does not depend on the distribution. Fig. B.15's per-distribution rates
(normal 2^-3, Bernoulli 2^-1, uniform 2^1) make up for the reference code's
scale, which divides every direction by sqrt(D) whatever its entries'
variance (PAPER.md); configs/figb15.py runs them.
"""

from configs import common, learning_rates

# PAPER.md Table 2: (mean, std) validation accuracy in %.
PAPER = {
  ("fc", "mnist"): {"bernoulli": (77.5, 0.4), "uniform": (89.61, 0.29), "normal": (94.95, 0.11)},
  ("fc", "fashion_mnist"): {
    "bernoulli": (76, 0.6),
    "uniform": (81.7, 0.14),
    "normal": (85.26, 0.2),
  },
  ("fc", "cifar10"): {"bernoulli": (29.12, 0.33), "uniform": (36.52, 0.2), "normal": (42.6, 0.5)},
  ("cnn", "mnist"): {"bernoulli": (67, 6), "uniform": (87, 6), "normal": (96.75, 0.18)},
  ("cnn", "fashion_mnist"): {
    "bernoulli": (65.9, 3.3),
    "uniform": (77.8, 1.9),
    "normal": (83.8, 0.7),
  },
  ("cnn", "cifar10"): {"bernoulli": (28.5, 0.6), "uniform": (41, 1.4), "normal": (52.3, 0.9)},
}
DISTRIBUTIONS = ("bernoulli", "uniform", "normal")
TITLES = {"bernoulli": "Bernoulli-0.5", "uniform": "Uniform", "normal": "Normal"}
EPOCHS = 100


def _rbd(model: str, dataset: str, distribution: str) -> dict:
  """RBD at the pair's rate for normal directions, labelled as normal's on the other two."""
  run = common.method_run(model, dataset, "rbd")
  run["rate"] = str(learning_rates.for_distribution(model, dataset, distribution))
  return run


def get_config(arg=None):
  """One cell: ``:model=cnn,dataset=cifar10,distribution=uniform`` (default FC-MNIST Bernoulli)."""
  arg = common.parse(arg, model="fc", dataset="mnist", distribution="bernoulli")
  common.check_cell(arg, pairs=tuple(PAPER), distributions=DISTRIBUTIONS)
  return common.single(
    arg,
    epochs=EPOCHS,
    entry={
      "bases.distribution": arg.distribution,
      **common.method_run(arg.model, arg.dataset, "rbd"),
    },
  )


def sweep(arg=None):
  arg = common.parse(arg)
  entries = []
  for model, dataset in common.PAIRS:
    pair = common.pair_name(model, dataset)
    for distribution in DISTRIBUTIONS:
      entries.append(
        {
          "name": f"{pair} {TITLES[distribution]}",
          "panel": pair,
          "label": TITLES[distribution],
          "paper": {"validation_accuracy": PAPER[model, dataset][distribution]},
          "bases.d": 250,
          "bases.distribution": distribution,
          **_rbd(model, dataset, distribution),
        }
      )
  return common.finish(entries, arg)


def report(arg=None):
  arg = common.parse(arg)
  return {
    "name": common.results_name("table2", arg),
    "title": "Table 2: RBD validation accuracy (%) by distribution, d = 250",
    "scale": common.scale_note(arg, epochs=EPOCHS),
    "columns": [
      {"metric": "validation_accuracy", "label": "validation acc %", "percent": True},
      {"metric": "test_accuracy", "label": "test acc %", "percent": True},
    ],
    "plots": [
      {"kind": "bars", "metric": "validation_accuracy"},
      {"kind": "curves", "metric": "validation_accuracy"},
    ],
    "notes": ["Paper: 100 epochs, 3 runs each (PAPER.md Table 2)."],
  }
