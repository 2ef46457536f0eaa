"""Datasets of the TFDS catalogue, each brought to this project's example layout.

An example is ``{"image": uint8 [H, W, C], "label": int (if any), "mask": uint8 [H, W] class
ids with IGNORE_ID (if any)}``. The project's own builders already store that layout; catalogue
datasets that name or encode their fields differently have an adapter here:

* ``oxford_iiit_pet``: the trimap (1 pet, 2 background, 3 border) as 3 classes (0 pet,
  1 background, 2 border) with ``data.mask_classes=3``, or pet vs the rest (1 pet, 0 background
  and border) with ``data.mask_classes=2``;
* ``cityscapes/semantic_segmentation`` (manual download, see TFDS): the left image and the
  label ids mapped to the 19 evaluation classes (train ids), every other label ignored.

Others (``fashion_mnist``, ``mnist``, ``cifar10``, ``imagenet_resized/64x64``, ...) are read
as they are: ``image`` and ``label``.
"""

from typing import Callable

import numpy as np

from diffseg_jax.data.builders.common import IGNORE_ID

# Cityscapes label id -> train id (the 19 classes of the benchmark), from cityscapesScripts.
_CITYSCAPES_TRAIN_IDS = {7: 0, 8: 1, 11: 2, 12: 3, 13: 4, 17: 5, 19: 6, 20: 7, 21: 8, 22: 9,
                         23: 10, 24: 11, 25: 12, 26: 13, 27: 14, 28: 15, 31: 16, 32: 17, 33: 18}
CITYSCAPES_LOOKUP = np.full(256, IGNORE_ID, np.uint8)
CITYSCAPES_LOOKUP[list(_CITYSCAPES_TRAIN_IDS)] = list(_CITYSCAPES_TRAIN_IDS.values())


# Trimap value -> class: 1 pet -> 0, 2 background -> 1, 3 border -> 2; anything else ignored.
_PET_TRIMAP_LOOKUP = np.full(256, IGNORE_ID, np.uint8)
_PET_TRIMAP_LOOKUP[1:4] = (0, 1, 2)


def _mask(array: np.ndarray) -> np.ndarray:
  return array[..., 0] if array.ndim == 3 else array


def _pet(example: dict, mask_classes: int) -> dict:
  trimap = _mask(example["segmentation_mask"])
  if mask_classes == 2:
    mask = (trimap == 1).astype(np.uint8)
  elif mask_classes == 3:
    mask = _PET_TRIMAP_LOOKUP[trimap]
  else:
    raise ValueError(f"oxford_iiit_pet has a 3-class trimap: set data.mask_classes=3 (pet, "
                     f"background, border) or 2 (pet vs rest), not {mask_classes}.")
  return {"image": example["image"], "label": example["label"], "mask": mask}


def _cityscapes(example: dict, mask_classes: int) -> dict:
  if mask_classes not in (0, len(_CITYSCAPES_TRAIN_IDS)):
    raise ValueError(f"cityscapes has {len(_CITYSCAPES_TRAIN_IDS)} evaluation classes; set "
                     f"data.mask_classes={len(_CITYSCAPES_TRAIN_IDS)}, not {mask_classes}.")
  return {"image": example["image_left"],
          "mask": CITYSCAPES_LOOKUP[_mask(example["segmentation_label"])]}


def _as_stored(example: dict, mask_classes: int) -> dict:
  del mask_classes
  out = {"image": example["image"]}
  if "label" in example:
    out["label"] = example["label"]
  if "mask" in example:
    out["mask"] = _mask(example["mask"])
  return out


_ADAPTERS = {"oxford_iiit_pet": _pet, "cityscapes": _cityscapes}


def adapter(name: str) -> Callable[[dict, int], dict]:
  """``fn(tfds_example, mask_classes) -> example`` for the TFDS dataset ``name``."""
  return _ADAPTERS.get(name.split("/")[0].split(":")[0], _as_stored)
