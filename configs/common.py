"""What the table and figure configs share: the pairs, the scale arguments, runlocal.

A sweep config (``configs/table1.py`` ...) defines

* ``get_config(arg)``: the base config, a runnable single run;
* ``sweep(arg)``: every run, as override dicts: dotted config fields plus
  the keys in ``META_KEYS`` that describe the run (``experiments/reproduce.py``
  documents them);
* ``report(arg)``: the results file's name, title, columns and plots.

The argument string ``configs/x.py:a=1,b=2`` always accepts the scale keys of
``SCALE_DEFAULTS``: ``epochs`` (0 = the paper's), ``steps`` (steps per epoch,
-1 = the whole training split), ``eval`` (images per eval split, -1 = all),
``nes_steps`` (NES's steps per epoch: it costs d forward passes a step; -1 =
``steps``), and ``runlocal``: a few steps on the MNIST sample shipped with the
package, for tests (every entry keeps its model and method; its data becomes
the sample). Data locations are never here: the runner fills ``data.dir``
from ``--data``/``--data_root``.
"""

from __future__ import annotations

from configs import learning_rates
from random_bases import checks, config_lib

# The six model/data pairs of Tables 1 and 2, in the paper's row order.
PAIRS = (
  ("fc", "mnist"),
  ("fc", "fashion_mnist"),
  ("fc", "cifar10"),
  ("cnn", "mnist"),
  ("cnn", "fashion_mnist"),
  ("cnn", "cifar10"),
)
MODEL_TITLES = {"fc": "FC", "cnn": "CNN", "resnet8": "ResNet-8", "resnet32": "ResNet-32"}
DATA_TITLES = {"mnist": "MNIST", "fashion_mnist": "FMNIST", "cifar10": "CIFAR10"}
METHOD_TITLES = {"nes": "NES", "fpd": "FPD", "rbd": "RBD", "sgd": "SGD"}

SCALE_DEFAULTS = dict(runlocal=False, epochs=0, steps=-1, eval=-1, nes_steps=-1)
# What --describe prints beside each scale key.
SCALE_MEANINGS = {
  "runlocal": "a few steps on the MNIST sample shipped with the package (tests)",
  "epochs": "epochs to train; 0 = the paper's",
  "steps": "steps per epoch; -1 = the whole training split",
  "eval": "images evaluated per split; -1 = all",
  "nes_steps": "NES's steps per epoch (each costs d forward passes); -1 = steps",
}

# Keys of a sweep entry that describe the run rather than set a config field.
META_KEYS = ("name", "label", "panel", "paper", "rate", "x", "group", "log2_rate", "seeds")


def entry_seeds(entry: dict, seeds: list[int]) -> list[int]:
  """The seeds an entry runs at: the first ``entry["seeds"]`` of the sweep's, else all.

  A sweep may run its main rows at 3 seeds and its checks at 1 in one
  invocation (``--seeds=0,1,2``): an entry with ``"seeds": 1`` runs seed 0 only.
  """
  count = entry.get("seeds")
  if count is None:
    return list(seeds)
  if not isinstance(count, int) or count < 1:
    raise ValueError(f"sweep entry {entry.get('name')!r}: seeds={count!r} must be an int >= 1")
  return list(seeds)[:count]


# runlocal: a few steps on the package's MNIST sample.
RUNLOCAL = {
  "data.dataset": "mnist",
  "data.source": "sample",
  "train.epochs": 1,
  "train.steps_per_epoch": 3,
  "train.log_every_steps": 3,
  "train.eval_examples": 200,
  "train.eval_batch_size": 100,
}


def pair_name(model: str, dataset: str) -> str:
  """``("fc", "mnist")`` -> ``"FC-MNIST"``, the paper's row label."""
  return f"{MODEL_TITLES[model]}-{DATA_TITLES[dataset]}"


def parse_pair(text: str) -> tuple[str, str]:
  """``"cnn-cifar10"`` -> ``("cnn", "cifar10")``; a ValueError lists the choices."""
  model, _, dataset = text.partition("-")
  if model not in MODEL_TITLES or dataset not in DATA_TITLES:
    raise ValueError(
      f"pair={text!r} must be <model>-<dataset>: model one of "
      f"{sorted(MODEL_TITLES)}, dataset one of {sorted(DATA_TITLES)}"
    )
  return model, dataset


def parse(arg: str | None, **defaults):
  """The config argument: the scale keys plus the config's own ``defaults``."""
  return config_lib.parse_arg(arg, meanings=SCALE_MEANINGS, **SCALE_DEFAULTS, **defaults)


