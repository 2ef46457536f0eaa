"""Tests of SegDiff's network, the mask encodings and the outputs of the segmentation models."""

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import tiny_config

from diffseg_jax.methods import masks as mask_lib
from diffseg_jax.methods.segmentation import SegDiffModel, SupervisedModel
from diffseg_jax.nn.segdiff import SegDiffNet

IGNORE = 255
BATCH, SIZE, ENSEMBLE = 2, 16, 3
# name: (data.mask_classes, segdiff.mask_encoding, encoded channels)
CASES = {"binary": (2, "auto", 1), "onehot": (3, "auto", 3), "bits": (5, "bits", 3)}


def perturbed(params, scale: float = 0.05, seed: int = 1):
  """``params`` plus Gaussian noise, so that zero-initialised output layers give non-zero,
  parameter-dependent outputs."""
  rng = np.random.default_rng(seed)
  return jax.tree.map(lambda p: p + scale * rng.standard_normal(p.shape, np.float32), params)


def sample_images(seed: int = 7) -> jax.Array:
  """float32 [BATCH, SIZE, SIZE, 1] uniform in [-1, 1]."""
  return jax.random.uniform(jax.random.key(seed), (BATCH, SIZE, SIZE, 1), jnp.float32, -1, 1)


def numpy_entropy(probs: np.ndarray) -> np.ndarray:
  """Entropy in nats over the last axis, float64, with 0 log 0 = 0."""
  p = np.asarray(probs, np.float64)
  logs = np.log(np.where(p > 0, p, 1.0))
  return -np.sum(p * logs, axis=-1)


# ---------------------------------------------------------------------------------------------
# Outputs of SegDiffModel.segment and SupervisedModel.segment.


@pytest.fixture(scope="module", params=list(CASES))
def segdiff_case(request):
  """(name, model, perturbed params, segment outputs with members) for each encoding."""
  classes, encoding, _ = CASES[request.param]
  model = SegDiffModel(tiny_config.get_segmentation_config("segdiff", classes, encoding))
  params = perturbed(tiny_config.init_params(model))
  segment = jax.jit(functools.partial(model.segment, steps=5, sampler="ddim",
                                      ensemble=ENSEMBLE, return_members=True))
  return request.param, model, params, segment(params, sample_images(), jax.random.key(2))


@pytest.fixture(scope="module", params=list(CASES))
def supervised_case(request):
  """(name, segment outputs with members, logits) for each encoding, perturbed params."""
  classes, encoding, _ = CASES[request.param]
  model = SupervisedModel(tiny_config.get_segmentation_config("supervised", classes, encoding))
  params = perturbed(tiny_config.init_params(model))

  def run(params, images):
    return model.segment(params, images, return_members=True), model.logits(params, images)

  return (request.param, *jax.jit(run)(params, sample_images()))


def check_prediction(out: dict, num_classes: int, members: int) -> None:
  """Shapes, dtypes and ranges of a ``segment`` result, and its statistics recomputed in
  float64 from its ``member_probs``."""
  k = num_classes
  assert set(out) == {"mask", "probs", "variance", "entropy", "member_probs"}
  assert out["mask"].shape == (BATCH, SIZE, SIZE) and out["mask"].dtype == jnp.int32
  assert out["probs"].shape == (BATCH, SIZE, SIZE, k)
  assert out["variance"].shape == out["entropy"].shape == (BATCH, SIZE, SIZE)
  assert out["member_probs"].shape == (members, BATCH, SIZE, SIZE, k)
  mask, probs, variance, entropy, member_probs = (
      np.asarray(out[name]) for name in ("mask", "probs", "variance", "entropy",
                                         "member_probs"))
  assert mask.min() >= 0 and mask.max() <= k - 1
  for p in (probs, member_probs):
    assert p.min() >= 0.0 and p.max() <= 1.0
    np.testing.assert_allclose(p.sum(-1), 1.0, atol=1e-6)
  assert variance.min() >= 0.0 and variance.max() <= 1.0
  assert entropy.min() >= 0.0 and entropy.max() <= math.log(k) + 1e-6
  m64 = member_probs.astype(np.float64)
  np.testing.assert_allclose(probs, m64.mean(0), atol=1e-6)
  np.testing.assert_array_equal(mask, np.argmax(probs, -1))
  np.testing.assert_allclose(variance, m64.var(0).sum(-1), atol=1e-6)
  np.testing.assert_allclose(entropy, numpy_entropy(probs), atol=1e-5)


