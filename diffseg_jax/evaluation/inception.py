"""Inception-v3 as the FID, sFID, IS and precision/recall of the ADM suite define it.

The network is the 2015-12-05 TensorFlow graph (``classify_image_graph_def.pb``) that
guided-diffusion's ``evaluations/evaluator.py`` runs, in the form pytorch-fid ports it
(``FIDInceptionA/C/E_1/E_2`` on torchvision's ``Inception3``), so that pytorch-fid's weight file
``pt_inception-2015-12-05-6726825d.pth`` loads into it (``diffseg_jax.convert.pytorch_fid``):

* 1008 output classes;
* the average pools of the A, C and E blocks do not count the zero padding (TensorFlow's
  ``AvgPool``), and the last E block (``Mixed_7c``) pools its fourth branch with a max pool;
* every convolution is ``conv (no bias) -> BatchNorm (eps 1e-3) -> ReLU`` (``BasicConv2d``).

Submodules carry torchvision's names (``Conv2d_1a_3x3``, ``Mixed_5b``, ..., ``fc``; inside a
block ``branch1x1``, ``branch5x5_1``, ...; inside a convolution ``conv`` and ``bn``), so that a
flax path maps to a torch key by joining with dots.

Outputs (:meth:`InceptionV3.__call__`), for images preprocessed by :func:`preprocess`:

* ``pool``: float32 [N, 2048], the final average pool, TF's ``pool_3:0`` (FID, precision and
  recall);
* ``spatial``: float32 [N, 17 * 17 * 7], TF's ``mixed_6/conv:0`` -- the ReLU output of the
  first (1x1) branch of ``Mixed_6d`` (TF's ``mixed_6``; ``mixed`` is ``Mixed_5b``) -- cut to its
  first 7 channels and flattened in NHWC order, as the ADM evaluator does for sFID;
* ``logits``: float32 [N, 1008], ``pool @ fc.weight.T`` without ``fc.bias``: ADM's Inception
  Score takes the softmax of the graph's ``softmax/logits/MatMul`` alone (set
  ``logits_bias=True`` for the classifier's full logits, as pytorch-fid/torchvision compute
  them).

Preprocessing follows the TF graph rather than pytorch-fid: the graph feeds float 0..255 pixels
through ``ResizeBilinear`` to 299x299 (TF1 semantics: ``align_corners=False`` *without* half-pixel
centres) and then ``(x - 128) / 128``; pytorch-fid resizes with half-pixel centres and scales by
``2 * x / 255 - 1``. :func:`resize_bilinear_tf1` reproduces the graph's resize exactly;
``jax.image.resize(..., "bilinear")`` would not: it samples at half-pixel centres and, when
shrinking, antialiases. Measured on pixels 0..255, resizing to 299x299: Fashion-MNIST 28x28
images differ by 12.4 on average and up to 168 (at edges, shifted by a fraction of a source
pixel); uniform noise at 64x64 by 32.8 (up to 147); at 512x512 (shrinking) by 27.7 (up to 149).
"""

from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

INPUT_SIZE = 299  # the graph resizes every image to 299x299
NUM_CLASSES = 1008
POOL_DIM = 2048
SPATIAL_CHANNELS = 7  # ADM keeps the first 7 channels of mixed_6/conv
SPATIAL_DIM = 17 * 17 * SPATIAL_CHANNELS


def _pairs(value: int | Sequence[int]) -> tuple[int, int]:
  return (value, value) if isinstance(value, int) else tuple(value)


class BasicConv2d(nn.Module):
  """``conv (no bias) -> BatchNorm(eps=1e-3, running statistics) -> ReLU`` on NHWC input."""
  features: int
  kernel_size: int | tuple[int, int]
  stride: int = 1
  padding: int | tuple[int, int] = 0

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    ph, pw = _pairs(self.padding)
    x = nn.Conv(self.features, _pairs(self.kernel_size), strides=_pairs(self.stride),
                padding=((ph, ph), (pw, pw)), use_bias=False, name="conv")(x)
    x = nn.BatchNorm(use_running_average=True, epsilon=1e-3, name="bn")(x)
    return nn.relu(x)


def _avg_pool_3x3(x: jax.Array) -> jax.Array:
  """3x3, stride 1, padding 1, averaging only the pixels inside the image (TF's AvgPool)."""
  return nn.avg_pool(x, (3, 3), strides=(1, 1), padding=((1, 1), (1, 1)),
                     count_include_pad=False)


def _max_pool_3x3_stride2(x: jax.Array) -> jax.Array:
  return nn.max_pool(x, (3, 3), strides=(2, 2))


