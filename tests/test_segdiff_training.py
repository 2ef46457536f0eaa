"""Tiny segmentation models overfit small sets; the ignore label never reaches the losses."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import tiny_config

from diffseg_jax.evaluation import segmentation as metrics
from diffseg_jax.methods.segmentation import SegDiffModel, SupervisedModel

IGNORE = 255
SIZE = 16
COPIES = 4  # each image appears this many times per batch (more timesteps per step)
DICE_SMOOTHING = 1e-6  # the supervised loss's Dice smoothing term


def disc(cy: float, cx: float, radius: float) -> np.ndarray:
  yy, xx = np.mgrid[:SIZE, :SIZE]
  return (yy - cy) ** 2 + (xx - cx) ** 2 <= radius ** 2


def box(y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
  out = np.zeros((SIZE, SIZE), bool)
  out[y0:y1, x0:x1] = True
  return out


def two_image_set(num_classes: int) -> tuple[np.ndarray, np.ndarray]:
  """Two 16x16 images and their int32 masks: a disc and a box per image (binary: a disc in
  one, a box in the other); each image is its mask's class intensity plus noise, and a strip
  of the second mask is the ignore id."""
  masks = np.zeros((2, SIZE, SIZE), np.int32)
  if num_classes == 2:
    masks[0][disc(5, 6, 4)] = 1
    masks[1][box(8, 14, 3, 13)] = 1
  else:
    masks[0][disc(5, 5, 3.5)] = 1
    masks[0][box(9, 15, 8, 16)] = 2
    masks[1][box(2, 8, 9, 15)] = 1
    masks[1][disc(11, 5, 4)] = 2
  levels = np.linspace(-0.7, 0.7, num_classes)
  noise = np.random.default_rng(num_classes).normal(0.0, 0.15, masks.shape)
  images = np.clip(levels[masks] + noise, -1, 1).astype(np.float32)[..., None]
  masks[1, :, :2] = IGNORE
  return images, masks


def make_batch(images: np.ndarray, masks: np.ndarray) -> dict[str, jax.Array]:
  return {"image": jnp.asarray(np.tile(images, (COPIES, 1, 1, 1))),
          "mask": jnp.asarray(np.tile(masks, (COPIES, 1, 1)))}


def train(model, batch: dict[str, jax.Array], steps: int, learning_rate: float) -> dict:
  """Adam on ``model.loss``, its learning rate decayed to 0 along a cosine.

  Returns:
    The model, its parameters, the losses, the jitted step ``(params, opt_state, batch, key)
    -> (params, opt_state, loss at the given params)`` and the jitted network output
    (SegDiff: ``network.apply``; supervised: ``logits``).
  """
  optimizer = optax.adam(optax.cosine_decay_schedule(learning_rate, steps))

  @jax.jit
  def step(params, opt_state, batch, key):
    loss, grads = jax.value_and_grad(lambda p: model.loss(p, batch, key)[0])(params)
    updates, opt_state = optimizer.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss

  params = tiny_config.init_params(model)
  opt_state = optimizer.init(params)
  losses = []
  for key in jax.random.split(jax.random.key(1), steps):
    params, opt_state, loss = step(params, opt_state, batch, key)
    losses.append(loss)
  forward = model.logits if isinstance(model, SupervisedModel) else model.network.apply
  return {"model": model, "params": params, "opt_state": opt_state, "step": step,
          "losses": np.asarray(losses), "forward": jax.jit(forward)}


def loss_at(run: dict, batch: dict[str, jax.Array], key: jax.Array) -> float:
  """``model.loss`` at the run's parameters, through its compiled training step."""
  return float(run["step"](run["params"], run["opt_state"], batch, key)[2])


@pytest.fixture(scope="module")
def binary_run():
  images, masks = two_image_set(2)
  model = SegDiffModel(tiny_config.get_segmentation_config("segdiff", 2))
  return dict(train(model, make_batch(images, masks), 200, 3e-3), images=images, masks=masks)


@pytest.fixture(scope="module")
def three_class_run():
  images, masks = two_image_set(3)
  model = SegDiffModel(tiny_config.get_segmentation_config("segdiff", 3))
  return dict(train(model, make_batch(images, masks), 300, 3e-3), images=images, masks=masks)


