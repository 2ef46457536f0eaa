"""Flax linen networks: the ADM (guided-diffusion) U-Net family and its building blocks."""

from diffseg_jax.nn.layers import (
    GroupNorm32,
    avg_pool2,
    conv,
    dense,
    qkv_attention,
    timestep_embedding,
    upsample_nearest,
)
from diffseg_jax.nn.unet import (
    AttentionBlock,
    AttentionPool2d,
    Downsample,
    EncoderUNetModel,
    ResBlock,
    SuperResUNetModel,
    UNetModel,
    Upsample,
    check_image_size,
)

__all__ = [
    "AttentionBlock",
    "AttentionPool2d",
    "Downsample",
    "EncoderUNetModel",
    "GroupNorm32",
    "ResBlock",
    "SuperResUNetModel",
    "UNetModel",
    "Upsample",
    "avg_pool2",
    "check_image_size",
    "conv",
    "dense",
    "qkv_attention",
    "timestep_embedding",
    "upsample_nearest",
]