class InceptionA(nn.Module):
  """``Mixed_5b/c/d`` (FIDInceptionA): 1x1, 5x5, double 3x3 and average-pool branches."""
  pool_features: int

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    b1 = BasicConv2d(64, 1, name="branch1x1")(x)
    b5 = BasicConv2d(48, 1, name="branch5x5_1")(x)
    b5 = BasicConv2d(64, 5, padding=2, name="branch5x5_2")(b5)
    b3 = BasicConv2d(64, 1, name="branch3x3dbl_1")(x)
    b3 = BasicConv2d(96, 3, padding=1, name="branch3x3dbl_2")(b3)
    b3 = BasicConv2d(96, 3, padding=1, name="branch3x3dbl_3")(b3)
    bp = BasicConv2d(self.pool_features, 1, name="branch_pool")(_avg_pool_3x3(x))
    return jnp.concatenate([b1, b5, b3, bp], axis=-1)


class InceptionB(nn.Module):
  """``Mixed_6a``: the 35x35 -> 17x17 reduction."""

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    b3 = BasicConv2d(384, 3, stride=2, name="branch3x3")(x)
    bd = BasicConv2d(64, 1, name="branch3x3dbl_1")(x)
    bd = BasicConv2d(96, 3, padding=1, name="branch3x3dbl_2")(bd)
    bd = BasicConv2d(96, 3, stride=2, name="branch3x3dbl_3")(bd)
    return jnp.concatenate([b3, bd, _max_pool_3x3_stride2(x)], axis=-1)


class InceptionC(nn.Module):
  """``Mixed_6b..e`` (FIDInceptionC): factorised 7x7 branches.

  ``branch1x1`` of ``Mixed_6d`` is TF's ``mixed_6/conv``, returned as ``spatial`` when
  ``return_branch1x1`` is set.
  """
  channels_7x7: int
  return_branch1x1: bool = False

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array | tuple[jax.Array, jax.Array]:
    c7 = self.channels_7x7
    b1 = BasicConv2d(192, 1, name="branch1x1")(x)
    b7 = BasicConv2d(c7, 1, name="branch7x7_1")(x)
    b7 = BasicConv2d(c7, (1, 7), padding=(0, 3), name="branch7x7_2")(b7)
    b7 = BasicConv2d(192, (7, 1), padding=(3, 0), name="branch7x7_3")(b7)
    bd = BasicConv2d(c7, 1, name="branch7x7dbl_1")(x)
    bd = BasicConv2d(c7, (7, 1), padding=(3, 0), name="branch7x7dbl_2")(bd)
    bd = BasicConv2d(c7, (1, 7), padding=(0, 3), name="branch7x7dbl_3")(bd)
    bd = BasicConv2d(c7, (7, 1), padding=(3, 0), name="branch7x7dbl_4")(bd)
    bd = BasicConv2d(192, (1, 7), padding=(0, 3), name="branch7x7dbl_5")(bd)
    bp = BasicConv2d(192, 1, name="branch_pool")(_avg_pool_3x3(x))
    out = jnp.concatenate([b1, b7, bd, bp], axis=-1)
    return (out, b1) if self.return_branch1x1 else out


class InceptionD(nn.Module):
  """``Mixed_7a``: the 17x17 -> 8x8 reduction."""

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    b3 = BasicConv2d(192, 1, name="branch3x3_1")(x)
    b3 = BasicConv2d(320, 3, stride=2, name="branch3x3_2")(b3)
    b7 = BasicConv2d(192, 1, name="branch7x7x3_1")(x)
    b7 = BasicConv2d(192, (1, 7), padding=(0, 3), name="branch7x7x3_2")(b7)
    b7 = BasicConv2d(192, (7, 1), padding=(3, 0), name="branch7x7x3_3")(b7)
    b7 = BasicConv2d(192, 3, stride=2, name="branch7x7x3_4")(b7)
    return jnp.concatenate([b3, b7, _max_pool_3x3_stride2(x)], axis=-1)


class InceptionE(nn.Module):
  """``Mixed_7b`` (FIDInceptionE_1, average pool) and ``Mixed_7c`` (FIDInceptionE_2, max pool:
  the 2015 graph pools there with a max pool, unlike the paper)."""
  max_pool: bool = False

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    b1 = BasicConv2d(320, 1, name="branch1x1")(x)
    b3 = BasicConv2d(384, 1, name="branch3x3_1")(x)
    b3 = jnp.concatenate([BasicConv2d(384, (1, 3), padding=(0, 1), name="branch3x3_2a")(b3),
                          BasicConv2d(384, (3, 1), padding=(1, 0), name="branch3x3_2b")(b3)],
                         axis=-1)
    bd = BasicConv2d(448, 1, name="branch3x3dbl_1")(x)
    bd = BasicConv2d(384, 3, padding=1, name="branch3x3dbl_2")(bd)
    bd = jnp.concatenate([BasicConv2d(384, (1, 3), padding=(0, 1), name="branch3x3dbl_3a")(bd),
                          BasicConv2d(384, (3, 1), padding=(1, 0), name="branch3x3dbl_3b")(bd)],
                         axis=-1)
    if self.max_pool:
      pooled = nn.max_pool(x, (3, 3), strides=(1, 1), padding=((1, 1), (1, 1)))
    else:
      pooled = _avg_pool_3x3(x)
    bp = BasicConv2d(192, 1, name="branch_pool")(pooled)
    return jnp.concatenate([b1, b3, bd, bp], axis=-1)


