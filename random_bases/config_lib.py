"""The experiment configuration: its schema, defaults, argument parsing, checks.

Every config file in ``configs/`` starts from ``base_config()`` and overrides
fields, so all experiments share one schema (and ``--config.a.b=v`` overrides
reach every field). ``FIELDS`` is that schema: each field's dotted name,
default and meaning, the one table that ``base_config`` is built from and
``describe`` prints. ``validate`` checks a config completely and raises a
``ValueError`` naming the field and the allowed values before the trainer
writes, loads or compiles anything.
"""

from __future__ import annotations

import contextvars
import dataclasses
import functools
import math
from collections.abc import Callable, Mapping
from typing import Any

import jax
import ml_collections

from random_bases import checks, models
from random_bases.data import preprocess, sources
from random_bases.method import compartments as comp_lib
from random_bases.method import directions as dirs
from random_bases.method import nes as nes_lib
from random_bases.method import structured

METHODS = ("sgd", "rbd", "fpd", "nes")
OPTIMIZERS = ("sgd", "adam")
COORDINATES = ("reverse", "forward")

# Every dataset of the paper has 10 classes; the data layer (sources) knows
# each one's image shape and training-split size before loading it.
NUM_CLASSES = 10


@dataclasses.dataclass(frozen=True)
class Field:
  """One config field: dotted name, default, one-line meaning."""

  name: str
  default: Any
  meaning: str


FIELDS: tuple[Field, ...] = (
  Field("seed", 0, "seeds the initialisation, shuffles, augmentation and bases"),
  Field(
    "model",
    "fc",
    "fc | cnn | resnet8 | resnet32 (PAPER.md's parameter counts) | li_fc | li_lenet (Li et al.)",
  ),
  Field("data.dataset", "mnist", "mnist | fashion_mnist | cifar10"),
  Field(
    "data.source",
    "auto",
    "auto | tfds | files | folder | sample (auto: data.dir or "
    "$RANDOM_BASES_DATA_DIR, tfds, system folders, then the 2,000-image MNIST sample)",
  ),
  Field(
    "data.dir",
    "",
    "the data's folder (`folder`: split/class/ images or their .tar.gz); "
    "'' = $RANDOM_BASES_DATA_DIR and the usual places",
  ),
  Field(
    "data.cache_dir",
    "",
    "where `folder` caches decoded images; '' = $RANDOM_BASES_CACHE_DIR or ~/.cache/random_bases",
  ),
  Field(
    "data.holdout",
    "validation",
    "validation (data.holdout_size training images held out, PAPER.md) | tune (75/25) | none",
  ),
  Field(
    "data.holdout_size", 10_000, "images held out for `validation` (the sample caps it at 20 %)"
  ),
  Field("data.holdout_seed", 0, "seeds the choice of the held-out images"),
  Field("data.augment", True, "PAPER.md's random crop and brightness (flip for CIFAR-10)"),
  Field(
    "data.augment_parts",
    "all",
    "with data.augment, the parts applied (an ablation): all, or +-joined from crop and "
    "brightness ((F)MNIST) or crop and flip (CIFAR-10); a left-out part is its identity",
  ),
  Field("method", "rbd", "sgd | rbd | fpd | nes, for the whole run unless `phases` is set"),
  Field(
    "phases",
    "",
    "hybrid schedule 'rbd:5,sgd' (RBD 5 epochs, SGD to the end, §4.5); "
    "an open last phase grows when train.epochs is extended",
  ),
  Field(
    "workers",
    1,
    "K data-parallel workers (Alg. 1 right), one device each: each draws its own batch of "
    "train.batch_size images; RBD/FPD sum the K projections (K x d floats exchanged), "
    "SGD/NES average the K gradients (D floats)",
  ),
  Field("learning_rate.sgd", 2.0**-8 * 32, "SGD's applied step size (Table 4: 2^-8 x 32)"),
  Field("learning_rate.rbd", 2.0**1, "RBD's applied step size (Table 4: 2^1)"),
  Field("learning_rate.fpd", 2.0**-1, "FPD's applied step size (Table 4: 2^-1)"),
  Field("learning_rate.nes", 2.0**-10, "NES's step size (not in the paper: tune it)"),
  Field("bases.d", 250, "directions per step (with allocation=compression: the factor c)"),
  Field("bases.distribution", "normal", "normal | uniform | bernoulli (Table 2)"),
  Field("bases.normalize", "norm", "norm (unit directions) | expected | none"),
  Field(
    "bases.compartments", "none", "none | leaf | module | <K> even slices | re:<regex>;<regex>"
  ),
  Field(
    "bases.allocation",
    "proportional",
    "proportional | fixed | compression: how d is split over compartments",
  ),
  Field("bases.generator", dirs.DEFAULT_GENERATOR, "hash (fast) | threefry (jax.random)"),
  Field("bases.block_rows", 0, "directions generated at once; 0 = automatic"),
  Field(
    "bases.structure",
    "dense",
    "dense (i.i.d. directions) | srht | fastfood (structured: O(N log N) a step whatever d is)",
  ),
  Field("bases.coordinates", "reverse", "reverse (backprop) | forward (jvp)"),
  Field("nes.sigma", 0.01, "NES's perturbation scale (PAPER.md)"),
  Field("nes.antithetic", False, "NES evaluates +/- pairs (needs an even bases.d)"),
  Field("nes.fitness", "centered_ranks", "raw | centered_ranks (the reference code)"),
  Field(
    "train.epochs",
    100,
    "epochs to train (Tables 1, 2; Table 3: 80); raise it to extend a finished run",
  ),
  Field("train.batch_size", 32, "training images per step"),
  Field(
    "train.optimizer",
    "sgd",
    "sgd (plain steps, the seed paper) | adam: Adam on the gradient (SGD, NES) or on the "
    "subspace coordinates (RBD, FPD; Li et al. 2018); the rate is learning_rate.<method>",
  ),
  Field(
    "train.weight_decay",
    0.0,
    "L2 coefficient: weight_decay * theta is added to the gradient before any projection "
    "(Li et al. 2018: 1e-5 FC, 1e-4 LeNet)",
  ),
  Field("train.steps_per_epoch", -1, "steps per epoch; -1 = the whole training split"),
  Field("train.eval_batch_size", 1000, "images per evaluation batch"),
  Field("train.eval_examples", -1, "images evaluated per split; -1 = all"),
  Field(
    "train.early_stopping",
    False,
    "stop when the validation loss is > 1000 or the accuracy <= 15 % after epoch 4 (PAPER.md)",
  ),
  Field(
    "train.log_every_steps", 100, "steps between progress lines and TensorBoard interval scalars"
  ),
  Field(
    "train.steps_per_dispatch",
    1,
    "training steps unrolled into one jitted call "
    "(fewer dispatches for tiny models; more compile time)",
  ),
  Field(
    "train.checkpoint",
    True,
    "save an orbax checkpoint after every epoch (the last two kept) so a rerun resumes",
  ),
  Field(
    "metrics.gradient_correlation",
    False,
    "log the cosine of the update with the batch gradient, per tensor and whole-vector (Table 3)",
  ),
)


