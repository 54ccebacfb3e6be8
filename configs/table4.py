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
grid (``lo``, ``hi``, ``stride``), and ``d``, ``distribution`` and
``structure`` of the bases. The rates it picks go to configs/learning_rates.py
TUNED (results/table4_coarse.md, this reduced-scale search's file, prints the
lines).

``search=halving`` replaces coarse to fine by successive halving (a search
whose choice holds at length; experiments/tune.py): every power of the grid
trains ``rungs``' first number of epochs of ``steps`` steps; the best
1/``keep`` of them (at least ``floor``; diverged ones never) go on to the next
number of epochs, and so on; the lowest held-out loss at the last wins. A
longer trial extends the shorter one's run. Its rates go to
configs/learning_rates.py TUNED_AT_LENGTH, and its file is Table 4's,
results/table4.md. For Table 1's FC rows at 100 epochs (156,250 steps), the
full grid up to 40,000 steps (a quarter):

  python -m experiments.reproduce --config=configs/table4.py:search=halving,\
pairs=fc-mnist+fc-fashion_mnist+fc-cifar10,methods=sgd+rbd+fpd,structure=srht,lo=-19,hi=7,\
stride=1,steps=625,rungs=1+4+16+64 --data_root=DIR --data=fashion_mnist=DIR
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
    structure="dense",
    search="coarse",
    rungs="1+4+16+64",
    keep=3,
    floor=2,
  )


SEARCHES = ("coarse", "halving")


def _search(arg) -> str:
  if arg.search not in SEARCHES:
    raise ValueError(f"search={arg.search!r} must be one of {list(SEARCHES)}")
  return arg.search


def rungs(arg) -> list[int]:
  """The halving search's lengths in epochs: ``"1+4+16"`` -> [1, 4, 16], checked."""
  try:
    lengths = [int(x) for x in str(arg.rungs).split("+")]
  except ValueError as e:
    raise ValueError(
      f"rungs={arg.rungs!r} must be increasing positive epoch counts joined by '+', e.g. 1+4+16"
    ) from e
  if not lengths or lengths[0] < 1 or lengths != sorted(set(lengths)):
    raise ValueError(
      f"rungs={arg.rungs!r} must be increasing positive epoch counts joined by '+', e.g. 1+4+16"
    )
  if arg.keep < 2 or arg.floor < 1:
    raise ValueError(f"keep={arg.keep}, floor={arg.floor}: need keep >= 2 and floor >= 1")
  return lengths


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


def trial(
  model: str,
  dataset: str,
  method: str,
  log2: int,
  *,
  d: int,
  distribution: str,
  structure: str = "dense",
) -> dict:
  """One trial of the search: ``method`` on the pair at rate 2**log2.

  ``structure`` (RBD and FPD only) is left out of the entry when dense, so the
  coarse search's runs keep their workdirs. Table 4's rate is marked for
  d = 250, normal directions, whatever the structure (the paper's are dense).
  """
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
    if structure != "dense":
      overrides["bases.structure"] = structure
  paper = learning_rates.paper_log2(model, dataset, method)
  if paper is not None and d == 250 and distribution == "normal":
    overrides["paper"] = {"log2_rate": (paper, 0)}
  return overrides


def get_config(arg=None):
  """Trials train on 75 % of the training split and report the other 25 %."""
  arg = _parse(arg)
  _search(arg)
  config = common.base(arg, epochs=1)
  config.data.holdout = "tune"
  config.train.early_stopping = False  # the held-out loss decides, diverged or not
  return config


def sweep(arg=None):
  """The first trials: the coarse grid, or (halving) every rate at the first length."""
  arg = _parse(arg)
  halving = _search(arg) == "halving"
  first = {"train.epochs": 1 if arg.runlocal else rungs(arg)[0]} if halving else {}
  entries = [
    {
      **trial(
        model,
        dataset,
        method,
        log2,
        d=arg.d,
        distribution=arg.distribution,
        structure=arg.structure,
      ),
      **first,
    }
    for model, dataset in _pairs(arg)
    for method in _methods(arg)
    if _tuned(model, dataset, method)
    for log2 in coarse_grid(arg)
  ]
  return common.finish(entries, arg)


def _halving_spec(arg) -> dict:
  """The report's ``tune`` fields of the halving search."""
  # runlocal: each length one epoch (of 3 steps) longer than the last.
  lengths = list(range(1, len(rungs(arg)) + 1)) if arg.runlocal else rungs(arg)
  steps = common.RUNLOCAL["train.steps_per_epoch"] if arg.runlocal else arg.steps
  unit = "all the 75 % split's" if steps == -1 else f"{steps:,}"
  longest = "" if steps == -1 else f" = {lengths[-1] * steps:,} steps"
  basis = f"dense {arg.distribution}" if arg.structure == "dense" else arg.structure
  return {
    "search": "halving",
    "rungs": lengths,
    "keep": arg.keep,
    "floor": arg.floor,
    "grid": f"successive halving over 2^{arg.lo}..2^{arg.hi} every {arg.stride}, within the "
    f"paper's bounds 2^{PAPER_LO}..2^{PAPER_HI}; the best 1/{arg.keep} of each length (at least "
    f"{arg.floor}, never a diverged one) go on; d = {arg.d}, {basis} directions for RBD/FPD",
    "lengths_text": f"{' -> '.join(map(str, lengths))} epochs of {unit} steps{longest} "
    "(Table 1 trains 100 epochs of 1,562 steps = 156,250)",
  }


def report(arg=None):
  arg = _parse(arg)
  if _search(arg) == "halving":
    return {
      # Table 4's file: the search whose choice holds at length (TUNED_AT_LENGTH); the
      # reduced-scale coarse search behind TUNED keeps its own, table4_coarse.md.
      "name": common.results_name("table4", arg),
      "title": "Table 4 at length: learning rates by successive halving (log2 of the applied step)",
      "scale": common.scale_note(arg, epochs=1, paper_scale=False),
      "tune": {"lo": PAPER_LO, "hi": PAPER_HI, "metric": "heldout_loss", **_halving_spec(arg)},
      "plots": [{"kind": "tuning_lengths", "metric": "heldout_loss"}],
      "notes": [
        "Applied step sizes: the update is -2^k times the direction; the paper's SGD "
        "column is per example, shown here as k + 5 (configs/learning_rates.py).",
        "Trials train on a random 75 % of the training split (data.holdout=tune) and are "
        "judged by the loss on the other 25 % at the end of each length; a trial whose loss "
        "became NaN or infinite counts as infinitely bad and is not carried on.",
        "A rate's trial at a longer length continues its run at the shorter one (same workdir "
        "and record), so every length's loss of a rate comes from one run.",
        "The best at a length is among the rates that reached it, so a rate dropped at a short "
        "length is never tried long; the carried share (keep, floor) bounds that risk.",
        "Groups this search did not run (the CNN, NES and ResNet-8 rows of Table 4) have only "
        "the reduced-scale coarse search's rates (table4_coarse.md, configs/learning_rates.py "
        "TUNED).",
      ],
    }
  return {
    "name": common.results_name("table4_coarse", arg),
    "title": "Table 4, coarse-to-fine search: learning rates (log2 of the applied step size)",
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
