"""Fig. 2: the loss landscape along random directions of each distribution.

  python -m experiments.reproduce --config=configs/fig2.py --data_root=DIR
  python -m experiments.reproduce --config=configs/fig2.py:pair=cnn-cifar10,at=1+10+100 ...

PAPER.md: the loss at small displacements along sampled random directions,
averaged over 25 directions, at several epochs, per distribution. Not a
sweep of runs: one RBD run (d = 250) is trained to each epoch of ``at`` in
turn (raising train.epochs resumes it), and at each the loss of ``examples``
validation images is evaluated at theta + a * phi for ``points`` values of a
in [-radius, radius], phi unit directions with normal, uniform and
Bernoulli entries (experiments/analysis.py). PAPER.md names neither the
pair, the epochs nor the radius: the defaults are FC-MNIST, epochs 1, 5, 25,
radius 5.
"""

from configs import common

DISTRIBUTIONS = ("normal", "uniform", "bernoulli")


def _parse(arg):
  return common.parse(
    arg, pair="fc-mnist", at="1+5+25", directions=25, radius=5.0, points=21, examples=512
  )


def _epochs(arg) -> list[int]:
  return [1] if arg.runlocal else sorted(int(e) for e in arg.at.split("+"))


def _entry(model, dataset):
  return {
    "name": f"{common.pair_name(model, dataset)} RBD",
    "bases.d": 250,
    **common.method_run(model, dataset, "rbd"),
  }


def get_config(arg=None):
  """The RBD run whose checkpoints are probed, trained to the last of ``at``."""
  arg = _parse(arg)
  return common.single(arg, epochs=max(_epochs(arg)), entry=_entry(*common.parse_pair(arg.pair)))


def sweep(arg=None):
  arg = _parse(arg)
  return common.finish([_entry(*common.parse_pair(arg.pair))], arg)


def report(arg=None):
  arg = _parse(arg)
  entry = _entry(*common.parse_pair(arg.pair))
  return {
    "name": common.results_name(f"fig2_{arg.pair}", arg),
    "title": f"Fig. 2: loss along random directions by distribution, {arg.pair}",
    "scale": common.scale_note(arg, epochs=max(_epochs(arg)), paper_scale=False),
    "analysis": {
      "kind": "landscape",
      "epochs": _epochs(arg),
      "distributions": list(DISTRIBUTIONS),
      "directions": arg.directions,
      "radius": arg.radius,
      "points": arg.points,
      "examples": 64 if arg.runlocal else arg.examples,
    },
    "plots": [{"kind": "landscape"}],
    "notes": [
      f"The probed run: {entry['name']}, d = {entry['bases.d']}, normal directions, "
      f"learning rate {entry['rate']}.",
      "Directions are unit vectors (entries drawn from the distribution, "
      "then normalised), shared by all epochs; the loss is the mean over "
      "directions, in evaluation mode.",
    ],
  }
