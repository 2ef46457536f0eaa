"""The ADM (guided-diffusion) U-Net family in Flax linen, channels-last.

``UNetModel`` is the noise-prediction U-Net, ``SuperResUNetModel`` its super-resolution
variant and ``EncoderUNetModel`` the noisy-image classifier (the U-Net's encoder half and a
pooling head). Constructor fields follow guided-diffusion's constructors (``dims`` is always 2;
``attention_resolutions`` are downsample rates, not pixel sizes).

Submodule names mirror the reference state-dict keys, with ``.`` between a name and its
indices turned into ``_`` (torch ``input_blocks.4.1.qkv`` is flax ``input_blocks_4_1/qkv``);
``diffseg_jax.convert.guided_diffusion`` documents the full mapping.

Parameters are float32; ``dtype`` sets the compute dtype of the convolutional trunk
(GroupNorm statistics and attention softmaxes stay in float32). As in guided-diffusion's fp16
mode, the timestep/label embedding MLPs and the output heads run in float32, and the outputs
are float32. On GPU/TPU run float32 models under ``jax.default_matmul_precision("highest")``
to match the reference closely.
"""

from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from diffseg_jax.nn.layers import (
    GroupNorm32,
    add_per_sample,
    avg_pool2,
    conv,
    dense,
    qkv_attention,
    timestep_embedding,
    upsample_nearest,
)

Dtype = Any


def _nearest_valid_sizes(size: int, factor: int) -> str:
  lower = size // factor * factor
  upper = lower + factor
  return f"{lower} or {upper}" if lower else f"{upper}"


def check_image_size(
    image_size: int | Sequence[int], channel_mult: Sequence[float]
) -> None:
  """Checks that an image size survives the U-Net's downsampling.

  The network halves the resolution ``len(channel_mult) - 1`` times, so the height and width
  must be divisible by ``2 ** (len(channel_mult) - 1)``.

  Args:
    image_size: the side length, or ``(height, width)``.
    channel_mult: the per-level channel multipliers of the model.

  Raises:
    ValueError: naming the offending size and the nearest valid sizes.
  """
  sizes = (image_size, image_size) if isinstance(image_size, int) else tuple(image_size)
  factor = 2 ** (len(channel_mult) - 1)
  for what, size in zip(("height", "width"), sizes):
    if size <= 0 or size % factor:
      raise ValueError(
          f"image {what} {size} is not divisible by {factor}, which "
          f"channel_mult={tuple(channel_mult)} requires ({len(channel_mult) - 1} "
          f"downsamplings); nearest valid sizes: {_nearest_valid_sizes(size, factor)}."
      )


class Downsample(nn.Module):
  """Halves H and W: a 3x3 stride-2 conv ``op``, or 2x2 average pooling without ``use_conv``.

  Attributes:
    use_conv: whether to use the learned conv.
    dtype: compute dtype.
  """

  use_conv: bool
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    """``[B, H, W, C] -> [B, H/2, W/2, C]``."""
    if self.use_conv:
      return conv(x.shape[-1], 3, stride=2, dtype=self.dtype, name="op")(x)
    return avg_pool2(x)


class Upsample(nn.Module):
  """Doubles H and W by nearest neighbour, then (with ``use_conv``) a 3x3 conv ``conv``.

  Attributes:
    use_conv: whether to apply the learned conv after upsampling.
    dtype: compute dtype.
  """

  use_conv: bool
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    """``[B, H, W, C] -> [B, 2H, 2W, C]``."""
    x = upsample_nearest(x)
    if self.use_conv:
      x = conv(x.shape[-1], 3, dtype=self.dtype, name="conv")(x)
    return x


