"""The config schema, its description table and validate's checks (nothing trains here)."""

from __future__ import annotations

import math

import pytest

from random_bases import config_lib, models
from random_bases import data as data_lib


def sample_config(**overrides):
  config = config_lib.base_config()
  config.data.source = "sample"
  config.data.holdout_size = 400
  config.train.epochs = 1
  config_lib.set_fields(config, overrides)
  return config


def test_base_config_is_built_from_the_field_table():
  values = config_lib.field_values(config_lib.base_config())
  assert values == {f.name: f.default for f in config_lib.FIELDS}
  for field in config_lib.FIELDS:
    assert type(values[field.name]) is type(field.default), field.name
    assert field.meaning.strip(), field.name


def test_describe_prints_every_field_with_value_default_and_meaning():
  config = sample_config(**{"bases.d": 10})
  lines = config_lib.describe(config).splitlines()
  assert len(lines) == len(config_lib.FIELDS)
  for line, field in zip(lines, config_lib.FIELDS):
    assert line.split()[0] == field.name
    assert field.meaning in line
  d_line = lines[[f.name for f in config_lib.FIELDS].index("bases.d")]
  assert "10 (default 250)" in d_line


@pytest.mark.parametrize(
  "name,message",
  [
    (
      "bases.dd",
      "config field 'bases.dd' does not exist; fields of bases: allocation, "
      "block_rows, compartments, coordinates, d, distribution, generator, normalize",
    ),
    (
      "trian.epochs",
      "fields of the config: bases, data, learning_rate, method, metrics, "
      "model, nes, phases, seed, train",
    ),
    ("seed.x", "config field 'seed.x': seed is a value, not a group of fields"),
  ],
)
def test_unknown_field_names_are_named_with_their_group(name, message):
  with pytest.raises(ValueError) as e:
    config_lib.check_field_name(name)
  assert message in str(e.value)
  config_lib.check_field_name("bases.d")  # an existing field passes
  config_lib.check_field_name("bases")


FLOAT_FIELDS = [f.name for f in config_lib.FIELDS if isinstance(f.default, float)]


def test_float_fields_are_the_learning_rates_sigma_and_weight_decay():
  assert FLOAT_FIELDS == [
    "learning_rate.sgd",
    "learning_rate.rbd",
    "learning_rate.fpd",
    "learning_rate.nes",
    "nes.sigma",
    "train.weight_decay",
  ]


@pytest.mark.parametrize("field", FLOAT_FIELDS)
@pytest.mark.parametrize("value", [math.inf, -math.inf, math.nan])
def test_every_float_field_rejects_non_finite_values(field, value):
  # Before: learning_rate.rbd=inf passed validate and trained to NaN.
  with pytest.raises(ValueError, match=f"{field}={value!r} must be a finite number"):
    config_lib.validate(sample_config(**{field: value}))


def test_fields_outside_the_schema_are_rejected():
  config = sample_config()
  config.train.unlock()
  config.train.epochz = 3
  with pytest.raises(ValueError, match=r"\['train.epochz'\] are not in the schema"):
    config_lib.validate(config)


@pytest.mark.parametrize(
  "model,dataset,count",
  [
    ("fc", "mnist", 101_770),
    ("fc", "cifar10", 394_634),
    ("cnn", "fashion_mnist", 93_322),
    ("cnn", "cifar10", 122_570),
    ("resnet8", "cifar10", 78_330),
  ],
)
def test_parameter_shapes_from_the_dataset_name_match_the_paper(model, dataset, count):
  shapes = config_lib.param_shapes(model, dataset)
  assert models.count_params(shapes) == count  # PAPER.md's D


@pytest.mark.parametrize(
  "holdout,holdout_size",
  [("validation", 400), ("validation", 10_000), ("tune", 10_000), ("none", 10_000)],
)
def test_training_images_known_before_loading_the_sample(holdout, holdout_size):
  config = sample_config(**{"data.holdout": holdout, "data.holdout_size": holdout_size})
  loaded = data_lib.load_dataset(
    "mnist", source="sample", holdout=holdout, holdout_size=holdout_size
  )
  assert config_lib.num_train_images(config) == len(loaded.train_labels)


