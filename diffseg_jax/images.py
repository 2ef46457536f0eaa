"""Model outputs as pictures: float images in [-1, 1] to uint8, and grids of them."""

import math

import numpy as np


def to_uint8(images: np.ndarray) -> np.ndarray:
  """float images in [-1, 1] -> uint8 0..255, as guided-diffusion's ``image_sample.py``.

  ``((x + 1) * 127.5).clamp(0, 255).to(torch.uint8)`` in float32: values outside the range are
  clipped and the rest truncated (0.0 -> 127, not rounded to 128), so that samples quantise to
  the same pixels as the reference's for the ADM evaluator.
  """
  scaled = (np.asarray(images, np.float32) + np.float32(1.0)) * np.float32(127.5)
  return np.clip(scaled, 0, 255).astype(np.uint8)


def grid(images: np.ndarray, columns: int | None = None, pad: int = 2) -> np.ndarray:
  """Tiles uint8 [N, H, W, C] images into one uint8 [rows*(H+pad)+pad, cols*(W+pad)+pad, C]."""
  n, h, w, c = images.shape
  columns = columns or math.ceil(math.sqrt(n))
  rows = math.ceil(n / columns)
  out = np.full((rows * (h + pad) + pad, columns * (w + pad) + pad, c), 255, np.uint8)
  for i, image in enumerate(images):
    r, col = divmod(i, columns)
    y, x = pad + r * (h + pad), pad + col * (w + pad)
    out[y:y + h, x:x + w] = image
  return out
