"""Model outputs as pictures: float images in [-1, 1] to uint8, and grids of them."""

import colorsys
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


IGNORE_COLOUR = (128, 128, 128)


def palette(num_classes: int) -> np.ndarray:
  """uint8 [num_classes, 3] class colours: black and white for 2 classes, else evenly spaced
  hues at alternating brightness."""
  if num_classes == 2:
    return np.array([[0, 0, 0], [255, 255, 255]], np.uint8)
  hues = np.arange(num_classes) / num_classes
  value = np.where(np.arange(num_classes) % 2, 0.65, 1.0)
  rgb = [colorsys.hsv_to_rgb(h, 0.85, v) for h, v in zip(hues, value)]
  return np.round(np.array(rgb) * 255).astype(np.uint8)


def colour_masks(masks: np.ndarray, num_classes: int, ignore_id: int = 255) -> np.ndarray:
  """int [..., H, W] class ids -> uint8 [..., H, W, 3]; ``ignore_id`` pixels grey."""
  masks = np.asarray(masks)
  colours = palette(num_classes)[np.clip(masks, 0, num_classes - 1)]
  return np.where((masks == ignore_id)[..., None], np.uint8(IGNORE_COLOUR), colours)


def heatmap(values: np.ndarray, vmax: float) -> np.ndarray:
  """float [..., H, W] in [0, vmax] -> uint8 [..., H, W, 3]: black, red, yellow, white."""
  x = np.clip(np.asarray(values, np.float32) / max(vmax, 1e-12), 0.0, 1.0)
  rgb = np.stack([np.clip(3 * x, 0, 1), np.clip(3 * x - 1, 0, 1), np.clip(3 * x - 2, 0, 1)], -1)
  return np.round(rgb * 255).astype(np.uint8)


def segmentation_panel(images: np.ndarray, targets: np.ndarray, predictions: np.ndarray,
                       uncertainty: np.ndarray, num_classes: int, vmax: float) -> np.ndarray:
  """One row per image: image | ground truth | prediction | uncertainty heat map.

  Args:
    images: uint8 [N, H, W, C] (C = 1 or 3).
    targets, predictions: int [N, H, W] class ids (targets may hold the ignore id 255).
    uncertainty: float [N, H, W] in [0, vmax].
    num_classes: number of classes (colours).
    vmax: the uncertainty that is drawn white.

  Returns:
    uint8 [N * (H + 2) + 2, 4 * (W + 2) + 2, 3].
  """
  rgb = np.broadcast_to(images, (*images.shape[:3], 3)) if images.shape[-1] == 1 else images
  tiles = np.stack([rgb, colour_masks(targets, num_classes), colour_masks(predictions,
                                                                           num_classes),
                    heatmap(uncertainty, vmax)], axis=1)
  return grid(tiles.reshape(-1, *tiles.shape[2:]), columns=4)