def test_segdiff_segment_outputs(segdiff_case):
  name, model, _, out = segdiff_case
  classes = CASES[name][0]
  check_prediction(out, classes, ENSEMBLE)
  members = np.asarray(out["member_probs"])
  if name == "binary":
    # The mask is the mean foreground probability thresholded at 0.5.
    np.testing.assert_array_equal(out["mask"], np.asarray(out["probs"])[..., 1] > 0.5)
  else:
    # Each sampled mask decodes to one class per pixel.
    assert set(np.unique(members)) <= {0.0, 1.0}
  # The ensemble's members are different samples, not copies of one.
  assert float(np.max(out["variance"])) > 0.0
  assert not np.array_equal(members[0], members[1])
  assert model.mask_channels == CASES[name][2]


@pytest.mark.parametrize("segdiff_case", ["onehot"], indirect=True)
def test_segdiff_segment_ddpm_outputs(segdiff_case):
  name, model, params, _ = segdiff_case
  out = jax.jit(functools.partial(model.segment, steps=4, sampler="ddpm", ensemble=2,
                                  return_members=True))(params, sample_images(),
                                                        jax.random.key(3))
  check_prediction(out, CASES[name][0], 2)


class SignOfTheImage:
  """Stands in for ``SegDiffNet``: the image features are the image, and the network predicts
  the mask x0 = sign(features) whatever the noisy mask and timestep."""

  def apply(self, variables, *args, method=None, **unused_kwargs):
    if method is SegDiffNet.encode_image:
      return args[0]
    assert method is SegDiffNet.denoise
    _, _, features = args
    return jnp.sign(features)


@pytest.mark.parametrize("sampler", ["ddpm", "ddim"])
def test_each_member_is_sampled_for_its_own_image(sampler, monkeypatch):
  config = tiny_config.get_segmentation_config("segdiff", 2)
  config.diffusion.model_mean_type = "x0"
  model = SegDiffModel(config)
  monkeypatch.setattr(model, "network", SignOfTheImage())
  images = np.full((3, 4, 4, 1), -1.0, np.float32)  # three images, three masks
  images[0, :2] = images[1, :, :1] = images[2, 3, 3] = 1.0
  out = model.segment(None, jnp.asarray(images), jax.random.key(0), steps=5, sampler=sampler,
                      ensemble=2, return_members=True)
  # The last step's mean is the predicted x0: every member is exactly its image's mask.
  expected = np.eye(2)[(images[..., 0] > 0).astype(int)]
  np.testing.assert_array_equal(out["member_probs"], np.broadcast_to(expected, (2, 3, 4, 4, 2)))
  np.testing.assert_array_equal(out["mask"], images[..., 0] > 0)


def test_supervised_segment_outputs(supervised_case):
  name, out, logits = supervised_case
  classes = CASES[name][0]
  check_prediction(out, classes, 1)
  np.testing.assert_array_equal(out["variance"], 0.0)
  logits = np.asarray(logits, np.float64)
  assert logits.shape == (BATCH, SIZE, SIZE, classes)
  softmax = np.exp(logits - logits.max(-1, keepdims=True))
  softmax /= softmax.sum(-1, keepdims=True)
  np.testing.assert_allclose(out["probs"], softmax, atol=1e-6)
  # Perturbed parameters give a prediction that is not uniform.
  assert float(np.min(out["entropy"])) < math.log(classes) - 1e-3


