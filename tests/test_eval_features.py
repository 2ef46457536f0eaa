"""Feature extractors: their inputs and the packaged Fashion-MNIST net."""

import numpy as np
import pytest

from diffseg_jax.evaluation import fashion_mnist_net
from diffseg_jax.evaluation import features


def test_uint8_and_float_images_are_accepted():
  rng = np.random.default_rng(0)
  uint8 = rng.integers(0, 256, (2, 4, 4, 1), dtype=np.uint8)
  assert features.as_uint8_images(uint8) is uint8
  floats = rng.uniform(-1, 1, (2, 4, 4, 1)).astype(np.float32)
  expected = np.clip((floats + 1) * 127.5, 0, 255).astype(np.uint8)
  np.testing.assert_array_equal(features.as_uint8_images(floats), expected)


@pytest.mark.parametrize("images, message", [
    (np.full((1, 4, 4, 1), 200.0, np.float32), r"float values in \[200, 200\].*as uint8"),
    (np.full((1, 4, 4, 1), -1.5, np.float32), r"float images in \[-1, 1\]"),
    (np.zeros((1, 4, 4, 1), np.int64), "dtype int64.*astype\\(np.uint8\\)"),
    (np.zeros((4, 4, 1), np.uint8), r"\[N, H, W, C\]"),
    (np.full((1, 4, 4, 1), np.nan, np.float32), "NaN"),
])
def test_bad_images_are_refused(images, message):
  with pytest.raises(ValueError, match=message):
    features.as_uint8_images(images)


@pytest.fixture(scope="module")
def fashion_mnist_extractor():
  return features.fashion_mnist_extractor(batch_size=16)


def test_packaged_fashion_mnist_net_loads_and_records_its_accuracy():
  variables = fashion_mnist_net.load_variables()
  assert set(variables["params"]) == {f"Conv_{i}" for i in range(5)} | {"Dense_0"}
  assert fashion_mnist_net.recorded_test_accuracy() > 0.85


def test_fashion_mnist_extractor_is_deterministic(fashion_mnist_extractor):
  images = np.random.default_rng(1).integers(0, 256, (21, 28, 28, 1), dtype=np.uint8)
  first, second = fashion_mnist_extractor(images), fashion_mnist_extractor(images)
  assert first.pool.shape == (21, 128) and first.spatial.shape == (21, 343)
  assert first.logits.shape == (21, 10)
  for a, b in ((first.pool, second.pool), (first.spatial, second.spatial),
               (first.logits, second.logits)):
    np.testing.assert_array_equal(a, b)
  # Batching (21 = 16 + a padded 5) does not change an image's features.
  alone = fashion_mnist_extractor(images[20:])
  np.testing.assert_allclose(alone.pool, first.pool[20:], rtol=1e-5, atol=1e-6)


def test_fashion_mnist_extractor_refuses_other_shapes(fashion_mnist_extractor):
  with pytest.raises(ValueError, match="takes \\(28, 28, 1\\) images.*inception"):
    fashion_mnist_extractor(np.zeros((2, 32, 32, 3), np.uint8))


def test_unknown_extractor_and_missing_inception_weights():
  with pytest.raises(ValueError, match="valid: fashion_mnist, inception"):
    features.make_extractor("vgg")
  with pytest.raises(ValueError, match="pt_inception-2015-12-05-6726825d.pth"):
    features.make_extractor("inception", inception_weights="")
