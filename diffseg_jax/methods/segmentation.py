"""Segmentation: SegDiff (masks sampled by a diffusion conditioned on the image, Amit et al.
2021) and a supervised baseline with the same network.

Both models give ``loss(params, batch, key)`` for the training loop and
``segment(params, images, key, ...)`` for inference, pure functions of the parameters:

* :class:`SegDiffModel`: eps-prediction MSE on the encoded mask (``methods.masks``), the
  ignore id masked out; ``segment`` samples an ensemble of masks per image with DDPM or DDIM
  (all members in one batch), and returns their mean, its argmax and per-pixel uncertainty.
* :class:`SupervisedModel`: the same ``SegDiffNet`` with its mask input at zero and timestep 0,
  so the same U-Net trunk and image encoder map the image to logits; cross-entropy + Dice.

:func:`segment_in_patches` runs either on images of any size in overlapping windows of the
training size, averaging the windows' class probabilities (SegDiff's MoNuSeg inference).
"""

import functools
from typing import Any, Callable

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from diffseg_jax import diffusion
from diffseg_jax.methods import generation
from diffseg_jax.methods import masks as mask_lib
from diffseg_jax.nn.rrdb import RRDBEncoder
from diffseg_jax.nn.segdiff import SegDiffNet

Params = Any
SAMPLERS = ("ddpm", "ddim")


def make_network(config: ml_collections.ConfigDict, out_channels: int) -> SegDiffNet:
  """SegDiff's network for ``config``: U-Net ``config.model`` over ``mask channels`` inputs,
  image encoder ``config.segdiff``, ``out_channels`` outputs."""
  data, s = config.data, config.segdiff
  mask_channels = mask_lib.num_channels(s.mask_encoding, data.mask_classes)
  unet_config = config.copy_and_resolve_references()
  unet_config.data.channels = mask_channels  # the U-Net's input is the mask
  unet = generation.make_unet(unet_config).clone(out_channels=out_channels, parent=None)
  encoder = RRDBEncoder(out_channels=int(config.model.channel_mult[0]
                                         * config.model.model_channels),
                        features=s.rrdb_features, num_blocks=s.rrdb_blocks,
                        growth=s.rrdb_growth, dtype=jnp.dtype(config.model.dtype))
  return SegDiffNet(unet=unet, image_encoder=encoder)


def check_images(images: jax.Array, channels: int) -> None:
  """Raises ``ValueError`` unless ``images`` is ``[B, H, W, channels]``."""
  if images.ndim != 4 or images.shape[-1] != channels:
    raise ValueError(f"expected images of shape [B, H, W, {channels}], got {images.shape}.")


def check_batch(batch: dict[str, jax.Array], num_classes: int) -> None:
  """Raises ``ValueError`` if the batch's masks do not match its images in size."""
  image, mask = batch["image"], batch["mask"]
  if mask.shape != image.shape[:3]:
    raise ValueError(f"mask shape {mask.shape} does not match image shape {image.shape}: "
                     f"masks must be [B, H, W] class ids (0..{num_classes - 1}, or "
                     "255 = ignore) of the images' size.")


