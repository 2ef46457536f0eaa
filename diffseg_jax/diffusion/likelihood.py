"""Negative log-likelihood bounds in bits per dimension (Ho et al. 2020, eq. 5).

``-log p(x_0) <= L_T + sum_{t>=1} L_{t-1} + L_0`` with the prior term
``L_T = KL(q(x_T | x_0) || N(0, I))``, the KL terms of the reverse steps and the discretised
decoder term; all divided by the number of dimensions and log 2.
"""

import math
from typing import Any

import jax
import jax.numpy as jnp

from diffseg_jax.diffusion import losses
from diffseg_jax.diffusion.gaussian_diffusion import GaussianDiffusion, ModelFn


def prior_bpd(gd: GaussianDiffusion, x_start: jax.Array) -> jax.Array:
  """The prior term ``KL(q(x_T | x_0) || N(0, I))`` in bits per dimension.

  Independent of the model; near 0 for a schedule that destroys the signal.

  Args:
    gd: the diffusion.
    x_start: x_0 [B, ...] in [-1, 1].

  Returns:
    float32 [B], >= 0.
  """
  t = jnp.full(x_start.shape[:1], gd.num_timesteps - 1, jnp.int32)
  mean, _, log_variance = gd.q_mean_variance(x_start, t)
  kl = losses.normal_kl(mean, log_variance, 0.0, 0.0)
  return losses.mean_flat(kl) / math.log(2.0)


def calc_bpd_loop(
    gd: GaussianDiffusion,
    model_fn: ModelFn,
    params: Any,
    x_start: jax.Array,
    key: jax.Array,
    *,
    clip_denoised: bool = True,
    model_kwargs: dict[str, Any] | None = None,
) -> dict[str, jax.Array]:
  """The full variational bound on ``-log p(x_0)`` and per-step diagnostics.

  One ``jax.lax.scan`` over t = T-1..0 (as guided-diffusion's ``calc_bpd_loop``): at each t,
  ``x_t = q_sample(x_start, t, noise)`` with noise from ``fold_in(key, t)``, and the model's
  output at ``(x_t, t)`` gives the VLB term, the error of ``pred_xstart`` and of the implied eps.

  Args:
    gd: the diffusion.
    model_fn: ``model_fn(params, x_t, t_model, **model_kwargs) -> output``.
    params: model parameters.
    x_start: x_0 float32 [B, ...] in [-1, 1].
    key: PRNG key of the forward noise.
    clip_denoised: clip ``pred_xstart`` to [-1, 1].
    model_kwargs: extra model inputs.

  Returns:
    Dict of float32 arrays; the [B, T] ones are in the scan's (the reference's) order, column
    ``j`` for timestep ``T - 1 - j``:
      "total_bpd" [B]: ``prior_bpd + sum(vb)``, the bound in bits/dim.
      "prior_bpd" [B]: see ``prior_bpd``.
      "vb" [B, T]: the terms ``L_t`` of ``GaussianDiffusion.vb_terms_bpd`` (bits/dim).
      "xstart_mse" [B, T]: ``mean_flat((pred_xstart - x_start)^2)``.
      "mse" [B, T]: ``mean_flat((eps_hat - noise)^2)``, eps_hat implied by pred_xstart.
  """
  x_start = jnp.asarray(x_start, jnp.float32)

  def body(carry, index):
    t = jnp.full(x_start.shape[:1], index, jnp.int32)
    noise = jax.random.normal(jax.random.fold_in(key, index), x_start.shape, jnp.float32)
    x_t = gd.q_sample(x_start, t, noise)
    model_output = gd.apply_model(model_fn, params, x_t, t, model_kwargs)
    out = gd.vb_terms_bpd(model_output, x_start, x_t, t, clip_denoised=clip_denoised)
    eps = gd.predict_eps_from_xstart(x_t, t, out["pred_xstart"])
    terms = (
        out["output"],
        losses.mean_flat(jnp.square(out["pred_xstart"] - x_start)),
        losses.mean_flat(jnp.square(eps - noise)),
    )
    return carry, terms

  indices = jnp.arange(gd.num_timesteps - 1, -1, -1, dtype=jnp.int32)
  _, (vb, xstart_mse, mse) = jax.lax.scan(body, None, indices)
  prior = prior_bpd(gd, x_start)
  return {
      "total_bpd": jnp.sum(vb, axis=0) + prior,
      "prior_bpd": prior,
      "vb": vb.T,
      "xstart_mse": xstart_mse.T,
      "mse": mse.T,
  }