@dataclasses.dataclass(frozen=True)
class ConfigArg:
  """One key of a config file's argument (``configs/x.py:key=value``)."""

  name: str
  default: Any
  meaning: str


# Set while ``config_args`` runs: the keys the parse_arg calls accept, in order.
_recorded_args: contextvars.ContextVar[dict[str, ConfigArg] | None] = contextvars.ContextVar(
  "recorded_config_args", default=None
)


def parse_arg(
  arg: str | None, *, meanings: Mapping[str, str] | None = None, **defaults
) -> ml_collections.ConfigDict:
  """Parses ``"a=1,b=x,flag"`` into a ConfigDict typed like ``defaults``.

  The big_vision convention for ``--config=configs/x.py:arg``: keys must be
  in ``defaults``; a bare key sets a boolean to True. ``meanings`` explains
  keys for ``--describe`` (``config_args``); it is never parsed.
  """
  recorded = _recorded_args.get()
  if recorded is not None:
    for key, default in defaults.items():
      recorded.setdefault(key, ConfigArg(key, default, (meanings or {}).get(key, "")))
  result = ml_collections.ConfigDict(defaults)
  if not arg:
    return result
  for item in arg.split(","):
    key, eq, value = item.partition("=")
    key = key.strip()
    if key not in defaults:
      raise ValueError(
        f"config argument {key!r} is unknown; allowed: " + ", ".join(sorted(defaults))
      )
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
        raise ValueError(
          f"config argument {key}={value!r} must be of type {type(default).__name__}"
        ) from e
  return result


def config_args(function: Callable[[str | None], Any], arg: str | None = None) -> list[ConfigArg]:
  """The keys a config file's ``get_config`` or ``sweep`` accepts in its argument.

  They are found by calling ``function(arg)`` and recording what it hands to
  ``parse_arg``, so a config file names its keys and defaults in one place.
  Whatever ``function`` raises propagates.
  """
  recorded: dict[str, ConfigArg] = {}
  token = _recorded_args.set(recorded)
  try:
    function(arg)
  finally:
    _recorded_args.reset(token)
  return list(recorded.values())