class Linear(nn.Module):
  """torch's ``nn.Linear`` (``kernel`` [in, out], ``bias`` [out]); ``use_bias=False`` computes
  ``x @ kernel`` alone (the bias parameter exists either way)."""
  features: int
  use_bias: bool = True

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    kernel = self.param("kernel", nn.initializers.lecun_normal(), (x.shape[-1], self.features))
    bias = self.param("bias", nn.initializers.zeros, (self.features,))
    y = x @ kernel
    return y + bias if self.use_bias else y


class InceptionV3(nn.Module):
  """The FID Inception-v3 on preprocessed images, float32 [N, 299, 299, 3] in about [-1, 1].

  Returns ``{"pool": [N, 2048], "spatial": [N, 2023], "logits": [N, 1008]}`` (see the module
  docstring). Parameters are in the ``params`` collection, BatchNorm statistics in
  ``batch_stats``.
  """
  logits_bias: bool = False

  @nn.compact
  def __call__(self, x: jax.Array) -> dict[str, jax.Array]:
    x = BasicConv2d(32, 3, stride=2, name="Conv2d_1a_3x3")(x)
    x = BasicConv2d(32, 3, name="Conv2d_2a_3x3")(x)
    x = BasicConv2d(64, 3, padding=1, name="Conv2d_2b_3x3")(x)
    x = _max_pool_3x3_stride2(x)
    x = BasicConv2d(80, 1, name="Conv2d_3b_1x1")(x)
    x = BasicConv2d(192, 3, name="Conv2d_4a_3x3")(x)
    x = _max_pool_3x3_stride2(x)
    x = InceptionA(32, name="Mixed_5b")(x)
    x = InceptionA(64, name="Mixed_5c")(x)
    x = InceptionA(64, name="Mixed_5d")(x)
    x = InceptionB(name="Mixed_6a")(x)
    x = InceptionC(128, name="Mixed_6b")(x)
    x = InceptionC(160, name="Mixed_6c")(x)
    x, mixed_6_conv = InceptionC(160, return_branch1x1=True, name="Mixed_6d")(x)
    x = InceptionC(192, name="Mixed_6e")(x)
    x = InceptionD(name="Mixed_7a")(x)
    x = InceptionE(name="Mixed_7b")(x)
    x = InceptionE(max_pool=True, name="Mixed_7c")(x)
    pool = jnp.mean(x, axis=(1, 2))
    spatial = mixed_6_conv[..., :SPATIAL_CHANNELS].reshape(x.shape[0], -1)
    logits = Linear(NUM_CLASSES, use_bias=self.logits_bias, name="fc")(pool)
    return {"pool": pool, "spatial": spatial, "logits": logits}


def _tf1_bilinear_matrix(in_size: int, out_size: int) -> np.ndarray:
  """float32 [out_size, in_size]: the rows of TF1 ``ResizeBilinear`` along one axis.

  Output pixel ``i`` samples the input at ``i * in_size / out_size`` (no half-pixel offset)
  and mixes its two neighbours ``floor`` and ``min(floor + 1, in_size - 1)`` linearly.
  """
  scale = np.float32(in_size) / np.float32(out_size)
  source = np.arange(out_size, dtype=np.float32) * scale
  lower = np.floor(source).astype(np.int64)
  upper = np.minimum(lower + 1, in_size - 1)
  frac = source - lower.astype(np.float32)
  matrix = np.zeros((out_size, in_size), np.float32)
  rows = np.arange(out_size)
  np.add.at(matrix, (rows, lower), 1 - frac)
  np.add.at(matrix, (rows, upper), frac)
  return matrix


def resize_bilinear_tf1(images: jax.Array, size: int) -> jax.Array:
  """float32 [N, H, W, C] -> [N, size, size, C] as TF1's ``ResizeBilinear`` (the graph's).

  ``tf.compat.v1.image.resize_bilinear(images, [size, size])`` with its defaults
  (``align_corners=False, half_pixel_centers=False``), computed as two interpolation matrices.
  """
  rows = jnp.asarray(_tf1_bilinear_matrix(images.shape[1], size))
  cols = jnp.asarray(_tf1_bilinear_matrix(images.shape[2], size))
  return jnp.einsum("oh,nhwc,pw->nopc", rows, images.astype(jnp.float32), cols,
                    precision=jax.lax.Precision.HIGHEST)


def preprocess(images: jax.Array) -> jax.Array:
  """uint8 [N, H, W, C] (C = 1 or 3) -> float32 [N, 299, 299, 3] as the TF graph prepares its
  input: grey images repeated to 3 channels, pixels 0..255 resized (TF1 bilinear) and mapped by
  ``(x - 128) / 128`` to [-1, 0.9922]."""
  x = images.astype(jnp.float32)
  if x.shape[-1] == 1:
    x = jnp.repeat(x, 3, axis=-1)
  x = resize_bilinear_tf1(x, INPUT_SIZE)
  return (x - 128.0) * (1.0 / 128.0)
