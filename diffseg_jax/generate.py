"""The ``sample`` mode: images from the latest checkpoint, as a PNG grid and an ADM-style npz.

The npz holds ``arr_0``: uint8 [N, H, W, C] and, for class-conditional models, ``arr_1``: int
[N] labels — the format guided-diffusion's ``evaluations/evaluator.py`` reads.
"""

import pathlib

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging

from diffseg_jax import config as config_lib
from diffseg_jax import files
from diffseg_jax import images as image_io
from diffseg_jax.methods.generation import GenerationModel
from diffseg_jax.train import sharding
from diffseg_jax.train.state import TrainState
from diffseg_jax.train.state import restore_sampling_params


def sampling_params(state: TrainState, ema_index: int):
  """The parameters ``sample.ema_index`` selects: -1 the raw ones, else that EMA."""
  return state.params if ema_index < 0 else state.ema_params[ema_index]


class ImageSampler:
  """Draws images from a :class:`GenerationModel`, jitted once per batch size over the mesh.

  Each batch is one jitted call that draws its own noise from its key, computes with the batch
  split over the mesh's devices and returns the images replicated, so that every process (of a
  multi-process run too) can fetch them.
  """

  def __init__(self, model: GenerationModel, sample_config: ml_collections.ConfigDict, mesh):
    self.model, self.mesh, self.config = model, mesh, sample_config
    self._sample = model.sampler(sampler=sample_config.sampler, steps=sample_config.steps,
                                 eta=sample_config.eta, clip_denoised=sample_config.clip_denoised)
    replicated = sharding.replicated(mesh)
    self._batch = jax.jit(self._sample_batch, static_argnums=3,
                          in_shardings=(replicated, replicated, replicated),
                          out_shardings=replicated)

  def _labels(self, positions: jax.Array) -> jax.Array | None:
    """Class labels of the images at ``positions`` (int [B]): ``sample.class_label``, or
    cycling through the classes; None for an unconditional model."""
    if not self.model.class_cond:
      return None
    if self.config.class_label >= 0:
      return jnp.full(positions.shape, self.config.class_label, jnp.int32)
    return (positions % self.model.config.data.num_classes).astype(jnp.int32)

  def _sample_batch(self, params, key: jax.Array, index: jax.Array,
                    batch_size: int) -> tuple[jax.Array, jax.Array | None]:
    """Batch ``index`` of a run: float32 [batch_size, H, W, C] images and their labels."""
    noise_key, sample_key = jax.random.split(jax.random.fold_in(key, index))
    batch = sharding.batch_sharded(self.mesh)
    noise = jax.random.normal(noise_key, (batch_size, *self.model.image_shape), jnp.float32)
    noise = jax.lax.with_sharding_constraint(noise, batch)
    labels = self._labels(index * batch_size + jnp.arange(batch_size))
    if labels is not None:
      labels = jax.lax.with_sharding_constraint(labels, batch)
    return self._sample(params, sample_key, noise, labels), labels

  def sample(self, params, key: jax.Array, num: int,
             batch_size: int) -> tuple[np.ndarray, np.ndarray | None]:
    """Returns ``num`` images as float32 [num, H, W, C] (about [-1, 1]) and int32 [num] labels
    (None for an unconditional model), identical on every process.

    Sampling runs in batches of ``batch_size`` (rounded up to a multiple of the device count);
    batch ``i`` draws its noise and sampling randomness from ``fold_in(key, i)``, so the
    images are a function of ``key``, ``num`` and the rounded ``batch_size`` only. Every batch
    is dispatched before the first is fetched.
    """
    batch_size = -(-batch_size // self.mesh.size) * self.mesh.size
    outputs = [self._batch(params, key, np.int32(i), batch_size)
               for i in range(-(-num // batch_size))]
    fetched = jax.device_get(outputs)
    images = np.concatenate([x for x, _ in fetched])[:num]
    labels = None if fetched[0][1] is None else np.concatenate([y for _, y in fetched])[:num]
    return images, labels

  def __call__(self, params, key: jax.Array, num: int,
               batch_size: int) -> tuple[np.ndarray, np.ndarray | None]:
    """As :meth:`sample`, with the images as uint8 [num, H, W, C] (``images.to_uint8``)."""
    images, labels = self.sample(params, key, num, batch_size)
    return image_io.to_uint8(images), labels


def samples_dir(workdir: str | pathlib.Path, step: int,
                config: ml_collections.ConfigDict) -> pathlib.Path:
  """``<workdir>/samples/step<step>_<sampler><steps>[_eta<eta>]_<ema<i>|params>``.

  Named after everything that changes the images of a checkpoint, so that sampling again with
  other settings never overwrites earlier samples (e.g. ``step0001500_ddim50_eta0.0_ema0``).
  """
  s = config.sample
  steps = s.steps or config.diffusion.num_timesteps
  eta = f"_eta{float(s.eta)}" if s.sampler == "ddim" else ""  # DDPM has no eta
  weights = "params" if s.ema_index < 0 else f"ema{s.ema_index}"
  return pathlib.Path(workdir) / "samples" / f"step{step:07d}_{s.sampler}{steps}{eta}_{weights}"


def sample_checkpoint(config: ml_collections.ConfigDict, workdir: str,
                      num_images: int) -> tuple[int, np.ndarray, np.ndarray | None]:
  """Draws ``num_images`` images from the latest checkpoint in ``workdir``.

  Only the step and the parameters ``config.sample.ema_index`` selects are read from the
  checkpoint; the ``sample.*`` settings choose the sampler.

  Returns:
    ``(step, images, labels)``: the checkpoint's step, uint8 [num_images, H, W, C] images and
    int32 labels (None for an unconditional model), identical on every process.
  """
  config_lib.validate(config)
  mesh = sharding.make_mesh()
  model = GenerationModel(config)
  step, params = restore_sampling_params(config, model, workdir, mesh)
  s = config.sample
  sampler = ImageSampler(model, s, mesh)
  logging.info("Sampling %d images with %s-%d (eta=%.2f) from the step-%d checkpoint.",
               num_images, s.sampler, s.steps, s.eta, step)
  images, labels = sampler(params, jax.random.key(config.seed + 1), num_images, s.batch_size)
  return step, images, labels


def save_samples(workdir: str | pathlib.Path, step: int, config: ml_collections.ConfigDict,
                 images: np.ndarray, labels: np.ndarray | None) -> pathlib.Path:
  """Writes uint8 [N, H, W, C] samples of the step-``step`` checkpoint (process 0 only).

  Returns:
    The path of the npz, ``<samples_dir>/samples_<N>x<H>x<W>x<C>.npz`` (see
    :func:`samples_dir`), beside a PNG grid of the first 64 images.
  """
  out_dir = samples_dir(workdir, step, config)
  name = "samples_" + "x".join(str(d) for d in images.shape)
  npz_path = out_dir / f"{name}.npz"
  if jax.process_index() == 0:
    arrays = {"arr_0": images} if labels is None else {"arr_0": images, "arr_1": labels}
    files.write_npz(npz_path, **arrays)
    files.write_png(out_dir / f"{name}.png", image_io.grid(images[:64]))
    logging.info("Wrote %s and its PNG grid.", npz_path)
  return npz_path


def sample_and_save(config: ml_collections.ConfigDict, workdir: str) -> pathlib.Path:
  """Restores the latest checkpoint in ``workdir`` and writes ``config.sample.num_images``
  samples (:func:`save_samples`); returns the npz path."""
  step, images, labels = sample_checkpoint(config, workdir, config.sample.num_images)
  return save_samples(workdir, step, config, images, labels)