def format_arg_value(value: Any) -> str:
  """A config argument's value as it is written after ``key=``."""
  if isinstance(value, bool):
    return "true" if value else "false"
  return str(value)


def base_config() -> ml_collections.ConfigDict:
  """Every field of ``FIELDS``, with the paper's defaults (FC on MNIST, RBD, d = 250)."""
  config = ml_collections.ConfigDict()
  for field in FIELDS:
    *groups, leaf = field.name.split(".")
    node = config
    for group in groups:
      if group not in node:
        node[group] = ml_collections.ConfigDict()
      node = node[group]
    node[leaf] = field.default
  return config


def field_values(config) -> dict[str, Any]:
  """``{dotted name: value}`` of every leaf of ``config``."""
  values = {}

  def walk(node, prefix):
    for key, value in node.items():
      if isinstance(value, (ml_collections.ConfigDict, dict)):
        walk(value, f"{prefix}{key}.")
      else:
        values[prefix + key] = value

  walk(config, "")
  return values


def check_field_name(name: str) -> None:
  """Raises a ValueError unless ``name`` (dotted) is a field or group of the schema.

  The message names the nearest existing group and lists its fields, so a
  typo such as ``bases.dd`` is one clear line.
  """
  node = base_config()
  path = []
  for part in name.split("."):
    where = ".".join(path) or "the config"
    if not isinstance(node, ml_collections.ConfigDict):
      raise ValueError(f"config field {name!r}: {where} is a value, not a group of fields")
    if part not in node:
      raise ValueError(
        f"config field {name!r} does not exist; fields of {where}: "
        + ", ".join(sorted(node.keys()))
      )
    path.append(part)
    node = node[part]


def set_fields(config, fields: dict[str, Any]) -> None:
  """Sets each dotted field of ``fields`` in ``config``, checking its name first."""
  for name, value in fields.items():
    check_field_name(name)
    *groups, leaf = name.split(".")
    node = config
    for group in groups:
      node = node[group]
    node[leaf] = value


def describe(config=None) -> str:
  """Every field with its value (``config``'s, else the default) and meaning."""
  values = field_values(config) if config is not None else {}
  rows = []
  for field in FIELDS:
    value = values.get(field.name, field.default)
    shown = repr(value)
    if value != field.default:
      shown += f" (default {field.default!r})"
    rows.append((field.name, shown, field.meaning))
  name_width = max(len(r[0]) for r in rows)
  value_width = max(len(r[1]) for r in rows)
  return "\n".join(f"{n:<{name_width}}  {v:<{value_width}}  {m}" for n, v, m in rows)


def parse_phases(config) -> list[tuple[str, int]]:
  """[(method, epochs)] covering exactly ``config.train.epochs`` epochs.

  A last phase without a count ('rbd:5,sgd') runs to the end, so raising
  ``train.epochs`` extends it and leaves the earlier phases unchanged; a
  schedule with every count given must be rewritten to cover more epochs.
  """
  epochs = config.train.epochs
  if not config.phases:
    return [(config.method, epochs)]
  phases = []
  items = config.phases.split(",")
  for i, item in enumerate(items):
    method, _, count = item.strip().partition(":")
    checks.check_choice("phases", method, METHODS)
    if not count:
      if i != len(items) - 1:
        raise ValueError(
          f"phases={config.phases!r}: only the last phase may omit its epochs ('rbd:5,sgd')"
        )
      count = epochs - sum(n for _, n in phases)
    try:
      count = int(count)
    except ValueError as e:
      raise ValueError(f"phases={config.phases!r}: epochs must be integers") from e
    if count <= 0:
      raise ValueError(
        f"phases={config.phases!r}: every phase needs >= 1 epoch within train.epochs={epochs}"
      )
    phases.append((method, count))
  if sum(n for _, n in phases) != epochs:
    raise ValueError(
      f"phases={config.phases!r} cover {sum(n for _, n in phases)} epochs but train.epochs={epochs}"
    )
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
  raise ValueError(
    f"bases.compartments={value!r} is not supported; allowed: "
    "'none', 'leaf', 'module', a number of even slices ('8'), or "
    "'re:<regex>;<regex>...'"
  )


