"""Tests for random_bases.models: exact parameter counts (PAPER.md "Models"), shapes, BN state."""

from __future__ import annotations

import math
import pathlib
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import reference

from random_bases import models
from random_bases.method import compartments as comp_lib

MNIST_SHAPE = (28, 28, 1)
CIFAR_SHAPE = (32, 32, 3)


@pytest.fixture(scope="module")
def resnet8_vars():
  model = models.create_model("resnet8")
  return model, models.init_variables(model, key=jax.random.key(0), input_shape=CIFAR_SHAPE)


# D of each model and input, PAPER.md "Models"; test_paper_d_is_papers_table reads
# them back from PAPER.md. They must match exactly because d/D ratios and
# compartment sizes in the experiments are derived from them.
PAPER_D = {
  ("fc", MNIST_SHAPE): 101_770,
  ("fc", CIFAR_SHAPE): 394_634,
  ("cnn", MNIST_SHAPE): 93_322,
  ("cnn", CIFAR_SHAPE): 122_570,
  ("resnet8", CIFAR_SHAPE): 78_330,
  ("resnet32", CIFAR_SHAPE): 467_194,
}
# PAPER.md Table 3: per-tensor compartments of ResNet-8 with compression c ->
# total d (the row labelled 75x is c = 100).
PAPER_TABLE3_D = {10: 7_982, 25: 3_328, 50: 1_782, 100: 1_018}


def paper_md():
  """The shared spec beside this checkout (../shared/PAPER.md), as text."""
  path = pathlib.Path(reference.ROOT).parent / "shared" / "PAPER.md"
  return reference.require_data(path, "PAPER.md, the shared spec").read_text()


def test_paper_d_is_papers_table():
  rows = {}
  for line in paper_md().splitlines():
    cells = [c.strip() for c in line.strip().strip("|").split("|")]
    if len(cells) == 4 and cells[0] in ("FC", "CNN", "ResNet-8", "ResNet-32"):
      name = cells[0].lower().replace("-", "")
      for shape, cell in ((MNIST_SHAPE, cells[2]), (CIFAR_SHAPE, cells[3])):
        if cell.replace(",", "").isdigit():
          rows[name, shape] = int(cell.replace(",", ""))
  assert rows == PAPER_D
  table3 = dict(re.findall(r"^\| RBD (\d+)× \| ([\d,]+) \|", paper_md(), re.MULTILINE))
  assert "the row labelled 75× (1,018) is c = 100" in paper_md()
  by_c = {100 if k == "75" else int(k): int(v.replace(",", "")) for k, v in table3.items()}
  assert by_c == PAPER_TABLE3_D


@pytest.mark.parametrize("name, input_shape", list(PAPER_D))
def test_exact_trainable_param_counts(name, input_shape):
  model = models.create_model(name)
  # eval_shape: counts depend only on shapes, and skipping the real init keeps this fast.
  variables = jax.eval_shape(
    lambda k: models.init_variables(model, key=k, input_shape=input_shape),
    jax.random.key(0),
  )
  assert models.count_params(variables["params"]) == PAPER_D[name, input_shape]


# --- the forward pass against a float64 numpy re-implementation of PAPER.md's layers ---