class SegDiffModel:
  """SegDiff: the network and the diffusion of a config, with its loss and ``segment``."""

  def __init__(self, config: ml_collections.ConfigDict):
    self.config = config
    self.num_classes = config.data.mask_classes
    self.encoding = mask_lib.resolve_encoding(config.segdiff.mask_encoding, self.num_classes)
    self.mask_channels = mask_lib.num_channels(self.encoding, self.num_classes)
    self.image_channels = config.data.channels
    self.network = make_network(config, self.mask_channels)
    self.diffusion = generation.make_diffusion(config)

  def init(self, key: jax.Array) -> Params:
    size = self.config.data.image_size
    x = jnp.zeros((1, size, size, self.mask_channels), jnp.float32)
    image = jnp.zeros((1, size, size, self.image_channels), jnp.float32)
    return self.network.init(key, x, jnp.zeros((1,), jnp.int32), image)["params"]

  def loss(self, params: Params, batch: dict[str, jax.Array],
           key: jax.Array) -> tuple[jax.Array, dict[str, jax.Array]]:
    """The diffusion loss (MSE on the model's target) over labelled pixels.

    Args:
      params: network parameters.
      batch: ``image`` float32 [B, H, W, C] in [-1, 1]; ``mask`` int32 [B, H, W] class ids,
        the ignore id on unlabelled pixels (which contribute nothing).
      key: randomness for timesteps, noise and dropout.

    Returns:
      ``(loss, {"mse": loss})``; the loss is the mean squared error over every channel of
      every labelled pixel of the batch.
    """
    check_batch(batch, self.num_classes)
    x0 = mask_lib.encode(batch["mask"], self.num_classes, self.encoding)
    t_key, noise_key, dropout_key = jax.random.split(key, 3)
    t = jax.random.randint(t_key, (x0.shape[0],), 0, self.diffusion.num_timesteps)
    noise = jax.random.normal(noise_key, x0.shape, jnp.float32)
    x_t = self.diffusion.q_sample(x0, t, noise)
    output = self.network.apply({"params": params}, x_t, self.diffusion.model_timesteps(t),
                                batch["image"], train=True,
                                rngs={"dropout": dropout_key})
    target = {"eps": noise, "x0": x0}.get(self.diffusion.model_mean_type)
    if target is None:
      target = self.diffusion.predict_v(x0, t, noise)
    valid = mask_lib.valid_pixels(batch["mask"])[..., None].astype(jnp.float32)
    count = jnp.maximum(valid.sum() * self.mask_channels, 1.0)
    mse = jnp.sum(valid * (output - target) ** 2) / count
    return mse, {"mse": mse}

  def _model_fn(self, params: Params, x_t: jax.Array, t: jax.Array,
                image_features: jax.Array) -> jax.Array:
    return self.network.apply({"params": params}, x_t, t, image_features,
                              method=SegDiffNet.denoise)

  def segment(self, params: Params, images: jax.Array, key: jax.Array, *, steps: int = 0,
              sampler: str = "ddpm", ensemble: int = 9, eta: float = 0.0,
              clip_denoised: bool = True, return_members: bool = False
              ) -> dict[str, jax.Array]:
    """Segments ``images`` by sampling ``ensemble`` masks for each (one batched call).

    Args:
      params: network parameters.
      images: float32 [B, H, W, C] in [-1, 1]; H and W as the U-Net can take (else see
        :func:`segment_in_patches`).
      key: sampling randomness.
      steps: sampling steps, evenly respaced; 0 for every step of the schedule (SegDiff:
        DDPM over all 100).
      sampler: "ddpm" or "ddim".
      ensemble: masks sampled per image, >= 1 (SegDiff: 9).
      eta: DDIM's noise scale.
      clip_denoised: clip the predicted mask to [-1, 1] at each step (SegDiff: no).
      return_members: also return ``member_probs`` float32 [E, B, H, W, K].

    Returns:
      :func:`masks.combine_members` of the members' class probabilities: ``mask`` int32
      [B, H, W], ``probs`` [B, H, W, K], ``variance`` and ``entropy`` [B, H, W].
    """
    check_images(images, self.image_channels)
    check_ensemble(ensemble)
    gd = self.respaced(sampler, steps)
    batch = images.shape[0]
    features = self.network.apply({"params": params}, images,
                                  method=SegDiffNet.encode_image)
    features = jnp.tile(features, (ensemble, 1, 1, 1))  # member-major: row e * B + b
    shape = (ensemble * batch, *images.shape[1:3], self.mask_channels)
    kwargs = {"image_features": features}
    if sampler == "ddpm":
      x0 = diffusion.ddpm_sample(gd, self._model_fn, params, key, shape, model_kwargs=kwargs,
                                 clip_denoised=clip_denoised)
    else:
      x0 = diffusion.ddim_sample(gd, self._model_fn, params, key, shape, eta=eta,
                                 model_kwargs=kwargs, clip_denoised=clip_denoised)
    members = mask_lib.class_probabilities(x0, self.num_classes, self.encoding)
    members = members.reshape(ensemble, batch, *members.shape[1:])
    out = mask_lib.combine_members(members)
    if return_members:
      out["member_probs"] = members
    return out

  def respaced(self, sampler: str, steps: int) -> diffusion.GaussianDiffusion:
    """The diffusion respaced to ``steps`` for ``sampler`` (DDIM: "ddimN" where possible)."""
    total = self.config.diffusion.num_timesteps
    if sampler not in SAMPLERS:
      raise ValueError(f"sampler={sampler!r} must be one of {SAMPLERS}.")
    if not 0 <= steps <= total:
      raise ValueError(f"steps={steps} must be in 1..{total}, the schedule's length "
                       f"(diffusion.num_timesteps), or 0 for all {total}.")
    if steps in (0, total):
      return self.diffusion
    respacing = generation.ddim_respacing(total, steps) if sampler == "ddim" else str(steps)
    return generation.make_diffusion(self.config, respacing)


