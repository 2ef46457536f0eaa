"""Fashion-MNIST and MNIST from their four official IDX files in a local folder.

Debian packages Fashion-MNIST (``apt-get install dataset-fashion-mnist`` installs the files under
``/usr/share/datasets/fashion-mnist``), so it is the dataset every machine can have without
internet; the quickstart trains on it.
"""

import pathlib

import numpy as np

from diffseg_jax.data import idx

_FILES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}

WHERE_TO_GET = {
    "fashion_mnist": (
        "install Debian's package `dataset-fashion-mnist` (files land in "
        "/usr/share/datasets/fashion-mnist), or download them from "
        "https://github.com/zalandoresearch/fashion-mnist (data/fashion)"),
    "mnist": "download them from http://yann.lecun.com/exdb/mnist/",
}


def load(name: str, source_dir: str, split: str) -> tuple[np.ndarray, np.ndarray]:
  """Loads a split of an MNIST-like dataset.

  Args:
    name: "fashion_mnist" or "mnist" (only used in messages).
    source_dir: folder holding the four IDX files, gzipped as distributed.
    split: "train" (60,000 examples) or "test" (10,000).

  Returns:
    images: uint8 [N, 28, 28, 1] in 0..255; labels: int32 [N] in 0..9.
  """
  if split not in _FILES:
    raise ValueError(f"Unknown split {split!r} for {name}; valid splits: {sorted(_FILES)}.")
  folder = pathlib.Path(source_dir)
  paths = [folder / f for f in _FILES[split]]
  missing = [p.name for p in paths if not p.exists()]
  if missing:
    raise FileNotFoundError(
        f"{name}: missing {', '.join(missing)} in {folder} (config field data.source_dir). "
        f"To get them, {WHERE_TO_GET[name]}.")
  images, labels = (idx.read_idx(p) for p in paths)
  if images.ndim != 3 or labels.shape != images.shape[:1]:
    raise ValueError(
        f"{name} {split}: images {images.shape} and labels {labels.shape} do not pair up "
        f"(expected [N, 28, 28] and [N]).")
  return images[..., None], labels.astype(np.int32)