@pytest.fixture(scope="module")
def supervised_run():
  images, masks = two_image_set(3)
  model = SupervisedModel(tiny_config.get_segmentation_config("supervised", 3))
  return dict(train(model, make_batch(images, masks), 100, 3e-3), images=images, masks=masks)


def segment(run: dict) -> dict:
  """The run's training images segmented as SegDiff does: DDPM over the whole schedule, an
  ensemble of 3. (A deterministic DDIM of 10 steps is much less reliable for a model this
  small: its single samples reach a mean IoU between 0.2 and 1.0 depending on the noise.)"""
  segment_fn = functools.partial(run["model"].segment, steps=0, sampler="ddpm", ensemble=3)
  return jax.jit(segment_fn)(run["params"], jnp.asarray(run["images"]), jax.random.key(2))


# ---------------------------------------------------------------------------------------------
# Overfitting two images.


def test_segdiff_overfits_binary_masks(binary_run):
  assert binary_run["losses"][-20:].mean() < 0.5 * binary_run["losses"][:20].mean()
  out = segment(binary_run)
  scores = metrics.overlap_scores(np.asarray(out["mask"]), binary_run["masks"], 2,
                                  ignore_index=IGNORE)
  assert scores["dice"][1] > 0.9, scores


def test_segdiff_overfits_three_classes(three_class_run):
  out = segment(three_class_run)
  scores = metrics.overlap_scores(np.asarray(out["mask"]), three_class_run["masks"], 3,
                                  ignore_index=IGNORE)
  assert scores["mean_iou"] > 0.8, scores


def test_supervised_overfits_three_classes(supervised_run):
  out = segment(supervised_run)
  scores = metrics.overlap_scores(np.asarray(out["mask"]), supervised_run["masks"], 3,
                                  ignore_index=IGNORE)
  assert scores["mean_iou"] > 0.8, scores


# ---------------------------------------------------------------------------------------------
# The ignore label: losses against float64 references over labelled pixels only.


def encode_reference(masks: np.ndarray, num_classes: int) -> np.ndarray:
  """float64 [B, H, W, C]: SegDiff's encoding (binary: one channel at -1/+1; one-hot
  channels at -1/+1), 0 at ignored pixels."""
  valid = masks != IGNORE
  ids = np.where(valid, masks, 0)
  x = 2.0 * ids[..., None] - 1.0 if num_classes == 2 else 2.0 * np.eye(num_classes)[ids] - 1.0
  return np.where(valid[..., None], x, 0.0)


def sampled_t_and_noise(model: SegDiffModel, shape, key: jax.Array):
  """The timesteps and noise ``SegDiffModel.loss`` draws from ``key``."""
  t_key, noise_key, _ = jax.random.split(key, 3)
  t = jax.random.randint(t_key, (shape[0],), 0, model.diffusion.num_timesteps)
  return np.asarray(t), np.asarray(jax.random.normal(noise_key, shape, jnp.float32), np.float64)


def linear_alphas_cumprod(num_timesteps: int) -> np.ndarray:
  """float64 abar_t of guided-diffusion's linear schedule (betas scaled by 1000 / T)."""
  scale = 1000 / num_timesteps
  return np.cumprod(1.0 - np.linspace(scale * 1e-4, scale * 0.02, num_timesteps))


def mse_reference(output: np.ndarray, target: np.ndarray, masks: np.ndarray) -> float:
  valid = masks != IGNORE
  return float(np.mean((output[valid] - target[valid]) ** 2))


def ignored_batch(run: dict, seed: int) -> dict[str, jax.Array]:
  """The run's training batch with a random ~40% of its pixels set to the ignore id."""
  masks = np.tile(run["masks"], (COPIES, 1, 1))
  masks[np.random.default_rng(seed).random(masks.shape) < 0.4] = IGNORE
  return make_batch(run["images"], run["masks"]) | {"mask": jnp.asarray(masks)}


def single_pixel_batch(run: dict) -> dict[str, jax.Array]:
  """The run's training batch with every pixel ignored but pixel (9, 4) of image 3."""
  masks = np.full((2 * COPIES, SIZE, SIZE), IGNORE, np.int32)
  masks[3, 9, 4] = 1
  return make_batch(run["images"], run["masks"]) | {"mask": jnp.asarray(masks)}


