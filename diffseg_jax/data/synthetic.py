"""A procedural dataset that needs no files: filled squares and discs on a dark background.

For smoke runs and tests of the training machinery. Label 0 is a square, 1 a disc; position,
size and brightness vary. Fully determined by the seed.
"""

import numpy as np


def shapes(num: int, image_size: int, channels: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
  """Returns uint8 [num, image_size, image_size, channels] images and int32 [num] labels."""
  rng = np.random.default_rng(seed)
  yy, xx = np.mgrid[:image_size, :image_size] + 0.5
  labels = rng.integers(0, 2, num).astype(np.int32)
  radius = rng.uniform(0.15, 0.35, num) * image_size
  cy, cx = (rng.uniform(0.3, 0.7, (2, num)) * image_size)
  brightness = rng.uniform(150, 255, (num, channels))
  dy = np.abs(yy[None] - cy[:, None, None])
  dx = np.abs(xx[None] - cx[:, None, None])
  square = np.maximum(dy, dx) <= radius[:, None, None]
  disc = dy**2 + dx**2 <= radius[:, None, None]**2
  inside = np.where(labels[:, None, None] == 0, square, disc)
  images = inside[..., None] * brightness[:, None, None, :]
  return images.astype(np.uint8), labels
