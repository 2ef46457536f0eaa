"""Per-example preprocessing on the host: resize, crop and flip, image and mask together.

An example is a dict with ``"image"`` uint8 [H, W, C] and optionally ``"mask"`` uint8 [H, W]
(class ids); other entries pass through. Images are resized by area averaging when shrinking
(PIL's box filter) and bilinearly when enlarging; masks always by nearest neighbour, so no
new class ids appear. Crops and flips take the same window and direction for image and mask.
"""

import dataclasses

import numpy as np
from PIL import Image

CROPS = ("none", "center", "random")


@dataclasses.dataclass(frozen=True)
class Preprocess:
  """What to do to every example (from the ``data`` config section).

  Attributes:
    image_size: side of the square the model sees.
    resize: before cropping, the shorter side is resized to this (aspect kept); 0 keeps it.
    crop: "none" resizes the whole image to ``image_size`` square (aspect not kept);
      "center" / "random" cut an ``image_size`` square (random: training only; evaluation
      takes the centre).
    random_flip: training only: flip left-right with probability 1/2.
  """
  image_size: int
  resize: int = 0
  crop: str = "none"
  random_flip: bool = False

  def __post_init__(self):
    if self.crop not in CROPS:
      raise ValueError(f"crop={self.crop!r} must be one of {CROPS}.")


def resize_image(image: np.ndarray, height: int, width: int) -> np.ndarray:
  """uint8 [H, W, C] -> uint8 [height, width, C]: area when shrinking, else bilinear."""
  if image.shape[:2] == (height, width):
    return image
  shrinking = height <= image.shape[0] and width <= image.shape[1]
  resample = Image.Resampling.BOX if shrinking else Image.Resampling.BILINEAR
  channels = [np.asarray(Image.fromarray(image[..., c]).resize((width, height), resample))
              for c in range(image.shape[-1])]
  return np.stack(channels, axis=-1)


def resize_mask(mask: np.ndarray, height: int, width: int) -> np.ndarray:
  """uint8 [H, W] class ids -> [height, width] by nearest neighbour."""
  if mask.shape == (height, width):
    return mask
  return np.asarray(Image.fromarray(mask).resize((width, height), Image.Resampling.NEAREST))


def resize(example: dict, height: int, width: int) -> dict:
  """The example with image (and mask) resized to ``height x width``."""
  out = dict(example, image=resize_image(example["image"], height, width))
  if "mask" in example:
    out["mask"] = resize_mask(example["mask"], height, width)
  return out


def shorter_side_size(height: int, width: int, shorter: int) -> tuple[int, int]:
  """(height, width) scaled so that the shorter side is ``shorter``, rounded."""
  scale = shorter / min(height, width)
  return max(shorter, round(height * scale)), max(shorter, round(width * scale))


def crop(example: dict, top: int, left: int, size: int) -> dict:
  """The ``size x size`` window at (top, left) of image and mask."""
  window = (slice(top, top + size), slice(left, left + size))
  out = dict(example, image=example["image"][window])
  if "mask" in example:
    out["mask"] = example["mask"][window]
  return out


def flip_left_right(example: dict) -> dict:
  out = dict(example, image=example["image"][:, ::-1])
  if "mask" in example:
    out["mask"] = example["mask"][:, ::-1]
  return out


def apply(example: dict, p: Preprocess, rng: np.random.Generator | None) -> dict:
  """Brings an example to ``p.image_size`` square; ``rng`` None: evaluation (no randomness).

  Raises:
    ValueError: an image smaller than the crop (with the setting that fixes it).
  """
  size = p.image_size
  height, width = example["image"].shape[:2]
  if p.crop == "none":
    example = resize(example, size, size)
  else:
    if p.resize:
      example = resize(example, *shorter_side_size(height, width, p.resize))
      height, width = example["image"].shape[:2]
    if min(height, width) < size:
      raise ValueError(
          f"An image of {height}x{width} (after data.resize={p.resize}) is smaller than the "
          f"{size}x{size} crop (data.image_size); set data.resize >= {size}.")
    if p.crop == "random" and rng is not None:
      top, left = rng.integers(0, height - size + 1), rng.integers(0, width - size + 1)
    else:
      top, left = (height - size) // 2, (width - size) // 2
    example = crop(example, int(top), int(left), size)
  if p.random_flip and rng is not None and rng.random() < 0.5:
    example = flip_left_right(example)
  return example