# ---------------------------------------------------------------------------------------------
# Mask encodings (methods/masks.py).


@pytest.mark.parametrize("encoding,num_classes,channels", [
    ("binary", 2, 1), ("onehot", 2, 2), ("onehot", 3, 3), ("onehot", 7, 7), ("bits", 3, 2),
    ("bits", 5, 3), ("bits", 8, 3), ("bits", 33, 6), ("auto", 2, 1), ("auto", 32, 32),
    ("auto", 33, 6)])
def test_encode_decode_round_trip(encoding, num_classes, channels):
  ids = np.concatenate([np.arange(num_classes), [IGNORE, 0, IGNORE]]).astype(np.int32)
  masks = jnp.asarray(np.resize(ids, (2, 3, len(ids))))  # [B, H, W] with every id
  x = np.asarray(mask_lib.encode(masks, num_classes, encoding))
  assert mask_lib.num_channels(encoding, num_classes) == channels
  assert x.shape == (*masks.shape, channels) and x.dtype == np.float32
  valid = np.asarray(masks) != IGNORE
  np.testing.assert_array_equal(x[~valid], 0.0)
  assert set(np.unique(x[valid])) <= {-1.0, 1.0}
  # Every class has its own code.
  codes = {tuple(x[valid][i]) for i in range(valid.sum())}
  assert len(codes) == num_classes
  decoded = np.argmax(mask_lib.class_probabilities(jnp.asarray(x), num_classes, encoding), -1)
  np.testing.assert_array_equal(decoded[valid], np.asarray(masks)[valid])
  # Samples are only about +-1: noise below the decision margin decodes to the same ids.
  noise = np.random.default_rng(0).uniform(-0.45, 0.45, x.shape).astype(np.float32)
  noisy = mask_lib.class_probabilities(jnp.asarray(x + noise), num_classes, encoding)
  np.testing.assert_array_equal(np.argmax(noisy, -1)[valid], np.asarray(masks)[valid])


def test_encodings_against_their_definitions():
  ids = np.array([[0, 1, 2, 4, IGNORE]], np.int32)[None]  # [1, 1, 5]
  binary = mask_lib.encode(jnp.asarray(np.array([[[0, 1, IGNORE]]])), 2, "binary")
  np.testing.assert_array_equal(binary[..., 0], [[[-1.0, 1.0, 0.0]]])
  onehot = np.asarray(mask_lib.encode(jnp.asarray(ids), 5, "onehot"))
  expected = -np.ones((1, 1, 5, 5))
  for i, c in enumerate([0, 1, 2, 4]):
    expected[0, 0, i, c] = 1.0
  expected[0, 0, 4] = 0.0
  np.testing.assert_array_equal(onehot, expected)
  # Analog bits: channel i is bit i of the id (least significant first).
  bits = np.asarray(mask_lib.encode(jnp.asarray(ids), 5, "bits"))
  np.testing.assert_array_equal(bits[0, 0], [[-1, -1, -1], [1, -1, -1], [-1, 1, -1],
                                             [-1, -1, 1], [0, 0, 0]])


def test_binary_decoding_is_soft():
  x = np.linspace(-1.5, 1.5, 31, dtype=np.float32)
  probs = np.asarray(mask_lib.class_probabilities(jnp.asarray(x[:, None]), 2, "binary"))
  p1 = np.clip((x.astype(np.float64) + 1) / 2, 0, 1)
  np.testing.assert_allclose(probs, np.stack([1 - p1, p1], -1), atol=1e-7)


def test_bits_past_the_last_class_decode_to_it():
  # 5 classes in 3 bits: codes 5, 6 and 7 name no class and are read as class 4.
  codes = np.array([[-1, 1, -1], [1, -1, 1], [-1, 1, 1], [1, 1, 1]], np.float32)  # 2, 5, 6, 7
  probs = mask_lib.class_probabilities(jnp.asarray(codes), 5, "bits")
  np.testing.assert_array_equal(np.argmax(probs, -1), [2, 4, 4, 4])
  np.testing.assert_array_equal(np.asarray(probs).sum(-1), 1.0)


