"""Building blocks shared by the ADM (guided-diffusion) networks.

Everything here works on channels-last tensors: images are ``[B, H, W, C]`` and token
sequences ``[B, T, C]``. Parameters are always float32; ``dtype`` arguments select the
compute dtype. Normalisation statistics and attention softmaxes are always computed in
float32, whatever the compute dtype.
"""

import functools
import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from diffseg_jax.nn import onednn

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


# In the backward pass, sums over every position of a [..., C] tensor, per channel, are
# written as matrix products with a vector of ones. Autodiff would emit them as column
# reductions fused with their producers, which XLA:CPU runs 10-50x slower than the
# equivalent GEMV: in the ADM U-Net's backward pass they took a third of the time
# (benchmarks/README.md). HIGHEST precision keeps them float32 sums on TPU and GPU.
_HIGHEST = jax.lax.Precision.HIGHEST


def channel_sum(x: jax.Array) -> jax.Array:
  """Sums ``[..., C]`` over all axes but the last: returns ``[C]``."""
  rows = x.reshape(1, -1, x.shape[-1])
  return jnp.matmul(jnp.ones((1, 1, rows.shape[1]), x.dtype), rows, precision=_HIGHEST)[0, 0]


def _position_sum(x: jax.Array) -> jax.Array:
  """Sums ``[N, P, C]`` over positions P for each sample: returns ``[N, C]``."""
  ones = jnp.ones((x.shape[0], 1, x.shape[1]), x.dtype)
  return jnp.matmul(ones, x, precision=_HIGHEST)[:, 0]


@jax.custom_vjp
def bias_add(x: jax.Array, bias: jax.Array) -> jax.Array:
  """``x + bias`` over the last axis, whose bias gradient is a GEMV (see ``channel_sum``)."""
  return x + bias


bias_add.defvjp(lambda x, bias: (x + bias, None), lambda _, g: (g, channel_sum(g)))


def _per_sample_sum(x: jax.Array) -> jax.Array:
  """Sums ``[N, H, W, C]`` over positions: returns ``[N, 1, 1, C]`` (GEMVs, as above)."""
  n, *_, c = x.shape
  return _position_sum(x.reshape(n, -1, c)).reshape(n, 1, 1, c)


@jax.custom_vjp
def add_per_sample(x: jax.Array, shift: jax.Array) -> jax.Array:
  """``x + shift`` for ``x [N, H, W, C]`` and ``shift [N, 1, 1, C]``; a GEMV shift gradient."""
  return x + shift


add_per_sample.defvjp(lambda x, shift: (x + shift, None),
                      lambda _, g: (g, _per_sample_sum(g)))


@jax.custom_vjp
def film(x: jax.Array, scale: jax.Array, shift: jax.Array) -> jax.Array:
  """``x * (1 + scale) + shift`` for ``x [N, H, W, C]`` and ``scale, shift [N, 1, 1, C]``.

  The scale-shift (AdaGN) conditioning of the ADM ResBlock, with GEMV gradient sums.
  """
  return x * (1 + scale) + shift


film.defvjp(lambda x, scale, shift: (x * (1 + scale) + shift, (x, scale)),
            lambda res, g: (g * (1 + res[1]), _per_sample_sum(g * res[0]), _per_sample_sum(g)))


