"""Feature extractors: images -> the features the generative metrics compare.

The metrics take any :class:`FeatureExtractor`; two are provided (:func:`make_extractor`):

* ``"inception"``: the FID Inception-v3 of the ADM suite (``evaluation/inception.py``), from
  pytorch-fid's weight file, which must be on disk (nothing is downloaded). Its numbers are
  comparable with published ones.
* ``"fashion_mnist"``: a small classifier trained here on Fashion-MNIST whose weights ship with
  the package (``evaluation/fashion_mnist_net.py``), for offline FID-style numbers on 28x28
  grey images. Its numbers are comparable only with each other, never with Inception's: every
  report names the extractor.

Images are uint8 [N, H, W, C] in 0..255, or float in [-1, 1] (the models' range), which are
quantised as samples are saved (``images.to_uint8``), so that float samples and their npz file
give the same features.
"""

import dataclasses
import pathlib
from typing import Callable, Protocol

import jax
import jax.numpy as jnp
import numpy as np

from diffseg_jax import images as image_io

EXTRACTORS = ("fashion_mnist", "inception")


@dataclasses.dataclass(frozen=True)
class Features:
  """What an extractor computes for N images.

  Attributes:
    pool: float32 [N, D], the global features (FID, precision, recall).
    spatial: float32 [N, S], flattened spatial features (sFID), or None.
    logits: float32 [N, C], class logits (Inception Score), or None.
  """
  pool: np.ndarray
  spatial: np.ndarray | None = None
  logits: np.ndarray | None = None


class FeatureExtractor(Protocol):
  """``extractor(images) -> Features``; ``name`` identifies it in reports and statistics."""
  name: str

  def __call__(self, images: np.ndarray) -> Features:
    ...


def as_uint8_images(images: np.ndarray) -> np.ndarray:
  """Checks images and returns them as uint8 [N, H, W, C] in 0..255.

  Raises:
    ValueError: not 4-D; an integer dtype other than uint8; float values outside [-1, 1] or
      not finite.
  """
  images = np.asarray(images)
  if images.ndim != 4:
    raise ValueError(f"Expected images [N, H, W, C], got shape {images.shape}.")
  if images.dtype == np.uint8:
    return images
  if not np.issubdtype(images.dtype, np.floating):
    raise ValueError(f"Expected uint8 images in 0..255 or float images in [-1, 1], got dtype "
                     f"{images.dtype}: cast 0..255 integers with .astype(np.uint8).")
  if images.size and not np.all(np.isfinite(images)):
    raise ValueError("The float images contain NaN or infinite values.")
  low, high = (float(images.min()), float(images.max())) if images.size else (0.0, 0.0)
  if low < -1.0 or high > 1.0:
    hint = (" They look like 0..255 pixels: pass them as uint8." if high > 1.0 and low >= 0
            else "")
    raise ValueError(f"Expected uint8 images in 0..255 or float images in [-1, 1], got float "
                     f"values in [{low:g}, {high:g}].{hint}")
  return image_io.to_uint8(images)


class BatchedExtractor:
  """A jitted ``apply_fn(uint8 [B, H, W, C]) -> {"pool", "spatial"?, "logits"?}`` run over
  batches of ``batch_size`` (the last one zero-padded, so it compiles once per image shape).

  ``check_shape(images)`` raises a ValueError for images the network cannot take.
  """

  def __init__(self, name: str, apply_fn: Callable[[jax.Array], dict[str, jax.Array]],
               batch_size: int, check_shape: Callable[[np.ndarray], None]):
    self.name, self.batch_size = name, batch_size
    self._apply = jax.jit(apply_fn)
    self._check_shape = check_shape

  def __call__(self, images: np.ndarray) -> Features:
    images = as_uint8_images(images)
    self._check_shape(images)
    n, b = len(images), self.batch_size
    outputs = []
    for start in range(0, n, b):
      batch = images[start:start + b]
      padded = np.concatenate([batch, np.zeros((b - len(batch), *batch.shape[1:]), np.uint8)])
      outputs.append({k: np.asarray(v)[:len(batch)]
                      for k, v in jax.device_get(self._apply(jnp.asarray(padded))).items()})
    if not outputs:
      raise ValueError(f"{self.name}: no images to compute features of.")
    joined = {k: np.concatenate([o[k] for o in outputs]) for k in outputs[0]}
    return Features(joined["pool"], joined.get("spatial"), joined.get("logits"))


def _check_inception_shape(images: np.ndarray) -> None:
  if images.shape[-1] not in (1, 3):
    raise ValueError(f"Inception takes grey (1-channel) or RGB images, got {images.shape[-1]} "
                     "channels.")


def inception_extractor(weights: str | pathlib.Path, batch_size: int = 64) -> BatchedExtractor:
  """The ADM suite's FID Inception, from pytorch-fid's ``pt_inception-2015-12-05-6726825d.pth``
  (or a ``.safetensors``/``.npz`` copy of it) at ``weights``."""
  # pylint: disable=g-import-not-at-top
  from diffseg_jax.convert.pytorch_fid import from_pytorch_fid
  from diffseg_jax.evaluation import inception

  if not weights:
    raise ValueError(
        "The Inception feature extractor needs pytorch-fid's weight file: set "
        "evaluate.inception_weights to the path of pt_inception-2015-12-05-6726825d.pth "
        "(nothing is downloaded), or use evaluate.features='fashion_mnist' offline.")
  variables = from_pytorch_fid(weights)
  network = inception.InceptionV3()
  return BatchedExtractor(
      "inception_fid", lambda x: network.apply(variables, inception.preprocess(x)), batch_size,
      _check_inception_shape)


def fashion_mnist_extractor(batch_size: int = 256) -> BatchedExtractor:
  """The Fashion-MNIST classifier whose weights ship with the package (28x28x1 images)."""
  from diffseg_jax.evaluation import fashion_mnist_net  # pylint: disable=g-import-not-at-top

  network, variables = fashion_mnist_net.FashionMnistNet(), fashion_mnist_net.load_variables()

  def check_shape(images: np.ndarray) -> None:
    if images.shape[1:] != fashion_mnist_net.IMAGE_SHAPE:
      raise ValueError(
          f"The fashion_mnist feature net takes {fashion_mnist_net.IMAGE_SHAPE} images (H, W, "
          f"C), got {images.shape[1:]}; use evaluate.features='inception' for other data.")

  return BatchedExtractor(fashion_mnist_net.NAME,
                          lambda x: network.apply(variables, fashion_mnist_net.preprocess(x)),
                          batch_size, check_shape)


def make_extractor(name: str, inception_weights: str = "",
                   batch_size: int = 64) -> BatchedExtractor:
  """The extractor called ``name`` (one of :data:`EXTRACTORS`)."""
  if name == "inception":
    return inception_extractor(inception_weights, batch_size)
  if name == "fashion_mnist":
    return fashion_mnist_extractor(batch_size)
  raise ValueError(f"Unknown feature extractor {name!r}; valid: {', '.join(EXTRACTORS)}.")
