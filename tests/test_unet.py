"""Tests of the ADM networks in diffseg_jax.nn against the guided-diffusion reference outputs."""

import functools
import math

from conftest import load_fixture
import flax.traverse_util
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from diffseg_jax.convert import from_guided_diffusion
from diffseg_jax.nn import (
    EncoderUNetModel,
    SuperResUNetModel,
    UNetModel,
    check_image_size,
    qkv_attention,
    timestep_embedding,
)

# Reference float32 noise is ~1.2e-5 on outputs of magnitude ~5 (fixtures README).
OUTPUT_ATOL = 5e-5
# Float32 rounding noise grows with the magnitude of the values: decoder features reach ~22,
# where correct kernels differ by up to 5.3e-5 (2.5e-6 of the largest value, as on the
# output). Features are held to the output's bound relative to their largest value.
FEATURE_RTOL_OF_MAX = OUTPUT_ATOL / 5.0
# Sinusoids of arguments up to ~1000 rad differ by ~1e-5 between correct float32 kernels.
EMBEDDING_ATOL = 3e-5


def _nhwc(a: np.ndarray) -> jax.Array:
  return jnp.asarray(np.transpose(a, (0, 2, 3, 1)))


def _nchw(a: jax.Array) -> np.ndarray:
  return np.transpose(np.asarray(a), (0, 3, 1, 2))


def _max_abs_diff(a, b) -> float:
  return float(np.max(np.abs(np.asarray(a, np.float32) - np.asarray(b, np.float32))))


@pytest.fixture(scope="module")
def unet_case(fixtures_dir):
  """adm_unet_a: arrays, converted config and params, inputs, and a jitted apply."""
  arrays, meta = load_fixture(fixtures_dir, "adm_unet_a")
  config, params = from_guided_diffusion(arrays, meta["config"])
  inputs = {
      "x": _nhwc(arrays["in/x"]),
      "timesteps": jnp.asarray(arrays["in/timesteps"]),
      "y": jnp.asarray(arrays["in/y"]),
  }

  def apply(model):
    run = functools.partial(model.apply, return_features=True, mutable=["intermediates"])
    return jax.jit(run)({"params": params}, inputs["x"], inputs["timesteps"], y=inputs["y"])

  (out, features), state = apply(UNetModel(**config))
  return {
      "arrays": arrays,
      "config": config,
      "params": params,
      "inputs": inputs,
      "apply": apply,
      "out": out,
      "features": features,
      "emb": state["intermediates"]["emb"][0],
  }


def test_unet_output_matches_reference(unet_case):
  out = unet_case["out"]
  assert out.dtype == jnp.float32
  assert _max_abs_diff(_nchw(out), unet_case["arrays"]["out/output"]) <= OUTPUT_ATOL


def test_unet_decoder_features_match_reference_blocks(unet_case):
  arrays, features = unet_case["arrays"], unet_case["features"]
  assert len(features) == 9
  for i, feature in enumerate(features):
    reference = arrays[f"out/intermediate/output_blocks.{i}"]
    assert _nchw(feature).shape == reference.shape
    bound = FEATURE_RTOL_OF_MAX * max(5.0, float(np.abs(reference).max()))
    assert _max_abs_diff(_nchw(feature), reference) <= bound, f"output_blocks.{i}"


def test_unet_embedding_matches_reference(unet_case):
  arrays = unet_case["arrays"]
  sinusoid = timestep_embedding(unet_case["inputs"]["timesteps"], 32)
  assert sinusoid.dtype == jnp.float32
  assert _max_abs_diff(sinusoid, arrays["out/timestep_embedding"]) <= EMBEDDING_ATOL
  assert _max_abs_diff(unet_case["emb"], arrays["out/emb"]) <= EMBEDDING_ATOL


def test_timestep_embedding_layout():
  t = jnp.array([0, 5])
  emb = timestep_embedding(t, 7)
  freqs = np.exp(-math.log(10000.0) * np.arange(3) / 3)
  np.testing.assert_allclose(emb[1, :3], np.cos(5 * freqs), rtol=1e-6)
  np.testing.assert_allclose(emb[1, 3:6], np.sin(5 * freqs), rtol=1e-6)
  np.testing.assert_array_equal(emb[:, 6], 0.0)
  np.testing.assert_array_equal(emb[0, :3], 1.0)


