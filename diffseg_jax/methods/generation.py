"""Image generation: a Gaussian diffusion (DDPM / iDDPM / ADM) over the ADM U-Net.

:class:`GenerationModel` bundles the network and the diffusion built from a config, and gives
the two things the training loop and the ``sample`` mode need: the loss of a batch and a
sampler. Both are pure functions of the parameters.
"""

import functools
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections

from diffseg_jax import diffusion
from diffseg_jax import nn

Params = Any


def make_unet(config: ml_collections.ConfigDict) -> nn.UNetModel:
  """The ADM U-Net for ``config.model`` at ``config.data``'s image size and channels."""
  m, data = config.model, config.data
  nn.check_image_size(data.image_size, tuple(m.channel_mult))
  bad = [r for r in m.attention_resolutions if data.image_size % r]
  if bad:
    raise ValueError(
        f"model.attention_resolutions {tuple(m.attention_resolutions)} must be feature-map sizes "
        f"reached from image size {data.image_size} by halving; {bad} are not.")
  return nn.UNetModel(
      image_size=data.image_size,
      in_channels=data.channels,
      model_channels=m.model_channels,
      out_channels=data.channels * (2 if config.diffusion.learn_sigma else 1),
      num_res_blocks=m.num_res_blocks,
      attention_resolutions=tuple(data.image_size // r for r in m.attention_resolutions),
      dropout=m.dropout,
      channel_mult=tuple(m.channel_mult),
      conv_resample=m.conv_resample,
      num_classes=data.num_classes if m.class_cond else None,
      num_heads=m.num_heads,
      num_head_channels=m.num_head_channels,
      num_heads_upsample=m.num_heads_upsample,
      use_scale_shift_norm=m.use_scale_shift_norm,
      resblock_updown=m.resblock_updown,
      use_new_attention_order=m.use_new_attention_order,
      dtype=jnp.dtype(m.dtype),
  )


def make_diffusion(config: ml_collections.ConfigDict,
                   respacing: str = "") -> diffusion.GaussianDiffusion:
  """The diffusion of ``config.diffusion``, respaced to ``respacing`` (e.g. "ddim50") if given.

  With ``learn_sigma`` the variance is learned in the range [beta_t, beta~_t] and trained with
  ADM's hybrid loss (MSE plus the VLB, rescaled by T/1000 when ``rescale_learned_sigmas``).
  """
  d = config.diffusion
  betas = diffusion.get_beta_schedule(d.beta_schedule, d.num_timesteps)
  if d.learn_sigma:
    var_type = "learned_range"
    loss_type = "rescaled_mse" if d.rescale_learned_sigmas else "mse"
  else:
    var_type, loss_type = d.model_var_type, "mse"
  use_timesteps = diffusion.space_timesteps(d.num_timesteps, respacing) if respacing else None
  return diffusion.GaussianDiffusion.create(
      betas, model_mean_type=d.model_mean_type, model_var_type=var_type, loss_type=loss_type,
      use_timesteps=use_timesteps)


def ddim_respacing(num_timesteps: int, steps: int) -> str:
  """DDIM's "ddimN" respacing, or section-count respacing "N" when no integer stride gives
  exactly N of ``num_timesteps`` steps (e.g. 300 of 1000)."""
  try:
    diffusion.space_timesteps(num_timesteps, f"ddim{steps}")
  except ValueError:
    return str(steps)
  return f"ddim{steps}"


class GenerationModel:
  """The U-Net and the diffusion of a config, with the loss and the samplers over them."""

  def __init__(self, config: ml_collections.ConfigDict):
    self.config = config
    self.unet = make_unet(config)
    self.diffusion = make_diffusion(config)
    self.image_shape = (config.data.image_size, config.data.image_size, config.data.channels)
    self.class_cond = bool(config.model.class_cond)

  def init(self, key: jax.Array) -> Params:
    """Initial parameters (float32)."""
    x = jnp.zeros((1, *self.image_shape), jnp.float32)
    t = jnp.zeros((1,), jnp.int32)
    y = jnp.zeros((1,), jnp.int32) if self.class_cond else None
    return self.unet.init(key, x, t, y=y)["params"]

  def model_fn(self, params: Params, x_t: jax.Array, t: jax.Array, y: jax.Array | None = None,
               dropout_key: jax.Array | None = None) -> jax.Array:
    """The U-Net as the diffusion sees it; dropout is active only when given a key."""
    rngs = {"dropout": dropout_key} if dropout_key is not None else None
    return self.unet.apply({"params": params}, x_t, t, y=y, train=dropout_key is not None,
                           rngs=rngs)

  def loss(self, params: Params, batch: dict[str, jax.Array],
           key: jax.Array) -> tuple[jax.Array, dict[str, jax.Array]]:
    """The batch-mean diffusion loss at uniformly drawn timesteps.

    Args:
      params: U-Net parameters.
      batch: ``image`` float32 [B, H, W, C] in [-1, 1]; ``label`` int32 [B] if class-conditional.
      key: randomness for timesteps, noise and dropout.

    Returns:
      ``(loss, metrics)``: the scalar loss and the batch means of its terms (mse, vb).
    """
    x0 = batch["image"]
    t_key, noise_key, dropout_key = jax.random.split(key, 3)
    t = jax.random.randint(t_key, (x0.shape[0],), 0, self.diffusion.num_timesteps)
    noise = jax.random.normal(noise_key, x0.shape, x0.dtype)
    model_fn = functools.partial(self.model_fn, dropout_key=dropout_key)
    kwargs = {"y": batch["label"]} if self.class_cond else {}
    terms = self.diffusion.training_losses(model_fn, params, x0, t, noise, model_kwargs=kwargs)
    metrics = {name: value.mean() for name, value in terms.items() if name != "loss"}
    return terms["loss"].mean(), metrics

  def sampler(self, *, sampler: str, steps: int, eta: float = 0.0, clip_denoised: bool = True):
    """A sampling function ``(params, key, noise, labels) -> images float32 in [-1, 1]``.

    Args:
      sampler: "ddpm" (ancestral, Ho et al. 2020) or "ddim" (Song et al. 2020).
      steps: number of (evenly respaced) steps; 0 means every step of the schedule. DDIM uses
        the reference's fixed integer stride ("ddimN") where one gives exactly ``steps``
        steps, else the near-even spacing of section counts (as DDPM).
      eta: DDIM's noise scale (0 deterministic, 1 DDPM-like); ignored by "ddpm".
      clip_denoised: clip the predicted x0 to [-1, 1] at every step.

    The returned function is not jitted: callers jit it with their shardings.
    """
    total = self.config.diffusion.num_timesteps
    if sampler not in ("ddpm", "ddim"):
      raise ValueError(f"Unknown sampler {sampler!r}; valid: ddpm, ddim.")
    if steps < 0 or steps > total:
      raise ValueError(f"sample.steps={steps} must be in 1..{total} (0 for all {total}).")
    if steps in (0, total):
      respacing = ""
    elif sampler == "ddim":
      respacing = ddim_respacing(total, steps)
    else:
      respacing = str(steps)
    gd = make_diffusion(self.config, respacing)
    if sampler == "ddpm":
      run = functools.partial(diffusion.ddpm_sample, gd, self.model_fn)
    else:
      run = functools.partial(diffusion.ddim_sample, gd, self.model_fn, eta=eta)

    def sample(params: Params, key: jax.Array, noise: jax.Array,
               labels: jax.Array | None) -> jax.Array:
      kwargs = {"y": labels} if self.class_cond else {}
      return run(params, key, noise.shape, noise=noise, model_kwargs=kwargs,
                 clip_denoised=clip_denoised)

    return sample
