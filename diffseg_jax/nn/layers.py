"""Building blocks shared by the ADM (guided-diffusion) networks.

Everything here works on channels-last tensors: images are ``[B, H, W, C]`` and token
sequences ``[B, T, C]``. Parameters are always float32; ``dtype`` arguments select the
compute dtype. Normalisation statistics and attention softmaxes are always computed in
float32, whatever the compute dtype.
"""

import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

Dtype = Any


def timestep_embedding(
    timesteps: jax.Array, dim: int, max_period: float = 10000.0
) -> jax.Array:
  """Sinusoidal embedding of diffusion timesteps, cosines first.

  Uses ``half = dim // 2`` frequencies ``exp(-ln(max_period) * i / half)``; an odd ``dim``
  gets a trailing zero column.

  Args:
    timesteps: ``[B]`` integer or float timesteps (cast to float32).
    dim: embedding width.
    max_period: the longest period of the sinusoids.

  Returns:
    ``[B, dim]`` float32 array ``[cos(t * f), sin(t * f)]``.
  """
  half = dim // 2
  freqs = jnp.exp(-math.log(max_period) * jnp.arange(half, dtype=jnp.float32) / half)
  args = timesteps.astype(jnp.float32)[:, None] * freqs[None, :]
  embedding = jnp.concatenate([jnp.cos(args), jnp.sin(args)], axis=-1)
  if dim % 2:
    embedding = jnp.pad(embedding, ((0, 0), (0, 1)))
  return embedding


class GroupNorm32(nn.Module):
  """GroupNorm over the last (channel) axis, computed in float32.

  Channel ``c`` belongs to group ``c // (C / num_groups)``, as in ``torch.nn.GroupNorm``.
  The output is cast back to the input dtype.

  Attributes:
    num_groups: number of channel groups; C must be divisible by it.
    epsilon: added to the variance.
  """

  num_groups: int = 32
  epsilon: float = 1e-5

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    """Normalises ``x`` of shape ``[B, ..., C]``; returns the same shape and dtype."""
    channels = x.shape[-1]
    if channels % self.num_groups:
      raise ValueError(
          f"GroupNorm at {'/'.join(self.scope.path)} needs a channel count divisible by "
          f"{self.num_groups}, got {channels} channels."
      )
    scale = self.param("scale", nn.initializers.ones, (channels,), jnp.float32)
    bias = self.param("bias", nn.initializers.zeros, (channels,), jnp.float32)
    grouped = x.astype(jnp.float32).reshape(
        x.shape[0], -1, self.num_groups, channels // self.num_groups
    )
    mean = grouped.mean(axis=(1, 3), keepdims=True)
    centered = grouped - mean
    var = jnp.square(centered).mean(axis=(1, 3), keepdims=True)
    normed = (centered * jax.lax.rsqrt(var + self.epsilon)).reshape(x.shape)
    return (normed * scale + bias).astype(x.dtype)


def _kernel_init(zero_init: bool) -> nn.initializers.Initializer:
  return nn.initializers.zeros if zero_init else nn.initializers.lecun_normal()


def conv(
    features: int,
    kernel_size: int,
    *,
    stride: int = 1,
    zero_init: bool = False,
    dtype: Dtype = jnp.float32,
    name: str | None = None,
) -> nn.Conv:
  """A square NHWC convolution with torch-style symmetric padding ``kernel_size // 2``.

  Args:
    features: output channels.
    kernel_size: odd kernel size (1 or 3 in the ADM networks).
    stride: spatial stride.
    zero_init: initialise the kernel to zeros (the reference's ``zero_module`` layers).
    dtype: compute dtype; the parameters are float32.
    name: submodule name.

  Returns:
    An ``nn.Conv`` mapping ``[B, H, W, C_in]`` to ``[B, H / stride, W / stride, features]``.
  """
  pad = kernel_size // 2
  return nn.Conv(
      features,
      (kernel_size, kernel_size),
      strides=(stride, stride),
      padding=((pad, pad), (pad, pad)),
      kernel_init=_kernel_init(zero_init),
      dtype=dtype,
      param_dtype=jnp.float32,
      name=name,
  )


def dense(
    features: int,
    *,
    zero_init: bool = False,
    dtype: Dtype = jnp.float32,
    name: str | None = None,
) -> nn.Dense:
  """A float32-parameter ``nn.Dense`` (also used for the reference's 1x1 Conv1d layers)."""
  return nn.Dense(
      features,
      kernel_init=_kernel_init(zero_init),
      dtype=dtype,
      param_dtype=jnp.float32,
      name=name,
  )


def upsample_nearest(x: jax.Array) -> jax.Array:
  """Nearest-neighbour x2 upsampling: ``[B, H, W, C] -> [B, 2H, 2W, C]``."""
  b, h, w, c = x.shape
  x = jnp.broadcast_to(x[:, :, None, :, None, :], (b, h, 2, w, 2, c))
  return x.reshape(b, 2 * h, 2 * w, c)


def avg_pool2(x: jax.Array) -> jax.Array:
  """2x2 average pooling with stride 2: ``[B, H, W, C] -> [B, H/2, W/2, C]`` (H, W even)."""
  b, h, w, c = x.shape
  return x.reshape(b, h // 2, 2, w // 2, 2, c).mean(axis=(2, 4))


def qkv_attention(qkv: jax.Array, num_heads: int, *, legacy_order: bool) -> jax.Array:
  """Multi-head dot-product attention on packed query/key/value channels.

  The ``3C`` channels of ``qkv`` are laid out as ``[head][q|k|v][ch]`` in the legacy order
  (guided-diffusion's ``QKVAttentionLegacy``) and as ``[q|k|v][head][ch]`` otherwise
  (``QKVAttention``). Queries and keys are each scaled by ``ch ** -0.25``; the softmax over
  keys runs in float32.

  Args:
    qkv: ``[B, T, 3 * C]`` packed projections, ``C = num_heads * ch``.
    num_heads: number of heads.
    legacy_order: whether the channels use the legacy (head-outer) layout.

  Returns:
    ``[B, T, C]`` attention output, channels ordered ``[head][ch]``, in ``qkv.dtype``.
  """
  b, t, width = qkv.shape
  ch = width // (3 * num_heads)
  if legacy_order:
    q, k, v = jnp.split(qkv.reshape(b, t, num_heads, 3 * ch), 3, axis=-1)
  else:
    q, k, v = (part.reshape(b, t, num_heads, ch) for part in jnp.split(qkv, 3, axis=-1))
  scale = 1.0 / math.sqrt(math.sqrt(ch))
  logits = jnp.einsum("bthc,bshc->bhts", q * scale, k * scale)
  weights = jax.nn.softmax(logits.astype(jnp.float32), axis=-1).astype(qkv.dtype)
  out = jnp.einsum("bhts,bshc->bthc", weights, v)
  return out.reshape(b, t, num_heads * ch)
