"""The building blocks whose gradients are hand-written for speed: GroupNorm, bias addition,
per-sample scale-shift, Conv and Dense. Each is checked against the plain formula, differentiated by JAX in float64."""

import flax.linen as flax_nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffseg_jax.nn import layers


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
