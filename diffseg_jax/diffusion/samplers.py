"""Ancestral (DDPM) and DDIM samplers, and DDIM inversion, as pure jit-able functions.

Each sampler runs one ``jax.lax.scan`` over the T steps of ``gd`` (respaced or not): the model
is traced once whatever T is, and memory does not grow with T unless the trajectory is asked
for. Per-step randomness comes from ``jax.random.fold_in(key, t)``.

Model convention: ``model_fn(params, x_t, t_model, **model_kwargs) -> output`` with
``t_model = gd.model_timesteps(t)``; ``cond_fn(x_t, t_model, **model_kwargs)`` returns
``grad_x log p(y | x_t)`` (shape of ``x_t``) for classifier guidance (Dhariwal & Nichol 2021).
"""

from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from diffseg_jax.diffusion.gaussian_diffusion import GaussianDiffusion, ModelFn, _extract

CondFn = Callable[..., jax.Array]
DenoisedFn = Callable[[jax.Array], jax.Array]
# (x_known [*shape], known_mask broadcastable to shape, 1 where x_known is kept).
Inpaint = tuple[jax.Array, jax.Array]


def _nonzero_mask(t: jax.Array, ndim: int) -> jax.Array:
  """1.0 where t > 0 else 0.0, shaped [B, 1, ...] for rank ``ndim``."""
  return (t != 0).astype(jnp.float32).reshape(t.shape + (1,) * (ndim - t.ndim))


def _model_out(
    gd: GaussianDiffusion,
    model_fn: ModelFn,
    params: Any,
    x_t: jax.Array,
    t: jax.Array,
    model_kwargs: dict[str, Any] | None,
    clip_denoised: bool,
    denoised_fn: DenoisedFn | None,
) -> dict[str, jax.Array]:
  model_output = gd.apply_model(model_fn, params, x_t, t, model_kwargs)
  return gd.p_mean_variance(
      model_output, x_t, t, clip_denoised=clip_denoised, denoised_fn=denoised_fn
  )


def ddpm_step(
    gd: GaussianDiffusion,
    model_fn: ModelFn,
    params: Any,
    x_t: jax.Array,
    t: jax.Array,
    key: jax.Array,
    *,
    model_kwargs: dict[str, Any] | None = None,
    clip_denoised: bool = True,
    denoised_fn: DenoisedFn | None = None,
    cond_fn: CondFn | None = None,
) -> dict[str, jax.Array]:
  """One ancestral step ``x_{t-1} ~ p(x_{t-1} | x_t)`` (Ho et al. 2020, alg. 2).

  With ``cond_fn`` the mean is shifted by ``variance * grad log p(y | x_t)`` (Dhariwal &
  Nichol 2021, alg. 1). No noise is added where t == 0.

  Args:
    gd: the diffusion.
    model_fn: see the module docstring.
    params: model parameters.
    x_t: float32 [B, ...].
    t: int32 [B], indices into ``gd``'s chain.
    key: PRNG key of the step's noise.
    model_kwargs: extra model (and ``cond_fn``) inputs.
    clip_denoised: clip ``pred_xstart`` to [-1, 1].
    denoised_fn: applied to ``pred_xstart`` before clipping.
    cond_fn: guidance gradient, see the module docstring.

  Returns:
    ``p_mean_variance``'s dict (with the guided "mean") plus "sample", x_{t-1} of ``x_t``'s shape.
  """
  out = _model_out(gd, model_fn, params, x_t, t, model_kwargs, clip_denoised, denoised_fn)
  if cond_fn is not None:
    gradient = cond_fn(x_t, gd.model_timesteps(t), **(model_kwargs or {}))
    out["mean"] = out["mean"] + out["variance"] * gradient
  noise = jax.random.normal(key, x_t.shape, jnp.float32)
  out["sample"] = (
      out["mean"] + _nonzero_mask(t, x_t.ndim) * jnp.exp(0.5 * out["log_variance"]) * noise
  )
  return out