def _numpy_attention(qkv: np.ndarray, num_heads: int, legacy_order: bool) -> np.ndarray:
  """Per-head loop over explicit channel slices of ``qkv [B, T, 3C]``."""
  width = qkv.shape[-1]
  ch = width // (3 * num_heads)
  channels = num_heads * ch
  heads = []
  for head in range(num_heads):
    if legacy_order:
      start = head * 3 * ch
      q, k, v = (qkv[..., start + i * ch:start + (i + 1) * ch] for i in range(3))
    else:
      q, k, v = (
          qkv[..., i * channels + head * ch:i * channels + (head + 1) * ch]
          for i in range(3)
      )
    logits = np.einsum("btc,bsc->bts", q, k) / np.sqrt(ch)
    weights = np.exp(logits - logits.max(axis=-1, keepdims=True))
    weights /= weights.sum(axis=-1, keepdims=True)
    heads.append(np.einsum("bts,bsc->btc", weights, v))
  return np.concatenate(heads, axis=-1)


@pytest.mark.parametrize("legacy_order", [True, False])
def test_qkv_attention_splits_channels_as_documented(legacy_order):
  qkv = np.random.default_rng(0).normal(size=(2, 5, 3 * 4 * 8)).astype(np.float32)
  got = qkv_attention(jnp.asarray(qkv), 4, legacy_order=legacy_order)
  expected = _numpy_attention(qkv.astype(np.float64), 4, legacy_order)
  np.testing.assert_allclose(got, expected, atol=1e-5)
  other = _numpy_attention(qkv.astype(np.float64), 4, not legacy_order)
  assert np.max(np.abs(np.asarray(got) - other)) > 1e-2


def test_new_attention_order_changes_unet_output(unet_case):
  config = {**unet_case["config"], "use_new_attention_order": True}
  (out, _), _ = unet_case["apply"](UNetModel(**config))
  # The README reports ~1.3 for swapping the orders in this case.
  assert _max_abs_diff(out, unet_case["out"]) > 0.5


def test_bfloat16_compute_keeps_float32_params_and_output(unet_case):
  model = UNetModel(**unet_case["config"], dtype=jnp.bfloat16)
  inputs = unet_case["inputs"]
  shapes = jax.eval_shape(
      model.init, jax.random.key(0), inputs["x"], inputs["timesteps"], y=inputs["y"]
  )
  assert {leaf.dtype for leaf in jax.tree.leaves(shapes)} == {jnp.dtype(jnp.float32)}
  (out, features), _ = unet_case["apply"](model)
  assert out.dtype == jnp.float32
  assert features[-1].dtype == jnp.bfloat16
  # bfloat16 keeps 8 significant bits (relative rounding ~4e-3 per op). Through ~40 convs and
  # attention layers with random, untrained weights (no layer is zero-initialised here) the
  # roundings compound to ~2.6e-2 relative (measured), so only a loose bound is meaningful;
  # a wrong wiring gives errors of order 1.
  reference = np.asarray(unet_case["out"])
  relative = np.linalg.norm(np.asarray(out) - reference) / np.linalg.norm(reference)
  assert 0 < relative < 5e-2


def _random_params(model, *args, seed: int = 0, **kwargs):
  """Draws every parameter as the fixtures do (GroupNorm scales 1 + 0.1 N, the rest 0.1 N).

  Shapes come from ``jax.eval_shape``; numpy draws the values, so nothing is compiled, and
  the reference's zero-initialised layers are non-zero.
  """
  shapes = jax.eval_shape(model.init, jax.random.key(0), *args, **kwargs)["params"]
  rng = np.random.default_rng(seed)
  flat = {
      path: 0.1 * rng.standard_normal(leaf.shape, np.float32) + (path[-1] == "scale")
      for path, leaf in flax.traverse_util.flatten_dict(shapes).items()
  }
  return flax.traverse_util.unflatten_dict(flat)


TINY = dict(
    image_size=8,
    in_channels=1,
    model_channels=32,
    out_channels=2,
    num_res_blocks=1,
    attention_resolutions=(2,),
    channel_mult=(1, 2),
    num_head_channels=16,
)


def test_float_and_scalar_timesteps_match_integer_ones():
  model = UNetModel(**TINY)
  x = jax.random.normal(jax.random.key(0), (1, 8, 8, 1))
  variables = {"params": _random_params(model, x, jnp.zeros(1))}
  by_int = model.apply(variables, x, jnp.array([977]))
  np.testing.assert_array_equal(by_int, model.apply(variables, x, jnp.array([977.0])))
  np.testing.assert_array_equal(by_int, model.apply(variables, x, 977))
  assert _max_abs_diff(by_int, model.apply(variables, x, jnp.array([976]))) > 1e-4


