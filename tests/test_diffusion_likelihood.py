"""Prior term and full-chain variational bound in bits per dimension."""

import math

import jax
import jax.numpy as jnp
import numpy as np
from scipy import stats

from diffseg_jax import diffusion

close = np.testing.assert_allclose

T = 20
BETAS = diffusion.get_beta_schedule("cosine", T)
ABAR = np.cumprod(1.0 - BETAS)
ABAR_PREV = np.append(1.0, ABAR[:-1])
POSTERIOR_VAR = BETAS * (1 - ABAR_PREV) / (1 - ABAR)
SHAPE = (3, 4, 4, 2)


def _pixels(seed):
  pixels = np.random.default_rng(seed).integers(0, 256, SHAPE)
  pixels[:, 0, 0, 0] = [0, 255, 128]  # both edge bins
  return pixels


def test_prior_bpd_closed_form():
  for betas in (np.full(10, 0.1), BETAS):  # a large prior term and a vanishing one
    gd = diffusion.GaussianDiffusion.create(betas)
    x0 = np.random.default_rng(0).uniform(-1, 1, SHAPE)
    a = np.prod(1 - betas)
    # KL(N(sqrt(a) x0, 1 - a) || N(0, 1)) = 0.5 (a x0^2 + (1 - a) - 1 - log(1 - a)).
    kl = 0.5 * (a * x0**2 - a - np.log1p(-a))
    expected = kl.reshape(SHAPE[0], -1).mean(axis=1) / math.log(2)
    close(diffusion.prior_bpd(gd, jnp.asarray(x0, jnp.float32)), expected, rtol=1e-4)


def _bpd(model_fn, params, x0):
  gd = diffusion.GaussianDiffusion.create(BETAS, model_mean_type="x0")
  run = jax.jit(lambda p, x, key: diffusion.calc_bpd_loop(gd, model_fn, p, x, key))
  return gd, run(params, jnp.asarray(x0, jnp.float32), jax.random.key(0))


def test_calc_bpd_loop_with_exact_model():
  pixels = _pixels(1)
  x0 = pixels / 127.5 - 1.0
  gd, out = _bpd(lambda params, x, t: params, jnp.asarray(x0, jnp.float32), x0)
  b = SHAPE[0]
  for name in ("vb", "xstart_mse", "mse"):
    assert out[name].shape == (b, T), name
  assert out["total_bpd"].shape == (b,) and out["prior_bpd"].shape == (b,)
  close(out["prior_bpd"], diffusion.prior_bpd(gd, jnp.asarray(x0, jnp.float32)), rtol=1e-6)
  close(out["total_bpd"], out["prior_bpd"] + out["vb"].sum(axis=1), rtol=1e-5)
  # Predicting x0 exactly: every KL term (columns 0..T-2 are t = T-1..1) vanishes, as do the
  # x0 and eps errors; only the decoder term (last column, t = 0) remains.
  close(out["vb"][:, :-1], 0.0, atol=1e-5)
  close(out["xstart_mse"], 0.0, atol=1e-10)
  close(out["mse"], 0.0, atol=1e-6)
  # Decoder N(x0, beta~_1) discretised into 8-bit bins, with the exact normal CDF; the
  # tanh-approximate CDF moves the bits by ~1e-3 relative.
  sd = math.sqrt(POSTERIOR_VAR[1])
  upper = stats.norm.cdf((1 / 255) / sd)
  prob = np.where((pixels == 0) | (pixels == 255), upper, 2 * upper - 1)
  expected = -np.log(prob).reshape(b, -1).mean(axis=1) / math.log(2)
  close(out["vb"][:, -1], expected, rtol=1e-2)


def test_calc_bpd_loop_penalises_a_wrong_model():
  x0 = _pixels(2) / 127.5 - 1.0
  _, exact = _bpd(lambda params, x, t: params, jnp.asarray(x0, jnp.float32), x0)
  _, wrong = _bpd(lambda params, x, t: params, jnp.zeros(SHAPE, jnp.float32), x0)
  assert np.all(np.asarray(wrong["vb"]) > 0)
  assert np.all(np.asarray(wrong["total_bpd"]) > np.asarray(exact["total_bpd"]) + 1.0)
  # Predicting 0 everywhere: the x0 error is mean(x0^2) at every t.
  expected_mse = (x0**2).reshape(SHAPE[0], -1).mean(1)[:, None]
  close(wrong["xstart_mse"], np.broadcast_to(expected_mse, (SHAPE[0], T)), rtol=1e-5)
