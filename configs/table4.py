"""Table 4: the learning-rate search, the paper's procedure.

  python -m experiments.reproduce --config=configs/table4.py:pairs=fc-mnist+cnn-mnist,steps=300 \
      --data_root=DIR

PAPER.md: powers of two from 2^-19 to 2^7, trained on a random 75 % of the
training set (data.holdout = "tune"), the lowest loss on the other 25 %
("heldout_loss") wins. PAPER.md does not say how long each trial trains; the
scale is this config's argument (``epochs``, default 1, ``steps``,
``nes_steps``). The search is coarse to fine (experiments/tune.py): the
powers ``lo``, ``lo + stride``, ... up to ``hi`` first, then single steps
around the best until both neighbours of the best are tried, never past the
paper's bounds. The sweep lists the coarse runs; the tuner adds the rest.

Arguments besides the scale: ``pairs`` and ``methods`` joined by "+", the
grid (``lo``, ``hi``, ``stride``), and ``d`` and ``distribution`` of the bases.
The rates it picks go to configs/learning_rates.py TUNED (results/table4.md
prints the lines).
"""

from configs import common, learning_rates

# PAPER.md's search bounds (log2).
PAPER_LO, PAPER_HI = -19, 7
TABLE4_PAIRS = "+".join(f"{m}-{d}" for m, d in (*common.PAIRS, ("resnet8", "cifar10")))


def _parse(arg):
  return common.parse(
    arg,
    pairs=TABLE4_PAIRS,
    methods="sgd+rbd+fpd+nes",
    lo=-12,
    hi=5,
    stride=3,
    d=250,
    distribution="normal",
  )


def _pairs(arg) -> list[tuple[str, str]]:
  return [common.parse_pair(p) for p in arg.pairs.split("+")]


def _methods(arg) -> list[str]:
  methods = arg.methods.split("+")
  for method in methods:
    if method not in common.METHOD_TITLES:
      raise ValueError(
        f"methods={arg.methods!r}: {method!r} is not one of {sorted(common.METHOD_TITLES)}"
      )
  return methods


def _tuned(model: str, dataset: str, method: str) -> bool:
  """Which methods the search covers on a pair.

  Tables 1 and 2's pairs get SGD, RBD and FPD, and NES on MNIST only: the
  paper gives NES no rate, and its centred-rank update does not depend on the
  loss's scale, so the model's MNIST rate serves its other datasets
  (configs/learning_rates.py). ResNet-8 gets the methods its Table 4 row
  tunes, RBD and SGD; its FPD (Table 3, Fig. 1) takes the RBD rate.
  """
  if (model, dataset) not in common.PAIRS:
    return method in learning_rates.PAPER[model, dataset]
  return method != "nes" or dataset == "mnist"


def coarse_grid(arg) -> list[int]:
  """The first powers tried: lo, lo + stride, ..., <= hi, within the paper's bounds."""
  if not (PAPER_LO <= arg.lo <= arg.hi <= PAPER_HI and arg.stride >= 1):
    raise ValueError(
      f"lo={arg.lo}, hi={arg.hi}, stride={arg.stride}: need "
      f"{PAPER_LO} <= lo <= hi <= {PAPER_HI} and stride >= 1"
    )
  return list(range(arg.lo, arg.hi + 1, arg.stride))


def trial(model: str, dataset: str, method: str, log2: int, *, d: int, distribution: str) -> dict:
  """One trial of the search: ``method`` on the pair at rate 2**log2."""
  group = f"{common.pair_name(model, dataset)} {common.METHOD_TITLES[method]}"
  overrides = {
    "name": f"{group} 2^{log2}",
    "group": group,
    "log2_rate": log2,
    "panel": common.pair_name(model, dataset),
    "label": common.METHOD_TITLES[method],
    "model": model,
    "data.dataset": dataset,
    "method": method,
    f"learning_rate.{method}": 2.0**log2,
  }
  if method != "sgd":
    overrides["bases.d"] = d
  if method in ("rbd", "fpd"):
    overrides["bases.distribution"] = distribution
  paper = learning_rates.paper_log2(model, dataset, method)
  if paper is not None and d == 250 and distribution == "normal":
    overrides["paper"] = {"log2_rate": (paper, 0)}
  return overrides


def get_config(arg=None):
  """Trials train on 75 % of the training split and report the other 25 %."""
  arg = _parse(arg)
  config = common.base(arg, epochs=1)
  config.data.holdout = "tune"
  config.train.early_stopping = False  # the held-out loss decides, diverged or not
  return config


def sweep(arg=None):
  arg = _parse(arg)
  entries = [
    trial(model, dataset, method, log2, d=arg.d, distribution=arg.distribution)
    for model, dataset in _pairs(arg)
    for method in _methods(arg)
    if _tuned(model, dataset, method)
    for log2 in coarse_grid(arg)
  ]
  return common.finish(entries, arg)


def report(arg=None):
  arg = _parse(arg)
  return {
    "name": common.results_name("table4", arg),
    "title": "Table 4: learning rates (log2 of the applied step size)",
    "scale": common.scale_note(arg, epochs=1, paper_scale=False),
    "tune": {
      "lo": PAPER_LO,
      "hi": PAPER_HI,
      "metric": "heldout_loss",
      "grid": f"coarse 2^{arg.lo}..2^{arg.hi} every {arg.stride}, then single "
      "steps around the best",
      "d": arg.d,
      "distribution": arg.distribution,
    },
    "plots": [{"kind": "tuning", "metric": "heldout_loss"}],
    "notes": [
      "Applied step sizes: the update is -2^k times the direction. The paper's "
      "SGD column is per example (the reference code multiplies it by the batch "
      "of 32), so it appears here as k + 5; its RBD and FPD columns are read as "
      "applied rates (PAPER.md).",
      "Trials train on a random 75 % of the training split (data.holdout=tune) "
      "and are judged by the loss on the other 25 %; a trial whose loss became "
      "NaN or infinite counts as infinitely bad.",
      "Short trials favour large rates (a rate that is best for a few hundred "
      "steps may be too large for 100 epochs).",
    ],
  }
