"""Input pipeline: from a config to this host's share of each global training batch.

Batches are a pure function of ``(seed, step)``: example order comes from a per-epoch
permutation seeded by ``(seed, epoch)``, so a run restarted at step ``s`` sees exactly the
batches an uninterrupted run would have seen, on any number of hosts.
"""

import dataclasses
from typing import Iterator

import ml_collections
import numpy as np
from PIL import Image

from diffseg_jax.data import mnist_like
from diffseg_jax.data import synthetic
from diffseg_jax.data import tiny_imagenet

DATASETS = ("fashion_mnist", "mnist", "shapes", "tiny_imagenet")
_SHAPES_SIZE = 1024  # examples in the procedural "shapes" dataset


@dataclasses.dataclass(frozen=True)
class ArraySource:
  """A dataset held in host memory.

  Attributes:
    images: uint8 [N, H, W, C] in 0..255.
    labels: int32 [N] class ids, or None.
  """
  images: np.ndarray
  labels: np.ndarray | None = None

  def __len__(self) -> int:
    return self.images.shape[0]


def _resize_one(image: np.ndarray, size: int, resample: Image.Resampling) -> np.ndarray:
  """float32 [H, W, C] -> float32 [size, size, C], each channel resized by PIL in float."""
  return np.stack([np.asarray(Image.fromarray(image[..., c]).resize((size, size), resample))
                   for c in range(image.shape[-1])], axis=-1)


def resize_images(images: np.ndarray, size: int) -> np.ndarray:
  """Resizes uint8 [N, H, W, C] images to uint8 [N, size, size, C], on the host.

  Shrinking by a whole factor averages each block of pixels (area). Any other shrinking also
  averages areas (PIL's box filter, pixels weighted by the fraction they cover); enlarging
  interpolates bilinearly. Results are rounded to the nearest integer.
  """
  n, h, w, c = images.shape
  if (h, w) == (size, size):
    return images
  if h % size == 0 and w % size == 0:
    blocks = images.reshape(n, size, h // size, size, w // size, c).astype(np.float32)
    out = blocks.mean(axis=(2, 4))
  else:
    resample = Image.Resampling.BOX if size < min(h, w) else Image.Resampling.BILINEAR
    out = np.stack([_resize_one(image, size, resample) for image in images.astype(np.float32)])
  return np.clip(np.round(out), 0, 255).astype(np.uint8)


def load_source(data_config: ml_collections.ConfigDict) -> ArraySource:
  """Reads the dataset named by ``data_config.name`` into memory at ``data_config.image_size``."""
  if data_config.name not in DATASETS:
    raise ValueError(f"Unknown dataset {data_config.name!r}; valid names: {', '.join(DATASETS)}.")
  if data_config.name == "shapes":
    images, labels = synthetic.shapes(_SHAPES_SIZE, data_config.image_size,
                                      data_config.channels, seed=0)
  elif data_config.name == "tiny_imagenet":
    images, labels = tiny_imagenet.load(data_config.source_dir, data_config.split)
  else:
    images, labels = mnist_like.load(data_config.name, data_config.source_dir,
                                     data_config.split)
  if images.shape[-1] != data_config.channels:
    raise ValueError(
        f"{data_config.name} has {images.shape[-1]} channel(s) but data.channels is "
        f"{data_config.channels}; set data.channels={images.shape[-1]}.")
  return ArraySource(resize_images(images, data_config.image_size), labels)


def to_model_range(images: np.ndarray) -> np.ndarray:
  """uint8 0..255 -> float32 in [-1, 1]."""
  return images.astype(np.float32) / 127.5 - 1.0


def train_batches(source: ArraySource, *, global_batch_size: int, seed: int,
                  start_step: int = 0, process_index: int = 0, process_count: int = 1,
                  random_flip: bool = False) -> Iterator[dict[str, np.ndarray]]:
  """Yields this host's slice of every global batch from ``start_step`` on, forever.

  Args:
    source: the examples.
    global_batch_size: examples per step over all hosts; divisible by ``process_count``.
    seed: fixes the example order and the flips.
    start_step: the first step to yield (resuming a run).
    process_index, process_count: this host and the number of hosts (``jax.process_*``).
    random_flip: flip each image left-right with probability 1/2.

  Yields:
    ``{"image": float32 [B_local, H, W, C] in [-1, 1], "label": int32 [B_local]}`` (no
    "label" when the source has none), ``B_local = global_batch_size // process_count``.
  """
  if global_batch_size % process_count:
    raise ValueError(
        f"Global batch size {global_batch_size} is not divisible by the {process_count} hosts.")
  n = len(source)
  local = global_batch_size // process_count
  lo = process_index * local
  perms: dict[int, np.ndarray] = {}

  def order(epoch: int) -> np.ndarray:
    if epoch not in perms:
      if len(perms) >= 2:  # a batch usually spans at most two epochs
        del perms[min(perms)]
      perms[epoch] = np.random.default_rng([seed, epoch]).permutation(n)
    return perms[epoch]

  step = start_step
  while True:
    positions = np.arange(step * global_batch_size + lo, step * global_batch_size + lo + local)
    epochs, offsets = np.divmod(positions, n)
    indices = np.empty(local, np.int64)
    for epoch in np.unique(epochs):  # one or two epochs (more if the batch exceeds the data)
      in_epoch = epochs == epoch
      indices[in_epoch] = order(int(epoch))[offsets[in_epoch]]
    images = source.images[indices]
    if random_flip:
      flip = np.random.default_rng([seed, step, process_index, 1]).random(local) < 0.5
      images = np.where(flip[:, None, None, None], images[:, :, ::-1], images)
    batch = {"image": to_model_range(images)}
    if source.labels is not None:
      batch["label"] = source.labels[indices]
    yield batch
    step += 1
