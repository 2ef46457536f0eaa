"""Segmentation masks as diffusion targets, and ensembles of sampled masks as predictions.

Encodings of ``K`` classes (``encoding`` argument):

* ``"binary"`` (K = 2): one channel, class 1 at +1 and class 0 at -1 (SegDiff's).
* ``"onehot"``: K channels, +1 at the pixel's class and -1 elsewhere.
* ``"bits"``: ``ceil(log2 K)`` channels, the class id's bits as +-1 (analog bits, Chen et
  al. 2022), for many classes.

Pixels with the ignore id get zeros in every channel; losses mask them out.
"""

import math

import jax
import jax.numpy as jnp

from diffseg_jax.data.builders.common import IGNORE_ID

ENCODINGS = ("auto", "binary", "onehot", "bits")
_ONEHOT_MAX_CLASSES = 32  # "auto" switches to analog bits above this


def resolve_encoding(encoding: str, num_classes: int) -> str:
  """``"auto"`` -> binary for 2 classes, one-hot up to 32 classes, else bits; checks others."""
  if encoding not in ENCODINGS:
    raise ValueError(f"mask encoding {encoding!r} must be one of {ENCODINGS}.")
  if num_classes < 2:
    raise ValueError(f"Segmentation needs at least 2 mask classes, got {num_classes}.")
  if encoding == "auto":
    if num_classes == 2:
      return "binary"
    return "onehot" if num_classes <= _ONEHOT_MAX_CLASSES else "bits"
  if encoding == "binary" and num_classes != 2:
    raise ValueError(f"the binary mask encoding needs 2 classes, got {num_classes}; use "
                     "'onehot' or 'bits'.")
  return encoding


def num_channels(encoding: str, num_classes: int) -> int:
  """Channels of the encoded mask."""
  encoding = resolve_encoding(encoding, num_classes)
  if encoding == "binary":
    return 1
  if encoding == "onehot":
    return num_classes
  return math.ceil(math.log2(num_classes))


def valid_pixels(masks: jax.Array) -> jax.Array:
  """bool [B, H, W]: pixels with a class label (not the ignore id)."""
  return masks != IGNORE_ID


def encode(masks: jax.Array, num_classes: int, encoding: str) -> jax.Array:
  """int masks [B, H, W] (0..K-1, or the ignore id) -> float32 [B, H, W, C] in {-1, 0, 1}."""
  encoding = resolve_encoding(encoding, num_classes)
  ids = jnp.where(valid_pixels(masks), masks, 0).astype(jnp.int32)
  if encoding == "binary":
    x = (2.0 * ids - 1.0)[..., None]
  elif encoding == "onehot":
    x = 2.0 * jax.nn.one_hot(ids, num_classes) - 1.0
  else:
    bits = jnp.arange(num_channels(encoding, num_classes))
    x = 2.0 * ((ids[..., None] >> bits) & 1).astype(jnp.float32) - 1.0
  return jnp.where(valid_pixels(masks)[..., None], x, 0.0).astype(jnp.float32)


def class_probabilities(x: jax.Array, num_classes: int, encoding: str) -> jax.Array:
  """Decodes sampled masks ``x [..., C]`` (about [-1, 1]) to class probabilities [..., K].

  Binary: soft, ``p(class 1) = clip((x + 1) / 2, 0, 1)`` (the ensemble mean of these is
  thresholded at 0.5, as SegDiff does). One-hot: the one-hot of the argmax channel. Bits: the
  one-hot of the id the thresholded bits spell, ids past K - 1 taken as K - 1.
  """
  encoding = resolve_encoding(encoding, num_classes)
  if encoding == "binary":
    p1 = jnp.clip((x[..., 0] + 1.0) / 2.0, 0.0, 1.0)
    return jnp.stack([1.0 - p1, p1], axis=-1)
  if encoding == "onehot":
    return jax.nn.one_hot(jnp.argmax(x, axis=-1), num_classes)
  weights = 2 ** jnp.arange(x.shape[-1])
  ids = jnp.sum((x > 0).astype(jnp.int32) * weights, axis=-1)
  return jax.nn.one_hot(jnp.minimum(ids, num_classes - 1), num_classes)


def entropy(probs: jax.Array) -> jax.Array:
  """Entropy in nats of class probabilities ``[..., K]`` -> ``[...]``."""
  return -jnp.sum(jnp.where(probs > 0, probs * jnp.log(jnp.where(probs > 0, probs, 1.0)), 0.0),
                  axis=-1)


def combine_members(member_probs: jax.Array) -> dict[str, jax.Array]:
  """An ensemble's prediction from its members' class probabilities ``[E, B, H, W, K]``.

  Returns:
    ``probs`` float32 [B, H, W, K], the members' mean; ``mask`` int32 [B, H, W], its argmax
    (binary: mean foreground probability above 0.5); ``variance`` float32 [B, H, W], the
    variance over members summed over classes (binary: twice that of the foreground
    probability; 0 for one member), in [0, 1]; ``entropy`` float32 [B, H, W], the entropy
    (nats) of ``probs``, in [0, log K].
  """
  probs = jnp.mean(member_probs, axis=0)
  return {
      "probs": probs,
      "mask": jnp.argmax(probs, axis=-1).astype(jnp.int32),
      "variance": jnp.sum(jnp.var(member_probs, axis=0), axis=-1),
      "entropy": entropy(probs),
  }
