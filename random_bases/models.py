"""The networks trained in the random-bases experiments, in flax.linen.

The architectures follow the "Models" section of ``PAPER.md`` (shared spec), which restates
Gressmann, Eaton-Rosen & Luschi, "Improving Neural Network Training in Low Dimensional Random
Bases", NeurIPS 2020 (arXiv:2011.04720). The method's behaviour depends on D, the number of
trainable parameters, so the layouts below reproduce the paper's counts exactly:

======================  ===============  ===============
model                   D (28x28x1)      D (32x32x3)
======================  ===============  ===============
FC                      101,770          394,634
CNN                     93,322           122,570
ResNet-8  (n = 1)       --               78,330
ResNet-32 (n = 5)       --               467,194
======================  ===============  ===============

D counts only the ``params`` collection (all kernels and biases, and BatchNorm scale and
offset); BatchNorm running statistics live in ``batch_stats`` and are state, not parameters.

Every model maps NHWC float32 images to logits of shape ``[batch, num_classes]`` via
``model.apply(variables, x, train=...)``. Models are configured by explicit keyword arguments
only; nothing here reads a config object.

Two more networks come from Li, Farkhoor, Liu & Yosinski, "Measuring the Intrinsic Dimension of
Objective Landscapes", ICLR 2018, whose d_int90 the intrinsic-dimension experiment compares
with (``LI_MODEL_NAMES``; MNIST only, as there):

======================  ===============  =================================================
model                   D (28x28x1)      layers
======================  ===============  =================================================
li_fc                   199,210          784-200-200-10, ReLU
li_lenet                44,426           conv5x5 valid 6 -> pool -> conv5x5 valid 16 -> pool
                                         -> dense 120 -> dense 84 -> dense 10, ReLU
======================  ===============  =================================================

Both use He-normal kernels and zero biases, as their Keras code does.

ResNet parameter paths have fixed, readable names (``stem_conv``, ``stem_bn``,
``stage{s}_block{b}/{conv1,bn1,conv2,bn2,proj_conv,proj_bn}``, ``head``) because layer-wise
compartments and other per-tensor rules are written as regular expressions over them.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

__all__ = [
  "MODEL_NAMES",
  "LI_MODEL_NAMES",
  "KNOWN_MODEL_NAMES",
  "FC",
  "LiFC",
  "LiLeNet",
  "CNN",
  "ResNet",
  "ResidualBlock",
  "create_model",
  "count_params",
  "init_variables",
]

MODEL_NAMES: tuple[str, ...] = ("fc", "cnn", "resnet8", "resnet32")
# Li et al. 2018's MNIST networks (their d_int90: 750 and 290).
LI_MODEL_NAMES: tuple[str, ...] = ("li_fc", "li_lenet")
# Every name ``create_model`` builds: the paper's, then Li et al.'s.
KNOWN_MODEL_NAMES: tuple[str, ...] = MODEL_NAMES + LI_MODEL_NAMES

# Blocks per stage for the CIFAR ResNets (depth = 6n + 2).
_RESNET_BLOCKS = {"resnet8": 1, "resnet32": 5}

# FC and CNN reproduce Keras models (PAPER.md), whose layers default to Glorot-uniform
# kernels and zero biases; matching that keeps the initial loss landscape, and hence the
# tuned learning rates, comparable with the reference code.
_keras_kernel_init = nn.initializers.glorot_uniform()

# The ResNet convolutions feed ReLUs, so He (variance-scaling 2.0, fan-in) initialisation
# keeps activation variance roughly constant through depth; the BatchNorm after every conv
# makes the exact scale less critical. The head keeps flax's default (LeCun normal).
_conv_kernel_init = nn.initializers.he_normal()

# Running statistics follow the spec: new = 0.9 * old + 0.1 * batch.
_BN_MOMENTUM = 0.9
_BN_EPSILON = 1e-5


class FC(nn.Module):
  """Flatten -> Dense(128) -> ReLU -> Dense(num_classes)."""

  num_classes: int = 10

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
    del train  # No train/eval difference (no dropout, no BatchNorm).
    x = x.reshape((x.shape[0], -1))
    x = nn.relu(nn.Dense(128, kernel_init=_keras_kernel_init)(x))
    return nn.Dense(self.num_classes, kernel_init=_keras_kernel_init)(x)


class CNN(nn.Module):
  """The TensorFlow tutorial CNN: three unpadded 3x3 convs, two 2x2 max-pools, two denses."""

  num_classes: int = 10

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
    del train  # No train/eval difference (no dropout, no BatchNorm).

    def conv(features: int) -> nn.Conv:
      # VALID padding is what makes the paper's counts come out (e.g. 28 -> 26 -> 13).
      return nn.Conv(features, (3, 3), padding="VALID", kernel_init=_keras_kernel_init)

    x = nn.relu(conv(32)(x))
    x = nn.max_pool(x, (2, 2), strides=(2, 2))
    x = nn.relu(conv(64)(x))
    x = nn.max_pool(x, (2, 2), strides=(2, 2))
    x = nn.relu(conv(64)(x))
    x = x.reshape((x.shape[0], -1))
    x = nn.relu(nn.Dense(64, kernel_init=_keras_kernel_init)(x))
    return nn.Dense(self.num_classes, kernel_init=_keras_kernel_init)(x)


# Li et al.'s Keras layers use he_normal kernels (variance 2 / fan_in) and zero biases.
_li_kernel_init = nn.initializers.he_normal()


class LiFC(nn.Module):
  """Li et al.'s MNIST FC: Flatten -> Dense(200) -> ReLU -> Dense(200) -> ReLU -> Dense(10).

  D = 784 * 200 + 200 + 200 * 200 + 200 + 200 * 10 + 10 = 199,210.
  """

  num_classes: int = 10
  width: int = 200
  depth: int = 2

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
    del train  # No train/eval difference (no dropout, no BatchNorm).
    x = x.reshape((x.shape[0], -1))
    for _ in range(self.depth):
      x = nn.relu(nn.Dense(self.width, kernel_init=_li_kernel_init)(x))
    return nn.Dense(self.num_classes, kernel_init=_li_kernel_init)(x)


class LiLeNet(nn.Module):
  """Li et al.'s MNIST LeNet: two unpadded 5x5 convs (6, 16) each before a 2x2 max-pool, then
  dense 120 -> 84 -> classes, ReLU throughout.

  On 28x28x1: 28 -> 24 -> 12 -> 8 -> 4, so the flattened features are 4 * 4 * 16 = 256 and
  D = (25 + 1) 6 + (150 + 1) 16 + (256 + 1) 120 + (120 + 1) 84 + (84 + 1) 10 = 44,426.
  """

  num_classes: int = 10

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
    del train  # No train/eval difference (no dropout, no BatchNorm).
    for features in (6, 16):
      x = nn.Conv(features, (5, 5), padding="VALID", kernel_init=_li_kernel_init)(x)
      x = nn.max_pool(nn.relu(x), (2, 2), strides=(2, 2))
    x = x.reshape((x.shape[0], -1))
    for width in (120, 84):
      x = nn.relu(nn.Dense(width, kernel_init=_li_kernel_init)(x))
    return nn.Dense(self.num_classes, kernel_init=_li_kernel_init)(x)


def _conv(features: int, kernel: int, strides: int, name: str) -> nn.Conv:
  # Bias-free because a BatchNorm offset follows every conv; a bias would be redundant and
  # would change D (the conv-bias variant gives 78,186 / 467,946, not the paper's numbers).
  return nn.Conv(
    features,
    (kernel, kernel),
    strides=(strides, strides),
    padding="SAME",
    use_bias=False,
    kernel_init=_conv_kernel_init,
    name=name,
  )


def _batch_norm(train: bool, name: str) -> nn.BatchNorm:
  return nn.BatchNorm(
    use_running_average=not train,
    momentum=_BN_MOMENTUM,
    epsilon=_BN_EPSILON,
    name=name,
  )


class ResidualBlock(nn.Module):
  """Two 3x3 convs with BatchNorm; a 1x1 conv + BN shortcut when ``projection``."""

  features: int
  strides: int = 1
  projection: bool = False

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
    y = _conv(self.features, 3, self.strides, "conv1")(x)
    y = nn.relu(_batch_norm(train, "bn1")(y))
    y = _conv(self.features, 3, 1, "conv2")(y)
    y = _batch_norm(train, "bn2")(y)
    if self.projection:
      shortcut = _conv(self.features, 1, self.strides, "proj_conv")(x)
      shortcut = _batch_norm(train, "proj_bn")(shortcut)
    else:
      shortcut = x
    return nn.relu(y + shortcut)


class ResNet(nn.Module):
  """CIFAR ResNet with 6n + 2 layers (n = ``num_blocks``), as laid out in PAPER.md."""

  num_blocks: int = 1
  num_classes: int = 10

  @nn.compact
  def __call__(self, x: jax.Array, *, train: bool) -> jax.Array:
    if self.num_blocks < 1:
      raise ValueError(f"num_blocks must be >= 1, got {self.num_blocks}")
    x = _conv(16, 3, 1, "stem_conv")(x)
    x = nn.relu(_batch_norm(train, "stem_bn")(x))
    for stage, (features, strides) in enumerate(((16, 1), (32, 2), (64, 2)), start=1):
      for block in range(1, self.num_blocks + 1):
        first = block == 1
        # Even stage 1, whose width already matches the stem, opens with a projection
        # block: the spec's D values include that shortcut's 1x1 conv and BN.
        x = ResidualBlock(
          features,
          strides=strides if first else 1,
          projection=first,
          name=f"stage{stage}_block{block}",
        )(x, train=train)
    x = jnp.mean(x, axis=(1, 2))
    return nn.Dense(self.num_classes, name="head")(x)


def create_model(name: str, *, num_classes: int = 10) -> nn.Module:
  """Builds the model called ``name`` (one of ``KNOWN_MODEL_NAMES``)."""
  if name not in KNOWN_MODEL_NAMES:
    raise ValueError(
      f"Unknown model name={name!r}; expected one of "
      + ", ".join(repr(n) for n in KNOWN_MODEL_NAMES)
      + "."
    )
  if isinstance(num_classes, bool) or not isinstance(num_classes, (int, np.integer)):
    raise ValueError(f"num_classes must be a positive int, got {num_classes!r}")
  if num_classes <= 0:
    raise ValueError(f"num_classes must be a positive int, got {num_classes!r}")
  num_classes = int(num_classes)
  if name == "fc":
    return FC(num_classes=num_classes)
  if name == "cnn":
    return CNN(num_classes=num_classes)
  if name == "li_fc":
    return LiFC(num_classes=num_classes)
  if name == "li_lenet":
    return LiLeNet(num_classes=num_classes)
  return ResNet(num_blocks=_RESNET_BLOCKS[name], num_classes=num_classes)


def count_params(params: Any) -> int:
  """Total number of scalars in a pytree of arrays (e.g. ``variables["params"]``)."""
  return int(sum(np.size(leaf) for leaf in jax.tree_util.tree_leaves(params)))


def init_variables(
  model: nn.Module, *, key: jax.Array, input_shape: tuple[int, ...]
) -> dict[str, Any]:
  """Initialises ``model`` for single images of shape ``input_shape`` (H, W, C).

  Returns the flax variables dict: ``{"params", "batch_stats"}`` for the ResNets,
  ``{"params"}`` for FC and CNN. Shapes do not depend on the batch size, so a batch of one
  is enough.
  """
  dummy = jnp.zeros((1, *tuple(input_shape)), jnp.float32)
  variables = model.init(key, dummy, train=False)
  return dict(variables)
