"""Tests for random_bases.models: exact parameter counts (PAPER.md "Models"), shapes, BN state."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from random_bases import models

MNIST_SHAPE = (28, 28, 1)
CIFAR_SHAPE = (32, 32, 3)


@pytest.fixture(scope="module")
def resnet8_vars():
  model = models.create_model("resnet8")
  return model, models.init_variables(model, key=jax.random.key(0), input_shape=CIFAR_SHAPE)


# D values from PAPER.md; they must match exactly because d/D ratios and compartment sizes
# in the experiments are derived from them.
@pytest.mark.parametrize(
  "name, input_shape, expected",
  [
    ("fc", MNIST_SHAPE, 101_770),
    ("fc", CIFAR_SHAPE, 394_634),
    ("cnn", MNIST_SHAPE, 93_322),
    ("cnn", CIFAR_SHAPE, 122_570),
    ("resnet8", CIFAR_SHAPE, 78_330),
    ("resnet32", CIFAR_SHAPE, 467_194),
  ],
)
def test_exact_trainable_param_counts(name, input_shape, expected):
  model = models.create_model(name)
  # eval_shape: counts depend only on shapes, and skipping the real init keeps this fast.
  variables = jax.eval_shape(
    lambda k: models.init_variables(model, key=k, input_shape=input_shape),
    jax.random.key(0),
  )
  assert models.count_params(variables["params"]) == expected


@pytest.mark.parametrize("name", models.MODEL_NAMES)
@pytest.mark.parametrize("num_classes", [10, 7])
def test_output_shape(name, num_classes):
  model = models.create_model(name, num_classes=num_classes)
  shape = MNIST_SHAPE if name in ("fc", "cnn") else CIFAR_SHAPE
  variables = models.init_variables(model, key=jax.random.key(1), input_shape=shape)
  x = jax.random.uniform(jax.random.key(2), (3, *shape), jnp.float32)
  logits = model.apply(variables, x, train=False)
  assert logits.shape == (3, num_classes)
  assert logits.dtype == jnp.float32
  assert bool(jnp.all(jnp.isfinite(logits)))


def test_collections_per_model():
  for name, has_bn in [("fc", False), ("cnn", False), ("resnet8", True)]:
    model = models.create_model(name)
    variables = jax.eval_shape(
      lambda k: models.init_variables(model, key=k, input_shape=CIFAR_SHAPE),  # noqa: B023  (traced at once)
      jax.random.key(0),
    )
    expected = {"params", "batch_stats"} if has_bn else {"params"}
    assert set(variables) == expected, name


def test_fc_and_cnn_ignore_train_flag():
  x = jax.random.uniform(jax.random.key(3), (2, *MNIST_SHAPE))
  for name in ("fc", "cnn"):
    model = models.create_model(name)
    variables = models.init_variables(model, key=jax.random.key(0), input_shape=MNIST_SHAPE)
    np.testing.assert_array_equal(
      model.apply(variables, x, train=True), model.apply(variables, x, train=False)
    )


def test_resnet_batch_stats_updated_only_in_train_mode(resnet8_vars):
  model, variables = resnet8_vars
  stats0 = variables["batch_stats"]
  # Running mean starts at 0 and var at 1 for every BN layer, none of them trainable.
  np.testing.assert_array_equal(stats0["stem_bn"]["mean"], np.zeros(16))
  np.testing.assert_array_equal(stats0["stage3_block1"]["bn2"]["var"], np.ones(64))
  assert "batch_stats" not in str(jax.tree_util.tree_structure(variables["params"]))
  assert set(stats0) == {"stem_bn", "stage1_block1", "stage2_block1", "stage3_block1"}
  assert set(stats0["stage2_block1"]) == {"bn1", "bn2", "proj_bn"}
  assert set(stats0["stem_bn"]) == {"mean", "var"}

  x = jax.random.normal(jax.random.key(4), (4, *CIFAR_SHAPE)) + 0.5
  logits, updates = model.apply(variables, x, train=True, mutable=["batch_stats"])
  assert logits.shape == (4, 10)
  new_stats = updates["batch_stats"]
  assert jax.tree_util.tree_structure(new_stats) == jax.tree_util.tree_structure(stats0)
  # Every BN layer's statistics move in train mode.
  for old, new in zip(jax.tree_util.tree_leaves(stats0), jax.tree_util.tree_leaves(new_stats)):
    assert not np.allclose(old, new)
  # momentum 0.9: new mean = 0.1 * batch mean of the stem's conv output (old mean is 0).
  stem_out = jax.lax.conv_general_dilated(
    x,
    variables["params"]["stem_conv"]["kernel"],
    window_strides=(1, 1),
    padding="SAME",
    dimension_numbers=("NHWC", "HWIO", "NHWC"),
  )
  np.testing.assert_allclose(
    new_stats["stem_bn"]["mean"], 0.1 * stem_out.mean(axis=(0, 1, 2)), rtol=1e-4, atol=1e-5
  )

  # Eval mode must not touch the statistics, and must not need them to be mutable.
  _, eval_updates = model.apply(variables, x, train=False, mutable=["batch_stats"])
  for old, new in zip(
    jax.tree_util.tree_leaves(stats0), jax.tree_util.tree_leaves(eval_updates["batch_stats"])
  ):
    np.testing.assert_array_equal(old, new)
  model.apply(variables, x, train=False)  # No mutable collections required.


# Every trainable tensor of ResNet-8 in tree_flatten_with_path order (dict keys sorted), with
# its size. Compartment code builds one compartment per entry, so this list is the contract.
RESNET8_TENSORS = [
  ("head/bias", 10),
  ("head/kernel", 64 * 10),
  ("stage1_block1/bn1/bias", 16),
  ("stage1_block1/bn1/scale", 16),
  ("stage1_block1/bn2/bias", 16),
  ("stage1_block1/bn2/scale", 16),
  ("stage1_block1/conv1/kernel", 3 * 3 * 16 * 16),
  ("stage1_block1/conv2/kernel", 3 * 3 * 16 * 16),
  ("stage1_block1/proj_bn/bias", 16),
  ("stage1_block1/proj_bn/scale", 16),
  ("stage1_block1/proj_conv/kernel", 1 * 1 * 16 * 16),
  ("stage2_block1/bn1/bias", 32),
  ("stage2_block1/bn1/scale", 32),
  ("stage2_block1/bn2/bias", 32),
  ("stage2_block1/bn2/scale", 32),
  ("stage2_block1/conv1/kernel", 3 * 3 * 16 * 32),
  ("stage2_block1/conv2/kernel", 3 * 3 * 32 * 32),
  ("stage2_block1/proj_bn/bias", 32),
  ("stage2_block1/proj_bn/scale", 32),
  ("stage2_block1/proj_conv/kernel", 1 * 1 * 16 * 32),
  ("stage3_block1/bn1/bias", 64),
  ("stage3_block1/bn1/scale", 64),
  ("stage3_block1/bn2/bias", 64),
  ("stage3_block1/bn2/scale", 64),
  ("stage3_block1/conv1/kernel", 3 * 3 * 32 * 64),
  ("stage3_block1/conv2/kernel", 3 * 3 * 64 * 64),
  ("stage3_block1/proj_bn/bias", 64),
  ("stage3_block1/proj_bn/scale", 64),
  ("stage3_block1/proj_conv/kernel", 1 * 1 * 32 * 64),
  ("stem_bn/bias", 16),
  ("stem_bn/scale", 16),
  ("stem_conv/kernel", 3 * 3 * 3 * 16),
]


def _flat_tensors(params):
  leaves, _ = jax.tree_util.tree_flatten_with_path(params)
  return [("/".join(str(k.key) for k in path), int(np.size(leaf))) for path, leaf in leaves]


def test_resnet8_tensor_list(resnet8_vars):
  _, variables = resnet8_vars
  assert _flat_tensors(variables["params"]) == RESNET8_TENSORS
  assert len(RESNET8_TENSORS) == 32
  assert sum(n for _, n in RESNET8_TENSORS) == 78_330


@pytest.mark.parametrize("c, expected_d", [(10, 7_982), (25, 3_328), (50, 1_782), (100, 1_018)])
def test_resnet8_tensor_list_reproduces_table3_dims(c, expected_d):
  # PAPER.md: one compartment per trainable tensor, d_v = max(ceil(n_v / c), 10) rounded up
  # to even, gives Table 3's d exactly; this pins the tensor list to the paper's layout.
  total = 0
  for _, n in RESNET8_TENSORS:
    d = max(math.ceil(n / c), 10)
    total += d + d % 2
  assert total == expected_d


def test_resnet32_structure():
  model = models.create_model("resnet32")
  assert isinstance(model, models.ResNet) and model.num_blocks == 5
  variables = jax.eval_shape(
    lambda k: models.init_variables(model, key=k, input_shape=CIFAR_SHAPE), jax.random.key(0)
  )
  params = variables["params"]
  blocks = sorted(k for k in params if k.startswith("stage"))
  assert blocks == sorted(f"stage{s}_block{b}" for s in (1, 2, 3) for b in range(1, 6))
  for s in (1, 2, 3):
    assert "proj_conv" in params[f"stage{s}_block1"]
    for b in range(2, 6):
      assert set(params[f"stage{s}_block{b}"]) == {"conv1", "bn1", "conv2", "bn2"}
  # 6n + 2 = 32 weighted layers: stem + 2 convs per block + head (projections not counted).
  convs = [
    p for p, _ in _flat_tensors(params) if p.endswith("conv1/kernel") or p.endswith("conv2/kernel")
  ]
  assert 1 + len(convs) + 1 == 32


def test_convs_have_no_bias_and_bn_stats_not_params(resnet8_vars):
  _, variables = resnet8_vars
  names = [p for p, _ in _flat_tensors(variables["params"])]
  assert not any("conv" in p and p.endswith("bias") for p in names)
  assert not any(p.endswith("mean") or p.endswith("var") for p in names)


def test_model_classes_and_fields():
  assert models.MODEL_NAMES == ("fc", "cnn", "resnet8", "resnet32")
  assert isinstance(models.create_model("fc"), models.FC)
  assert isinstance(models.create_model("cnn", num_classes=3), models.CNN)
  assert models.create_model("cnn", num_classes=3).num_classes == 3
  r8 = models.create_model("resnet8")
  assert isinstance(r8, models.ResNet) and r8.num_blocks == 1 and r8.num_classes == 10


def test_unknown_model_name_raises():
  with pytest.raises(ValueError) as info:
    models.create_model("vgg16")
  msg = str(info.value)
  assert "name" in msg and "vgg16" in msg
  for allowed in ("fc", "cnn", "resnet8", "resnet32"):
    assert f"'{allowed}'" in msg


@pytest.mark.parametrize("bad", [0, -1])
def test_non_positive_num_classes_raises(bad):
  with pytest.raises(ValueError, match="num_classes"):
    models.create_model("fc", num_classes=bad)


def test_count_params_on_plain_pytree():
  tree = {"a": np.zeros((2, 3)), "b": [np.zeros(4), {"c": np.zeros(())}]}
  assert models.count_params(tree) == 6 + 4 + 1
  assert isinstance(models.count_params(tree), int)


def test_init_is_deterministic_in_key():
  model = models.create_model("fc")
  a = models.init_variables(model, key=jax.random.key(5), input_shape=MNIST_SHAPE)
  b = models.init_variables(model, key=jax.random.key(5), input_shape=MNIST_SHAPE)
  c = models.init_variables(model, key=jax.random.key(6), input_shape=MNIST_SHAPE)
  for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)):
    np.testing.assert_array_equal(x, y)
  assert not np.array_equal(a["params"]["Dense_0"]["kernel"], c["params"]["Dense_0"]["kernel"])
