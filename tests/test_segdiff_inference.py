"""Segmentation inference: windows and their averaging, errors for bad input, the picture of
a prediction, and the shipped SegDiff config."""

import importlib.util
import itertools
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import tiny_config

from diffseg_jax import config as config_lib
from diffseg_jax import images as images_lib
from diffseg_jax.data import input_pipeline
from diffseg_jax.methods import masks as mask_lib
from diffseg_jax.methods import segmentation
from diffseg_jax.methods.segmentation import SegDiffModel, SupervisedModel

IGNORE = 255
REPO = pathlib.Path(__file__).resolve().parents[1]


# ---------------------------------------------------------------------------------------------
# Windows.


def test_window_starts_examples():
  assert segmentation.window_starts(37, 16, 8) == [0, 8, 16, 21]
  assert segmentation.window_starts(29, 16, 8) == [0, 8, 13]
  assert segmentation.window_starts(16, 16, 8) == [0]
  assert segmentation.window_starts(32, 16, 16) == [0, 16]
  assert segmentation.window_starts(33, 16, 16) == [0, 16, 17]


@pytest.mark.parametrize("patch", [1, 3, 8, 16])
def test_window_starts_cover_every_pixel_and_end_flush(patch):
  for size, stride in itertools.product(range(patch, 45), range(1, patch + 1)):
    starts = segmentation.window_starts(size, patch, stride)
    assert starts[0] == 0 and starts[-1] + patch == size, (size, stride, starts)
    steps = np.diff(starts)
    assert np.all(steps > 0) and np.all(steps[:-1] == stride) and np.all(steps <= stride)
    covered = np.zeros(size, bool)
    for s in starts:
      covered[s:s + patch] = True
    assert covered.all(), (size, stride, starts)


E, K = 3, 4  # members and classes of the fake segmenter


def fake_segment(windows: jax.Array) -> dict[str, jax.Array]:
  """Member class probabilities that depend on each pixel and on its window's mean, so that
  windows covering a pixel disagree about it: member e, class k ~ exp((e + 1)(k + 1)(pixel +
  2 * window mean))."""
  pixel = windows[..., 0]
  score = pixel + 2.0 * pixel.mean(axis=(1, 2), keepdims=True)
  logits = jnp.stack([(e + 1) * (k + 1) * score for e in range(E) for k in range(K)], -1)
  return {"member_probs": jnp.moveaxis(
      jax.nn.softmax(logits.reshape(*logits.shape[:3], E, K), axis=-1), 3, 0)}


def fake_segment_reference(window: np.ndarray) -> np.ndarray:
  """float64 [E, patch, patch, K] of ``fake_segment`` for one window [patch, patch, C]."""
  pixel = window[..., 0].astype(np.float64)
  score = pixel + 2.0 * pixel.mean()
  logits = np.stack([np.stack([(e + 1) * (k + 1) * score for k in range(K)], -1)
                     for e in range(E)])
  probs = np.exp(logits - logits.max(-1, keepdims=True))
  return probs / probs.sum(-1, keepdims=True)


def patches_reference(images: np.ndarray, patch: int, stride: int) -> np.ndarray:
  """float64 [E, B, H, W, K]: each pixel's ``fake_segment`` member probabilities averaged
  over the windows that cover it (images smaller than a window edge-padded, then cropped)."""
  b, h, w, _ = images.shape
  padded = np.pad(images, ((0, 0), (0, max(patch - h, 0)), (0, max(patch - w, 0)), (0, 0)),
                  mode="edge")
  ph, pw = padded.shape[1:3]
  starts = lambda size: sorted(set(range(0, size - patch + 1, stride)) | {size - patch})
  total = np.zeros((E, b, ph, pw, K))
  count = np.zeros((ph, pw))
  for y in starts(ph):
    for x in starts(pw):
      count[y:y + patch, x:x + patch] += 1
      for i in range(b):
        total[:, i, y:y + patch, x:x + patch] += fake_segment_reference(
            padded[i, y:y + patch, x:x + patch])
  return (total / count[:, :, None])[:, :, :h, :w]


