"""Fashion-MNIST and MNIST from their four official IDX files in a local folder.

Debian packages Fashion-MNIST (``apt-get install dataset-fashion-mnist`` installs the files under
``/usr/share/datasets/fashion-mnist``), so it is the dataset every machine can have without
internet; the quickstart trains on it. The files may be gzipped (as distributed) or not.
"""

import pathlib

import numpy as np
import tensorflow_datasets as tfds

from diffseg_jax.data import idx
from diffseg_jax.data.builders import common

_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}


def _path(folder: pathlib.Path, name: str) -> pathlib.Path:
  gzipped = folder / f"{name}.gz"
  return gzipped if gzipped.exists() or not (folder / name).exists() else folder / name


def read_split(folder: pathlib.Path, split: str) -> tuple[np.ndarray, np.ndarray]:
  """Images uint8 [N, 28, 28] and labels uint8 [N] of a split, checked to pair up."""
  images, labels = (idx.read_idx(_path(folder, f)) for f in _FILES[split])
  if images.ndim != 3 or labels.shape != images.shape[:1]:
    raise ValueError(
        f"{folder} {split}: images {images.shape} and labels {labels.shape} do not pair up "
        "(expected [N, 28, 28] and [N]).")
  return images, labels


class _MnistIdx(common.ManualBuilder, skip_registration=True):
  """28x28 greyscale images with 10 classes, from the IDX files."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "From the four IDX files, gzipped or not."}
  EXPECTED_FILES = tuple(f"{f}.gz" for files in _FILES.values() for f in files)
  CLASSES: tuple[str, ...] = ()
  HOMEPAGE = ""

  def check_manual_dir(self, manual_dir):
    path = pathlib.Path(manual_dir)
    if all(_path(path, f).exists() for files in _FILES.values() for f in files):
      return path
    return super().check_manual_dir(path)

  def _info(self) -> tfds.core.DatasetInfo:
    return self.dataset_info_from_configs(
        features=tfds.features.FeaturesDict({
            "image": tfds.features.Image(shape=(28, 28, 1)),
            "label": tfds.features.ClassLabel(names=self.CLASSES),
        }),
        supervised_keys=("image", "label"),
        homepage=self.HOMEPAGE)

  def _split_generators(self, dl_manager):
    root = self.manual_root(dl_manager)
    return {split: self._generate_examples(root, split) for split in _FILES}

  def _generate_examples(self, root: pathlib.Path, split: str):
    images, labels = read_split(root, split)
    for i, (image, label) in enumerate(zip(images, labels)):
      yield i, {"image": common.encode_png(image), "label": int(label)}


class FashionMnistIdx(_MnistIdx):
  """Fashion-MNIST (Zalando): 60,000 train and 10,000 test images of 10 garment classes."""

  CLASSES = ("t-shirt_top", "trouser", "pullover", "dress", "coat", "sandal", "shirt",
             "sneaker", "bag", "ankle_boot")
  HOMEPAGE = "https://github.com/zalandoresearch/fashion-mnist"
  WHERE_TO_GET = (
      "install Debian's package `dataset-fashion-mnist` (files land in "
      "/usr/share/datasets/fashion-mnist), or download them from "
      "https://github.com/zalandoresearch/fashion-mnist (data/fashion)")
  MANUAL_DOWNLOAD_INSTRUCTIONS = f"To get the files, {WHERE_TO_GET}."


class MnistIdx(_MnistIdx):
  """MNIST handwritten digits: 60,000 train and 10,000 test images."""

  CLASSES = tuple(str(d) for d in range(10))
  HOMEPAGE = "http://yann.lecun.com/exdb/mnist/"
  WHERE_TO_GET = "download them from http://yann.lecun.com/exdb/mnist/"
  MANUAL_DOWNLOAD_INSTRUCTIONS = f"To get the files, {WHERE_TO_GET}."
