"""Gaussian diffusion: forward process, posterior, model parameterisations and training losses.

Notation (Ho et al. 2020, "DDPM"): ``alpha_t = 1 - beta_t``, ``abar_t = prod_{s<=t} alpha_s``,
forward marginal ``q(x_t | x_0) = N(sqrt(abar_t) x_0, (1 - abar_t) I)`` (eq. 4) and
posterior ``q(x_{t-1} | x_t, x_0) = N(mu~_t, beta~_t I)`` (eqs. 6-7). Timesteps are 0-based
as in guided-diffusion: index ``t`` in [0, T) is the chain's ``t + 1`` in the paper.

Arrays are channels-last (NHWC images), but the maths only assumes a leading batch axis and a
channel axis at -1 (learned variances are concatenated there).
"""

import dataclasses
import math
from collections.abc import Callable, Iterable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from diffseg_jax.diffusion import losses

MODEL_MEAN_TYPES = ("eps", "x0", "v")
MODEL_VAR_TYPES = ("fixed_small", "fixed_large", "learned_range", "learned")
LOSS_TYPES = ("mse", "rescaled_mse", "kl", "rescaled_kl")

ModelFn = Callable[..., jax.Array]


def _check_choice(kind: str, value: str, valid: tuple[str, ...]) -> None:
  if value not in valid:
    raise ValueError(f"unknown {kind} {value!r}; valid values are {', '.join(valid)}.")


def _extract(arr: np.ndarray, t: jax.Array, ndim: int) -> jax.Array:
  """``arr[t]`` as float32, with trailing singleton axes up to rank ``ndim``.

  Args:
    arr: float64 [T] schedule array.
    t: int timesteps, usually [B].
    ndim: rank of the array the result multiplies.

  Returns:
    float32 of shape ``t.shape + (1,) * (ndim - t.ndim)``.
  """
  values = jnp.asarray(arr, jnp.float32)[jnp.asarray(t)]
  return values.reshape(values.shape + (1,) * (ndim - values.ndim))


def _checked_betas(betas: Iterable[float]) -> np.ndarray:
  """``betas`` as float64 [T], checked to be 1-D, T >= 2 and in (0, 1)."""
  betas = np.array(betas, dtype=np.float64)
  if betas.ndim != 1 or betas.shape[0] < 2:
    raise ValueError(
        "betas must be 1-D with at least 2 steps (t=0 borrows t=1's posterior variance, so a "
        f"respaced chain must keep 2 or more timesteps too); got shape {betas.shape}."
    )
  if not np.all((betas > 0) & (betas < 1)):
    raise ValueError(
        f"betas must lie in (0, 1); got min {betas.min()}, max {betas.max()}. A beta of 1 "
        "makes alpha-bar 0 and x0 from the predicted noise infinite."
    )
  return betas


def _frozen(arr: np.ndarray) -> np.ndarray:
  arr.flags.writeable = False
  return arr