@pytest.mark.parametrize("height,width,patch,stride", [
    (37, 29, 16, 8), (11, 7, 16, 8), (16, 40, 16, 5), (33, 20, 8, 8), (9, 30, 12, 1)])
def test_patches_average_their_windows(height, width, patch, stride):
  images = np.random.default_rng(height * width).uniform(-1, 1, (2, height, width, 1))
  out = segmentation.segment_in_patches(fake_segment, jnp.asarray(images, jnp.float32),
                                        patch, stride)
  expected = patches_reference(images.astype(np.float32), patch, stride)
  assert out["member_probs"].shape == (E, 2, height, width, K)
  np.testing.assert_allclose(out["member_probs"], expected, atol=1e-6)
  mean = expected.mean(0)
  np.testing.assert_allclose(out["probs"], mean, atol=1e-6)
  np.testing.assert_array_equal(out["mask"], np.argmax(np.asarray(out["probs"]), -1))
  np.testing.assert_allclose(out["variance"], expected.var(0).sum(-1), atol=1e-6)
  np.testing.assert_allclose(out["entropy"], -np.sum(mean * np.log(mean), -1), atol=1e-5)


@pytest.fixture(scope="module")
def binary_segdiff():
  """A binary SegDiff model (16x16, T = 50) and its initial parameters."""
  model = SegDiffModel(tiny_config.get_segmentation_config("segdiff", 2))
  return model, tiny_config.init_params(model)


def test_segmenter_in_patches_returns_full_size_outputs(binary_segdiff):
  model, params = binary_segdiff
  segment_config = tiny_config.get_segmentation_config("segdiff", 2).segment
  segment_config.update(patch_size=16, patch_stride=8, ensemble=2, steps=2)
  run = jax.jit(segmentation.segmenter(model, segment_config))
  for height, width in [(37, 29), (11, 7)]:
    images = jax.random.uniform(jax.random.key(height), (1, height, width, 1), minval=-1)
    out = run(params, images, jax.random.key(1))
    assert out["mask"].shape == out["variance"].shape == out["entropy"].shape == (
        1, height, width)
    assert out["probs"].shape == (1, height, width, 2)
    assert out["member_probs"].shape == (2, 1, height, width, 2)
    np.testing.assert_allclose(np.asarray(out["probs"]).sum(-1), 1.0, atol=1e-6)
    assert 0 <= int(out["mask"].min()) and int(out["mask"].max()) <= 1


# ---------------------------------------------------------------------------------------------
# Bad input.


def batch_of(image_shape, mask_shape) -> dict[str, jax.Array]:
  return {"image": jnp.zeros(image_shape), "mask": jnp.zeros(mask_shape, jnp.int32)}


def test_loss_rejects_masks_of_another_size(binary_segdiff):
  model, params = binary_segdiff
  with pytest.raises(ValueError, match=r"mask shape \(2, 8, 8\) does not match image shape "
                                       r"\(2, 16, 16, 1\).*\[B, H, W\] class ids \(0\.\.1"):
    model.loss(params, batch_of((2, 16, 16, 1), (2, 8, 8)), jax.random.key(0))
  # Masks with a channel axis; checked while tracing (parameter shapes suffice).
  supervised = SupervisedModel(tiny_config.get_segmentation_config("supervised", 3))
  shapes = jax.eval_shape(supervised.init, jax.random.key(0))
  with pytest.raises(ValueError, match=r"mask shape \(2, 16, 16, 1\) does not match image "
                                       r"shape \(2, 16, 16, 1\).*\(0\.\.2"):
    jax.eval_shape(supervised.loss, shapes, batch_of((2, 16, 16, 1), (2, 16, 16, 1)),
                   jax.random.key(0))


def test_collate_rejects_labels_outside_the_classes():
  image = np.zeros((4, 4, 1), np.uint8)
  good = np.array([[0, 1, IGNORE, 1]] * 4, np.uint8)
  batch = input_pipeline.collate([{"image": image, "mask": good}], mask_classes=2)
  np.testing.assert_array_equal(batch["mask"][0], good)
  for bad, ids in [(2, r"\[2\]"), (254, r"\[254\]")]:
    mask = good.copy()
    mask[2, 2] = bad
    with pytest.raises(ValueError, match=ids + r" outside 0\.\.1 .*data\.mask_classes"):
      input_pipeline.collate([{"image": image, "mask": good}, {"image": image, "mask": mask}],
                             mask_classes=2)


