"""The ``segment`` mode: masks and uncertainty maps for a split, from the latest checkpoint.

Images are segmented at their evaluation resolution (:func:`eval_transform`: with
``segment.whole_images``, the shorter side resized to ``data.resize`` when set, else as the
evaluation pass preprocesses them), whole or in windows of ``segment.patch_size``. Writes ``<workdir>/segment/<run>/`` (:func:`segment_dir`):
``predictions.npz`` (``mask`` uint8 [N, H, W], ``probs`` float16 [N, H, W, K], ``variance``
and ``entropy`` float16 [N, H, W]) and ``panels.png`` (image, ground truth, prediction,
uncertainty for the first 16 images).
"""

import pathlib
import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging

from diffseg_jax import config as config_lib
from diffseg_jax import data
from diffseg_jax import files
from diffseg_jax import images as image_io
from diffseg_jax.data import preprocess
from diffseg_jax.methods import segmentation
from diffseg_jax.train import sharding
from diffseg_jax.train.state import restore_sampling_params

_PANEL_IMAGES = 16


def eval_transform(data_config: ml_collections.ConfigDict, whole_images: bool = True):
  """Example -> example at evaluation resolution: with ``whole_images`` and ``data.resize``
  set, the shorter side resized to it (aspect kept, no crop); else the evaluation pass's
  preprocessing (square ``data.image_size``, centre crops)."""
  if not (whole_images and data_config.resize):
    p = data.preprocessing(data_config)
    return lambda e: preprocess.apply(e, p, None)

  def resize(example):
    h, w = example["image"].shape[:2]
    return preprocess.resize(example, *preprocess.shorter_side_size(h, w, data_config.resize))

  return resize


def read_eval_set(config: ml_collections.ConfigDict, split: str | None = None,
                  limit: int | None = None) -> dict[str, np.ndarray]:
  """``{"image": uint8 [N, H, W, C], "mask": uint8 [N, H, W]}``: the first
  ``segment.num_images`` (or ``limit``; 0: all) of ``split`` (``data.eval_split``) at
  evaluation resolution."""
  limit = config.segment.num_images if limit is None else limit
  return data.read_split(config.data, split or config.data.eval_split, limit,
                         transform=eval_transform(config.data, config.segment.whole_images))