@dataclasses.dataclass(frozen=True, eq=False)
class GaussianDiffusion:
  """A diffusion process of ``T`` steps and the parameterisation of its reverse model.

  Build with ``GaussianDiffusion.create``. Holds only static float64 numpy arrays and
  strings: equal configurations compare and hash equal, so an instance can be closed over in
  ``jax.jit`` or passed as a static argument. Methods take and return float32 jax arrays; ``t``
  is always an int array [B] of indices in [0, T) of this (possibly respaced) chain.

  Attributes:
    betas: float64 [T], forward variances (respaced ones when ``timestep_map`` skips steps).
    timestep_map: int64 [T], the original timestep each index stands for.
    original_num_timesteps: length of the chain before respacing.
    model_mean_type: what the model predicts: "eps" (noise), "x0" or "v"
      (``v = sqrt(abar) eps - sqrt(1 - abar) x0``, Salimans & Ho 2022).
    model_var_type: "fixed_small" (posterior variance beta~_t), "fixed_large" (beta_t),
      "learned_range" (interpolation between the two in log space, Nichol & Dhariwal 2021
      eq. 15) or "learned" (log-variance directly).
    loss_type: "mse", "rescaled_mse" (with learned variance: ADM's L_hybrid, the VLB term scaled
      by T/1000), "kl" or "rescaled_kl" (VLB only, the latter times T).
    rescale_timesteps: if True the model sees ``t * 1000 / original_num_timesteps`` as float32.
    alphas_cumprod, alphas_cumprod_prev, alphas_cumprod_next: float64 [T], ``abar_t``,
      ``abar_{t-1}`` (1 at t=0) and ``abar_{t+1}`` (0 at t=T-1).
    posterior_variance: float64 [T], beta~_t (Ho et al. eq. 7); 0 at t=0.
    posterior_log_variance_clipped: float64 [T], log beta~_t with t=0 taking t=1's value.
    posterior_mean_coef1, posterior_mean_coef2: float64 [T], mu~_t = coef1 x_0 + coef2 x_t.
  """

  betas: np.ndarray
  timestep_map: np.ndarray
  original_num_timesteps: int
  model_mean_type: str = "eps"
  model_var_type: str = "fixed_small"
  loss_type: str = "mse"
  rescale_timesteps: bool = False
  alphas_cumprod: np.ndarray = dataclasses.field(init=False, repr=False)
  alphas_cumprod_prev: np.ndarray = dataclasses.field(init=False, repr=False)
  alphas_cumprod_next: np.ndarray = dataclasses.field(init=False, repr=False)
  sqrt_alphas_cumprod: np.ndarray = dataclasses.field(init=False, repr=False)
  sqrt_one_minus_alphas_cumprod: np.ndarray = dataclasses.field(init=False, repr=False)
  log_one_minus_alphas_cumprod: np.ndarray = dataclasses.field(init=False, repr=False)
  sqrt_recip_alphas_cumprod: np.ndarray = dataclasses.field(init=False, repr=False)
  sqrt_recipm1_alphas_cumprod: np.ndarray = dataclasses.field(init=False, repr=False)
  posterior_variance: np.ndarray = dataclasses.field(init=False, repr=False)
  posterior_log_variance_clipped: np.ndarray = dataclasses.field(init=False, repr=False)
  posterior_mean_coef1: np.ndarray = dataclasses.field(init=False, repr=False)
  posterior_mean_coef2: np.ndarray = dataclasses.field(init=False, repr=False)

  def __post_init__(self):
    _check_choice("model_mean_type", self.model_mean_type, MODEL_MEAN_TYPES)
    _check_choice("model_var_type", self.model_var_type, MODEL_VAR_TYPES)
    _check_choice("loss_type", self.loss_type, LOSS_TYPES)
    betas = _checked_betas(self.betas)
    timestep_map = np.array(self.timestep_map, dtype=np.int64)
    if timestep_map.shape != betas.shape:
      raise ValueError(
          f"timestep_map has shape {timestep_map.shape} but betas {betas.shape}; give one original "
          "timestep per step."
      )
    alphas_cumprod = np.cumprod(1.0 - betas)
    alphas_cumprod_prev = np.append(1.0, alphas_cumprod[:-1])
    posterior_variance = betas * (1.0 - alphas_cumprod_prev) / (1.0 - alphas_cumprod)
    arrays = {
        "betas": betas,
        "timestep_map": timestep_map,
        "alphas_cumprod": alphas_cumprod,
        "alphas_cumprod_prev": alphas_cumprod_prev,
        "alphas_cumprod_next": np.append(alphas_cumprod[1:], 0.0),
        "sqrt_alphas_cumprod": np.sqrt(alphas_cumprod),
        "sqrt_one_minus_alphas_cumprod": np.sqrt(1.0 - alphas_cumprod),
        "log_one_minus_alphas_cumprod": np.log(1.0 - alphas_cumprod),
        "sqrt_recip_alphas_cumprod": np.sqrt(1.0 / alphas_cumprod),
        "sqrt_recipm1_alphas_cumprod": np.sqrt(1.0 / alphas_cumprod - 1.0),
        "posterior_variance": posterior_variance,
        # beta~_0 = 0, so its log is replaced by beta~_1's (as guided-diffusion).
        "posterior_log_variance_clipped": np.log(
            np.append(posterior_variance[1], posterior_variance[1:])
        ),
        "posterior_mean_coef1": betas * np.sqrt(alphas_cumprod_prev) / (1.0 - alphas_cumprod),
        "posterior_mean_coef2": (
            (1.0 - alphas_cumprod_prev) * np.sqrt(1.0 - betas) / (1.0 - alphas_cumprod)
        ),
    }
    for name, value in arrays.items():
      object.__setattr__(self, name, _frozen(value))

  @classmethod
  def create(
      cls,
      betas: np.ndarray,
      *,
      model_mean_type: str = "eps",
      model_var_type: str = "fixed_small",
      loss_type: str = "mse",
      use_timesteps: Iterable[int] | None = None,
      rescale_timesteps: bool = False,
  ) -> "GaussianDiffusion":
    """Builds a diffusion from a beta schedule, optionally respaced.

    Respacing (guided-diffusion's ``SpacedDiffusion``, Nichol & Dhariwal 2021 sec. 4) keeps
    the original ``abar`` at the kept steps ``k_0 < k_1 < ...``: the new betas are
    ``1 - abar[k_i] / abar[k_{i-1}]`` (``abar[k_{-1}] = 1``), and the model is called with the
    original timesteps ``k_i``.

    Args:
      betas: float [T] forward variances, e.g. from ``get_beta_schedule``.
      model_mean_type: one of ``MODEL_MEAN_TYPES``.
      model_var_type: one of ``MODEL_VAR_TYPES``.
      loss_type: one of ``LOSS_TYPES``.
      use_timesteps: original timesteps to keep (e.g. from ``space_timesteps``); None keeps all.
      rescale_timesteps: show the model ``t * 1000 / T`` (float) instead of ``t``.

    Returns:
      The diffusion, with ``num_timesteps = len(use_timesteps)`` when respaced.

    Raises:
      ValueError: invalid betas, unknown type names, or a kept timestep outside [0, T).
    """
    betas = _checked_betas(betas)
    original_num_timesteps = int(betas.shape[0])
    timestep_map = np.arange(original_num_timesteps)
    if use_timesteps is not None:
      kept = sorted({int(k) for k in use_timesteps})
      outside = [k for k in kept if not 0 <= k < original_num_timesteps]
      if outside:
        raise ValueError(
            f"use_timesteps entries {outside} are outside [0, {original_num_timesteps}); keep only "
            "timesteps of the original chain (see space_timesteps)."
        )
      alphas_cumprod = np.cumprod(1.0 - betas)[kept]
      betas = 1.0 - alphas_cumprod / np.append(1.0, alphas_cumprod[:-1])
      timestep_map = np.array(kept)
    return cls(
        betas=betas,
        timestep_map=timestep_map,
        original_num_timesteps=original_num_timesteps,
        model_mean_type=model_mean_type,
        model_var_type=model_var_type,
        loss_type=loss_type,
        rescale_timesteps=rescale_timesteps,
    )

  def _key(self) -> tuple[Any, ...]:
    return (
        self.betas.tobytes(),
        self.timestep_map.tobytes(),
        self.original_num_timesteps,
        self.model_mean_type,
        self.model_var_type,
        self.loss_type,
        self.rescale_timesteps,
    )

  def __eq__(self, other: object) -> bool:
    return isinstance(other, GaussianDiffusion) and self._key() == other._key()

  def __hash__(self) -> int:
    return hash(self._key())

  @property
  def num_timesteps(self) -> int:
    """T, the number of steps of this (possibly respaced) chain."""
    return int(self.betas.shape[0])

  @property
  def learned_variance(self) -> bool:
    """Whether the model outputs 2C channels: the mean parameterisation, then the variance."""
    return self.model_var_type in ("learned", "learned_range")

  def model_timesteps(self, t: jax.Array) -> jax.Array:
    """Maps indices [B] to the timesteps the model sees.

    Returns:
      ``timestep_map[t]`` as int32 [B], or as float32 times ``1000 / original_num_timesteps``
      when ``rescale_timesteps``.
    """
    mapped = jnp.asarray(self.timestep_map, jnp.int32)[jnp.asarray(t)]
    if self.rescale_timesteps:
      return mapped.astype(jnp.float32) * (1000.0 / self.original_num_timesteps)
    return mapped

  def apply_model(
      self,
      model_fn: ModelFn,
      params: Any,
      x_t: jax.Array,
      t: jax.Array,
      model_kwargs: dict[str, Any] | None = None,
  ) -> jax.Array:
    """Calls ``model_fn(params, x_t, model_timesteps(t), **model_kwargs)``.

    Returns:
      The model output: [..., C], or [..., 2C] with learned variance.
    """
    return model_fn(params, x_t, self.model_timesteps(t), **(model_kwargs or {}))

  def q_mean_variance(
      self, x_start: jax.Array, t: jax.Array
  ) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Moments of ``q(x_t | x_0)`` (Ho et al. eq. 4).

    Args:
      x_start: x_0 [B, ...].
      t: int [B].

    Returns:
      ``(mean, variance, log_variance)``, each of ``x_start``'s shape.
    """
    shape, ndim = x_start.shape, x_start.ndim
    mean = _extract(self.sqrt_alphas_cumprod, t, ndim) * x_start
    variance = jnp.broadcast_to(_extract(1.0 - self.alphas_cumprod, t, ndim), shape)
    log_variance = jnp.broadcast_to(_extract(self.log_one_minus_alphas_cumprod, t, ndim), shape)
    return mean, variance, log_variance

  def q_sample(self, x_start: jax.Array, t: jax.Array, noise: jax.Array) -> jax.Array:
    """Draws ``x_t = sqrt(abar_t) x_0 + sqrt(1 - abar_t) noise`` (Ho et al. eq. 4).

    Args:
      x_start: x_0 [B, ...].
      t: int [B].
      noise: standard normal, shape of ``x_start``.

    Returns:
      x_t, shape of ``x_start``.
    """
    ndim = x_start.ndim
    return (
        _extract(self.sqrt_alphas_cumprod, t, ndim) * x_start
        + _extract(self.sqrt_one_minus_alphas_cumprod, t, ndim) * noise
    )

  def q_posterior_mean_variance(
      self, x_start: jax.Array, x_t: jax.Array, t: jax.Array
  ) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Moments of ``q(x_{t-1} | x_t, x_0)`` (Ho et al. eqs. 6-7).

    Args:
      x_start: x_0 [B, ...].
      x_t: [B, ...], same shape.
      t: int [B].

    Returns:
      ``(mean, variance, log_variance_clipped)``, each of ``x_t``'s shape; at t=0 the mean
      is x_0, the variance 0 and the log-variance t=1's.
    """
    shape, ndim = x_t.shape, x_t.ndim
    mean = (
        _extract(self.posterior_mean_coef1, t, ndim) * x_start
        + _extract(self.posterior_mean_coef2, t, ndim) * x_t
    )
    variance = jnp.broadcast_to(_extract(self.posterior_variance, t, ndim), shape)
    log_variance = jnp.broadcast_to(_extract(self.posterior_log_variance_clipped, t, ndim), shape)
    return mean, variance, log_variance

  def predict_xstart_from_eps(self, x_t: jax.Array, t: jax.Array, eps: jax.Array) -> jax.Array:
    """Inverts eq. 4: ``x_0 = (x_t - sqrt(1 - abar_t) eps) / sqrt(abar_t)``."""
    ndim = x_t.ndim
    return (
        _extract(self.sqrt_recip_alphas_cumprod, t, ndim) * x_t
        - _extract(self.sqrt_recipm1_alphas_cumprod, t, ndim) * eps
    )

  def predict_eps_from_xstart(
      self, x_t: jax.Array, t: jax.Array, x_start: jax.Array
  ) -> jax.Array:
    """Inverts eq. 4 for the noise: ``eps = (x_t - sqrt(abar_t) x_0) / sqrt(1 - abar_t)``."""
    ndim = x_t.ndim
    return (
        _extract(self.sqrt_recip_alphas_cumprod, t, ndim) * x_t - x_start
    ) / _extract(self.sqrt_recipm1_alphas_cumprod, t, ndim)

  def predict_xstart_from_v(self, x_t: jax.Array, t: jax.Array, v: jax.Array) -> jax.Array:
    """``x_0 = sqrt(abar_t) x_t - sqrt(1 - abar_t) v`` (Salimans & Ho 2022, sec. 4)."""
    ndim = x_t.ndim
    return (
        _extract(self.sqrt_alphas_cumprod, t, ndim) * x_t
        - _extract(self.sqrt_one_minus_alphas_cumprod, t, ndim) * v
    )

  def predict_v(self, x_start: jax.Array, t: jax.Array, eps: jax.Array) -> jax.Array:
    """The v-prediction target ``v = sqrt(abar_t) eps - sqrt(1 - abar_t) x_0``."""
    ndim = x_start.ndim
    return (
        _extract(self.sqrt_alphas_cumprod, t, ndim) * eps
        - _extract(self.sqrt_one_minus_alphas_cumprod, t, ndim) * x_start
    )

  def split_model_output(
      self, model_output: jax.Array, x_t: jax.Array
  ) -> tuple[jax.Array, jax.Array | None]:
    """Splits a model output into its mean part [..., C] and variance part [..., C] (or None).

    Raises:
      ValueError: the channel count does not match ``x_t`` and ``model_var_type``.
    """
    channels = x_t.shape[-1]
    expected = 2 * channels if self.learned_variance else channels
    if model_output.shape[:-1] != x_t.shape[:-1] or model_output.shape[-1] != expected:
      raise ValueError(
          f"model output has shape {model_output.shape}; with model_var_type="
          f"{self.model_var_type!r} and x_t of shape {x_t.shape} it must end in {expected} "
          "channels (2C for learned variance: mean part then variance part)."
      )
    if not self.learned_variance:
      return model_output, None
    return model_output[..., :channels], model_output[..., channels:]

  def _model_variance(
      self, var_values: jax.Array | None, x_t: jax.Array, t: jax.Array
  ) -> tuple[jax.Array, jax.Array]:
    """``(variance, log_variance)`` of ``p(x_{t-1} | x_t)``, each of ``x_t``'s shape."""
    shape, ndim = x_t.shape, x_t.ndim
    if self.model_var_type == "learned":
      return jnp.exp(var_values), var_values
    if self.model_var_type == "learned_range":
      # Nichol & Dhariwal 2021 eq. 15: v in [-1, 1] interpolates log beta~_t .. log beta_t.
      frac = (var_values + 1.0) / 2.0
      max_log = _extract(np.log(self.betas), t, ndim)
      min_log = _extract(self.posterior_log_variance_clipped, t, ndim)
      log_variance = frac * max_log + (1.0 - frac) * min_log
      return jnp.exp(log_variance), log_variance
    if self.model_var_type == "fixed_large":
      # beta_t, except at t=0 where beta~_1 keeps the decoder's variance small.
      variance = np.append(self.posterior_variance[1], self.betas[1:])
      log_variance = np.log(variance)
    else:
      variance, log_variance = self.posterior_variance, self.posterior_log_variance_clipped
    return (
        jnp.broadcast_to(_extract(variance, t, ndim), shape),
        jnp.broadcast_to(_extract(log_variance, t, ndim), shape),
    )

  def p_mean_variance(
      self,
      model_output: jax.Array,
      x_t: jax.Array,
      t: jax.Array,
      *,
      clip_denoised: bool = True,
      denoised_fn: Callable[[jax.Array], jax.Array] | None = None,
  ) -> dict[str, jax.Array]:
    """Moments of the reverse step ``p(x_{t-1} | x_t)`` from a model output.

    The model's prediction is turned into ``pred_xstart`` (then ``denoised_fn``, then clipping
    to [-1, 1]) and the mean is the posterior mean ``mu~_t(pred_xstart, x_t)`` (Ho et al.
    eq. 7; eq. 11 for eps).

    Args:
      model_output: [..., C] or [..., 2C] (learned variance), from ``apply_model``.
      x_t: [B, ..., C].
      t: int [B].
      clip_denoised: clip ``pred_xstart`` to [-1, 1].
      denoised_fn: applied to ``pred_xstart`` before clipping.

    Returns:
      Dict of arrays of ``x_t``'s shape: "mean", "variance", "log_variance", "pred_xstart" and
      "eps" (the noise implied by ``pred_xstart``, as DDIM uses it).
    """
    mean_output, var_values = self.split_model_output(model_output, x_t)
    variance, log_variance = self._model_variance(var_values, x_t, t)
    if self.model_mean_type == "eps":
      pred_xstart = self.predict_xstart_from_eps(x_t, t, mean_output)
    elif self.model_mean_type == "v":
      pred_xstart = self.predict_xstart_from_v(x_t, t, mean_output)
    else:
      pred_xstart = mean_output
    if denoised_fn is not None:
      pred_xstart = denoised_fn(pred_xstart)
    if clip_denoised:
      pred_xstart = jnp.clip(pred_xstart, -1.0, 1.0)
    mean, _, _ = self.q_posterior_mean_variance(pred_xstart, x_t, t)
    return {
        "mean": mean,
        "variance": variance,
        "log_variance": log_variance,
        "pred_xstart": pred_xstart,
        "eps": self.predict_eps_from_xstart(x_t, t, pred_xstart),
    }

  def vb_terms_bpd(
      self,
      model_output: jax.Array,
      x_start: jax.Array,
      x_t: jax.Array,
      t: jax.Array,
      clip_denoised: bool = True,
  ) -> dict[str, jax.Array]:
    """One term of the variational bound (Ho et al. eq. 5), in bits per dimension.

    ``L_{t-1} = KL(q(x_{t-1} | x_t, x_0) || p(x_{t-1} | x_t))`` for t > 0 and the discretised
    decoder NLL ``L_0 = -log p(x_0 | x_1)`` (eq. 13) for t == 0; both averaged over the
    non-batch axes and divided by log 2.

    Args:
      model_output: [..., C] or [..., 2C], the model's output at ``(x_t, t)``.
      x_start: x_0 [B, ...] in [-1, 1].
      x_t: [B, ...].
      t: int [B].
      clip_denoised: clip ``pred_xstart`` to [-1, 1].

    Returns:
      Dict with "output" float32 [B] (bits/dim, >= 0) and "pred_xstart" (``x_start``'s shape).
    """
    true_mean, _, true_log_variance = self.q_posterior_mean_variance(x_start, x_t, t)
    out = self.p_mean_variance(model_output, x_t, t, clip_denoised=clip_denoised)
    kl = losses.normal_kl(true_mean, true_log_variance, out["mean"], out["log_variance"])
    kl = losses.mean_flat(kl) / math.log(2.0)
    decoder_nll = -losses.discretized_gaussian_log_likelihood(
        x_start, out["mean"], 0.5 * out["log_variance"]
    )
    decoder_nll = losses.mean_flat(decoder_nll) / math.log(2.0)
    return {"output": jnp.where(t == 0, decoder_nll, kl), "pred_xstart": out["pred_xstart"]}

  def training_losses(
      self,
      model_fn: ModelFn,
      params: Any,
      x_start: jax.Array,
      t: jax.Array,
      noise: jax.Array,
      model_kwargs: dict[str, Any] | None = None,
  ) -> dict[str, jax.Array]:
    """Per-example training losses at timesteps ``t`` (as guided-diffusion).

    "mse"/"rescaled_mse": ``mse = mean_flat((target - output)^2)`` with target eps, x_0 or v
    (Ho et al. eq. 14, L_simple). With learned variance the VLB term of ``vb_terms_bpd`` is
    added, computed with the mean part under ``stop_gradient`` so that it trains the variance
    only (L_hybrid, Nichol & Dhariwal 2021 sec. 3.1); "rescaled_mse" scales it by T/1000.
    "kl"/"rescaled_kl": the VLB term alone (times T for the latter).

    Args:
      model_fn: ``model_fn(params, x_t, t_model, **model_kwargs) -> output``.
      params: model parameters.
      x_start: x_0 [B, ...] in [-1, 1].
      t: int [B].
      noise: standard normal, shape of ``x_start``.
      model_kwargs: extra model inputs (e.g. class labels, conditioning images).

    Returns:
      Dict of float32 [B]: "loss"; "mse" for mse losses; "vb" (the VLB term as it enters the
      loss) with learned variance or kl losses.
    """
    x_t = self.q_sample(x_start, t, noise)
    model_output = self.apply_model(model_fn, params, x_t, t, model_kwargs)
    if self.loss_type in ("kl", "rescaled_kl"):
      vb = self.vb_terms_bpd(model_output, x_start, x_t, t, clip_denoised=False)["output"]
      if self.loss_type == "rescaled_kl":
        vb = vb * self.num_timesteps
      return {"loss": vb, "vb": vb}
    mean_output, var_values = self.split_model_output(model_output, x_t)
    terms = {}
    if var_values is not None:
      frozen_output = jnp.concatenate([jax.lax.stop_gradient(mean_output), var_values], axis=-1)
      vb = self.vb_terms_bpd(frozen_output, x_start, x_t, t, clip_denoised=False)["output"]
      if self.loss_type == "rescaled_mse":
        vb = vb * (self.num_timesteps / 1000.0)
      terms["vb"] = vb
    if self.model_mean_type == "eps":
      target = noise
    elif self.model_mean_type == "v":
      target = self.predict_v(x_start, t, noise)
    else:
      target = x_start
    terms["mse"] = losses.mean_flat(jnp.square(target - mean_output))
    terms["loss"] = terms["mse"] + terms["vb"] if "vb" in terms else terms["mse"]
    return terms
