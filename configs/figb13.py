"""Fig. B.13 / B.14: long training with very few directions, d = 2, 10, 50, and SGD.

  python -m experiments.reproduce --config=configs/figb13.py --data_root=DIR
  python -m experiments.reproduce --config=configs/figb13.py:epochs=20 ...

PAPER.md: 2000 epochs of the CNN on CIFAR-10; d = 2 converges to
48.20 +- 0.23 % validation accuracy, d = 10 and 50 do better, SGD reaches
68.06 +- 0.14 % in the same epochs. Rates: configs/learning_rates.py. The
rule differs across d, and each row's label names its own: d = 10 has Fig.
B.7's rate (shifted like ours at d = 250); Fig. B.7 gives none for d = 2 and
50, which run at the d = 250 rate, labelled "not scaled to d = 2" / "50"
(``learning_rates.rate_at``). Raising
``epochs`` later extends the same runs (train.epochs may change on resume).
"""

from configs import common, learning_rates

EPOCHS = 2000
DS = (2, 10, 50)
PAPER = {2: (48.20, 0.23), "sgd": (68.06, 0.14)}


def _parse(arg):
  return common.parse(arg, pair="cnn-cifar10")


def _entries(model, dataset):
  panel = common.pair_name(model, dataset)
  entries = []
  for d in DS:
    entry = {
      "name": f"RBD d = {d}",
      "panel": panel,
      "bases.d": d,
      **common.method_run(model, dataset, "rbd", d=d),
      "rate": str(learning_rates.rate_at(model, dataset, "rbd", d=d)),
    }
    if d in PAPER and (model, dataset) == ("cnn", "cifar10"):
      entry["paper"] = {"validation_accuracy": PAPER[d]}
    entries.append(entry)
  sgd = {"name": "SGD", "panel": panel, **common.method_run(model, dataset, "sgd")}
  if (model, dataset) == ("cnn", "cifar10"):
    sgd["paper"] = {"validation_accuracy": PAPER["sgd"]}
  return entries + [sgd]


def get_config(arg=None):
  """RBD at d = 2."""
  arg = _parse(arg)
  return common.single(arg, epochs=EPOCHS, entry=_entries(*common.parse_pair(arg.pair))[0])


def sweep(arg=None):
  arg = _parse(arg)
  return common.finish(_entries(*common.parse_pair(arg.pair)), arg)


def report(arg=None):
  arg = _parse(arg)
  return {
    "name": common.results_name(f"figb13_{arg.pair}", arg),
    "title": f"Fig. B.13 / B.14: long training with d = 2, 10, 50 and SGD, {arg.pair}",
    "scale": common.scale_note(arg, epochs=EPOCHS),
    "columns": [
      {"metric": "validation_accuracy", "label": "validation acc %", "percent": True},
      {"metric": "train_accuracy", "label": "train acc %", "percent": True},
    ],
    "plots": [
      {"kind": "bars", "metric": "validation_accuracy"},
      {"kind": "curves", "metric": "validation_accuracy"},
      {"kind": "curves", "metric": "train_loss"},
    ],
    "notes": ["PAPER.md's values are after 2000 epochs."],
  }
