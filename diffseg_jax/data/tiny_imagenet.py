"""Tiny ImageNet (200 classes, 64x64 RGB) from ``tiny-imagenet-200.zip`` as distributed.

Reads the zip itself or the folder it unpacks to::

  tiny-imagenet-200/wnids.txt                       200 WordNet ids, one per line (class order)
  tiny-imagenet-200/train/<wnid>/images/*.JPEG      500 images per class
  tiny-imagenet-200/val/images/*.JPEG               10,000 images
  tiny-imagenet-200/val/val_annotations.txt         "<file>\t<wnid>\t<bbox...>" per image

Get it from http://cs231n.stanford.edu/tiny-imagenet-200.zip (about 240 MB).
"""

import io
import pathlib
import zipfile

import numpy as np
from PIL import Image

WHERE_TO_GET = "download http://cs231n.stanford.edu/tiny-imagenet-200.zip"


class _Archive:
  """Uniform read access to the zip or to the unpacked folder, by path below the root.

  A context manager: leaving it closes the zip file.
  """

  def __init__(self, source: pathlib.Path):
    self._zip = None
    if source.is_file() and zipfile.is_zipfile(source):
      self._zip = zipfile.ZipFile(source)
      names = self._zip.namelist()
      roots = {n.split("/")[0] for n in names if n.endswith("wnids.txt")}
      self._root = f"{roots.pop()}/" if roots else ""
      self._names = set(names)
    elif (source / "tiny-imagenet-200" / "wnids.txt").exists():
      self._root = source / "tiny-imagenet-200"
    else:
      self._root = source
    self.source = source

  def __enter__(self) -> "_Archive":
    return self

  def __exit__(self, *exc_info) -> None:
    if self._zip is not None:
      self._zip.close()

  def exists(self, name: str) -> bool:
    if self._zip is not None:
      return self._root + name in self._names
    return (self._root / name).exists()

  def read(self, name: str) -> bytes:
    if self._zip is not None:
      return self._zip.read(self._root + name)
    return (self._root / name).read_bytes()

  def list(self, prefix: str, suffix: str) -> list[str]:
    if self._zip is not None:
      start = len(self._root)
      return sorted(n[start:] for n in self._names
                    if n.startswith(self._root + prefix) and n.endswith(suffix))
    return sorted(str(p.relative_to(self._root))
                  for p in (self._root / prefix).rglob(f"*{suffix}"))


def _decode(archive: _Archive, name: str) -> np.ndarray:
  try:
    image = Image.open(io.BytesIO(archive.read(name)))
    return np.asarray(image.convert("RGB"))  # a few images are greyscale
  except OSError as e:
    raise ValueError(f"Corrupt image {name} in {archive.source}: {e}") from e


def load(source: str, split: str) -> tuple[np.ndarray, np.ndarray]:
  """Loads a split of Tiny ImageNet into memory.

  Args:
    source: ``tiny-imagenet-200.zip`` or the folder it unpacks to (or its parent).
    split: "train" (100,000 images) or "validation" (10,000).

  Returns:
    images: uint8 [N, 64, 64, 3]; labels: int32 [N] in 0..199, in the order of wnids.txt.
  """
  if split not in ("train", "validation"):
    raise ValueError(f"Unknown split {split!r} for tiny_imagenet; valid: train, validation.")
  path = pathlib.Path(source)
  with _Archive(path) as archive:
    if not archive.exists("wnids.txt"):
      raise FileNotFoundError(
          f"tiny_imagenet: no tiny-imagenet-200.zip or unpacked tiny-imagenet-200/wnids.txt at "
          f"{path} (config field data.source_dir). To get it, {WHERE_TO_GET}.")
    wnids = archive.read("wnids.txt").decode().split()
    index = {w: i for i, w in enumerate(wnids)}
    if split == "train":
      names = archive.list("train/", ".JPEG")
      labels = [index[n.split("/")[1]] for n in names]
    else:
      rows = [line.split("\t") for line in archive.read("val/val_annotations.txt").decode()
              .splitlines() if line.strip()]
      names = [f"val/images/{r[0]}" for r in rows]
      labels = [index[r[1]] for r in rows]
    if not names:
      raise FileNotFoundError(f"tiny_imagenet: no {split} images found in {path}.")
    images = np.stack([_decode(archive, n) for n in names])
  return images, np.asarray(labels, np.int32)
