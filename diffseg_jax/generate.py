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

from diffseg_jax import files
from diffseg_jax import images as image_io
from diffseg_jax.methods.generation import GenerationModel
from diffseg_jax.train import sharding
from diffseg_jax.train.state import restore_state


class ImageSampler:
  """Draws images from a :class:`GenerationModel`, jitted once and sharded over the mesh."""

  def __init__(self, model: GenerationModel, sample_config: ml_collections.ConfigDict, mesh):
    self.model, self.mesh, self.config = model, mesh, sample_config
    sample = model.sampler(sampler=sample_config.sampler, steps=sample_config.steps,
                           eta=sample_config.eta, clip_denoised=sample_config.clip_denoised)
    batch = sharding.batch_sharded(mesh)
    self._sample = jax.jit(sample, in_shardings=(sharding.replicated(mesh),
                                                 sharding.replicated(mesh), batch, batch),
                           out_shardings=batch)

  def labels(self, num: int, offset: int = 0) -> np.ndarray | None:
    """Class labels for ``num`` images: ``sample.class_label``, or cycling through classes."""
    if not self.model.class_cond:
      return None
    if self.config.class_label >= 0:
      return np.full((num,), self.config.class_label, np.int32)
    return ((np.arange(num) + offset) % self.model.config.data.num_classes).astype(np.int32)

  def __call__(self, params, key: jax.Array, num: int,
               batch_size: int) -> tuple[np.ndarray, np.ndarray | None]:
    """Returns ``num`` images as uint8 [num, H, W, C] and their labels (or None).

    Sampling runs in batches of ``batch_size`` (rounded up to a multiple of the device count),
    each with its own key folded from ``key``.
    """
    batch_size = -(-batch_size // self.mesh.size) * self.mesh.size
    chunks, label_chunks = [], []
    for i, start in enumerate(range(0, num, batch_size)):
      noise_key, sample_key = jax.random.split(jax.random.fold_in(key, i))
      noise = jax.random.normal(noise_key, (batch_size, *self.model.image_shape), jnp.float32)
      labels = self.labels(batch_size, start)
      out = self._sample(params, sample_key, noise,
                         None if labels is None else jnp.asarray(labels))
      chunks.append(image_io.to_uint8(jax.device_get(out)))
      label_chunks.append(labels)
    images = np.concatenate(chunks)[:num]
    labels = None if label_chunks[0] is None else np.concatenate(label_chunks)[:num]
    return images, labels


def sample_and_save(config: ml_collections.ConfigDict, workdir: str) -> pathlib.Path:
  """Restores the latest checkpoint in ``workdir`` and writes ``config.sample.num_images``.

  Returns:
    The path of the npz written (``<workdir>/samples/samples_<N>x<H>x<W>x<C>.npz``), beside a
    PNG grid of the first 64 images.
  """
  mesh = sharding.make_mesh()
  model = GenerationModel(config)
  state = restore_state(config, model, workdir, mesh)
  step = int(state.step)
  s = config.sample
  params = state.params if s.ema_index < 0 else state.ema_params[s.ema_index]
  sampler = ImageSampler(model, s, mesh)
  logging.info("Sampling %d images with %s-%d (eta=%.2f) from the step-%d checkpoint.",
               s.num_images, s.sampler, s.steps, s.eta, step)
  images, labels = sampler(params, jax.random.key(config.seed + 1), s.num_images, s.batch_size)
  out_dir = pathlib.Path(workdir) / "samples"
  name = "samples_" + "x".join(str(d) for d in images.shape)
  npz_path = out_dir / f"{name}.npz"
  if jax.process_index() == 0:
    arrays = {"arr_0": images} if labels is None else {"arr_0": images, "arr_1": labels}
    files.write_npz(npz_path, **arrays)
    files.write_png(out_dir / f"{name}.png", image_io.grid(images[:64]))
    logging.info("Wrote %s and its PNG grid.", npz_path)
  return npz_path
