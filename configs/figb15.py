"""Fig. B.15: RBD's validation curves by distribution (normal, uniform, Bernoulli).

  python -m experiments.reproduce --config=configs/figb15.py --data_root=DIR
  python -m experiments.reproduce --config=configs/figb15.py:pair=fc-mnist ...

PAPER.md gives this figure's rates: normal 2^-3, Bernoulli 2^-1, uniform 2^1
(configs/learning_rates.py files them under CNN-CIFAR10, the pair whose
Table 4 RBD rate is normal's 2^-3; the default here). d = 250, 100 epochs.
"""

from configs import common

EPOCHS = 100
DISTRIBUTIONS = ("normal", "uniform", "bernoulli")


def _parse(arg):
  return common.parse(arg, pair="cnn-cifar10")


def _entry(model, dataset, distribution):
  return {
    "name": distribution,
    "panel": common.pair_name(model, dataset),
    "bases.d": 250,
    "bases.distribution": distribution,
    **common.method_run(model, dataset, "rbd", distribution=distribution),
  }


def get_config(arg=None):
  """The pair's RBD run with normal directions."""
  arg = _parse(arg)
  return common.single(arg, epochs=EPOCHS, entry=_entry(*common.parse_pair(arg.pair), "normal"))


def sweep(arg=None):
  arg = _parse(arg)
  model, dataset = common.parse_pair(arg.pair)
  return common.finish([_entry(model, dataset, d) for d in DISTRIBUTIONS], arg)


def report(arg=None):
  arg = _parse(arg)
  return {
    "name": common.results_name(f"figb15_{arg.pair}", arg),
    "title": f"Fig. B.15: RBD by distribution, {arg.pair}, d = 250",
    "scale": common.scale_note(arg, epochs=EPOCHS),
    "columns": [
      {"metric": "validation_accuracy", "label": "validation acc %", "percent": True},
      {"metric": "test_accuracy", "label": "test acc %", "percent": True},
    ],
    "plots": [
      {"kind": "curves", "metric": "validation_accuracy"},
      {"kind": "curves", "metric": "validation_loss"},
    ],
    "notes": ["Directions of every distribution are normalised to unit length."],
  }