class SupervisedModel:
  """The supervised baseline: SegDiff's network as an image -> logits segmenter."""

  def __init__(self, config: ml_collections.ConfigDict):
    self.config = config
    self.num_classes = config.data.mask_classes
    encoding = mask_lib.resolve_encoding(config.segdiff.mask_encoding, self.num_classes)
    self.mask_channels = mask_lib.num_channels(encoding, self.num_classes)
    self.image_channels = config.data.channels
    self.network = make_network(config, self.num_classes)

  def init(self, key: jax.Array) -> Params:
    size = self.config.data.image_size
    image = jnp.zeros((1, size, size, self.image_channels), jnp.float32)
    return self.network.init(key, self._blank(image), jnp.zeros((1,), jnp.int32),
                             image)["params"]

  def _blank(self, images: jax.Array) -> jax.Array:
    return jnp.zeros((*images.shape[:3], self.mask_channels), jnp.float32)

  def logits(self, params: Params, images: jax.Array, *, dropout_key: jax.Array | None = None
             ) -> jax.Array:
    """float32 [B, H, W, K] class logits of ``images [B, H, W, C]`` in [-1, 1]."""
    rngs = {"dropout": dropout_key} if dropout_key is not None else None
    t = jnp.zeros((images.shape[0],), jnp.int32)
    return self.network.apply({"params": params}, self._blank(images), t, images,
                              train=dropout_key is not None, rngs=rngs)

  def loss(self, params: Params, batch: dict[str, jax.Array],
           key: jax.Array) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Cross-entropy plus soft Dice loss over labelled pixels (batch as ``SegDiffModel``'s).

    The Dice term is one minus the mean over classes of ``2 sum(p y) / (sum(p) + sum(y))``,
    sums over the batch's labelled pixels, classes absent from both prediction and target
    counting 1.
    """
    check_batch(batch, self.num_classes)
    logits = self.logits(params, batch["image"], dropout_key=key)
    valid = mask_lib.valid_pixels(batch["mask"]).astype(jnp.float32)
    ids = jnp.where(valid > 0, batch["mask"], 0)
    log_probs = jax.nn.log_softmax(logits)
    onehot = jax.nn.one_hot(ids, self.num_classes)
    count = jnp.maximum(valid.sum(), 1.0)
    cross_entropy = -jnp.sum(valid * jnp.sum(onehot * log_probs, axis=-1)) / count
    probs = jnp.exp(log_probs) * valid[..., None]
    onehot = onehot * valid[..., None]
    axes = (0, 1, 2)
    dice = (2.0 * jnp.sum(probs * onehot, axes) + 1e-6) / (
        jnp.sum(probs, axes) + jnp.sum(onehot, axes) + 1e-6)
    dice_loss = 1.0 - jnp.mean(dice)
    return cross_entropy + dice_loss, {"cross_entropy": cross_entropy, "dice_loss": dice_loss}

  def segment(self, params: Params, images: jax.Array, key: jax.Array | None = None, *,
              return_members: bool = False, **unused_sampling) -> dict[str, jax.Array]:
    """The softmax prediction, in ``SegDiffModel.segment``'s format (one "member": the
    variance is 0; ``entropy`` is the softmax's). Sampling arguments are accepted and unused.
    """
    del key, unused_sampling
    check_images(images, self.image_channels)
    probs = jax.nn.softmax(self.logits(params, images))
    out = mask_lib.combine_members(probs[None])
    if return_members:
      out["member_probs"] = probs[None]
    return out


def check_ensemble(ensemble: int) -> None:
  if not isinstance(ensemble, (int, np.integer)) or ensemble < 1:
    raise ValueError(f"ensemble={ensemble!r} must be an integer >= 1 (masks sampled per "
                     "image; SegDiff uses 9).")


def window_starts(size: int, patch: int, stride: int) -> list[int]:
  """Top (or left) edges of windows of ``patch`` every ``stride`` covering ``0..size``, the
  last one flush with the end (``size >= patch``)."""
  starts = list(range(0, size - patch + 1, stride))
  if starts[-1] + patch < size:
    starts.append(size - patch)
  return starts


def segment_in_patches(segment_fn: Callable[..., dict[str, jax.Array]], images: jax.Array,
                       patch: int, stride: int) -> dict[str, jax.Array]:
  """Segments images of any size in overlapping ``patch x patch`` windows.

  The windows (every ``stride`` pixels, the last flush with the border; images smaller than
  a window are edge-padded first) run as one batch through ``segment_fn(windows)``; each
  pixel's member class probabilities are averaged over the windows that cover it and the
  ensemble statistics computed from them.

  Args:
    segment_fn: ``images [N, patch, patch, C] -> dict`` with ``member_probs`` (a ``segment``
      with ``return_members=True``).
    images: float32 [B, H, W, C].
    patch: window side (the training size).
    stride: window step, ``1..patch``.

  Returns:
    As ``segment``, at [B, H, W]: ``mask``, ``probs``, ``variance``, ``entropy``,
    ``member_probs``.
  """
  if not 1 <= stride <= patch:
    raise ValueError(f"patch stride {stride} must be in 1..{patch} (the patch size).")
  b, h, w, _ = images.shape
  padded = jnp.pad(images, ((0, 0), (0, max(patch - h, 0)), (0, max(patch - w, 0)), (0, 0)),
                   mode="edge")
  ph, pw = padded.shape[1:3]
  corners = [(y, x) for y in window_starts(ph, patch, stride)
             for x in window_starts(pw, patch, stride)]
  windows = jnp.concatenate([padded[:, y:y + patch, x:x + patch] for y, x in corners])
  members = segment_fn(windows)["member_probs"]  # [E, P * B, patch, patch, K]
  members = members.reshape(members.shape[0], len(corners), b, *members.shape[2:])
  total = jnp.zeros((members.shape[0], b, ph, pw, members.shape[-1]), jnp.float32)
  count = jnp.zeros((1, 1, ph, pw, 1), jnp.float32)
  for i, (y, x) in enumerate(corners):
    total = total.at[:, :, y:y + patch, x:x + patch].add(members[:, i])
    count = count.at[:, :, y:y + patch, x:x + patch].add(1.0)
  member_probs = (total / count)[:, :, :h, :w]
  return dict(mask_lib.combine_members(member_probs), member_probs=member_probs)


METHODS: dict[str, type] = {"segdiff": SegDiffModel, "supervised": SupervisedModel}


def make_model(config: ml_collections.ConfigDict) -> SegDiffModel | SupervisedModel:
  """The segmentation model ``config.method`` names."""
  return METHODS[config.method](config)


def segmenter(model: SegDiffModel | SupervisedModel,
              segment_config: ml_collections.ConfigDict) -> Callable[[Params, jax.Array, jax.Array], dict]:
  """``(params, images, key) -> segment(...)`` with the ``segment.*`` settings (not jitted).

  With ``segment.patch_size`` > 0, images are segmented in windows of that size (0: whole
  images; ``segment.patch_stride`` 0: half a window).
  """
  s = segment_config
  run = functools.partial(model.segment, steps=s.steps, sampler=s.sampler,
                          ensemble=s.ensemble, eta=s.eta, clip_denoised=s.clip_denoised,
                          return_members=True)
  if not s.patch_size:
    return run
  patch = s.patch_size
  stride = s.patch_stride or max(patch // 2, 1)

  def run_in_patches(params, images, key):
    return segment_in_patches(lambda w: run(params, w, key), images, patch, stride)

  return run_in_patches