def segdiff_loss_reference(run: dict, batch: dict[str, jax.Array], key: jax.Array):
  """(float64 loss over labelled pixels, network output, noise) for ``key``.

  The network sees the float32 ``q_sample`` of the reference encoding, as in the loss, so
  that the comparison needs no more than float32 rounding, even for the small losses of a
  trained model."""
  model = run["model"]
  masks = np.asarray(batch["mask"])
  x0 = encode_reference(masks, model.num_classes)
  t, noise = sampled_t_and_noise(model, x0.shape, key)
  x_t = jax.jit(model.diffusion.q_sample)(jnp.asarray(x0, jnp.float32), jnp.asarray(t),
                                          jnp.asarray(noise, jnp.float32))
  output = run["forward"]({"params": run["params"]}, x_t, jnp.asarray(t), batch["image"])
  output = np.asarray(output, np.float64)
  return mse_reference(output, noise, masks), output, noise


@pytest.mark.parametrize("run_name", ["binary_run", "three_class_run"])
def test_segdiff_loss_is_the_mse_over_labelled_pixels(run_name, request):
  run = request.getfixturevalue(run_name)
  batch, key = ignored_batch(run, seed=0), jax.random.key(11)
  expected, output, noise = segdiff_loss_reference(run, batch, key)
  np.testing.assert_allclose(loss_at(run, batch, key), expected, rtol=1e-5)
  # The reference is discriminating: the mean over every pixel is another number.
  assert abs(np.mean((output - noise) ** 2) - expected) > 1e-3 * expected


@pytest.mark.parametrize("run_name", ["binary_run", "three_class_run"])
def test_segdiff_loss_of_a_single_labelled_pixel(run_name, request):
  run = request.getfixturevalue(run_name)
  batch, key = single_pixel_batch(run), jax.random.key(12)
  _, output, noise = segdiff_loss_reference(run, batch, key)
  expected = np.mean((output[3, 9, 4] - noise[3, 9, 4]) ** 2)
  # Compared as root-mean-square residuals: the reference's network output is another
  # compiled program's, a few float32 ulps (~1e-7 for outputs of size ~1) from the training
  # step's, and a trained model's residual at one pixel is small (~0.05), so the squared
  # residual carries that rounding as a relative error of ~1e-5. Any other pixel's residual
  # differs by 1e-2 or more.
  np.testing.assert_allclose(np.sqrt(loss_at(run, batch, key)), np.sqrt(expected), rtol=1e-5,
                             atol=1e-6)


class OutputIsTheParameter:
  """Stands in for a model's network: ``apply`` returns the parameters, so that a loss's
  gradient with respect to its parameters is its gradient with respect to the network output.
  """

  def apply(self, variables, *unused_args, **unused_kwargs):
    return variables["params"]


def random_batch(num_classes: int, seed: int) -> dict[str, jax.Array]:
  """Two 16x16 images and masks of random ids, ~40% of the pixels ignored."""
  rng = np.random.default_rng(seed)
  masks = rng.integers(0, num_classes, (2, SIZE, SIZE)).astype(np.int32)
  masks[rng.random(masks.shape) < 0.4] = IGNORE
  images = rng.uniform(-1, 1, (2, SIZE, SIZE, 1)).astype(np.float32)
  return {"image": jnp.asarray(images), "mask": jnp.asarray(masks)}


def check_ignored_pixels_do_not_count(loss_fn, output: jax.Array, masks: np.ndarray) -> None:
  """``loss_fn(output)`` has zero gradient at ignored pixels and does not change when the
  output there does; it does at labelled pixels."""
  ignored = masks == IGNORE
  grads = np.asarray(jax.grad(loss_fn)(output))
  np.testing.assert_array_equal(grads[ignored], 0.0)
  assert np.all(np.any(grads[~ignored] != 0.0, axis=-1))
  changed = np.where(ignored[..., None], 100.0, np.asarray(output))
  assert float(loss_fn(jnp.asarray(changed))) == float(loss_fn(output))