def ddim_sigma(gd: GaussianDiffusion, t: jax.Array, eta: float) -> jax.Array:
  """DDIM's noise scale ``sigma_t(eta)`` (Song et al. 2020, eq. 16).

  ``sigma = eta * sqrt((1 - abar_{t-1}) / (1 - abar_t)) * sqrt(1 - abar_t / abar_{t-1})``,
  which is ``eta * sqrt(beta~_t)``: eta=1 gives the DDPM posterior's standard deviation
  (fixed_small), eta=0 the deterministic DDIM. Computed from the float64 ``beta~_t``.

  Args:
    gd: the diffusion.
    t: int [B].
    eta: >= 0, python or traced float.

  Returns:
    float32 of ``t``'s shape.
  """
  return eta * jnp.asarray(np.sqrt(gd.posterior_variance), jnp.float32)[t]


def _condition_score(
    gd: GaussianDiffusion,
    cond_fn: CondFn,
    out: dict[str, jax.Array],
    x_t: jax.Array,
    t: jax.Array,
    model_kwargs: dict[str, Any] | None,
) -> dict[str, jax.Array]:
  """Score-based guidance: ``eps <- eps - sqrt(1 - abar_t) grad log p(y | x_t)``.

  Dhariwal & Nichol 2021, alg. 2; ``pred_xstart`` and the mean follow the new eps.
  """
  gradient = cond_fn(x_t, gd.model_timesteps(t), **(model_kwargs or {}))
  eps = out["eps"] - _extract(gd.sqrt_one_minus_alphas_cumprod, t, x_t.ndim) * gradient
  pred_xstart = gd.predict_xstart_from_eps(x_t, t, eps)
  mean, _, _ = gd.q_posterior_mean_variance(pred_xstart, x_t, t)
  return {**out, "eps": eps, "pred_xstart": pred_xstart, "mean": mean}


def ddim_step(
    gd: GaussianDiffusion,
    model_fn: ModelFn,
    params: Any,
    x_t: jax.Array,
    t: jax.Array,
    key: jax.Array,
    *,
    eta: float = 0.0,
    model_kwargs: dict[str, Any] | None = None,
    clip_denoised: bool = True,
    denoised_fn: DenoisedFn | None = None,
    cond_fn: CondFn | None = None,
) -> dict[str, jax.Array]:
  """One DDIM step (Song et al. 2020, eq. 12).

  ``x_{t-1} = sqrt(abar_{t-1}) x0_hat + sqrt(1 - abar_{t-1} - sigma_t^2) eps_hat
  + sigma_t z`` with ``sigma_t = ddim_sigma(gd, t, eta)`` and ``z`` standard normal (none at
  t == 0, where abar_{t-1} = 1 gives x0_hat). ``cond_fn`` guides the score (``_condition_score``).

  Args:
    gd: the diffusion.
    model_fn: see the module docstring.
    params: model parameters.
    x_t: float32 [B, ...].
    t: int32 [B].
    key: PRNG key of the step's noise (unused when eta == 0).
    eta: 0 for deterministic DDIM, 1 for DDPM-like noise.
    model_kwargs: extra model (and ``cond_fn``) inputs.
    clip_denoised: clip ``pred_xstart`` to [-1, 1].
    denoised_fn: applied to ``pred_xstart`` before clipping.
    cond_fn: guidance gradient, see the module docstring.

  Returns:
    ``p_mean_variance``'s dict (guided) plus "sample", x_{t-1} of ``x_t``'s shape.
  """
  out = _model_out(gd, model_fn, params, x_t, t, model_kwargs, clip_denoised, denoised_fn)
  if cond_fn is not None:
    out = _condition_score(gd, cond_fn, out, x_t, t, model_kwargs)
  ndim = x_t.ndim
  abar_prev = _extract(gd.alphas_cumprod_prev, t, ndim)
  sigma = ddim_sigma(gd, t, eta).reshape(abar_prev.shape)
  mean = (
      out["pred_xstart"] * jnp.sqrt(abar_prev)
      + jnp.sqrt(_extract(1.0 - gd.alphas_cumprod_prev, t, ndim) - sigma**2) * out["eps"]
  )
  noise = jax.random.normal(key, x_t.shape, jnp.float32)
  out["sample"] = mean + _nonzero_mask(t, ndim) * sigma * noise
  return out