def test_auto_encoding_choice():
  assert mask_lib.resolve_encoding("auto", 2) == "binary"
  assert mask_lib.resolve_encoding("auto", 3) == "onehot"
  assert mask_lib.resolve_encoding("auto", 32) == "onehot"
  assert mask_lib.resolve_encoding("auto", 33) == "bits"
  assert mask_lib.resolve_encoding("bits", 2) == "bits"


def check_combined(member_probs: np.ndarray) -> None:
  out = mask_lib.combine_members(jnp.asarray(member_probs, jnp.float32))
  m = member_probs.astype(np.float64)
  mean = m.mean(0)
  np.testing.assert_allclose(out["probs"], mean, atol=1e-6)
  np.testing.assert_array_equal(out["mask"], np.argmax(np.asarray(out["probs"]), -1))
  assert out["mask"].dtype == jnp.int32
  np.testing.assert_allclose(out["variance"], m.var(0).sum(-1), atol=1e-6)
  np.testing.assert_allclose(out["entropy"], numpy_entropy(mean), atol=1e-5)


def test_combine_members_against_numpy():
  rng = np.random.default_rng(0)
  check_combined(rng.dirichlet(np.ones(4), size=(5, 2, 3, 7)))  # soft members, K = 4
  # One-hot members (zero probabilities: 0 log 0 = 0), K = 3.
  check_combined(np.eye(3)[rng.integers(0, 3, size=(6, 2, 4, 4))])
  # Members that agree: no variance, no entropy.
  agree = np.broadcast_to(np.eye(3)[rng.integers(0, 3, size=(1, 2, 4, 4))], (4, 2, 4, 4, 3))
  out = mask_lib.combine_members(jnp.asarray(agree, jnp.float32))
  np.testing.assert_array_equal(out["variance"], 0.0)
  np.testing.assert_array_equal(out["entropy"], 0.0)


def test_combine_members_binary_threshold_and_extremes():
  p1 = np.array([0.2, 0.49, 0.51, 0.9])
  members = np.stack([1 - p1, p1], -1)[None, None, None]  # one member, [1, 1, 1, 4, 2]
  out = mask_lib.combine_members(jnp.asarray(members, jnp.float32))
  np.testing.assert_array_equal(out["mask"], [[[0, 0, 1, 1]]])
  np.testing.assert_array_equal(out["variance"], 0.0)
  # Two members that disagree completely: the largest variance (twice 0.25) and entropy log 2.
  split = np.stack([np.array([[1.0, 0.0]]), np.array([[0.0, 1.0]])])[:, None, None]
  out = mask_lib.combine_members(jnp.asarray(split, jnp.float32))
  np.testing.assert_allclose(out["variance"], 0.5, atol=1e-7)
  np.testing.assert_allclose(out["entropy"], math.log(2), atol=1e-6)


# ---------------------------------------------------------------------------------------------
# SegDiffNet: the U-Net over masks conditioned on the RRDB image encoder.


@pytest.fixture(scope="module")
def network_case():
  """A binary SegDiffNet with perturbed parameters, noisy masks, timesteps and images."""
  model = SegDiffModel(tiny_config.get_segmentation_config("segdiff", 2))
  params = perturbed(tiny_config.init_params(model))
  x_t = jax.random.normal(jax.random.key(3), (BATCH, SIZE, SIZE, 1))
  t = jnp.array([3, 40])
  return model.network, {"params": params}, x_t, t, sample_images(8)


def apply_fn(network: SegDiffNet, method):
  return jax.jit(functools.partial(network.apply, method=method))


def unet_alone(network: SegDiffNet, x_t, t):
  return network.unet(x_t, t)


