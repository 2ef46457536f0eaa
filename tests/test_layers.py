"""The building blocks whose gradients are hand-written for speed: GroupNorm (XLA's and the
fused CPU kernel, with scale-shift and SiLU), bias addition, per-sample scale-shift, Conv and
Dense. Each is checked against the plain formula, differentiated by JAX in float64."""

import flax.linen as flax_nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.special

from diffseg_jax.nn import layers
from diffseg_jax.nn import onednn


def _plain_group_norm(x, scale, bias, num_groups, epsilon):
  n, p, c = x.shape
  grouped = x.reshape(n, p, num_groups, c // num_groups)
  mean = grouped.mean(axis=(1, 3), keepdims=True)
  var = ((grouped - mean) ** 2).mean(axis=(1, 3), keepdims=True)
  return ((grouped - mean) / jnp.sqrt(var + epsilon)).reshape(x.shape) * scale + bias


@pytest.fixture(scope="module")
def gn_inputs():
  rng = np.random.default_rng(0)
  x = rng.standard_normal((3, 20, 64)) * 2.0 + 0.5
  scale = 1.0 + 0.3 * rng.standard_normal(64)
  bias = 0.3 * rng.standard_normal(64)
  cotangent = rng.standard_normal((3, 20, 64))
  return x, scale, bias, cotangent


@pytest.mark.parametrize("num_groups", [32, 8])
def test_group_norm_value_and_gradients_match_the_plain_formula_in_float64(gn_inputs,
                                                                         num_groups):
  x, scale, bias, cotangent = gn_inputs
  with jax.enable_x64(True):
    args64 = [jnp.asarray(a, jnp.float64) for a in (x, scale, bias)]
    ref_out, ref_vjp = jax.vjp(lambda *a: _plain_group_norm(*a, num_groups, 1e-5), *args64)
    ref_grads = ref_vjp(jnp.asarray(cotangent, jnp.float64))
  args32 = [jnp.asarray(a, jnp.float32) for a in (x, scale, bias)]
  out, vjp = jax.vjp(lambda *a: layers.group_norm(*a, num_groups, 1e-5), *args32)
  grads = vjp(jnp.asarray(cotangent, jnp.float32))
  np.testing.assert_allclose(out, ref_out, rtol=1e-5, atol=1e-5)
  for name, got, want in zip(("x", "scale", "bias"), grads, ref_grads):
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4, err_msg=name)


def _plain_group_norm_act(x, gamma, beta, scale, shift, num_groups, silu):
  y = _plain_group_norm(x, gamma, beta, num_groups, 1e-5)
  if scale is not None:
    y = y * (1 + scale[:, None, :]) + shift[:, None, :]
  return y * jax.nn.sigmoid(y) if silu else y


def _fused_group_norm_act(x, gamma, beta, scale, shift, num_groups, silu):
  if not onednn.applies(x):
    pytest.skip("the fused kernel needs the `cpu` extra (pip install -e '.[cpu]'), a C++ "
                "compiler and one CPU device")
  if scale is None:
    scale = shift = jnp.zeros((x.shape[0], x.shape[-1]), jnp.float32)
  return onednn.group_norm(x, gamma, beta, scale, shift, num_groups=num_groups,
                           epsilon=1e-5, silu=silu)


GROUP_NORM_ACT = {
    # The function a U-Net calls (fused on this CPU where the kernels build), XLA's version
    # (other platforms) and the fused kernel itself.
    "group_norm_act": lambda x, gamma, beta, scale, shift, num_groups, silu:
        layers.group_norm_act(x, gamma, beta, num_groups, 1e-5, silu=silu,
                              scale_shift=None if scale is None else (scale, shift)),
    "xla": lambda x, gamma, beta, scale, shift, num_groups, silu:
        layers._group_norm_act_xla(x, gamma, beta, None if scale is None else (scale, shift),
                                   num_groups, 1e-5, silu),
    "fused": _fused_group_norm_act,
}


