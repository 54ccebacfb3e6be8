"""Fig. B.10: per-layer compartments (5 x 250 directions) against one basis of 1250.

  python -m experiments.reproduce --config=configs/figb10.py --data_root=DIR

PAPER.md (§3.1.1): the CNN's five layers each get their own basis of 250
directions (bases.compartments = "module", allocation "fixed"), against one
basis of d = 1250 over all parameters; the compartments win by 0.64 +- 0.27,
1.02 +- 0.17 and 3.85 +- 0.64 points on MNIST, FMNIST and CIFAR-10. 100
epochs as Table 1; both take the pair's d = 250 RBD rate scaled by
250 / 1250 (configs/learning_rates.py ``for_total_d``; each row prints it).
"""

from configs import common, learning_rates

EPOCHS = 100
DATASETS = ("mnist", "fashion_mnist", "cifar10")
# PAPER.md: per-layer minus one basis, validation accuracy points.
PAPER_GAIN = {"mnist": (0.64, 0.27), "fashion_mnist": (1.02, 0.17), "cifar10": (3.85, 0.64)}


def _entries(dataset):
  pair = common.pair_name("cnn", dataset)
  # Both arms have 1,250 directions: the pair's d = 250 rate scaled to them.
  rate = learning_rates.for_total_d(learning_rates.rate("cnn", dataset, "rbd"), 1250)
  rbd = {
    **common.method_run("cnn", dataset, "rbd"),
    "learning_rate.rbd": rate.value,
    "rate": str(rate),
  }
  return [
    {
      "name": f"{pair} per layer 5 x 250",
      "label": "per layer 5 x 250",
      "panel": pair,
      "bases.d": 250,
      "bases.compartments": "module",
      "bases.allocation": "fixed",
      **rbd,
    },
    {
      "name": f"{pair} one basis 1250",
      "label": "one basis 1250",
      "panel": pair,
      **rbd,
      "bases.d": 1250,
    },
  ]


def get_config(arg=None):
  """CNN-MNIST with a basis of 250 per layer."""
  arg = common.parse(arg)
  return common.single(arg, epochs=EPOCHS, entry=_entries("mnist")[0])


def sweep(arg=None):
  arg = common.parse(arg)
  return common.finish([e for dataset in DATASETS for e in _entries(dataset)], arg)


def report(arg=None):
  arg = common.parse(arg)
  return {
    "name": common.results_name("figb10", arg),
    "title": "Fig. B.10: CNN, per-layer compartments (5 x 250) vs one basis of 1250",
    "scale": common.scale_note(arg, epochs=EPOCHS),
    "columns": [
      {"metric": "validation_accuracy", "label": "validation acc %", "percent": True},
      {"metric": "test_accuracy", "label": "test acc %", "percent": True},
    ],
    "contrasts": [
      {
        "a": f"{common.pair_name('cnn', ds)} per layer 5 x 250",
        "b": f"{common.pair_name('cnn', ds)} one basis 1250",
        "metric": "validation_accuracy",
        "paper": PAPER_GAIN[ds],
      }
      for ds in DATASETS
    ],
    "plots": [
      {"kind": "bars", "metric": "validation_accuracy"},
      {"kind": "curves", "metric": "validation_accuracy"},
    ],
    "notes": [],
  }
