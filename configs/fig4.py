"""Fig. 4 / B.9: RBD and FPD with the parameters split into K even compartments.

  python -m experiments.reproduce --config=configs/fig4.py --data_root=DIR
  python -m experiments.reproduce --config=configs/fig4.py:pair=fc-mnist,ks=1+4+16 ...

PAPER.md (§3.1.1): K equal slices of the flat parameter vector, each with
its own basis, the d = 250 directions split over them in proportion to their
size; even compartments improve accuracy and wall-clock time for RBD and
FPD. PAPER.md names neither the pair nor the K's: ``pair`` (default
CNN-CIFAR10) and ``ks`` pick them; 100 epochs as Table 1. K = 1 is one basis
(bases.compartments = "none", Table 1's run).
"""

from configs import common, learning_rates

EPOCHS = 100
KS = "1+2+4+8+16+32"


def _parse(arg):
  return common.parse(arg, pair="cnn-cifar10", ks=KS)


def _entry(model, dataset, method, k):
  run = common.method_run(model, dataset, method)
  if k != 1:  # the rate was found with one basis; its label says it was not retuned
    found = learning_rates.rate(model, dataset, method)
    run["rate"] = str(learning_rates.noted(found, f"found for K = 1, not retuned for K = {k}"))
  return {
    "name": f"{common.METHOD_TITLES[method]} K = {k}",
    "label": common.METHOD_TITLES[method],
    "x": k,
    "panel": common.pair_name(model, dataset),
    "bases.d": 250,
    "bases.compartments": "none" if k == 1 else str(k),
    **run,
  }


def get_config(arg=None):
  """RBD with 8 even compartments."""
  arg = _parse(arg)
  return common.single(arg, epochs=EPOCHS, entry=_entry(*common.parse_pair(arg.pair), "rbd", 8))


def sweep(arg=None):
  arg = _parse(arg)
  model, dataset = common.parse_pair(arg.pair)
  return common.finish(
    [
      _entry(model, dataset, method, int(k)) for method in ("rbd", "fpd") for k in arg.ks.split("+")
    ],
    arg,
  )


def report(arg=None):
  arg = _parse(arg)
  return {
    "name": common.results_name(f"fig4_{arg.pair}", arg),
    "title": f"Fig. 4 / B.9: K even compartments, RBD and FPD, {arg.pair}, d = 250",
    "scale": common.scale_note(arg, epochs=EPOCHS),
    "columns": [
      {"metric": "validation_accuracy", "label": "validation acc %", "percent": True},
      {"metric": "images_per_second", "label": "train images/s", "percent": False},
    ],
    "plots": [
      {
        "kind": "against",
        "x_label": "compartments K",
        "log_x": True,
        "metrics": ["validation_accuracy", "images_per_second"],
      }
    ],
    "notes": [
      "images/s is the last epoch's training throughput on this machine; "
      "other jobs sharing its cores make it noisy."
    ],
  }