class ResBlock(nn.Module):
  """Residual block conditioned on the timestep embedding.

  ``in_layers``: GroupNorm, SiLU, (optional nearest-x2 up / 2x2 average-pool down, applied to
  the residual input as well), 3x3 conv. The embedding goes through SiLU and ``emb_layers_1``;
  it is either added to the features or, with ``use_scale_shift_norm``, split into
  ``(scale, shift)`` and applied as ``norm(h) * (1 + scale) + shift``. ``out_layers``:
  GroupNorm, SiLU, dropout, zero-initialised 3x3 conv. The residual input passes through a
  1x1 conv ``skip_connection`` when the channel count changes.

  Attributes:
    out_channels: output channels.
    dropout: dropout rate before the last conv (active only with ``train=True``).
    use_scale_shift_norm: FiLM-style conditioning instead of an additive one.
    up: upsample by 2 inside the block.
    down: downsample by 2 inside the block.
    dtype: compute dtype.
  """

  out_channels: int
  dropout: float = 0.0
  use_scale_shift_norm: bool = False
  up: bool = False
  down: bool = False
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, emb: jax.Array, *, train: bool = False) -> jax.Array:
    """Maps ``x [B, H, W, C]`` and ``emb [B, E]`` to ``[B, H', W', out_channels]``.

    ``H' = 2H`` with ``up``, ``H/2`` with ``down``, else ``H``.
    """
    h = GroupNorm32(name="in_layers_0")(x, silu=True)
    if self.up:
      h, x = upsample_nearest(h), upsample_nearest(x)
    elif self.down:
      h, x = avg_pool2(h), avg_pool2(x)
    h = conv(self.out_channels, 3, dtype=self.dtype, name="in_layers_2")(h)

    emb_width = 2 * self.out_channels if self.use_scale_shift_norm else self.out_channels
    emb_out = dense(emb_width, name="emb_layers_1")(nn.silu(emb))
    emb_out = emb_out.astype(h.dtype)[:, None, None, :]
    out_norm = GroupNorm32(name="out_layers_0")
    if self.use_scale_shift_norm:
      h = out_norm(h, scale_shift=jnp.split(emb_out, 2, axis=-1), silu=True)
    else:
      h = out_norm(add_per_sample(h, emb_out), silu=True)
    h = nn.Dropout(self.dropout, deterministic=not train)(h)
    h = conv(self.out_channels, 3, zero_init=True, dtype=self.dtype, name="out_layers_3")(h)

    if x.shape[-1] != self.out_channels:
      x = conv(self.out_channels, 1, dtype=self.dtype, name="skip_connection")(x)
    return x + h


class AttentionBlock(nn.Module):
  """Spatial self-attention with a residual connection.

  GroupNorm ``norm``, 1x1 projection ``qkv`` to 3C, multi-head attention, zero-initialised
  1x1 projection ``proj_out``.

  Attributes:
    num_heads: number of heads, used when ``num_head_channels == -1``.
    num_head_channels: channels per head; overrides ``num_heads`` unless -1.
    use_new_attention_order: qkv channels laid out ``[q|k|v][head]`` instead of the legacy
      ``[head][q|k|v]``.
    dtype: compute dtype.
  """

  num_heads: int = 1
  num_head_channels: int = -1
  use_new_attention_order: bool = False
  dtype: Dtype = jnp.float32

  def _heads(self, channels: int) -> int:
    where = "/".join(self.scope.path)
    if self.num_head_channels == -1:
      if channels % self.num_heads:
        raise ValueError(
            f"attention at {where}: {channels} channels cannot be split into "
            f"num_heads={self.num_heads} heads."
        )
      return self.num_heads
    if channels % self.num_head_channels:
      raise ValueError(
          f"attention at {where}: num_head_channels={self.num_head_channels} does not "
          f"divide its {channels} channels."
      )
    return channels // self.num_head_channels

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    """``[B, H, W, C] -> [B, H, W, C]``."""
    b, height, width, channels = x.shape
    heads = self._heads(channels)
    tokens = GroupNorm32(name="norm")(x).reshape(b, height * width, channels)
    qkv = dense(3 * channels, dtype=self.dtype, name="qkv")(tokens)
    h = qkv_attention(qkv, heads, legacy_order=not self.use_new_attention_order)
    h = dense(channels, zero_init=True, dtype=self.dtype, name="proj_out")(h)
    return x + h.reshape(x.shape)


