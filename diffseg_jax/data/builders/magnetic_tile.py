"""Magnetic-Tile defects (Huang et al. 2020), for anomaly segmentation.

Reads the authors' repository (github.com/abin24/Magnetic-tile-defect-datasets.) unchanged::

  MT_<Class>/Imgs/<name>.jpg    greyscale tile, sizes vary (about 100..630 x 220..400)
  MT_<Class>/Imgs/<name>.png    its mask, same size: 255 = defect (edges hold 1..254 residue)

Class is Free (952 defect-free tiles) or one of Blowhole, Break, Crack, Fray, Uneven. Masks
are binarised at ``> 127`` (1 = defect). There is no official split; this one is: the
defect-free tiles in file-name order, every fifth of them (positions 0, 5, 10, ...) to
``test`` and the rest (761) to ``train``; ``test`` also holds every defect image (583 in all).
``label`` is the folder: 0 = free, 1..5 the defect types.
"""

import pathlib

import numpy as np
import tensorflow_datasets as tfds

from diffseg_jax.data.builders import common

CLASSES = ("free", "blowhole", "break", "crack", "fray", "uneven")
TEST_EVERY = 5  # every fifth defect-free tile (in name order) is held out for test


def _folder(name: str) -> str:
  return f"MT_{name.capitalize()}/Imgs"


def split_free_tiles(stems: list[str]) -> tuple[list[str], list[str]]:
  """Defect-free tile names -> (train, test): every TEST_EVERY-th in sorted order to test."""
  stems = sorted(stems)
  return ([s for i, s in enumerate(stems) if i % TEST_EVERY],
          [s for i, s in enumerate(stems) if not i % TEST_EVERY])


class MagneticTile(common.ManualBuilder):
  """Magnetic-Tile: tiles of varying size with binary defect masks and a defect-type label."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Masks > 127; train = 4 of 5 defect-free tiles, test = the rest."}
  EXPECTED_FILES = tuple(_folder(c) for c in CLASSES)
  WHERE_TO_GET = (
      "clone https://github.com/abin24/Magnetic-tile-defect-datasets. (the name ends in a "
      "dot) and set data.manual_dir to the clone")
  MANUAL_DOWNLOAD_INSTRUCTIONS = f"To get the files, {WHERE_TO_GET}."

  def _info(self) -> tfds.core.DatasetInfo:
    return self.dataset_info_from_configs(
        features=tfds.features.FeaturesDict({
            "image": tfds.features.Image(shape=(None, None, 1)),
            "mask": common.mask_feature(),
            "label": tfds.features.ClassLabel(names=CLASSES),
            "file_name": tfds.features.Text(),
        }),
        description="Magnetic-Tile defects; mask 1 = defect (source mask > 127).",
        homepage="https://github.com/abin24/Magnetic-tile-defect-datasets.")

  def _split_generators(self, dl_manager):
    root = self.manual_root(dl_manager)
    stems = {c: sorted(p.stem for p in (root / _folder(c)).glob("*.jpg")) for c in CLASSES}
    train_free, test_free = split_free_tiles(stems["free"])
    test = [("free", s) for s in test_free]
    test += [(c, s) for c in CLASSES[1:] for s in stems[c]]
    return {"train": self._generate_examples(root, [("free", s) for s in train_free]),
            "test": self._generate_examples(root, test)}

  def _generate_examples(self, root: pathlib.Path, items):
    for class_name, stem in items:
      folder = root / _folder(class_name)
      mask_path = folder / f"{stem}.png"
      if not mask_path.exists():
        raise FileNotFoundError(f"magnetic_tile: {folder / stem}.jpg has no mask {mask_path}.")
      mask = (common.read_mask(mask_path) > 127).astype(np.uint8)
      name = f"{_folder(class_name)}/{stem}.jpg"
      example = common.segmentation_example(folder / f"{stem}.jpg", "L", mask_path, mask, 2,
                                            name)
      yield name, {**example, "label": class_name}