@pytest.mark.parametrize("num_classes", [2, 3])
@pytest.mark.parametrize("mean_type", ["eps", "x0", "v"])
def test_segdiff_loss_on_given_outputs(num_classes, mean_type, monkeypatch):
  config = tiny_config.get_segmentation_config("segdiff", num_classes)
  config.diffusion.model_mean_type = mean_type
  model = SegDiffModel(config)
  monkeypatch.setattr(model, "network", OutputIsTheParameter())
  batch, key = random_batch(num_classes, seed=1), jax.random.key(13)
  masks = np.asarray(batch["mask"])
  x0 = encode_reference(masks, num_classes)
  output = jax.random.normal(jax.random.key(14), x0.shape)
  loss_fn = lambda o: model.loss(o, batch, key)[0]

  t, noise = sampled_t_and_noise(model, x0.shape, key)
  abar = linear_alphas_cumprod(config.diffusion.num_timesteps)[t][:, None, None, None]
  target = {"eps": noise, "x0": x0,
            "v": np.sqrt(abar) * noise - np.sqrt(1 - abar) * x0}[mean_type]
  expected = mse_reference(np.asarray(output, np.float64), target, masks)
  np.testing.assert_allclose(float(loss_fn(output)), expected, rtol=1e-5)
  check_ignored_pixels_do_not_count(loss_fn, output, masks)


def test_segdiff_loss_of_an_unlabelled_batch_is_zero(monkeypatch):
  model = SegDiffModel(tiny_config.get_segmentation_config("segdiff", 2))
  monkeypatch.setattr(model, "network", OutputIsTheParameter())
  batch = random_batch(2, seed=2)
  batch["mask"] = jnp.full_like(batch["mask"], IGNORE)
  output = jax.random.normal(jax.random.key(15), (*batch["mask"].shape, 1))
  loss, grads = jax.value_and_grad(lambda o: model.loss(o, batch, jax.random.key(16))[0])(output)
  assert float(loss) == 0.0
  np.testing.assert_array_equal(grads, 0.0)


def supervised_loss_reference(logits: np.ndarray, masks: np.ndarray, num_classes: int) -> float:
  """float64 cross-entropy plus (1 - mean soft Dice over classes), over labelled pixels."""
  valid = masks != IGNORE
  z = logits[valid].astype(np.float64)
  log_probs = z - z.max(-1, keepdims=True)
  log_probs -= np.log(np.exp(log_probs).sum(-1, keepdims=True))
  ids = masks[valid]
  cross_entropy = -np.mean(log_probs[np.arange(len(ids)), ids])
  probs, onehot = np.exp(log_probs), np.eye(num_classes)[ids]
  dice = (2 * (probs * onehot).sum(0) + DICE_SMOOTHING) / (
      probs.sum(0) + onehot.sum(0) + DICE_SMOOTHING)
  return float(cross_entropy + 1.0 - dice.mean())


def test_supervised_loss_over_labelled_pixels(supervised_run):
  key = jax.random.key(17)
  for batch in (ignored_batch(supervised_run, seed=3), single_pixel_batch(supervised_run)):
    logits = np.asarray(supervised_run["forward"](supervised_run["params"], batch["image"]))
    expected = supervised_loss_reference(logits, np.asarray(batch["mask"]), 3)
    # The trained model's loss is small: allow float32 rounding of the Dice term, 1 - a mean
    # of values near 1.
    np.testing.assert_allclose(loss_at(supervised_run, batch, key), expected, rtol=1e-5,
                               atol=1e-6)


def test_supervised_loss_on_given_logits(monkeypatch):
  model = SupervisedModel(tiny_config.get_segmentation_config("supervised", 3))
  monkeypatch.setattr(model, "network", OutputIsTheParameter())
  batch = random_batch(3, seed=4)
  masks = np.asarray(batch["mask"])
  logits = 2.0 * jax.random.normal(jax.random.key(18), (*masks.shape, 3))
  loss_fn = lambda z: model.loss(z, batch, jax.random.key(19))[0]
  np.testing.assert_allclose(float(loss_fn(logits)),
                             supervised_loss_reference(np.asarray(logits), masks, 3), rtol=1e-5)
  check_ignored_pixels_do_not_count(loss_fn, logits, masks)
  # One labelled pixel: its cross-entropy, and the Dice of that one pixel.
  single = np.full(masks.shape, IGNORE, np.int32)
  single[1, 2, 3] = 2
  batch["mask"] = jnp.asarray(single)
  z = np.asarray(logits[1, 2, 3], np.float64)
  p = np.exp(z - z.max()) / np.exp(z - z.max()).sum()
  dice = (2 * np.eye(3)[2] * p + DICE_SMOOTHING) / (p + np.eye(3)[2] + DICE_SMOOTHING)
  np.testing.assert_allclose(float(loss_fn(logits)), -np.log(p[2]) + 1 - dice.mean(), rtol=1e-5)
