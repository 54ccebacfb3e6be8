"""Table 1: NES, FPD, RBD and SGD at d = 250 on the six model/data pairs.

  python -m experiments.reproduce --config=configs/table1.py --data_root=DIR
  python -m experiments.reproduce --config=configs/table1.py:epochs=1,steps=500 ...
  python -m random_bases.main --config=configs/table1.py:runlocal --workdir=/tmp/t1

PAPER.md: validation accuracy (%) after 100 epochs, mean +- std of 3 runs;
batch 32, no momentum, no schedule. Learning rates: configs/learning_rates.py.
"""

from configs import common

# PAPER.md Table 1: (mean, std) validation accuracy in %.
PAPER = {
  ("fc", "mnist"): {
    "nes": (22.5, 1.7),
    "fpd": (80, 0.4),
    "rbd": (93.893, 0.024),
    "sgd": (98.27, 0.09),
  },
  ("fc", "fashion_mnist"): {
    "nes": (45, 6),
    "fpd": (77.3, 0.29),
    "rbd": (85.65, 0.2),
    "sgd": (87.32, 0.21),
  },
  ("fc", "cifar10"): {
    "nes": (17.8, 0.5),
    "fpd": (21.4, 1.2),
    "rbd": (43.77, 0.22),
    "sgd": (52.09, 0.22),
  },
  ("cnn", "mnist"): {"nes": (51, 6), "fpd": (88.9, 0.6), "rbd": (97.17, 0.1), "sgd": (99.41, 0.09)},
  ("cnn", "fashion_mnist"): {
    "nes": (37, 4),
    "fpd": (77.8, 1.6),
    "rbd": (85.56, 0.1),
    "sgd": (91.95, 0.18),
  },
  ("cnn", "cifar10"): {
    "nes": (20.3, 1),
    "fpd": (37.2, 0.8),
    "rbd": (54.64, 0.33),
    "sgd": (81.4, 0.4),
  },
}
METHODS = ("nes", "fpd", "rbd", "sgd")
EPOCHS = 100  # PAPER.md: Tables 1 and 2


def get_config(arg=None):
  """One cell of the table: ``:model=cnn,dataset=cifar10,method=rbd`` (default FC-MNIST RBD)."""
  arg = common.parse(arg, model="fc", dataset="mnist", method="rbd")
  common.check_cell(arg, pairs=tuple(PAPER), methods=METHODS)
  return common.single(
    arg,
    epochs=EPOCHS,
    entry={"bases.d": 250, **common.method_run(arg.model, arg.dataset, arg.method)},
  )


def sweep(arg=None):
  arg = common.parse(arg)
  entries = []
  for model, dataset in common.PAIRS:
    pair = common.pair_name(model, dataset)
    for method in METHODS:
      entries.append(
        {
          "name": f"{pair} {common.METHOD_TITLES[method]}",
          "panel": pair,
          "label": common.METHOD_TITLES[method],
          "paper": {"validation_accuracy": PAPER[model, dataset][method]},
          "bases.d": 250,
          **common.method_run(model, dataset, method),
        }
      )
  return common.finish(entries, arg)


def report(arg=None):
  arg = common.parse(arg)
  return {
    "name": common.results_name("table1", arg),
    "title": "Table 1: validation accuracy (%) at d = 250, NES / FPD / RBD / SGD",
    "scale": common.scale_note(arg, epochs=EPOCHS),
    "columns": [
      {"metric": "validation_accuracy", "label": "validation acc %", "percent": True},
      {"metric": "test_accuracy", "label": "test acc %", "percent": True},
    ],
    "plots": [
      {"kind": "bars", "metric": "validation_accuracy"},
      {"kind": "curves", "metric": "validation_accuracy"},
    ],
    "notes": ["Paper: 100 epochs, 3 runs each (PAPER.md Table 1)."],
  }