class AttentionPool2d(nn.Module):
  """Attention pooling of the classifier head (always the new qkv order).

  The spatial mean is prepended as token 0, a learned ``positional_embedding`` of shape
  ``[H*W + 1, C]`` is added, then a 1x1 ``qkv_proj``, multi-head attention and a 1x1
  ``c_proj``; only token 0 is returned.

  Attributes:
    spatial_dim: the expected height and width of the input.
    num_head_channels: channels per head.
    output_dim: output width.
  """

  spatial_dim: int
  num_head_channels: int
  output_dim: int

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    """``[B, spatial_dim, spatial_dim, C] -> [B, output_dim]``, in float32."""
    b, height, width, channels = x.shape
    if (height, width) != (self.spatial_dim, self.spatial_dim):
      raise ValueError(
          f"attention pool expects {self.spatial_dim}x{self.spatial_dim} features, got "
          f"{height}x{width}; feed images of the model's image_size."
      )
    if channels % self.num_head_channels:
      raise ValueError(
          f"attention pool: num_head_channels={self.num_head_channels} does not divide "
          f"{channels} channels."
      )
    positional_embedding = self.param(
        "positional_embedding",
        nn.initializers.normal(stddev=channels**-0.5),
        (height * width + 1, channels),
        jnp.float32,
    )
    tokens = x.astype(jnp.float32).reshape(b, height * width, channels)
    tokens = jnp.concatenate([tokens.mean(axis=1, keepdims=True), tokens], axis=1)
    qkv = dense(3 * channels, name="qkv_proj")(tokens + positional_embedding)
    h = qkv_attention(qkv, channels // self.num_head_channels, legacy_order=False)
    return dense(self.output_dim, name="c_proj")(h[:, 0])


def _apply_block(
    layers: Sequence[nn.Module], h: jax.Array, emb: jax.Array, train: bool
) -> jax.Array:
  """Runs one reference ``TimestepEmbedSequential``: only ResBlocks see ``emb``."""
  for layer in layers:
    h = layer(h, emb, train=train) if isinstance(layer, ResBlock) else layer(h)
  return h


class _ADMTrunk(nn.Module):
  """Fields, embedding MLP, encoder blocks and middle block shared by the ADM networks.

  Attributes:
    image_size: nominal input side length (used by the attention-pool head).
    in_channels: channels of ``x``.
    model_channels: base width; the embedding width is ``4 * model_channels``.
    out_channels: output channels (classes for the classifier).
    num_res_blocks: ResBlocks per resolution level in the encoder (one more in the decoder).
    attention_resolutions: downsample rates (1, 2, 4, ...) at which attention is used.
    dropout: ResBlock dropout rate.
    channel_mult: width multiplier per level; ``int(mult * model_channels)`` channels.
    conv_resample: learned convs in Upsample/Downsample.
    num_heads: attention heads when ``num_head_channels == -1``.
    num_head_channels: channels per attention head (-1: use ``num_heads``).
    num_heads_upsample: heads in the decoder (-1: same as ``num_heads``).
    use_scale_shift_norm: FiLM-style embedding conditioning in ResBlocks.
    resblock_updown: resample with ResBlocks instead of Upsample/Downsample.
    use_new_attention_order: qkv layout ``[q|k|v][head]`` instead of ``[head][q|k|v]``.
    dtype: compute dtype of the trunk (params are float32).
  """

  image_size: int
  in_channels: int
  model_channels: int
  out_channels: int
  num_res_blocks: int
  attention_resolutions: Sequence[int]
  dropout: float = 0.0
  channel_mult: Sequence[float] = (1, 2, 4, 8)
  conv_resample: bool = True
  num_heads: int = 1
  num_head_channels: int = -1
  num_heads_upsample: int = -1
  use_scale_shift_norm: bool = False
  resblock_updown: bool = False
  use_new_attention_order: bool = False
  dtype: Dtype = jnp.float32

  def _width(self, mult: float) -> int:
    return int(mult * self.model_channels)

  def _res_block(
      self, out_channels: int, *, up: bool = False, down: bool = False
  ) -> ResBlock:
    return ResBlock(
        out_channels,
        dropout=self.dropout,
        use_scale_shift_norm=self.use_scale_shift_norm,
        up=up,
        down=down,
        dtype=self.dtype,
    )

  def _attention_block(self, num_heads: int) -> AttentionBlock:
    return AttentionBlock(
        num_heads=num_heads,
        num_head_channels=self.num_head_channels,
        use_new_attention_order=self.use_new_attention_order,
        dtype=self.dtype,
    )

  def _encoder_blocks(self) -> list[list[nn.Module]]:
    """The reference ``input_blocks``: stem conv, then ResBlocks (+ attention) and downsamplers."""
    blocks = [[conv(self._width(self.channel_mult[0]), 3, dtype=self.dtype)]]
    ds = 1
    for level, mult in enumerate(self.channel_mult):
      for _ in range(self.num_res_blocks):
        layers = [self._res_block(self._width(mult))]
        if ds in self.attention_resolutions:
          layers.append(self._attention_block(self.num_heads))
        blocks.append(layers)
      if level != len(self.channel_mult) - 1:
        if self.resblock_updown:
          blocks.append([self._res_block(self._width(mult), down=True)])
        else:
          blocks.append([Downsample(self.conv_resample, dtype=self.dtype)])
        ds *= 2
    return blocks

  def setup(self):
    embed_dim = 4 * self.model_channels
    self.time_embed_0 = dense(embed_dim)
    self.time_embed_2 = dense(embed_dim)
    self.input_blocks = self._encoder_blocks()
    bottom = self._width(self.channel_mult[-1])
    self.middle_block = [
        self._res_block(bottom),
        self._attention_block(self.num_heads),
        self._res_block(bottom),
    ]

  def _check_image(self, x: jax.Array) -> None:
    if x.ndim != 4 or x.shape[-1] != self.in_channels:
      raise ValueError(
          f"expected x of shape [B, H, W, {self.in_channels}] (NHWC), got {x.shape}."
      )
    check_image_size(x.shape[1:3], self.channel_mult)

  def _time_embedding(self, timesteps: jax.Array | int | float, batch: int) -> jax.Array:
    """``time_embed(timestep_embedding(t))``: ``[B, 4 * model_channels]`` float32."""
    timesteps = jnp.asarray(timesteps)
    if timesteps.ndim > 1 or (timesteps.ndim == 1 and timesteps.shape[0] != batch):
      raise ValueError(f"expected timesteps of shape [{batch}] or [], got {timesteps.shape}.")
    timesteps = jnp.broadcast_to(timesteps, (batch,))
    emb = timestep_embedding(timesteps, self.model_channels)
    return self.time_embed_2(nn.silu(self.time_embed_0(emb)))

  def _encode(
      self, h: jax.Array, emb: jax.Array, train: bool, stem_features: jax.Array | None = None
  ) -> tuple[jax.Array, list[jax.Array]]:
    """Runs input and middle blocks; returns the middle output and every input block's output.

    ``stem_features`` (optional, ``[B, H, W, width of level 0]``) are added to the stem conv's
    output, before it is kept as a skip connection (SegDiff's image conditioning).
    """
    skips = []
    for index, layers in enumerate(self.input_blocks):
      h = _apply_block(layers, h, emb, train)
      if index == 0 and stem_features is not None:
        if stem_features.shape != h.shape:
          raise ValueError(f"expected stem_features of shape {h.shape}, got "
                           f"{stem_features.shape}.")
        h = h + stem_features.astype(h.dtype)
      skips.append(h)
    return _apply_block(self.middle_block, h, emb, train), skips


class UNetModel(_ADMTrunk):
  """Guided-diffusion's ``UNetModel`` (``dims=2``), channels-last.

  The shared fields (``image_size`` ... ``dtype``) are documented on ``_ADMTrunk``. They come
  first, so pass ``num_classes`` and ``concat_channels`` by keyword.

  Attributes:
    num_classes: number of class labels for class conditioning (None: unconditional).
    concat_channels: extra conditioning channels concatenated after ``x`` on the channel
      axis before the stem conv.
  """

  num_classes: int | None = None
  concat_channels: int = 0

  def _decoder_blocks(self) -> list[list[nn.Module]]:
    """The reference ``output_blocks``: ResBlocks (+ attention) and upsamplers."""
    heads = self.num_heads if self.num_heads_upsample == -1 else self.num_heads_upsample
    ds = 2 ** (len(self.channel_mult) - 1)
    blocks = []
    for level, mult in reversed(list(enumerate(self.channel_mult))):
      for i in range(self.num_res_blocks + 1):
        layers = [self._res_block(self._width(mult))]
        if ds in self.attention_resolutions:
          layers.append(self._attention_block(heads))
        if level and i == self.num_res_blocks:
          if self.resblock_updown:
            layers.append(self._res_block(self._width(mult), up=True))
          else:
            layers.append(Upsample(self.conv_resample, dtype=self.dtype))
          ds //= 2
        blocks.append(layers)
    return blocks

  def setup(self):
    super().setup()
    if self.num_classes is not None:
      self.label_emb = nn.Embed(self.num_classes, 4 * self.model_channels)
    self.output_blocks = self._decoder_blocks()
    self.out_0 = GroupNorm32()
    self.out_2 = conv(self.out_channels, 3, zero_init=True)

  def _num_concat_channels(self) -> int:
    return self.concat_channels

  def _model_input(self, x: jax.Array, concat: jax.Array | None) -> jax.Array:
    """Validates ``x`` and ``concat`` and returns their channel concatenation."""
    self._check_image(x)
    expected = self._num_concat_channels()
    if not expected:
      if concat is not None:
        raise ValueError("concat was given but the model has concat_channels=0.")
      return x
    if concat is None or concat.shape != (*x.shape[:3], expected):
      got = None if concat is None else concat.shape
      raise ValueError(f"expected concat of shape {(*x.shape[:3], expected)}, got {got}.")
    return jnp.concatenate([x, concat.astype(x.dtype)], axis=-1)

  def _embedding(self, timesteps: jax.Array, y: jax.Array | None, batch: int) -> jax.Array:
    emb = self._time_embedding(timesteps, batch)
    if self.num_classes is None:
      if y is not None:
        raise ValueError("labels y were given but the model has num_classes=None.")
      return emb
    if y is None or jnp.shape(y) != (batch,):
      got = None if y is None else jnp.shape(y)
      raise ValueError(
          f"the model is class-conditional (num_classes={self.num_classes}): expected "
          f"integer labels y of shape [{batch}], got {got}."
      )
    return emb + self.label_emb(y)

  def __call__(
      self,
      x: jax.Array,
      timesteps: jax.Array | int | float,
      y: jax.Array | None = None,
      concat: jax.Array | None = None,
      *,
      train: bool = False,
      return_features: bool = False,
      stem_features: jax.Array | None = None,
  ) -> jax.Array | tuple[jax.Array, list[jax.Array]]:
    """Predicts the model output for noisy images.

    Args:
      x: ``[B, H, W, in_channels]`` inputs; H and W divisible by
        ``2 ** (len(channel_mult) - 1)``.
      timesteps: ``[B]`` (or scalar) integer or float timesteps.
      y: ``[B]`` integer labels; required iff ``num_classes`` is set.
      concat: ``[B, H, W, concat_channels]`` conditioning, required iff
        ``concat_channels > 0``.
      train: enables dropout (needs a ``"dropout"`` rng).
      return_features: also return every decoder block's output.
      stem_features: ``[B, H, W, int(channel_mult[0] * model_channels)]`` features added to
        the stem conv's output (SegDiff: the image encoder's output).

    Returns:
      ``[B, H, W, out_channels]`` float32, and with ``return_features`` also the list of
      decoder block outputs (``[B, H_i, W_i, C_i]`` in the compute dtype, coarse to fine).
      The embedding ``emb [B, 4 * model_channels]`` is sown to ``intermediates``.
    """
    h = self._model_input(x, concat)
    emb = self._embedding(timesteps, y, x.shape[0])
    self.sow("intermediates", "emb", emb)
    h, skips = self._encode(h.astype(self.dtype), emb, train, stem_features)
    features = []
    for layers in self.output_blocks:
      h = _apply_block(layers, jnp.concatenate([h, skips.pop()], axis=-1), emb, train)
      features.append(h)
    out = self.out_2(self.out_0(h.astype(jnp.float32), silu=True))
    return (out, features) if return_features else out


class SuperResUNetModel(UNetModel):
  """Guided-diffusion's ``SuperResModel``: a ``UNetModel`` conditioned on a low-res image.

  ``low_res`` is resized bilinearly (half-pixel centres, no antialiasing) to the size of
  ``x`` and concatenated after ``x``, so the stem conv sees ``2 * in_channels`` channels.
  ``concat_channels`` is not used and must stay 0.
  """

  def _num_concat_channels(self) -> int:
    if self.concat_channels:
      raise ValueError("SuperResUNetModel takes no concat_channels; it concatenates low_res.")
    return self.in_channels

  def __call__(
      self,
      x: jax.Array,
      timesteps: jax.Array | int | float,
      low_res: jax.Array,
      y: jax.Array | None = None,
      *,
      train: bool = False,
      return_features: bool = False,
  ) -> jax.Array | tuple[jax.Array, list[jax.Array]]:
    """Like ``UNetModel.__call__``, with ``low_res [B, h, w, in_channels]`` as conditioning."""
    if low_res.ndim != 4 or low_res.shape[0] != x.shape[0]:
      raise ValueError(f"expected low_res of shape [{x.shape[0]}, h, w, C], got {low_res.shape}.")
    upsampled = jax.image.resize(
        low_res.astype(jnp.float32),
        (*x.shape[:3], low_res.shape[-1]),
        method="bilinear",
        antialias=False,
    )
    return super().__call__(
        x, timesteps, y=y, concat=upsampled, train=train, return_features=return_features
    )


_POOLS = ("adaptive", "attention", "spatial", "spatial_v2")


class EncoderUNetModel(_ADMTrunk):
  """Guided-diffusion's ``EncoderUNetModel`` (the noisy-image classifier), channels-last.

  The U-Net encoder and middle block followed by a head chosen by ``pool``:

  * ``"adaptive"``: ``out_0`` GroupNorm, SiLU, global average, zero-initialised 1x1 conv
    ``out_3``.
  * ``"attention"``: ``out_0`` GroupNorm, SiLU, ``AttentionPool2d`` ``out_2`` (needs
    ``num_head_channels`` and inputs of ``image_size``).
  * ``"spatial"``: the spatial means of every input block and the middle block,
    concatenated, then ``out_0`` Dense(2048), ReLU, ``out_2`` Dense.
  * ``"spatial_v2"``: the same features, then ``out_0`` Dense(2048), ``out_1`` GroupNorm,
    SiLU, ``out_3`` Dense.

  The shared fields are documented on ``_ADMTrunk``.

  Attributes:
    pool: one of ``"adaptive"``, ``"attention"``, ``"spatial"``, ``"spatial_v2"``.
  """

  pool: str = "adaptive"

  def setup(self):
    super().setup()
    if self.pool == "adaptive":
      self.out_0 = GroupNorm32()
      self.out_3 = conv(self.out_channels, 1, zero_init=True)
    elif self.pool == "attention":
      if self.num_head_channels == -1:
        raise ValueError('pool="attention" needs num_head_channels != -1.')
      self.out_0 = GroupNorm32()
      self.out_2 = AttentionPool2d(
          spatial_dim=self.image_size // 2 ** (len(self.channel_mult) - 1),
          num_head_channels=self.num_head_channels,
          output_dim=self.out_channels,
      )
    elif self.pool == "spatial":
      self.out_0 = dense(2048)
      self.out_2 = dense(self.out_channels)
    elif self.pool == "spatial_v2":
      self.out_0 = dense(2048)
      self.out_1 = GroupNorm32()
      self.out_3 = dense(self.out_channels)
    else:
      raise ValueError(f"unknown pool {self.pool!r}; expected one of {_POOLS}.")

  def __call__(
      self, x: jax.Array, timesteps: jax.Array | int | float, *, train: bool = False
  ) -> jax.Array:
    """Classifies noisy images.

    Args:
      x: ``[B, H, W, in_channels]`` inputs (``H = W = image_size`` for the attention pool).
      timesteps: ``[B]`` (or scalar) integer or float timesteps.
      train: enables dropout (needs a ``"dropout"`` rng).

    Returns:
      ``[B, out_channels]`` float32 logits. The embedding is sown to ``intermediates``.
    """
    self._check_image(x)
    emb = self._time_embedding(timesteps, x.shape[0])
    self.sow("intermediates", "emb", emb)
    h, skips = self._encode(x.astype(self.dtype), emb, train)
    if self.pool.startswith("spatial"):
      pooled = jnp.concatenate(
          [f.astype(jnp.float32).mean(axis=(1, 2)) for f in (*skips, h)], axis=-1
      )
      if self.pool == "spatial":
        return self.out_2(nn.relu(self.out_0(pooled)))
      return self.out_3(self.out_1(self.out_0(pooled), silu=True))
    h = self.out_0(h.astype(jnp.float32), silu=True)
    if self.pool == "adaptive":
      return self.out_3(h.mean(axis=(1, 2), keepdims=True))[:, 0, 0]
    return self.out_2(h)
