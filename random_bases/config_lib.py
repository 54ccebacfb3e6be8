"""The experiment configuration: its schema, defaults, argument parsing, checks.

Every config file in ``configs/`` starts from ``base_config()`` and overrides
fields, so all experiments share one schema (and ``--config.a.b=v`` overrides
reach every field). ``validate`` checks a config completely and raises a
``ValueError`` naming the field and the allowed values, before the trainer
loads data or compiles anything.
"""

from __future__ import annotations

import ml_collections

from random_bases import input_pipeline, models
from random_bases.method import compartments as comp_lib
from random_bases.method import directions as dirs
from random_bases.method import nes as nes_lib

METHODS = ("sgd", "rbd", "fpd", "nes")
COORDINATES = ("reverse", "forward")


def parse_arg(arg: str | None, **defaults) -> ml_collections.ConfigDict:
  """Parses ``"a=1,b=x,flag"`` into a ConfigDict typed like ``defaults``.

  The big_vision convention for ``--config=configs/x.py:arg``: keys must be
  in ``defaults``; a bare key sets a boolean to True.
  """
  result = ml_collections.ConfigDict(defaults)
  if not arg:
    return result
  for item in arg.split(","):
    key, eq, value = item.partition("=")
    key = key.strip()
    if key not in defaults:
      raise ValueError(f"config argument {key!r} is unknown; allowed: "
                       + ", ".join(sorted(defaults)))
    default = defaults[key]
    if not eq:
      if not isinstance(default, bool):
        raise ValueError(f"config argument {key!r} needs a value ({key}=...)")
      result[key] = True
    elif isinstance(default, bool):
      if value.lower() not in ("true", "false", "1", "0"):
        raise ValueError(f"config argument {key}={value!r} must be true or false")
      result[key] = value.lower() in ("true", "1")
    else:
      try:
        result[key] = type(default)(value)
      except ValueError as e:
        raise ValueError(f"config argument {key}={value!r} must be of type "
                         f"{type(default).__name__}") from e
  return result


def base_config() -> ml_collections.ConfigDict:
  """Every field, with the paper's defaults (FC on MNIST, RBD, d = 250)."""
  config = ml_collections.ConfigDict()
  config.seed = 0
  config.model = "fc"  # fc | cnn | resnet8 | resnet32

  config.data = ml_collections.ConfigDict()
  config.data.dataset = "mnist"  # mnist | fashion_mnist | cifar10
  config.data.source = "auto"  # auto | tfds | files | sample
  config.data.dir = ""  # where `files` (or tfds) data lives; "" = search
  # PAPER.md: validation = 10,000 training images held out; "tune" = 75/25.
  config.data.holdout = "validation"  # validation | tune | none
  config.data.holdout_size = 10_000
  config.data.holdout_seed = 0
  config.data.augment = True  # PAPER.md's crop/brightness/flip

  # One method for the whole run, or phases "rbd:5,sgd" (RBD for 5 epochs,
  # then SGD to the end): §4.5's hybrids, each phase at its own rate.
  config.method = "rbd"  # sgd | rbd | fpd | nes
  config.phases = ""

  # Applied step sizes (PAPER.md Table 4, FC-MNIST, d = 250): RBD 2^1,
  # FPD 2^-1, SGD 2^-8 x 32 (the reference code multiplies by the batch).
  config.learning_rate = ml_collections.ConfigDict()
  config.learning_rate.sgd = 2.0**-8 * 32
  config.learning_rate.rbd = 2.0**1
  config.learning_rate.fpd = 2.0**-1
  config.learning_rate.nes = 2.0**-10  # not in the paper: tune it

  config.bases = ml_collections.ConfigDict()
  config.bases.d = 250  # with allocation=compression: the factor c
  config.bases.distribution = "normal"  # normal | uniform | bernoulli
  config.bases.normalize = "norm"  # norm | expected | none
  config.bases.compartments = "none"  # none | leaf | module | <K> | re:<rx>;<rx>
  config.bases.allocation = "proportional"  # proportional | fixed | compression
  config.bases.generator = dirs.DEFAULT_GENERATOR  # hash (fast) | threefry (jax.random)
  config.bases.block_rows = 0  # 0 = automatic
  config.bases.coordinates = "reverse"  # reverse (backprop) | forward (jvp)

  config.nes = ml_collections.ConfigDict()
  config.nes.sigma = 0.01  # PAPER.md
  config.nes.antithetic = False
  config.nes.fitness = "centered_ranks"  # raw | centered_ranks (reference code)

  config.train = ml_collections.ConfigDict()
  config.train.epochs = 100  # Tables 1, 2 (Table 3: 80)
  config.train.batch_size = 32
  config.train.steps_per_epoch = -1  # -1 = the whole training split
  config.train.eval_batch_size = 1000
  config.train.eval_examples = -1  # -1 = every example of each eval split
  # Stop if the validation loss is NaN or > 1000, or the validation accuracy
  # is <= 15 % after epoch 4 (PAPER.md).
  config.train.early_stopping = False
  config.train.log_every_steps = 100
  config.train.checkpoint = True

  config.metrics = ml_collections.ConfigDict()
  # Cosine of the applied update with the batch's full gradient, per tensor
  # and whole-vector (Table 3, Fig. B.7), aggregated every log interval.
  config.metrics.gradient_correlation = False
  return config