def validation_errors(config) -> str:
  with pytest.raises(ValueError) as error:
    config_lib.validate(config)
  return str(error.value)


@pytest.mark.parametrize("method", ["segdiff", "supervised"])
def test_config_needs_two_mask_classes(method):
  for classes in (0, 1):
    config = tiny_config.get_segmentation_config(method, 2)
    config.data.mask_classes = classes
    assert f"set data.mask_classes to the number of classes (>= 2; 2 for binary masks), not " \
           f"{classes}" in validation_errors(config)


def test_config_rejects_bad_segment_settings():
  config = tiny_config.get_segmentation_config("segdiff", 3, "binary")
  config.segment.update(steps=51, sampler="euler", ensemble=0, patch_size=16, patch_stride=17)
  errors = validation_errors(config)
  assert "segdiff.mask_encoding='binary' needs data.mask_classes=2, not 3" in errors
  assert "segment.steps=51 is more than the schedule's 50 steps" in errors
  assert "segment.sampler='euler' must be one of 'ddpm', 'ddim'" in errors
  assert "segment.ensemble=0 must be a positive integer" in errors
  assert "segment.patch_stride=17 must be at most segment.patch_size=16" in errors
  config.segment.update(steps=50, sampler="ddim", ensemble=1, patch_stride=16)
  config.segdiff.mask_encoding = "onehot"
  config_lib.validate(config)


def test_segment_rejects_bad_arguments(binary_segdiff):
  model, params = binary_segdiff
  images = jnp.zeros((2, 16, 16, 1))
  key = jax.random.key(0)
  cases = [
      (dict(ensemble=0), r"ensemble=0 must be an integer >= 1"),
      (dict(ensemble=2.5), r"ensemble=2\.5 must be an integer >= 1"),
      (dict(steps=51), r"steps=51 must be in 1\.\.50.*or 0 for all 50"),
      (dict(steps=-1), r"steps=-1 must be in 1\.\.50"),
      (dict(sampler="euler"), r"sampler='euler' must be one of \('ddpm', 'ddim'\)"),
  ]
  for kwargs, message in cases:
    with pytest.raises(ValueError, match=message):
      model.segment(params, images, key, **kwargs)
  with pytest.raises(ValueError, match=r"expected images of shape \[B, H, W, 1\], got "
                                       r"\(2, 16, 16, 3\)"):
    model.segment(params, jnp.zeros((2, 16, 16, 3)), key)


@pytest.mark.parametrize("num_timesteps", [19, 20])
def test_a_linear_schedule_that_reaches_beta_one_is_refused(num_timesteps):
  # The linear schedule is scaled by 1000/T: its last beta is 0.02 * 1000 / T, 1 at T = 20.
  # There alpha-bar reaches 0, and the first sampling step's x0 = sqrt(1/abar) x_t -
  # sqrt(1/abar - 1) eps is inf - inf: NaN masks.
  config = tiny_config.get_segmentation_config("segdiff", 2)
  config.diffusion.num_timesteps = num_timesteps
  with pytest.raises(ValueError, match=r"'linear' schedule"):
    SegDiffModel(config)


@pytest.mark.parametrize("stride", [0, 17])
def test_patches_reject_a_stride_outside_the_window(stride):
  with pytest.raises(ValueError, match=rf"patch stride {stride} must be in 1\.\.16"):
    segmentation.segment_in_patches(fake_segment, jnp.zeros((1, 20, 20, 1)), 16, stride)