def np_conv(x, kernel, stride=1, padding="VALID"):
  """NHWC x HWIO convolution; SAME pads max((out - 1) s + k - in, 0), the odd one at the end."""
  kh, kw = kernel.shape[:2]
  if padding == "SAME":
    pads = []
    for size, k in ((x.shape[1], kh), (x.shape[2], kw)):
      total = max((-(-size // stride) - 1) * stride + k - size, 0)
      pads.append((total // 2, total - total // 2))
    x = np.pad(x, ((0, 0), *pads, (0, 0)))
  windows = np.lib.stride_tricks.sliding_window_view(x, (kh, kw), axis=(1, 2))
  windows = windows[:, ::stride, ::stride]  # [n, h, w, c, kh, kw]
  return np.einsum("nhwcij,ijco->nhwo", windows, kernel)


def np_max_pool(x):
  """2 x 2 windows, stride 2, VALID."""
  n, h, w, c = x.shape
  x = x[:, : h // 2 * 2, : w // 2 * 2]
  return x.reshape(n, h // 2, 2, w // 2, 2, c).max(axis=(2, 4))


def np_relu(x):
  return np.maximum(x, 0.0)


def np_dense(x, p):
  return x @ p["kernel"] + p["bias"]


def np_batch_norm(x, p, stats, train):
  """Batch statistics (biased variance) in train mode, the running ones in eval mode."""
  if train:
    mean, var = x.mean(axis=(0, 1, 2)), x.var(axis=(0, 1, 2))
  else:
    mean, var = stats["mean"], stats["var"]
  return (x - mean) / np.sqrt(var + 1e-5) * p["scale"] + p["bias"]


def np_forward(name, variables, x, train=False):
  """Logits of model ``name`` (PAPER.md "Models") from its variables, in float64."""
  as64 = lambda tree: jax.tree.map(lambda a: np.asarray(a, np.float64), tree)
  p, stats, x = as64(variables["params"]), as64(variables.get("batch_stats", {})), as64(x)
  if name == "fc":  # Flatten -> Dense(128, relu) -> Dense
    return np_dense(np_relu(np_dense(x.reshape(len(x), -1), p["Dense_0"])), p["Dense_1"])
  if name == "cnn":  # conv 32 -> pool -> conv 64 -> pool -> conv 64 -> dense 64 -> dense
    for i in range(3):
      x = np_relu(np_conv(x, p[f"Conv_{i}"]["kernel"]) + p[f"Conv_{i}"]["bias"])
      x = np_max_pool(x) if i < 2 else x
    return np_dense(np_relu(np_dense(x.reshape(len(x), -1), p["Dense_0"])), p["Dense_1"])
  bn = lambda y, q, s: np_batch_norm(y, q, s, train)
  x = np_relu(bn(np_conv(x, p["stem_conv"]["kernel"], 1, "SAME"), p["stem_bn"], stats["stem_bn"]))
  blocks = {"resnet8": 1, "resnet32": 5}[name]
  for stage, stride in ((1, 1), (2, 2), (3, 2)):
    for b in range(1, blocks + 1):
      q, s = p[f"stage{stage}_block{b}"], stats[f"stage{stage}_block{b}"]
      step = stride if b == 1 else 1
      y = np_relu(bn(np_conv(x, q["conv1"]["kernel"], step, "SAME"), q["bn1"], s["bn1"]))
      y = bn(np_conv(y, q["conv2"]["kernel"], 1, "SAME"), q["bn2"], s["bn2"])
      if b == 1:  # every stage opens with a 1x1 projection + BN shortcut
        x = bn(np_conv(x, q["proj_conv"]["kernel"], step, "SAME"), q["proj_bn"], s["proj_bn"])
      x = np_relu(y + x)
  return np_dense(x.mean(axis=(1, 2)), p["head"])


def random_variables(model, shape, seed):
  """Variables of ``model``'s shapes (init's, via eval_shape) with random values.

  Kernels ~ N(0, 1/fan_in); biases, BN scales and offsets and running means
  random around their initial values, running variances in [0.5, 2], so that
  every term of every layer shows in the logits.
  """
  rng = np.random.default_rng(seed)
  shapes = jax.eval_shape(
    lambda k: models.init_variables(model, key=k, input_shape=shape), jax.random.key(0)
  )

  def draw(path, leaf):
    name = jax.tree_util.keystr(path)
    if name.endswith("['kernel']"):
      value = rng.standard_normal(leaf.shape) / np.sqrt(np.prod(leaf.shape[:-1]))
    elif name.endswith("['var']"):
      value = rng.uniform(0.5, 2.0, leaf.shape)
    elif name.endswith("['scale']"):
      value = 1.0 + 0.3 * rng.standard_normal(leaf.shape)
    else:  # biases, BN offsets and running means
      value = 0.3 * rng.standard_normal(leaf.shape)
    return jnp.asarray(value, leaf.dtype)

  return jax.tree_util.tree_map_with_path(draw, shapes)


@pytest.mark.parametrize("name", models.MODEL_NAMES)
@pytest.mark.parametrize("num_classes", [10, 7])
def test_forward_pass_equals_a_numpy_reimplementation(name, num_classes):
  model = models.create_model(name, num_classes=num_classes)
  shape = MNIST_SHAPE if name in ("fc", "cnn") else CIFAR_SHAPE
  variables = random_variables(model, shape, 5)
  x = jax.random.uniform(jax.random.key(2), (3, *shape), jnp.float32)
  logits = model.apply(variables, x, train=False)
  assert (logits.shape, logits.dtype) == ((3, num_classes), jnp.float32)
  want = np_forward(name, variables, x)
  np.testing.assert_allclose(logits, want, rtol=1e-4, atol=1e-4 * np.abs(want).max())


@pytest.mark.parametrize("name", ["resnet8", "resnet32"])
def test_train_mode_normalises_with_the_batch_statistics(name):
  model = models.create_model(name)
  variables = random_variables(model, CIFAR_SHAPE, 6)
  x = jax.random.normal(jax.random.key(3), (4, *CIFAR_SHAPE)) + 0.5
  logits, _ = model.apply(variables, x, train=True, mutable=["batch_stats"])
  want = np_forward(name, variables, x, train=True)
  np.testing.assert_allclose(logits, want, rtol=1e-4, atol=1e-4 * np.abs(want).max())
  # The running statistics are not used: eval mode gives other logits.
  assert np.abs(np.asarray(model.apply(variables, x, train=False)) - want).max() > 1e-2


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
  assert models.count_params(variables["params"]) == PAPER_D["resnet8", CIFAR_SHAPE]


@pytest.mark.parametrize("c", sorted(PAPER_TABLE3_D))
def test_resnet8_per_tensor_compartments_give_table3_dims(resnet8_vars, c):
  # PAPER.md: one compartment per trainable tensor of the model, d_v =
  # max(ceil(n_v / c), 10) rounded up to even, gives Table 3's d exactly.
  _, variables = resnet8_vars
  sizes = [int(np.size(leaf)) for leaf in jax.tree.leaves(variables["params"])]
  by_rule = [max(math.ceil(n / c), 10) for n in sizes]
  assert sum(k + k % 2 for k in by_rule) == PAPER_TABLE3_D[c]
  # The library's allocation does the same.
  layout = comp_lib.make_layout(
    variables["params"], d=c, compartments="leaf", allocation="compression"
  )
  assert len(layout.compartments) == 32
  assert [comp.dim for comp in layout.compartments] == [k + k % 2 for k in by_rule]
  assert layout.dim == PAPER_TABLE3_D[c]


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


# --- Li et al. 2018's MNIST networks (the intrinsic-dimension experiment) ---

# D as Li, Farkhoor, Liu & Yosinski (ICLR 2018) state it (Table 1: FC 199,210, LeNet 44,426),
# and as the layer arithmetic gives it.
LI_D = {"li_fc": 199_210, "li_lenet": 44_426}


def test_li_counts_are_the_layer_arithmetic():
  dense = lambda n_in, n_out: n_in * n_out + n_out  # noqa: E731
  conv = lambda k, c_in, c_out: k * k * c_in * c_out + c_out  # noqa: E731
  assert dense(784, 200) + dense(200, 200) + dense(200, 10) == LI_D["li_fc"]
  # 28 -> conv5 24 -> pool 12 -> conv5 8 -> pool 4: 4 * 4 * 16 = 256 features.
  lenet = conv(5, 1, 6) + conv(5, 6, 16) + dense(256, 120) + dense(120, 84) + dense(84, 10)
  assert lenet == LI_D["li_lenet"]


@pytest.mark.parametrize("name", models.LI_MODEL_NAMES)
def test_li_exact_trainable_param_counts(name):
  model = models.create_model(name)
  variables = jax.eval_shape(
    lambda k: models.init_variables(model, key=k, input_shape=MNIST_SHAPE), jax.random.key(0)
  )
  assert set(variables) == {"params"}
  assert models.count_params(variables["params"]) == LI_D[name]


def np_forward_li(name, variables, x):
  """Logits of Li et al.'s ``name`` from its variables, in float64 (ReLU throughout)."""
  p = jax.tree.map(lambda a: np.asarray(a, np.float64), variables["params"])
  x = np.asarray(x, np.float64)
  if name == "li_fc":  # 784-200-200-10
    x = x.reshape(len(x), -1)
    x = np_relu(np_dense(np_relu(np_dense(x, p["Dense_0"])), p["Dense_1"]))
    return np_dense(x, p["Dense_2"])
  for i in range(2):  # conv 5x5 valid -> relu -> 2x2 max-pool, twice
    x = np_max_pool(np_relu(np_conv(x, p[f"Conv_{i}"]["kernel"]) + p[f"Conv_{i}"]["bias"]))
  x = x.reshape(len(x), -1)
  x = np_relu(np_dense(np_relu(np_dense(x, p["Dense_0"])), p["Dense_1"]))
  return np_dense(x, p["Dense_2"])


@pytest.mark.parametrize("name", models.LI_MODEL_NAMES)
def test_li_forward_pass_equals_a_numpy_reimplementation(name):
  model = models.create_model(name, num_classes=10)
  variables = random_variables(model, MNIST_SHAPE, 7)
  x = jax.random.uniform(jax.random.key(8), (3, *MNIST_SHAPE), jnp.float32)
  logits = model.apply(variables, x, train=False)
  assert (logits.shape, logits.dtype) == ((3, 10), jnp.float32)
  want = np_forward_li(name, variables, x)
  np.testing.assert_allclose(logits, want, rtol=1e-4, atol=1e-4 * np.abs(want).max())


def test_li_models_are_known_and_listed_in_errors():
  assert models.LI_MODEL_NAMES == ("li_fc", "li_lenet")
  assert models.KNOWN_MODEL_NAMES == models.MODEL_NAMES + models.LI_MODEL_NAMES
  assert isinstance(models.create_model("li_fc"), models.LiFC)
  assert isinstance(models.create_model("li_lenet"), models.LiLeNet)
  with pytest.raises(ValueError, match="'li_fc', 'li_lenet'"):
    models.create_model("lenet5")


def test_li_init_is_he_normal_with_zero_biases():
  # He normal: variance 2 / fan_in (flax's truncated normal keeps that variance).
  model = models.create_model("li_fc")
  params = models.init_variables(model, key=jax.random.key(1), input_shape=MNIST_SHAPE)["params"]
  kernel = np.asarray(params["Dense_0"]["kernel"])
  assert kernel.shape == (784, 200)
  np.testing.assert_allclose(kernel.var(), 2 / 784, rtol=0.02)
  for layer in ("Dense_0", "Dense_1", "Dense_2"):
    np.testing.assert_array_equal(params[layer]["bias"], 0.0)
