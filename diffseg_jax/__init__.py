"""diffseg_jax: diffusion models for image generation and segmentation in JAX/Flax."""

__version__ = "0.1.0"
