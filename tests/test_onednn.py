"""oneDNN kernels (diffseg_jax/nn/onednn.py) against float64 numpy convolutions and products.

The fused GroupNorm kernel of the same library is tested with the other GroupNorms in
test_layers.py."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffseg_jax.nn import layers
from diffseg_jax.nn import onednn

pytestmark = pytest.mark.skipif(
    not onednn.available(),
    reason="oneDNN kernels unavailable: install the `cpu` extra (pip install -e '.[cpu]') "
    "and a C++ compiler")


def _numpy_conv(x, w, strides, padding):
  """Forward and both gradients of an NHWC/HWIO convolution, in float64 loops over taps.

  Returns (y, vjp) where vjp(dy) -> (dx, dw).
  """
  x, w = x.astype(np.float64), w.astype(np.float64)
  (top, bottom), (left, right) = padding
  xp = np.pad(x, ((0, 0), (top, bottom), (left, right), (0, 0)))
  kh, kw = w.shape[:2]
  oh = (xp.shape[1] - kh) // strides[0] + 1
  ow = (xp.shape[2] - kw) // strides[1] + 1

  def window(i, j):
    return (slice(None), slice(i, i + strides[0] * (oh - 1) + 1, strides[0]),
            slice(j, j + strides[1] * (ow - 1) + 1, strides[1]), slice(None))

  y = sum(xp[window(i, j)] @ w[i, j] for i in range(kh) for j in range(kw))

  def vjp(dy):
    dy = dy.astype(np.float64)
    dxp = np.zeros_like(xp)
    dw = np.zeros_like(w)
    for i in range(kh):
      for j in range(kw):
        dxp[window(i, j)] += dy @ w[i, j].T
        dw[i, j] = np.einsum("bhwc,bhwo->co", xp[window(i, j)], dy)
    dx = dxp[:, top:xp.shape[1] - bottom, left:xp.shape[2] - right]
    return dx, dw

  return y, vjp


CASES = [
    # x shape, kernel shape, strides, padding
    ((2, 9, 7, 5), (3, 3, 5, 4), (1, 1), ((1, 1), (1, 1))),
    ((3, 8, 8, 6), (3, 3, 6, 7), (2, 2), ((1, 1), (1, 1))),  # ADM's downsampling conv
    ((2, 5, 5, 3), (1, 1, 3, 4), (1, 1), ((0, 0), (0, 0))),  # skip connections
    ((1, 7, 6, 2), (3, 3, 2, 3), (2, 1), ((0, 1), (2, 0))),  # odd sizes, uneven padding
    ((2, 6, 6, 16), (3, 3, 16, 24), (1, 1), ((1, 1), (1, 1))),  # blocked filter gradients
]


@pytest.mark.parametrize("x_shape, w_shape, strides, padding", CASES)
def test_forward_and_gradients_match_float64_numpy(x_shape, w_shape, strides, padding):
  rng = np.random.default_rng(0)
  x = rng.normal(size=x_shape).astype(np.float32)
  w = rng.normal(size=w_shape).astype(np.float32)
  b = rng.normal(size=w_shape[-1:]).astype(np.float32)
  expected_y, numpy_vjp = _numpy_conv(x, w, strides, padding)
  expected_y = expected_y + b
  dy = rng.normal(size=expected_y.shape).astype(np.float32)
  expected_dx, expected_dw = numpy_vjp(dy)
  expected_db = dy.astype(np.float64).sum(axis=(0, 1, 2))

  def conv(x, w, b):
    return onednn.conv2d(x, w, b, strides=strides, padding=padding)

  y, vjp = jax.vjp(jax.jit(conv), jnp.asarray(x), jnp.asarray(w), jnp.asarray(b))
  dx, dw, db = jax.jit(vjp)(jnp.asarray(dy))
  scale = np.sqrt(np.prod(w_shape[:3]))  # float32 error grows with the summed terms
  np.testing.assert_allclose(y, expected_y, rtol=1e-5, atol=1e-6 * scale)
  np.testing.assert_allclose(dx, expected_dx, rtol=1e-5, atol=1e-6 * scale)
  np.testing.assert_allclose(dw, expected_dw, rtol=1e-5, atol=1e-5 * scale)
  np.testing.assert_allclose(db, expected_db, rtol=1e-5, atol=1e-5 * np.sqrt(dy.size))


def test_float32_cpu_programs_call_onednn_and_others_call_xla():
  x = jnp.ones((1, 6, 6, 2))
  w = jnp.ones((3, 3, 2, 4))
  b = jnp.ones((4,))

  def hlo(x, w, b):
    return jax.jit(lambda x, w, b: jax.grad(
        lambda x, w, b: layers.conv2d(x, w, b, (1, 1), ((1, 1), (1, 1))).sum(),
        argnums=(0, 1, 2))(x, w, b)).lower(x, w, b).compile().as_text()

  float32 = hlo(x, w, b)
  assert "diffseg_onednn_conv_bwd" in float32 and " convolution(" not in float32
  bfloat16 = hlo(*(a.astype(jnp.bfloat16) for a in (x, w, b)))
  assert "diffseg_onednn" not in bfloat16 and " convolution(" in bfloat16


def test_conv2d_names_a_mismatched_bias():
  with pytest.raises(ValueError, match=r"bias of shape \(4,\) .* got \(3,\)"):
    onednn.conv2d(jnp.ones((1, 6, 6, 2)), jnp.ones((3, 3, 2, 4)), jnp.ones((3,)),
                  strides=(1, 1), padding=((1, 1), (1, 1)))


def test_kernels_compile_once_into_the_cache(tmp_path, monkeypatch):
  monkeypatch.setenv("DIFFSEG_CACHE_DIR", str(tmp_path))
  library = onednn._compiled_library()
  assert library.parent == tmp_path / "onednn" and library.exists()
  built = library.stat().st_mtime_ns
  assert onednn._compiled_library() == library
  assert library.stat().st_mtime_ns == built
  assert [p.name for p in library.parent.iterdir()] == [library.name]  # no partial files


def test_a_missing_extra_names_the_install_command(monkeypatch):
  monkeypatch.setattr(onednn, "_LIBRARY", ("onednn-not-a-distribution", "libdnnl.so.3"))
  with pytest.raises(onednn._Unavailable, match=r"pip install 'diffseg_jax\[cpu\]'"):
    onednn._compiled_library()


MATMUL_CASES = [
    # a shape, b shape
    ((2, 3, 7, 5), (2, 3, 5, 4)),  # attention's [B, heads, T, ch] products
    ((4, 16, 8), (4, 8, 16)),
    ((6, 5), (5, 9)),  # no batch axes
]


@pytest.mark.parametrize("a_shape, b_shape", MATMUL_CASES)
def test_matmul_and_gradients_match_float64_numpy(a_shape, b_shape):
  rng = np.random.default_rng(1)
  a = rng.normal(size=a_shape).astype(np.float32)
  b = rng.normal(size=b_shape).astype(np.float32)
  a64, b64 = a.astype(np.float64), b.astype(np.float64)
  expected = a64 @ b64
  g = rng.normal(size=expected.shape).astype(np.float32)
  # d<g, a b>/da = g b^T, d<g, a b>/db = a^T g, written out as sums over the index shared.
  expected_da = np.einsum("...mn,...kn->...mk", g.astype(np.float64), b64)
  expected_db = np.einsum("...mk,...mn->...kn", a64, g.astype(np.float64))

  c, vjp = jax.vjp(jax.jit(onednn.matmul), jnp.asarray(a), jnp.asarray(b))
  da, db = jax.jit(vjp)(jnp.asarray(g))
  tol = dict(rtol=1e-5, atol=1e-5 * np.sqrt(max(a_shape[-1], a_shape[-2], b_shape[-1])))
  np.testing.assert_allclose(c, expected, **tol)
  np.testing.assert_allclose(da, expected_da, **tol)
  np.testing.assert_allclose(db, expected_db, **tol)


def test_float32_cpu_products_call_onednn_and_others_call_xla():
  a, b = jnp.ones((2, 4, 3)), jnp.ones((2, 3, 5))

  def hlo(a, b):
    value_and_grad = jax.value_and_grad(lambda a, b: onednn.matmul(a, b).sum(), argnums=(0, 1))
    return jax.jit(value_and_grad).lower(a, b).compile().as_text()

  float32 = hlo(a, b)  # the product and both gradients
  assert float32.count("custom_call_target=\"diffseg_onednn_matmul\"") == 3
  assert " dot(" not in float32
  assert "diffseg_onednn" not in hlo(a.astype(jnp.bfloat16), b.astype(jnp.bfloat16))


def test_matmul_names_mismatched_operands():
  with pytest.raises(ValueError, match=r"same batch axes, got \(2, 4, 3\) and \(3, 3, 5\)"):
    onednn.matmul(jnp.ones((2, 4, 3)), jnp.ones((3, 3, 5)))