def parse_phases(config) -> list[tuple[str, int]]:
  """[(method, epochs)] covering exactly ``config.train.epochs`` epochs."""
  epochs = config.train.epochs
  if not config.phases:
    return [(config.method, epochs)]
  phases = []
  items = config.phases.split(",")
  for i, item in enumerate(items):
    method, _, count = item.strip().partition(":")
    dirs.check_choice("phases", method, METHODS)
    if not count:
      if i != len(items) - 1:
        raise ValueError(f"phases={config.phases!r}: only the last phase may "
                         "omit its epochs ('rbd:5,sgd')")
      count = epochs - sum(n for _, n in phases)
    try:
      count = int(count)
    except ValueError as e:
      raise ValueError(f"phases={config.phases!r}: epochs must be integers") from e
    if count <= 0:
      raise ValueError(f"phases={config.phases!r}: every phase needs >= 1 epoch "
                       f"within train.epochs={epochs}")
    phases.append((method, count))
  if sum(n for _, n in phases) != epochs:
    raise ValueError(f"phases={config.phases!r} cover {sum(n for _, n in phases)} "
                     f"epochs but train.epochs={epochs}")
  return phases


def parse_compartments(value: str):
  """'none' | 'leaf' | 'module' | '<K>' | 're:<rx>;<rx>' -> the transform's argument."""
  if value == "none":
    return None
  if value in comp_lib.SCHEMES:
    return value
  if value.isdigit():
    return int(value)
  if value.startswith("re:") and value[3:]:
    return tuple(value[3:].split(";"))
  raise ValueError(f"bases.compartments={value!r} is not supported; allowed: "
                   "'none', 'leaf', 'module', a number of even slices ('8'), or "
                   "'re:<regex>;<regex>...'")


def _positive(field, value):
  if isinstance(value, bool) or not value > 0:
    raise ValueError(f"{field}={value!r} must be > 0")


def validate(config) -> None:
  """Raises ValueError for the first invalid field. Loads and compiles nothing."""
  dirs.check_choice("model", config.model, models.MODEL_NAMES)
  dirs.check_choice("data.dataset", config.data.dataset, input_pipeline.DATASET_NAMES)
  dirs.check_choice("data.source", config.data.source, input_pipeline.SOURCES)
  dirs.check_choice("data.holdout", config.data.holdout, input_pipeline.SPLITS)
  _positive("data.holdout_size", config.data.holdout_size)
  dirs.check_choice("method", config.method, METHODS)
  _positive("train.epochs", config.train.epochs)
  _positive("train.batch_size", config.train.batch_size)
  _positive("train.eval_batch_size", config.train.eval_batch_size)
  _positive("train.log_every_steps", config.train.log_every_steps)
  if config.train.steps_per_epoch != -1:
    _positive("train.steps_per_epoch (or -1)", config.train.steps_per_epoch)
  if config.train.eval_examples != -1:
    _positive("train.eval_examples (or -1)", config.train.eval_examples)
  phases = parse_phases(config)
  for method, _ in phases:
    _positive(f"learning_rate.{method}", config.learning_rate[method])
  if any(m in ("rbd", "fpd", "nes") for m, _ in phases):
    bases = config.bases
    if not isinstance(bases.d, int) or isinstance(bases.d, bool) or bases.d <= 0:
      raise ValueError(f"bases.d={bases.d!r} must be a positive integer")
    dirs.check_choice("bases.distribution", bases.distribution, dirs.DISTRIBUTIONS)
    dirs.check_choice("bases.normalize", bases.normalize, dirs.NORMALIZATIONS)
    dirs.check_choice("bases.allocation", bases.allocation, comp_lib.ALLOCATIONS)
    dirs.check_choice("bases.generator", bases.generator, dirs.GENERATORS)
    dirs.check_choice("bases.coordinates", bases.coordinates, COORDINATES)
    if bases.block_rows < 0:
      raise ValueError(f"bases.block_rows={bases.block_rows} must be >= 0 (0 = automatic)")
    parse_compartments(bases.compartments)
  if any(m == "nes" for m, _ in phases):
    _positive("nes.sigma", config.nes.sigma)
    dirs.check_choice("nes.fitness", config.nes.fitness, nes_lib.FITNESS)
    if config.nes.antithetic and config.bases.d % 2:
      raise ValueError(f"bases.d={config.bases.d} must be even with nes.antithetic")
