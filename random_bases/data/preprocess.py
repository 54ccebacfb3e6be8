"""Device-side batch preprocessing and augmentation, in jittable JAX.

PAPER.md, "Data and training": pixels are scaled to [0, 1]. Each training
mini-batch is augmented: (F)MNIST is padded to 34x34 (3 px per side), randomly
cropped back to 28x28 and given a random brightness shift with max delta 0.5,
without clipping; CIFAR-10 is padded to 40x40, randomly cropped to 32x32 and
randomly flipped left-right. CIFAR-10 images of every split are then
standardised per image. `dataset` must be a static Python str, so the trainer
can fuse all of it into its compiled step.

`parts` names the augmentations applied (``AUGMENTATIONS``, an ablation; None:
all of the dataset's, the paper's). Every part's randomness is drawn whatever
`parts` says and a left-out part is applied as its identity (a centred crop, no
brightness shift, no flip), so a batch's other parts do not change with it.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from random_bases.checks import check_choice
from random_bases.data.sources import DATASET_NAMES

# Padding per side for the random crop (PAPER.md: 28 -> 34 for (F)MNIST,
# 32 -> 40 for CIFAR-10).
_CROP_PAD = {"mnist": 3, "fashion_mnist": 3, "cifar10": 4}
# Max brightness delta for (F)MNIST (PAPER.md: "random brightness with max
# delta 0.5").
_MAX_BRIGHTNESS_DELTA = 0.5
# The parts of each dataset's augmentation, in the order they are applied.
AUGMENTATIONS = {
  "mnist": ("crop", "brightness"),
  "fashion_mnist": ("crop", "brightness"),
  "cifar10": ("crop", "flip"),
}


def check_parts(name: str, parts, dataset: str) -> tuple[str, ...]:
  """``parts`` (None or a sequence from ``AUGMENTATIONS[dataset]``) as a tuple, else ValueError."""
  check_choice("dataset", dataset, DATASET_NAMES)
  allowed = AUGMENTATIONS[dataset]
  if parts is None:
    return allowed
  unknown = [p for p in parts if p not in allowed]
  if unknown or len(set(parts)) != len(parts):
    raise ValueError(
      f"{name}={list(parts)!r}: each part at most once, from {list(allowed)} for {dataset}"
    )
  return tuple(parts)


def to_unit_float(images: jax.Array) -> jax.Array:
  """uint8 [0, 255] -> float32 [0, 1]; float input is taken as in [0, 1].

  This matches tf.image.convert_image_dtype, which the reference pipeline used.
  """
  images = jnp.asarray(images)
  if jnp.issubdtype(images.dtype, jnp.integer):
    return images.astype(jnp.float32) / 255.0
  return images.astype(jnp.float32)


def per_image_standardization(images: jax.Array) -> jax.Array:
  """(x - mean) / max(std, 1/sqrt(#elements)) per image.

  Same as tf.image.per_image_standardization, which the reference pipeline
  used.
  """
  num_elements = images.shape[1] * images.shape[2] * images.shape[3]
  mean = jnp.mean(images, axis=(1, 2, 3), keepdims=True)
  std = jnp.std(images, axis=(1, 2, 3), keepdims=True)
  # The floor keeps constant images finite (std 0) exactly as TF does.
  return (images - mean) / jnp.maximum(std, 1.0 / np.sqrt(num_elements))


def augment_crop_offsets(key: jax.Array, batch: int, *, max_offset: int) -> jax.Array:
  """Per-image (row, column) crop offsets, int32 [batch, 2], in [0, max]."""
  return jax.random.randint(key, (batch, 2), 0, max_offset + 1, dtype=jnp.int32)


def pad_and_crop(images: jax.Array, offsets: jax.Array, *, pad: int) -> jax.Array:
  """Zero-pads each side by `pad`, then crops back at per-image offsets."""
  _, h, w, c = images.shape
  padded = jnp.pad(images, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
  # dynamic_slice under vmap: one offset per image, static output size.
  crop = lambda img, off: jax.lax.dynamic_slice(img, (off[0], off[1], 0), (h, w, c))
  return jax.vmap(crop)(padded, offsets)


def sample_augmentation(key: jax.Array, batch: int, *, dataset: str) -> dict[str, jax.Array]:
  """Draws the random augmentation parameters of one training batch.

  Args:
    key: the batch's PRNG key.
    batch: the number of images.
    dataset: one of DATASET_NAMES.

  Returns:
    "offsets" (int32 [batch, 2]) and, for (F)MNIST, "brightness" (float32
    [batch], in [-0.5, 0.5)) or, for CIFAR-10, "flip" (bool [batch]).
  """
  check_choice("dataset", dataset, DATASET_NAMES)
  crop_key, other_key = jax.random.split(key)
  params = {"offsets": augment_crop_offsets(crop_key, batch, max_offset=2 * _CROP_PAD[dataset])}
  if dataset == "cifar10":
    params["flip"] = jax.random.bernoulli(other_key, 0.5, (batch,))
  else:
    params["brightness"] = jax.random.uniform(
      other_key, (batch,), jnp.float32, -_MAX_BRIGHTNESS_DELTA, _MAX_BRIGHTNESS_DELTA
    )
  return params


def apply_augmentation(
  images: jax.Array, params: dict[str, jax.Array], *, dataset: str, parts=None
) -> jax.Array:
  """Applies `sample_augmentation`'s parameters (of `parts` only) and the normalisation."""
  parts = check_parts("parts", parts, dataset)
  if "crop" not in parts:
    params = dict(params, offsets=jnp.full_like(params["offsets"], _CROP_PAD[dataset]))
  if "flip" in params and "flip" not in parts:
    params = dict(params, flip=jnp.zeros_like(params["flip"]))
  if "brightness" in params and "brightness" not in parts:
    params = dict(params, brightness=jnp.zeros_like(params["brightness"]))
  x = pad_and_crop(to_unit_float(images), params["offsets"], pad=_CROP_PAD[dataset])
  if dataset == "cifar10":
    x = jnp.where(params["flip"][:, None, None, None], x[:, :, ::-1, :], x)
    return per_image_standardization(x)
  # No clipping after the brightness shift (PAPER.md): values in [-0.5, 1.5].
  return x + params["brightness"][:, None, None, None]


def preprocess_train_batch(
  key: jax.Array, images: jax.Array, *, dataset: str, parts=None
) -> jax.Array:
  """Training preprocessing, deterministic given `key`.

  (F)MNIST: pad 3, random 28x28 crop, brightness delta ~ U[-0.5, 0.5] per
  image, no clip. CIFAR-10: pad 4, random 32x32 crop, random left-right flip,
  per-image standardisation.

  Args:
    key: the batch's PRNG key.
    images: [B, H, W, C] uint8, or float in [0, 1].
    dataset: one of DATASET_NAMES (static).
    parts: the augmentations applied, from ``AUGMENTATIONS[dataset]``; None:
      all of them.

  Returns:
    float32 [B, H, W, C].
  """
  params = sample_augmentation(key, images.shape[0], dataset=dataset)
  return apply_augmentation(images, params, dataset=dataset, parts=parts)


def preprocess_eval_batch(images: jax.Array, *, dataset: str) -> jax.Array:
  """Evaluation preprocessing: scale to [0, 1]; CIFAR-10 is also standardised.

  Args:
    images: [B, H, W, C] uint8, or float in [0, 1].
    dataset: one of DATASET_NAMES (static).

  Returns:
    float32 [B, H, W, C].
  """
  check_choice("dataset", dataset, DATASET_NAMES)
  x = to_unit_float(images)
  if dataset == "cifar10":
    x = per_image_standardization(x)
  return x