def test_return_features_shapes():
  model = UNetModel(**TINY)
  x, t = jnp.ones((3, 8, 8, 1)), jnp.zeros(3)
  (out, features), _ = jax.eval_shape(
      functools.partial(model.init_with_output, return_features=True), jax.random.key(0), x, t
  )
  assert out.shape == (3, 8, 8, 2)
  assert [f.shape for f in features] == [
      (3, 4, 4, 64), (3, 8, 8, 64), (3, 8, 8, 32), (3, 8, 8, 32)
  ]


def test_dropout_only_active_in_training():
  model = UNetModel(**TINY, dropout=0.5)
  x = jax.random.normal(jax.random.key(1), (2, 8, 8, 1))
  t = jnp.array([1, 500])
  variables = {"params": _random_params(model, x, t)}
  evaluated = model.apply(variables, x, t)
  np.testing.assert_array_equal(evaluated, model.apply(variables, x, t, train=False))
  drop_a = model.apply(variables, x, t, train=True, rngs={"dropout": jax.random.key(3)})
  drop_b = model.apply(variables, x, t, train=True, rngs={"dropout": jax.random.key(4)})
  assert _max_abs_diff(drop_a, evaluated) > 1e-3
  assert _max_abs_diff(drop_a, drop_b) > 1e-3
  no_dropout = UNetModel(**TINY, dropout=0.0)
  np.testing.assert_array_equal(
      no_dropout.apply(variables, x, t, train=True, rngs={"dropout": jax.random.key(3)}),
      evaluated,
  )


def test_check_image_size():
  check_image_size(32, (1, 2, 2))
  check_image_size((8, 16), (1, 2, 2, 2))
  with pytest.raises(ValueError, match=r"image height 30 .*28 or 32"):
    check_image_size(30, (1, 2, 2))
  with pytest.raises(ValueError, match=r"image width 20 .*16 or 24"):
    check_image_size((16, 20), (1, 2, 2, 2))


def _trace(model, x, t, **kwargs):
  """Initialises abstractly: raises before anything is compiled."""
  return jax.eval_shape(model.init, jax.random.key(0), x, t, **kwargs)


def test_indivisible_image_size_fails_at_trace_time():
  model = UNetModel(**{**TINY, "channel_mult": (1, 2, 2)})
  with pytest.raises(ValueError, match=r"image height 10 .*8 or 12"):
    _trace(model, jnp.zeros((1, 10, 12, 1)), jnp.zeros(1))


@pytest.mark.parametrize(
    "overrides, kwargs, message",
    [
        ({}, {"x": (1, 8, 8, 3)}, r"\[B, H, W, 1\]"),
        ({"model_channels": 48}, {}, r"divisible by 32, got 48"),
        ({"num_head_channels": 24}, {}, r"num_head_channels=24 does not divide"),
        ({"num_head_channels": -1, "num_heads": 3}, {}, r"split into num_heads=3"),
        ({"num_classes": 4}, {}, r"expected integer labels y of shape \[1\], got None"),
        ({}, {"y": (1,)}, r"num_classes=None"),
        ({"concat_channels": 2}, {}, r"expected concat of shape \(1, 8, 8, 2\), got None"),
        ({"concat_channels": 2}, {"concat": (1, 8, 8, 3)}, r"got \(1, 8, 8, 3\)"),
        ({}, {"concat": (1, 8, 8, 2)}, r"concat_channels=0"),
        ({}, {"t": (2,)}, r"timesteps of shape \[1\]"),
    ],
)
def test_invalid_inputs_fail_at_trace_time(overrides, kwargs, message):
  model = UNetModel(**{**TINY, **overrides})
  x = jnp.zeros(kwargs.pop("x", (1, 8, 8, 1)))
  t = jnp.zeros(kwargs.pop("t", (1,)))
  extra = {name: jnp.zeros(shape, jnp.int32) for name, shape in kwargs.items()}
  with pytest.raises(ValueError, match=message):
    _trace(model, x, t, **extra)


def test_concat_channels_feed_the_stem_conv():
  model = UNetModel(**TINY, concat_channels=2)
  shapes = _trace(model, jnp.zeros((1, 8, 8, 1)), jnp.zeros(1), concat=jnp.zeros((1, 8, 8, 2)))
  assert shapes["params"]["input_blocks_0_0"]["kernel"].shape == (3, 3, 3, 32)


