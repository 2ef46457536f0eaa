"""ISBI 2012 EM segmentation challenge: 30 labelled 512x512 slices of neuronal membranes.

Reads the per-slice PNG export (``image/0.png .. 29.png`` with ``label/0.png .. 29.png``, as in
the ``data/membrane/train`` folder of github.com/zhixuhao/unet) or the challenge's own TIFF
stacks (``train-volume.tif`` and ``train-labels.tif``). In the labels 255 is cell interior and
0 is membrane: the mask stored here has class 1 = membrane, 0 = cell interior.

Split (the challenge publishes no test labels): ``train`` = slices 0..19, ``test`` =
slices 20..29, consecutive so that neighbouring sections do not leak across the split.
"""

import pathlib

import numpy as np
import tensorflow_datasets as tfds
from PIL import Image
from PIL import ImageSequence

from diffseg_jax.data.builders import common

NUM_SLICES = 30
TRAIN_SLICES = 20
_PNG_FILES = ("image/0.png", "label/0.png")
_TIFF_FILES = ("train-volume.tif", "train-labels.tif")


def membrane_mask(label: np.ndarray, path: pathlib.Path) -> np.ndarray:
  """ISBI label uint8 {0, 255} [H, W] -> class ids uint8: 1 = membrane (0), 0 = interior."""
  bad = np.setdiff1d(np.unique(label), [0, 255])
  if bad.size:
    raise ValueError(f"ISBI label {path} holds values {bad.tolist()}; only 0 (membrane) and "
                     "255 (cell interior) are defined.")
  return (label == 0).astype(np.uint8)


def _tiff_frames(path: pathlib.Path) -> list[np.ndarray]:
  try:
    with Image.open(path) as stack:
      return [np.asarray(frame.convert("L")) for frame in ImageSequence.Iterator(stack)]
  except (OSError, SyntaxError, ValueError) as e:
    raise ValueError(f"Corrupt or unreadable TIFF stack {path}: {e}") from e


class Isbi2012(common.ManualBuilder):
  """ISBI 2012 EM membranes: greyscale 512x512 slices, binary membrane masks."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "PNG slices or TIFF stacks; split 20 train / 10 test."}
  EXPECTED_FILES = _PNG_FILES
  WHERE_TO_GET = (
      "download the training volume of the ISBI 2012 challenge "
      "(https://imagej.net/events/isbi-2012-segmentation-challenge: train-volume.tif and "
      "train-labels.tif), or the PNG slices in data/membrane/train of "
      "https://github.com/zhixuhao/unet, and put image/ and label/ (or the two TIFF files) in "
      "data.manual_dir")
  MANUAL_DOWNLOAD_INSTRUCTIONS = f"To get the files, {WHERE_TO_GET}."

  def check_manual_dir(self, manual_dir):
    path = pathlib.Path(manual_dir)
    if all((path / f).exists() for f in _TIFF_FILES):
      return path
    return super().check_manual_dir(path)

  def layouts(self, manual_dir):
    return [manual_dir, manual_dir / "data" / "membrane" / "train"]

  def _info(self) -> tfds.core.DatasetInfo:
    return self.dataset_info_from_configs(
        features=tfds.features.FeaturesDict({
            "image": tfds.features.Image(shape=(512, 512, 1)),
            "mask": common.mask_feature(512, 512),
            "file_name": tfds.features.Text(),
        }),
        description="ISBI 2012 EM membranes; mask 1 = membrane, 0 = cell interior.",
        homepage="https://imagej.net/events/isbi-2012-segmentation-challenge")

  def _split_generators(self, dl_manager):
    root = self.manual_root(dl_manager)
    return {"train": self._generate_examples(root, range(TRAIN_SLICES)),
            "test": self._generate_examples(root, range(TRAIN_SLICES, NUM_SLICES))}

  def _generate_examples(self, root: pathlib.Path, slices: range):
    if all((root / f).exists() for f in _TIFF_FILES):
      images, labels = (_tiff_frames(root / f) for f in _TIFF_FILES)
      for i in slices:
        mask_name = f"{_TIFF_FILES[1]}[{i}]"
        mask = membrane_mask(labels[i], root / mask_name)
        common.check_pair(root / f"{_TIFF_FILES[0]}[{i}]", images[i], root / mask_name, mask)
        yield i, {"image": common.encode_png(images[i]), "mask": common.encode_png(mask),
                  "file_name": f"{_TIFF_FILES[0]}[{i}]"}
      return
    for i in slices:
      label_path = root / "label" / f"{i}.png"
      mask = membrane_mask(common.read_mask(label_path), label_path)
      yield i, common.segmentation_example(root / "image" / f"{i}.png", "L", label_path, mask,
                                           2, f"image/{i}.png")