def num_train_images(config) -> int | None:
  """Training images left after the holdout, when the source fixes them.

  ``files`` and ``tfds`` hold the full training split, ``sample`` the shipped
  2,000 images; an image ``folder`` holds whatever it holds, and ``auto`` may
  pick one, so for those two it is None (checked after loading). Raises a
  ValueError for a holdout that does not fit the training split.
  """
  data = config.data
  if data.source in ("auto", "folder"):
    return None
  sample = data.source == "sample"
  total = sources.SAMPLE_TRAIN_SIZE if sample else sources.train_size(data.dataset)
  holdout_size = data.holdout_size
  if sample:  # the data layer caps the sample's holdout
    holdout_size = min(holdout_size, int(sources.SAMPLE_MAX_HOLDOUT_FRACTION * total))
  if data.holdout == "validation":
    if not holdout_size < total:
      raise ValueError(
        f"data.holdout_size={data.holdout_size} must be smaller than the "
        f"{total} training images of {data.dataset} (data.source="
        f"{data.source!r})"
      )
    return total - holdout_size
  if data.holdout == "tune":
    return int(round(sources.TUNE_TRAIN_FRACTION * total))
  return total


def steps_per_epoch(config, num_train: int) -> int:
  """Steps of one epoch: whole batches of the shuffled training split, capped.

  A step takes ``train.batch_size`` images for each of the ``workers``.
  """
  images_per_step = config.train.batch_size * config.workers
  if num_train < images_per_step:
    workers = f" x workers={config.workers}" if config.workers > 1 else ""
    raise ValueError(
      f"train.batch_size={config.train.batch_size}{workers} exceeds the {num_train} training images"
    )
  full_epoch = num_train // images_per_step  # the last partial batch is dropped
  if config.train.steps_per_epoch == -1:
    return full_epoch
  return min(full_epoch, config.train.steps_per_epoch)


@functools.cache
def param_shapes(model: str, dataset: str):
  """The model's parameter pytree as ShapeDtypeStructs; nothing is computed."""
  module = models.create_model(model, num_classes=NUM_CLASSES)
  images = jax.ShapeDtypeStruct((1, *sources.image_shape(dataset)), jax.numpy.float32)
  variables = jax.eval_shape(functools.partial(module.init, train=False), jax.random.key(0), images)
  return variables["params"]


def _positive(field, value):
  if isinstance(value, bool) or not value > 0:
    raise ValueError(f"{field}={value!r} must be > 0")


def _check_optimizer(config) -> None:
  """train.optimizer and train.weight_decay, and the combinations the trainer cannot run."""
  checks.check_choice("train.optimizer", config.train.optimizer, OPTIMIZERS)
  decay = config.train.weight_decay
  if isinstance(decay, bool) or not isinstance(decay, (int, float)) or decay < 0:
    raise ValueError(f"train.weight_decay={decay!r} must be a number >= 0")
  projected = any(m in ("rbd", "fpd") for m, _ in parse_phases(config))
  if config.train.optimizer == "adam" and projected and config.workers > 1:
    raise ValueError(
      f"train.optimizer='adam' with RBD/FPD keeps Adam's statistics of one worker's "
      f"coordinates: it needs workers=1, not {config.workers}"
    )
  if decay and projected and config.bases.coordinates == "forward":
    raise ValueError(
      "train.weight_decay adds weight_decay * theta to the gradient, which forward mode "
      "(bases.coordinates='forward') never forms: use bases.coordinates='reverse' or "
      "train.weight_decay=0"
    )


def _check_fields(config) -> None:
  """The config has exactly the schema's fields, and every float is finite."""
  values = field_values(config)
  schema = {field.name for field in FIELDS}
  unknown = sorted(set(values) - schema)
  if unknown:
    raise ValueError(f"config fields {unknown} are not in the schema (config_lib.FIELDS)")
  missing = sorted(schema - set(values))
  if missing:
    raise ValueError(f"config fields {missing} are missing; start from config_lib.base_config()")
  for name, value in values.items():
    if isinstance(value, float) and not math.isfinite(value):
      raise ValueError(f"{name}={value!r} must be a finite number")


