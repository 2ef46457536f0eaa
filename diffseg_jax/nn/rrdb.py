"""SegDiff's image encoder G: a trunk of Residual-in-Residual Dense Blocks (ESRGAN's RRDB).

``RRDBEncoder`` maps an image to features at the same resolution: a 3x3 conv to
``features`` channels, ``num_blocks`` RRDBs with a 3x3 conv and a residual around the trunk,
then conv, LeakyReLU(0.2) and a conv to ``out_channels`` (the U-Net width it is added to).
Each RRDB is three dense blocks of five 3x3 convs (``growth`` channels each, every conv
seeing the block input and all earlier outputs), each dense block and each RRDB closed by a
residual scaled by 0.2.
"""

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from diffseg_jax.nn.layers import conv

Dtype = Any
_SLOPE = 0.2  # LeakyReLU negative slope
_RESIDUAL_SCALE = 0.2


class ResidualDenseBlock(nn.Module):
  """Five densely connected 3x3 convs; ``x + 0.2 * conv5([x, x1..x4])``.

  Attributes:
    growth: channels of each of the first four convs.
    dtype: compute dtype.
  """

  growth: int = 32
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    """``[B, H, W, C] -> [B, H, W, C]``."""
    features = [x]
    for i in range(4):
      h = conv(self.growth, 3, dtype=self.dtype, name=f"conv{i + 1}")(
          jnp.concatenate(features, axis=-1))
      features.append(nn.leaky_relu(h, _SLOPE))
    out = conv(x.shape[-1], 3, dtype=self.dtype, name="conv5")(jnp.concatenate(features, -1))
    return x + _RESIDUAL_SCALE * out


class RRDB(nn.Module):
  """Three :class:`ResidualDenseBlock` s and a residual scaled by 0.2.

  Attributes:
    growth: growth channels of the dense blocks.
    dtype: compute dtype.
  """

  growth: int = 32
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    """``[B, H, W, C] -> [B, H, W, C]``."""
    h = x
    for i in range(3):
      h = ResidualDenseBlock(self.growth, self.dtype, name=f"rdb{i + 1}")(h)
    return x + _RESIDUAL_SCALE * h


class RRDBEncoder(nn.Module):
  """SegDiff's image encoder G (an ESRGAN generator without upsampling).

  Attributes:
    out_channels: output channels (the U-Net's ``model_channels``).
    features: trunk width (64 in SegDiff).
    num_blocks: number of RRDBs in the trunk.
    growth: dense-block growth channels (32).
    dtype: compute dtype; the output is float32.
  """

  out_channels: int
  features: int = 64
  num_blocks: int = 3
  growth: int = 32
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, image: jax.Array) -> jax.Array:
    """``image [B, H, W, C]`` in [-1, 1] -> features ``[B, H, W, out_channels]`` float32."""
    h = conv(self.features, 3, dtype=self.dtype, name="conv_first")(image.astype(self.dtype))
    trunk = h
    for i in range(self.num_blocks):
      trunk = RRDB(self.growth, self.dtype, name=f"trunk_{i}")(trunk)
    h = h + conv(self.features, 3, dtype=self.dtype, name="trunk_conv")(trunk)
    h = nn.leaky_relu(conv(self.features, 3, dtype=self.dtype, name="hr_conv")(h), _SLOPE)
    out = conv(self.out_channels, 3, dtype=self.dtype, name="conv_last")(h)
    return out.astype(jnp.float32)
