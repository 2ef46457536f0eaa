"""Beta schedules, timestep respacing and GaussianDiffusion construction.

Expected values come from the closed-form definitions evaluated independently in float64.
"""

import fractions
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffseg_jax import diffusion


@pytest.mark.parametrize("num_timesteps", [1000, 250, 4000])
def test_linear_schedule_is_adm_linear_scaled_by_1000_over_t(num_timesteps):
  betas = diffusion.get_beta_schedule("linear", num_timesteps)
  scale = 1000 / num_timesteps
  assert betas.dtype == np.float64 and betas.shape == (num_timesteps,)
  np.testing.assert_allclose(betas[0], 1e-4 * scale, rtol=1e-14)
  np.testing.assert_allclose(betas[-1], 0.02 * scale, rtol=1e-14)
  step = (0.02 - 1e-4) * scale / (num_timesteps - 1)
  np.testing.assert_allclose(np.diff(betas), step, rtol=1e-8)


@pytest.mark.parametrize("num_timesteps", [1000, 50])
def test_cosine_schedule_telescopes_to_alpha_bar_and_clips_at_0999(num_timesteps):
  betas = diffusion.get_beta_schedule("cosine", num_timesteps)

  def alpha_bar(u):
    return math.cos((u + 0.008) / 1.008 * math.pi / 2) ** 2

  raw = np.array(
      [1 - alpha_bar((i + 1) / num_timesteps) / alpha_bar(i / num_timesteps)
       for i in range(num_timesteps)]
  )
  clipped = raw > 0.999
  # alpha_bar(1) = 0, so the last raw beta is 1 and must be clipped; nothing else is.
  assert clipped[-1] and clipped.sum() == 1
  assert betas[-1] == 0.999 and betas.max() == 0.999
  np.testing.assert_allclose(betas[~clipped], raw[~clipped], rtol=1e-10)
  # Unclipped steps telescope: prod_{j<=i}(1 - beta_j) = alpha_bar((i+1)/T) / alpha_bar(0).
  cumprod = np.cumprod(1 - betas)[:-1]
  expected = np.array([alpha_bar((i + 1) / num_timesteps) for i in range(num_timesteps - 1)])
  np.testing.assert_allclose(cumprod, expected / alpha_bar(0), rtol=1e-10)


def test_sqrt_linear_schedule_is_linear_in_sqrt_beta():
  betas = diffusion.get_beta_schedule("sqrt_linear", 1000)
  roots = np.sqrt(betas)
  np.testing.assert_allclose(roots[[0, -1]], np.sqrt([0.00085, 0.012]), rtol=1e-13)
  np.testing.assert_allclose(np.diff(roots), (np.sqrt(0.012) - np.sqrt(0.00085)) / 999, rtol=1e-8)
  custom = diffusion.get_beta_schedule("sqrt_linear", 10, beta_start=0.01, beta_end=0.04)
  np.testing.assert_allclose(custom[[0, -1]], [0.01, 0.04], rtol=1e-13)
  np.testing.assert_allclose(np.diff(np.sqrt(custom)), 0.1 / 9, rtol=1e-10)


@pytest.mark.parametrize("num_timesteps", [20, 10])
def test_linear_schedule_refuses_chains_whose_last_beta_reaches_one(num_timesteps):
  # The last beta is 0.02 * 1000 / T: exactly 1 at T = 20, so 21 is the shortest chain.
  with pytest.raises(ValueError, match="'linear' schedule.*num_timesteps >= 21.*'cosine'"):
    diffusion.get_beta_schedule("linear", num_timesteps)
  assert diffusion.get_beta_schedule("linear", 21)[-1] < 1


def test_unknown_schedule_lists_valid_names():
  with pytest.raises(ValueError, match="'quadratic'.*linear, cosine, sqrt_linear"):
    diffusion.get_beta_schedule("quadratic", 10)


def test_space_timesteps_ddim_stride():
  assert diffusion.space_timesteps(1000, "ddim50") == tuple(range(0, 1000, 20))
  assert diffusion.space_timesteps(1000, "ddim1000") == tuple(range(1000))
  # For T=10: strides 1..9 give 10, 5, 4, 3, 2, 2, 2, 2, 2 steps.
  assert diffusion.space_timesteps(10, "ddim3") == (0, 4, 8)
  with pytest.raises(ValueError, match="exactly 7 steps out of 10"):
    diffusion.space_timesteps(10, "ddim7")


def test_space_timesteps_sections():
  # Three sections of 100 steps, each taking 10 at a stride of 99 / 9 = 11.
  section = [11 * i for i in range(10)]
  expected = tuple(start + s for start in (0, 100, 200) for s in section)
  assert diffusion.space_timesteps(300, "10,10,10") == expected
  assert diffusion.space_timesteps(300, [10, 10, 10]) == expected
  # T=11 into 3 sections: sizes 4, 4, 3 (the extra step goes to the first sections).
  assert diffusion.space_timesteps(11, [1, 1, 1]) == (0, 4, 8)
  assert diffusion.space_timesteps(11, [2, 2, 3]) == (0, 3, 4, 7, 8, 9, 10)
  assert diffusion.space_timesteps(10, [2, 3]) == (0, 4, 5, 7, 9)