def _check_bases(config, phases) -> None:
  bases = config.bases
  if not isinstance(bases.d, int) or isinstance(bases.d, bool) or bases.d <= 0:
    raise ValueError(f"bases.d={bases.d!r} must be a positive integer")
  checks.check_choice("bases.distribution", bases.distribution, dirs.DISTRIBUTIONS)
  checks.check_choice("bases.normalize", bases.normalize, dirs.NORMALIZATIONS)
  checks.check_choice("bases.allocation", bases.allocation, comp_lib.ALLOCATIONS)
  checks.check_choice("bases.generator", bases.generator, dirs.GENERATORS)
  checks.check_choice("bases.coordinates", bases.coordinates, COORDINATES)
  checks.check_choice("bases.structure", bases.structure, structured.STRUCTURES)
  uses_bases = any(m in ("rbd", "fpd") for m, _ in phases)
  if uses_bases and bases.structure != "dense" and bases.distribution != "normal":
    raise ValueError(
      f"bases.distribution={bases.distribution!r} applies to dense bases only: "
      f"bases.structure={bases.structure!r} fixes its own entries; leave it at 'normal'"
    )
  if bases.block_rows < 0:
    raise ValueError(f"bases.block_rows={bases.block_rows} must be >= 0 (0 = automatic)")
  compartments = parse_compartments(bases.compartments)
  if any(m in ("rbd", "fpd") for m, _ in phases):
    # The transform's own layout, on the model's parameter shapes: the d split
    # and the compartment rules fail here rather than after loading data.
    shapes = param_shapes(config.model, config.data.dataset)
    try:
      comp_lib.make_layout(
        shapes, d=bases.d, compartments=compartments, allocation=bases.allocation
      )
    except ValueError as e:
      raise ValueError(
        f"bases.d={bases.d}, bases.compartments={bases.compartments!r}, "
        f"bases.allocation={bases.allocation!r} do not fit model {config.model!r} "
        f"({models.count_params(shapes)} parameters on {config.data.dataset}): {e}"
      ) from e


def _check_workers(config) -> None:
  workers = config.workers
  if not isinstance(workers, int) or isinstance(workers, bool) or workers < 1:
    raise ValueError(f"workers={workers!r} must be a positive integer")
  if config.train.eval_batch_size % workers:
    raise ValueError(
      f"train.eval_batch_size={config.train.eval_batch_size} must be divisible by "
      f"workers={workers}: evaluation splits every batch over the workers"
    )


def augment_parts(config) -> tuple[str, ...] | None:
  """``data.augment_parts`` for the preprocessing (None: all parts); ValueError if unknown."""
  value = config.data.augment_parts
  if value == "all":
    return None
  if not isinstance(value, str) or not value:
    raise ValueError(f"data.augment_parts={value!r} must be 'all' or +-joined part names")
  parts = preprocess.check_parts("data.augment_parts", value.split("+"), config.data.dataset)
  if not config.data.augment:
    raise ValueError(
      f"data.augment_parts={value!r} needs data.augment=True (it picks among the augmentations)"
    )
  return parts


def validate(config) -> None:
  """Raises ValueError for the first invalid field. Loads, writes and compiles nothing."""
  _check_fields(config)
  checks.check_choice("model", config.model, models.KNOWN_MODEL_NAMES)
  checks.check_choice("data.dataset", config.data.dataset, sources.DATASET_NAMES)
  checks.check_choice("data.source", config.data.source, sources.SOURCES)
  checks.check_choice("data.holdout", config.data.holdout, sources.SPLITS)
  if config.data.source == "sample" and config.data.dataset != "mnist":
    raise ValueError(
      f"data.source='sample' is only available for data.dataset='mnist', "
      f"not {config.data.dataset!r}"
    )
  _positive("data.holdout_size", config.data.holdout_size)
  augment_parts(config)
  sources.check_cache_dir("data.cache_dir", config.data.cache_dir)
  checks.check_choice("method", config.method, METHODS)
  _positive("train.epochs", config.train.epochs)
  _positive("train.batch_size", config.train.batch_size)
  _positive("train.eval_batch_size", config.train.eval_batch_size)
  _positive("train.log_every_steps", config.train.log_every_steps)
  _positive("train.steps_per_dispatch", config.train.steps_per_dispatch)
  _check_workers(config)
  _check_optimizer(config)
  if config.train.steps_per_epoch != -1:
    _positive("train.steps_per_epoch (or -1)", config.train.steps_per_epoch)
  if config.train.eval_examples != -1:
    _positive("train.eval_examples (or -1)", config.train.eval_examples)
  num_train = num_train_images(config)
  if num_train is not None:
    steps_per_epoch(config, num_train)
  phases = parse_phases(config)
  for method, _ in phases:
    _positive(f"learning_rate.{method}", config.learning_rate[method])
  if any(m in ("rbd", "fpd", "nes") for m, _ in phases):
    _check_bases(config, phases)
  if any(m == "nes" for m, _ in phases):
    _positive("nes.sigma", config.nes.sigma)
    checks.check_choice("nes.fitness", config.nes.fitness, nes_lib.FITNESS)
    if config.nes.antithetic and config.bases.d % 2:
      raise ValueError(f"bases.d={config.bases.d} must be even with nes.antithetic")
