"""Fig. 1: ResNet-8 on CIFAR-10 at d = 500: RBD against FPD and NES (and SGD).

  python -m experiments.reproduce --config=configs/fig1.py --data_root=DIR

PAPER.md: RBD beats FPD by 20.5 and NES by 39.6 points of validation
accuracy. PAPER.md gives neither the epochs nor the rates of this figure:
this config trains Table 3's 80 epochs with the rates of
configs/learning_rates.py (each row prints its rate and where it comes from).
RBD and FPD run at the d = 250 rate, not scaled to d = 500, and say so.
"""

from configs import common, learning_rates

EPOCHS = 80
D = 500
METHODS = ("rbd", "fpd", "nes", "sgd")


def _run(method: str) -> dict:
  """``method`` at d = 500; a rate found at d = 250 is labelled "not scaled to d = 500"."""
  run = common.method_run("resnet8", "cifar10", method, d=D)
  run["rate"] = str(learning_rates.rate_at("resnet8", "cifar10", method, d=D))
  return run


def get_config(arg=None):
  """RBD at d = 500."""
  arg = common.parse(arg)
  return common.single(arg, epochs=EPOCHS, entry={"bases.d": D, **_run("rbd")})


def sweep(arg=None):
  arg = common.parse(arg)
  entries = [
    {
      "name": common.METHOD_TITLES[m],
      "panel": "ResNet-8 CIFAR-10, d = 500",
      "bases.d": D,
      **_run(m),
    }
    for m in METHODS
  ]
  return common.finish(entries, arg)


def report(arg=None):
  arg = common.parse(arg)
  return {
    "name": common.results_name("fig1", arg),
    "title": "Fig. 1: ResNet-8 on CIFAR-10, d = 500: RBD, FPD, NES and SGD",
    "scale": common.scale_note(arg, epochs=EPOCHS),
    "columns": [
      {"metric": "validation_accuracy", "label": "validation acc %", "percent": True},
      {"metric": "test_accuracy", "label": "test acc %", "percent": True},
    ],
    "contrasts": [
      {"a": "RBD", "b": "FPD", "metric": "validation_accuracy", "paper": (20.5, None)},
      {"a": "RBD", "b": "NES", "metric": "validation_accuracy", "paper": (39.6, None)},
    ],
    "plots": [
      {"kind": "bars", "metric": "validation_accuracy"},
      {"kind": "curves", "metric": "validation_accuracy"},
    ],
    "notes": ["Paper's epochs for this figure unknown (PAPER.md); 80 as Table 3."],
  }