def test_space_timesteps_250_of_1000_rounds_fractional_stride():
  kept = diffusion.space_timesteps(1000, "250")
  # Stride 999 / 249 = 333 / 83; k * 333 / 83 is never a half-integer, so exact rational
  # rounding is what the float accumulation must give.
  stride = fractions.Fraction(999, 249)
  assert kept == tuple(round(k * stride) for k in range(250))
  assert kept[0] == 0 and kept[-1] == 999 and set(np.diff(kept)) == {4, 5}


def test_space_timesteps_rejects_oversized_section():
  with pytest.raises(ValueError, match="section of 5 steps into 6"):
    diffusion.space_timesteps(10, [6, 1])


def test_respacing_keeps_alphas_cumprod_at_kept_steps():
  betas = diffusion.get_beta_schedule("linear", 1000)
  abar = np.cumprod(1 - betas)
  for counts in ("ddim50", "10,10,10", "250"):
    kept = diffusion.space_timesteps(1000, counts)
    gd = diffusion.GaussianDiffusion.create(betas, use_timesteps=kept)
    assert gd.num_timesteps == len(kept)
    np.testing.assert_array_equal(gd.timestep_map, kept)
    np.testing.assert_allclose(gd.alphas_cumprod, abar[list(kept)], rtol=1e-12)
    assert gd.alphas_cumprod.dtype == np.float64


def test_model_timesteps_map_and_rescale():
  betas = diffusion.get_beta_schedule("linear", 500)
  kept = diffusion.space_timesteps(500, "ddim10")
  gd = diffusion.GaussianDiffusion.create(betas, use_timesteps=kept)
  t = jnp.array([0, 3, 9], jnp.int32)
  mapped = gd.model_timesteps(t)
  assert mapped.dtype == jnp.int32
  np.testing.assert_array_equal(mapped, [0, 150, 450])
  rescaled = diffusion.GaussianDiffusion.create(betas, use_timesteps=kept, rescale_timesteps=True)
  scaled = rescaled.model_timesteps(t)
  assert scaled.dtype == jnp.float32
  np.testing.assert_array_equal(scaled, [0.0, 300.0, 900.0])
  plain = diffusion.GaussianDiffusion.create(betas, rescale_timesteps=True)
  np.testing.assert_array_equal(plain.model_timesteps(t), [0.0, 6.0, 18.0])
  identity = diffusion.GaussianDiffusion.create(betas)
  np.testing.assert_array_equal(identity.timestep_map, np.arange(500))
  np.testing.assert_array_equal(identity.model_timesteps(t), [0, 3, 9])


def test_create_errors_name_problem_and_fix():
  betas = diffusion.get_beta_schedule("linear", 100)
  with pytest.raises(ValueError, match=r"\[-1, 100\].*outside \[0, 100\)"):
    diffusion.GaussianDiffusion.create(betas, use_timesteps=[0, 100, -1])
  with pytest.raises(ValueError, match="fixed_small, fixed_large, learned_range, learned"):
    diffusion.GaussianDiffusion.create(betas, model_var_type="learnt")
  with pytest.raises(ValueError, match="eps, x0, v"):
    diffusion.GaussianDiffusion.create(betas, model_mean_type="epsilon")
  with pytest.raises(ValueError, match="mse, rescaled_mse, kl, rescaled_kl"):
    diffusion.GaussianDiffusion.create(betas, loss_type="l1")
  with pytest.raises(ValueError, match=r"\(0, 1\)"):
    diffusion.GaussianDiffusion.create(np.array([0.0, 0.1]))
  # beta = 1 makes alpha-bar 0, and x0 = (x_t - sqrt(1 - abar) eps) / sqrt(abar) infinite.
  with pytest.raises(ValueError, match=r"\(0, 1\).*alpha-bar 0"):
    diffusion.GaussianDiffusion.create(np.array([0.1, 1.0]))


def test_diffusion_is_hashable_static_and_immutable():
  betas = diffusion.get_beta_schedule("cosine", 20)
  gd = diffusion.GaussianDiffusion.create(betas)
  same = diffusion.GaussianDiffusion.create(betas.copy())
  other = diffusion.GaussianDiffusion.create(betas, model_var_type="fixed_large")
  assert gd == same and hash(gd) == hash(same) and gd != other
  with pytest.raises(ValueError):
    gd.betas[0] = 0.5
  traces = []

  def f(g, x):
    traces.append(1)
    return g.q_sample(x, jnp.zeros((1,), jnp.int32), x)

  jitted = jax.jit(f, static_argnums=0)
  x = jnp.ones((1, 2))
  jitted(gd, x)
  jitted(same, x)
  assert len(traces) == 1
  jitted(other, x)
  assert len(traces) == 2