class Segmenter:
  """Runs a segmentation model's ``segment`` (``segment.*`` settings) batch by batch, jitted.

  Batches of ``segment.batch_size`` images (the last padded) are split over the mesh's
  devices; batch ``i`` samples with ``fold_in(key, i)``.
  """

  def __init__(self, model, segment_config: ml_collections.ConfigDict, mesh,
               keep_members: bool = False):
    self.mesh, self.config, self.keep_members = mesh, segment_config, keep_members
    run = segmentation.segmenter(model, segment_config)
    replicated = sharding.replicated(mesh)
    self._run = jax.jit(run, in_shardings=(replicated, sharding.batch_sharded(mesh),
                                           replicated),
                        out_shardings=replicated)

  def __call__(self, params, images: np.ndarray, key: jax.Array) -> dict[str, np.ndarray]:
    """uint8 [N, H, W, C] images -> ``mask``, ``probs``, ``variance``, ``entropy`` (and
    ``member_probs`` [E, N, H, W, K] with ``keep_members``) as numpy arrays."""
    size = -(-self.config.batch_size // self.mesh.size) * self.mesh.size
    outputs = []
    for i, start in enumerate(range(0, len(images), size)):
      chunk = images[start:start + size]
      padded = np.concatenate([chunk, np.repeat(chunk[:1], size - len(chunk), axis=0)])
      out = self._run(params, jnp.asarray(data.to_model_range(padded)),
                      jax.random.fold_in(key, i))
      if not self.keep_members:
        out = {k: v for k, v in out.items() if k != "member_probs"}
      outputs.append((len(chunk), out))
    fetched = [(n, jax.device_get(out)) for n, out in outputs]
    result = {}
    for name in fetched[0][1]:
      axis = 1 if name == "member_probs" else 0
      parts = [np.take(out[name], np.arange(n), axis=axis) for n, out in fetched]
      result[name] = np.concatenate(parts, axis=axis)
    return result


def segment_dir(workdir: str | pathlib.Path, step: int,
                config: ml_collections.ConfigDict) -> pathlib.Path:
  """``<workdir>/segment/step<N>_<split>_<sampler><steps>_ens<E>[_patch<P>]_<weights>``."""
  s = config.segment
  name = f"step{step:07d}_{config.data.eval_split}"
  if config.method == "segdiff":
    steps = s.steps or config.diffusion.num_timesteps
    eta = f"_eta{float(s.eta)}" if s.sampler == "ddim" else ""
    name += f"_{s.sampler}{steps}{eta}_ens{s.ensemble}"
  if s.patch_size:
    name += f"_patch{s.patch_size}s{s.patch_stride or s.patch_size // 2}"
  name += "_params" if s.ema_index < 0 else f"_ema{s.ema_index}"
  return pathlib.Path(workdir) / "segment" / name.replace("[", "(").replace("]", ")")


def panel(examples: dict[str, np.ndarray], predictions: dict[str, np.ndarray],
          num_classes: int) -> np.ndarray:
  """The first images' panel (:func:`images.segmentation_panel`), uncertainty = variance for
  ensembles, entropy otherwise."""
  n = min(_PANEL_IMAGES, len(examples["image"]))
  name = "variance" if predictions["variance"].max() > 0 else "entropy"
  vmax = 1.0 if name == "variance" else float(np.log(num_classes))
  return image_io.segmentation_panel(examples["image"][:n], examples["mask"][:n],
                                     predictions["mask"][:n], predictions[name][:n],
                                     num_classes, vmax)


def segment_checkpoint(config: ml_collections.ConfigDict, workdir: str,
                       keep_members: bool = False):
  """Segments the evaluation set with the newest checkpoint in ``workdir``.

  Returns:
    ``(step, examples, predictions, seconds_per_image)``: the checkpoint step, the
    :func:`read_eval_set` arrays, the :class:`Segmenter` outputs and the wall time per image
    of the whole pass (after a first call on one batch that compiles).
  """
  config_lib.validate(config)
  mesh = sharding.make_mesh()
  model = segmentation.make_model(config)
  step, params = restore_sampling_params(config, model, workdir, mesh,
                                         ema_index=config.segment.ema_index)
  examples = read_eval_set(config)
  segmenter = Segmenter(model, config.segment, mesh, keep_members=keep_members)
  key = jax.random.key(config.seed + 3)
  warm = examples["image"][:config.segment.batch_size]
  segmenter(params, warm, key)  # compiles
  start = time.perf_counter()
  predictions = segmenter(params, examples["image"], key)
  seconds = (time.perf_counter() - start) / len(examples["image"])
  logging.info("Segmented %d images of %s at %s in %.2f s each (step-%d checkpoint).",
               len(examples["image"]), config.data.eval_split,
               "x".join(map(str, examples["image"].shape[1:3])), seconds, step)
  return step, examples, predictions, seconds


def segment_and_save(config: ml_collections.ConfigDict, workdir: str) -> pathlib.Path:
  """The ``segment`` mode: :func:`segment_checkpoint`, written to :func:`segment_dir`."""
  step, examples, predictions, _ = segment_checkpoint(config, workdir)
  out_dir = segment_dir(workdir, step, config)
  if jax.process_index() == 0:
    files.write_npz(out_dir / "predictions.npz", mask=predictions["mask"].astype(np.uint8),
                    probs=predictions["probs"].astype(np.float16),
                    variance=predictions["variance"].astype(np.float16),
                    entropy=predictions["entropy"].astype(np.float16))
    files.write_png(out_dir / "panels.png", panel(examples, predictions,
                                                  config.data.mask_classes))
    logging.info("Wrote %s.", out_dir)
  return out_dir