def _paste_known(
    gd: GaussianDiffusion, x: jax.Array, inpaint: Inpaint, t: jax.Array, key: jax.Array
) -> jax.Array:
  """Replaces the known region of ``x`` by ``x_known`` noised to index ``t``.

  Args:
    gd: the diffusion.
    x: state [B, ...].
    inpaint: ``(x_known, known_mask)``.
    t: int32 scalar index of ``x`` in [0, T), or -1 when ``x`` is the final x_0 (then the known
      region is ``x_known`` itself).
    key: PRNG key of the forward noise.

  Returns:
    ``x`` with its known region replaced, same shape.
  """
  x_known, known_mask = (jnp.asarray(a, jnp.float32) for a in inpaint)
  t_batch = jnp.full(x.shape[:1], jnp.maximum(t, 0), jnp.int32)
  noisy = gd.q_sample(x_known, t_batch, jax.random.normal(key, x.shape, jnp.float32))
  target = jnp.where(t >= 0, noisy, x_known)
  return known_mask * target + (1.0 - known_mask) * x


def _sample_loop(
    gd: GaussianDiffusion,
    step: Callable[[jax.Array, jax.Array, jax.Array], jax.Array],
    key: jax.Array,
    shape: Sequence[int],
    inpaint: Inpaint | None,
    noise: jax.Array | None,
    return_trajectory: bool,
) -> jax.Array | tuple[jax.Array, jax.Array]:
  """Runs ``x <- step(x, t, key)`` for t = T-1..0 in one scan, from x_T = ``noise``."""
  shape = tuple(shape)
  init_key, known_key, loop_key = jax.random.split(key, 3)
  if noise is None:
    x = jax.random.normal(init_key, shape, jnp.float32)
  else:
    x = jnp.asarray(noise, jnp.float32)
  num_timesteps = gd.num_timesteps
  if inpaint is not None:
    x = _paste_known(gd, x, inpaint, jnp.int32(num_timesteps - 1), known_key)

  def body(x, index):
    step_key, known_key = jax.random.split(jax.random.fold_in(loop_key, index))
    x = step(x, jnp.full(shape[:1], index, jnp.int32), step_key)
    if inpaint is not None:
      x = _paste_known(gd, x, inpaint, index - 1, known_key)
    return x, (x if return_trajectory else None)

  indices = jnp.arange(num_timesteps - 1, -1, -1, dtype=jnp.int32)
  x, trajectory = jax.lax.scan(body, x, indices)
  return (x, trajectory) if return_trajectory else x


def ddpm_sample(
    gd: GaussianDiffusion,
    model_fn: ModelFn,
    params: Any,
    key: jax.Array,
    shape: Sequence[int],
    *,
    model_kwargs: dict[str, Any] | None = None,
    clip_denoised: bool = True,
    denoised_fn: DenoisedFn | None = None,
    cond_fn: CondFn | None = None,
    inpaint: Inpaint | None = None,
    noise: jax.Array | None = None,
    return_trajectory: bool = False,
) -> jax.Array | tuple[jax.Array, jax.Array]:
  """Ancestral sampling over all T steps of ``gd`` (Ho et al. 2020, alg. 2).

  Inpainting (``inpaint=(x_known, known_mask)``, RePaint-style without resampling): x_T's
  known region is ``q_sample(x_known, T-1)``, after each step to x_{t-1} (t > 0) it is
  ``q_sample(x_known, t-1)`` with fresh noise, and in the final x_0 it is ``x_known`` exactly.

  Args:
    gd: the diffusion (respaced ones sample on their kept steps).
    model_fn: see the module docstring.
    params: model parameters.
    key: PRNG key.
    shape: static [B, ...] of the samples.
    model_kwargs: extra model (and ``cond_fn``) inputs.
    clip_denoised: clip ``pred_xstart`` to [-1, 1] at each step.
    denoised_fn: applied to ``pred_xstart`` before clipping.
    cond_fn: guidance gradient, see the module docstring.
    inpaint: ``(x_known [*shape], known_mask)``, mask broadcastable to ``shape``, 1 where known.
    noise: x_T [*shape]; drawn from ``key`` if None.
    return_trajectory: also return the state after every step.

  Returns:
    x_0 float32 [*shape] (in [-1, 1] only up to the last step's noise-free mean), or
    ``(x_0, trajectory)`` with trajectory [T, *shape]: ``trajectory[i]`` is the state after
    ``i + 1`` steps, so ``trajectory[-1]`` is x_0.
  """

  def step(x, t, step_key):
    return ddpm_step(
        gd, model_fn, params, x, t, step_key, model_kwargs=model_kwargs,
        clip_denoised=clip_denoised, denoised_fn=denoised_fn, cond_fn=cond_fn,
    )["sample"]

  return _sample_loop(gd, step, key, shape, inpaint, noise, return_trajectory)


