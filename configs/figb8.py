"""Fig. B.8: quasi-orthogonality: the cosine of random vector pairs against dimension.

  python -m experiments.reproduce --config=configs/figb8.py

PAPER.md: the mean cosine similarity of 100 pairs of random vectors against
the dimension. No training: the pairs come from the optimiser's own
generator (random_bases.method.directions), per distribution, for
dimensions 10^1 .. 10^max_exp in steps of 10^0.5; the table gives the mean
cosine, the mean |cosine| and its std, beside sqrt(2 / (pi n)), the mean
|cosine| of two independent isotropic vectors in n dimensions.
"""

from configs import common

DISTRIBUTIONS = ("normal", "uniform", "bernoulli")


def _parse(arg):
  return common.parse(arg, pairs=100, max_exp=6.0)


def get_config(arg=None):
  """Unused by the analysis; the default run, for a uniform config interface."""
  arg = _parse(arg)
  return common.base(arg, epochs=1)


def sweep(arg=None):
  return []


def report(arg=None):
  arg = _parse(arg)
  max_exp = 3.0 if arg.runlocal else arg.max_exp
  dims = sorted({int(round(10 ** (e / 2))) for e in range(2, int(2 * max_exp) + 1)})
  return {
    "name": common.results_name("figb8", arg),
    "title": "Fig. B.8: quasi-orthogonality of random directions",
    "scale": f"{arg.pairs} pairs per dimension, dimensions {dims[0]}..{dims[-1]}",
    "analysis": {
      "kind": "orthogonality",
      "dims": dims,
      "pairs": arg.pairs,
      "distributions": list(DISTRIBUTIONS),
      "seed": 0,
    },
    "plots": [{"kind": "orthogonality"}],
    "notes": [],
  }
