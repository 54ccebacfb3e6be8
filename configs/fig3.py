"""Fig. 3 / B.11 / B.12: hybrids that switch RBD->SGD or SGD->RBD after q epochs.

  python -m experiments.reproduce --config=configs/fig3.py --data_root=DIR
  python -m experiments.reproduce --config=configs/fig3.py:pair=fc-mnist,epochs=10 ...

PAPER.md (§4.5): switch after q in {1, 2, 5, 10, 25, 50, 75} epochs, keeping
both methods' rates (no retuning); no divergence; SGD after RBD recovers SGD's
accuracy, RBD after SGD falls back to RBD's level. PAPER.md names neither the
pairs of the three figures nor their length: ``pair`` picks one (default
CNN-CIFAR10), 100 epochs. At a reduced scale the switches at q >= epochs are
left out (the results file says which ran).
"""

from configs import common

EPOCHS = 100
SWITCHES = "1+2+5+10+25+50+75"


def _parse(arg):
  return common.parse(arg, pair="cnn-cifar10", switches=SWITCHES)


def _switches(arg) -> list[int]:
  epochs = 1 if arg.runlocal else (arg.epochs or EPOCHS)
  return [q for q in map(int, arg.switches.split("+")) if q < epochs]


def _rates(model, dataset) -> dict:
  """Both methods' rates, so either phase finds its own."""
  rbd, sgd = (common.method_run(model, dataset, m) for m in ("rbd", "sgd"))
  return {
    "model": model,
    "data.dataset": dataset,
    "bases.d": 250,
    "learning_rate.rbd": rbd["learning_rate.rbd"],
    "learning_rate.sgd": sgd["learning_rate.sgd"],
    "rate": f"RBD {rbd['rate']}, SGD {sgd['rate']}",
  }


def get_config(arg=None):
  """RBD for the first epoch, then SGD (the first switch)."""
  arg = _parse(arg)
  epochs = 1 if arg.runlocal else (arg.epochs or EPOCHS)
  return common.single(
    arg,
    epochs=EPOCHS,
    entry={"phases": "rbd:1,sgd" if epochs > 1 else "", **_rates(*common.parse_pair(arg.pair))},
  )


def sweep(arg=None):
  arg = _parse(arg)
  model, dataset = common.parse_pair(arg.pair)
  rates = _rates(model, dataset)
  both = ["RBD->SGD", "SGD->RBD"]
  entries = [
    {"name": "RBD only", "panel": both, "method": "rbd", **rates},
    {"name": "SGD only", "panel": both, "method": "sgd", **rates},
  ]
  for q in _switches(arg):
    entries.append(
      {
        "name": f"RBD->SGD after {q}",
        "label": f"q = {q}",
        "panel": "RBD->SGD",
        "phases": f"rbd:{q},sgd",
        **rates,
      }
    )
    entries.append(
      {
        "name": f"SGD->RBD after {q}",
        "label": f"q = {q}",
        "panel": "SGD->RBD",
        "phases": f"sgd:{q},rbd",
        **rates,
      }
    )
  return common.finish(entries, arg)


def report(arg=None):
  arg = _parse(arg)
  left_out = [q for q in map(int, arg.switches.split("+")) if q not in _switches(arg)]
  notes = ["Rates are not retuned at the switch (PAPER.md §4.5)."]
  if left_out:
    notes.append(
      f"Switches after q = {left_out} epochs are left out: the runs are "
      "not longer than that at this scale."
    )
  return {
    "name": common.results_name(f"fig3_{arg.pair}", arg),
    "title": f"Fig. 3 / B.11 / B.12: hybrid RBD/SGD switches, {arg.pair}",
    "scale": common.scale_note(arg, epochs=EPOCHS),
    "columns": [
      {"metric": "validation_accuracy", "label": "validation acc %", "percent": True},
      {"metric": "test_accuracy", "label": "test acc %", "percent": True},
    ],
    "plots": [
      {"kind": "bars", "metric": "validation_accuracy"},
      {"kind": "curves", "metric": "validation_accuracy", "switches": True},
    ],
    "notes": notes,
  }