def test_call_is_denoise_of_encoded_image(network_case):
  network, variables, x_t, t, images = network_case
  out = jax.jit(network.apply)(variables, x_t, t, images)
  features = apply_fn(network, SegDiffNet.encode_image)(variables, images)
  denoised = apply_fn(network, SegDiffNet.denoise)(variables, x_t, t, features)
  assert out.shape == (BATCH, SIZE, SIZE, 1) and out.dtype == jnp.float32
  np.testing.assert_allclose(out, denoised, rtol=1e-6, atol=1e-6)


def test_image_features_are_added_after_the_stem_conv(network_case):
  network, variables, x_t, t, images = network_case
  denoise = apply_fn(network, SegDiffNet.denoise)
  alone = apply_fn(network, unet_alone)
  width = network.unet.model_channels * network.unet.channel_mult[0]
  # Zero features leave the U-Net as it is.
  np.testing.assert_allclose(denoise(variables, x_t, t, jnp.zeros((*x_t.shape[:3], width))),
                             alone(variables, x_t, t), rtol=1e-6, atol=1e-6)
  # Spatially constant features v are the stem conv's bias plus v.
  v = jax.random.normal(jax.random.key(5), (width,))
  shifted = jax.tree.map(lambda a: a, variables)
  stem = shifted["params"]["unet"]["input_blocks_0_0"]
  shifted["params"]["unet"]["input_blocks_0_0"] = dict(stem, bias=stem["bias"] + v)
  np.testing.assert_allclose(
      denoise(variables, x_t, t, jnp.broadcast_to(v, (*x_t.shape[:3], width))),
      alone(shifted, x_t, t), rtol=1e-5, atol=1e-5)


def test_image_changes_the_output(network_case):
  network, variables, x_t, t, images = network_case
  run = jax.jit(network.apply)
  with_image = np.asarray(run(variables, x_t, t, images))
  other = np.asarray(run(variables, x_t, t, -images))
  without = np.asarray(apply_fn(network, unet_alone)(variables, x_t, t))
  scale = np.abs(with_image).mean()
  assert np.abs(with_image - other).mean() > 1e-2 * scale
  assert np.abs(with_image - without).mean() > 1e-2 * scale


def test_stem_features_of_the_wrong_shape_raise(network_case):
  network, variables, x_t, t, _ = network_case
  width = network.unet.model_channels * network.unet.channel_mult[0]
  for shape in [(BATCH, SIZE, SIZE, width + 1), (BATCH, SIZE // 2, SIZE // 2, width)]:
    with pytest.raises(ValueError, match=r"expected stem_features of shape"):
      network.apply(variables, x_t, t, jnp.zeros(shape), method=SegDiffNet.denoise)


def test_image_encoder_has_the_unet_stem_width():
  config = tiny_config.get_segmentation_config("segdiff", 3)
  config.model.model_channels = 16
  config.model.channel_mult = (2, 2)  # stem width 32, not model_channels
  model = SegDiffModel(config)
  shapes = jax.eval_shape(model.init, jax.random.key(0))
  assert shapes["unet"]["input_blocks_0_0"]["kernel"].shape == (3, 3, 3, 32)
  assert shapes["image_encoder"]["conv_last"]["kernel"].shape[-1] == 32
  assert shapes["image_encoder"]["conv_first"]["kernel"].shape == (3, 3, 1, 16)
  features = jax.eval_shape(
      functools.partial(model.network.apply, method=SegDiffNet.encode_image),
      {"params": shapes}, jax.ShapeDtypeStruct((2, SIZE, SIZE, 1), jnp.float32))
  assert features.shape == (2, SIZE, SIZE, 32) and features.dtype == jnp.float32
  out = jax.eval_shape(model.network.apply, {"params": shapes},
                       jax.ShapeDtypeStruct((2, SIZE, SIZE, 3), jnp.float32),
                       jax.ShapeDtypeStruct((2,), jnp.int32),
                       jax.ShapeDtypeStruct((2, SIZE, SIZE, 1), jnp.float32))
  assert out.shape == (2, SIZE, SIZE, 3)
