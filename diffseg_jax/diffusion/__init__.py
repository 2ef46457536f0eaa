"""Diffusion maths as pure functions: schedules, the Gaussian process, losses and samplers.

Same maths as openai/guided-diffusion and improved-diffusion, in JAX (float32, channels-last).
"""

from diffseg_jax.diffusion.gaussian_diffusion import (
    LOSS_TYPES,
    MODEL_MEAN_TYPES,
    MODEL_VAR_TYPES,
    GaussianDiffusion,
)
from diffseg_jax.diffusion.likelihood import calc_bpd_loop, prior_bpd
from diffseg_jax.diffusion.losses import (
    approx_standard_normal_cdf,
    discretized_gaussian_log_likelihood,
    mean_flat,
    normal_kl,
)
from diffseg_jax.diffusion.samplers import (
    ddim_reverse,
    ddim_sample,
    ddim_sigma,
    ddim_step,
    ddpm_sample,
    ddpm_step,
)
from diffseg_jax.diffusion.schedules import (
    BETA_SCHEDULES,
    betas_for_alpha_bar,
    cosine_beta_schedule,
    get_beta_schedule,
    linear_beta_schedule,
    space_timesteps,
    sqrt_linear_beta_schedule,
)

__all__ = [
    "BETA_SCHEDULES",
    "LOSS_TYPES",
    "MODEL_MEAN_TYPES",
    "MODEL_VAR_TYPES",
    "GaussianDiffusion",
    "approx_standard_normal_cdf",
    "betas_for_alpha_bar",
    "calc_bpd_loop",
    "cosine_beta_schedule",
    "ddim_reverse",
    "ddim_sample",
    "ddim_sigma",
    "ddim_step",
    "ddpm_sample",
    "ddpm_step",
    "discretized_gaussian_log_likelihood",
    "get_beta_schedule",
    "linear_beta_schedule",
    "mean_flat",
    "normal_kl",
    "prior_bpd",
    "space_timesteps",
    "sqrt_linear_beta_schedule",
]
