"""random_bases.data.preprocess against independent NumPy/TensorFlow references.

PAPER.md, "Data and training": (F)MNIST pad 3, random 28x28 crop, brightness
delta in [-0.5, 0.5] without clipping; CIFAR-10 pad 4, random 32x32 crop,
random flip, per-image standardisation.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from random_bases.data import preprocess


def test_unknown_dataset_lists_the_allowed_values():
  with pytest.raises(ValueError, match="dataset='svhn'.*'mnist', 'fashion_mnist', 'cifar10'"):
    preprocess.preprocess_eval_batch(jnp.zeros((1, 28, 28, 1)), dataset="svhn")
  with pytest.raises(ValueError, match="dataset='svhn'"):
    preprocess.preprocess_train_batch(jax.random.key(0), jnp.zeros((1, 28, 28, 1)), dataset="svhn")


def _np_standardize(x):
  mean = x.mean(axis=(1, 2, 3), keepdims=True)
  std = x.std(axis=(1, 2, 3), keepdims=True)
  return (x - mean) / np.maximum(std, 1.0 / np.sqrt(x[0].size))


def _np_augment(images, params, dataset):
  """Independent NumPy version of the augmentation, given the drawn parameters."""
  pad = 4 if dataset == "cifar10" else 3
  x = images.astype(np.float32) / 255.0
  n, h, w, _ = x.shape
  padded = np.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
  offsets = np.asarray(params["offsets"])
  out = np.stack([padded[i, oy : oy + h, ox : ox + w] for i, (oy, ox) in enumerate(offsets)])
  if dataset == "cifar10":
    flip = np.asarray(params["flip"])
    out = np.where(flip[:, None, None, None], out[:, :, ::-1], out)
    return _np_standardize(out)
  return out + np.asarray(params["brightness"])[:, None, None, None]


@pytest.mark.parametrize(
  "dataset,shape",
  [("mnist", (28, 28, 1)), ("fashion_mnist", (28, 28, 1)), ("cifar10", (32, 32, 3))],
)
def test_train_preprocessing_matches_reference(dataset, shape):
  images = np.random.default_rng(0).integers(0, 256, (16, *shape), dtype=np.uint8)
  key = jax.random.key(3)
  out = preprocess.preprocess_train_batch(key, images, dataset=dataset)
  assert out.shape == (16, *shape) and out.dtype == jnp.float32
  params = preprocess.sample_augmentation(key, 16, dataset=dataset)
  np.testing.assert_allclose(out, _np_augment(images, params, dataset), atol=2e-5)
  jitted = jax.jit(preprocess.preprocess_train_batch, static_argnames="dataset")
  np.testing.assert_allclose(jitted(key, images, dataset=dataset), out, atol=1e-5)
  # Float input in [0, 1] is treated like the equivalent uint8 input.
  as_float = preprocess.preprocess_train_batch(
    key, images.astype(np.float32) / 255.0, dataset=dataset
  )
  np.testing.assert_allclose(as_float, out, atol=1e-5)


@pytest.mark.parametrize(
  "dataset,parts,identity",
  [
    ("mnist", ("crop",), {"brightness": 0.0}),
    ("mnist", ("brightness",), {"offsets": 3}),
    ("fashion_mnist", (), {"brightness": 0.0, "offsets": 3}),
    ("cifar10", ("crop",), {"flip": False}),
    ("cifar10", ("flip",), {"offsets": 4}),
  ],
)
def test_a_left_out_part_is_its_identity_and_the_rest_unchanged(dataset, parts, identity):
  shape = (32, 32, 3) if dataset == "cifar10" else (28, 28, 1)
  images = np.random.default_rng(5).integers(0, 256, (64, *shape), dtype=np.uint8)
  key = jax.random.key(9)
  out = preprocess.preprocess_train_batch(key, images, dataset=dataset, parts=parts)
  params = preprocess.sample_augmentation(key, 64, dataset=dataset)
  # The drawn parameters of the kept parts, the identity (centred crop, no shift, no
  # flip) for the others.
  expected = {
    k: np.full_like(np.asarray(v), identity.get(k)) if k in identity else v
    for k, v in params.items()
  }
  np.testing.assert_allclose(out, _np_augment(images, expected, dataset), atol=2e-5)
  everything = preprocess.preprocess_train_batch(key, images, dataset=dataset, parts=None)
  np.testing.assert_array_equal(
    everything,
    preprocess.preprocess_train_batch(
      key, images, dataset=dataset, parts=preprocess.AUGMENTATIONS[dataset]
    ),
  )
  assert not np.allclose(out, everything)


def test_parts_outside_the_dataset_s_augmentation_are_refused():
  with pytest.raises(ValueError, match=r"parts=\['flip'\].*\['crop', 'brightness'\] for mnist"):
    preprocess.check_parts("parts", ["flip"], "mnist")
  with pytest.raises(ValueError, match="at most once"):
    preprocess.check_parts("parts", ["crop", "crop"], "cifar10")
  assert preprocess.check_parts("parts", None, "cifar10") == ("crop", "flip")


def test_augmentation_parameters_ranges():
  key = jax.random.key(0)
  mnist = preprocess.sample_augmentation(key, 4000, dataset="mnist")
  offsets = np.asarray(mnist["offsets"])
  assert offsets.dtype == np.int32 and offsets.min() == 0 and offsets.max() == 6
  assert set(np.unique(offsets)) == set(range(7))  # every offset in [0, 2*pad] is used
  delta = np.asarray(mnist["brightness"])
  assert delta.min() >= -0.5 and delta.max() <= 0.5
  assert delta.min() < -0.45 and delta.max() > 0.45 and abs(delta.mean()) < 0.03
  cifar = preprocess.sample_augmentation(key, 4000, dataset="cifar10")
  assert set(np.unique(np.asarray(cifar["offsets"]))) == set(range(9))
  assert 0.45 < np.asarray(cifar["flip"]).mean() < 0.55
  crop = np.asarray(preprocess.augment_crop_offsets(key, 1000, max_offset=2))
  assert crop.shape == (1000, 2) and set(np.unique(crop)) == {0, 1, 2}


def test_mnist_augmentation_from_outputs_alone():
  # One lit pixel at (14, 14): after padding by 3 it sits at (17, 17), so a crop at offset
  # (oy, ox) moves it to (17 - oy, 17 - ox). Black pixels show the brightness delta.
  images = np.zeros((512, 28, 28, 1), np.uint8)
  images[:, 14, 14, 0] = 255
  out = np.asarray(preprocess.preprocess_train_batch(jax.random.key(7), images, dataset="mnist"))
  delta = out[:, 0, 0, 0]
  # Every black pixel shifts by the same per-image delta; no clipping, so the lit pixel is
  # 1 + delta even above 1.
  np.testing.assert_allclose(
    np.sort(out.reshape(512, -1), axis=1)[:, :-1],
    delta[:, None] + np.zeros((1, 28 * 28 - 1)),
    atol=1e-6,
  )
  assert delta.min() >= -0.5 and delta.max() <= 0.5 and out.max() > 1.0 and out.min() < 0.0
  flat_pos = out.reshape(512, -1).argmax(axis=1)
  offsets = np.stack([17 - flat_pos // 28, 17 - flat_pos % 28], axis=1)
  assert offsets.min() == 0 and offsets.max() == 6
  np.testing.assert_allclose(out.max(axis=(1, 2, 3)), 1.0 + delta, atol=1e-6)


def test_cifar_flips_and_standardization():
  rng = np.random.default_rng(1)
  images = rng.integers(0, 256, (256, 32, 32, 3), dtype=np.uint8)
  key = jax.random.key(11)
  out = np.asarray(preprocess.preprocess_train_batch(key, images, dataset="cifar10"))
  np.testing.assert_allclose(out.mean(axis=(1, 2, 3)), 0.0, atol=1e-4)
  np.testing.assert_allclose(out.std(axis=(1, 2, 3)), 1.0, atol=1e-3)
  # Decide from the outputs which images were flipped: about half should be.
  params = preprocess.sample_augmentation(key, 256, dataset="cifar10")
  unflipped = _np_augment(images, {**params, "flip": np.zeros(256, bool)}, "cifar10")
  flipped = _np_augment(images, {**params, "flip": np.ones(256, bool)}, "cifar10")
  is_unflipped = np.all(np.abs(out - unflipped) < 1e-4, axis=(1, 2, 3))
  is_flipped = np.all(np.abs(out - flipped) < 1e-4, axis=(1, 2, 3))
  assert np.all(is_flipped ^ is_unflipped)
  assert 0.35 < is_flipped.mean() < 0.65
  # Constant images stay finite (std is floored as in tf.image.per_image_standardization).
  const = preprocess.preprocess_eval_batch(np.full((2, 32, 32, 3), 7, np.uint8), dataset="cifar10")
  np.testing.assert_allclose(const, 0.0, atol=1e-6)


def test_standardization_matches_tensorflow():
  import tensorflow as tf

  x = np.random.default_rng(2).random((4, 32, 32, 3), dtype=np.float32)
  x[0] = 0.25  # constant image: exercises the std floor
  expected = tf.image.per_image_standardization(x).numpy()
  np.testing.assert_allclose(
    preprocess.per_image_standardization(jnp.asarray(x)), expected, atol=1e-5
  )


def test_determinism_per_key():
  images = np.random.default_rng(4).integers(0, 256, (32, 32, 32, 3), dtype=np.uint8)
  for dataset, imgs in (("mnist", images[..., :1][:, :28, :28]), ("cifar10", images)):
    a = preprocess.preprocess_train_batch(jax.random.key(5), imgs, dataset=dataset)
    b = preprocess.preprocess_train_batch(jax.random.key(5), imgs, dataset=dataset)
    c = preprocess.preprocess_train_batch(jax.random.key(6), imgs, dataset=dataset)
    np.testing.assert_array_equal(a, b)
    assert not np.allclose(a, c)


def test_eval_preprocessing_is_deterministic():
  images = np.random.default_rng(5).integers(0, 256, (8, 28, 28, 1), dtype=np.uint8)
  out = np.asarray(preprocess.preprocess_eval_batch(images, dataset="mnist"))
  assert out.dtype == np.float32 and out.min() >= 0.0 and out.max() <= 1.0
  np.testing.assert_allclose(out, images.astype(np.float32) / 255.0, rtol=1e-6)
  np.testing.assert_array_equal(
    preprocess.preprocess_eval_batch(images, dataset="fashion_mnist"), out
  )
  cifar = np.random.default_rng(6).integers(0, 256, (8, 32, 32, 3), dtype=np.uint8)
  a = np.asarray(preprocess.preprocess_eval_batch(cifar, dataset="cifar10"))
  jitted = jax.jit(preprocess.preprocess_eval_batch, static_argnames="dataset")
  b = np.asarray(jitted(cifar, dataset="cifar10"))
  np.testing.assert_allclose(a, b, atol=1e-6)
  np.testing.assert_allclose(a, _np_standardize(cifar.astype(np.float32) / 255.0), atol=1e-5)