@pytest.mark.parametrize(
  "source,expected",
  [("files", 60_000 - 400), ("tfds", 60_000 - 400), ("auto", None), ("folder", None)],
)
def test_training_images_are_known_for_sources_that_fix_them(source, expected):
  # auto may pick an image folder, and a folder holds what it holds.
  config = sample_config(**{"data.source": source})
  assert config_lib.num_train_images(config) == expected


@pytest.mark.parametrize(
  "overrides,match",
  [
    (
      {"data.source": "files", "data.holdout_size": 60_000},
      r"data.holdout_size=60000 must be smaller than the 60000 training images of mnist",
    ),
    (
      {"data.source": "files", "data.dataset": "cifar10", "data.holdout_size": 50_000},
      r"data.holdout_size=50000 must be smaller than the 50000 training images of cifar10",
    ),
    (
      {"data.dataset": "fashion_mnist"},
      r"data.source='sample' is only available for data.dataset='mnist'",
    ),
    ({"train.batch_size": 1601}, r"train.batch_size=1601 exceeds the 1600 training images"),
    # A regex rule that covers no FC parameter (FC has Dense_0 and Dense_1).
    ({"bases.compartments": "re:conv;.*"}, r"bases.compartments='re:conv;.\*'.*conv"),
    ({"bases.compartments": "200000"}, r"200000 even slices is more than the 101770"),
    # Every FC tensor gets d = 250 directions; the output bias has 10 parameters.
    ({"bases.compartments": "leaf", "bases.allocation": "fixed"}, r"do not fit model 'fc'"),
    ({"bases.d": 101_771}, r"bases.d=101771.*do not fit model 'fc' \(101770 parameters"),
    ({"data.augment_parts": "flip"}, r"data.augment_parts=\['flip'\].*\['crop', 'brightness'\]"),
    ({"data.augment_parts": ""}, r"data.augment_parts='' must be 'all' or \+-joined"),
    (
      {"data.augment_parts": "crop", "data.augment": False},
      r"data.augment_parts='crop' needs data.augment=True",
    ),
  ],
)
def test_validate_catches_what_used_to_fail_after_loading(overrides, match):
  with pytest.raises(ValueError, match=match):
    config_lib.validate(sample_config(**overrides))


def test_layouts_that_fit_pass():
  config_lib.validate(sample_config(**{"bases.compartments": "re:Dense_0;.*"}))
  config_lib.validate(
    sample_config(
      **{
        "model": "resnet8",
        "data.dataset": "cifar10",
        "data.source": "files",
        "bases.compartments": "leaf",
        "bases.allocation": "compression",
        "bases.d": 10,
      }
    )
  )
  # NES and SGD build no layout: d only has to be positive.
  config_lib.validate(sample_config(**{"method": "nes", "bases.d": 200_000}))


@pytest.mark.parametrize(
  "phases,epochs,expected",
  [
    ("", 3, [("rbd", 3)]),
    ("rbd:1,sgd", 3, [("rbd", 1), ("sgd", 2)]),
    ("rbd:1,sgd", 5, [("rbd", 1), ("sgd", 4)]),  # extending grows the open last phase
    ("sgd:2,rbd:1", 3, [("sgd", 2), ("rbd", 1)]),
  ],
)
def test_phases(phases, epochs, expected):
  assert (
    config_lib.parse_phases(sample_config(**{"phases": phases, "train.epochs": epochs})) == expected
  )


def test_config_argument_parsing():
  assert config_lib.parse_arg("runlocal", runlocal=False).runlocal is True
  arg = config_lib.parse_arg("model=cnn,d=500", model="fc", d=250)
  assert (arg.model, arg.d) == ("cnn", 500)
  with pytest.raises(ValueError, match="config argument 'x' is unknown; allowed: d, model"):
    config_lib.parse_arg("x=1", model="fc", d=250)
