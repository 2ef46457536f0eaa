"""DDPM/DDIM samplers and DDIM inversion.

Oracle models make the expected behaviour known in closed form: for data at a single point
x*, the exact eps-prediction is ``(x_t - sqrt(abar_t) x*) / sqrt(1 - abar_t)``; for Gaussian
data N(mu, s^2), ``E[eps | x_t] = sqrt(1 - abar_t) (x_t - sqrt(abar_t) mu) / (abar_t s^2 + 1 -
abar_t)``. Both use the ORIGINAL schedule indexed by the model timestep (float64 table), so
respacing is checked too.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffseg_jax import diffusion

close = np.testing.assert_allclose

T = 50
BETAS = diffusion.get_beta_schedule("linear", T)
ABAR = np.cumprod(1.0 - BETAS)
GD = diffusion.GaussianDiffusion.create(BETAS)
KEPT = diffusion.space_timesteps(T, "ddim10")  # 0, 5, ..., 45
GD_SPACED = diffusion.GaussianDiffusion.create(BETAS, use_timesteps=KEPT)


def _abar_at(abar, t, ndim):
  return jnp.asarray(abar, jnp.float32)[t].reshape((-1,) + (1,) * (ndim - 1))


def point_oracle(abar, params, x, t):
  """Exact eps for data at the point ``params`` (model timesteps index ``abar``)."""
  a = _abar_at(abar, t, x.ndim)
  return (x - jnp.sqrt(a) * params) / jnp.sqrt(1.0 - a)


def gaussian_oracle(abar, mu, s, params, x, t):
  """Exact E[eps | x_t] for data ~ N(mu, s^2) per dimension."""
  a = _abar_at(abar, t, x.ndim)
  return jnp.sqrt(1.0 - a) * (x - jnp.sqrt(a) * mu) / (a * s**2 + 1.0 - a)


def _standardised_stats(x, x_star, abar):
  z = (np.asarray(x) - np.sqrt(abar) * x_star) / np.sqrt(1.0 - abar)
  return z.mean(), z.std()


def _count(jaxpr, name):
  """Number of equations with primitive ``name`` in a jaxpr, nested ones included."""
  total = 0
  for eqn in jaxpr.eqns:
    total += eqn.primitive.name == name
    for value in eqn.params.values():
      for sub in value if isinstance(value, (tuple, list)) else (value,):
        inner = getattr(sub, "jaxpr", sub)
        if hasattr(inner, "eqns"):
          total += _count(inner, name)
  return total


@pytest.fixture(scope="module")
def x_star():
  return np.random.default_rng(0).uniform(-0.8, 0.8, (1, 2, 2, 2))


@pytest.fixture(scope="module")
def ddpm_point_runs(x_star):
  """DDPM trajectories (plain and respaced) of 512 samples with the point oracle."""
  model = functools.partial(point_oracle, ABAR)
  shape = (512, 2, 2, 2)
  runs = {}
  for name, gd in (("plain", GD), ("spaced", GD_SPACED)):
    sample = jax.jit(
        functools.partial(diffusion.ddpm_sample, gd, model, return_trajectory=True),
        static_argnums=2,
    )
    runs[name] = sample(jnp.asarray(x_star, jnp.float32), jax.random.key(1), shape)
  return runs


@pytest.mark.parametrize("name", ["plain", "spaced"])
def test_ddpm_with_exact_model_keeps_forward_marginals(name, x_star, ddpm_point_runs):
  x0, trajectory = ddpm_point_runs[name]
  gd = GD if name == "plain" else GD_SPACED
  assert trajectory.shape == (gd.num_timesteps, 512, 2, 2, 2)
  np.testing.assert_array_equal(trajectory[-1], x0)
  close(x0, np.broadcast_to(x_star, x0.shape), atol=1e-5)
  # With the exact model, ancestral sampling keeps x_t ~ q(x_t | x*) at every step: after
  # step i the state is at index T'-2-i. 4096 values per check: standard errors 0.016 (mean)
  # and 0.011 (std).
  timestep_map = np.asarray(gd.timestep_map)
  for i in (0, gd.num_timesteps // 2, gd.num_timesteps - 2):
    index = gd.num_timesteps - 2 - i
    mean, std = _standardised_stats(trajectory[i], x_star, ABAR[timestep_map[index]])
    assert abs(mean) < 0.08, (i, mean)
    assert abs(std - 1.0) < 0.05, (i, std)


def test_ddpm_is_one_scan_with_one_model_trace():
  gd = diffusion.GaussianDiffusion.create(diffusion.get_beta_schedule("linear", 1000))
  traces = []

  def model(params, x, t):
    traces.append(t.shape)
    return 0.1 * x

  sample = functools.partial(diffusion.ddpm_sample, gd, model, None, shape=(1, 2, 2, 1))
  closed = jax.make_jaxpr(sample)(jax.random.key(0))
  assert len(traces) == 1
  assert _count(closed.jaxpr, "scan") == 1
  (scan,) = [e for e in closed.jaxpr.eqns if e.primitive.name == "scan"]
  assert scan.params["length"] == 1000
  # No per-step outputs are stacked without return_trajectory: memory is O(1) in T.
  assert all(v.aval.shape == (1, 2, 2, 1) for v in scan.outvars)
  assert "while" in jax.jit(sample).lower(jax.random.key(0)).as_text()
  x0 = jax.jit(sample)(jax.random.key(0))
  assert x0.shape == (1, 2, 2, 1) and np.all(np.isfinite(x0))


def test_ddim_reverse_then_sample_round_trips():
  betas = diffusion.get_beta_schedule("linear", 1000)
  abar = np.cumprod(1.0 - betas)
  gd = diffusion.GaussianDiffusion.create(betas)
  mu, s = 0.2, 0.5
  model = functools.partial(gaussian_oracle, abar, mu, s)
  x0 = np.random.default_rng(1).uniform(-0.9, 0.9, (4, 3, 3, 2))
  encode = jax.jit(lambda x: diffusion.ddim_reverse(gd, model, None, x, clip_denoised=False))
  decode = jax.jit(lambda z, key: diffusion.ddim_sample(
      gd, model, None, key, x0.shape, noise=z, clip_denoised=False))
  x_t = encode(jnp.asarray(x0, jnp.float32))
  # For Gaussian data the eta=0 ODE is linear: x_t = sqrt(a) mu + sqrt(a s^2 + 1 - a) (x0 - mu) / s.
  a = abar[-1]
  expected = np.sqrt(a) * mu + np.sqrt(a * s**2 + 1 - a) * (x0 - mu) / s
  # Both checks carry the first-order (Euler) discretisation error of DDIM, O(1/T): ~7e-3 here
  # (~6e-2 with T=100), far below the O(1) error of a wrong step.
  close(x_t, expected, atol=1.5e-2)
  recon = decode(x_t, jax.random.key(0))
  close(recon, x0, atol=1.5e-2)
  # eta = 0 ignores the key.
  np.testing.assert_array_equal(decode(x_t, jax.random.key(5)), recon)


def test_ddim_reverse_single_step_is_guided_diffusion_step():
  mu, s = 0.1, 0.7
  gd = diffusion.GaussianDiffusion.create(BETAS, use_timesteps=[3, 20])
  model = functools.partial(gaussian_oracle, ABAR, mu, s)
  x0 = np.random.default_rng(2).uniform(-0.9, 0.9, (3, 2, 2, 1))
  got = diffusion.ddim_reverse(gd, model, None, jnp.asarray(x0, jnp.float32), clip_denoised=False)
  # One step from index 0 (model timestep 3) to index 1 (abar of original step 20).
  a0, a1 = ABAR[3], ABAR[20]
  eps = np.sqrt(1 - a0) * (x0 - np.sqrt(a0) * mu) / (a0 * s**2 + 1 - a0)
  pred_x0 = (x0 - np.sqrt(1 - a0) * eps) / np.sqrt(a0)
  close(got, np.sqrt(a1) * pred_x0 + np.sqrt(1 - a1) * eps, rtol=1e-5, atol=1e-6)


def test_ddim_sigma_formula():
  t = jnp.arange(T)
  abar_prev = np.append(1.0, ABAR[:-1])
  for eta in (1.0, 0.5):
    expected = eta * np.sqrt((1 - abar_prev) / (1 - ABAR)) * np.sqrt(1 - ABAR / abar_prev)
    close(diffusion.ddim_sigma(GD, t, eta), expected, rtol=1e-5, atol=1e-9)
  posterior_std = np.sqrt(BETAS * (1 - abar_prev) / (1 - ABAR))
  close(diffusion.ddim_sigma(GD, t, 1.0), posterior_std, rtol=1e-5)


def test_ddim_eta1_step_equals_ddpm_fixed_small_step():
  # sqrt(1 - abar_{t-1} - sigma^2) eps = posterior_mean_coef2 * sqrt(1 - abar_t) eps when
  # sigma^2 = beta~_t, so with the same noise the two steps coincide for any model.
  rng = np.random.default_rng(3)
  params = jnp.asarray(rng.normal(size=(2, 3, 3, 2)), jnp.float32)
  x_t = jnp.asarray(rng.normal(size=(2, 3, 3, 2)), jnp.float32)

  def model(params, x, t):
    return params + 0.3 * x

  for index in (1, 17, T - 1):
    t = jnp.full((2,), index, jnp.int32)
    key = jax.random.key(index)
    ddim = diffusion.ddim_step(GD, model, params, x_t, t, key, eta=1.0)
    ddpm = diffusion.ddpm_step(GD, model, params, x_t, t, key)
    close(ddim["sample"], ddpm["sample"], rtol=1e-5, atol=1e-5)
    assert not np.allclose(ddim["sample"], ddpm["mean"], atol=1e-3)  # noise was added


@pytest.mark.parametrize("sampler", ["ddpm", "ddim"])
def test_inpainting_keeps_known_region(sampler):
  shape = (256, 2, 2, 2)
  rng = np.random.default_rng(4)
  x_known = jnp.asarray(rng.uniform(-1, 1, shape), jnp.float32)
  mask = jnp.asarray(np.arange(8).reshape(1, 2, 2, 2) % 2, jnp.float32)  # half known

  def model(params, x, t):
    return 0.5 * x + 0.1

  samplers = {
      "ddpm": diffusion.ddpm_sample,
      "ddim": functools.partial(diffusion.ddim_sample, eta=0.5),
  }
  run = jax.jit(lambda key: samplers[sampler](
      GD_SPACED, model, None, key, shape, inpaint=(x_known, mask), return_trajectory=True))
  x0, trajectory = run(jax.random.key(0))
  known = np.broadcast_to(np.asarray(mask) == 1, shape)
  np.testing.assert_array_equal(np.asarray(x0)[known], np.asarray(x_known)[known])
  assert not np.allclose(np.asarray(x0)[~known], np.asarray(x_known)[~known], atol=0.1)
  # Mid-way the known region is x_known noised to that step: q_sample(x_known, index).
  i = 4
  index = GD_SPACED.num_timesteps - 2 - i
  a = ABAR[GD_SPACED.timestep_map[index]]
  z = (np.asarray(trajectory[i]) - np.sqrt(a) * np.asarray(x_known)) / np.sqrt(1 - a)
  assert abs(z[known].mean()) < 0.1 and abs(z[known].std() - 1) < 0.06


def test_ddpm_guidance_shifts_mean_by_variance_times_gradient():
  rng = np.random.default_rng(5)
  x_t = jnp.asarray(rng.normal(size=(3, 2, 2, 2)), jnp.float32)
  grad = jnp.asarray(rng.normal(size=(1, 2, 2, 2)), jnp.float32)

  def model(params, x, t):
    return 0.2 * x

  def cond_fn(x, t_model):
    # Scaled by the model timestep it receives, so the mapping is checked too.
    return grad * t_model.astype(jnp.float32).reshape(-1, 1, 1, 1)

  t = jnp.array([1, 4, 9], jnp.int32)
  key = jax.random.key(0)
  guided = diffusion.ddpm_step(GD_SPACED, model, None, x_t, t, key, cond_fn=cond_fn)
  plain = diffusion.ddpm_step(GD_SPACED, model, None, x_t, t, key)
  abar = ABAR[list(KEPT)]
  abar_prev = np.append(1.0, abar[:-1])
  variance = ((1 - abar_prev) / (1 - abar) * (1 - abar / abar_prev))[np.asarray(t)]
  t_model = np.asarray(KEPT)[np.asarray(t)]
  expected_shift = variance.reshape(-1, 1, 1, 1) * np.asarray(grad) * t_model.reshape(-1, 1, 1, 1)
  close(guided["mean"] - plain["mean"], expected_shift, rtol=1e-4, atol=1e-7)
  close(guided["sample"] - plain["sample"], expected_shift, rtol=1e-4, atol=1e-6)


def test_ddim_guidance_shifts_eps_by_sqrt_one_minus_abar_times_gradient():
  rng = np.random.default_rng(6)
  x_t = jnp.asarray(rng.normal(size=(2, 2, 2, 1)), jnp.float32)
  grad = jnp.asarray(rng.normal(size=(2, 2, 2, 1)), jnp.float32)

  def model(params, x, t):
    return 0.2 * x

  t = jnp.array([3, 30], jnp.int32)
  args = (GD, model, None, x_t, t, jax.random.key(0))
  guided = diffusion.ddim_step(*args, clip_denoised=False, cond_fn=lambda x, t_model: grad)
  plain = diffusion.ddim_step(*args, clip_denoised=False)
  a = ABAR[np.asarray(t)].reshape(-1, 1, 1, 1)
  grad = np.asarray(grad)
  close(guided["eps"] - plain["eps"], -np.sqrt(1 - a) * grad, rtol=1e-4, atol=1e-6)
  # x0 = (x_t - sqrt(1 - a) eps) / sqrt(a) moves by (1 - a) / sqrt(a) * grad.
  shift = (1 - a) / np.sqrt(a) * grad
  close(guided["pred_xstart"] - plain["pred_xstart"], shift, rtol=1e-4, atol=1e-5)
  # Deterministic step: x_{t-1} = sqrt(a_prev) x0 + sqrt(1 - a_prev) eps.
  a_prev = ABAR[np.asarray(t) - 1].reshape(-1, 1, 1, 1)
  pred_xstart, eps = np.asarray(guided["pred_xstart"]), np.asarray(guided["eps"])
  close(guided["sample"], np.sqrt(a_prev) * pred_xstart + np.sqrt(1 - a_prev) * eps,
        rtol=1e-5, atol=1e-6)


def test_samplers_use_given_noise_and_key():
  def model(params, x, t):
    return 0.3 * x

  shape = (2, 2, 2, 1)
  z = jnp.asarray(np.random.default_rng(7).normal(size=shape), jnp.float32)
  ddpm = jax.jit(lambda key, noise: diffusion.ddpm_sample(
      GD_SPACED, model, None, key, shape, noise=noise))
  np.testing.assert_array_equal(ddpm(jax.random.key(0), z), ddpm(jax.random.key(0), z))
  assert not np.allclose(ddpm(jax.random.key(0), z), ddpm(jax.random.key(1), z))
  assert not np.allclose(ddpm(jax.random.key(0), z), ddpm(jax.random.key(0), -z))
  # DDIM on a 2-step chain, by hand: x = sqrt(a1) x0 + sqrt(1 - a1) eps at index 1, then x0_hat.
  gd = diffusion.GaussianDiffusion.create(BETAS, use_timesteps=[10, 40])
  got = diffusion.ddim_sample(
      gd, model, None, jax.random.key(0), shape, noise=z, clip_denoised=False)
  a40, a10 = ABAR[40], ABAR[10]
  x = np.asarray(z, np.float64)
  x0_hat = (x - np.sqrt(1 - a40) * 0.3 * x) / np.sqrt(a40)
  x = np.sqrt(a10) * x0_hat + np.sqrt(1 - a10) * 0.3 * x
  x0_hat = (x - np.sqrt(1 - a10) * 0.3 * x) / np.sqrt(a10)
  close(got, x0_hat, rtol=1e-5, atol=1e-5)