def test_superres_is_a_unet_with_upsampled_concat():
  sr = SuperResUNetModel(**TINY)
  unet = UNetModel(**TINY, concat_channels=1)
  x = jax.random.normal(jax.random.key(0), (2, 8, 8, 1))
  low_res = jax.random.normal(jax.random.key(1), (2, 4, 4, 1))
  t = jnp.array([3, 700])
  params = _random_params(sr, x, t, low_res)
  upsampled = jax.image.resize(low_res, (2, 8, 8, 1), "bilinear", antialias=False)
  np.testing.assert_array_equal(
      sr.apply({"params": params}, x, t, low_res),
      unet.apply({"params": params}, x, t, concat=upsampled),
  )


@pytest.fixture(scope="module")
def classifier_case(fixtures_dir):
  arrays, meta = load_fixture(fixtures_dir, "adm_classifier_a")
  config, params = from_guided_diffusion(arrays, meta["config"], model="classifier")
  return arrays, config, params


def test_classifier_output_matches_reference(classifier_case):
  arrays, config, params = classifier_case
  model = EncoderUNetModel(**config)
  logits, state = jax.jit(functools.partial(model.apply, mutable=["intermediates"]))(
      {"params": params}, _nhwc(arrays["in/x"]), jnp.asarray(arrays["in/timesteps"])
  )
  assert logits.shape == (2, 10) and logits.dtype == jnp.float32
  assert _max_abs_diff(logits, arrays["out/output"]) <= OUTPUT_ATOL
  assert _max_abs_diff(state["intermediates"]["emb"][0], arrays["out/emb"]) <= EMBEDDING_ATOL


def test_classifier_attention_pool_needs_image_size_inputs(classifier_case):
  _, config, _ = classifier_case
  model = EncoderUNetModel(**config)
  with pytest.raises(ValueError, match=r"attention pool expects 8x8 features, got 4x4"):
    _trace(model, jnp.zeros((1, 16, 16, 3)), jnp.zeros(1))


@pytest.mark.parametrize(
    "pool, head",
    [
        ("adaptive", {"out_0": {"scale": (64,), "bias": (64,)},
                      "out_3": {"kernel": (1, 1, 64, 5), "bias": (5,)}}),
        # Spatial features: the input blocks (32, 32, 32, 64) and the middle block (64).
        ("spatial", {"out_0": {"kernel": (224, 2048), "bias": (2048,)},
                     "out_2": {"kernel": (2048, 5), "bias": (5,)}}),
        ("spatial_v2", {"out_0": {"kernel": (224, 2048), "bias": (2048,)},
                        "out_1": {"scale": (2048,), "bias": (2048,)},
                        "out_3": {"kernel": (2048, 5), "bias": (5,)}}),
    ],
)
def test_classifier_pools(pool, head):
  model = EncoderUNetModel(**{**TINY, "out_channels": 5, "channel_mult": (1, 2)}, pool=pool)
  x = jax.random.normal(jax.random.key(0), (2, 8, 8, 1))
  t = jnp.array([1, 2])
  params = _random_params(model, x, t)
  got = {k: v for k, v in params.items() if k.startswith("out_")}
  assert jax.tree.map(lambda a: a.shape, got) == head
  logits = model.apply({"params": params}, x, t)
  assert logits.shape == (2, 5) and logits.dtype == jnp.float32
  assert np.all(np.isfinite(logits))


def test_classifier_unknown_pool():
  with pytest.raises(ValueError, match="unknown pool 'max'"):
    _trace(EncoderUNetModel(**TINY, pool="max"), jnp.zeros((1, 8, 8, 1)), jnp.zeros(1))


def test_superres_output_matches_reference(fixtures_dir):
  arrays, meta = load_fixture(fixtures_dir, "adm_superres_a")
  config, params = from_guided_diffusion(arrays, meta["config"], model="superres")
  model = SuperResUNetModel(**config)
  out = jax.jit(model.apply)(
      {"params": params},
      _nhwc(arrays["in/x"]),
      jnp.asarray(arrays["in/timesteps"]),
      _nhwc(arrays["in/low_res"]),
  )
  assert out.dtype == jnp.float32
  assert _max_abs_diff(_nchw(out), arrays["out/output"]) <= OUTPUT_ATOL
  stem = flax.traverse_util.flatten_dict(params)[("input_blocks_0_0", "kernel")]
  assert stem.shape == (3, 3, 6, 32)