def ddim_sample(
    gd: GaussianDiffusion,
    model_fn: ModelFn,
    params: Any,
    key: jax.Array,
    shape: Sequence[int],
    *,
    eta: float = 0.0,
    model_kwargs: dict[str, Any] | None = None,
    clip_denoised: bool = True,
    denoised_fn: DenoisedFn | None = None,
    cond_fn: CondFn | None = None,
    inpaint: Inpaint | None = None,
    noise: jax.Array | None = None,
    return_trajectory: bool = False,
) -> jax.Array | tuple[jax.Array, jax.Array]:
  """DDIM sampling over all T steps of ``gd`` (Song et al. 2020); respace ``gd`` to go faster.

  Arguments and returns as ``ddpm_sample``, plus ``eta`` (0: deterministic given x_T; 1:
  DDPM's posterior noise, see ``ddim_sigma``).
  """

  def step(x, t, step_key):
    return ddim_step(
        gd, model_fn, params, x, t, step_key, eta=eta, model_kwargs=model_kwargs,
        clip_denoised=clip_denoised, denoised_fn=denoised_fn, cond_fn=cond_fn,
    )["sample"]

  return _sample_loop(gd, step, key, shape, inpaint, noise, return_trajectory)


def ddim_reverse(
    gd: GaussianDiffusion,
    model_fn: ModelFn,
    params: Any,
    x0: jax.Array,
    *,
    model_kwargs: dict[str, Any] | None = None,
    clip_denoised: bool = True,
    denoised_fn: DenoisedFn | None = None,
) -> jax.Array:
  """Deterministic DDIM encoding of data into the latent ``ddim_sample`` starts from.

  Runs guided-diffusion's ``ddim_reverse_sample`` step ``x_{t+1} = sqrt(abar_{t+1}) x0_hat +
  sqrt(1 - abar_{t+1}) eps_hat`` (the eta=0 DDIM ODE integrated forwards, Song et al. 2020
  sec. 4.3) for t = 0..T-2, with the model evaluated at ``(x_t, t)``. Its output is the state
  at index T-1, which is what ``ddim_sample(..., noise=x_T, eta=0)`` starts from, so sampling
  from it reconstructs ``x0`` up to the ODE discretisation error. (The reference's extra step to
  ``abar = 0`` is left out: the sampler never starts from that state.)

  Args:
    gd: the diffusion.
    model_fn: see the module docstring.
    params: model parameters.
    x0: data float32 [B, ...] in [-1, 1].
    model_kwargs: extra model inputs.
    clip_denoised: clip ``pred_xstart`` to [-1, 1].
    denoised_fn: applied to ``pred_xstart`` before clipping.

  Returns:
    x_T float32, shape of ``x0``.
  """
  x0 = jnp.asarray(x0, jnp.float32)

  def body(x, index):
    t = jnp.full(x.shape[:1], index, jnp.int32)
    out = _model_out(gd, model_fn, params, x, t, model_kwargs, clip_denoised, denoised_fn)
    abar_next = _extract(gd.alphas_cumprod_next, t, x.ndim)
    one_minus_abar_next = _extract(1.0 - gd.alphas_cumprod_next, t, x.ndim)
    x = out["pred_xstart"] * jnp.sqrt(abar_next) + jnp.sqrt(one_minus_abar_next) * out["eps"]
    return x, None

  x, _ = jax.lax.scan(body, x0, jnp.arange(gd.num_timesteps - 1, dtype=jnp.int32))
  return x