def _check_group_norm_act(implementation, num_groups, scale_shift, silu, mean, std):
  rng = np.random.default_rng(6)
  x = rng.standard_normal((3, 20, 64)) * std + mean
  gamma, beta = 1.0 + 0.3 * rng.standard_normal(64), 0.3 * rng.standard_normal(64)
  scale, shift = (rng.standard_normal((3, 64)) * 0.5 if scale_shift else None
                  for _ in range(2))
  dy = rng.standard_normal((3, 20, 64))
  # The reference sees the float32 inputs: at a mean of 20, rounding x alone moves x_hat 1e-5.
  args = [None if a is None else a.astype(np.float32) for a in (x, gamma, beta, scale, shift)]
  present = [i for i, a in enumerate(args) if a is not None]

  def call(fn, *values):
    full = list(args)
    for i, v in zip(present, values):
      full[i] = v
    return fn(*full, num_groups, silu)

  with jax.enable_x64(True):
    want, vjp = jax.vjp(lambda *v: call(_plain_group_norm_act, *v),
                        *[jnp.asarray(args[i], jnp.float64) for i in present])
    want_grads = vjp(jnp.asarray(dy, jnp.float64))
  fn = jax.jit(lambda *v: call(GROUP_NORM_ACT[implementation], *v))
  got, vjp = jax.vjp(fn, *[jnp.asarray(args[i], jnp.float32) for i in present])
  grads = vjp(jnp.asarray(dy, jnp.float32))
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
  for name, g, w in zip(["x", "gamma", "beta", "scale", "shift"], grads, want_grads):
    assert g.shape == w.shape, name
    # Parameter gradients sum 60-1280 terms of size ~1.
    np.testing.assert_allclose(g, w, rtol=1e-4, atol=1e-4, err_msg=name)


@pytest.mark.parametrize("implementation", GROUP_NORM_ACT)
@pytest.mark.parametrize("num_groups", [32, 8])
@pytest.mark.parametrize("scale_shift", [False, True])
@pytest.mark.parametrize("silu", [False, True])
def test_group_norm_act_values_and_gradients_match_the_plain_formula_in_float64(
    implementation, num_groups, scale_shift, silu):
  _check_group_norm_act(implementation, num_groups, scale_shift, silu, mean=0.5, std=2.0)


@pytest.mark.parametrize("num_groups", [32, 8])
def test_fused_group_norm_statistics_do_not_cancel_digits(num_groups):
  # A mean 40 spreads away: the kernel sums in float64 (XLA's version sums in float32, whose
  # rounding of the mean alone moves x_hat by 1e-5 here).
  _check_group_norm_act("fused", num_groups, True, True, mean=20.0, std=0.5)


def test_fused_group_norm_keeps_nan_and_extreme_values():
  x = np.random.default_rng(7).standard_normal((2, 16, 32)).astype(np.float32)
  x[0, 3, 5] = np.nan
  gamma = jnp.full((32,), 200.0, jnp.float32)  # u of about +-400: SiLU's tails
  beta = jnp.zeros((32,), jnp.float32)
  y = np.asarray(_fused_group_norm_act(jnp.asarray(x), gamma, beta, None, None, 8, True))
  nan = np.isnan(y[0])
  assert nan[:, 4:8].all() and not nan[:, :4].any() and not nan[:, 8:].any()  # its group
  assert np.isfinite(y[1]).all()
  u = np.asarray(_fused_group_norm_act(jnp.asarray(x), gamma, beta, None, None, 8,
                                       False))[1].astype(np.float64)
  np.testing.assert_allclose(y[1], u * scipy.special.expit(u), rtol=1e-5, atol=1e-30)


def test_float32_cpu_group_norms_call_the_fused_kernel():
  x = jnp.ones((2, 5, 8))
  if not onednn.applies(x):
    pytest.skip("the fused kernel needs the `cpu` extra, a C++ compiler and one CPU device")
  gamma = beta = jnp.ones((8,))

  def loss(x, gamma, beta):
    return layers.group_norm_act(x, gamma, beta, 4, 1e-5, silu=True).sum()

  hlo = jax.jit(jax.grad(loss, argnums=(0, 1, 2))).lower(x, gamma, beta).compile().as_text()
  assert 'custom_call_target="diffseg_group_norm_fwd"' in hlo
  assert 'custom_call_target="diffseg_group_norm_bwd"' in hlo


def test_fused_group_norm_names_a_bad_shape():
  with pytest.raises(ValueError, match=r"C divisible by num_groups=32, got \(2, 5, 48\)"):
    onednn.group_norm(jnp.ones((2, 5, 48)), jnp.ones(48), jnp.ones(48), jnp.ones((2, 48)),
                      jnp.ones((2, 48)), num_groups=32, epsilon=1e-5, silu=False)


