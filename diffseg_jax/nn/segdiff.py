"""SegDiff's network (Amit et al. 2021): an ADM U-Net over the noisy mask, conditioned on the
image through an RRDB encoder whose output is added after the U-Net's stem conv.

The U-Net's stem conv is SegDiff's mask encoder F and :class:`~diffseg_jax.nn.rrdb.RRDBEncoder`
its image encoder G; ``F(x_t) + G(image)`` continues through the U-Net with the timestep
embedding (AdaGN). The image features do not depend on the timestep, so samplers compute them
once per image (:meth:`SegDiffNet.encode_image`) and reuse them at every step
(:meth:`SegDiffNet.denoise`).
"""

import flax.linen as nn
import jax

from diffseg_jax.nn.rrdb import RRDBEncoder
from diffseg_jax.nn.unet import UNetModel


class SegDiffNet(nn.Module):
  """``(x_t, t, image) -> model output`` for mask diffusion.

  Attributes:
    unet: the U-Net over masks: ``in_channels`` mask channels, unconditional, no concat.
    image_encoder: maps ``[B, H, W, image channels]`` to ``[B, H, W, U-Net stem width]``.
  """

  unet: UNetModel
  image_encoder: RRDBEncoder

  def encode_image(self, image: jax.Array) -> jax.Array:
    """``image [B, H, W, C]`` in [-1, 1] -> G's features ``[B, H, W, stem width]`` float32."""
    return self.image_encoder(image)

  def denoise(self, x_t: jax.Array, t: jax.Array, image_features: jax.Array, *,
              train: bool = False) -> jax.Array:
    """The U-Net on noisy masks ``x_t [B, H, W, C_mask]`` at timesteps ``t [B]``, with
    precomputed :meth:`encode_image` features; ``[B, H, W, out_channels]`` float32."""
    return self.unet(x_t, t, train=train, stem_features=image_features)

  def __call__(self, x_t: jax.Array, t: jax.Array, image: jax.Array, *,
               train: bool = False) -> jax.Array:
    """:meth:`denoise` with the features of ``image [B, H, W, C]``."""
    return self.denoise(x_t, t, self.encode_image(image), train=train)