def test_mask_encoding_errors():
  with pytest.raises(ValueError, match=r"binary mask encoding needs 2 classes, got 3; use "
                                       r"'onehot' or 'bits'"):
    mask_lib.resolve_encoding("binary", 3)
  with pytest.raises(ValueError, match=r"mask encoding 'grey' must be one of"):
    mask_lib.resolve_encoding("grey", 2)
  with pytest.raises(ValueError, match=r"at least 2 mask classes, got 1"):
    mask_lib.resolve_encoding("auto", 1)
  with pytest.raises(ValueError, match=r"binary mask encoding needs 2 classes, got 4"):
    SegDiffModel(tiny_config.get_segmentation_config("segdiff", 4, "binary"))


# ---------------------------------------------------------------------------------------------
# Pictures.


def test_palette_colours_are_distinct_and_not_the_ignore_grey():
  np.testing.assert_array_equal(images_lib.palette(2), [[0, 0, 0], [255, 255, 255]])
  for k in (2, 3, 5, 12, 21, 33, 150, 255):
    colours = images_lib.palette(k)
    assert colours.shape == (k, 3) and colours.dtype == np.uint8
    assert len(np.unique(colours, axis=0)) == k
    assert not np.any(np.all(colours == images_lib.IGNORE_COLOUR, axis=-1))


@pytest.mark.parametrize("channels", [1, 3])
def test_segmentation_panel(channels):
  n, h, w, k = 2, 5, 7, 3
  rng = np.random.default_rng(channels)
  pictures = rng.integers(0, 256, (n, h, w, channels)).astype(np.uint8)
  targets = rng.integers(0, k, (n, h, w))
  targets[0, 1:3, 2:5] = IGNORE
  targets[0, 0, :k] = np.arange(k)  # every class in the first target
  predictions = rng.integers(0, k, (n, h, w))
  uncertainty = np.linspace(0.0, 0.5, n * h * w).reshape(n, h, w)
  panel = images_lib.segmentation_panel(pictures, targets, predictions, uncertainty, k, 0.5)
  assert panel.shape == (n * (h + 2) + 2, 4 * (w + 2) + 2, 3) and panel.dtype == np.uint8

  def tile(row, column):
    y, x = 2 + row * (h + 2), 2 + column * (w + 2)
    return panel[y:y + h, x:x + w]

  colours = images_lib.palette(k)
  for i in range(n):
    np.testing.assert_array_equal(tile(i, 0), np.broadcast_to(pictures[i], (h, w, 3)))
    ignored = targets[i] == IGNORE
    np.testing.assert_array_equal(tile(i, 1)[ignored], np.full((ignored.sum(), 3), 128))
    np.testing.assert_array_equal(tile(i, 1)[~ignored], colours[targets[i][~ignored]])
    np.testing.assert_array_equal(tile(i, 2), colours[predictions[i]])
    heat = tile(i, 3).astype(int)
    # Brighter with more uncertainty (the values increase along each row).
    assert np.all(np.diff(heat.sum(-1).ravel()) >= 0)
  np.testing.assert_array_equal(tile(0, 3)[0, 0], [0, 0, 0])  # uncertainty 0: black
  np.testing.assert_array_equal(tile(n - 1, 3)[-1, -1], [255, 255, 255])  # vmax: white
  assert np.any(targets == IGNORE) and len(np.unique(tile(0, 1).reshape(-1, 3), axis=0)) == k + 1


# ---------------------------------------------------------------------------------------------
# The shipped config.


def load_config(name: str, *args):
  spec = importlib.util.spec_from_file_location(name, REPO / "configs" / f"{name}.py")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config(*args)


@pytest.mark.parametrize("args,model_type", [((), SegDiffModel),
                                             (("supervised",), SupervisedModel)])
def test_segdiff_isbi_config(args, model_type):
  config = load_config("segdiff_isbi_cpu", *args)
  config.data.manual_dir = "isbi"
  config_lib.validate(config)
  assert config.method == (args[0] if args else "segdiff")
  model = segmentation.make_model(config)
  assert isinstance(model, model_type)
  shapes = jax.eval_shape(model.init, jax.random.key(0))
  stem = shapes["unet"]["input_blocks_0_0"]["kernel"].shape
  assert stem == (3, 3, 1, config.model.model_channels * config.model.channel_mult[0])
  assert shapes["image_encoder"]["conv_first"]["kernel"].shape[2] == config.data.channels