def test_group_norm_module_keeps_dtype_and_matches_function():
  x = jnp.asarray(np.random.default_rng(1).standard_normal((2, 4, 4, 64)), jnp.bfloat16)
  module = layers.GroupNorm32()
  params = module.init(jax.random.key(0), x)
  out = module.apply(params, x)
  assert out.dtype == jnp.bfloat16
  expected = _plain_group_norm(x.astype(jnp.float32).reshape(2, 16, 64), 1.0, 0.0, 32, 1e-5)
  np.testing.assert_allclose(out.astype(jnp.float32).reshape(2, 16, 64), expected, atol=2e-2)


def test_bias_add_and_channel_sum_gradients():
  rng = np.random.default_rng(2)
  x = jnp.asarray(rng.standard_normal((4, 5, 6, 7)), jnp.float32)
  b = jnp.asarray(rng.standard_normal(7), jnp.float32)
  g = rng.standard_normal((4, 5, 6, 7))
  out, vjp = jax.vjp(layers.bias_add, x, b)
  dx, db = vjp(jnp.asarray(g, jnp.float32))
  np.testing.assert_array_equal(out, x + b)
  np.testing.assert_array_equal(dx, g.astype(np.float32))
  np.testing.assert_allclose(db, g.sum(axis=(0, 1, 2)), rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(layers.channel_sum(jnp.asarray(g, jnp.float32)),
                             g.sum(axis=(0, 1, 2)), rtol=1e-5, atol=1e-5)


def test_film_and_add_per_sample_gradients_match_the_plain_formula_in_float64():
  rng = np.random.default_rng(5)
  x, g = rng.standard_normal((3, 4, 5, 8)), rng.standard_normal((3, 4, 5, 8))
  scale, shift = rng.standard_normal((2, 3, 1, 1, 8))
  cases = [(layers.film, lambda x, s, b: x * (1 + s) + b, (x, scale, shift)),
           (layers.add_per_sample, lambda x, b: x + b, (x, shift))]
  for ours, plain, args in cases:
    with jax.enable_x64(True):
      want_out, vjp = jax.vjp(plain, *[jnp.asarray(a, jnp.float64) for a in args])
      want_grads = vjp(jnp.asarray(g, jnp.float64))
    out, vjp = jax.vjp(ours, *[jnp.asarray(a, jnp.float32) for a in args])
    grads = vjp(jnp.asarray(g, jnp.float32))
    np.testing.assert_allclose(out, want_out, rtol=1e-5, atol=1e-5)
    for got, want in zip(grads, want_grads):
      assert got.shape == want.shape
      np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("kernel_size,stride", [(3, 1), (3, 2), (1, 1)])
def test_conv_is_a_drop_in_for_flax_conv_with_the_same_gradients(kernel_size, stride):
  x = jnp.asarray(np.random.default_rng(3).standard_normal((2, 8, 8, 32)), jnp.float32)
  ours = layers.Conv(16, kernel_size, stride=stride)
  pad = kernel_size // 2
  theirs = flax_nn.Conv(16, (kernel_size, kernel_size), strides=(stride, stride),
                        padding=((pad, pad), (pad, pad)))
  params = ours.init(jax.random.key(0), x)
  params["params"]["bias"] = jnp.linspace(-1, 1, 16)
  assert jax.tree.map(jnp.shape, params) == jax.tree.map(jnp.shape,
                                                         theirs.init(jax.random.key(0), x))
  loss = lambda module: lambda p: jnp.sum(jnp.sin(module.apply(p, x)))
  np.testing.assert_allclose(ours.apply(params, x), theirs.apply(params, x), atol=1e-5)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4),
               jax.grad(loss(ours))(params), jax.grad(loss(theirs))(params))


def test_dense_is_a_drop_in_for_flax_dense_with_the_same_gradients():
  x = jnp.asarray(np.random.default_rng(4).standard_normal((3, 5, 12)), jnp.float32)
  ours, theirs = layers.Dense(6), flax_nn.Dense(6)
  params = ours.init(jax.random.key(0), x)
  params["params"]["bias"] = jnp.arange(6.0)
  loss = lambda module: lambda p: jnp.sum(jnp.cos(module.apply(p, x)))
  np.testing.assert_allclose(ours.apply(params, x), theirs.apply(params, x), atol=1e-5)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4),
               jax.grad(loss(ours))(params), jax.grad(loss(theirs))(params))
