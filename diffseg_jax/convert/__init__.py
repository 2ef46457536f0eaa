"""Checkpoint readers and converters from PyTorch reference implementations."""

from diffseg_jax.convert.checkpoint_io import load_state_dict
from diffseg_jax.convert.guided_diffusion import (
    MODELS,
    config_from_flags,
    expected_param_shapes,
    from_guided_diffusion,
)
from diffseg_jax.convert.pytorch_fid import from_pytorch_fid

__all__ = [
    "MODELS",
    "config_from_flags",
    "expected_param_shapes",
    "from_guided_diffusion",
    "from_pytorch_fid",
    "load_state_dict",
]