def base(arg, *, epochs: int):
  """``base_config()`` at the paper's ``epochs``, scaled by the argument.

  Args:
    arg: the parsed argument (``parse``).
    epochs: the paper's number of epochs, used unless ``arg.epochs`` is set.
  """
  config = config_lib.base_config()
  config.train.epochs = arg.epochs or epochs
  config.train.steps_per_epoch = arg.steps
  config.train.eval_examples = arg.eval
  if arg.runlocal:
    apply(config, RUNLOCAL)
  return config


def check_cell(arg, *, pairs, methods=None, distributions=None) -> None:
  """Raises a ValueError unless ``arg`` names a cell of the table."""
  if (arg.model, arg.dataset) not in pairs:
    raise ValueError(
      f"model={arg.model!r}, dataset={arg.dataset!r} is not a row of this table; rows: "
      + ", ".join(f"model={m},dataset={d}" for m, d in pairs)
    )
  if methods is not None:
    checks.check_choice("method", arg.method, methods)
  if distributions is not None:
    checks.check_choice("distribution", arg.distribution, distributions)


def single(arg, *, epochs: int, entry: dict):
  """The base config with one sweep entry applied: a config's example run.

  The entry goes through ``finish`` first, so under runlocal it trains on the
  MNIST sample like the sweep's entries do.
  """
  config = base(arg, epochs=epochs)
  apply(config, finish([dict(entry)], arg)[0])
  return config


def apply(config, overrides: dict) -> None:
  """Sets the dotted config fields of ``overrides`` (meta keys skipped)."""
  config_lib.set_fields(config, {k: v for k, v in overrides.items() if k not in META_KEYS})


def method_run(
  model: str, dataset: str, method: str, *, d: int = 250, distribution: str = "normal"
) -> dict:
  """Overrides of one method on one pair, with its learning rate and the rate's source."""
  rate = learning_rates.rate(model, dataset, method, d=d, distribution=distribution)
  return {
    "model": model,
    "data.dataset": dataset,
    "method": method,
    f"learning_rate.{method}": rate.value,
    "rate": str(rate),
  }


def finish(entries: list[dict], arg) -> list[dict]:
  """The rules every sweep shares, applied to its entries.

  Every entry sets every field that any entry sets (to the scaled base's
  value where it did not), so no run inherits the example run that
  ``get_config`` returns. NES runs get ``nes_steps`` steps per epoch; under
  runlocal every entry trains on the MNIST sample (its name still says which
  data the full run uses).
  """
  for entry in entries:
    if arg.nes_steps != -1 and (entry.get("method") == "nes" or "nes" in entry.get("phases", "")):
      entry["train.steps_per_epoch"] = arg.nes_steps
    if arg.runlocal:
      entry.update({k: v for k, v in RUNLOCAL.items() if k.startswith("data.")})
  defaults = config_lib.field_values(base(arg, epochs=1))
  fields = {k for entry in entries for k in entry if k not in META_KEYS}
  for entry in entries:
    for name in sorted(fields - set(entry)):
      entry[name] = defaults[name]
  return entries


def scale_note(arg, *, epochs: int, paper_scale: bool = True) -> str:
  """The argument's scale in words, for results headers.

  Args:
    arg: the parsed argument.
    epochs: the config's epochs when ``arg.epochs`` is 0 (the paper's, for tables).
    paper_scale: whether ``epochs`` of the whole split is the paper's scale, so
      that anything less is flagged as not comparable.
  """
  if arg.runlocal:
    return (
      f"RUNLOCAL, not comparable with the paper: {RUNLOCAL['train.epochs']} epoch "
      f"of {RUNLOCAL['train.steps_per_epoch']} steps on the 2,000-image MNIST "
      f"sample, {RUNLOCAL['train.eval_examples']} eval images"
    )
  parts = [
    f"epochs={arg.epochs or epochs}",
    f"steps/epoch={'all' if arg.steps == -1 else arg.steps}",
    f"eval images/split={'all' if arg.eval == -1 else arg.eval}",
  ]
  if arg.nes_steps != -1:
    parts.append(f"NES steps/epoch={arg.nes_steps}")
  reduced = (
    arg.steps != -1
    or arg.eval != -1
    or arg.nes_steps != -1
    or (arg.epochs and arg.epochs != epochs)
  )
  if not paper_scale:
    return ", ".join(parts)
  if reduced:
    return (
      f"REDUCED scale, not comparable with the paper ({epochs} epochs of "
      f"the whole training split): " + ", ".join(parts)
    )
  return "the paper's scale: " + ", ".join(parts)


def results_name(stem: str, arg) -> str:
  """The results file's name: runlocal runs never overwrite real results."""
  return f"{stem}_runlocal" if arg.runlocal else stem
