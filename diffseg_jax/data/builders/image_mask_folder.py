"""A folder of your own images and masks, paired by file name, with declared classes::

  <manual_dir>/classes.txt                    one line per class: "<mask value> <name>"
  <manual_dir>/<split>/images/<stem>.<ext>    images (PNG, JPEG, BMP, TIFF)
  <manual_dir>/<split>/masks/<stem>.<ext>     one-channel masks (greyscale or palette PNG)

Every sub-folder holding ``images/`` and ``masks/`` is a split (``train``, ``test``, ...).
Class ids follow the lines of ``classes.txt``: with ``0 background`` and ``255 lesion`` the
mask value 0 is class 0 and 255 is class 1. A class named ``ignore`` is not a class: its
pixels get the ignore id. Any other mask value is an error naming the file.

The prepared dataset is named after the folder (its name and a hash of its absolute path), so
two folders never share one; delete the prepared folder after changing the files.
"""

import dataclasses
import hashlib
import pathlib
import re

import numpy as np
import tensorflow_datasets as tfds

from diffseg_jax.data.builders import common

CLASSES_FILE = "classes.txt"
IGNORE_NAME = "ignore"
_IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")


@dataclasses.dataclass
class ImageMaskFolderConfig(tfds.core.BuilderConfig):
  manual_dir: str = ""
  channels: int = 3


def config_for(manual_dir: str, channels: int) -> ImageMaskFolderConfig:
  """The builder config of a folder: named after it, distinct for every absolute path."""
  path = pathlib.Path(manual_dir).resolve()
  digest = hashlib.sha256(f"{path}:{channels}".encode()).hexdigest()[:10]
  stem = re.sub(r"[^a-z0-9_]", "_", path.name.lower()) or "root"
  return ImageMaskFolderConfig(name=f"{stem}_{digest}", manual_dir=str(path), channels=channels)


def read_classes(path: pathlib.Path) -> tuple[dict[int, int], list[str]]:
  """Parses ``classes.txt`` into (mask value -> class id or ignore id, class names)."""
  lookup, names = {}, []
  for number, line in enumerate(path.read_text().splitlines(), 1):
    if not line.strip():
      continue
    parts = line.split(maxsplit=1)
    if len(parts) != 2 or not parts[0].isdigit() or int(parts[0]) in lookup:
      raise ValueError(f"{path}:{number}: {line!r} is not '<mask value> <class name>' with a "
                       "new integer value.")
    value, name = int(parts[0]), parts[1].strip()
    if name == IGNORE_NAME:
      lookup[value] = common.IGNORE_ID
    else:
      lookup[value] = len(names)
      names.append(name)
  if not names or len(names) > common.IGNORE_ID:
    raise ValueError(f"{path} declares {len(names)} classes; 1..{common.IGNORE_ID} are needed.")
  return lookup, names


def class_ids(mask: np.ndarray, lookup: dict[int, int], path: pathlib.Path) -> np.ndarray:
  """Mask values [H, W] -> uint8 class ids through the declared lookup."""
  values, inverse = np.unique(mask, return_inverse=True)
  undeclared = [int(v) for v in values if int(v) not in lookup]
  if undeclared:
    raise ValueError(f"Mask {path} holds values {undeclared} not declared in {CLASSES_FILE} "
                     f"(declared: {sorted(lookup)}); add them (a class, or '<value> "
                     f"{IGNORE_NAME}').")
  ids = np.asarray([lookup[int(v)] for v in values], np.uint8)
  return ids[inverse].reshape(mask.shape)


class ImageMaskFolder(common.ManualBuilder):
  """Your images and masks: build with ``config=config_for(manual_dir, channels)``."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Splits from sub-folders, classes from classes.txt."}
  EXPECTED_FILES = (CLASSES_FILE, "<split>/images", "<split>/masks")
  WHERE_TO_GET = "arrange your files as described in diffseg_jax/data/builders/image_mask_folder.py"
  MANUAL_DOWNLOAD_INSTRUCTIONS = __doc__

  def check_manual_dir(self, manual_dir):
    path = pathlib.Path(manual_dir)
    if (path / CLASSES_FILE).exists() and self._splits(path):
      return path
    raise common.missing_files_error(self.name, path, self.EXPECTED_FILES, self.WHERE_TO_GET)

  @staticmethod
  def _splits(root: pathlib.Path) -> list[str]:
    return sorted(p.name for p in root.iterdir()
                  if (p / "images").is_dir() and (p / "masks").is_dir())

  def _info(self) -> tfds.core.DatasetInfo:
    root = pathlib.Path(self.builder_config.manual_dir)
    names = read_classes(root / CLASSES_FILE)[1] if (root / CLASSES_FILE).exists() else []
    return self.dataset_info_from_configs(
        features=tfds.features.FeaturesDict({
            "image": tfds.features.Image(shape=(None, None, self.builder_config.channels)),
            "mask": common.mask_feature(),
            "file_name": tfds.features.Text(),
        }),
        description=f"Images and masks from {root}; classes: {', '.join(names)}.")

  def _split_generators(self, dl_manager):
    del dl_manager  # the folder is part of the builder config
    root = self.check_manual_dir(self.builder_config.manual_dir)
    lookup, names = read_classes(root / CLASSES_FILE)
    return {split: self._generate_examples(root / split, lookup, len(names))
            for split in self._splits(root)}

  def _generate_examples(self, folder: pathlib.Path, lookup: dict[int, int], num_classes: int):
    mode = "RGB" if self.builder_config.channels == 3 else "L"
    masks = {p.stem: p for p in (folder / "masks").iterdir()
             if p.suffix.lower() in _IMAGE_SUFFIXES}
    images = sorted(p for p in (folder / "images").iterdir()
                    if p.suffix.lower() in _IMAGE_SUFFIXES)
    unmatched = [p.name for p in images if p.stem not in masks]
    if unmatched:
      raise FileNotFoundError(f"{folder / 'images'}: no mask in {folder / 'masks'} for "
                              f"{', '.join(unmatched[:5])}{' ...' if len(unmatched) > 5 else ''}"
                              " (masks are matched by file name without extension).")
    for image_path in images:
      mask_path = masks[image_path.stem]
      mask = class_ids(common.read_mask(mask_path), lookup, mask_path)
      name = f"{folder.name}/images/{image_path.name}"
      yield name, common.segmentation_example(image_path, mode, mask_path, mask, num_classes,
                                              name)
