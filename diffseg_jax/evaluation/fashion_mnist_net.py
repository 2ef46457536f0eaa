"""A small Fashion-MNIST classifier: the offline feature extractor for FID-style numbers.

Inception weights cannot be fetched on a machine without internet, so FID, sFID, IS and
precision/recall of Fashion-MNIST models are also computed with this network, whose weights ship
with the package (``fashion_mnist_net.npz``, 0.56 MB; 89.5% test accuracy). It was trained by
``python -m diffseg_jax.evaluation.train_fashion_mnist_net`` (deterministic for a seed; see that
module for the command, the settings and the test accuracy, which the npz records too).

Features, for uint8 [N, 28, 28, 1] images:

* ``pool``: float32 [N, 128], the global average of the last convolution's ReLU output (the
  classifier's input, as Inception's pool_3);
* ``spatial``: float32 [N, 7 * 7 * 7], the first 7 channels of that 7x7 map flattened in NHWC
  order (as ADM's sFID features);
* ``logits``: float32 [N, 10], the class logits.
"""

import pathlib

import flax.linen as nn
import flax.traverse_util
import jax
import jax.numpy as jnp
import numpy as np

from diffseg_jax import files

NAME = "fashion_mnist_cnn_v1"  # reports and statistics name the extractor by this
IMAGE_SHAPE = (28, 28, 1)
NUM_CLASSES = 10
SPATIAL_CHANNELS = 7
WEIGHTS = pathlib.Path(__file__).with_name("fashion_mnist_net.npz")
_PARAM_PREFIX = "params/"


class FashionMnistNet(nn.Module):
  """Five 3x3 ReLU convolutions (32, 32 / stride 2, 64, 64 / stride 2, 128), the global
  average pool, a linear classifier.

  Takes float32 [N, 28, 28, 1] in [-1, 1] (:func:`preprocess`); returns
  ``{"pool": [N, 128], "spatial": [N, 343], "logits": [N, 10]}``.
  """

  @nn.compact
  def __call__(self, x: jax.Array) -> dict[str, jax.Array]:
    for features, stride in ((32, 1), (32, 2), (64, 1), (64, 2), (128, 1)):
      x = nn.relu(nn.Conv(features, (3, 3), strides=(stride, stride))(x))
    pool = jnp.mean(x, axis=(1, 2))
    spatial = x[..., :SPATIAL_CHANNELS].reshape(x.shape[0], -1)
    return {"pool": pool, "spatial": spatial, "logits": nn.Dense(NUM_CLASSES)(pool)}


def preprocess(images: jax.Array) -> jax.Array:
  """uint8 [N, 28, 28, 1] -> float32 in [-1, 1]."""
  return images.astype(jnp.float32) / 127.5 - 1.0


def save_variables(path: str | pathlib.Path, params, test_accuracy: float) -> None:
  """Writes ``params`` (flattened ``params/<module>/<leaf>`` keys) and the test accuracy."""
  flat = flax.traverse_util.flatten_dict(jax.device_get(params), sep="/")
  arrays = {_PARAM_PREFIX + k: np.asarray(v, np.float32) for k, v in flat.items()}
  files.write_npz(path, test_accuracy=np.float32(test_accuracy), **arrays)


def load_variables(path: str | pathlib.Path = WEIGHTS) -> dict:
  """``{"params": ...}`` of the network at ``path`` (default: the packaged weights)."""
  path = pathlib.Path(path)
  if not path.is_file():
    raise FileNotFoundError(
        f"{path} is missing: reinstall the package, or train the weights with "
        "`python -m diffseg_jax.evaluation.train_fashion_mnist_net`.")
  with np.load(path, allow_pickle=False) as npz:
    flat = {k[len(_PARAM_PREFIX):]: jnp.asarray(npz[k]) for k in npz.files
            if k.startswith(_PARAM_PREFIX)}
  return {"params": flax.traverse_util.unflatten_dict(flat, sep="/")}


def recorded_test_accuracy(path: str | pathlib.Path = WEIGHTS) -> float:
  """The Fashion-MNIST test accuracy recorded with the weights at ``path``."""
  with np.load(path, allow_pickle=False) as npz:
    return float(npz["test_accuracy"])