def _group_mean(sums: jax.Array, num_groups: int, count: int) -> jax.Array:
  """Per-channel sums ``[N, C]`` -> each channel's group mean, ``[N, 1, C]``."""
  n, c = sums.shape
  means = sums.reshape(n, num_groups, c // num_groups).sum(-1, keepdims=True) / count
  return jnp.broadcast_to(means, (n, num_groups, c // num_groups)).reshape(n, 1, c)


def _group_norm_fwd(x, scale, bias, num_groups, epsilon):
  # Statistics as per-channel GEMV sums folded into groups, and the normalisation as a
  # per-(sample, channel) affine map: every broadcast runs along the channel axis. Reducing a
  # [N, P, groups, C / groups] view instead leaves XLA:CPU loops whose inner axis is
  # C / groups (2 channels in a 64-channel layer), which do not vectorise.
  count = x.shape[1] * (x.shape[2] // num_groups)
  mean = _group_mean(_position_sum(x), num_groups, count)  # [N, 1, C]
  centered = x - mean
  rstd = jax.lax.rsqrt(_group_mean(_position_sum(jnp.square(centered)), num_groups, count)
                       + epsilon)
  out = centered * (rstd * scale) + bias
  return out, (x, mean, rstd, scale)


def _group_norm_bwd(num_groups, epsilon, residuals, dy):
  del epsilon  # rstd already holds it
  x, mean, rstd, scale = residuals
  count = x.shape[1] * (x.shape[2] // num_groups)
  normed = (x - mean) * rstd
  dy_sum, dy_normed_sum = _position_sum(dy), _position_sum(dy * normed)  # [N, C] each
  # d/dx of (x - mu) * rstd over a group: rstd * (g - mean(g) - normed * mean(g * normed)),
  # with g = dy * scale the gradient of the normalised values.
  dx = rstd * (dy * scale - _group_mean(dy_sum * scale, num_groups, count)
               - normed * _group_mean(dy_normed_sum * scale, num_groups, count))
  return dx, dy_normed_sum.sum(0), dy_sum.sum(0)


@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4))
def group_norm(x: jax.Array, scale: jax.Array, bias: jax.Array, num_groups: int,
               epsilon: float) -> jax.Array:
  """GroupNorm of float32 ``[N, P, C]`` (P positions) with a per-channel affine ``[C]``.

  Channel ``c`` belongs to group ``c // (C / num_groups)``; statistics are over the positions
  and channels of each sample's group, the variance is biased (as ``torch.nn.GroupNorm``).
  """
  return _group_norm_fwd(x, scale, bias, num_groups, epsilon)[0]


group_norm.defvjp(_group_norm_fwd, _group_norm_bwd)


def conv2d(x: jax.Array, kernel: jax.Array, bias: jax.Array, strides: tuple[int, int],
           padding: tuple[tuple[int, int], tuple[int, int]]) -> jax.Array:
  """``jax.lax.conv_general_dilated(x, kernel, strides, padding) + bias``, NHWC and HWIO.

  On a CPU with the kernels of :mod:`onednn`, float32 convolutions run oneDNN's kernels with
  the bias fused (``onednn.conv2d``); elsewhere XLA's convolution and :func:`bias_add`. Both
  give the same values up to float32 rounding and differentiate.

  Args:
    x: ``[B, H, W, C_in]``.
    kernel: ``[KH, KW, C_in, C_out]``.
    bias: ``[C_out]``.
    strides: ``(stride_h, stride_w)``.
    padding: ``((top, bottom), (left, right))``, non-negative.

  Returns:
    ``[B, H_out, W_out, C_out]``, ``H_out = (H + top + bottom - KH) // stride_h + 1``.
  """
  def xla(x, kernel, bias):
    y = jax.lax.conv_general_dilated(x, kernel, strides, padding,
                                     dimension_numbers=("NHWC", "HWIO", "NHWC"))
    return bias_add(y, bias)

  if not onednn.applies(x, kernel, bias):
    return xla(x, kernel, bias)
  fused = functools.partial(onednn.conv2d, strides=strides, padding=padding)
  return jax.lax.platform_dependent(x, kernel, bias, cpu=fused, default=xla)


def _group_norm_act_xla(x, gamma, beta, scale_shift, num_groups, epsilon, silu):
  """:func:`group_norm_act` as XLA operations (every platform)."""
  y = group_norm(x, gamma, beta, num_groups, epsilon)
  if scale_shift is not None:
    n, p, c = x.shape
    scale, shift = (a.reshape(n, 1, 1, c) for a in scale_shift)
    y = film(y.reshape(n, p, 1, c), scale, shift).reshape(x.shape)
  return jax.nn.silu(y) if silu else y


def group_norm_act(x: jax.Array, gamma: jax.Array, beta: jax.Array, num_groups: int,
                   epsilon: float, *, scale_shift: tuple[jax.Array, jax.Array] | None = None,
                   silu: bool = False) -> jax.Array:
  """GroupNorm of float32 ``[N, P, C]``, then an optional scale-shift and SiLU.

  ``y = group_norm(x) * (1 + scale) + shift`` with ``scale, shift [N, C]`` (the ADM
  ResBlock's AdaGN), then ``silu(y)`` if ``silu``. On a CPU with the kernels of
  :mod:`onednn` this is one fused kernel (``onednn.group_norm``); elsewhere XLA's
  operations. Both give the same values up to float32 rounding and differentiate.
  """
  film_given = scale_shift is not None
  if not film_given:
    zeros = jnp.zeros((x.shape[0], x.shape[-1]), jnp.float32)
    scale_shift = (zeros, zeros)

  def xla(x, gamma, beta, scale, shift):
    return _group_norm_act_xla(x, gamma, beta, (scale, shift) if film_given else None,
                               num_groups, epsilon, silu)

  def fused(x, gamma, beta, scale, shift):
    return onednn.group_norm(x, gamma, beta, scale, shift, num_groups=num_groups,
                             epsilon=epsilon, silu=silu)

  if not onednn.applies(x, gamma, beta):
    return xla(x, gamma, beta, *scale_shift)
  return jax.lax.platform_dependent(x, gamma, beta, *scale_shift, cpu=fused, default=xla)


class GroupNorm32(nn.Module):
  """GroupNorm over the last (channel) axis, computed in float32.

  Channel ``c`` belongs to group ``c // (C / num_groups)``, as in ``torch.nn.GroupNorm``.
  The call can fuse what follows the norm in the ADM networks: a per-sample scale-shift
  (AdaGN) and SiLU (see :func:`group_norm_act`). The output is cast back to the input dtype.

  Attributes:
    num_groups: number of channel groups; C must be divisible by it.
    epsilon: added to the variance.
  """

  num_groups: int = 32
  epsilon: float = 1e-5

  @nn.compact
  def __call__(self, x: jax.Array, *,
               scale_shift: tuple[jax.Array, jax.Array] | None = None,
               silu: bool = False) -> jax.Array:
    """Normalises ``x`` of shape ``[B, ..., C]``; returns the same shape and dtype.

    Args:
      x: ``[B, ..., C]``.
      scale_shift: optional ``(scale, shift)``, each ``[B, 1, ..., 1, C]`` or ``[B, C]``:
        the output is ``norm(x) * (1 + scale) + shift``.
      silu: apply SiLU last (in float32).
    """
    channels = x.shape[-1]
    if channels % self.num_groups:
      raise ValueError(
          f"GroupNorm at {'/'.join(self.scope.path)} needs a channel count divisible by "
          f"{self.num_groups}, got {channels} channels."
      )
    scale = self.param("scale", nn.initializers.ones, (channels,), jnp.float32)
    bias = self.param("bias", nn.initializers.zeros, (channels,), jnp.float32)
    flat = x.astype(jnp.float32).reshape(x.shape[0], -1, channels)
    if scale_shift is not None:
      scale_shift = tuple(a.astype(jnp.float32).reshape(x.shape[0], channels)
                          for a in scale_shift)
    out = group_norm_act(flat, scale, bias, self.num_groups, self.epsilon,
                         scale_shift=scale_shift, silu=silu)
    return out.reshape(x.shape).astype(x.dtype)


def _kernel_init(zero_init: bool) -> nn.initializers.Initializer:
  return nn.initializers.zeros if zero_init else nn.initializers.lecun_normal()


class Conv(nn.Module):
  """A square NHWC convolution with torch-style symmetric padding ``kernel_size // 2``.

  Parameters as ``flax.linen.Conv``'s: ``kernel`` [k, k, C_in, features] and ``bias``
  [features], float32. On CPU, float32 convolutions run oneDNN's kernels with the bias
  fused when installed; elsewhere the bias gradient is a GEMV (see :func:`conv2d`).

  Attributes:
    features: output channels.
    kernel_size: odd kernel size (1 or 3 in the ADM networks).
    stride: spatial stride.
    zero_init: initialise the kernel to zeros (the reference's ``zero_module`` layers).
    dtype: compute dtype.
  """

  features: int
  kernel_size: int
  stride: int = 1
  zero_init: bool = False
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    """``[B, H, W, C_in]`` -> ``[B, H / stride, W / stride, features]``."""
    k, pad = self.kernel_size, self.kernel_size // 2
    kernel = self.param("kernel", _kernel_init(self.zero_init),
                        (k, k, x.shape[-1], self.features), jnp.float32)
    bias = self.param("bias", nn.initializers.zeros, (self.features,), jnp.float32)
    return conv2d(x.astype(self.dtype), kernel.astype(self.dtype), bias.astype(self.dtype),
                  (self.stride, self.stride), ((pad, pad), (pad, pad)))


class Dense(nn.Module):
  """A linear layer over the last axis (also the reference's 1x1 Conv1d layers).

  Parameters as ``flax.linen.Dense``'s: ``kernel`` [C_in, features] and ``bias``
  [features], float32; the bias gradient is a GEMV (see ``bias_add``).

  Attributes:
    features: output width.
    zero_init: initialise the kernel to zeros.
    dtype: compute dtype.
  """

  features: int
  zero_init: bool = False
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    """``[..., C_in]`` -> ``[..., features]``."""
    kernel = self.param("kernel", _kernel_init(self.zero_init), (x.shape[-1], self.features),
                        jnp.float32)
    bias = self.param("bias", nn.initializers.zeros, (self.features,), jnp.float32)
    y = jnp.dot(x.astype(self.dtype), kernel.astype(self.dtype))
    return bias_add(y, bias.astype(self.dtype))


def conv(features: int, kernel_size: int, *, stride: int = 1, zero_init: bool = False,
         dtype: Dtype = jnp.float32, name: str | None = None) -> Conv:
  """A :class:`Conv` (named ``name`` in its parent)."""
  return Conv(features, kernel_size, stride=stride, zero_init=zero_init, dtype=dtype, name=name)


def dense(features: int, *, zero_init: bool = False, dtype: Dtype = jnp.float32,
          name: str | None = None) -> Dense:
  """A :class:`Dense` (named ``name`` in its parent)."""
  return Dense(features, zero_init=zero_init, dtype=dtype, name=name)


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
  # Heads-major [B, heads, T, ch] queries and values and [B, heads, ch, T] keys make both
  # products plain (untransposed) batched matmuls. Contracting over the token axis of
  # [B, T, heads, ch] directly lets XLA:CPU pick transposed output layouts that run several
  # times slower, and a transposed right operand costs a third more (benchmarks/README.md).
  # On CPU the products run oneDNN's batched matmul, 2-3x faster than XLA's at these sizes.
  q, v = (x.transpose(0, 2, 1, 3) for x in (q, v))
  k = k.transpose(0, 2, 3, 1)
  scale = 1.0 / math.sqrt(math.sqrt(ch))
  logits = onednn.matmul(q * scale, k * scale)  # [B, heads, T, T]
  weights = jax.nn.softmax(logits.astype(jnp.float32), axis=-1).astype(qkv.dtype)
  out = onednn.matmul(weights, v)  # [B, heads, T, ch]
  return out.transpose(0, 2, 1, 3).reshape(b, t, num_heads * ch)
